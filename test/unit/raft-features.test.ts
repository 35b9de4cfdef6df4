// Raft beyond the paper's core: PreVote, CheckQuorum and the leader lease, flow control
// (probe/replicate, in-flight window, batching, uncommitted cap), snapshots and compaction,
// ReadIndex, proposal forwarding, one-at-a-time membership changes, leadership transfer.
import t from 'tap';
import {
  ConfChangeRejectedError,
  ConfChangeType,
  MemoryStorage,
  MessageType,
  ProgressState,
  ProposalDroppedError,
  StateRole,
  StepRejectedError,
  encodeConfChange,
  decodeConfChange,
  raftConfig,
} from '../../src/raft/index.js';
import { msg } from '../../src/raft/raft.js';
import { RaftNet } from '../sim/lib/raft-net.js';

const enc = new TextEncoder();
const dec = new TextDecoder();

t.test('PreVote: a partitioned node does not raise its term and cannot disrupt on return', (t) => {
  const net = new RaftNet([1, 2, 3], { preVote: true, checkQuorum: false });
  net.campaign(1);
  t.equal(net.raft(1).role, StateRole.Leader);
  const term = net.raft(1).term;
  net.isolate(3);
  for (let i = 0; i < 100; i++) {
    net.node(3).rn.tick();
    net.drain();
  }
  t.equal(net.raft(3).term, term, 'isolated node kept its term (pre-votes failed)');
  t.equal(net.raft(3).role, StateRole.PreCandidate);
  net.heal();
  net.propose(1, 'x');
  net.tickAll(2);
  t.equal(net.raft(1).role, StateRole.Leader, 'leader undisturbed');
  t.equal(net.raft(1).term, term, 'term unchanged');
  t.equal(net.raft(3).role, StateRole.Follower, 'returning node follows');
  t.same(net.values(3), ['x']);
  t.end();
});

t.test('without PreVote the same partition bumps the term and deposes the leader', (t) => {
  const net = new RaftNet([1, 2, 3], { preVote: false, checkQuorum: false });
  net.campaign(1);
  const term = net.raft(1).term;
  net.isolate(3);
  for (let i = 0; i < 100; i++) net.node(3).rn.tick();
  net.drain();
  t.ok(net.raft(3).term > term + 1, 'isolated node raised its term repeatedly');
  net.heal();
  net.tickAll(30);
  t.ok(net.raft(1).term > term, 'the cluster had to move to a higher term');
  t.end();
});

t.test('CheckQuorum: a leader that hears from no quorum steps down', (t) => {
  const net = new RaftNet([1, 2, 3], { checkQuorum: true, electionTick: 10 });
  net.campaign(1);
  net.isolate(1);
  for (let i = 0; i < 9; i++) net.tick(1);
  t.equal(net.raft(1).role, StateRole.Leader, 'still leader within the first timeout');
  for (let i = 0; i < 11; i++) net.tick(1);
  t.equal(net.raft(1).role, StateRole.Follower, 'stepped down after an election timeout');
  t.equal(net.raft(1).lead, 0);
  t.end();
});

t.test('CheckQuorum lease: followers ignore a candidate while they hear from the leader', (t) => {
  const net = new RaftNet([1, 2, 3], { checkQuorum: true, preVote: false });
  net.campaign(1);
  const term = net.raft(1).term;
  // n3 cannot hear the leader but can reach n2; its vote request must not depose the leader.
  net.cutOneWay(1, 3);
  net.campaign(3);
  t.equal(net.raft(2).term, term, 'n2 ignored the vote request inside the lease');
  t.equal(net.raft(1).role, StateRole.Leader);
  t.not(net.raft(3).role, StateRole.Leader);
  t.end();
});

t.test('a stale leader learns the higher term from a follower and steps down', (t) => {
  const net = new RaftNet([1, 2, 3], { checkQuorum: true, preVote: true });
  net.campaign(1);
  net.isolate(1);
  // n2 and n3 stop hearing from n1; once the lease runs out they elect a new leader.
  for (let i = 0; i < 40 && net.raft(2).role !== StateRole.Leader; i++) {
    net.tick(2);
    net.tick(3);
    net.drain();
  }
  if (net.raft(3).role === StateRole.Leader) net.node(3).rn.transferLeader(2);
  net.drain();
  t.equal(net.raft(2).role, StateRole.Leader);
  t.equal(net.raft(1).role, StateRole.Leader, 'old leader still thinks it leads');
  net.heal();
  net.tick(1);
  net.drain();
  t.equal(net.raft(1).role, StateRole.Follower, 'old leader stepped down');
  t.equal(net.raft(1).term, net.raft(2).term);
  t.end();
});

