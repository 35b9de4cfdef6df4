// Message types, compound, CRC, label, packet and stream layering, and real serf traffic.
import t from 'tap';

import { makeCompound, makeCompounds, splitCompound } from '../../src/gossip/compound.js';
import { addCrc, crc32, stripCrc } from '../../src/gossip/crc32.js';
import { Keyring } from '../../src/gossip/keyring.js';
import { addLabel, checkLabel, labelOverhead, removeLabel } from '../../src/gossip/label.js';
import { WireError } from '../../src/gossip/msgpack.js';
import {
  compressMessage,
  decodePacket,
  openPacket,
  openStream,
  sealMessages,
  sealPacket,
  sealStream,
} from '../../src/gossip/packet.js';
import {
  MessageType,
  NodeState,
  OUR_VSN,
  decodeMessage,
  decodePushPullBody,
  decodeStreamUserMsgBody,
  encodeMessage,
  encodePushPull,
  encodeStreamUserMsg,
  messageTypeName,
  type PacketMessage,
} from '../../src/gossip/wire.js';
import {
  SERF_KEY,
  SERF_STREAM_ENCRYPTED,
  SERF_STREAM_PLAIN,
  SERF_UDP_ENCRYPTED,
  SERF_UDP_PARTS,
  SERF_UDP_PLAIN,
} from '../lib/gossip-serf-captures.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));
const bytes = (...b: number[]): Uint8Array => new Uint8Array(b);
const truncatedError = (fn: () => unknown): boolean => {
  try {
    fn();
  } catch (e) {
    return e instanceof WireError && e.truncated;
  }
  return false;
};

const ping: PacketMessage = {
  type: MessageType.ping,
  body: {
    seqNo: 7,
    node: 'n2',
    sourceAddr: bytes(127, 0, 0, 1),
    sourcePort: 7946,
    sourceNode: 'n1',
  },
};
const alive: PacketMessage = {
  type: MessageType.alive,
  body: {
    incarnation: 1,
    node: 'n1',
    addr: bytes(127, 0, 0, 1),
    port: 7946,
    meta: new Uint8Array(0),
    vsn: new Uint8Array(OUR_VSN),
  },
};

t.test("message type numbers are memberlist's", async (t) => {
  t.same(MessageType, {
    ping: 0,
    indirectPing: 1,
    ackResp: 2,
    suspect: 3,
    alive: 4,
    dead: 5,
    pushPull: 6,
    compound: 7,
    user: 8,
    compress: 9,
    encrypt: 10,
    nackResp: 11,
    hasCrc: 12,
    err: 13,
    hasLabel: 244,
  });
  t.same(NodeState, { alive: 0, suspect: 1, dead: 2, left: 3 });
  t.equal(messageTypeName(244), 'hasLabel(244)');
  t.equal(messageTypeName(99), 'unknown(99)');
});

t.test('encodeMessage / decodeMessage for every packet message', async (t) => {
  const msgs: PacketMessage[] = [
    ping,
    alive,
    {
      type: MessageType.indirectPing,
      body: {
        seqNo: 70000,
        target: bytes(127, 0, 0, 1),
        port: 7946,
        node: 'n2',
        nack: true,
        sourceAddr: bytes(127, 0, 0, 1),
        sourcePort: 7946,
        sourceNode: 'n1',
      },
    },
    { type: MessageType.ackResp, body: { seqNo: 7, payload: bytes(1, 2, 3) } },
    { type: MessageType.nackResp, body: { seqNo: 7 } },
    { type: MessageType.suspect, body: { incarnation: 3, node: 'n2', from: 'n1' } },
    { type: MessageType.dead, body: { incarnation: 3, node: 'n2', from: 'n2' } },
    { type: MessageType.err, body: { error: 'boom' } },
    { type: MessageType.user, body: bytes(0xde, 0xad) },
  ];
  for (const m of msgs) {
    const enc = encodeMessage(m);
    t.equal(enc[0], m.type, `${messageTypeName(m.type)} type byte`);
    t.same(decodeMessage(enc), m, messageTypeName(m.type));
  }
  t.equal(
    hex(encodeMessage(ping)),
    '00' +
      '85a44e6f6465a26e32a55365714e6f07aa536f7572636541646472a47f000001aa536f757263654e6f6465a26e31aa536f75726365506f7274cd1f0a',
  );
  t.equal(
    hex(encodeMessage({ type: MessageType.user, body: bytes(1) })),
    '0801',
    'UDP user message: no header',
  );
  for (const ty of [6, 7, 9, 10, 12, 14, 244]) {
    t.throws(
      () => decodeMessage(bytes(ty, 0x80)),
      WireError,
      `leaf decoder refuses ${messageTypeName(ty)}`,
    );
  }
  t.throws(() => decodeMessage(new Uint8Array(0)), /missing message type byte/);
});

