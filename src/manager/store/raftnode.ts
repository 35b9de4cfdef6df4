/**
 * RaftNode: the raft driver for a manager. Gives the deterministic core (src/raft) a clock (one
 * ticker), randomness (node:crypto), durable storage (DiskStorage: WAL + snapshots) and a
 * transport, and turns its Ready cycle into promises for callers: `propose()` resolves with the
 * state machine's result once the command is applied here, `readBarrier()` once a
 * linearizable read may be served from the local state machine.
 *
 * One Ready is in flight at a time: inputs that arrive while it is being persisted (messages,
 * proposals, ticks) are queued and stepped after advance(); the next Ready then carries all of
 * them, which is our group commit. Messages that promise durable state (votes, append acks) are
 * sent only after the fsync; the leader's appends go out before its own write (thesis §10.2.1).
 *
 * Exactly-once: the core is at-least-once for retried proposals. Every command carries
 * (client, seq) and the state machine drops duplicates with a SessionTable, which allows one
 * outstanding request per client id. So this node proposes through "lanes": a lane is a client
 * id with at most one request in flight; concurrent requests take different lanes, a lane's
 * sequence only grows, and a request is re-proposed with its own (client, seq) when the leader
 * changes or it waits too long — a duplicate that commits twice is applied once.
 *
 * May import node:crypto, src/raft, src/util.
 */

import { randomBytes, randomInt } from 'node:crypto';
import {
  ConfChangeType,
  EntryType,
  MessageType,
  ProposalDroppedError,
  RawNode,
  StateRole,
  decodeConfChange,
  raftConfig,
  type ConfChange,
  type ConfState,
  type Entry,
  type Message,
  type RaftConfig,
  type Ready,
  type Snapshot,
  type Status,
} from '../../raft/index.js';
import { DiskStorage } from '../../raft/diskstorage.js';
import type { WalFs } from '../../raft/wal.js';
import { MeshError } from '../../util/errors.js';
import { createLogger } from '../../util/log.js';
import { decodeEntry, encodeEntry } from './entry.js';

const log = createLogger('raft');

/** What the node needs from the state machine it replicates. */
export interface StateMachine {
  /** Apply a committed Normal entry; the returned value resolves the matching proposal. */
  apply(index: number, data: Uint8Array): unknown;
  /** Bytes of the whole state at the last applied index (for snapshots). */
  snapshot(): Uint8Array;
  /** Replace the state with a snapshot received from the leader (or loaded at start). */
  restore(data: Uint8Array, index: number): void;
  /** Membership changed (after the core applied `cc`). */
  onConfChange?(cc: ConfChange, cs: ConfState, index: number): void;
  /** Leader or role changed. */
  onLeaderChange?(lead: number, role: StateRole): void;
}

export interface RaftSender {
  send(msgs: Message[]): void;
}

export interface RaftNodeOptions {
  id: number;
  /** Directory of the WAL and snapshot files. */
  dir: string;
  /** Voters of a brand-new cluster (used only when `dir` holds no log). */
  bootstrapVoters?: number[];
  sm: StateMachine;
  transport: RaftSender;
  /** Milliseconds per tick. @default 50 */
  tickMs?: number;
  /** Core settings (electionTick, heartbeatTick, …). @default electionTick 10, heartbeatTick 1 */
  raft?: Partial<Omit<RaftConfig, 'id' | 'applied'>>;
  /** Applied entries between state machine snapshots. @default 10,000 (Swarm's) */
  snapshotEvery?: number;
  /** Entries kept in the log behind a snapshot, for slow followers. @default 500 (Swarm's) */
  snapshotKeep?: number;
  /** A request not applied after this long is re-proposed. @default 2 election timeouts */
  retryMs?: number;
  /** Leader whose disk write has been stuck this long hands leadership over. @default 2 s */
  diskStallMs?: number;
  walFs?: WalFs;
}

interface Pending {
  lane: Lane;
  seq: number;
  /** The full entry data, to re-propose as is. */
  data: Uint8Array;
  resolve(v: unknown): void;
  reject(e: unknown): void;
  proposedAt: number;
  deadline: number;
}

interface Lane {
  client: string;
  seq: number;
  busy: boolean;
}

