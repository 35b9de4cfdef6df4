// WAL, snapshot files and DiskStorage: round trip, torn-tail repair at every byte of the last
// batch, corruption refused, rotation and compaction, group commit, durability order, stalls.
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { crc32c } from '../../src/raft/crc32c.js';
import { DiskStorage } from '../../src/raft/diskstorage.js';
import { snapName } from '../../src/raft/snapfile.js';
import { EntryType, type Entry, type Ready } from '../../src/raft/types.js';
import {
  RecordType,
  Wal,
  WalCorruptError,
  WalFailedError,
  encodeRecords,
  nodeFs,
  type WalFile,
  type WalFs,
  type WalRecord,
} from '../../src/raft/wal.js';

const root = mkdtempSync(join(tmpdir(), 'mesh-wal-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
let dirs = 0;
const freshDir = (): string => join(root, `d${dirs++}`);

const ent = (index: number, term: number, size = 8): Entry => ({
  index,
  term,
  type: EntryType.Normal,
  data: Uint8Array.from({ length: size }, (_, i) => (index * 7 + i) & 0xff),
});
const rd = (p: Partial<Ready>): Ready => ({
  readStates: [],
  entries: [],
  committedEntries: [],
  messages: [],
  persistedMessages: [],
  mustSync: true,
  ...p,
});
const E = (e: Entry): WalRecord => ({ type: RecordType.Entry, entry: e });
const HS = (term: number, vote: number, commit: number): WalRecord => ({
  type: RecordType.HardState,
  hardState: { term, vote, commit },
});

/** nodeFs with counters and an optional gate in front of every segment datasync. */
function instrumentedFs(): WalFs & {
  datasyncs: number;
  /** fdatasync calls started (counted before the gate). */
  entered: number;
  gate: Promise<void> | null;
  failSync: boolean;
} {
  const fs = {
    ...nodeFs,
    datasyncs: 0,
    entered: 0,
    gate: null as Promise<void> | null,
    failSync: false,
    open: async (p: string, flags: string): Promise<WalFile> => {
      const fh = await nodeFs.open(p, flags);
      return {
        write: (b, o, l, pos) => fh.write(b, o, l, pos),
        truncate: (n) => fh.truncate(n),
        close: () => fh.close(),
        datasync: async () => {
          fs.entered++;
          if (fs.gate !== null && p.includes('.wal')) await fs.gate;
          if (fs.failSync && p.includes('.wal')) throw new Error('EIO: i/o error');
          fs.datasyncs++;
          await fh.datasync();
        },
      };
    },
  };
  return fs;
}

t.test('crc32c matches the standard check value', async (t) => {
  t.equal(crc32c(new TextEncoder().encode('123456789')), 0xe3069283);
  const b = new TextEncoder().encode('hello, write-ahead log!');
  t.equal(crc32c(b, crc32c(b, 0, 0, 5), 5), crc32c(b), 'continuation');
});

t.test('round trip through DiskStorage: entries, overwrite, hard state, bootstrap', async (t) => {
  const dir = freshDir();
  let s = await DiskStorage.open(dir, { bootstrapVoters: [1, 2, 3] });
  t.same(s.initialState().confState.voters, [1, 2, 3]);
  await s.save(
    rd({
      entries: [1, 2, 3, 4, 5].map((i) => ent(i, 1)),
      hardState: { term: 1, vote: 1, commit: 0 },
    }),
  );
  await s.save(
    rd({
      entries: [ent(4, 2), ent(5, 2), ent(6, 2, 1000)],
      hardState: { term: 2, vote: 3, commit: 3 },
    }),
  );
  await s.save(rd({ hardState: { term: 2, vote: 3, commit: 4 }, mustSync: false }));
  await s.close();
  s = await DiskStorage.open(dir, { bootstrapVoters: [9] });
  t.same(s.initialState(), {
    hardState: { term: 2, vote: 3, commit: 4 },
    confState: { voters: [1, 2, 3], learners: [], removed: [] },
  });
  t.equal(s.firstIndex(), 1);
  t.equal(s.lastIndex(), 6);
  t.same(
    s.entries(1, 7, Infinity).map((e) => e.term),
    [1, 1, 1, 2, 2, 2],
  );
  t.same(s.entries(6, 7, Infinity)[0], ent(6, 2, 1000));
  t.equal(s.recovered.repaired, null);
  await s.close();
});

t.test('torn tail: a cut at every byte of the last batch recovers the prefix', async (t) => {
  const src = freshDir();
  const { wal } = await Wal.open(src);
  await wal.append([E(ent(1, 1)), E(ent(2, 1)), HS(1, 1, 1)]);
  const name = wal.segments()[0]!;
  const before = readFileSync(join(src, name)).length;
  const last: WalRecord[] = [E(ent(3, 2, 40)), E(ent(4, 2, 3)), HS(2, 2, 3)];
  await wal.append(last);
  await wal.close();
  const full = readFileSync(join(src, name));
  t.equal(full.length, before + encodeRecords(last).length);
  // Ends of the records of the last batch, to know what a cut must keep.
  const ends: number[] = [];
  let o = before;
  for (const r of last) ends.push((o += encodeRecords([r]).length));
  let checked = 0;
  for (let cut = before; cut < full.length; cut++) {
    for (const mode of ['truncate', 'zeros'] as const) {
      const dir = freshDir();
      mkdirSync(dir);
      const bytes = Buffer.from(full);
      if (mode === 'zeros') bytes.fill(0, cut);
      writeFileSync(join(dir, name), mode === 'zeros' ? bytes : bytes.subarray(0, cut));
      // Zeroing bytes that were zero already leaves a record intact.
      const zeroFrom = (a: number, b: number): boolean => full.subarray(a, b).every((x) => x === 0);
      const kept =
        mode === 'zeros'
          ? ends.filter((e) => e <= cut || zeroFrom(cut, e)).length
          : ends.filter((e) => e <= cut).length;
      const { wal: w, state } = await Wal.open(dir);
      const wantLast = kept >= 2 ? 4 : kept === 1 ? 3 : 2;
      const lastEnt = state.entries[state.entries.length - 1]!;
      if (lastEnt.index !== wantLast || state.hardState.term !== (kept === 3 ? 2 : 1)) {
        t.fail(
          `cut ${cut} (${mode}): last ${lastEnt.index}, hard state ${JSON.stringify(state.hardState)}`,
        );
      }
      const cleanCut =
        mode === 'zeros' ? zeroFrom(cut, full.length) : ends.includes(cut) || cut === before;
      if (cleanCut !== (state.repaired === null))
        t.fail(`cut ${cut} (${mode}): repaired ${!cleanCut}?`);
      // The repaired log takes appends and replays them.
      await w.append([E(ent(wantLast + 1, 3))]);
      await w.close();
      const again = await Wal.open(dir);
      if (again.state.entries.length !== wantLast + 1 || again.state.repaired !== null) {
        t.fail(`cut ${cut} (${mode}): reopen after repair`);
      }
      await again.wal.close();
      rmSync(dir, { recursive: true });
      checked++;
    }
  }
  t.equal(checked, 2 * (full.length - before), `${checked} crash images recovered`);
});

t.test('corruption in a non-last segment is refused with file and offset', async (t) => {
  const dir = freshDir();
  const { wal } = await Wal.open(dir, { segmentBytes: 300 });
  for (let i = 1; i <= 40; i++) await wal.append([E(ent(i, 1, 20))]);
  const segs = wal.segments();
  await wal.close();
  t.ok(segs.length >= 4, `${segs.length} segments`);
  const victim = segs[1]!;
  const path = join(dir, victim);
  const good = readFileSync(path);
  const bad = Buffer.from(good);
  bad[good.length - 3]! ^= 0x10;
  writeFileSync(path, bad);
  const err = await Wal.open(dir).then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(err instanceof WalCorruptError, 'WalCorruptError');
  t.equal((err as WalCorruptError).file, victim);
  t.match((err as Error).message, new RegExp(`open wal ${victim}: crc mismatch at offset \\d+`));
  // A cut (not a flip) in a middle segment is refused too: it was synced before rotation.
  writeFileSync(path, good.subarray(0, good.length - 5));
  await t.rejects(Wal.open(dir), { code: 'EWAL_CORRUPT' });
  writeFileSync(path, good);
  rmSync(path);
  await t.rejects(Wal.open(dir), { code: 'EWAL_CORRUPT', message: /segment \d+ is missing/ });
  writeFileSync(path, good);
  // A crash while creating the next segment leaves a temp file: it is removed, not replayed.
  const tmp = `${segs[segs.length - 1]!.replace(/^[0-9a-f]{16}/, (x) => (parseInt(x, 16) + 1).toString(16).padStart(16, '0'))}.tmp`;
  writeFileSync(join(dir, tmp), 'half a header');
  const ok = await Wal.open(dir);
  t.equal(ok.state.entries.length, 40);
  t.notOk(readdirSync(dir).includes(tmp), 'temp segment removed');
  await ok.wal.close();
});

t.test('rotation names segments by sequence; compaction removes covered ones', async (t) => {
  const dir = freshDir();
  let s = await DiskStorage.open(dir, { bootstrapVoters: [1], segmentBytes: 1024 });
  for (let i = 1; i <= 200; i++) {
    await s.save(rd({ entries: [ent(i, 1, 50)], hardState: { term: 1, vote: 1, commit: i } }));
  }
  const segs = s.wal.segments();
  t.ok(segs.length > 10, `${segs.length} segments`);
  const seqs = segs.map((n) => parseInt(n.slice(0, 16), 16));
  t.same(
    seqs,
    seqs.map((_, i) => i + 1),
    'sequence numbers 1..n in names',
  );
  const starts = segs.map((n) => parseInt(n.slice(17, 33), 16));
  t.ok(
    starts.every((v, i) => i === 0 || v > starts[i - 1]!),
    'first indexes ascend',
  );
  t.same(readdirSync(join(dir, 'wal')).sort(), segs, 'no stray files');

  await s.createSnapshot(
    150,
    { voters: [1], learners: [], removed: [] },
    new Uint8Array([1, 5, 0]),
  );
  const removed = await s.compact(140);
  t.ok(removed > 0, `${removed} segments removed`);
  const left = s.wal.segments();
  t.equal(left.length, segs.length - removed);
  t.ok(parseInt(left[1]!.slice(17, 33), 16) > 141, 'the next segment holds entries above 140');
  t.same(readdirSync(join(dir, 'snap')), [snapName(150, 1)], 'one snapshot file');
  await t.rejects(async () => s.compact(151), /beyond the snapshot/);
  await s.close();

  s = await DiskStorage.open(dir, { segmentBytes: 1024 });
  t.equal(s.snapshot().metadata.index, 150);
  t.same(s.snapshot().data, new Uint8Array([1, 5, 0]));
  t.ok(s.firstIndex() <= 141, `retained tail from ${s.firstIndex()}`);
  t.equal(s.lastIndex(), 200);
  t.equal(s.term(s.firstIndex() - 1), 1);
  t.same(
    s.entries(141, 201, Infinity),
    Array.from({ length: 60 }, (_, i) => ent(141 + i, 1, 50)),
  );
  t.same(s.initialState().hardState, { term: 1, vote: 1, commit: 200 });
  await s.close();
});

t.test('a snapshot received from the leader replaces the log and survives restart', async (t) => {
  const dir = freshDir();
  let s = await DiskStorage.open(dir, { bootstrapVoters: [1, 2, 3] });
  await s.save(
    rd({ entries: [ent(1, 1), ent(2, 1), ent(3, 1)], hardState: { term: 1, vote: 0, commit: 1 } }),
  );
  const snap = {
    metadata: {
      index: 500,
      term: 4,
      confState: { voters: [1, 2, 4], learners: [5], removed: [3] },
    },
    data: new Uint8Array(3000).fill(9),
  };
  await s.save(rd({ snapshot: snap, hardState: { term: 4, vote: 0, commit: 500 } }));
  await s.save(rd({ entries: [ent(501, 4)], hardState: { term: 4, vote: 0, commit: 501 } }));
  await s.close();
  // A crash between a snapshot file and its marker leaves an orphan; a crash mid-write, a tmp.
  writeFileSync(join(dir, 'snap', snapName(900, 5)), 'orphan');
  writeFileSync(join(dir, 'snap', `${snapName(901, 5)}.tmp`), 'partial');
  s = await DiskStorage.open(dir);
  t.same(s.snapshot(), snap);
  t.equal(s.firstIndex(), 501);
  t.equal(s.lastIndex(), 501);
  t.equal(s.term(500), 4);
  t.same(s.initialState().confState, snap.metadata.confState);
  t.same(readdirSync(join(dir, 'snap')), [snapName(500, 4)], 'orphan and tmp removed');
  await s.close();
  // The file the marker names is damaged: refuse to start.
  const p = join(dir, 'snap', snapName(500, 4));
  const b = readFileSync(p);
  b[100]! ^= 1;
  writeFileSync(p, b);
  await t.rejects(DiskStorage.open(dir), { code: 'ESNAP_CORRUPT', message: /crc mismatch/ });
});

t.test('group commit: concurrent appends share one fdatasync', async (t) => {
  const fs = instrumentedFs();
  const { wal } = await Wal.open(freshDir(), { fs });
  const base = fs.datasyncs;
  await Promise.all(Array.from({ length: 100 }, (_, i) => wal.append([E(ent(i + 1, 1))])));
  t.equal(fs.datasyncs - base, 1, 'one fsync for 100 appends made in one tick');
  // While a sync is in flight, arrivals queue and share the next one.
  let release!: () => void;
  fs.gate = new Promise((r) => (release = r));
  const first = wal.append([E(ent(101, 1))]);
  await new Promise((r) => setImmediate(r));
  const rest = Array.from({ length: 50 }, (_, i) => wal.append([E(ent(102 + i, 1))]));
  fs.gate = null;
  release();
  await Promise.all([first, ...rest]);
  t.equal(fs.datasyncs - base, 3, 'the 50 waiting appends shared one fsync');
  for (let i = 152; i < 162; i++) await wal.append([E(ent(i, 1))]);
  t.equal(fs.datasyncs - base, 13, 'sequential appends sync each');
  t.equal(wal.stats().syncs, fs.datasyncs - base);
  t.equal(wal.stats().appends, 161);
  await wal.close();
});

t.test('durability order: append resolves only after fdatasync; stalls are visible', async (t) => {
  const fs = instrumentedFs();
  let now = 1000;
  const { wal } = await Wal.open(freshDir(), { fs, now: () => now });
  let release!: () => void;
  fs.gate = new Promise((r) => (release = r));
  let done = false;
  const p = wal.append([E(ent(1, 1)), HS(1, 1, 0)]).then(() => (done = true));
  // Wait (bounded) until the write is done and the fdatasync has started and is held.
  for (let i = 0; i < 2000 && fs.entered < 2; i++) await new Promise((r) => setImmediate(r));
  t.equal(fs.entered, 2, 'the fdatasync started');
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  t.equal(done, false, 'not resolved while fdatasync is pending');
  t.equal(fs.datasyncs, 1, 'only the segment creation synced so far');
  now += 2500;
  t.equal(wal.stallMs(), 2500, 'the stalled sync is visible to the caller');
  release();
  await p;
  t.equal(done, true);
  t.equal(fs.datasyncs, 2);
  t.equal(wal.stallMs(), 0);
  t.equal(wal.stats().lastSyncMs, 2500);
  // Non-sync appends (mustSync false) are written without an fdatasync.
  fs.gate = null;
  await wal.append([HS(1, 1, 1)], false);
  t.equal(fs.datasyncs, 2);
  await wal.close();
});

t.test('a failed fdatasync poisons the log', async (t) => {
  const fs = instrumentedFs();
  const { wal } = await Wal.open(freshDir(), { fs });
  fs.failSync = true;
  await t.rejects(wal.append([E(ent(1, 1))]), WalFailedError);
  fs.failSync = false;
  await t.rejects(wal.append([E(ent(1, 1))]), { code: 'EWAL_FAILED' });
  await wal.close();
});

t.test('a gap in the log (lost middle records) is refused', async (t) => {
  const dir = freshDir();
  const { wal } = await Wal.open(dir);
  await wal.append([E(ent(1, 1)), E(ent(3, 1))]).catch(() => undefined);
  await wal.close();
  await t.rejects(Wal.open(dir), {
    code: 'EWAL_CORRUPT',
    message: /entry 3 follows entry 1 with a gap/,
  });
});

t.test('a one-voter RawNode runs on DiskStorage and restarts from it', async (t) => {
  const { RawNode, raftConfig, SeededRandom, StateRole } = await import('../../src/raft/index.js');
  const dir = freshDir();
  const applied: string[] = [];
  /** Drive the node until it has nothing more to do (bounded). */
  const drain = async (node: InstanceType<typeof RawNode>, s: DiskStorage): Promise<void> => {
    for (let i = 0; i < 100 && node.hasReady(); i++) {
      const r = node.ready();
      await s.save(r);
      for (const e of r.committedEntries) {
        if (e.data.length > 0) applied.push(new TextDecoder().decode(e.data));
      }
      node.advance(r);
    }
  };
  let s = await DiskStorage.open(dir, { bootstrapVoters: [1] });
  let node = new RawNode(raftConfig(1), s, new SeededRandom(1));
  node.campaign();
  await drain(node, s);
  t.equal(node.status().role, StateRole.Leader);
  for (let i = 0; i < 20; i++) {
    node.propose(new TextEncoder().encode(`w${i}`));
    await drain(node, s);
  }
  t.equal(applied.length, 20);
  await s.createSnapshot(
    s.initialState().hardState.commit,
    { voters: [1], learners: [], removed: [] },
    new Uint8Array([42]),
  );
  const last = s.lastIndex();
  await s.close();

  s = await DiskStorage.open(dir);
  t.equal(s.lastIndex(), last, 'log survives');
  t.equal(s.initialState().hardState.commit, last, 'commit survives');
  t.equal(s.snapshot().metadata.index, last, 'snapshot survives');
  node = new RawNode(raftConfig(1, { applied: last }), s, new SeededRandom(2));
  node.campaign();
  await drain(node, s);
  t.equal(node.status().role, StateRole.Leader, 'leader again after restart');
  t.ok(s.initialState().hardState.term >= 2, 'a new term');
  node.propose(new TextEncoder().encode('after'));
  await drain(node, s);
  t.equal(applied[applied.length - 1], 'after');
  await s.close();
});
