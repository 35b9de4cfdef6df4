// Decoder fuzzing: random and mutated inputs (golden vectors, our encodings, serf captures)
// through every gossip decoder. Each must return or throw a MeshError; nothing may hang or
// keep memory. MESH_FUZZ_INPUTS sets the count (default 1,000,000); MESH_FUZZ_SEED the seed.
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

import t from 'tap';

import { makeCompound, splitCompound } from '../../src/gossip/compound.js';
import { addCrc, stripCrc } from '../../src/gossip/crc32.js';
import { decryptPayload, decryptStream } from '../../src/gossip/crypto.js';
import { Keyring } from '../../src/gossip/keyring.js';
import { addLabel, checkLabel, removeLabel } from '../../src/gossip/label.js';
import { lzwCompress, lzwDecompress } from '../../src/gossip/lzw.js';
import {
  compressMessage,
  decodePacket,
  openStream,
  sealMessages,
  sealStream,
} from '../../src/gossip/packet.js';
import {
  MessageType,
  OUR_VSN,
  codecs,
  decodeMessage,
  decodePushPullBody,
  decodeStreamUserMsgBody,
  encodeMessage,
  encodePushPull,
  encodeStreamUserMsg,
  type PacketMessage,
} from '../../src/gossip/wire.js';
import { MeshError } from '../../src/util/errors.js';
import {
  SERF_KEY,
  SERF_STREAM_ENCRYPTED,
  SERF_STREAM_PLAIN,
  SERF_UDP_ENCRYPTED,
  SERF_UDP_PARTS,
  SERF_UDP_PLAIN,
} from '../lib/gossip-serf-captures.js';

const INPUTS = Number(process.env.MESH_FUZZ_INPUTS ?? 1_000_000);
const SEED = Number(process.env.MESH_FUZZ_SEED ?? 0x5eed);

const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));

let state = SEED >>> 0 || 1;
function rnd(): number {
  state ^= state << 13;
  state ^= state >>> 17;
  state ^= state << 5;
  return (state >>> 0) / 0x100000000;
}
const below = (n: number): number => Math.floor(rnd() * n);

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const keyring = new Keyring(SERF_KEY, [new Uint8Array(16).fill(9)], {
  randomBytes: (n) => {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = below(256);
    return b;
  },
});

type Target = (buf: Uint8Array) => unknown;

const codecTargets: Record<string, Target> = Object.fromEntries(
  Object.entries(codecs).map(([name, c]) => [name, (b: Uint8Array) => c.decode(b)]),
);
const targets: Record<string, Target> = {
  ...codecTargets,
  message: decodeMessage,
  packet: (b) => decodePacket(b),
  packetEncrypted: (b) => decodePacket(b, { keyring }),
  packetLabeled: (b) => decodePacket(b, { label: 'prod', keyring, verifyIncoming: false }),
  stream: (b) => {
    const s = openStream(b, { maxDecompressed: 1 << 20 });
    return s.type === MessageType.pushPull
      ? decodePushPullBody(s.body)
      : decodeStreamUserMsgBody(s.body);
  },
  streamEncrypted: (b) => openStream(b, { keyring, maxDecompressed: 1 << 20 }),
  pushPull: decodePushPullBody,
  userMsg: decodeStreamUserMsgBody,
  compound: splitCompound,
  crc: stripCrc,
  label: removeLabel,
  labelCheck: (b) => checkLabel(b, { label: 'prod' }),
  lzw: (b) => lzwDecompress(b, 1 << 16),
  decrypt: (b) => decryptPayload(keyring.getKeys(), b, new Uint8Array(0)),
  decryptStream: (b) => decryptStream(keyring.getKeys(), b, new Uint8Array(0)),
};
const targetNames = Object.keys(targets);
// AES setup dominates the cost of the decrypting targets; give them fewer random picks.
const cheapTargets = targetNames.filter((n) => !/ncrypt|decrypt/.test(n));

interface Seed {
  bytes: Uint8Array;
  target: string;
}

