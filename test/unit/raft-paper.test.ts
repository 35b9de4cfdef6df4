// Raft paper section tests (in the manner of etcd's raft_paper_test): §5.2 election, §5.3
// replication, §5.4 safety including the Figure 8 case. Each test drives one or more RawNodes
// with explicit messages and inspects what comes out of Ready.
import t from 'tap';
import {
  EntryType,
  MemoryStorage,
  MessageType,
  RawNode,
  SeededRandom,
  StateRole,
  raftConfig,
  type Message,
  type RaftConfig,
} from '../../src/raft/index.js';
import { msg } from '../../src/raft/raft.js';
import { RaftNet, storageWithTerms } from '../sim/lib/raft-net.js';

const enc = new TextEncoder();

function newNode(
  id: number,
  peers: number[],
  over: Partial<RaftConfig> = {},
  storage?: MemoryStorage,
  seed = 7,
): { rn: RawNode; storage: MemoryStorage } {
  const s = storage ?? MemoryStorage.bootstrap(peers);
  const rn = new RawNode(
    raftConfig(id, { checkQuorum: false, preVote: false, ...over }),
    s,
    new SeededRandom(seed),
  );
  return { rn, storage: s };
}

/** Persist and advance every pending Ready; return all messages it produced. */
function flush(rn: RawNode, storage: MemoryStorage): Message[] {
  const out: Message[] = [];
  for (let i = 0; i < 50 && rn.hasReady(); i++) {
    const rd = rn.ready();
    if (rd.snapshot) storage.applySnapshot(rd.snapshot);
    storage.append(rd.entries);
    if (rd.hardState) storage.setHardState(rd.hardState);
    out.push(...rd.messages, ...rd.persistedMessages);
    rn.advance(rd);
  }
  return out;
}

function becomeLeader(rn: RawNode, storage: MemoryStorage, voters: number[]): void {
  rn.campaign();
  flush(rn, storage);
  for (const v of voters) {
    if (v === rn.raft.id) continue;
    rn.step(msg({ type: MessageType.VoteResp, from: v, to: rn.raft.id, term: rn.raft.term }));
  }
  flush(rn, storage);
}

t.test('§5.1 a node starts as follower', (t) => {
  const { rn } = newNode(1, [1, 2, 3]);
  t.equal(rn.raft.role, StateRole.Follower);
  t.equal(rn.raft.term, 0);
  t.end();
});

t.test('§5.1 any role seeing a higher term becomes follower in that term', (t) => {
  for (const role of ['follower', 'candidate', 'leader']) {
    const { rn, storage } = newNode(1, [1, 2, 3]);
    if (role === 'candidate') rn.campaign();
    if (role === 'leader') becomeLeader(rn, storage, [1, 2, 3]);
    rn.step(msg({ type: MessageType.App, from: 2, to: 1, term: 5 }));
    t.equal(rn.raft.role, StateRole.Follower, `${role} stepped down`);
    t.equal(rn.raft.term, 5, `${role} took term 5`);
    t.equal(rn.raft.lead, 2, `${role} follows the sender`);
  }
  t.end();
});

t.test('§5.1 a message from a stale term is ignored', (t) => {
  const { rn } = newNode(1, [1, 2, 3], {}, storageWithTerms([1, 2, 3], [1, 2], 2));
  rn.step(msg({ type: MessageType.App, from: 2, to: 1, term: 1, index: 2, logTerm: 2, commit: 2 }));
  t.equal(rn.raft.term, 2);
  t.equal(rn.raft.lead, 0, 'stale leader not adopted');
  t.equal(rn.raft.log.committed, 0, 'stale commit not applied');
  t.end();
});

t.test('§5.2 leader sends heartbeats every heartbeatTick', (t) => {
  const { rn, storage } = newNode(1, [1, 2, 3], { heartbeatTick: 1 });
  becomeLeader(rn, storage, [1, 2, 3]);
  rn.tick();
  const hb = flush(rn, storage).filter((m) => m.type === MessageType.Heartbeat);
  t.same(hb.map((m) => m.to).sort(), [2, 3], 'one heartbeat to each follower');
  t.end();
});

