// Raft wire codec: seeded round trips, golden bytes (a format change must show up here), frame
// splitting at every boundary, and decoder fuzzing (random and mutated inputs: EWIRE or a
// value, never another exception, never a hang). MESH_FUZZ_INPUTS / MESH_FUZZ_SEED override.
import t from 'tap';

import {
  batchSize,
  decodeAck,
  decodeBatch,
  decodeSnapChunk,
  encodeAckFrame,
  encodeBatch,
  encodeBatchInto,
  encodeFrame,
  encodeSnapChunkHeader,
  FrameDecoder,
  FrameKind,
  type Frame,
} from '../../src/raft/codec.js';
import { SeededRandom } from '../../src/raft/random.js';
import { EntryType, MessageType, type Entry, type Message } from '../../src/raft/types.js';
import { MeshError } from '../../src/util/errors.js';

const INPUTS = Number(process.env.MESH_FUZZ_INPUTS ?? 100_000);
const SEED = Number(process.env.MESH_FUZZ_SEED ?? 0x7a17);

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s.replace(/\s+/g, ''), 'hex'));

/** Numbers of every varint width, including the largest safe integer. */
function num(r: SeededRandom): number {
  switch (r.intn(6)) {
    case 0:
      return 0;
    case 1:
      return r.intn(128);
    case 2:
      return r.intn(1 << 20);
    case 3:
      return r.intn(0x80000000) + 0x7fffff00;
    case 4:
      return Math.floor(r.next() * Number.MAX_SAFE_INTEGER);
    default:
      return Number.MAX_SAFE_INTEGER - r.intn(3);
  }
}

function bytes(r: SeededRandom, max: number): Uint8Array {
  const b = new Uint8Array(r.intn(max + 1));
  for (let i = 0; i < b.length; i++) b[i] = r.intn(256);
  return b;
}

function ids(r: SeededRandom): number[] {
  return Array.from({ length: r.intn(5) }, () => num(r));
}

function randomMessage(r: SeededRandom): Message {
  const entries: Entry[] = Array.from({ length: r.intn(4) === 0 ? r.intn(40) : 0 }, () => ({
    term: num(r),
    index: num(r),
    type: r.intn(2) === 0 ? EntryType.Normal : EntryType.ConfChange,
    data: bytes(r, r.intn(10) === 0 ? 3000 : 40),
  }));
  const m: Message = {
    type: r.intn(19),
    from: num(r),
    to: num(r),
    term: num(r),
    logTerm: num(r),
    index: num(r),
    entries,
    commit: num(r),
    reject: r.intn(2) === 0,
    rejectHint: num(r),
  };
  if (r.intn(5) === 0) {
    m.snapshot = {
      metadata: {
        index: num(r),
        term: num(r),
        confState: { voters: ids(r), learners: ids(r), removed: ids(r) },
      },
      data: bytes(r, 5000),
    };
  }
  if (r.intn(4) === 0) m.context = bytes(r, 20);
  return m;
}

/** Plain structure for comparison (typed arrays as hex, optional fields only when present). */
function plain(m: Message): unknown {
  return JSON.parse(
    JSON.stringify(m, (_k, v: unknown) => (v instanceof Uint8Array ? `hex:${hex(v)}` : v)),
  );
}

t.test('seeded round trips of random batches', (t) => {
  const r = new SeededRandom(SEED);
  let total = 0;
  let views = 0;
  for (let round = 0; round < 2000; round++) {
    const msgs = Array.from({ length: r.intn(8) }, () => randomMessage(r));
    const enc = encodeBatch(msgs);
    if (enc.length !== batchSize(msgs)) t.fail(`round ${round}: batchSize disagrees`);
    const dec = decodeBatch(enc);
    total += msgs.length;
    if (JSON.stringify(dec.map(plain)) !== JSON.stringify(msgs.map(plain))) {
      t.same(dec.map(plain), msgs.map(plain), `round ${round}`);
      break;
    }
    // Decoded byte fields are copies, not views of the frame.
    for (const m of dec) for (const e of m.entries) if (e.data.buffer === enc.buffer) views++;
  }
  t.equal(views, 0, 'no decoded entry aliases the input');
  t.ok(total > 5000, `${total} messages round-tripped`);
  t.end();
});

t.test('encodeBatchInto writes a sub-range at an offset', (t) => {
  const r = new SeededRandom(7);
  const msgs = Array.from({ length: 5 }, () => randomMessage(r));
  const part = msgs.slice(1, 4);
  const b = new Uint8Array(3 + batchSize(part));
  const end = encodeBatchInto(msgs, b, 3, 1, 4);
  t.equal(end, b.length);
  t.same(decodeBatch(b.subarray(3)).map(plain), part.map(plain));
  t.end();
});