interface PendingRead {
  resolve(): void;
  reject(e: unknown): void;
  deadline: number;
}

interface PendingConf {
  resolve(cs: ConfState): void;
  reject(e: unknown): void;
  cc: ConfChange;
  deadline: number;
}

/** Default timing: 50 ms ticks, elections after 0.5–1 s of silence, heartbeats every tick. */
export const DEFAULT_TICK_MS = 50;
export const DEFAULT_ELECTION_TICK = 10;

export class RaftNode {
  readonly id: number;
  readonly storage: DiskStorage;
  private readonly rn: RawNode;
  private readonly sm: StateMachine;
  private readonly transport: RaftSender;
  private readonly tickMs: number;
  private readonly electionMs: number;
  private readonly retryMs: number;
  private readonly diskStallMs: number;
  private readonly snapshotEvery: number;
  private readonly snapshotKeep: number;
  private ticker: NodeJS.Timeout | undefined;
  private busy = false;
  private scheduled = false;
  private closed = false;
  private queued: Message[] = [];
  private queuedTicks = 0;
  /** Calls into the core that must wait until no Ready is outstanding. */
  private localOps: (() => void)[] = [];
  /** Boot nonce: lanes of an earlier run of this node are never reused. */
  private readonly nonce = randomBytes(6).toString('hex');
  private readonly lanes: Lane[] = [];
  private readonly pending = new Map<string, Pending>();
  private proposeQueue: Pending[] = [];
  private readonly reads = new Map<string, PendingRead[]>();
  private readWaiters: PendingRead[] = [];
  private readsAwaitingApply: { index: number; waiters: PendingRead[] }[] = [];
  private readCtx = 0;
  private readonly confs: PendingConf[] = [];
  private applied: number;
  private snapIndex: number;
  private lead = 0;
  private role = StateRole.Follower;
  private leaderSince = 0;
  private noLeaderSince = Date.now();
  private stalled = false;
  readonly counters = {
    readies: 0,
    fsyncs: 0,
    proposals: 0,
    retries: 0,
    applied: 0,
    snapshots: 0,
    leaderChanges: 0,
    diskStallStepDowns: 0,
  };

  private constructor(opts: RaftNodeOptions, storage: DiskStorage, rn: RawNode, applied: number) {
    this.id = opts.id;
    this.storage = storage;
    this.rn = rn;
    this.sm = opts.sm;
    this.transport = opts.transport;
    this.tickMs = opts.tickMs ?? DEFAULT_TICK_MS;
    const et = opts.raft?.electionTick ?? DEFAULT_ELECTION_TICK;
    this.electionMs = et * this.tickMs;
    this.retryMs = opts.retryMs ?? 2 * this.electionMs;
    this.diskStallMs = opts.diskStallMs ?? Math.max(2000, 2 * this.electionMs);
    this.snapshotEvery = opts.snapshotEvery ?? 10_000;
    this.snapshotKeep = opts.snapshotKeep ?? 500;
    this.applied = applied;
    this.snapIndex = applied;
  }

  /** Open (or create) the log in `opts.dir`, restore the state machine and start ticking. */
  static async open(opts: RaftNodeOptions): Promise<RaftNode> {
    const storage = await DiskStorage.open(opts.dir, {
      ...(opts.bootstrapVoters !== undefined ? { bootstrapVoters: opts.bootstrapVoters } : {}),
      ...(opts.walFs !== undefined ? { fs: opts.walFs } : {}),
    });
    const snap = storage.snapshot();
    const applied = snap.metadata.index;
    if (applied > 0) opts.sm.restore(snap.data, applied);
    const cfg = raftConfig(opts.id, {
      electionTick: DEFAULT_ELECTION_TICK,
      heartbeatTick: 1,
      ...opts.raft,
      applied,
    });
    const rn = new RawNode(cfg, storage, { intn: (n: number) => randomInt(n) });
    const node = new RaftNode(opts, storage, rn, applied);
    node.ticker = setInterval(() => node.onTick(), node.tickMs);
    log.info('raft node open', {
      id: opts.id,
      applied,
      last: storage.lastIndex(),
      voters: storage.initialState().confState.voters.join(','),
    });
    // A lone voter does not wait an election timeout to lead itself.
    const cs = storage.initialState().confState;
    if (cs.voters.length === 1 && cs.voters[0] === opts.id) {
      rn.campaign();
      node.schedule();
    }
    return node;
  }