function corpus(): Seed[] {
  const seeds: Seed[] = [];
  const golden = readFileSync(
    new URL('../../../test/fixtures/memberlist-golden-vectors.txt', import.meta.url),
    'utf8',
  );
  const codecOf = (name: string): string => name.replace(/-.*/, '');
  for (const line of golden.split('\n')) {
    const m = /^(\S+)\s+([0-9a-f]+)$/.exec(line);
    if (!m) continue;
    const target = codecOf(m[1] as string);
    seeds.push({ bytes: unhex(m[2] as string), target: target in targets ? target : 'message' });
  }
  const vsn = new Uint8Array(OUR_VSN);
  const msgs: PacketMessage[] = [
    {
      type: MessageType.ping,
      body: {
        seqNo: 1,
        node: 'n1',
        sourceAddr: Uint8Array.of(10, 0, 0, 1),
        sourcePort: 7946,
        sourceNode: 'me',
      },
    },
    {
      type: MessageType.indirectPing,
      body: {
        seqNo: 2,
        target: Uint8Array.of(10, 0, 0, 2),
        port: 7946,
        node: 'n2',
        nack: true,
        sourceAddr: new Uint8Array(0),
        sourcePort: 0,
        sourceNode: '',
      },
    },
    { type: MessageType.ackResp, body: { seqNo: 3, payload: Uint8Array.of(1, 2, 3) } },
    { type: MessageType.nackResp, body: { seqNo: 4 } },
    { type: MessageType.suspect, body: { incarnation: 5, node: 'n3', from: 'n1' } },
    {
      type: MessageType.alive,
      body: {
        incarnation: 6,
        node: 'n4',
        addr: Uint8Array.of(10, 0, 0, 4),
        port: 7946,
        meta: Uint8Array.of(9, 9),
        vsn,
      },
    },
    { type: MessageType.dead, body: { incarnation: 7, node: 'n5', from: 'n5' } },
    { type: MessageType.err, body: { error: 'nope' } },
    { type: MessageType.user, body: Uint8Array.of(1, 2, 3, 4) },
  ];
  const encoded = msgs.map((m) => encodeMessage(m));
  for (const e of encoded)
    seeds.push({ bytes: e, target: 'message' }, { bytes: e, target: 'packet' });
  seeds.push(
    { bytes: makeCompound(encoded), target: 'packet' },
    { bytes: compressMessage(makeCompound(encoded)), target: 'packet' },
    { bytes: addCrc(makeCompound(encoded)), target: 'packet' },
    {
      bytes: makeCompound([
        makeCompound(encoded.slice(0, 3)),
        compressMessage(encoded[5] as Uint8Array),
      ]),
      target: 'packet',
    },
    {
      bytes: sealMessages(encoded, { compress: true, crc: true, keyring }),
      target: 'packetEncrypted',
    },
    {
      bytes: sealMessages(encoded.slice(0, 2), { crc: true, keyring, label: 'prod' }),
      target: 'packetLabeled',
    },
    { bytes: addLabel(addCrc(encoded[0] as Uint8Array), 'prod'), target: 'labelCheck' },
    { bytes: addLabel(encoded[1] as Uint8Array, 'prod'), target: 'label' },
    { bytes: makeCompound(encoded).subarray(1), target: 'compound' },
    { bytes: addCrc(encoded[2] as Uint8Array), target: 'crc' },
    { bytes: unhex(SERF_UDP_PLAIN), target: 'packet' },
    { bytes: unhex(SERF_UDP_ENCRYPTED), target: 'packetEncrypted' },
    { bytes: unhex(SERF_UDP_ENCRYPTED), target: 'decrypt' },
    { bytes: unhex(SERF_STREAM_PLAIN), target: 'stream' },
    { bytes: unhex(SERF_STREAM_ENCRYPTED), target: 'streamEncrypted' },
    { bytes: unhex(SERF_STREAM_ENCRYPTED), target: 'decryptStream' },
    { bytes: codecs.compress.decode(unhex(SERF_STREAM_PLAIN).subarray(1)).buf, target: 'lzw' },
    {
      bytes: lzwCompress(new TextEncoder().encode('the quick brown fox '.repeat(30))),
      target: 'lzw',
    },
    { bytes: lzwCompress(new Uint8Array(3000)), target: 'lzw' },
  );
  for (const p of SERF_UDP_PARTS) seeds.push({ bytes: unhex(p), target: 'message' });
  const pp = encodePushPull({
    join: true,
    nodes: [1, 2, 3].map((i) => ({
      name: `n${i}`,
      addr: Uint8Array.of(10, 0, 0, i),
      port: 7946,
      meta: new Uint8Array(0),
      incarnation: i,
      state: i % 4,
      vsn,
    })),
    userState: Uint8Array.of(7, 7, 7),
  });
  seeds.push(
    { bytes: pp.subarray(1), target: 'pushPull' },
    { bytes: sealStream(pp, { compress: true }), target: 'stream' },
    { bytes: sealStream(pp, { keyring }), target: 'streamEncrypted' },
    { bytes: encodeStreamUserMsg(Uint8Array.of(1, 2)).subarray(1), target: 'userMsg' },
    { bytes: sealStream(encodeStreamUserMsg(Uint8Array.of(1, 2))), target: 'stream' },
  );
  return seeds;
}

const INTERESTING = [
  0x00, 0x01, 0x07, 0x09, 0x0a, 0x0c, 0x1f, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1,
  0xc2, 0xc4, 0xc6, 0xc9, 0xcc, 0xcf, 0xd3, 0xd4, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf,
  0xe0, 0xf4, 0xff,
];

