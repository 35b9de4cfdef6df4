/**
 * RawNode: the raft core's public face. The node changes only through tick(), step() and the
 * request methods; everything it wants done comes out of ready(), and the driver reports the
 * work done with advance(). Driver loop, in order, for each Ready:
 *
 *   1. send `messages` (may overlap with step 2);
 *   2. write `snapshot`, `entries` (truncating any overwritten suffix) and `hardState` durably;
 *   3. send `persistedMessages`;
 *   4. apply `committedEntries` (calling applyConfChange for ConfChange entries);
 *   5. advance(rd).
 *
 * May import the other src/raft core modules and src/util/errors.ts.
 */

import { invariant } from '../util/errors.js';
import { validateConfig, type RaftConfig } from './config.js';
import { encodeConfChange } from './confchange.js';
import { RaftError, StepRejectedError } from './errors.js';
import type { ProgressState } from './progress.js';
import { isLocalMessage, msg, Raft } from './raft.js';
import type { RaftRandom } from './random.js';
import type { Storage } from './storage.js';
import {
  EntryType,
  MessageType,
  StateRole,
  type ConfChange,
  type ConfState,
  type HardState,
  type Message,
  type Ready,
  type SoftState,
} from './types.js';

export interface ProgressStatus {
  match: number;
  next: number;
  state: ProgressState;
  isLearner: boolean;
}

export interface Status {
  id: number;
  term: number;
  vote: number;
  commit: number;
  applied: number;
  lead: number;
  role: StateRole;
  lastIndex: number;
  firstIndex: number;
  leadTransferee: number;
  confState: ConfState;
  /** Leader only: each member's replication progress. */
  progress: Map<number, ProgressStatus>;
}

export class RawNode {
  readonly raft: Raft;
  private prevSoft: SoftState;
  private prevHard: HardState;
  private outstanding: Ready | undefined;

  constructor(config: RaftConfig, storage: Storage, rand: RaftRandom) {
    this.raft = new Raft(validateConfig(config), storage, rand);
    this.prevSoft = this.softState();
    this.prevHard = this.hardState();
  }

  private softState(): SoftState {
    return { lead: this.raft.lead, role: this.raft.role };
  }

  private hardState(): HardState {
    return { term: this.raft.term, vote: this.raft.vote, commit: this.raft.log.committed };
  }

  tick(): void {
    this.raft.tick();
  }

  /** Start an election now (pre-vote first when enabled). */
  campaign(): void {
    this.raft.step(msg({ type: MessageType.Hup, from: this.raft.id }));
  }

  /**
   * Propose a command. At a follower it is forwarded to the leader (unless forwarding is off);
   * it may still be lost there, so clients retry with the same request id and the state
   * machine drops duplicates (see docs/raft.md "Exactly-once proposals").
   * Throws ProposalDroppedError when it cannot be accepted now.
   */
  propose(data: Uint8Array): void {
    this.raft.step(
      msg({
        type: MessageType.Prop,
        from: this.raft.id,
        entries: [{ term: 0, index: 0, type: EntryType.Normal, data }],
      }),
    );
  }

  /** Propose a membership change; takes effect on each node when applyConfChange is called. */
  proposeConfChange(cc: ConfChange): void {
    this.raft.step(
      msg({
        type: MessageType.Prop,
        from: this.raft.id,
        entries: [{ term: 0, index: 0, type: EntryType.ConfChange, data: encodeConfChange(cc) }],
      }),
    );
  }

  /** Apply a committed ConfChange entry (call while applying it, in log order). */
  applyConfChange(cc: ConfChange): ConfState {
    return this.raft.applyConfChange(cc);
  }

  /**
   * Ask for a linearizable read index; the answer arrives as a ReadState carrying `ctx`
   * (unique per request) in a later Ready. Throws ProposalDroppedError without a leader.
   */
  readIndex(ctx: Uint8Array): void {
    this.raft.step(
      msg({
        type: MessageType.ReadIndex,
        from: this.raft.id,
        entries: [{ term: 0, index: 0, type: EntryType.Normal, data: ctx }],
      }),
    );
  }

  /** Hand leadership to `transferee` (leader: directly; follower: forwarded to the leader). */
  transferLeader(transferee: number): void {
    this.raft.step(msg({ type: MessageType.TransferLeader, from: transferee }));
  }

  /** The transport failed to reach `id`: stop pipelining to it until it answers again. */
  reportUnreachable(id: number): void {
    this.raft.step(msg({ type: MessageType.Unreachable, from: id }));
  }

  /** The transport finished sending a snapshot to `id` (ok) or gave up (not ok). */
  reportSnapshot(id: number, ok: boolean): void {
    this.raft.step(msg({ type: MessageType.SnapStatus, from: id, reject: !ok }));
  }