t.test('golden bytes', (t) => {
  const app: Message = {
    type: MessageType.App,
    from: 1,
    to: 2,
    term: 5,
    logTerm: 4,
    index: 300,
    entries: [{ term: 5, index: 301, type: EntryType.Normal, data: new Uint8Array([0x68, 0x69]) }],
    commit: 299,
    reject: false,
    rejectHint: 0,
  };
  const snap: Message = {
    type: MessageType.Snap,
    from: 1,
    to: 3,
    term: 2 ** 40,
    logTerm: 0,
    index: 0,
    entries: [],
    commit: 0,
    reject: true,
    rejectHint: 7,
    snapshot: {
      metadata: { index: 9, term: 2, confState: { voters: [1, 2, 3], learners: [], removed: [4] } },
      data: new Uint8Array([0xff]),
    },
    context: new Uint8Array([0xaa]),
  };
  const want = unhex(`
    01 02
    03 01 02 05 04 ac02 ab02 00 00 01   05 ad02 00 02 6869
    07 01 03 808080808020 00 00 00 07 07 00   09 02 03010203 00 0104 01ff   01aa`);
  t.equal(hex(encodeBatch([app, snap])), hex(want));
  t.same(decodeBatch(want).map(plain), [app, snap].map(plain));
  t.equal(hex(encodeFrame(FrameKind.RaftBatch, new Uint8Array([1, 0]))), '00000003030100');
  t.equal(hex(encodeAckFrame(300)), '0000000306ac02');
  t.equal(decodeAck(unhex('ac02')), 300);
  // Largest safe integer: 8 bytes, the last one 0x0f.
  const big = { ...app, entries: [], index: Number.MAX_SAFE_INTEGER };
  t.match(hex(encodeBatch([big])), /ffffffffffffff0f/);
  t.end();
});

t.test('the encoder refuses values that cannot be on the wire', (t) => {
  const base: Message = {
    type: MessageType.App,
    from: 1,
    to: 2,
    term: 1,
    logTerm: 0,
    index: 0,
    entries: [],
    commit: 0,
    reject: false,
    rejectHint: 0,
  };
  for (const bad of [-1, 1.5, 2 ** 53, NaN]) {
    t.throws(() => encodeBatch([{ ...base, term: bad }]), /invariant/, `term ${bad}`);
  }
  t.throws(() => encodeBatch([{ ...base, type: 19 as MessageType }]), /invariant/);
  t.end();
});

t.test('decoder rejects non-canonical and oversized fields with EWIRE', (t) => {
  const cases: [string, string][] = [
    ['', 'truncated'],
    ['02 00', 'version'],
    ['01 01', 'exceeds the bytes left'],
    ['01 00 00', 'trailing'],
    ['01 01 13 00000000000000 00 00', 'unknown message type 19'],
    ['01 01 08 8000 000000000000 00 00', 'shortest form'],
    ['01 01 08 00000000000000 08 00', 'unknown flags'],
    ['01 01 08 00000000000000 00 01 00 00 02 00', 'unknown entry type'],
    ['01 01 08 00000000000000 00 01 00 00 00 05 00', 'exceeds the bytes left'],
    ['01 01 08 ffffffffffffff7f 000000000000 00 00', 'exceeds 2^53-1'],
    ['01 01 08 ffffffffffffffff01 000000000000 00 00', 'longer than 8 bytes'],
    // A count that would allocate far more than the input: refused before allocating.
    ['01 ffffffff0f', 'exceeds the bytes left'],
    ['01 01 08 00000000000000 02 00 00 00 ffffff7f', 'exceeds the bytes left'],
  ];
  for (const [h, re] of cases) {
    try {
      decodeBatch(unhex(h));
      t.fail(`decoded: ${h}`);
    } catch (e) {
      t.ok(e instanceof MeshError && e.code === 'EWIRE', h);
      t.match((e as Error).message, re, h);
    }
  }
  t.end();
});

t.test('snapshot chunks', (t) => {
  const r = new SeededRandom(11);
  const m = randomMessage(r);
  m.type = MessageType.Snap;
  m.snapshot = {
    metadata: { index: 10, term: 3, confState: { voters: [1, 2], learners: [3], removed: [] } },
    data: bytes(r, 100),
  };
  const first = encodeSnapChunkHeader(4, 1000, 0, m);
  const data = new Uint8Array([1, 2, 3]);
  const c = decodeSnapChunk(Buffer.concat([first, data]));
  t.equal(c.seq, 4);
  t.equal(c.total, 1000);
  t.equal(c.offset, 0);
  t.same([...c.data], [1, 2, 3]);
  t.same(plain(c.msg!), plain({ ...m, snapshot: { ...m.snapshot, data: new Uint8Array(0) } }));
  const later = decodeSnapChunk(
    Buffer.concat([encodeSnapChunkHeader(4, 1000, 997, undefined), data]),
  );
  t.equal(later.msg, undefined);
  t.equal(later.offset, 997);
  t.throws(
    () => decodeSnapChunk(Buffer.concat([encodeSnapChunkHeader(4, 999, 997, undefined), data])),
    /beyond total/,
  );
  t.throws(
    () => decodeSnapChunk(encodeSnapChunkHeader(4, 10, 0, undefined)),
    /without its message/,
  );
  const notSnap = { ...m, type: MessageType.App };
  t.throws(() => decodeSnapChunk(encodeSnapChunkHeader(1, 0, 0, notSnap)), /exactly one MsgSnap/);
  t.end();
});

