/**
 * The raft state machine: roles, terms and votes, election (with PreVote and CheckQuorum),
 * replication flow control, commitment, snapshots, ReadIndex, membership and leadership
 * transfer. It only reacts to step()/tick() and queues what it wants done; RawNode turns that
 * into Ready. No clock, no timers, no randomness of its own, no I/O.
 *
 * Facts from the Raft paper (Ongaro & Ousterhout 2014, "the paper") and Ongaro's thesis (2014);
 * structure after etcd-io/raft. May import the other src/raft core modules and src/util/errors.ts.
 */

import { invariant } from '../util/errors.js';
import type { RaftConfig } from './config.js';
import { decodeConfChange, nextConfState } from './confchange.js';
import {
  CompactedError,
  ConfChangeRejectedError,
  ProposalDroppedError,
  SnapshotTemporarilyUnavailableError,
} from './errors.js';
import { RaftLog } from './log.js';
import { ProgressState, ProgressTracker } from './progress.js';
import type { RaftRandom } from './random.js';
import { entrySize, type Storage } from './storage.js';
import {
  ConfChangeType,
  EntryType,
  MessageType,
  NONE,
  StateRole,
  type ConfChange,
  type ConfState,
  type Entry,
  type Message,
  type ReadState,
  type Snapshot,
} from './types.js';

/** Vote context marking an election forced by leadership transfer: voters skip the lease check. */
export const CAMPAIGN_TRANSFER = new TextEncoder().encode('CampaignTransfer');

type CampaignType = 'pre' | 'election' | 'transfer';

/** Fill in the fields a message does not use. */
export function msg(m: Partial<Message> & Pick<Message, 'type'>): Message {
  return {
    from: NONE,
    to: NONE,
    term: 0,
    logTerm: 0,
    index: 0,
    entries: [],
    commit: 0,
    reject: false,
    rejectHint: 0,
    ...m,
  };
}

export function isLocalMessage(t: MessageType): boolean {
  return (
    t === MessageType.Hup ||
    t === MessageType.Beat ||
    t === MessageType.Unreachable ||
    t === MessageType.SnapStatus ||
    t === MessageType.CheckQuorum
  );
}

/** Messages that promise durable state: sent only after the Ready's write (paper Figure 2). */
function needsPersist(t: MessageType): boolean {
  return t === MessageType.AppResp || t === MessageType.Vote || t === MessageType.VoteResp;
}

function voteRespType(t: MessageType): MessageType {
  if (t === MessageType.Vote) return MessageType.VoteResp;
  if (t === MessageType.PreVote) return MessageType.PreVoteResp;
  throw new Error(`invariant violated: no vote response for ${MessageType[t]}`);
}

function bytesKey(b: Uint8Array | undefined): string {
  if (b === undefined) return '';
  let s = '';
  for (const x of b) s += (x < 16 ? '0' : '') + x.toString(16);
  return s;
}

interface ReadIndexStatus {
  req: Message;
  index: number;
  acks: Set<number>;
}

export class Raft {
  readonly id: number;
  term = 0;
  vote = NONE;
  lead = NONE;
  role = StateRole.Follower;
  readonly log: RaftLog;
  readonly prs: ProgressTracker;

  /** Outgoing messages, split by whether they must wait for the durable write. */
  msgs: Message[] = [];
  msgsAfterPersist: Message[] = [];
  readStates: ReadState[] = [];

  private electionElapsed = 0;
  private heartbeatElapsed = 0;
  private randomizedElectionTimeout = 0;
  leadTransferee = NONE;
  /** Index of the last conf change proposed; a new one waits until it is applied. */
  pendingConfIndex = 0;
  /** Bytes of entry data proposed in this term and not yet committed+applied. */
  uncommittedSize = 0;
  private pendingReads = new Map<string, ReadIndexStatus>();
  private readQueue: string[] = [];
  /** Reads that arrived before this leader committed an entry of its term (thesis §6.4). */
  private pendingReadIndexMessages: Message[] = [];

