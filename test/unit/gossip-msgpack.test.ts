// The msgpack layer and every memberlist body against Go's golden vectors
// (test/fixtures/memberlist-golden-vectors.txt, both go-msgpack 0.5.5 and v2.1.5 sections).
import { readFileSync } from 'node:fs';

import t from 'tap';

import { MeshError } from '../../src/util/errors.js';
import {
  MsgpackReader,
  MsgpackWriter,
  WireError,
  type IntStyle,
} from '../../src/gossip/msgpack.js';
import {
  OUR_VSN,
  codecs,
  decodeAlive,
  decodePing,
  encodeAlive,
  encodePushNodeState,
} from '../../src/gossip/wire.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));

const VECTORS = new URL('../../../test/fixtures/memberlist-golden-vectors.txt', import.meta.url);

interface Vector {
  section: IntStyle;
  name: string;
  bytes: string;
}

function loadVectors(): { vectors: Vector[]; decodeLines: { section: IntStyle; line: string }[] } {
  const vectors: Vector[] = [];
  const decodeLines: { section: IntStyle; line: string }[] = [];
  let section: IntStyle | null = null;
  for (const line of readFileSync(VECTORS, 'utf8').split('\n')) {
    if (line.startsWith('==')) {
      section = line.includes('0.5.5') ? 'go-msgpack-0.5' : 'go-msgpack-2';
      continue;
    }
    if (section === null || line.trim() === '') continue;
    if (line.startsWith('DECODE ')) {
      decodeLines.push({ section, line });
      continue;
    }
    const m = /^(\S+)\s+([0-9a-f]+)$/.exec(line);
    if (!m) throw new Error(`unparsed vector line: ${line}`);
    vectors.push({ section, name: m[1] as string, bytes: m[2] as string });
  }
  return { vectors, decodeLines };
}

const CODEC_OF: Record<string, keyof typeof codecs> = {
  ping: 'ping',
  'ping-min': 'ping',
  'ping-longname': 'ping',
  indirectPing: 'indirectPing',
  'ackResp-nil': 'ackResp',
  'ackResp-empty': 'ackResp',
  nackResp: 'nackResp',
  errResp: 'errResp',
  suspect: 'suspect',
  alive: 'alive',
  'alive-ipv6': 'alive',
  dead: 'dead',
  pushPullHeader: 'pushPullHeader',
  'pushPullHeader-neg': 'pushPullHeader',
  userMsgHeader: 'userMsgHeader',
  pushNodeState: 'pushNodeState',
  compress: 'compress',
};

// What each vector must decode to (identical in both sections).
const EXPECT: Record<string, unknown> = {
  ping: { seqNo: 7, node: 'n2', sourceAddr: '7f000001', sourcePort: 7946, sourceNode: 'n1' },
  'ping-min': { seqNo: 7, node: 'n2', sourceAddr: '', sourcePort: 0, sourceNode: '' },
  'ping-longname': {
    seqNo: 300,
    node: 'node-name-that-is-longer-than-31-bytes',
    sourceAddr: '',
    sourcePort: 0,
    sourceNode: '',
  },
  indirectPing: {
    seqNo: 70000,
    target: '7f000001',
    port: 7946,
    node: 'n2',
    nack: true,
    sourceAddr: '7f000001',
    sourcePort: 7946,
    sourceNode: 'n1',
  },
  'ackResp-nil': { seqNo: 7, payload: '' },
  'ackResp-empty': { seqNo: 7, payload: '' },
  nackResp: { seqNo: 7 },
  errResp: { error: 'boom' },
  suspect: { incarnation: 3, node: 'n2', from: 'n1' },
  alive: {
    incarnation: 1,
    node: 'n1',
    addr: '7f000001',
    port: 7946,
    meta: '',
    vsn: '010502020504',
  },
  'alive-ipv6': {
    incarnation: 1,
    node: 'n1',
    addr: '00000000000000000000000000000000',
    port: 7946,
    meta: 'ff80',
    vsn: '010502020504',
  },
  dead: { incarnation: 3, node: 'n2', from: 'n2' },
  pushPullHeader: { nodes: 200, userStateLen: 596, join: true },
  'pushPullHeader-neg': { nodes: -1, userStateLen: 0, join: false },
  userMsgHeader: { userMsgLen: 40000 },
  pushNodeState: {
    name: 'n1',
    addr: '7f000001',
    port: 7946,
    meta: '',
    incarnation: 5,
    state: 2,
    vsn: '010502020504',
  },
  compress: { algo: 0, buf: '010203' },
};

