/**
 * Seeded raft cluster simulator: N RawNodes in one process, a fake clock, a fake network that
 * drops, duplicates, reorders and delays messages and partitions nodes (one-way too), and node
 * crashes that lose everything a Ready had not yet had persisted. Clients propose values with
 * (client, seq) ids and retry; the state machine drops duplicates.
 *
 * Safety invariants are checked after every step; after the chaos phase the network heals and
 * every acknowledged value must reach every node. May import src/raft and node:buffer.
 */

import { Buffer } from 'node:buffer';
import {
  ConfChangeRejectedError,
  ConfChangeType,
  EntryType,
  decodeConfChange,
  type ConfChange,
  MemoryStorage,
  MessageType,
  ProposalDroppedError,
  RawNode,
  SeededRandom,
  StateRole,
  raftConfig,
  type Entry,
  type Message,
  type Ready,
} from '../../../src/raft/index.js';
import { SessionTable } from '../../../src/raft/sessions.js';

export interface SimOptions {
  nodes: number;
  /** Steps (time units) of chaos; a node ticks every `tickEvery` units. */
  chaosSteps: number;
  /** Max steps after healing for every acknowledged value to reach every node. */
  healSteps: number;
  tickEvery: number;
  /** Compact a node's log when it has applied this many entries past its first index. */
  compactEvery: number;
  clients: number;
  /** Keep a full trace (slow); otherwise only the last events. */
  verbose: boolean;
}

export const DEFAULT_SIM: SimOptions = {
  nodes: 3,
  chaosSteps: 600,
  healSteps: 1500,
  tickEvery: 4,
  compactEvery: 24,
  clients: 6,
  verbose: false,
};

export interface SimResult {
  seed: number;
  ok: boolean;
  error?: string;
  trace: string[];
  steps: number;
  acked: number;
  maxCommit: number;
  leaders: number;
  crashes: number;
  delivered: number;
  snapshotsSent: number;
  readsChecked: number;
  confChanges: number;
  transfers: number;
}

class SimViolation extends Error {}

interface InFlight {
  at: number;
  m: Message;
}

interface SimNode {
  id: number;
  storage: MemoryStorage;
  node: RawNode | undefined;
  /** Volatile state machine (rebuilt from snapshot + log on restart). */
  values: string[];
  sessions: SessionTable;
  applied: number;
  phase: number;
}