  constructor(
    readonly cfg: RaftConfig,
    storage: Storage,
    private readonly rand: RaftRandom,
  ) {
    this.id = cfg.id;
    this.log = new RaftLog(storage, cfg.maxCommittedSizePerReady);
    const { hardState, confState } = storage.initialState();
    this.prs = new ProgressTracker(cfg.maxInflightMsgs, cfg.maxInflightBytes);
    this.prs.applyConfState(confState, this.log.lastIndex() + 1);
    if (hardState.term !== 0 || hardState.vote !== NONE || hardState.commit !== 0) {
      invariant(
        hardState.commit <= this.log.lastIndex(),
        `hard state commit ${hardState.commit} beyond last index ${this.log.lastIndex()}`,
      );
      // A snapshot holds only committed state, so its index is committed even when a crash
      // lost the hard state written after it.
      this.log.committed = Math.max(hardState.commit, this.log.committed);
      this.term = hardState.term;
      this.vote = hardState.vote;
    }
    if (cfg.applied > 0) this.log.appliedTo(Math.min(cfg.applied, this.log.committed));
    this.becomeFollower(this.term, NONE);
  }

  // ---- role transitions ------------------------------------------------------------------

  private reset(term: number): void {
    if (this.term !== term) {
      this.term = term;
      this.vote = NONE;
    }
    this.lead = NONE;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.randomizedElectionTimeout = this.cfg.electionTick + this.rand.intn(this.cfg.electionTick);
    this.leadTransferee = NONE;
    this.prs.votes.clear();
    const last = this.log.lastIndex();
    for (const [id, pr] of this.prs.progress) {
      pr.becomeProbe();
      pr.match = id === this.id ? this.log.stableLastIndex() : 0;
      pr.next = last + 1;
      pr.recentActive = id === this.id;
    }
    this.pendingConfIndex = 0;
    this.uncommittedSize = 0;
    this.pendingReads.clear();
    this.readQueue = [];
    this.pendingReadIndexMessages = [];
  }

  becomeFollower(term: number, lead: number): void {
    this.reset(term);
    this.lead = lead;
    this.role = StateRole.Follower;
  }

  private becomePreCandidate(): void {
    invariant(this.role !== StateRole.Leader, 'leader cannot become pre-candidate');
    // A pre-election changes neither term nor vote (thesis §9.6).
    this.prs.votes.clear();
    this.lead = NONE;
    this.role = StateRole.PreCandidate;
  }

  private becomeCandidate(): void {
    invariant(this.role !== StateRole.Leader, 'leader cannot become candidate');
    this.reset(this.term + 1);
    this.vote = this.id;
    this.role = StateRole.Candidate;
  }

  private becomeLeader(): void {
    invariant(this.role === StateRole.Candidate, 'only a candidate becomes leader');
    this.reset(this.term);
    this.lead = this.id;
    this.role = StateRole.Leader;
    const self = this.prs.progress.get(this.id);
    invariant(self !== undefined, 'leader has no progress for itself');
    self.becomeReplicate();
    self.match = this.log.stableLastIndex();
    // The no-op (paper §5.4.2, thesis §6.4): commits the entries of earlier terms and lets
    // ReadIndex start serving.
    const ok = this.appendEntries([
      { term: 0, index: 0, type: EntryType.Normal, data: new Uint8Array(0) },
    ]);
    invariant(ok, 'empty no-op entry dropped');
    // No conf change until the no-op is applied: the one-at-a-time rule is only safe once the
    // leader has committed an entry of its own term (Ongaro, raft-dev errata, 2015).
    this.pendingConfIndex = this.log.lastIndex();
  }

  // ---- ticks -------------------------------------------------------------------------------

  tick(): void {
    if (this.role === StateRole.Leader) this.tickHeartbeat();
    else this.tickElection();
  }

  private promotable(): boolean {
    return this.prs.voters.has(this.id) && this.log.unstable.snapshot === undefined;
  }

  private tickElection(): void {
    this.electionElapsed++;
    if (this.promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.step(msg({ type: MessageType.Hup, from: this.id }));
    }
  }

