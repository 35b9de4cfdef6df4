/**
 * The leader's view of each follower (match/next, probe/replicate/snapshot flow control,
 * in-flight window) and the membership/quorum arithmetic over them.
 *
 * May import ./types.js and src/util/errors.ts.
 */

import { invariant } from '../util/errors.js';
import type { ConfState } from './types.js';

export enum ProgressState {
  /** Send one append per heartbeat until the follower's match index is found. */
  Probe = 0,
  /** Stream appends optimistically, bounded by the in-flight window. */
  Replicate = 1,
  /** A snapshot is on its way; send nothing until it is acknowledged or reported failed. */
  Snapshot = 2,
}

/** Sliding window of in-flight appends, by last index and bytes. */
export class Inflights {
  private idx: number[] = [];
  private bytes: number[] = [];
  private start = 0;
  private totalBytes = 0;

  constructor(
    private readonly maxCount: number,
    private readonly maxBytes: number,
  ) {}

  count(): number {
    return this.idx.length - this.start;
  }

  add(index: number, bytes: number): void {
    this.idx.push(index);
    this.bytes.push(bytes);
    this.totalBytes += bytes;
  }

  /** Release every append whose last index is ≤ `to` (acknowledged). */
  freeLE(to: number): void {
    while (this.start < this.idx.length && this.idx[this.start]! <= to) {
      this.totalBytes -= this.bytes[this.start]!;
      this.start++;
    }
    if (this.start > 64 && this.start * 2 > this.idx.length) {
      this.idx = this.idx.slice(this.start);
      this.bytes = this.bytes.slice(this.start);
      this.start = 0;
    }
  }

  freeFirstOne(): void {
    const first = this.idx[this.start];
    if (first !== undefined) this.freeLE(first);
  }

  full(): boolean {
    return this.count() >= this.maxCount || (this.maxBytes > 0 && this.totalBytes >= this.maxBytes);
  }

  reset(): void {
    this.idx = [];
    this.bytes = [];
    this.start = 0;
    this.totalBytes = 0;
  }
}

export class Progress {
  match = 0;
  next: number;
  state = ProgressState.Probe;
  /** Index of the snapshot being sent, while in Snapshot state. */
  pendingSnapshot = 0;
  /** Heard from since the last CheckQuorum (and eligible for a snapshot). */
  recentActive = false;
  /** Probe state: an append is outstanding; wait for its answer or the next heartbeat. */
  probeSent = false;
  readonly inflights: Inflights;

  constructor(
    next: number,
    public isLearner: boolean,
    maxInflight: number,
    maxInflightBytes: number,
  ) {
    this.next = next;
    this.inflights = new Inflights(maxInflight, maxInflightBytes);
  }

  private resetState(s: ProgressState): void {
    this.probeSent = false;
    this.pendingSnapshot = 0;
    this.state = s;
    this.inflights.reset();
  }

  becomeProbe(): void {
    if (this.state === ProgressState.Snapshot) {
      const pending = this.pendingSnapshot;
      this.resetState(ProgressState.Probe);
      this.next = Math.max(this.match + 1, pending + 1);
    } else {
      this.resetState(ProgressState.Probe);
      this.next = this.match + 1;
    }
  }

  becomeReplicate(): void {
    this.resetState(ProgressState.Replicate);
    this.next = this.match + 1;
  }

  becomeSnapshot(snapIndex: number): void {
    this.resetState(ProgressState.Snapshot);
    this.pendingSnapshot = snapIndex;
  }

  /** An acknowledgement up to `n` arrived; false if it was stale. */
  maybeUpdate(n: number): boolean {
    let updated = false;
    if (this.match < n) {
      this.match = n;
      updated = true;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, n + 1);
    return updated;
  }

  optimisticUpdate(n: number): void {
    this.next = n + 1;
  }

  /**
   * A rejection of the append at `rejected` arrived, with the follower's hint that its log
   * may match at `matchHint`. False if the rejection is stale.
   */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    if (this.state === ProgressState.Replicate) {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, matchHint + 1), this.match + 1, 1);
    this.probeSent = false;
    return true;
  }

  isPaused(): boolean {
    switch (this.state) {
      case ProgressState.Probe:
        return this.probeSent;
      case ProgressState.Replicate:
        return this.inflights.full();
      case ProgressState.Snapshot:
        return true;
    }
  }
}

export type VoteResult = 'won' | 'lost' | 'pending';

/** Members and their progress. Learners replicate but never count towards a quorum. */
export class ProgressTracker {
  readonly progress = new Map<number, Progress>();
  voters = new Set<number>();
  learners = new Set<number>();
  removed = new Set<number>();
  readonly votes = new Map<number, boolean>();

  constructor(
    readonly maxInflight: number,
    readonly maxInflightBytes: number,
  ) {}

  confState(): ConfState {
    const sort = (s: Set<number>): number[] => [...s].sort((a, b) => a - b);
    return {
      voters: sort(this.voters),
      learners: sort(this.learners),
      removed: sort(this.removed),
    };
  }

  /** Replace the membership; progress of kept members survives, new ones start at `next`. */
  applyConfState(cs: ConfState, next: number): void {
    this.voters = new Set(cs.voters);
    this.learners = new Set(cs.learners);
    this.removed = new Set(cs.removed);
    for (const id of this.voters) invariant(!this.learners.has(id), `node ${id} voter and learner`);
    for (const id of [...this.progress.keys()]) {
      if (!this.voters.has(id) && !this.learners.has(id)) this.progress.delete(id);
    }
    for (const id of [...this.voters, ...this.learners]) {
      const pr = this.progress.get(id);
      if (pr) pr.isLearner = this.learners.has(id);
      else this.initProgress(id, next);
    }
  }

  initProgress(id: number, next: number): Progress {
    const pr = new Progress(next, this.learners.has(id), this.maxInflight, this.maxInflightBytes);
    // A new member counts as active so that CheckQuorum does not depose the leader at once.
    pr.recentActive = true;
    this.progress.set(id, pr);
    return pr;
  }

  isSingleton(): boolean {
    return this.voters.size === 1;
  }

  quorum(): number {
    return Math.floor(this.voters.size / 2) + 1;
  }

  /** Largest index replicated on a quorum of voters. */
  committed(): number {
    if (this.voters.size === 0) return 0;
    const m: number[] = [];
    for (const id of this.voters) m.push(this.progress.get(id)?.match ?? 0);
    m.sort((a, b) => b - a);
    return m[this.quorum() - 1]!;
  }

  recordVote(id: number, granted: boolean): void {
    if (!this.votes.has(id)) this.votes.set(id, granted);
  }

  voteResult(): VoteResult {
    let granted = 0;
    let rejected = 0;
    for (const id of this.voters) {
      const v = this.votes.get(id);
      if (v === true) granted++;
      else if (v === false) rejected++;
    }
    const q = this.quorum();
    if (granted >= q) return 'won';
    if (this.voters.size - rejected < q) return 'lost';
    return 'pending';
  }

  quorumActive(self: number): boolean {
    let active = 0;
    for (const id of this.voters) {
      if (id === self || this.progress.get(id)?.recentActive) active++;
    }
    return active >= this.quorum();
  }
}