/** Body with byte fields shown as hex, for deep comparison. */
function plain(v: object): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) out[k] = x instanceof Uint8Array ? hex(x) : x;
  return out;
}

const { vectors, decodeLines } = loadVectors();

t.test('golden vector file is where we expect and complete', async (t) => {
  t.equal(vectors.length, 34, '17 vectors in each of the two Go codec sections');
  t.equal(decodeLines.length, 8, '4 DECODE lines in each section');
});

t.test('every golden vector decodes to the expected value', async (t) => {
  for (const v of vectors) {
    const codec = codecs[CODEC_OF[v.name] as keyof typeof codecs];
    t.ok(codec, `${v.name} has a codec`);
    t.same(plain(codec.decode(unhex(v.bytes))), EXPECT[v.name], `${v.section} ${v.name}`);
  }
});

t.test("re-encoding reproduces Go byte-exactly in that section's int style", async (t) => {
  let exact = 0;
  for (const v of vectors) {
    const codec = codecs[CODEC_OF[v.name] as keyof typeof codecs] as unknown as {
      decode(b: Uint8Array): object;
      encode(x: object, o: { intStyle: IntStyle }): Uint8Array;
    };
    const again = hex(codec.encode(codec.decode(unhex(v.bytes)), { intStyle: v.section }));
    if (v.name === 'ackResp-empty') {
      // Go distinguishes a nil slice (c0) from an empty one (a0); we always send nil, which
      // every memberlist decodes to the same empty payload.
      t.equal(again, '82a75061796c6f6164c0a55365714e6f07', 'empty payload goes out as nil');
      continue;
    }
    t.equal(again, v.bytes, `${v.section} ${v.name}`);
    exact++;
  }
  t.equal(exact, 32);
});

t.test('the two Go codecs differ only in how signed ints are sent', async (t) => {
  const by = (s: IntStyle): Map<string, string> =>
    new Map(vectors.filter((v) => v.section === s).map((v) => [v.name, v.bytes]));
  const a = by('go-msgpack-0.5');
  const b = by('go-msgpack-2');
  const differ = [...a.keys()].filter((k) => a.get(k) !== b.get(k));
  t.same(differ.sort(), ['pushPullHeader', 'userMsgHeader']);
  // Default style is 0.5.5's, what serf 0.9.4 (memberlist 0.2.2) sends.
  t.equal(hex(codecs.userMsgHeader.encode({ userMsgLen: 40000 })), a.get('userMsgHeader'));
});

t.test('DECODE lines: how Go treats odd inputs', async (t) => {
  const names = new Set(decodeLines.map((d) => d.line.split(/\s+/)[1]));
  t.same([...names].sort(), [
    'ints-extra-key',
    'lowercase-keys',
    'string-as-bin8',
    'vsn-array-bin-str8',
  ]);
  for (const d of decodeLines) {
    t.match(
      d.line,
      d.line.includes('string-as-bin8') && d.section === 'go-msgpack-0.5'
        ? /err=codec/
        : /err=<nil>/,
    );
  }

  // vsn-array-bin-str8: Node as str8, Addr as bin8, Meta as empty bin, Vsn as an array of ints.
  const name = Buffer.from('node-name-that-is-longer-than-31-bytes');
  const w = new MsgpackWriter();
  w.mapHeader(4);
  w.str(Buffer.from('Node'));
  w.byte(0xd9);
  w.byte(name.length);
  w.raw(name);
  w.str(Buffer.from('Addr'));
  w.raw(unhex('c4047f000001'));
  w.str(Buffer.from('Meta'));
  w.raw(unhex('c400'));
  w.str(Buffer.from('Vsn'));
  w.raw(unhex('96010502020504'));
  t.same(plain(decodeAlive(w.finish())), {
    incarnation: 0,
    node: 'node-name-that-is-longer-than-31-bytes',
    addr: '7f000001',
    port: 0,
    meta: '',
    vsn: '010502020504',
  });

  // ints-extra-key: 64-bit SeqNo, int16 SourcePort, and an unknown key holding nested values.
  const x = new MsgpackWriter();
  x.mapHeader(4);
  x.str(Buffer.from('SeqNo'));
  x.raw(unhex('cf0000000000000007'));
  x.str(Buffer.from('Node'));
  x.str(Buffer.from('n2'));
  x.str(Buffer.from('Extra'));
  x.raw(unhex('93c3cb3ff000000000000081a161d40102')); // [true, 1.0, {"a": fixext1}]
  x.str(Buffer.from('SourcePort'));
  x.raw(unhex('d11f0a'));
  t.same(plain(decodePing(x.finish())), {
    seqNo: 7,
    node: 'n2',
    sourceAddr: '',
    sourcePort: 7946,
    sourceNode: '',
  });

  // string-as-bin8: go-msgpack 0.5.5 refuses a string field sent as bin, v2 accepts it. We
  // accept it (liberal receiver) but never send it (see the encoder tests below).
  t.same(plain(decodePing(unhex('82a55365714e6f07a44e6f6465c4026e32'))), {
    seqNo: 7,
    node: 'n2',
    sourceAddr: '',
    sourcePort: 0,
    sourceNode: '',
  });

  // lowercase-keys: field names match case-sensitively; unknown keys are skipped.
  t.same(plain(decodePing(unhex('82a57365714e6f07a46e6f6465a26e32'))), {
    seqNo: 0,
    node: '',
    sourceAddr: '',
    sourcePort: 0,
    sourceNode: '',
  });
});

