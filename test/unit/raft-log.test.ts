// Raft log building blocks: MemoryStorage (append/truncate, compaction, snapshots), RaftLog
// (unstable tail, conflicts, commit/apply bounds, term-skipping search) and flow control.
import t from 'tap';
import {
  CompactedError,
  EntryType,
  MemoryStorage,
  SnapshotOutOfDateError,
  UnavailableError,
  type Entry,
} from '../../src/raft/index.js';
import { RaftLog } from '../../src/raft/log.js';
import { Inflights, Progress, ProgressState, ProgressTracker } from '../../src/raft/progress.js';
import { SeededRandom } from '../../src/raft/random.js';
import { SessionTable } from '../../src/raft/sessions.js';

const ent = (index: number, term: number, size = 0): Entry => ({
  index,
  term,
  type: EntryType.Normal,
  data: new Uint8Array(size),
});
const terms = (es: Entry[]): number[] => es.map((e) => e.term);

t.test('MemoryStorage: append truncates a conflicting suffix', (t) => {
  const s = MemoryStorage.bootstrap([1]);
  s.append([ent(1, 1), ent(2, 1), ent(3, 1)]);
  s.append([ent(2, 2)]);
  t.equal(s.lastIndex(), 2);
  t.equal(s.term(2), 2);
  t.throws(() => s.append([ent(5, 2)]), /gap/);
  t.end();
});

t.test('MemoryStorage: compaction keeps the boundary term; errors are typed', (t) => {
  const s = MemoryStorage.bootstrap([1]);
  s.append([ent(1, 1), ent(2, 1), ent(3, 2), ent(4, 2)]);
  s.createSnapshot(3, { voters: [1], learners: [], removed: [] }, new Uint8Array([7]));
  s.compact(3);
  t.equal(s.firstIndex(), 4);
  t.equal(s.term(3), 2, 'term of the compaction point still known');
  t.throws(() => s.term(2), CompactedError);
  t.throws(() => s.term(9), UnavailableError);
  t.throws(() => s.entries(2, 5, 1e9), CompactedError);
  t.same(terms(s.entries(4, 5, 1e9)), [2]);
  t.throws(
    () => s.createSnapshot(2, { voters: [1], learners: [], removed: [] }, new Uint8Array()),
    SnapshotOutOfDateError,
  );
  t.end();
});

t.test('MemoryStorage: entries honour maxSize but return at least one', (t) => {
  const s = MemoryStorage.bootstrap([1]);
  s.append([ent(1, 1, 100), ent(2, 1, 100), ent(3, 1, 100)]);
  t.equal(s.entries(1, 4, 1).length, 1);
  t.equal(s.entries(1, 4, 250).length, 2);
  t.equal(s.entries(1, 4, 1e9).length, 3);
  t.end();
});

t.test('RaftLog: maybeAppend, conflicts and commit', (t) => {
  const s = MemoryStorage.bootstrap([1]);
  s.append([ent(1, 1), ent(2, 2), ent(3, 3)]);
  const log = new RaftLog(s, 1e9);
  t.equal(log.maybeAppend(3, 2, 3, [ent(4, 4)]), undefined, 'mismatch at (3, 2)');
  t.equal(log.maybeAppend(3, 3, 3, []), 3, 'heartbeat-like append matches');
  t.equal(log.committed, 3);
  t.equal(log.maybeAppend(3, 3, 9, [ent(4, 4), ent(5, 4)]), 5);
  t.equal(log.committed, 5, 'commit bounded by the last new index');
  t.same(terms(log.unstableEntries()), [4, 4]);
  t.throws(() => log.maybeAppend(2, 2, 5, [ent(3, 9)]), /invariant/, 'conflict below commit');
  t.end();
});

t.test('RaftLog: committed entries are handed out only once durable', (t) => {
  const s = MemoryStorage.bootstrap([1]);
  const log = new RaftLog(s, 1e9);
  log.append([ent(1, 1), ent(2, 1)]);
  log.commitTo(2);
  t.same(log.nextCommittedEnts(), [], 'nothing durable yet');
  s.append(log.unstableEntries());
  log.stableTo(2, 1);
  t.same(terms(log.nextCommittedEnts()), [1, 1]);
  log.appliedTo(2);
  t.same(log.nextCommittedEnts(), []);
  t.throws(() => log.appliedTo(3), /invariant/);
  t.end();
});

t.test('RaftLog: stableTo ignores a write of entries replaced meanwhile', (t) => {
  const s = MemoryStorage.bootstrap([1]);
  const log = new RaftLog(s, 1e9);
  log.append([ent(1, 1), ent(2, 1)]);
  log.append([ent(2, 2)]);
  log.stableTo(2, 1);
  t.same(terms(log.unstableEntries()), [1, 2], 'still unstable');
  t.end();
});