t.test('§5.2 follower/candidate start an election after the timeout, voting for itself', (t) => {
  for (const start of ['follower', 'candidate']) {
    const { rn, storage } = newNode(1, [1, 2, 3]);
    if (start === 'candidate') {
      rn.campaign();
      flush(rn, storage);
    }
    const before = rn.raft.term;
    const role = rn.raft.role;
    for (let i = 0; i < 20 && rn.raft.role === role && rn.raft.term === before; i++) rn.tick();
    t.equal(rn.raft.role, StateRole.Candidate, start);
    t.equal(rn.raft.term, before + 1, `${start}: term incremented once`);
    t.equal(rn.raft.vote, 1, `${start}: voted for itself`);
    const rd = rn.ready();
    t.same(
      rd.persistedMessages
        .filter((m) => m.type === MessageType.Vote)
        .map((m) => m.to)
        .sort(),
      [2, 3],
      `${start}: vote requests wait for the term/vote write`,
    );
    t.equal(rd.hardState?.vote, 1, `${start}: vote in hard state`);
  }
  t.end();
});

t.test('§5.2 election outcome in one round of votes', (t) => {
  const cases: [number, Record<number, boolean>, StateRole][] = [
    [1, {}, StateRole.Leader],
    [3, { 2: true, 3: true }, StateRole.Leader],
    [3, { 2: true }, StateRole.Leader],
    [5, { 2: true, 3: true, 4: true, 5: true }, StateRole.Leader],
    [5, { 2: true, 3: true }, StateRole.Leader],
    [3, { 2: false, 3: false }, StateRole.Follower],
    [5, { 2: false, 3: false, 4: false }, StateRole.Follower],
    [5, { 2: true }, StateRole.Candidate],
    [5, { 2: true, 3: false }, StateRole.Candidate],
  ];
  for (const [size, votes, want] of cases) {
    const ids = Array.from({ length: size }, (_, i) => i + 1);
    const { rn, storage } = newNode(1, ids);
    rn.campaign();
    flush(rn, storage);
    for (const [id, granted] of Object.entries(votes)) {
      rn.step(
        msg({ type: MessageType.VoteResp, from: Number(id), to: 1, term: 1, reject: !granted }),
      );
    }
    t.equal(rn.raft.role, want, `size ${size} votes ${JSON.stringify(votes)}`);
    t.equal(rn.raft.term, 1);
  }
  t.end();
});

t.test('§5.2 a follower votes at most once per term, first come first served', (t) => {
  const cases: [number, number, boolean][] = [
    [0, 2, false],
    [0, 3, false],
    [2, 2, false],
    [3, 3, false],
    [2, 3, true],
    [3, 2, true],
  ];
  for (const [vote, from, reject] of cases) {
    const s = MemoryStorage.bootstrap([1, 2, 3]);
    s.setHardState({ term: 1, vote, commit: 0 });
    const { rn } = newNode(1, [1, 2, 3], {}, s);
    rn.step(msg({ type: MessageType.Vote, from, to: 1, term: 1 }));
    const rd = rn.ready();
    const resp = rd.persistedMessages.find((m) => m.type === MessageType.VoteResp);
    t.equal(resp?.reject, reject, `vote=${vote} from=${from}`);
    t.notOk(
      rd.messages.some((m) => m.type === MessageType.VoteResp),
      'grant waits for persist',
    );
  }
  t.end();
});

t.test('§5.2 a candidate hearing from a leader of its term falls back to follower', (t) => {
  const { rn } = newNode(1, [1, 2, 3]);
  rn.campaign();
  rn.step(msg({ type: MessageType.App, from: 2, to: 1, term: 1 }));
  t.equal(rn.raft.role, StateRole.Follower);
  t.equal(rn.raft.lead, 2);
  t.end();
});

t.test('§5.2 election timeouts are randomized over [et, 2·et)', (t) => {
  const et = 10;
  const seen = new Set<number>();
  for (let seed = 0; seed < 200; seed++) {
    const { rn } = newNode(1, [1, 2, 3], { electionTick: et }, undefined, seed);
    let ticks = 0;
    while (rn.raft.role === StateRole.Follower && ticks < 100) {
      rn.tick();
      ticks++;
    }
    t.ok(ticks >= et && ticks < 2 * et, `seed ${seed}: fired after ${ticks}`);
    seen.add(ticks);
  }
  t.equal(seen.size, et, 'every timeout in the range occurs');
  t.end();
});