  // ---- inputs ----

  /** Messages from the transport. */
  step(msgs: Message[]): void {
    if (this.closed) return;
    for (const m of msgs) this.queued.push(m);
    this.schedule();
  }

  reportUnreachable(id: number): void {
    this.local(() => this.rn.reportUnreachable(id));
  }

  reportSnapshot(id: number, ok: boolean): void {
    this.local(() => this.rn.reportSnapshot(id, ok));
  }

  private local(op: () => void): void {
    if (this.closed) return;
    this.localOps.push(op);
    this.schedule();
  }

  private onTick(): void {
    if (this.closed) return;
    this.queuedTicks++;
    this.checkDeadlines();
    this.schedule();
  }

  /**
   * Replicate `cmd` and resolve with what the state machine returned for it here. Rejects
   * with EUNAVAILABLE (no leader / no quorum) or ETIMEDOUT; either means the outcome is unknown
   * (it may still be applied), which callers must say.
   */
  propose(cmd: Uint8Array, timeoutMs = 10_000): Promise<unknown> {
    if (this.closed) return Promise.reject(closedError());
    // Fail fast when the quorum is gone. A lone voter cannot lose its quorum: while it has no
    // leader it is electing itself, which waits for its own disk (seconds on a slow or emulated
    // machine, right after `cluster init`), so its proposals wait, bounded by `timeoutMs`.
    if (this.lead === 0 && this.leaderlessMs() > 3 * this.electionMs && !this.loneVoter()) {
      return Promise.reject(noLeaderError(this));
    }
    let lane = this.lanes.find((l) => !l.busy);
    if (lane === undefined) {
      lane = {
        client: `${this.id.toString(36)}.${this.nonce}.${this.lanes.length}`,
        seq: 0,
        busy: false,
      };
      this.lanes.push(lane);
    }
    lane.busy = true;
    lane.seq++;
    const seq = lane.seq;
    const data = encodeEntry(lane.client, seq, cmd);
    return new Promise((resolve, reject) => {
      const now = Date.now();
      const p: Pending = {
        lane: lane,
        seq,
        data,
        resolve,
        reject,
        proposedAt: now,
        deadline: now + timeoutMs,
      };
      this.pending.set(`${lane.client}/${seq}`, p);
      this.counters.proposals++;
      this.proposeQueue.push(p);
      this.schedule();
    });
  }

  /** Resolves once the local state machine reflects every write committed before the call. */
  readBarrier(timeoutMs = 10_000): Promise<void> {
    if (this.closed) return Promise.reject(closedError());
    return new Promise((resolve, reject) => {
      this.readWaiters.push({ resolve, reject, deadline: Date.now() + timeoutMs });
      this.schedule();
    });
  }

  /** Propose a membership change; resolves with the new membership once applied here. */
  changeMembership(cc: ConfChange, timeoutMs = 10_000): Promise<ConfState> {
    if (this.closed) return Promise.reject(closedError());
    return new Promise((resolve, reject) => {
      const pc: PendingConf = { resolve, reject, cc, deadline: Date.now() + timeoutMs };
      this.confs.push(pc);
      this.local(() => {
        try {
          this.rn.proposeConfChange(cc);
        } catch (e) {
          this.confs.splice(this.confs.indexOf(pc), 1);
          reject(e instanceof ProposalDroppedError ? noLeaderError(this) : (e as Error));
        }
      });
    });
  }

  transferLeadership(to: number): void {
    this.local(() => this.rn.transferLeader(to));
  }

  status(): Status {
    return this.rn.status();
  }

  get leader(): number {
    return this.lead;
  }

  get isLeader(): boolean {
    return this.role === StateRole.Leader;
  }

  /** Whether this node is the only voter (a one-manager cluster). */
  private loneVoter(): boolean {
    const v = this.rn.status().confState.voters;
    return v.length === 1 && v[0] === this.id;
  }

