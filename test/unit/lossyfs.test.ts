// The lossy file system (src/raft/lossyfs.ts) under the WAL: records appended and synced
// survive a crash, records appended without a sync are gone; the same run on the real file
// system keeps them (so the loss is the lossy fs's doing, not the test's). Then the same with
// a real `kill -9` of a child process that runs its WAL on it (as test/lib/meshd-lossy.ts runs
// meshd's), and the
// process's own view (reads see unsynced writes; renames and unlinks carry or drop them).
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { DiskStorage } from '../../src/raft/diskstorage.js';
import { lossyFs } from '../../src/raft/lossyfs.js';
import { EntryType, type Entry, type Ready } from '../../src/raft/types.js';
import { RecordType, Wal, nodeFs, type WalRecord } from '../../src/raft/wal.js';

const root = mkdtempSync(join(tmpdir(), 'mesh-lossyfs-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
let dirs = 0;
const freshDir = (): string => join(root, `d${dirs++}`);

const ent = (index: number, term: number, size = 16): Entry => ({
  index,
  term,
  type: EntryType.Normal,
  data: Uint8Array.from({ length: size }, (_, i) => (index * 13 + i) & 0xff),
});
const E = (e: Entry): WalRecord => ({ type: RecordType.Entry, entry: e });
const HS = (term: number, vote: number, commit: number): WalRecord => ({
  type: RecordType.HardState,
  hardState: { term, vote, commit },
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
const indexes = (es: Entry[]): number[] => es.map((e) => e.index);
const range = (a: number, b: number): number[] =>
  Array.from({ length: b - a + 1 }, (_, i) => a + i);

t.test('wal over lossy fs: synced records survive a crash, unsynced ones are lost', async (t) => {
  const dir = freshDir();
  const fs = lossyFs();
  const { wal } = await Wal.open(dir, { fs });
  for (let i = 1; i <= 5; i++) await wal.append([E(ent(i, 1))]);
  await wal.append([HS(1, 7, 5)]);
  t.equal(fs.pendingBytes(), 0, 'nothing pending after synced appends');
  for (let i = 6; i <= 8; i++) await wal.append([E(ent(i, 1))], false);
  await wal.append([HS(2, 0, 8)], false);
  t.ok(fs.pendingBytes() > 0, `unsynced bytes held in memory (${fs.pendingBytes()})`);
  // The process reads its own unsynced writes back.
  const seg = wal.segments()[0]!;
  const seen = await fs.readFile(join(dir, seg));
  const onDisk = readFileSync(join(dir, seg));
  t.ok(seen.length > onDisk.length, 'reads through the lossy fs include unsynced bytes');
  t.same(seen.subarray(0, onDisk.length), onDisk, 'and agree on what is synced');
  await fs.crash();
  t.equal(fs.stats().lost, 4, 'four unsynced appends dropped');

  const { wal: w2, state } = await Wal.open(dir);
  t.same(indexes(state.entries), range(1, 5), 'entries 1..5 recovered, 6..8 gone');
  t.same(state.hardState, { term: 1, vote: 7, commit: 5 }, 'the synced hard state');
  t.equal(state.repaired, null, 'no torn tail: unsynced bytes never reached the file');
  // The log goes on from there.
  await w2.append([E(ent(6, 2)), HS(2, 7, 6)]);
  await w2.close();
  const { wal: w3, state: s3 } = await Wal.open(dir);
  t.same(indexes(s3.entries), range(1, 6));
  t.equal(s3.entries[5]!.term, 2);
  await w3.close();
});

t.test('the same run on the real file system keeps unsynced records', async (t) => {
  const dir = freshDir();
  const { wal } = await Wal.open(dir, { fs: nodeFs });
  for (let i = 1; i <= 5; i++) await wal.append([E(ent(i, 1))]);
  for (let i = 6; i <= 8; i++) await wal.append([E(ent(i, 1))], false);
  // Dropped without close: the page cache still has the bytes (as after a kill -9).
  const { wal: w2, state } = await Wal.open(dir);
  t.same(indexes(state.entries), range(1, 8));
  await w2.close();
  await wal.close();
});

t.test('a sync makes earlier unsynced appends durable too', async (t) => {
  const dir = freshDir();
  const fs = lossyFs();
  const { wal } = await Wal.open(dir, { fs });
  await wal.append([E(ent(1, 1))], false);
  await wal.append([E(ent(2, 1))], false);
  await wal.append([E(ent(3, 1))], true);
  await wal.append([E(ent(4, 1))], false);
  await fs.crash();
  const { wal: w2, state } = await Wal.open(dir);
  t.same(indexes(state.entries), [1, 2, 3]);
  await w2.close();
});

t.test(
  'rotation under lossy fs: every synced record survives, the unsynced tail does not',
  async (t) => {
    const dir = freshDir();
    const fs = lossyFs();
    const { wal } = await Wal.open(dir, { fs, segmentBytes: 256 });
    for (let i = 1; i <= 40; i++) await wal.append([E(ent(i, 1, 40))], i <= 30);
    t.ok(wal.segments().length > 5, `rotated into ${wal.segments().length} segments`);
    await fs.crash();
    const { wal: w2, state } = await Wal.open(dir);
    // Rotation syncs the segment it leaves, so a few unsynced records may have been made
    // durable by it; never fewer than the synced ones, never a gap.
    const got = indexes(state.entries);
    t.same(got.slice(0, 30), range(1, 30), 'all 30 synced entries');
    t.same(got, range(1, got.length), `contiguous (${got.length} entries)`);
    t.ok(got.length < 40, 'the unsynced tail after the last rotation is lost');
    await w2.close();
  },
);

t.test('disk storage opens, snapshots and recovers over the lossy fs', async (t) => {
  const dir = freshDir();
  const fs = lossyFs();
  const s = await DiskStorage.open(dir, { fs, bootstrapVoters: [1, 2, 3] });
  await s.save(rd({ entries: [ent(1, 1), ent(2, 1)], hardState: { term: 1, vote: 1, commit: 2 } }));
  await s.createSnapshot(2, { voters: [1, 2, 3], learners: [], removed: [] }, Uint8Array.of(9));
  await s.save(rd({ entries: [ent(3, 1)], mustSync: false }));
  t.equal(s.lastIndex(), 3);
  await fs.crash();
  const s2 = await DiskStorage.open(dir);
  t.equal(s2.snapshot().metadata.index, 2, 'snapshot recovered');
  t.same([...s2.snapshot().data], [9]);
  t.equal(s2.lastIndex(), 2, 'unsynced entry 3 lost');
  await s2.close();
});

t.test('process view: overlays, truncation, rename and unlink', async (t) => {
  const dir = freshDir();
  const fs = lossyFs();
  await fs.mkdir(dir);
  const p = join(dir, 'a');
  writeFileSync(p, 'hello world');
  const fh = await fs.open(p, 'r+');
  await fh.write(Buffer.from('HELLO'), 0, 5, 0);
  await fh.truncate(8);
  await fh.write(Buffer.from('!!'), 0, 2, 10);
  const view = Buffer.from(await fs.readFile(p));
  t.same([...view], [...Buffer.from('HELLO wo\0\0!!')], 'writes and truncations in order');
  t.equal(readFileSync(p, 'utf8'), 'hello world', 'the real file is untouched');
  await fs.rename(p, join(dir, 'b'));
  t.same([...(await fs.readFile(join(dir, 'b')))], [...view], 'pending changes follow a rename');
  await fh.datasync();
  t.same([...readFileSync(join(dir, 'b'))], [...view], 'a sync writes them to the real file');
  t.equal(fs.pendingBytes(), 0);
  await fh.write(Buffer.from('x'), 0, 1, 0);
  await fh.close();
  t.equal(fs.pendingBytes(), 1, 'close keeps unsynced changes pending, like a page cache');
  await fs.unlink(join(dir, 'b'));
  t.equal(fs.pendingBytes(), 0, 'unlink drops them');
  const st = fs.stats();
  t.equal(st.flushed, 3);
  t.equal(st.flushedBytes, 7);
});

// A real crash: a child process enables the lossy fs from its environment, appends, and is
// killed with SIGKILL while records are unsynced.
const distRaft = fileURLToPath(new URL('../../src/raft/', import.meta.url));
const child = `
import { Wal } from ${JSON.stringify(`${distRaft}wal.js`)};
import { lossyFs } from ${JSON.stringify(`${distRaft}lossyfs.js`)};
const fs = process.argv[2] === 'lossy' ? lossyFs() : undefined;
const { wal } = await Wal.open(process.argv[1], fs === undefined ? {} : { fs });
const rec = (i) => ({ type: 2, entry: { index: i, term: 1, type: 0, data: new Uint8Array(32) } });
for (let i = 1; i <= 5; i++) await wal.append([rec(i)]);
for (let i = 6; i <= 9; i++) await wal.append([rec(i)], false);
process.stdout.write('ready\\n');
setInterval(() => {}, 1000);
`;

async function killedChild(dir: string, lossy: boolean): Promise<number[]> {
  const args = ['--input-type=module', '-e', child, dir, lossy ? 'lossy' : 'plain'];
  const proc = spawn(process.execPath, args, {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('child not ready in 10 s')), 10_000);
    proc.stdout.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
    proc.on('exit', (code) => reject(new Error(`child exited ${code}`)));
  });
  const gone = new Promise((r) => proc.on('exit', r));
  proc.kill('SIGKILL');
  await gone;
  const { wal, state } = await Wal.open(dir);
  await wal.close();
  return indexes(state.entries);
}

t.test(
  'kill -9 of a process with MESH_TEST_LOSSY_FS=1 loses exactly the unsynced appends',
  async (t) => {
    t.same(await killedChild(freshDir(), true), range(1, 5), 'lossy: 1..5 survive, 6..9 lost');
    t.same(await killedChild(freshDir(), false), range(1, 9), 'real fs: all nine survive');
  },
);