t.test('§5.3 leader replicates a proposal with the right previous index/term', (t) => {
  const { rn, storage } = newNode(1, [1, 2, 3]);
  becomeLeader(rn, storage, [1, 2, 3]);
  // Followers acknowledge the no-op (index 1): their progress moves from probe to replicate.
  for (const f of [2, 3])
    rn.step(msg({ type: MessageType.AppResp, from: f, to: 1, term: 1, index: 1 }));
  flush(rn, storage);
  t.equal(rn.raft.log.committed, 1, 'no-op committed');
  rn.propose(enc.encode('x'));
  const apps = flush(rn, storage).filter((m) => m.type === MessageType.App);
  t.equal(apps.length, 2);
  for (const m of apps) {
    t.equal(m.index, 1, 'previous index');
    t.equal(m.logTerm, 1, 'previous term');
    t.same(
      m.entries.map((e) => [e.index, e.term, e.data.length]),
      [[2, 1, 1]],
    );
    t.equal(m.commit, 1, 'carries the commit index');
  }
  t.end();
});

t.test('§5.3 an entry commits once a quorum holds it; followers learn the commit index', (t) => {
  const net = new RaftNet([1, 2, 3]);
  net.campaign(1);
  net.propose(1, 'a');
  for (const id of [1, 2, 3]) {
    t.equal(net.raft(id).log.committed, 2, `n${id} committed`);
    t.same(net.values(id), ['a'], `n${id} applied`);
  }
  t.end();
});

t.test('§5.3 leader does not count itself before its own write (advance)', (t) => {
  const { rn, storage } = newNode(1, [1]);
  rn.campaign();
  const rd = rn.ready();
  t.equal(rn.raft.role, StateRole.Leader);
  t.equal(rd.entries.length, 1, 'no-op to persist');
  t.equal(rd.committedEntries.length, 0, 'not committed before the write');
  t.equal(rn.raft.log.committed, 0);
  storage.append(rd.entries);
  if (rd.hardState) storage.setHardState(rd.hardState);
  rn.advance(rd);
  t.equal(rn.raft.log.committed, 1, 'committed after the write');
  const rd2 = rn.ready();
  t.equal(rd2.committedEntries.length, 1, 'applied in the next Ready');
  rn.advance(rd2);
  t.end();
});

t.test('§5.3 follower rejects an append that does not match, with a backtracking hint', (t) => {
  const s = storageWithTerms([1, 2, 3], [1, 2], 2);
  const { rn } = newNode(1, [1, 2, 3], {}, s);
  // Matches: index 2 term 2.
  rn.step(
    msg({
      type: MessageType.App,
      from: 2,
      to: 1,
      term: 2,
      index: 2,
      logTerm: 2,
      entries: [{ term: 2, index: 3, type: EntryType.Normal, data: new Uint8Array() }],
    }),
  );
  let resp = rn.ready();
  let r = resp.persistedMessages.find((m) => m.type === MessageType.AppResp);
  t.equal(r?.reject, false);
  t.equal(r?.index, 3);
  s.append(resp.entries);
  rn.advance(resp);
  // Mismatch: we have term 2 at index 3, the leader claims term 3 at index 5.
  rn.step(msg({ type: MessageType.App, from: 2, to: 1, term: 3, index: 5, logTerm: 3 }));
  resp = rn.ready();
  r = resp.persistedMessages.find((m) => m.type === MessageType.AppResp);
  t.equal(r?.reject, true);
  t.equal(r?.index, 5);
  t.equal(r?.rejectHint, 3, 'hint: our last index whose term ≤ 3');
  t.equal(r?.logTerm, 2, 'with its term');
  rn.advance(resp);
  t.end();
});

t.test('§5.3 follower overwrites a conflicting uncommitted suffix', (t) => {
  const s = storageWithTerms([1, 2, 3], [1, 1, 1], 1);
  const { rn, storage } = newNode(1, [1, 2, 3], {}, s);
  rn.step(
    msg({
      type: MessageType.App,
      from: 2,
      to: 1,
      term: 2,
      index: 1,
      logTerm: 1,
      entries: [{ term: 2, index: 2, type: EntryType.Normal, data: new Uint8Array() }],
    }),
  );
  flush(rn, storage);
  t.equal(storage.lastIndex(), 2, 'suffix truncated');
  t.equal(storage.term(2), 2);
  t.end();
});