t.test('compound messages', async (t) => {
  t.equal(hex(makeCompound([bytes(1, 2), bytes(3)])), '0702' + '0002' + '0001' + '0102' + '03');
  const split = splitCompound(unhex('02000200010102' + '03' + 'ffff'));
  t.same(split.parts.map(hex), ['0102', '03'], 'trailing bytes ignored');
  t.equal(split.truncated, 0);
  const cut = splitCompound(unhex('03000200020001010203'));
  t.same(cut.parts.map(hex), ['0102']);
  t.equal(cut.truncated, 2, 'parts whose bytes are missing are counted, not fatal');
  t.throws(() => splitCompound(new Uint8Array(0)), /missing part count/);
  t.throws(() => splitCompound(unhex('020001')), /length table/);
  t.same(splitCompound(unhex('00')).parts, [], 'zero parts');

  const many = Array.from({ length: 600 }, (_, i) => bytes(i & 0xff));
  const compounds = makeCompounds(many);
  t.same(
    compounds.map((c) => c[1]),
    [255, 255, 90],
    'at most 255 per compound',
  );
  t.same(
    compounds.flatMap((c) => splitCompound(c.subarray(1)).parts.map((p) => p[0])),
    many.map((m) => m[0]),
  );
  t.throws(() => makeCompound(many.slice(0, 256)), /at most 255/);
  t.throws(() => makeCompound([new Uint8Array(65536)]), /exceeds 65535/);
  t.equal(makeCompound([new Uint8Array(65535)]).length, 65535 + 4);
});

t.test('CRC32 framing', async (t) => {
  t.equal(crc32(new TextEncoder().encode('123456789')), 0xcbf43926, 'IEEE check value');
  t.equal(crc32(new Uint8Array(0)), 0);
  t.equal(
    crc32(new TextEncoder().encode('The quick brown fox jumps over the lazy dog')),
    0x414fa339,
  );
  const msg = encodeMessage(ping);
  const framed = addCrc(msg);
  t.equal(framed[0], MessageType.hasCrc);
  t.equal(new DataView(framed.buffer).getUint32(1), crc32(msg), 'big-endian after the type byte');
  t.same(stripCrc(framed), msg);
  const bad = framed.slice();
  bad[10] = (bad[10] as number) ^ 1;
  t.throws(() => stripCrc(bad), /check packet crc/);
  t.same(
    stripCrc(bytes(12, 0, 0)),
    bytes(12, 0, 0),
    'under 5 bytes memberlist does not look for a CRC',
  );
  t.same(stripCrc(msg), msg, 'no header, unchanged');
});