  /**
   * Feed a message from the network. Requests this node cannot serve (a forwarded proposal
   * or read with no leader in sight) are dropped silently: the remote client retries.
   */
  step(m: Message): void {
    if (isLocalMessage(m.type)) {
      throw new StepRejectedError(`local message ${MessageType[m.type]} from the network`);
    }
    // Removed ids never come back; a removed node that missed its removal must not disrupt
    // the cluster with elections at ever higher terms.
    if (this.raft.prs.removed.has(m.from)) return;
    const isResponse =
      m.type === MessageType.AppResp ||
      m.type === MessageType.VoteResp ||
      m.type === MessageType.PreVoteResp ||
      m.type === MessageType.HeartbeatResp;
    // A response from a node that is not (or no longer) a member.
    if (isResponse && !this.raft.prs.progress.has(m.from)) return;
    try {
      this.raft.step(m);
    } catch (e) {
      if (
        e instanceof RaftError &&
        (m.type === MessageType.Prop || m.type === MessageType.ReadIndex)
      ) {
        return;
      }
      throw e;
    }
  }

  hasReady(): boolean {
    const r = this.raft;
    const s = this.softState();
    if (s.lead !== this.prevSoft.lead || s.role !== this.prevSoft.role) return true;
    const h = this.hardState();
    if (
      h.term !== this.prevHard.term ||
      h.vote !== this.prevHard.vote ||
      h.commit !== this.prevHard.commit
    )
      return true;
    return (
      r.log.unstable.snapshot !== undefined ||
      r.log.unstableEntries().length > 0 ||
      r.msgs.length > 0 ||
      r.msgsAfterPersist.length > 0 ||
      r.readStates.length > 0 ||
      r.log.hasNextCommittedEnts()
    );
  }

  /** Collect the pending work. Call advance(rd) before the next ready(). */
  ready(): Ready {
    invariant(this.outstanding === undefined, 'ready() called again before advance()');
    const r = this.raft;
    const rd: Ready = {
      readStates: r.readStates,
      entries: [...r.log.unstableEntries()],
      committedEntries: r.log.nextCommittedEnts(),
      messages: r.msgs,
      persistedMessages: r.msgsAfterPersist,
      mustSync: false,
    };
    r.readStates = [];
    r.msgs = [];
    r.msgsAfterPersist = [];
    if (r.log.unstable.snapshot !== undefined) rd.snapshot = r.log.unstable.snapshot;
    const s = this.softState();
    if (s.lead !== this.prevSoft.lead || s.role !== this.prevSoft.role) {
      rd.softState = s;
      this.prevSoft = s;
    }
    const h = this.hardState();
    if (
      h.term !== this.prevHard.term ||
      h.vote !== this.prevHard.vote ||
      h.commit !== this.prevHard.commit
    ) {
      rd.mustSync = h.term !== this.prevHard.term || h.vote !== this.prevHard.vote;
      rd.hardState = h;
      this.prevHard = h;
    }
    if (rd.entries.length > 0) rd.mustSync = true;
    this.outstanding = rd;
    return rd;
  }

  /** The driver has persisted, sent and applied `rd` as described at the top of this file. */
  advance(rd: Ready): void {
    invariant(this.outstanding === rd, 'advance() with a Ready that is not the outstanding one');
    this.outstanding = undefined;
    const log = this.raft.log;
    if (rd.snapshot !== undefined) {
      log.stableSnapTo(rd.snapshot.metadata.index);
      log.appliedTo(rd.snapshot.metadata.index);
    }
    const last = rd.entries[rd.entries.length - 1];
    if (last !== undefined) log.stableTo(last.index, last.term);
    const lastApplied = rd.committedEntries[rd.committedEntries.length - 1];
    if (lastApplied !== undefined) {
      log.appliedTo(lastApplied.index);
      this.raft.onApplied(rd.committedEntries);
    }
    this.raft.onPersisted();
  }

  status(): Status {
    const r = this.raft;
    const progress = new Map<number, ProgressStatus>();
    if (r.role === StateRole.Leader) {
      for (const [id, pr] of r.prs.progress) {
        progress.set(id, {
          match: pr.match,
          next: pr.next,
          state: pr.state,
          isLearner: pr.isLearner,
        });
      }
    }
    return {
      id: r.id,
      term: r.term,
      vote: r.vote,
      commit: r.log.committed,
      applied: r.log.applied,
      lead: r.lead,
      role: r.role,
      lastIndex: r.log.lastIndex(),
      firstIndex: r.log.firstIndex(),
      leadTransferee: r.leadTransferee,
      confState: r.prs.confState(),
      progress,
    };
  }
}