t.test('§5.3 leader brings divergent followers in line (Figure 7)', (t) => {
  // Leader log of Figure 7: terms 1 1 1 4 4 5 5 6 6 6, leader in term 8.
  const leaderTerms = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
  const followers: number[][] = [
    [1, 1, 1, 4, 4, 5, 5, 6, 6], // (a) missing one
    [1, 1, 1, 4], // (b) missing many
    [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6], // (c) extra uncommitted
    [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], // (d) extra of a later term
    [1, 1, 1, 4, 4, 4, 4], // (e) conflicting
    [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3], // (f) conflicting terms 2-3
  ];
  for (const [i, ft] of followers.entries()) {
    const storages = new Map([
      [1, storageWithTerms([1, 2, 3], leaderTerms, 7)],
      [2, storageWithTerms([1, 2, 3], ft, 7)],
      // A third voter that votes for the leader and holds the leader's log.
      [3, storageWithTerms([1, 2, 3], leaderTerms, 7)],
    ]);
    const net = new RaftNet([1, 2, 3], {}, 1, storages);
    net.campaign(1);
    t.equal(net.raft(1).role, StateRole.Leader, `case ${i}: leader elected`);
    net.propose(1, 'z');
    const lt = net.node(1).storage;
    const fs = net.node(2).storage;
    t.equal(fs.lastIndex(), lt.lastIndex(), `case ${i}: same length`);
    let same = true;
    for (let j = 1; j <= lt.lastIndex(); j++) if (lt.term(j) !== fs.term(j)) same = false;
    t.ok(same, `case ${i}: follower log equals leader log`);
  }
  t.end();
});

t.test('§5.3 fast backtracking needs one probe per differing term, not per entry', (t) => {
  // The follower has 50 entries of term 2 that the leader (terms 1,3) does not have.
  const leaderTerms = [1, ...Array<number>(5).fill(3)];
  const followerTerms = [1, ...Array<number>(50).fill(2)];
  const storages = new Map([
    [1, storageWithTerms([1, 2, 3], leaderTerms, 3)],
    [2, storageWithTerms([1, 2, 3], followerTerms, 3)],
    [3, storageWithTerms([1, 2, 3], leaderTerms, 3)],
  ]);
  const net = new RaftNet([1, 2, 3], {}, 1, storages);
  net.campaign(1);
  const rejects = net.delivered.filter(
    (m) => m.type === MessageType.AppResp && m.from === 2 && m.reject,
  );
  t.ok(rejects.length <= 2, `rejections from follower: ${rejects.length}`);
  t.equal(net.node(2).storage.term(2), 3, 'follower log repaired');
  t.end();
});

t.test('§5.4.1 a vote is granted only to a candidate whose log is at least as up to date', (t) => {
  // Our log: terms [1, 2], last index 2 term 2.
  const cases: [number, number, boolean][] = [
    [2, 1, true], // [lastIndex, lastTerm, reject]
    [3, 1, true],
    [1, 2, true],
    [2, 2, false],
    [3, 2, false],
    [1, 3, false],
  ];
  for (const [index, logTerm, reject] of cases) {
    const { rn } = newNode(1, [1, 2, 3], {}, storageWithTerms([1, 2, 3], [1, 2], 2));
    rn.step(msg({ type: MessageType.Vote, from: 2, to: 1, term: 3, index, logTerm }));
    const r = rn.ready().persistedMessages.find((m) => m.type === MessageType.VoteResp);
    t.equal(r?.reject, reject, `candidate last ${index}/t${logTerm}`);
  }
  t.end();
});