t.test('labels', async (t) => {
  t.equal(hex(addLabel(bytes(0), 'ab')), 'f402616200');
  t.same(addLabel(bytes(0), ''), bytes(0), 'empty label: no header');
  t.equal(labelOverhead(''), 0);
  t.equal(labelOverhead('abc'), 5);
  t.same(removeLabel(unhex('f402616200')), { label: 'ab', rest: bytes(0) });
  t.same(removeLabel(bytes(0, 1)), { label: '', rest: bytes(0, 1) });
  t.throws(() => removeLabel(bytes(244)), /truncated/);
  t.throws(() => removeLabel(bytes(244, 3, 1)), /truncated/);
  t.throws(() => removeLabel(bytes(244, 0, 1)), /cannot be empty/);
  t.throws(() => addLabel(bytes(), 'x'.repeat(256)), /at most 255/);
  t.equal(addLabel(bytes(), 'x'.repeat(255)).length, 257);
  t.same(checkLabel(unhex('f402616200'), { label: 'ab' }).label, 'ab');
  t.throws(
    () => checkLabel(bytes(0), { label: 'ab' }),
    /discarding/,
    'unlabeled refused when we have a label',
  );
  t.throws(
    () => checkLabel(unhex('f402616200'), { label: '' }),
    /discarding/,
    'labeled refused when we have none',
  );
  t.equal(checkLabel(bytes(0), { label: 'ab', skipInboundLabelCheck: true }).label, 'ab');
  t.throws(
    () => checkLabel(unhex('f402616200'), { label: 'ab', skipInboundLabelCheck: true }),
    /double label/,
  );
});

t.test('packet layering: seal and open in memberlist order', async (t) => {
  const key = new Uint8Array(16).fill(7);
  let n = 0;
  const keyring = new Keyring(key, [], { randomBytes: (k) => new Uint8Array(k).fill(++n) });
  const msgs = [encodeMessage(ping), encodeMessage(alive)];
  for (const compress of [false, true]) {
    for (const crc of [false, true]) {
      for (const kr of [null, keyring]) {
        for (const label of ['', 'prod']) {
          const wire = sealMessages(msgs, { compress, crc, keyring: kr, label });
          const what = `compress=${compress} crc=${crc} enc=${kr !== null} label=${label}`;
          if (label) t.equal(wire[0], MessageType.hasLabel, `${what}: label first`);
          else if (kr) t.equal(wire[0], 1, `${what}: encryption version first`);
          else if (crc) t.equal(wire[0], MessageType.hasCrc, `${what}: crc first`);
          const d = decodePacket(wire, { keyring: kr, label });
          t.same(d.messages, [ping, alive], what);
          t.same(d.errors, []);
          t.equal(d.keyId, kr ? keyring.ids().primary : null);
        }
      }
    }
  }
  // Compression is kept only when it shrinks the packet (rawSendMsgPacket).
  const tiny = encodeMessage({ type: MessageType.nackResp, body: { seqNo: 1 } });
  t.same(sealPacket(tiny, { compress: true }), tiny);
  const big = makeCompound(Array.from({ length: 20 }, () => encodeMessage(alive)));
  t.equal(sealPacket(big, { compress: true })[0], MessageType.compress);

  // Encrypted packet to a plaintext receiver and vice versa.
  const enc = sealPacket(msgs[0] as Uint8Array, { keyring });
  t.throws(
    () => decodePacket(msgs[0] as Uint8Array, { keyring }),
    /decrypt payload/,
    'plaintext refused',
  );
  t.same(decodePacket(msgs[0] as Uint8Array, { keyring, verifyIncoming: false }).messages, [ping]);
  t.equal(
    decodePacket(enc).errors.length,
    1,
    'no keyring: version byte 1 reads as a broken indirectPing',
  );
  const other = new Keyring(new Uint8Array(16).fill(8));
  t.throws(() => decodePacket(enc, { keyring: other }), /none of the 1 installed keys/);
  // Label is authenticated: stripping or changing it breaks decryption.
  const labeled = sealPacket(msgs[0] as Uint8Array, { keyring, label: 'a' });
  const relabeled = addLabel(removeLabel(labeled).rest, 'b');
  t.throws(() => decodePacket(relabeled, { keyring, label: 'b' }), /decrypt payload/);
  t.throws(
    () =>
      decodePacket(removeLabel(labeled).rest, { keyring, skipInboundLabelCheck: true, label: 'b' }),
    /decrypt/,
  );
  t.same(
    decodePacket(removeLabel(labeled).rest, { keyring, skipInboundLabelCheck: true, label: 'a' })
      .messages,
    [ping],
  );
  // CRC failure drops the whole packet.
  const crcd = sealPacket(msgs[0] as Uint8Array, { crc: true });
  crcd[crcd.length - 1] = (crcd[crcd.length - 1] as number) ^ 0xff;
  t.throws(() => decodePacket(crcd), /crc/);
});