t.test('Ready keeps persistence-dependent messages apart', (t) => {
  const net = new RaftNet([1, 2, 3]);
  net.campaign(1);
  net.node(1).rn.propose(enc.encode('p'));
  const rd = net.node(1).rn.ready();
  t.ok(
    rd.messages.some((m) => m.type === MessageType.App),
    'leader appends go out at once',
  );
  t.equal(rd.persistedMessages.length, 0);
  net.node(1).storage.append(rd.entries);
  net.node(1).rn.advance(rd);
  const app = rd.messages.find((m) => m.type === MessageType.App && m.to === 2)!;
  net.node(2).rn.step(app);
  const frd = net.node(2).rn.ready();
  t.ok(
    frd.persistedMessages.some((m) => m.type === MessageType.AppResp),
    'follower ack waits for the write',
  );
  t.notOk(frd.messages.some((m) => m.type === MessageType.AppResp));
  t.ok(frd.mustSync, 'entries need an fsync');
  net.node(2).rn.advance(frd);
  t.end();
});

t.test('flow control: probe until an ack, then pipeline up to the in-flight limit', (t) => {
  const net = new RaftNet([1, 2], { maxInflightMsgs: 3, maxSizePerMsg: 1 });
  net.campaign(1);
  net.propose(1, 'warm');
  const pr = () => net.raft(1).prs.progress.get(2)!;
  t.equal(pr().state, ProgressState.Replicate, 'replicate after the first ack');
  net.dropTypes.add(MessageType.AppResp);
  for (let i = 0; i < 10; i++) net.propose(1, `v${i}`);
  const apps = net.delivered.filter((m) => m.type === MessageType.App && m.entries.length > 0);
  const after = apps.filter((m) => m.entries.some((e) => dec.decode(e.data).startsWith('v')));
  t.equal(after.length, 3, 'three one-entry appends in flight, no more');
  t.ok(pr().inflights.full());
  net.heal();
  net.tickAll(3);
  t.equal(net.values(2).length, 11, 'window refills after acks/heartbeats');
  t.end();
});

t.test('batching: appends carry at most maxSizePerMsg bytes (but at least one entry)', (t) => {
  const net = new RaftNet([1, 2], { maxSizePerMsg: 200 });
  net.campaign(1);
  net.isolate(2);
  for (let i = 0; i < 20; i++) net.node(1).rn.propose(new Uint8Array(50));
  net.drain();
  net.heal();
  net.tickAll(5);
  const apps = net.delivered.filter((m) => m.type === MessageType.App && m.entries.length > 0);
  for (const m of apps) {
    const bytes = m.entries.reduce((a, e) => a + e.data.length + 24, 0);
    t.ok(
      m.entries.length === 1 || bytes <= 200,
      `append of ${m.entries.length} entries, ${bytes} B`,
    );
  }
  t.ok(
    apps.some((m) => m.entries.length > 1),
    'batches of several entries',
  );
  t.equal(net.values(2).length, 20);
  t.end();
});

t.test('uncommitted-size cap drops proposals with ProposalDroppedError', (t) => {
  const net = new RaftNet([1, 2, 3], { maxUncommittedEntriesSize: 100 });
  net.campaign(1);
  net.isolate(1);
  const rn = net.node(1).rn;
  rn.propose(new Uint8Array(60));
  rn.propose(new Uint8Array(40));
  t.throws(() => rn.propose(new Uint8Array(1)), ProposalDroppedError);
  try {
    rn.propose(new Uint8Array(1));
  } catch (e) {
    t.equal((e as ProposalDroppedError).code, 'ERAFT_PROPOSAL_DROPPED');
  }
  net.heal();
  net.drain();
  net.tickAll(2);
  rn.propose(new Uint8Array(60));
  t.pass('accepted again once the backlog committed and applied');
  t.end();
});