t.test('encoder never sends str8 or bin, and picks the smallest str form Go uses', async (t) => {
  for (const [len, head] of [
    [0, 'a0'],
    [31, 'bf'],
    [32, 'da0020'],
    [255, 'da00ff'],
    [65535, 'daffff'],
    [65536, 'db00010000'],
  ] as const) {
    const w = new MsgpackWriter();
    w.str(new Uint8Array(len));
    t.equal(hex(w.finish().subarray(0, head.length / 2)), head, `str of ${len} bytes`);
  }
  const enc = codecs.ping.encode({
    seqNo: 1,
    node: 'x'.repeat(40),
    sourceAddr: new Uint8Array(40),
    sourcePort: 1,
    sourceNode: 'y',
  });
  t.notOk(hex(enc).includes('d928'), 'no str8');
  t.notOk(hex(enc).includes('c428'), 'no bin8');
});

t.test('integer forms: all widths accepted, ranges enforced', async (t) => {
  const forms: [string, number][] = [
    ['07', 7],
    ['cc07', 7],
    ['cd0007', 7],
    ['ce00000007', 7],
    ['cf0000000000000007', 7],
    ['d007', 7],
    ['d10007', 7],
    ['d200000007', 7],
    ['d30000000000000007', 7],
    ['ff', -1],
    ['e0', -32],
    ['d080', -128],
    ['d18000', -32768],
    ['d280000000', -2147483648],
    ['cdffff', 65535],
    ['ceffffffff', 4294967295],
  ];
  for (const [h, v] of forms) t.equal(new MsgpackReader(unhex(h)).integer(), v, h);
  t.throws(
    () => new MsgpackReader(unhex('cfffffffffffffffff')).integer(),
    WireError,
    'beyond 2^53',
  );
  t.throws(
    () => new MsgpackReader(unhex('cb3ff0000000000000')).integer(),
    WireError,
    'float is not an int',
  );

  // uint32 fields: negative and too-large values are refused; uint16 likewise.
  t.throws(() => codecs.nackResp.decode(unhex('81a55365714e6fff')), WireError);
  t.throws(() => codecs.nackResp.decode(unhex('81a55365714e6fcf0000000100000000')), WireError);
  t.throws(() => codecs.alive.decode(unhex('81a4506f7274ce00010000')), WireError);

  const style = (v: number, s: IntStyle): string => {
    const w = new MsgpackWriter();
    w.int(v, s);
    return hex(w.finish());
  };
  t.equal(style(200, 'go-msgpack-0.5'), 'ccc8');
  t.equal(style(200, 'go-msgpack-2'), 'd100c8');
  t.equal(style(-1, 'go-msgpack-0.5'), 'ff');
  t.equal(style(-33, 'go-msgpack-2'), 'd0df');
  t.equal(style(-40000, 'go-msgpack-0.5'), 'd2ffff63c0');
  t.equal(style(2 ** 40, 'go-msgpack-2'), 'd30000010000000000');
});