  /** Milliseconds this node has been without a known leader (0 when it has one). */
  leaderlessMs(): number {
    return this.lead === 0 ? Date.now() - this.noLeaderSince : 0;
  }

  // ---- the Ready loop ----

  private schedule(): void {
    if (this.scheduled || this.busy || this.closed) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.run();
    });
  }

  /** Feed queued inputs to the core. Only called while no Ready is outstanding. */
  private feed(): void {
    for (; this.queuedTicks > 0; this.queuedTicks--) this.rn.tick();
    const ops = this.localOps;
    this.localOps = [];
    for (const op of ops) op();
    const msgs = this.queued;
    this.queued = [];
    for (const m of msgs) {
      try {
        this.rn.step(m);
      } catch (e) {
        log.warn('dropped raft message', { type: MessageType[m.type], from: m.from, err: e });
      }
    }
    if (this.proposeQueue.length > 0) {
      const q = this.proposeQueue;
      this.proposeQueue = [];
      for (const p of q) this.submit(p);
    }
    if (this.readWaiters.length > 0) {
      const waiters = this.readWaiters;
      this.readWaiters = [];
      const ctx = `${this.nonce}.${++this.readCtx}`;
      try {
        this.rn.readIndex(Buffer.from(ctx));
        this.reads.set(ctx, waiters);
      } catch (e) {
        if (!(e instanceof ProposalDroppedError)) throw e;
        // No leader now: try again on a later tick (the deadline bounds the wait).
        this.readWaiters.push(...waiters);
      }
    }
  }

  private submit(p: Pending): void {
    try {
      this.rn.propose(p.data);
    } catch (e) {
      if (!(e instanceof ProposalDroppedError)) throw e;
      // No leader known or the uncommitted cap is hit: retried by checkDeadlines.
    }
  }

  private async run(): Promise<void> {
    if (this.busy || this.closed) return;
    this.busy = true;
    try {
      for (let i = 0; i < 64 && !this.closed; i++) {
        this.feed();
        if (!this.rn.hasReady()) break;
        await this.handleReady(this.rn.ready());
      }
    } catch (e) {
      // A storage failure: the node can no longer promise durability. Stop rather than lie.
      log.error('raft ready loop failed; closing the raft node', { err: e });
      this.failAll(
        new MeshError('EINTERNAL', `raft node ${this.id}: storage failed: ${String(e)}`),
      );
      this.closed = true;
      if (this.ticker) clearInterval(this.ticker);
    } finally {
      this.busy = false;
    }
    if (
      !this.closed &&
      (this.queued.length > 0 ||
        this.queuedTicks > 0 ||
        this.localOps.length > 0 ||
        this.proposeQueue.length > 0 ||
        this.readWaiters.length > 0 ||
        this.rn.hasReady())
    )
      this.schedule();
  }

  private async handleReady(rd: Ready): Promise<void> {
    this.counters.readies++;
    if (rd.softState) this.onSoftState(rd.softState.lead, rd.softState.role);
    if (rd.messages.length > 0) this.send(rd.messages);
    if (rd.snapshot !== undefined && rd.snapshot.metadata.index > this.applied) {
      // Persist first: a restored state machine must never be ahead of the durable log.
      await this.storage.save(rd);
      this.restoreSnapshot(rd.snapshot);
    } else {
      // Committed entries are durable on a quorum already: apply them (and answer their
      // clients) while this Ready's new entries are being written, as etcd does, instead of
      // making every acknowledgement wait for the next fsync.
      this.applyEntries(rd.committedEntries);
      if (rd.entries.length > 0 || rd.hardState !== undefined || rd.snapshot) {
        if (rd.mustSync) this.counters.fsyncs++;
        await this.storage.save(rd);
      }
    }
    if (rd.persistedMessages.length > 0) this.send(rd.persistedMessages);
    for (const rs of rd.readStates) {
      const ctx = Buffer.from(rs.requestCtx).toString();
      const waiters = this.reads.get(ctx);
      if (waiters === undefined) continue;
      this.reads.delete(ctx);
      this.readsAwaitingApply.push({ index: rs.index, waiters });
    }
    this.applyEntries(rd.committedEntries);
    this.rn.advance(rd);
    this.releaseReads();
    await this.maybeSnapshot();
  }

  /** Messages the core addresses to this node (e.g. a read answered while it just became
   * leader) are stepped locally; the transport refuses self-addressed frames. */
  private send(msgs: Message[]): void {
    let remote = msgs;
    if (msgs.some((m) => m.to === this.id)) {
      remote = msgs.filter((m) => m.to !== this.id);
      for (const m of msgs) if (m.to === this.id) this.queued.push(m);
    }
    if (remote.length > 0) this.transport.send(remote);
  }

  private onSoftState(lead: number, role: StateRole): void {
    const changed = lead !== this.lead;
    this.role = role;
    if (changed) {
      this.counters.leaderChanges++;
      log.info('leader changed', { from: this.lead, to: lead, role: StateRole[role] });
      this.lead = lead;
      if (lead === 0) this.noLeaderSince = Date.now();
      if (role === StateRole.Leader) this.leaderSince = Date.now();
      // Forwarded proposals and reads may have died with the old leader: resend now rather
      // than at the retry deadline (duplicates are dropped by the state machine).
      if (lead !== 0) this.resubmitAll();
    }
    this.sm.onLeaderChange?.(lead, role);
  }

  private resubmitAll(): void {
    for (const p of this.pending.values()) {
      this.counters.retries++;
      p.proposedAt = Date.now();
      this.proposeQueue.push(p);
    }
    for (const [ctx, waiters] of this.reads) {
      this.reads.delete(ctx);
      this.readWaiters.push(...waiters);
    }
  }

  private applyEntries(ents: Entry[]): void {
    for (const e of ents) {
      if (e.index <= this.applied) continue;
      if (e.type === EntryType.ConfChange) {
        this.applyConf(e);
      } else if (e.data.length > 0) {
        const p = decodeEntry(e.data);
        let result: unknown;
        try {
          result = this.sm.apply(e.index, e.data);
        } catch (err) {
          // The state machine must not throw on committed input; if it does, that is a bug
          // every replica hits the same way. Keep going rather than wedge the log.
          log.error('state machine apply threw', { index: e.index, err });
          result = { ok: false, error: { code: 'EINTERNAL', message: String(err) } };
        }
        if (p !== null) {
          const key = `${p.client}/${p.seq}`;
          const w = this.pending.get(key);
          if (w !== undefined) {
            this.pending.delete(key);
            w.lane.busy = false;
            w.resolve(result);
          }
        }
      }
      this.applied = e.index;
      this.counters.applied++;
    }
  }

  private applyConf(e: Entry): void {
    let cc: ConfChange;
    try {
      cc = decodeConfChange(e.data);
    } catch (err) {
      log.error('undecodable conf change entry', { index: e.index, err });
      return;
    }
    const cs = this.rn.applyConfChange(cc);
    log.info('membership changed', {
      index: e.index,
      change: ConfChangeType[cc.type],
      node: cc.nodeId,
      voters: cs.voters.join(','),
      learners: cs.learners.join(','),
    });
    this.sm.onConfChange?.(cc, cs, e.index);
    const i = this.confs.findIndex((c) => c.cc.type === cc.type && c.cc.nodeId === cc.nodeId);
    if (i >= 0) {
      const [c] = this.confs.splice(i, 1);
      c!.resolve(cs);
    }
  }

  private releaseReads(): void {
    if (this.readsAwaitingApply.length === 0) return;
    const keep: typeof this.readsAwaitingApply = [];
    for (const r of this.readsAwaitingApply) {
      if (r.index <= this.applied) for (const w of r.waiters) w.resolve();
      else keep.push(r);
    }
    this.readsAwaitingApply = keep;
  }

  private restoreSnapshot(s: Snapshot): void {
    this.sm.restore(s.data, s.metadata.index);
    this.applied = s.metadata.index;
    this.snapIndex = s.metadata.index;
    log.info('restored snapshot from leader', { index: s.metadata.index, bytes: s.data.length });
  }

  private async maybeSnapshot(): Promise<void> {
    if (this.applied - this.snapIndex < this.snapshotEvery) return;
    const index = this.applied;
    const cs = this.rn.status().confState;
    await this.storage.createSnapshot(index, cs, this.sm.snapshot());
    this.snapIndex = index;
    this.counters.snapshots++;
    const compactTo = index - this.snapshotKeep;
    if (compactTo > this.storage.firstIndex()) await this.storage.compact(compactTo);
  }

  // ---- timers ----

  private checkDeadlines(): void {
    const now = Date.now();
    for (const [key, p] of this.pending) {
      if (now >= p.deadline) {
        this.pending.delete(key);
        p.lane.busy = false;
        p.reject(this.lead === 0 ? noLeaderError(this) : timeoutError(this));
      } else if (now - p.proposedAt >= this.retryMs) {
        this.counters.retries++;
        p.proposedAt = now;
        this.proposeQueue.push(p);
      }
    }
    const expire = (list: { deadline: number; reject(e: unknown): void }[]): typeof list =>
      list.filter((w) => {
        if (now < w.deadline) return true;
        w.reject(this.lead === 0 ? noLeaderError(this) : timeoutError(this));
        return false;
      });
    this.readWaiters = expire(this.readWaiters) as PendingRead[];
    for (const [ctx, ws] of this.reads) {
      const left = expire(ws) as PendingRead[];
      if (left.length === 0) this.reads.delete(ctx);
      else this.reads.set(ctx, left);
    }
    for (const r of this.readsAwaitingApply) r.waiters = expire(r.waiters) as PendingRead[];
    for (let i = this.confs.length - 1; i >= 0; i--) {
      const c = this.confs[i]!;
      if (now >= c.deadline) {
        this.confs.splice(i, 1);
        c.reject(this.lead === 0 ? noLeaderError(this) : timeoutError(this));
      }
    }
    this.checkDiskStall();
  }

  /**
   * A leader whose disk write is stuck cannot commit anything. It also stops heartbeating: ticks
   * are only fed to the core between Readies, so a write that hangs silences the leader and the
   * followers elect another within an election timeout (with CheckQuorum the old one steps down
   * when it wakes). Here we only make the stall visible.
   */
  private checkDiskStall(): void {
    const stall = this.storage.stallMs();
    if (stall < this.diskStallMs) {
      this.stalled = false;
      return;
    }
    if (this.stalled) return;
    this.stalled = true;
    if (this.role === StateRole.Leader) this.counters.diskStallStepDowns++;
    log.error('disk write stalled: this manager is silent until it completes', {
      stallMs: stall,
      role: StateRole[this.role],
    });
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    for (const ws of this.reads.values()) for (const w of ws) w.reject(err);
    this.reads.clear();
    for (const w of this.readWaiters) w.reject(err);
    this.readWaiters = [];
    for (const r of this.readsAwaitingApply) for (const w of r.waiters) w.reject(err);
    this.readsAwaitingApply = [];
    for (const c of this.confs) c.reject(err);
    this.confs.length = 0;
  }

  leaderForMs(): number {
    return this.role === StateRole.Leader ? Date.now() - this.leaderSince : 0;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.ticker) clearInterval(this.ticker);
    this.failAll(closedError());
    // Let an in-flight write finish before closing the files under it.
    for (let i = 0; i < 200 && this.busy; i++) await new Promise((r) => setTimeout(r, 10));
    await this.storage.close();
  }
}

function closedError(): MeshError {
  return new MeshError(
    'EUNAVAILABLE',
    'raft: this manager is shutting down; retry on another manager',
  );
}

function noLeaderError(n: RaftNode): MeshError {
  const st = n.status();
  const voters = st.confState.voters.length;
  const quorum = Math.floor(voters / 2) + 1;
  return new MeshError(
    'ENOQUORUM',
    `the cluster has no leader (for ${Math.round(n.leaderlessMs() / 100) / 10} s; ${voters} managers, ` +
      `a quorum needs ${quorum}): bring the other managers back, or if they are lost for good, ` +
      'restart one surviving manager with `meshd --force-new-cluster`',
  );
}

function timeoutError(n: RaftNode): MeshError {
  return new MeshError(
    'ETIMEDOUT',
    `the request was not committed in time (leader ${n.leader}); it may still take effect: ` +
      'check the state before retrying',
  );
}