t.test('proposals: no leader → dropped; follower forwards to the leader', (t) => {
  const net = new RaftNet([1, 2, 3]);
  t.throws(() => net.node(2).rn.propose(enc.encode('x')), ProposalDroppedError);
  net.campaign(1);
  net.propose(2, 'fwd');
  for (const id of [1, 2, 3]) t.same(net.values(id), ['fwd'], `n${id}`);
  const off = new RaftNet([1, 2, 3], { disableProposalForwarding: true });
  off.campaign(1);
  t.throws(() => off.node(2).rn.propose(enc.encode('x')), ProposalDroppedError);
  t.end();
});

t.test('step() refuses local message types from the network', (t) => {
  const net = new RaftNet([1, 2, 3]);
  t.throws(
    () => net.node(1).rn.step(msg({ type: MessageType.Hup, from: 2, to: 1 })),
    StepRejectedError,
  );
  t.end();
});

t.test('snapshot: a follower behind the first index is caught up by snapshot', (t) => {
  const net = new RaftNet([1, 2, 3]);
  net.campaign(1);
  net.isolate(3);
  for (let i = 0; i < 10; i++) net.propose(1, `v${i}`);
  const l = net.node(1);
  const applied = l.rn.raft.log.applied;
  l.storage.createSnapshot(applied, l.rn.raft.prs.confState(), enc.encode('state@' + applied));
  l.storage.compact(applied);
  t.equal(l.rn.raft.log.firstIndex(), applied + 1);
  net.heal();
  net.tickAll(2);
  const snaps = net.delivered.filter((m) => m.type === MessageType.Snap);
  t.equal(snaps.length, 1, 'one snapshot sent');
  t.equal(snaps[0]!.snapshot!.metadata.index, applied);
  const f = net.node(3);
  t.equal(f.storage.snapshot().metadata.index, applied, 'follower persisted the snapshot');
  t.equal(dec.decode(f.storage.snapshot().data), `state@${applied}`);
  t.equal(f.rn.raft.log.applied, applied, 'applied moved to the snapshot');
  net.propose(1, 'after');
  t.same(net.values(3), ['after'], 'replication resumes after the snapshot');
  t.equal(net.raft(1).prs.progress.get(3)!.state, ProgressState.Replicate);
  t.end();
});

t.test('snapshot: a failed send puts the follower back into probe', (t) => {
  const net = new RaftNet([1, 2, 3]);
  net.campaign(1);
  net.isolate(3);
  for (let i = 0; i < 5; i++) net.propose(1, `v${i}`);
  const l = net.node(1);
  const applied = l.rn.raft.log.applied;
  l.storage.createSnapshot(applied, l.rn.raft.prs.confState(), new Uint8Array());
  l.storage.compact(applied);
  net.heal();
  net.dropTypes.add(MessageType.Snap);
  net.tickAll(1);
  const pr = l.rn.raft.prs.progress.get(3)!;
  t.equal(pr.state, ProgressState.Snapshot);
  l.rn.reportSnapshot(3, false);
  t.equal(pr.state, ProgressState.Probe, 'probe after a failed snapshot');
  net.heal();
  net.tickAll(3);
  t.equal(net.node(3).storage.snapshot().metadata.index, applied, 'retried and delivered');
  t.end();
});

t.test('ReadIndex: served after a heartbeat round, at the commit index', (t) => {
  const net = new RaftNet([1, 2, 3]);
  net.campaign(1);
  net.propose(1, 'a');
  net.node(1).rn.readIndex(enc.encode('r1'));
  net.drain();
  const rs = net.node(1).readStates;
  t.equal(rs.length, 1);
  t.equal(rs[0]!.index, 2);
  t.equal(dec.decode(rs[0]!.requestCtx), 'r1');
  // From a follower: forwarded to the leader, answered with the leader's commit index.
  net.node(3).rn.readIndex(enc.encode('r2'));
  net.drain();
  t.equal(net.node(3).readStates[0]?.index, 2);
  t.end();
});

t.test('ReadIndex: an isolated leader cannot confirm a read', (t) => {
  const net = new RaftNet([1, 2, 3]);
  net.campaign(1);
  net.isolate(1);
  net.node(1).rn.readIndex(enc.encode('r'));
  net.drain();
  net.tickAll(3);
  t.equal(net.node(1).readStates.length, 0);
  t.end();
});