function cat(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function mutate(src: Uint8Array, seeds: Seed[]): Uint8Array {
  let b: Uint8Array = src.slice();
  const rounds = 1 + below(4);
  for (let r = 0; r < rounds; r++) {
    const at = b.length ? below(b.length) : 0;
    switch (below(8)) {
      case 0:
        if (b.length) b[at] = (b[at] as number) ^ (1 << below(8));
        break;
      case 1:
        if (b.length) b[at] = INTERESTING[below(INTERESTING.length)] as number;
        break;
      case 2: {
        const ins = new Uint8Array(1 + below(8)).map(() => below(256));
        b = cat(b.subarray(0, at), ins, b.subarray(at));
        break;
      }
      case 3:
        b = cat(b.subarray(0, at), b.subarray(at + 1 + below(8)));
        break;
      case 4:
        b = b.slice(0, at);
        break;
      case 5: {
        const len = 1 + below(16);
        b = cat(b.subarray(0, at), b.subarray(at, at + len), b.subarray(at));
        break;
      }
      case 6: {
        const other = (seeds[below(seeds.length)] as Seed).bytes;
        const from = below(other.length + 1);
        b = cat(b.subarray(0, at), other.subarray(from, from + 1 + below(64)));
        break;
      }
      default:
        for (let i = 0; i < 4 && at + i < b.length; i++) b[at + i] = 0xff;
    }
  }
  return b;
}

function randomInput(): Uint8Array {
  const len = rnd() < 0.9 ? below(64) : below(2048);
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = below(256);
  // Give random inputs a plausible first byte now and then, to get past the type switch.
  if (len && rnd() < 0.5) b[0] = below(16);
  return b;
}

t.test(`fuzz ${INPUTS} inputs across ${targetNames.length} decoders`, async (t) => {
  const seeds = corpus();
  for (const s of seeds) t.ok(s.target in targets, `seed target ${s.target}`);
  // Every seed decodes cleanly before mutation (a broken seed would waste the run).
  for (const s of seeds) {
    try {
      (targets[s.target] as Target)(s.bytes);
    } catch (e) {
      t.fail(`seed for ${s.target} does not decode: ${String(e)}`);
    }
  }

  const perTarget = new Map<string, { runs: number; errors: number }>();
  for (const n of targetNames) perTarget.set(n, { runs: 0, errors: 0 });
  const foreign: string[] = [];
  let errors = 0;
  let partial = 0;
  let slowest = 0;
  let slowestWhat = '';
  let slowestInput: [string, Uint8Array] = ['crc', new Uint8Array(0)];
  let heapBase = 0;
  let heapPeak = 0;
  // Stack traces are most of the cost of a thrown error and tell the fuzzer nothing; the
  // message of a foreign error is kept below, which is what a failure report needs.
  const stackTraceLimit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  const started = performance.now();

  for (let i = 0; i < INPUTS; i++) {
    if (i === 20_000) {
      gc();
      heapBase = process.memoryUsage().heapUsed;
    }
    let input: Uint8Array;
    let target: string;
    const seed = seeds[below(seeds.length)] as Seed;
    if (rnd() < 0.2) {
      input = randomInput();
      target = cheapTargets[below(cheapTargets.length)] as string;
    } else {
      input = mutate(seed.bytes, seeds);
      target = rnd() < 0.75 ? seed.target : (cheapTargets[below(cheapTargets.length)] as string);
    }
    const stats = perTarget.get(target) as { runs: number; errors: number };
    stats.runs++;
    const t0 = performance.now();
    try {
      const r = (targets[target] as Target)(input);
      if (
        typeof r === 'object' &&
        r !== null &&
        'errors' in r &&
        (r.errors as unknown[]).length > 0
      ) {
        partial++;
      }
    } catch (e) {
      if (e instanceof MeshError) {
        errors++;
        stats.errors++;
      } else if (foreign.length < 5) {
        foreign.push(`${target} ${Buffer.from(input).toString('hex')}: ${String(e)}`);
      }
    }
    const dt = performance.now() - t0;
    if (dt > slowest) {
      slowest = dt;
      slowestWhat = `${target} on ${input.length} bytes`;
      slowestInput = [target, input];
    }
    if (i % 100_000 === 99_999) heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
  }
  const elapsed = performance.now() - started;
  Error.stackTraceLimit = stackTraceLimit;
  gc();
  const heapEnd = process.memoryUsage().heapUsed;

  t.same(foreign, [], 'only MeshError is ever thrown');
  // A single slow sample may be a GC pause or another process; rerun it alone to tell.
  let alone = Infinity;
  for (let k = 0; k < 3; k++) {
    const t0 = performance.now();
    try {
      (targets[slowestInput[0]] as Target)(slowestInput[1]);
    } catch {
      // counted above
    }
    alone = Math.min(alone, performance.now() - t0);
  }
  t.ok(
    alone < 50,
    `slowest input (${slowestWhat}): ${slowest.toFixed(1)} ms in the run, ${alone.toFixed(2)} ms alone`,
  );
  if (INPUTS > 20_000) {
    const growth = (heapEnd - heapBase) / 2 ** 20;
    t.ok(
      growth < 16,
      `heap after gc grew ${growth.toFixed(1)} MiB (peak ${(heapPeak / 2 ** 20).toFixed(0)} MiB)`,
    );
  }
  for (const [name, s] of perTarget)
    t.ok(s.runs > 0, `${name}: ${s.runs} runs, ${s.errors} errors`);
  t.comment(
    `fuzz: ${INPUTS} inputs in ${(elapsed / 1000).toFixed(1)} s, ${errors} decode errors (MeshError), ` +
      `${INPUTS - errors} decoded (${partial} packets with bad inner parts dropped), slowest ${slowest.toFixed(1)} ms, seed ${SEED}`,
  );
});