  private tickHeartbeat(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.cfg.electionTick) {
      this.electionElapsed = 0;
      if (this.cfg.checkQuorum) this.step(msg({ type: MessageType.CheckQuorum, from: this.id }));
      // A transfer that did not finish within an election timeout is abandoned (thesis §3.10).
      if (this.role === StateRole.Leader && this.leadTransferee !== NONE)
        this.leadTransferee = NONE;
    }
    if (this.role !== StateRole.Leader) return;
    if (this.heartbeatElapsed >= this.cfg.heartbeatTick) {
      this.heartbeatElapsed = 0;
      this.step(msg({ type: MessageType.Beat, from: this.id }));
    }
  }

  // ---- sending -----------------------------------------------------------------------------

  private send(m: Message): void {
    // Forwarded requests keep their origin (a TransferLeader's `from` is the transferee).
    if (m.from === NONE) m.from = this.id;
    if (
      m.type === MessageType.Vote ||
      m.type === MessageType.VoteResp ||
      m.type === MessageType.PreVote ||
      m.type === MessageType.PreVoteResp
    ) {
      invariant(m.term !== 0, `${MessageType[m.type]} without a term`);
    } else if (m.type === MessageType.Prop || m.type === MessageType.ReadIndex) {
      // Forwarded requests are not bound to a term: the leader handles them in its own.
      m.term = 0;
    } else {
      m.term = this.term;
    }
    if (needsPersist(m.type)) this.msgsAfterPersist.push(m);
    else this.msgs.push(m);
  }

  /** Send an append (or a snapshot) if flow control allows; true if something was sent. */
  private maybeSendAppend(to: number, sendIfEmpty: boolean): boolean {
    const pr = this.prs.progress.get(to);
    if (pr === undefined || pr.isPaused()) return false;
    const prevIndex = pr.next - 1;
    const prevTerm = this.log.maybeTerm(prevIndex);
    let ents: Entry[] | undefined;
    if (prevTerm !== undefined) {
      try {
        ents = this.log.entries(pr.next, this.cfg.maxSizePerMsg);
      } catch (e) {
        if (!(e instanceof CompactedError)) throw e;
      }
    }
    invariant(prevIndex <= this.log.lastIndex(), `next ${pr.next} of node ${to} beyond last`);
    if (prevTerm === undefined || ents === undefined) {
      // The follower needs entries we compacted away: send the snapshot instead (§7).
      if (!pr.recentActive) return false;
      let snap: Snapshot;
      try {
        snap = this.log.snapshot();
      } catch (e) {
        if (e instanceof SnapshotTemporarilyUnavailableError) return false;
        throw e;
      }
      invariant(snap.metadata.index !== 0, 'need a snapshot but none exists');
      pr.becomeSnapshot(snap.metadata.index);
      this.send(msg({ type: MessageType.Snap, to, snapshot: snap }));
      return true;
    }
    if (ents.length === 0 && !sendIfEmpty) return false;
    this.send(
      msg({
        type: MessageType.App,
        to,
        index: prevIndex,
        logTerm: prevTerm,
        entries: ents,
        commit: this.log.committed,
      }),
    );
    if (ents.length > 0) {
      if (pr.state === ProgressState.Replicate) {
        const last = ents[ents.length - 1]!.index;
        pr.optimisticUpdate(last);
        let bytes = 0;
        for (const e of ents) bytes += entrySize(e);
        pr.inflights.add(last, bytes);
      } else if (pr.state === ProgressState.Probe) {
        pr.probeSent = true;
      }
    }
    return true;
  }

  private sendAppend(to: number): void {
    this.maybeSendAppend(to, true);
  }

  private bcastAppend(): void {
    for (const id of this.prs.progress.keys()) if (id !== this.id) this.sendAppend(id);
  }

  private bcastHeartbeat(ctx?: Uint8Array): void {
    for (const [id, pr] of this.prs.progress) {
      if (id === this.id) continue;
      // Never tell a follower to commit beyond what it is known to hold.
      const commit = Math.min(pr.match, this.log.committed);
      const m = msg({ type: MessageType.Heartbeat, to: id, commit });
      if (ctx !== undefined) m.context = ctx;
      this.send(m);
    }
  }

  private sendTimeoutNow(to: number): void {
    this.send(msg({ type: MessageType.TimeoutNow, to }));
  }

  // ---- proposals ---------------------------------------------------------------------------

  /** Append entries as leader; false if the uncommitted-size cap refuses them. */
  private appendEntries(es: Entry[]): boolean {
    let size = 0;
    for (const e of es) size += e.data.length;
    const max = this.cfg.maxUncommittedEntriesSize;
    if (max > 0 && size > 0 && this.uncommittedSize > 0 && this.uncommittedSize + size > max) {
      return false;
    }
    this.uncommittedSize += size;
    let li = this.log.lastIndex();
    // Fresh objects: a proposal message may be delivered twice and must not be aliased.
    this.log.append(es.map((e) => ({ term: this.term, index: ++li, type: e.type, data: e.data })));
    // The leader's own match advances only when the driver reports the write (advance()), so
    // an entry never counts as replicated on a disk that has not got it.
    return true;
  }

  /** Called by RawNode.advance after the driver made the log durable up to stableLastIndex. */
  onPersisted(): void {
    if (this.role !== StateRole.Leader) return;
    const self = this.prs.progress.get(this.id);
    if (self !== undefined && self.maybeUpdate(this.log.stableLastIndex()) && this.maybeCommit()) {
      this.bcastAppend();
    }
  }

  /** Called by RawNode.advance after entries were applied: they no longer count as uncommitted. */
  onApplied(ents: Entry[]): void {
    if (this.role !== StateRole.Leader || ents.length === 0) return;
    let size = 0;
    for (const e of ents) size += e.data.length;
    this.uncommittedSize = Math.max(0, this.uncommittedSize - size);
  }

  private maybeCommit(): boolean {
    const before = this.log.committed;
    const ok = this.log.maybeCommit(this.prs.committed(), this.term);
    if (ok && this.log.zeroTerm(before) !== this.term) this.releasePendingReadIndexMessages();
    return ok;
  }

  // ---- step --------------------------------------------------------------------------------

  /** Process one message. Throws ProposalDroppedError for a local proposal it refuses. */
  step(m: Message): void {
    if (m.term === 0) {
      // local message or forwarded request
    } else if (m.term > this.term) {
      if (m.type === MessageType.Vote || m.type === MessageType.PreVote) {
        const force = bytesKey(m.context) === bytesKey(CAMPAIGN_TRANSFER);
        const inLease =
          this.cfg.checkQuorum &&
          this.lead !== NONE &&
          this.electionElapsed < this.cfg.electionTick;
        // Leader lease (thesis §4.2.3): while we hear from a leader, ignore candidates, so a
        // node that was partitioned away cannot depose it.
        if (!force && inLease) return;
      }
      if (m.type === MessageType.PreVote) {
        // A pre-vote never changes our term.
      } else if (m.type === MessageType.PreVoteResp && !m.reject) {
        // Our pre-candidacy succeeded at m.term; the term rises only when we campaign for real.
      } else if (
        m.type === MessageType.App ||
        m.type === MessageType.Heartbeat ||
        m.type === MessageType.Snap
      ) {
        this.becomeFollower(m.term, m.from);
      } else {
        this.becomeFollower(m.term, NONE);
      }
    } else if (m.term < this.term) {
      if (
        (this.cfg.checkQuorum || this.cfg.preVote) &&
        (m.type === MessageType.Heartbeat || m.type === MessageType.App)
      ) {
        // A stale leader (partitioned away) learns our higher term and steps down; without
        // this, with PreVote/CheckQuorum nobody would ever raise its term (thesis §9.6).
        this.send(msg({ type: MessageType.AppResp, to: m.from }));
      } else if (m.type === MessageType.PreVote) {
        this.send(
          msg({ type: MessageType.PreVoteResp, to: m.from, term: this.term, reject: true }),
        );
      }
      return;
    }

    switch (m.type) {
      case MessageType.Hup:
        if (this.role === StateRole.Leader) return;
        if (!this.promotable() || this.hasUnappliedConfChanges()) return;
        if (bytesKey(m.context) === bytesKey(CAMPAIGN_TRANSFER)) this.campaign('transfer');
        else this.campaign(this.cfg.preVote ? 'pre' : 'election');
        return;
      case MessageType.Vote:
      case MessageType.PreVote: {
        const canVote =
          this.vote === m.from ||
          (this.vote === NONE && this.lead === NONE) ||
          (m.type === MessageType.PreVote && m.term > this.term);
        if (canVote && this.log.isUpToDate(m.index, m.logTerm)) {
          // Grant with the candidate's term, so the answer counts in the election it is for.
          this.send(msg({ type: voteRespType(m.type), to: m.from, term: m.term }));
          if (m.type === MessageType.Vote) {
            this.electionElapsed = 0;
            this.vote = m.from;
          }
        } else if (this.term > 0) {
          // A node still at term 0 (a new member that has heard from nobody) has no term to
          // reject with; the candidate's election simply times out.
          this.send(msg({ type: voteRespType(m.type), to: m.from, term: this.term, reject: true }));
        }
        return;
      }
      default:
        break;
    }
    switch (this.role) {
      case StateRole.Leader:
        this.stepLeader(m);
        break;
      case StateRole.Candidate:
      case StateRole.PreCandidate:
        this.stepCandidate(m);
        break;
      case StateRole.Follower:
        this.stepFollower(m);
        break;
    }
  }

  private hasUnappliedConfChanges(): boolean {
    if (this.log.applied >= this.log.committed) return false;
    // Bounded: at most the committed-but-unapplied window, which the driver drains every Ready.
    let lo = this.log.applied + 1;
    const hi = this.log.committed + 1;
    while (lo < hi) {
      let ents: Entry[];
      try {
        ents = this.log.slice(lo, hi, this.cfg.maxCommittedSizePerReady);
      } catch (e) {
        if (e instanceof CompactedError) return false;
        throw e;
      }
      for (const e of ents) if (e.type === EntryType.ConfChange) return true;
      lo += ents.length;
    }
    return false;
  }

  campaign(t: CampaignType): void {
    let voteMsg: MessageType;
    let term: number;
    if (t === 'pre') {
      this.becomePreCandidate();
      voteMsg = MessageType.PreVote;
      term = this.term + 1;
    } else {
      this.becomeCandidate();
      voteMsg = MessageType.Vote;
      term = this.term;
    }
    this.prs.recordVote(this.id, true);
    if (this.prs.voteResult() === 'won') {
      if (t === 'pre') this.campaign('election');
      else this.becomeLeader();
      return;
    }
    for (const id of this.prs.voters) {
      if (id === this.id) continue;
      const m = msg({
        type: voteMsg,
        to: id,
        term,
        index: this.log.lastIndex(),
        logTerm: this.log.lastTerm(),
      });
      if (t === 'transfer') m.context = CAMPAIGN_TRANSFER;
      this.send(m);
    }
  }

  private stepLeader(m: Message): void {
    switch (m.type) {
      case MessageType.Beat:
        this.bcastHeartbeat();
        return;
      case MessageType.CheckQuorum:
        if (!this.prs.quorumActive(this.id)) {
          this.becomeFollower(this.term, NONE);
          return;
        }
        for (const [id, pr] of this.prs.progress) pr.recentActive = id === this.id;
        return;
      case MessageType.Prop:
        this.leaderPropose(m);
        return;
      case MessageType.ReadIndex:
        if (this.prs.isSingleton()) {
          this.respondRead(m, this.log.committed);
          return;
        }
        if (this.log.zeroTerm(this.log.committed) !== this.term) {
          this.pendingReadIndexMessages.push(m);
          return;
        }
        this.startRead(m);
        return;
      default:
        break;
    }
    const pr = this.prs.progress.get(m.from);
    if (pr === undefined) return;
    switch (m.type) {
      case MessageType.AppResp: {
        pr.recentActive = true;
        if (m.reject) {
          let next = m.rejectHint;
          if (m.logTerm > 0) next = this.log.findConflictByTerm(m.rejectHint, m.logTerm);
          if (pr.maybeDecrTo(m.index, next)) {
            if (pr.state === ProgressState.Replicate) pr.becomeProbe();
            this.sendAppend(m.from);
          }
          return;
        }
        const oldPaused = pr.isPaused();
        if (pr.maybeUpdate(m.index) || (pr.match === m.index && pr.state === ProgressState.Probe)) {
          if (pr.state === ProgressState.Probe) pr.becomeReplicate();
          else if (
            pr.state === ProgressState.Snapshot &&
            (pr.match >= pr.pendingSnapshot || pr.match + 1 >= this.log.firstIndex())
          )
            // Caught up by the snapshot, or (e.g. it already had the entries) reachable again
            // from the log: no need to wait for the transport's report.
            pr.becomeProbe();
          else if (pr.state === ProgressState.Replicate) pr.inflights.freeLE(m.index);
          if (this.maybeCommit()) this.bcastAppend();
          else if (oldPaused) this.sendAppend(m.from);
          // Pipeline: keep sending while the window has room (bounded by entries and window).
          for (let i = 0; i < this.cfg.maxInflightMsgs && this.maybeSendAppend(m.from, false); i++);
          if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) {
            this.sendTimeoutNow(m.from);
          }
        }
        return;
      }
      case MessageType.HeartbeatResp: {
        pr.recentActive = true;
        pr.probeSent = false;
        // All appends in the window may have been lost; free one slot so a probe goes out.
        if (pr.state === ProgressState.Replicate && pr.inflights.full())
          pr.inflights.freeFirstOne();
        if (pr.match < this.log.lastIndex()) this.sendAppend(m.from);
        if (m.context !== undefined && m.context.length > 0) this.ackRead(m.from, m.context);
        return;
      }
      case MessageType.SnapStatus:
        if (pr.state !== ProgressState.Snapshot) return;
        // Success or failure, wait for the follower's answer (or the next heartbeat) before
        // sending more.
        if (m.reject) pr.pendingSnapshot = 0;
        pr.becomeProbe();
        pr.probeSent = true;
        return;
      case MessageType.Unreachable:
        if (pr.state === ProgressState.Replicate) pr.becomeProbe();
        return;
      case MessageType.TransferLeader: {
        if (pr.isLearner) return;
        const target = m.from;
        if (this.leadTransferee !== NONE) {
          if (this.leadTransferee === target) return;
          this.leadTransferee = NONE;
        }
        if (target === this.id) return;
        // The transfer must finish within one election timeout (thesis §3.10).
        this.electionElapsed = 0;
        this.leadTransferee = target;
        if (pr.match === this.log.lastIndex()) this.sendTimeoutNow(target);
        else this.sendAppend(target);
        return;
      }
      default:
        return;
    }
  }

  private leaderPropose(m: Message): void {
    invariant(m.entries.length > 0, 'proposal without entries');
    if (!this.prs.progress.has(this.id))
      throw new ProposalDroppedError('this node was removed from the cluster');
    if (this.leadTransferee !== NONE)
      throw new ProposalDroppedError(
        `leadership transfer to node ${this.leadTransferee} in progress; retry at the new leader`,
      );
    let ccIndex = 0;
    for (let i = 0; i < m.entries.length; i++) {
      const e = m.entries[i]!;
      if (e.type !== EntryType.ConfChange) continue;
      if (this.pendingConfIndex > this.log.applied || ccIndex !== 0)
        throw new ProposalDroppedError('a membership change is already in progress; retry later');
      const cc = decodeConfChange(e.data);
      const next = nextConfState(this.prs.confState(), cc);
      if (next instanceof ConfChangeRejectedError) throw next;
      if (cc.type === ConfChangeType.PromoteLearner) {
        // A voter that cannot yet ack would count against the quorum at once (thesis §4.2.1):
        // promote only a learner that holds everything committed.
        const pr = this.prs.progress.get(cc.nodeId);
        const match = pr?.match ?? 0;
        if (match < this.log.committed)
          throw new ConfChangeRejectedError(
            `learner ${cc.nodeId} has not caught up (match ${match} < commit ${this.log.committed}); retry once it has`,
          );
      }
      ccIndex = this.log.lastIndex() + i + 1;
    }
    if (!this.appendEntries(m.entries))
      throw new ProposalDroppedError('too many uncommitted bytes; retry after the backlog commits');
    if (ccIndex !== 0) this.pendingConfIndex = ccIndex;
    this.bcastAppend();
  }

  private stepCandidate(m: Message): void {
    const myResp =
      this.role === StateRole.PreCandidate ? MessageType.PreVoteResp : MessageType.VoteResp;
    switch (m.type) {
      case MessageType.Prop:
        throw new ProposalDroppedError('no leader (election in progress); retry shortly');
      case MessageType.App:
        this.becomeFollower(m.term, m.from);
        this.handleAppendEntries(m);
        return;
      case MessageType.Heartbeat:
        this.becomeFollower(m.term, m.from);
        this.handleHeartbeat(m);
        return;
      case MessageType.Snap:
        this.becomeFollower(m.term, m.from);
        this.handleSnapshot(m);
        return;
      case MessageType.ReadIndex:
        throw new ProposalDroppedError('no leader to serve a read index; retry shortly');
      default:
        break;
    }
    if (m.type !== myResp) return;
    this.prs.recordVote(m.from, !m.reject);
    const res = this.prs.voteResult();
    if (res === 'won') {
      if (this.role === StateRole.PreCandidate) {
        this.campaign('election');
      } else {
        this.becomeLeader();
        this.bcastAppend();
      }
    } else if (res === 'lost') {
      // m.term is our term (or the pre-vote term): stay where we are, as a follower.
      this.becomeFollower(this.term, NONE);
    }
  }

  private stepFollower(m: Message): void {
    switch (m.type) {
      case MessageType.Prop:
        if (this.lead === NONE) throw new ProposalDroppedError('no leader known; retry shortly');
        if (this.cfg.disableProposalForwarding)
          throw new ProposalDroppedError(`not the leader; propose at node ${this.lead}`);
        m.to = this.lead;
        this.send(m);
        return;
      case MessageType.App:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleAppendEntries(m);
        return;
      case MessageType.Heartbeat:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleHeartbeat(m);
        return;
      case MessageType.Snap:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleSnapshot(m);
        return;
      case MessageType.TransferLeader:
        if (this.lead === NONE) return;
        m.to = this.lead;
        this.send(m);
        return;
      case MessageType.TimeoutNow:
        // Transfers skip the pre-vote: the old leader asked for this election (thesis §3.10).
        if (this.promotable() && !this.hasUnappliedConfChanges()) this.campaign('transfer');
        return;
      case MessageType.ReadIndex:
        if (this.lead === NONE) throw new ProposalDroppedError('no leader to serve a read index');
        m.to = this.lead;
        this.send(m);
        return;
      case MessageType.ReadIndexResp:
        this.readStates.push({ index: m.index, requestCtx: m.context ?? new Uint8Array(0) });
        return;
      default:
        return;
    }
  }

  // ---- follower handlers -------------------------------------------------------------------

  private handleAppendEntries(m: Message): void {
    if (m.index < this.log.committed) {
      this.send(msg({ type: MessageType.AppResp, to: m.from, index: this.log.committed }));
      return;
    }
    const lastNew = this.log.maybeAppend(m.index, m.logTerm, m.commit, m.entries);
    if (lastNew !== undefined) {
      this.send(msg({ type: MessageType.AppResp, to: m.from, index: lastNew }));
      return;
    }
    // Fast backtracking (thesis §5.3 "optimization"): tell the leader the last index whose
    // term is ≤ the term it probed with, so it skips whole terms at once.
    const hintIndex = this.log.findConflictByTerm(
      Math.min(m.index, this.log.lastIndex()),
      m.logTerm,
    );
    this.send(
      msg({
        type: MessageType.AppResp,
        to: m.from,
        index: m.index,
        reject: true,
        rejectHint: hintIndex,
        logTerm: this.log.zeroTerm(hintIndex),
      }),
    );
  }

  private handleHeartbeat(m: Message): void {
    this.log.commitTo(Math.min(m.commit, this.log.lastIndex()));
    const r = msg({ type: MessageType.HeartbeatResp, to: m.from });
    if (m.context !== undefined) r.context = m.context;
    this.send(r);
  }

  private handleSnapshot(m: Message): void {
    const s = m.snapshot;
    invariant(s !== undefined, 'snapshot message without a snapshot');
    if (this.restore(s)) {
      this.send(msg({ type: MessageType.AppResp, to: m.from, index: this.log.lastIndex() }));
    } else {
      this.send(msg({ type: MessageType.AppResp, to: m.from, index: this.log.committed }));
    }
  }

  /** Install a leader's snapshot; false if it brings nothing new. */
  private restore(s: Snapshot): boolean {
    const { index, term, confState } = s.metadata;
    if (index <= this.log.committed) return false;
    invariant(this.role === StateRole.Follower, 'snapshot restored outside follower state');
    // A snapshot taken before this node was added does not list it; accept it anyway: the
    // entries after it carry the change that adds us (refusing it would starve a new member
    // whose leader has not snapshotted since the change).
    if (this.log.matchTerm(index, term)) {
      // We already hold the snapshot's last entry: the log matches up to it, just commit.
      this.log.commitTo(index);
      return false;
    }
    this.log.restore(s);
    this.prs.progress.clear();
    this.prs.applyConfState(confState, this.log.lastIndex() + 1);
    return true;
  }

  // ---- ReadIndex (thesis §6.4) -------------------------------------------------------------

  private startRead(m: Message): void {
    const ctx = m.entries[0]?.data ?? new Uint8Array(0);
    const key = bytesKey(ctx);
    if (this.pendingReads.has(key)) return;
    this.pendingReads.set(key, { req: m, index: this.log.committed, acks: new Set([this.id]) });
    this.readQueue.push(key);
    this.bcastHeartbeat(ctx);
  }

  private ackRead(from: number, ctx: Uint8Array): void {
    const key = bytesKey(ctx);
    const rs = this.pendingReads.get(key);
    if (rs === undefined) return;
    rs.acks.add(from);
    let n = 0;
    for (const id of rs.acks) if (this.prs.voters.has(id)) n++;
    if (n < this.prs.quorum()) return;
    // A heartbeat round confirming leadership also confirms every earlier pending read.
    const at = this.readQueue.indexOf(key);
    const done = this.readQueue.splice(0, at + 1);
    for (const k of done) {
      const st = this.pendingReads.get(k);
      this.pendingReads.delete(k);
      if (st !== undefined) this.respondRead(st.req, st.index);
    }
  }

  private respondRead(req: Message, index: number): void {
    const ctx = req.entries[0]?.data ?? new Uint8Array(0);
    if (req.from === NONE || req.from === this.id) {
      this.readStates.push({ index, requestCtx: ctx });
    } else {
      this.send(msg({ type: MessageType.ReadIndexResp, to: req.from, index, context: ctx }));
    }
  }

  private releasePendingReadIndexMessages(): void {
    const ms = this.pendingReadIndexMessages;
    this.pendingReadIndexMessages = [];
    for (const m of ms) this.startRead(m);
  }

  // ---- membership --------------------------------------------------------------------------

  /** Apply a committed conf change; returns the resulting membership. */
  applyConfChange(cc: ConfChange): ConfState {
    const next = nextConfState(this.prs.confState(), cc);
    if (next instanceof ConfChangeRejectedError) return this.prs.confState();
    this.prs.applyConfState(next, this.log.lastIndex() + 1);
    if (this.role === StateRole.Leader) {
      if (!next.voters.includes(this.id)) {
        // Removed (or demoted): stop leading; the remaining voters elect a new leader.
        this.becomeFollower(this.term, NONE);
      } else {
        if (this.leadTransferee !== NONE && !this.prs.voters.has(this.leadTransferee))
          this.leadTransferee = NONE;
        if (this.maybeCommit()) this.bcastAppend();
        else
          for (const id of this.prs.progress.keys())
            if (id !== this.id) this.maybeSendAppend(id, false);
      }
    }
    return next;
  }
}