t.test('ReadIndex: waits until the new leader commits an entry of its term', (t) => {
  const net = new RaftNet([1, 2, 3]);
  net.campaign(1);
  net.dropTypes.add(MessageType.AppResp);
  net.campaign(2);
  t.equal(net.raft(2).role, StateRole.Leader);
  net.node(2).rn.readIndex(enc.encode('r'));
  net.drain();
  t.equal(net.node(2).readStates.length, 0, 'no read before the no-op commits');
  net.heal();
  net.tickAll(2);
  t.equal(net.node(2).readStates.length, 1, 'served after it commits');
  t.end();
});

t.test('membership: learner added, caught up, promoted; node removed; ids not reused', (t) => {
  const net = new RaftNet([1, 2, 3]);
  net.campaign(1);
  net.propose(1, 'a');
  const l = net.node(1).rn;
  l.proposeConfChange({ type: ConfChangeType.AddLearner, nodeId: 4 });
  t.throws(
    () => l.proposeConfChange({ type: ConfChangeType.AddLearner, nodeId: 5 }),
    ProposalDroppedError,
    'one change at a time',
  );
  net.drain();
  t.same(net.raft(1).prs.confState().learners, [4]);
  // Node 4 joins with an empty log and the initial membership; it learns the rest from the log.
  net.addNode(4, MemoryStorage.bootstrap([1, 2, 3]));
  net.tickAll(3);
  t.same(net.values(4), ['a'], 'learner caught up');
  t.equal(net.raft(1).prs.quorum(), 2, 'learner not counted in the quorum');
  l.proposeConfChange({ type: ConfChangeType.PromoteLearner, nodeId: 4 });
  net.drain();
  t.same(net.raft(1).prs.confState().voters, [1, 2, 3, 4]);
  t.equal(net.raft(1).prs.quorum(), 3);
  l.proposeConfChange({ type: ConfChangeType.RemoveNode, nodeId: 3 });
  net.drain();
  t.same(net.raft(1).prs.confState().voters, [1, 2, 4]);
  t.same(net.raft(2).prs.confState().removed, [3], 'followers applied it too');
  t.throws(
    () => l.proposeConfChange({ type: ConfChangeType.AddVoter, nodeId: 3 }),
    ConfChangeRejectedError,
    'removed id never reused',
  );
  t.throws(
    () => l.proposeConfChange({ type: ConfChangeType.AddVoter, nodeId: 2 }),
    ConfChangeRejectedError,
  );
  net.propose(1, 'b');
  t.same(net.values(4), ['a', 'b']);
  // The removed node never applied its removal here (it is cut off); its elections are ignored.
  const term = net.raft(1).term;
  net.node(1).rn.step(msg({ type: MessageType.Vote, from: 3, to: 1, term: term + 5 }));
  t.equal(net.raft(1).term, term, 'vote request from a removed id ignored');
  t.end();
});

t.test('membership: a new leader waits for its no-op before a conf change', (t) => {
  const net = new RaftNet([1, 2, 3]);
  net.dropTypes.add(MessageType.AppResp);
  net.campaign(1);
  t.equal(net.raft(1).role, StateRole.Leader);
  t.throws(
    () => net.node(1).rn.proposeConfChange({ type: ConfChangeType.AddLearner, nodeId: 9 }),
    ProposalDroppedError,
  );
  net.heal();
  net.tickAll(2);
  net.node(1).rn.proposeConfChange({ type: ConfChangeType.AddLearner, nodeId: 9 });
  net.drain();
  t.same(net.raft(2).prs.confState().learners, [9], 'accepted once the no-op is applied');
  t.end();
});

t.test('conf change encoding round-trips', (t) => {
  const cc = { type: ConfChangeType.AddVoter, nodeId: 70000, context: enc.encode('addr') };
  const back = decodeConfChange(encodeConfChange(cc));
  t.equal(back.type, cc.type);
  t.equal(back.nodeId, 70000);
  t.equal(dec.decode(back.context), 'addr');
  t.throws(() => decodeConfChange(new Uint8Array([9, 0, 0, 0, 1])), ConfChangeRejectedError);
  t.end();
});

t.test('leadership transfer: up-to-date target gets TimeoutNow and wins', (t) => {
  const net = new RaftNet([1, 2, 3], { checkQuorum: true, preVote: true });
  net.campaign(1);
  net.propose(1, 'a');
  net.node(1).rn.transferLeader(3);
  net.drain();
  t.ok(net.delivered.some((m) => m.type === MessageType.TimeoutNow && m.to === 3));
  t.equal(net.raft(3).role, StateRole.Leader, 'target leads despite the lease');
  t.equal(net.raft(1).role, StateRole.Follower);
  net.propose(3, 'b');
  t.same(net.values(1), ['a', 'b']);
  t.end();
});