t.test('frame decoder: any split of a stream gives the same frames', (t) => {
  const r = new SeededRandom(5);
  const frames: Frame[] = Array.from({ length: 50 }, () => ({
    kind: 1 + r.intn(5),
    payload: bytes(r, r.intn(3) === 0 ? 5000 : 30),
  }));
  const stream = Buffer.concat(frames.map((f) => encodeFrame(f.kind, f.payload)));
  for (let trial = 0; trial < 200; trial++) {
    const d = new FrameDecoder(1 << 20);
    const got: Frame[] = [];
    let o = 0;
    while (o < stream.length) {
      const n = trial === 0 ? 1 : 1 + r.intn(trial < 100 ? 20 : 9000);
      d.push(stream.subarray(o, o + n));
      o += n;
      for (let f = d.next(); f !== undefined; f = d.next()) got.push(f);
    }
    if (d.pending !== 0) t.fail(`trial ${trial}: ${d.pending} bytes left over`);
    if (
      JSON.stringify(got.map((f) => [f.kind, hex(f.payload)])) !==
      JSON.stringify(frames.map((f) => [f.kind, hex(f.payload)]))
    ) {
      t.fail(`trial ${trial} split differently`);
      break;
    }
  }
  t.pass('200 random splittings');
  t.end();
});

t.test('frame decoder refuses an oversize or empty frame from its header alone', (t) => {
  const d = new FrameDecoder(1024);
  d.push(unhex('00000401'));
  t.throws(() => d.next(), /1025 bytes exceeds the limit of 1024/);
  const z = new FrameDecoder(1024);
  z.push(unhex('00000000'));
  t.throws(() => z.next(), /empty frame/);
  const ok = new FrameDecoder(1024);
  ok.push(unhex('0000040001'));
  t.equal(ok.next(), undefined, 'waits for the rest of a frame at the limit');
  t.end();
});

t.test(`decoder fuzz: ${INPUTS} random and mutated inputs`, (t) => {
  const r = new SeededRandom(SEED ^ 0x55aa);
  const seeds: Uint8Array[] = [];
  for (let i = 0; i < 64; i++) {
    seeds.push(encodeBatch(Array.from({ length: 1 + r.intn(4) }, () => randomMessage(r))));
  }
  const snapMsg = randomMessage(r);
  snapMsg.type = MessageType.Snap;
  snapMsg.snapshot ??= {
    metadata: { index: 1, term: 1, confState: { voters: [1], learners: [], removed: [] } },
    data: new Uint8Array(0),
  };
  const chunkSeeds = [
    Buffer.concat([encodeSnapChunkHeader(1, 10, 0, snapMsg), new Uint8Array(4)]),
    Buffer.concat([encodeSnapChunkHeader(9, 1 << 30, 1 << 20, undefined), new Uint8Array(9)]),
  ];
  let ok = 0;
  let ewire = 0;
  let worst = 0;
  const started = performance.now();
  for (let i = 0; i < INPUTS; i++) {
    let input: Uint8Array;
    const pool = i % 4 === 3 ? chunkSeeds : seeds;
    const mode = r.intn(4);
    if (mode === 0) {
      input = bytes(r, 64);
      if (input.length > 0 && r.intn(2) === 0) input[0] = 1;
    } else {
      const src = pool[r.intn(pool.length)]!;
      input = Uint8Array.from(src);
      const flips = 1 + r.intn(mode === 3 ? 20 : 3);
      for (let k = 0; k < flips && input.length > 0; k++) {
        const at = r.intn(input.length);
        input[at] = mode === 2 ? 0xff : r.intn(256);
      }
      if (r.intn(4) === 0) input = input.subarray(0, r.intn(input.length + 1));
    }
    const t0 = performance.now();
    try {
      if (pool === chunkSeeds) decodeSnapChunk(input);
      else if (i % 16 === 5) {
        // The same bytes as a stream: frames, and acks inside them.
        const d = new FrameDecoder(4096);
        d.push(input.subarray(0, input.length >> 1));
        d.push(input.subarray(input.length >> 1));
        for (let f = d.next(); f !== undefined; f = d.next()) decodeAck(f.payload);
      } else decodeBatch(input);
      ok++;
    } catch (e) {
      if (!(e instanceof MeshError) || e.code !== 'EWIRE') {
        t.fail(`input ${hex(input)} threw ${String(e)}`);
        break;
      }
      ewire++;
    }
    worst = Math.max(worst, performance.now() - t0);
  }
  const ms = performance.now() - started;
  t.equal(ok + ewire, INPUTS, `${ok} decoded, ${ewire} EWIRE in ${ms.toFixed(0)} ms`);
  t.ok(worst < 1000, `slowest input (GC and a loaded machine included) ${worst.toFixed(2)} ms`);
  t.ok(ok > 0 && ewire > 0, 'both outcomes seen');
  t.end();
});