t.test(
  'struct semantics: nil means zero, last duplicate wins, bad types are WireErrors',
  async (t) => {
    t.same(plain(codecs.errResp.decode(unhex('c0'))), { error: '' }, 'nil struct');
    t.same(plain(codecs.errResp.decode(unhex('81a54572726f72c0'))), { error: '' }, 'nil field');
    t.same(plain(codecs.nackResp.decode(unhex('82a55365714e6f01a55365714e6f02'))), { seqNo: 2 });
    t.same(
      plain(codecs.nackResp.decode(unhex('81a55365714e6f01ffff'))),
      { seqNo: 1 },
      'trailing bytes ignored',
    );
    for (const bad of [
      '',
      '91',
      '81',
      '81a5',
      '81a54572726f72',
      '81a54572726f7281',
      '81a54572726f7207',
      '81a54572726f72a5626f6f',
      'c1',
      '8101c0',
    ]) {
      try {
        codecs.errResp.decode(unhex(bad));
        t.fail(`${bad} should not decode`);
      } catch (e) {
        t.ok(
          e instanceof WireError && e instanceof MeshError && e.code === 'EWIRE',
          `${bad || '(empty)'}: ${String(e)}`,
        );
      }
    }
    const truncated = (() => {
      try {
        codecs.errResp.decode(unhex('81a54572726f72a5626f6f'));
      } catch (e) {
        return (e as WireError).truncated;
      }
      return false;
    })();
    t.equal(truncated, true, 'a cut-off input is flagged truncated');
    // Huge announced lengths fail on the bounds check, without allocating.
    t.throws(() => codecs.errResp.decode(unhex('81a54572726f72dbffffffff')), WireError);
    t.throws(() => codecs.errResp.decode(unhex('dfffffffff')), WireError);
    t.throws(() => codecs.alive.decode(unhex('81a3567356ddffffffff')), WireError);
    // Unknown keys nested past the cap.
    const deep = new Uint8Array(2 + 4 + 100);
    deep.set(unhex('81a45a7a7a7a'));
    deep.fill(0x91, 6);
    t.throws(() => codecs.errResp.decode(deep), /nesting deeper/);
  },
);

t.test('version array rules: only 6 entries, no zero, ordered', async (t) => {
  const alive = {
    incarnation: 1,
    node: 'n1',
    addr: unhex('7f000001'),
    port: 7946,
    meta: new Uint8Array(0),
    vsn: new Uint8Array(OUR_VSN),
  };
  t.same([...OUR_VSN], [1, 5, 2, 2, 5, 4]);
  t.equal(hex(encodeAlive(alive)), vectors.find((v) => v.name === 'alive')?.bytes);
  for (const vsn of [
    [1, 5, 2],
    [],
    [1, 5, 2, 2, 5, 4, 0],
    [1, 5, 2, 0, 5, 4],
    [1, 5, 2, 2, 5, 0],
    [0, 5, 2, 2, 5, 4],
    [1, 5, 6, 2, 5, 4],
    [1, 5, 2, 2, 5, 9],
  ]) {
    t.throws(
      () => encodeAlive({ ...alive, vsn: new Uint8Array(vsn) }),
      WireError,
      `alive vsn [${vsn.join(',')}]`,
    );
    t.throws(
      () =>
        encodePushNodeState({
          name: 'n1',
          addr: alive.addr,
          port: 1,
          meta: alive.meta,
          incarnation: 1,
          state: 0,
          vsn: new Uint8Array(vsn),
        }),
      WireError,
      `pushNodeState vsn [${vsn.join(',')}]`,
    );
  }
  t.throws(() => encodeAlive({ ...alive, meta: new Uint8Array(513) }), /meta is 513 bytes/);
  t.ok(encodeAlive({ ...alive, meta: new Uint8Array(512) }).length > 512);
});

t.test('encoder refuses values that do not fit the Go field', async (t) => {
  t.throws(() =>
    codecs.ping.encode({
      seqNo: -1,
      node: '',
      sourceAddr: new Uint8Array(0),
      sourcePort: 0,
      sourceNode: '',
    }),
  );
  t.throws(() =>
    codecs.ping.encode({
      seqNo: 2 ** 32,
      node: '',
      sourceAddr: new Uint8Array(0),
      sourcePort: 0,
      sourceNode: '',
    }),
  );
  t.throws(() =>
    codecs.ping.encode({
      seqNo: 1,
      node: '',
      sourceAddr: new Uint8Array(0),
      sourcePort: 65536,
      sourceNode: '',
    }),
  );
  t.throws(() => codecs.pushPullHeader.encode({ nodes: 1.5, userStateLen: 0, join: false }));
});