t.test(
  'packet flattening: bad parts are counted, siblings survive, nesting is capped',
  async (t) => {
    const good = encodeMessage(ping);
    const d = decodePacket(
      makeCompound([good, bytes(0, 0xc1), bytes(), bytes(99), compressMessage(good)]),
    );
    t.same(d.messages, [ping, ping]);
    t.equal(d.errors.length, 3, 'bad body, empty part, unknown type');
    let nested = good;
    for (let i = 0; i < 6; i++) nested = i % 2 ? compressMessage(nested) : makeCompound([nested]);
    const deep = decodePacket(nested);
    t.same(deep.messages, []);
    t.match(String(deep.errors[0]), /nested deeper than 4/);
    t.same(decodePacket(nested, { maxDepth: 6 }).messages, [ping]);
    const wide = decodePacket(makeCompound(Array.from({ length: 10 }, () => good)), {
      maxMessages: 4,
    });
    t.equal(wide.messages.length, 4);
    t.equal(wide.errors.length, 6);
    const cut = makeCompound([good, good]).subarray(0, 10 + good.length);
    t.equal(decodePacket(cut).truncated, 1);
    // A compression bomb inside a packet hits the packet cap (1 MiB by default).
    const bomb = compressMessage(new Uint8Array(2 * 1024 * 1024));
    t.ok(bomb.length < 20000, `2 MiB of zeros compress to ${bomb.length} bytes`);
    const b = decodePacket(bomb);
    t.match(String(b.errors[0]), /exceeds the 1048576-byte limit/);
    // The budget is per packet, not per layer: many small bombs in one compound add up.
    const userMsg = new Uint8Array(400 * 1024);
    userMsg[0] = MessageType.user;
    const part = compressMessage(userMsg);
    const many = decodePacket(makeCompound([part, part, part]));
    t.equal(many.messages.length, 2);
    t.equal(many.errors.length, 1, 'third 400 KiB expansion exceeds the 1 MiB packet budget');
    t.match(String(many.errors[0]), /exceeds the 229376-byte limit/);
  },
);

t.test('stream layering: push/pull and user messages', async (t) => {
  const keyring = new Keyring(new Uint8Array(24).fill(3));
  const pp = {
    join: true,
    nodes: [
      {
        name: 'n1',
        addr: bytes(198, 18, 0, 1),
        port: 7946,
        meta: bytes(1),
        incarnation: 9,
        state: NodeState.suspect,
        vsn: new Uint8Array(OUR_VSN),
      },
      {
        name: 'n2',
        addr: bytes(198, 18, 0, 2),
        port: 7946,
        meta: new Uint8Array(0),
        incarnation: 1,
        state: NodeState.left,
        vsn: new Uint8Array(OUR_VSN),
      },
    ],
    userState: bytes(5, 6, 7),
  };
  const raw = encodePushPull(pp);
  t.equal(raw[0], MessageType.pushPull);
  for (const compress of [false, true]) {
    for (const kr of [null, keyring]) {
      for (const label of ['', 'x']) {
        const wire = sealStream(raw, { compress, keyring: kr, label });
        const s = openStream(wire, { keyring: kr, label });
        t.equal(s.type, MessageType.pushPull);
        const body = decodePushPullBody(s.body);
        t.same(body.value, pp, `compress=${compress} enc=${kr !== null} label=${label}`);
        t.equal(body.consumed, s.body.length);
      }
    }
  }
  t.throws(() => openStream(raw, { keyring }), /not encrypted/);
  t.same(openStream(raw, { keyring, verifyIncoming: false }).type, MessageType.pushPull);
  t.throws(() => openStream(sealStream(raw, { keyring })), /encryption is not configured/);
  t.ok(
    truncatedError(() => openStream(sealStream(raw, { keyring }).subarray(0, 30), { keyring })),
    'truncated',
  );

  // Truncation is reported as such at every point, so a stream reader can wait for more.
  for (let cut = 1; cut < raw.length; cut++) {
    try {
      decodePushPullBody(raw.subarray(1, cut));
      t.fail(`cut at ${cut} decoded`);
    } catch (e) {
      if (!(e instanceof WireError && e.truncated)) t.fail(`cut at ${cut}: ${String(e)}`);
    }
  }
  t.throws(
    () => decodePushPullBody(unhex('83a44a6f696ec2a54e6f646573ffac5573657253746174654c656e00')),
    /node count -1/,
  );
  t.throws(
    () =>
      decodePushPullBody(unhex('83a44a6f696ec2a54e6f64657300ac5573657253746174654c656ece7fffffff')),
    /user state length/,
  );

  const um = encodeStreamUserMsg(bytes(1, 2, 3));
  t.equal(hex(um), '0881aa557365724d73674c656e03010203');
  t.same(decodeStreamUserMsgBody(um.subarray(1)).value, bytes(1, 2, 3));
  t.ok(
    truncatedError(() => decodeStreamUserMsgBody(um.subarray(1, 14))),
    'truncated',
  );
  t.throws(() => decodeStreamUserMsgBody(unhex('81aa557365724d73674c656eff')), /outside/);
});