interface Client {
  id: number;
  seq: number;
  lastTry: number;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

function describe(m: Message): string {
  let s = `${MessageType[m.type]} ${m.from}->${m.to} t${m.term}`;
  if (m.type === MessageType.App)
    s += ` i${m.index}/t${m.logTerm} n${m.entries.length} c${m.commit}`;
  else if (m.type === MessageType.AppResp)
    s += ` i${m.index}${m.reject ? ` rej h${m.rejectHint}` : ''}`;
  else if (m.type === MessageType.Snap) s += ` snap${m.snapshot?.metadata.index}`;
  else if (m.reject) s += ' rej';
  return s;
}

export function runRaftSim(seed: number, opts: Partial<SimOptions> = {}): SimResult {
  const o: SimOptions = { ...DEFAULT_SIM, ...opts };
  const rng = new SeededRandom(seed);
  const chance = (p: number): boolean => rng.next() < p;
  const ids = Array.from({ length: o.nodes }, (_, i) => i + 1);
  // Per-seed fault intensities, so the seeds cover calm and very lossy networks.
  const pDrop = rng.next() * 0.25;
  const pDup = rng.next() * 0.1;
  const pLongDelay = rng.next() * 0.1;
  const pPartition = 0.002 + rng.next() * 0.01;
  const pCrash = rng.next() * 0.01;
  const maxSizePerMsg = chance(0.5) ? 1 : 256;
  const pPropose = 0.1 + rng.next() * 0.4;
  const pCrashMidReady = rng.next() * 0.01;
  const pRead = rng.next() * 0.05;
  const pConf = rng.next() * 0.006;
  const pTransfer = rng.next() * 0.003;

  const trace: string[] = [];
  const log = (s: string): void => {
    trace.push(`t${now} ${s}`);
    if (!o.verbose && trace.length > 120) trace.splice(0, trace.length - 80);
  };
  let now = 0;
  let delivered = 0;
  let crashes = 0;
  let snapshotsSent = 0;
  let readsChecked = 0;
  let confChanges = 0;
  let transfers = 0;
  let nextId = o.nodes + 1;

  const nodes = new Map<number, SimNode>();
  const net: InFlight[] = [];
  const blocked = new Set<string>();
  const leaderOfTerm = new Map<number, number>();
  /** index → term|data of every applied entry, across all nodes and incarnations. */
  const appliedAt = new Map<number, string>();
  /** index:term → prevTerm|type|data of every persisted entry (log matching, inductively). */
  const persistedAt = new Map<string, string>();
  /** index → an upper bound of the term in which it was committed: the smallest current term
   * of any node when applying it (a node learns of a commit from a leader of a term ≤ its own). */
  const committedBy = new Map<number, number>();
  const acked = new Set<string>();
  /** Outstanding ReadIndex requests: ctx → node, values acknowledged before it was issued. */
  const reads = new Map<string, { node: number; before: string[]; index: number }>();
  let readSeq = 0;
  const clients: Client[] = Array.from({ length: o.clients }, (_, i) => ({
    id: i + 1,
    seq: 1,
    lastTry: -1000,
  }));

  const fail = (what: string): never => {
    throw new SimViolation(what);
  };

  const makeNode = (sn: SimNode): RawNode => {
    const snap = sn.storage.snapshot();
    sn.values = [];
    sn.sessions = new SessionTable();
    sn.applied = snap.metadata.index;
    if (snap.data.length > 0) restoreSm(sn, snap.data);
    const cfg = raftConfig(sn.id, {
      electionTick: 10,
      heartbeatTick: 1,
      applied: sn.applied,
      maxSizePerMsg,
      maxInflightMsgs: 4,
      maxUncommittedEntriesSize: 4096,
    });
    return new RawNode(cfg, sn.storage, new SeededRandom(rng.intn(2 ** 31)));
  };

  const restoreSm = (sn: SimNode, data: Uint8Array): void => {
    const st = JSON.parse(dec.decode(data)) as {
      values: string[];
      sessions: Parameters<typeof SessionTable.fromJSON>[0];
    };
    sn.values = [...st.values];
    sn.sessions = SessionTable.fromJSON(st.sessions);
  };

  const smData = (sn: SimNode): Uint8Array =>
    enc.encode(JSON.stringify({ values: sn.values, sessions: sn.sessions.toJSON() }));

  const addSimNode = (id: number): void => {
    const sn: SimNode = {
      id,
      // Every node, first or joining, starts from the initial membership; it learns the rest from the log or a snapshot.
      storage: MemoryStorage.bootstrap(ids),
      node: undefined,
      values: [],
      sessions: new SessionTable(),
      applied: 0,
      phase: rng.intn(o.tickEvery),
    };
    sn.node = makeNode(sn);
    nodes.set(id, sn);
  };

  for (const id of ids) addSimNode(id);

  const send = (m: Message, lossy: boolean): void => {
    if (m.type === MessageType.Snap) snapshotsSent++;
    const lost = blocked.has(`${m.from}>${m.to}`) || (lossy && chance(pDrop));
    if (lost) {
      // A stream transport notices a failed snapshot send; datagram-like loss of others is silent.
      if (m.type === MessageType.Snap) nodes.get(m.from)?.node?.reportSnapshot(m.to, false);
      return;
    }
    const delay = (): number => 1 + rng.intn(3) + (lossy && chance(pLongDelay) ? rng.intn(40) : 0);
    net.push({ at: now + delay(), m });
    if (lossy && chance(pDup)) net.push({ at: now + delay(), m });
  };

  const apply = (sn: SimNode, e: Entry): void => {
    if (e.index !== sn.applied + 1) fail(`n${sn.id} applied ${e.index} after ${sn.applied}`);
    sn.applied = e.index;
    const key = `${e.term}|${e.type}|${Buffer.from(e.data).toString('hex')}`;
    const prev = appliedAt.get(e.index);
    if (prev !== undefined && prev !== key)
      fail(`state machine safety: index ${e.index} applied as ${prev} and ${key} (n${sn.id})`);
    appliedAt.set(e.index, key);
    const ub = sn.node!.raft.term;
    if ((committedBy.get(e.index) ?? Infinity) > ub) committedBy.set(e.index, ub);
    if (e.type === EntryType.ConfChange) {
      const cc = decodeConfChange(e.data);
      const cs = sn.node!.applyConfChange(cc);
      log(
        `n${sn.id} applied ${ConfChangeType[cc.type]} ${cc.nodeId} at ${e.index}: voters ${cs.voters.join(',')} learners ${cs.learners.join(',')}`,
      );
      return;
    }
    if (e.data.length === 0) return;
    const v = dec.decode(e.data);
    const [c, s] = v.split(':').map(Number) as [number, number];
    if (sn.sessions.admit(String(c), s)) sn.values.push(v);
    if (sn.node?.raft.role === StateRole.Leader && !acked.has(v)) {
      acked.add(v);
      log(`ack ${v} by leader n${sn.id} at ${e.index}`);
    }
  };

  const checkLeaderCompleteness = (sn: SimNode): void => {
    const r = sn.node!.raft;
    const first = r.log.firstIndex();
    for (const [index, key] of appliedAt) {
      // The property covers entries committed in earlier terms (paper §5.4.3): a leader of a
      // lower term elected late by a delayed vote need not hold them.
      if (index < first || (committedBy.get(index) ?? Infinity) >= r.term) continue;
      const t = r.log.maybeTerm(index);
      const want = Number(key.slice(0, key.indexOf('|')));
      if (t !== want)
        fail(
          `leader completeness: leader n${sn.id} term ${r.term} has term ${t} at committed ${index} (want ${want})`,
        );
    }
  };

  const crash = (sn: SimNode, why: string): void => {
    sn.node = undefined;
    for (const [ctx, r] of reads) if (r.node === sn.id) reads.delete(ctx);
    crashes++;
    log(`crash n${sn.id} (${why})`);
  };

  const persistEntries = (sn: SimNode, ents: Entry[]): void => {
    if (ents.length === 0) return;
    sn.storage.append(ents);
    for (const e of ents) {
      const prevTerm = sn.storage.term(e.index - 1);
      const k = `${e.index}:${e.term}`;
      const v = `${prevTerm}|${e.type}|${Buffer.from(e.data).toString('hex')}`;
      const had = persistedAt.get(k);
      if (had !== undefined && had !== v) fail(`log matching: ${k} is ${had} and ${v} (n${sn.id})`);
      persistedAt.set(k, v);
    }
  };

  const handleReady = (sn: SimNode, rd: Ready, lossy: boolean): boolean => {
    const n = sn.node!;
    for (const m of rd.messages) send(m, lossy);
    if (lossy && chance(pCrashMidReady)) {
      // Either nothing reached the disk, or a torn write: the snapshot and a prefix of the
      // entries made it, the hard state (written last) did not.
      if (chance(0.5)) {
        if (rd.snapshot !== undefined) sn.storage.applySnapshot(rd.snapshot);
        const keep = rng.intn(rd.entries.length + 1);
        persistEntries(sn, rd.entries.slice(0, keep));
        crash(sn, `torn write: ${keep}/${rd.entries.length} entries, no hard state`);
      } else {
        crash(sn, 'before write');
      }
      return false;
    }
    if (rd.snapshot !== undefined) {
      sn.storage.applySnapshot(rd.snapshot);
      restoreSm(sn, rd.snapshot.data);
      sn.applied = rd.snapshot.metadata.index;
      log(`n${sn.id} restored snapshot ${sn.applied}`);
    }
    persistEntries(sn, rd.entries);
    if (rd.hardState !== undefined) sn.storage.setHardState(rd.hardState);
    for (const m of rd.persistedMessages) send(m, lossy);
    for (const e of rd.committedEntries) apply(sn, e);
    for (const rs of rd.readStates) {
      const r = reads.get(dec.decode(rs.requestCtx));
      if (r !== undefined && r.node === sn.id) r.index = rs.index;
    }
    n.advance(rd);
    if (rd.softState !== undefined) {
      const r = n.raft;
      log(`n${sn.id} ${StateRole[rd.softState.role]} term ${r.term} lead ${rd.softState.lead}`);
      if (rd.softState.role === StateRole.Leader) checkLeaderCompleteness(sn);
    }
    if (sn.applied - sn.storage.firstIndex() >= o.compactEvery) {
      const cs = n.raft.prs.confState();
      if (sn.applied > sn.storage.snapshot().metadata.index) {
        sn.storage.createSnapshot(sn.applied, cs, smData(sn));
        sn.storage.compact(Math.max(sn.storage.firstIndex(), sn.applied - 4));
      }
    }
    return true;
  };

  const drain = (sn: SimNode, lossy: boolean): void => {
    for (let i = 0; i < 20 && sn.node?.hasReady(); i++) {
      if (!handleReady(sn, sn.node.ready(), lossy)) return;
    }
  };

  /** A read is served once its node applied up to the read index; it must see every value
   * acknowledged before the read was issued (linearizability of ReadIndex). */
  const serveReads = (): void => {
    for (const [ctx, r] of reads) {
      const sn = nodes.get(r.node)!;
      if (r.index === 0 || sn.applied < r.index) continue;
      reads.delete(ctx);
      readsChecked++;
      const have = new Set(sn.values);
      for (const v of r.before)
        if (!have.has(v)) fail(`stale read ${ctx} at n${sn.id} index ${r.index}: misses ${v}`);
    }
  };

  const readIndex = (): void => {
    const l = live();
    if (l.length === 0) return;
    const sn = l[rng.intn(l.length)]!;
    const ctx = `r${++readSeq}`;
    try {
      sn.node!.readIndex(enc.encode(ctx));
      reads.set(ctx, { node: sn.id, before: [...acked], index: 0 });
    } catch (e) {
      if (!(e instanceof ProposalDroppedError)) throw e;
    }
  };

  const leaderNode = (): SimNode | undefined =>
    live().find((n) => n.node!.raft.role === StateRole.Leader);

  const reconfigure = (): void => {
    const l = leaderNode();
    if (l === undefined) return;
    const cs = l.node!.raft.prs.confState();
    let cc: ConfChange;
    if (cs.learners.length > 0) {
      cc = { type: ConfChangeType.PromoteLearner, nodeId: cs.learners[0]! };
    } else if (cs.voters.length > o.nodes - 1 && (cs.voters.length > o.nodes || chance(0.5))) {
      cc = { type: ConfChangeType.RemoveNode, nodeId: cs.voters[rng.intn(cs.voters.length)]! };
    } else {
      cc = { type: ConfChangeType.AddLearner, nodeId: nextId };
    }
    try {
      l.node!.proposeConfChange(cc);
    } catch (e) {
      if (e instanceof ProposalDroppedError || e instanceof ConfChangeRejectedError) return;
      throw e;
    }
    confChanges++;
    log(`propose ${ConfChangeType[cc.type]} ${cc.nodeId} at n${l.id}`);
    if (cc.type === ConfChangeType.AddLearner) addSimNode(nextId++);
  };

  const transfer = (): void => {
    const l = leaderNode();
    if (l === undefined) return;
    const voters = l.node!.raft.prs.confState().voters.filter((v) => v !== l.id);
    const to = voters[rng.intn(voters.length)];
    if (to === undefined) return;
    transfers++;
    log(`transfer leadership n${l.id} -> n${to}`);
    l.node!.transferLeader(to);
  };

  const checkStep = (): void => {
    for (const sn of nodes.values()) {
      const r = sn.node?.raft;
      if (r === undefined || r.role !== StateRole.Leader) continue;
      const had = leaderOfTerm.get(r.term);
      if (had !== undefined && had !== sn.id)
        fail(`election safety: n${had} and n${sn.id} both leader in term ${r.term}`);
      leaderOfTerm.set(r.term, sn.id);
    }
  };

  /** Nodes in the membership of the most advanced node (removed ones are left out). */
  const members = (): SimNode[] => {
    let best: SimNode | undefined;
    for (const sn of nodes.values())
      if (sn.node !== undefined && (best === undefined || sn.applied > best.applied)) best = sn;
    if (best === undefined) return [];
    const cs = best.node!.raft.prs.confState();
    return [...cs.voters, ...cs.learners]
      .map((id) => nodes.get(id)!)
      .filter((n) => n !== undefined);
  };

  const live = (): SimNode[] => [...nodes.values()].filter((n) => n.node !== undefined);

  const propose = (): void => {
    const c = clients[rng.intn(clients.length)]!;
    const v = `${c.id}:${c.seq}`;
    if (acked.has(v)) {
      c.seq++;
      c.lastTry = -1000;
      return;
    }
    if (now - c.lastTry < 30) return;
    const targets = live();
    if (targets.length === 0) return;
    const leader = targets.find((n) => n.node!.raft.role === StateRole.Leader);
    const sn = leader !== undefined && chance(0.6) ? leader : targets[rng.intn(targets.length)]!;
    c.lastTry = now;
    try {
      sn.node!.propose(enc.encode(v));
      log(`propose ${v} at n${sn.id}`);
    } catch (e) {
      if (!(e instanceof ProposalDroppedError)) throw e;
    }
  };

  const faults = (): void => {
    if (chance(pPartition)) {
      const ids = [...nodes.keys()];
      blocked.clear();
      const kind = rng.intn(3);
      if (kind === 0) {
        const side = new Set(ids.filter(() => chance(0.5)));
        for (const a of ids)
          for (const b of ids) if (side.has(a) !== side.has(b)) blocked.add(`${a}>${b}`);
        log(`partition {${[...side].join(',')}} | rest`);
      } else if (kind === 1) {
        const a = ids[rng.intn(ids.length)]!;
        for (const b of ids) if (b !== a) blocked.add(`${a}>${b}`);
        log(`one-way: n${a} cannot send`);
      } else {
        const a = ids[rng.intn(ids.length)]!;
        for (const b of ids) if (b !== a) blocked.add(`${b}>${a}`);
        log(`one-way: n${a} cannot receive`);
      }
    } else if (blocked.size > 0 && chance(0.01)) {
      blocked.clear();
      log('heal partition');
    }
    if (chance(pCrash)) {
      const l = live();
      // Leaders half the time: leader churn is where divergent logs come from (paper Fig. 8).
      const leader = l.find((n) => n.node!.raft.role === StateRole.Leader);
      const victim = leader !== undefined && chance(0.5) ? leader : l[rng.intn(l.length)];
      if (victim !== undefined) crash(victim, 'kill');
    }
    for (const sn of nodes.values()) {
      if (sn.node === undefined && chance(0.02)) {
        sn.node = makeNode(sn);
        log(`restart n${sn.id} (applied ${sn.applied}, last ${sn.storage.lastIndex()})`);
      }
    }
  };

  const step = (lossy: boolean): void => {
    now++;
    if (lossy) faults();
    if (chance(pPropose)) propose();
    if (chance(pRead)) readIndex();
    if (lossy && chance(pConf)) reconfigure();
    if (lossy && chance(pTransfer)) transfer();
    // Deliver due messages in random order (reordering within a time unit).
    const due: Message[] = [];
    for (let i = net.length - 1; i >= 0; i--) {
      if (net[i]!.at <= now) {
        due.push(net[i]!.m);
        net[i] = net[net.length - 1]!;
        net.pop();
      }
    }
    for (let i = due.length - 1; i > 0; i--) {
      const j = rng.intn(i + 1);
      [due[i], due[j]] = [due[j]!, due[i]!];
    }
    for (const m of due) {
      const sn = nodes.get(m.to);
      // Snapshots go over a stream whose sender learns the outcome (the transport contract).
      if (m.type === MessageType.Snap)
        nodes.get(m.from)?.node?.reportSnapshot(m.to, sn?.node !== undefined);
      if (sn?.node === undefined) continue;
      delivered++;
      if (o.verbose) log(`deliver ${describe(m)}`);
      sn.node.step({ ...m });
    }
    for (const sn of nodes.values()) {
      if (sn.node !== undefined && (now + sn.phase) % o.tickEvery === 0) sn.node.tick();
      if (sn.node !== undefined) drain(sn, lossy);
    }
    serveReads();
    checkStep();
  };

  const result = (ok: boolean, error?: string): SimResult => {
    let maxCommit = 0;
    for (const sn of nodes.values()) maxCommit = Math.max(maxCommit, sn.applied);
    const res: SimResult = {
      seed,
      ok,
      trace,
      steps: now,
      acked: acked.size,
      maxCommit,
      leaders: leaderOfTerm.size,
      crashes,
      delivered,
      snapshotsSent,
      readsChecked,
      confChanges,
      transfers,
    };
    if (error !== undefined) res.error = error;
    return res;
  };

  try {
    for (let i = 0; i < o.chaosSteps; i++) step(true);
    blocked.clear();
    log('heal all; restart all');
    for (const sn of nodes.values()) {
      if (sn.node === undefined) {
        sn.node = makeNode(sn);
        log(`restart n${sn.id}`);
      }
    }
    // Clients keep going so that the new leader commits in its term and applies everything.
    let done = false;
    for (let i = 0; i < o.healSteps && !done; i++) {
      step(false);
      if (i % 10 !== 0) continue;
      done = members().every((sn) => {
        const have = new Set(sn.values);
        for (const v of acked) if (!have.has(v)) return false;
        return true;
      });
    }
    for (const sn of nodes.values()) {
      const seen = new Set<string>();
      for (const v of sn.values) {
        if (seen.has(v)) fail(`duplicate apply: ${v} twice at n${sn.id}`);
        seen.add(v);
      }
    }
    if (!done) {
      const missing: string[] = [];
      for (const sn of members()) {
        const have = new Set(sn.values);
        const lost = [...acked].filter((v) => !have.has(v));
        if (lost.length > 0)
          missing.push(`n${sn.id} (applied ${sn.applied}) lacks ${lost.slice(0, 5).join(',')}`);
      }
      fail(`acknowledged values not everywhere after healing: ${missing.join('; ')}`);
    }
    return result(true);
  } catch (e) {
    if (e instanceof SimViolation) return result(false, e.message);
    const err = e as Error;
    return result(false, `exception: ${err.stack ?? String(e)}`);
  }
}