t.test(
  'leadership transfer: lagging target is caught up first; proposals dropped meanwhile',
  (t) => {
    const net = new RaftNet([1, 2, 3], { electionTick: 10 });
    net.campaign(1);
    net.isolate(3);
    net.propose(1, 'a');
    net.node(1).rn.transferLeader(3);
    net.drain();
    t.equal(net.raft(1).leadTransferee, 3);
    t.throws(() => net.node(1).rn.propose(enc.encode('x')), ProposalDroppedError);
    net.heal();
    net.tickAll(2);
    t.equal(net.raft(3).role, StateRole.Leader);
    t.end();
  },
);

t.test('leadership transfer requested at a follower is forwarded to the leader', (t) => {
  const net = new RaftNet([1, 2, 3]);
  net.campaign(1);
  net.propose(1, 'a');
  net.node(2).rn.transferLeader(3);
  net.drain();
  t.equal(net.raft(3).role, StateRole.Leader, 'the named node leads, not the forwarder');
  t.end();
});

t.test('leadership transfer is abandoned after an election timeout', (t) => {
  const net = new RaftNet([1, 2, 3], { electionTick: 10 });
  net.campaign(1);
  net.isolate(3);
  net.node(1).rn.transferLeader(3);
  net.drain();
  for (let i = 0; i < 10; i++) net.tick(1);
  net.drain();
  t.equal(net.raft(1).leadTransferee, 0);
  t.equal(net.raft(1).role, StateRole.Leader);
  net.propose(1, 'ok');
  t.end();
});

t.test('config validation names the bad field', (t) => {
  t.throws(() => raftConfig(0), /id/);
  t.throws(() => raftConfig(1, { electionTick: 1, heartbeatTick: 1 }), /electionTick/);
  t.throws(() => raftConfig(1, { maxInflightMsgs: 0 }), /maxInflightMsgs/);
  t.end();
});

t.test(
  'Ready: committed entries are paged by maxCommittedSizePerReady; commit-only needs no fsync',
  (t) => {
    const net = new RaftNet([1], { maxCommittedSizePerReady: 200 });
    net.campaign(1);
    const n = net.node(1);
    for (let i = 0; i < 10; i++) n.rn.propose(new Uint8Array(100));
    const rd = n.rn.ready();
    n.storage.append(rd.entries);
    if (rd.hardState) n.storage.setHardState(rd.hardState);
    n.rn.advance(rd);
    const sizes: number[] = [];
    for (let i = 0; i < 20 && n.rn.hasReady(); i++) {
      const r = n.rn.ready();
      sizes.push(r.committedEntries.length);
      if (r.entries.length === 0 && r.hardState) {
        t.notOk(r.mustSync, 'a commit index change alone needs no fsync');
        n.storage.setHardState(r.hardState);
      }
      n.rn.advance(r);
    }
    t.ok(
      sizes.length > 1 && sizes.every((s) => s <= 2),
      `pages of ≤ 2 entries: ${sizes.join(',')}`,
    );
    t.equal(n.rn.raft.log.applied, 11);
    t.end();
  },
);

t.test('membership: a learner is promoted only once it holds everything committed', (t) => {
  const net = new RaftNet([1, 2, 3]);
  net.campaign(1);
  net.propose(1, 'a');
  const l = net.node(1).rn;
  l.proposeConfChange({ type: ConfChangeType.AddLearner, nodeId: 4 });
  net.drain();
  // Node 4 is not running yet: it has acknowledged nothing.
  t.throws(() => l.proposeConfChange({ type: ConfChangeType.PromoteLearner, nodeId: 4 }), {
    code: 'ERAFT_CONF_CHANGE',
    message: /not caught up/,
  });
  net.addNode(4, MemoryStorage.bootstrap([1, 2, 3]));
  net.tickAll(3);
  l.proposeConfChange({ type: ConfChangeType.PromoteLearner, nodeId: 4 });
  net.drain();
  t.same(net.raft(4).prs.confState().voters, [1, 2, 3, 4]);
  t.end();
});