t.test('real serf traffic decodes (Go msgpack, Go LZW, Go AES-GCM)', async (t) => {
  const s = openStream(unhex(SERF_STREAM_PLAIN));
  t.equal(s.type, MessageType.pushPull);
  const pp = decodePushPullBody(s.body);
  t.equal(pp.value.join, false);
  t.equal(pp.value.nodes.length, 1);
  t.same(
    {
      ...pp.value.nodes[0],
      addr: hex(pp.value.nodes[0]?.addr ?? bytes()),
      meta: hex(pp.value.nodes[0]?.meta ?? bytes()),
      vsn: [...(pp.value.nodes[0]?.vsn ?? [])],
    },
    {
      name: 's1',
      addr: 'c6120001',
      port: 7946,
      meta: 'ff80',
      incarnation: 1,
      state: 0,
      vsn: [1, 5, 2, 2, 5, 5],
    },
  );
  t.equal(pp.value.userState[0], 2, 'serf user state starts with its messagePushPullType');
  t.equal(pp.consumed, s.body.length);

  const keyring = new Keyring(SERF_KEY);
  const se = openStream(unhex(SERF_STREAM_ENCRYPTED), { keyring });
  t.equal(se.keyId, keyring.ids().primary);
  t.same(
    decodePushPullBody(se.body).value.nodes.map((n) => n.name),
    ['s1'],
  );
  t.throws(
    () => openStream(unhex(SERF_STREAM_ENCRYPTED), { keyring: new Keyring(new Uint8Array(32)) }),
    /none of/,
  );

  const u = openPacket(unhex(SERF_UDP_PLAIN));
  t.same(u.parts.map(hex), SERF_UDP_PARTS, 'compressed compound of ack + alive');
  const d = decodePacket(unhex(SERF_UDP_PLAIN));
  t.same(
    d.messages.map((m) => m.type),
    [MessageType.ackResp, MessageType.alive],
  );
  const ack = d.messages[0];
  if (ack?.type === MessageType.ackResp) {
    t.equal(ack.body.seqNo, 101);
    t.equal(ack.body.payload.length, 130, 'payload (serf coordinate) sent as str16, read as bytes');
  } else t.fail('first message is not an ack');

  const ue = decodePacket(unhex(SERF_UDP_ENCRYPTED), { keyring });
  t.same(
    ue.messages.map((m) => m.type),
    [MessageType.ackResp, MessageType.alive],
  );

  // What serf itself sent (sorted keys, str16 payload, fixstr vsn, 0.5.5 ints) is what we send:
  // its whole compressed push/pull stream and its UDP messages come out byte for byte.
  t.equal(hex(sealStream(encodePushPull(pp.value), { compress: true })), SERF_STREAM_PLAIN);
  for (const part of SERF_UDP_PARTS) {
    t.equal(
      hex(encodeMessage(decodeMessage(unhex(part)))),
      part,
      'serf message re-encodes byte-exactly',
    );
  }
});