t.test('RaftLog: findConflictByTerm skips whole terms', (t) => {
  const s = MemoryStorage.bootstrap([1]);
  s.append([ent(1, 1), ent(2, 1), ent(3, 2), ent(4, 2), ent(5, 4), ent(6, 4)]);
  const log = new RaftLog(s, 1e9);
  t.equal(log.findConflictByTerm(6, 3), 4, 'last index with term ≤ 3');
  t.equal(log.findConflictByTerm(6, 4), 6);
  t.equal(log.findConflictByTerm(6, 0), 0);
  t.equal(log.findConflictByTerm(4, 1), 2);
  t.end();
});

t.test('RaftLog: isUpToDate compares last term, then length (§5.4.1)', (t) => {
  const s = MemoryStorage.bootstrap([1]);
  s.append([ent(1, 1), ent(2, 2)]);
  const log = new RaftLog(s, 1e9);
  t.ok(log.isUpToDate(1, 3));
  t.ok(log.isUpToDate(2, 2));
  t.notOk(log.isUpToDate(1, 2));
  t.notOk(log.isUpToDate(9, 1));
  t.end();
});

t.test('Inflights: count and byte limits, release by index', (t) => {
  const f = new Inflights(3, 1000);
  f.add(1, 10);
  f.add(2, 10);
  t.notOk(f.full());
  f.add(3, 10);
  t.ok(f.full(), 'count limit');
  f.freeLE(2);
  t.equal(f.count(), 1);
  f.add(4, 995);
  t.ok(f.full(), 'byte limit');
  f.freeFirstOne();
  t.equal(f.count(), 1);
  t.end();
});

t.test('Progress: probe pauses after one append; stale rejections are ignored', (t) => {
  const pr = new Progress(11, false, 4, 0);
  pr.match = 5;
  t.equal(pr.state, ProgressState.Probe);
  t.notOk(pr.isPaused());
  pr.probeSent = true;
  t.ok(pr.isPaused());
  t.notOk(pr.maybeDecrTo(9, 9), 'rejection of an index we did not probe');
  t.ok(pr.maybeDecrTo(10, 7));
  t.equal(pr.next, 8, 'next from the hint');
  pr.maybeUpdate(8);
  pr.becomeReplicate();
  t.equal(pr.next, 9);
  t.notOk(pr.maybeDecrTo(8, 0), 'stale in replicate');
  t.ok(pr.maybeDecrTo(12, 0));
  t.equal(pr.next, 9);
  t.end();
});

t.test('ProgressTracker: commit index is the quorum-th highest voter match', (t) => {
  const tr = new ProgressTracker(4, 0);
  tr.applyConfState({ voters: [1, 2, 3, 4, 5], learners: [6], removed: [] }, 1);
  const m = [10, 9, 3, 2, 1];
  m.forEach((x, i) => (tr.progress.get(i + 1)!.match = x));
  tr.progress.get(6)!.match = 100;
  t.equal(tr.committed(), 3);
  tr.recordVote(1, true);
  tr.recordVote(2, true);
  t.equal(tr.voteResult(), 'pending');
  tr.recordVote(6, true);
  t.equal(tr.voteResult(), 'pending', 'learner votes do not count');
  tr.recordVote(3, true);
  t.equal(tr.voteResult(), 'won');
  t.end();
});

t.test('SeededRandom is deterministic per seed', (t) => {
  const a = new SeededRandom(42);
  const b = new SeededRandom(42);
  const xs = Array.from({ length: 10 }, () => a.intn(1000));
  t.same(
    xs,
    Array.from({ length: 10 }, () => b.intn(1000)),
  );
  t.ok(xs.every((x) => x >= 0 && x < 1000));
  t.end();
});

t.test('SessionTable admits each (client, seq) once and survives a snapshot', (t) => {
  const s = new SessionTable();
  t.ok(s.admit('a', 1));
  t.notOk(s.admit('a', 1), 'retry of the same request');
  t.ok(s.admit('b', 1), 'other client');
  t.ok(s.admit('a', 2));
  s.setResult('a', 'ok');
  t.notOk(s.admit('a', 1), 'stale retry');
  const back = SessionTable.fromJSON(
    JSON.parse(JSON.stringify(s.toJSON())) as ReturnType<SessionTable['toJSON']>,
  );
  t.notOk(back.admit('a', 2));
  t.equal(back.lastApplied('a')?.result, 'ok');
  t.ok(back.admit('a', 3));
  back.expire('b');
  t.equal(back.size, 1);
  t.end();
});