t.test('§5.4.2 Figure 8: old-term entries commit only with an entry of the current term', (t) => {
  // n1 was leader in term 2 and wrote index 2 only locally; now leader in term 4 it replicates
  // index 2 to a majority. Counting replicas must not commit it (n5 with a term-3 entry could
  // still win an election and overwrite it); only the term-4 no-op commits both.
  const ids = [1, 2, 3, 4, 5];
  const s1 = storageWithTerms(ids, [1, 2], 3);
  const { rn, storage } = newNode(1, ids, {}, s1);
  rn.campaign();
  flush(rn, storage);
  for (const v of [2, 3]) {
    rn.step(msg({ type: MessageType.VoteResp, from: v, to: 1, term: rn.raft.term }));
  }
  flush(rn, storage);
  t.equal(rn.raft.role, StateRole.Leader);
  t.equal(rn.raft.term, 4);
  t.equal(rn.raft.log.lastIndex(), 3, 'no-op at index 3');
  // Followers 2 and 3 acknowledge index 2 only (the term-2 entry).
  for (const f of [2, 3]) {
    rn.step(msg({ type: MessageType.AppResp, from: f, to: 1, term: 4, index: 2 }));
  }
  flush(rn, storage);
  t.equal(rn.raft.log.committed, 0, 'term-2 entry not committed by counting replicas');
  for (const f of [2, 3]) {
    rn.step(msg({ type: MessageType.AppResp, from: f, to: 1, term: 4, index: 3 }));
  }
  flush(rn, storage);
  t.equal(rn.raft.log.committed, 3, 'the term-4 entry commits everything before it');
  t.end();
});

t.test('§5.4.3 leader completeness: a node missing committed entries cannot win', (t) => {
  const net = new RaftNet([1, 2, 3]);
  net.campaign(1);
  net.isolate(3);
  net.propose(1, 'a');
  net.propose(1, 'b');
  net.heal();
  net.isolate(1);
  net.campaign(3);
  t.not(net.raft(3).role, StateRole.Leader, 'stale node loses');
  net.campaign(2);
  t.equal(net.raft(2).role, StateRole.Leader, 'up-to-date node wins');
  net.heal();
  net.propose(2, 'c');
  // n1 missed n2's first append, so its progress is a paused probe until the next heartbeat.
  net.tickAll(1);
  for (const id of [1, 2, 3]) t.same(net.values(id), ['a', 'b', 'c'], `n${id}`);
  t.end();
});

t.test(
  '§5.1 restart: term, vote and log come back from storage; commit from the hard state',
  (t) => {
    const { rn, storage } = newNode(1, [1, 2, 3]);
    rn.step(msg({ type: MessageType.Vote, from: 2, to: 1, term: 3, index: 0, logTerm: 0 }));
    flush(rn, storage);
    rn.step(
      msg({
        type: MessageType.App,
        from: 2,
        to: 1,
        term: 3,
        index: 0,
        logTerm: 0,
        commit: 1,
        entries: [
          { term: 3, index: 1, type: EntryType.Normal, data: enc.encode('a') },
          { term: 3, index: 2, type: EntryType.Normal, data: enc.encode('b') },
        ],
      }),
    );
    flush(rn, storage);
    const again = newNode(1, [1, 2, 3], {}, storage).rn;
    t.equal(again.raft.term, 3);
    t.equal(again.raft.vote, 2, 'vote survives: no second vote in term 3');
    t.equal(again.raft.log.lastIndex(), 2);
    t.equal(again.raft.log.committed, 1);
    again.step(msg({ type: MessageType.Vote, from: 3, to: 1, term: 3, index: 9, logTerm: 3 }));
    const r = again.ready().persistedMessages.find((m) => m.type === MessageType.VoteResp);
    t.equal(r?.reject, true, 'refuses another candidate in the same term');
    t.end();
  },
);

t.test('a node with a committed, unapplied conf change does not campaign', (t) => {
  const s = MemoryStorage.bootstrap([1, 2, 3]);
  s.append([
    {
      term: 1,
      index: 1,
      type: EntryType.ConfChange,
      data: new Uint8Array([1, 0, 0, 0, 4]),
    },
  ]);
  s.setHardState({ term: 1, vote: 0, commit: 1 });
  const { rn } = newNode(1, [1, 2, 3], {}, s);
  rn.campaign();
  t.equal(rn.raft.role, StateRole.Follower, 'waits until the change is applied');
  const rd = rn.ready();
  t.equal(rd.committedEntries.length, 1);
  rn.applyConfChange({ type: 1, nodeId: 4 });
  s.setHardState(rd.hardState ?? { term: 1, vote: 0, commit: 1 });
  rn.advance(rd);
  rn.campaign();
  t.equal(rn.raft.role, StateRole.Candidate, 'campaigns once applied');
  t.end();
});
