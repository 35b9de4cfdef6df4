/**
 * The raft log as the core sees it: stable entries (in Storage) followed by unstable entries
 * and possibly an unstable snapshot (handed to the driver through Ready, not yet durable).
 *
 * Tracks the commit and applied indices. May import ./storage.js, ./types.js, ./errors.js and
 * src/util/errors.ts.
 */

import { invariant } from '../util/errors.js';
import { CompactedError, UnavailableError } from './errors.js';
import { limitSize, type Storage } from './storage.js';
import type { Entry, Snapshot } from './types.js';

/** Entries and snapshot not yet written by the driver. `offset` is the index of `entries[0]`. */
class Unstable {
  snapshot: Snapshot | undefined;
  entries: Entry[] = [];
  constructor(public offset: number) {}

  maybeFirstIndex(): number | undefined {
    return this.snapshot ? this.snapshot.metadata.index + 1 : undefined;
  }

  maybeLastIndex(): number | undefined {
    if (this.entries.length > 0) return this.offset + this.entries.length - 1;
    return this.snapshot ? this.snapshot.metadata.index : undefined;
  }

  maybeTerm(i: number): number | undefined {
    if (i < this.offset) {
      if (this.snapshot && this.snapshot.metadata.index === i) return this.snapshot.metadata.term;
      return undefined;
    }
    return this.entries[i - this.offset]?.term;
  }

  stableTo(i: number, t: number): void {
    const gt = this.maybeTerm(i);
    // An entry at i may have been replaced by a newer leader's entry since the Ready was taken;
    // then the write covered an entry that is no longer ours and nothing becomes stable.
    if (gt === undefined || gt !== t || i < this.offset) return;
    this.entries = this.entries.slice(i + 1 - this.offset);
    this.offset = i + 1;
  }

  stableSnapTo(i: number): void {
    if (this.snapshot && this.snapshot.metadata.index === i) this.snapshot = undefined;
  }

  restore(s: Snapshot): void {
    this.offset = s.metadata.index + 1;
    this.entries = [];
    this.snapshot = s;
  }

  truncateAndAppend(ents: Entry[]): void {
    const first = ents[0]!.index;
    if (first === this.offset + this.entries.length) {
      for (const e of ents) this.entries.push(e);
    } else if (first <= this.offset) {
      // Replaces (part of) the stable log too; the driver's append truncates storage likewise.
      this.offset = first;
      this.entries = [...ents];
    } else {
      this.entries = [...this.entries.slice(0, first - this.offset), ...ents];
    }
  }

  slice(lo: number, hi: number): Entry[] {
    invariant(
      lo >= this.offset && hi <= this.offset + this.entries.length,
      'unstable slice bounds',
    );
    return this.entries.slice(lo - this.offset, hi - this.offset);
  }
}

export class RaftLog {
  readonly unstable: Unstable;
  committed: number;
  applied: number;

  constructor(
    readonly storage: Storage,
    private readonly maxApplyingSize: number,
  ) {
    const first = storage.firstIndex();
    const last = storage.lastIndex();
    this.unstable = new Unstable(last + 1);
    this.committed = first - 1;
    this.applied = first - 1;
  }

  firstIndex(): number {
    return this.unstable.maybeFirstIndex() ?? this.storage.firstIndex();
  }

  lastIndex(): number {
    return this.unstable.maybeLastIndex() ?? this.storage.lastIndex();
  }

  /** Last index that is durable (everything below the unstable part). */
  stableLastIndex(): number {
    if (this.unstable.snapshot) return this.storage.lastIndex();
    return this.unstable.offset - 1;
  }

  /** Term at `i`, or undefined when `i` is compacted away or beyond the last index. */
  maybeTerm(i: number): number | undefined {
    const dummy = this.firstIndex() - 1;
    if (i < dummy || i > this.lastIndex()) return undefined;
    const t = this.unstable.maybeTerm(i);
    if (t !== undefined) return t;
    try {
      return this.storage.term(i);
    } catch (e) {
      if (e instanceof CompactedError || e instanceof UnavailableError) return undefined;
      throw e;
    }
  }

  zeroTerm(i: number): number {
    return this.maybeTerm(i) ?? 0;
  }

  lastTerm(): number {
    const t = this.maybeTerm(this.lastIndex());
    invariant(t !== undefined, 'term of last index unknown');
    return t;
  }

  matchTerm(i: number, t: number): boolean {
    return this.maybeTerm(i) === t;
  }

  /** Raft §5.4.1: is a log ending at (lasti, term) at least as up to date as ours? */
  isUpToDate(lasti: number, term: number): boolean {
    const lt = this.lastTerm();
    return term > lt || (term === lt && lasti >= this.lastIndex());
  }

  /**
   * AppendEntries receiver (paper Figure 2): if our log matches at (index, logTerm), append the
   * new entries, dropping a conflicting suffix, and return the last index the leader's message
   * vouches for; otherwise undefined.
   */
  maybeAppend(
    index: number,
    logTerm: number,
    committed: number,
    ents: Entry[],
  ): number | undefined {
    if (!this.matchTerm(index, logTerm)) return undefined;
    const lastNew = index + ents.length;
    const ci = this.findConflict(ents);
    if (ci !== 0) {
      invariant(ci > this.committed, `entry ${ci} conflicts with committed ${this.committed}`);
      this.append(ents.slice(ci - (index + 1)));
    }
    this.commitTo(Math.min(committed, lastNew));
    return lastNew;
  }

  append(ents: Entry[]): number {
    if (ents.length === 0) return this.lastIndex();
    const after = ents[0]!.index - 1;
    invariant(after >= this.committed, `append after ${after} below committed ${this.committed}`);
    this.unstable.truncateAndAppend(ents);
    return this.lastIndex();
  }

  /** First index where `ents` is new or disagrees with our log, 0 if all present. */
  findConflict(ents: Entry[]): number {
    for (const e of ents) if (!this.matchTerm(e.index, e.term)) return e.index;
    return 0;
  }

  /**
   * Largest index ≤ `index` whose term is ≤ `term` (or the first index we cannot see): the
   * leader's next probe can skip every entry of a term the other side does not have.
   */
  findConflictByTerm(index: number, term: number): number {
    for (; index > 0; index--) {
      const t = this.maybeTerm(index);
      if (t === undefined) return index;
      if (t <= term) return index;
    }
    return 0;
  }

  unstableEntries(): Entry[] {
    return this.unstable.entries;
  }

  /** Committed, durable, not yet applied entries: what the state machine may apply now. */
  nextCommittedEnts(): Entry[] {
    if (this.unstable.snapshot) return [];
    const lo = Math.max(this.applied + 1, this.firstIndex());
    const hi = Math.min(this.committed, this.stableLastIndex()) + 1;
    if (lo >= hi) return [];
    return this.slice(lo, hi, this.maxApplyingSize);
  }

  hasNextCommittedEnts(): boolean {
    if (this.unstable.snapshot) return false;
    const lo = Math.max(this.applied + 1, this.firstIndex());
    return lo <= Math.min(this.committed, this.stableLastIndex());
  }

  snapshot(): Snapshot {
    return this.unstable.snapshot ?? this.storage.snapshot();
  }

  commitTo(c: number): void {
    if (c <= this.committed) return;
    invariant(c <= this.lastIndex(), `commit ${c} beyond last index ${this.lastIndex()}`);
    this.committed = c;
  }

  appliedTo(i: number): void {
    if (i === 0) return;
    invariant(
      i <= this.committed && i >= this.applied,
      `applied ${i} outside [${this.applied}, ${this.committed}]`,
    );
    this.applied = i;
  }

  stableTo(i: number, t: number): void {
    this.unstable.stableTo(i, t);
  }

  stableSnapTo(i: number): void {
    this.unstable.stableSnapTo(i);
  }

  /** Commit only entries of the current term by counting replicas (paper §5.4.2, Figure 8). */
  maybeCommit(maxIndex: number, term: number): boolean {
    if (maxIndex > this.committed && this.zeroTerm(maxIndex) === term) {
      this.commitTo(maxIndex);
      return true;
    }
    return false;
  }

  restore(s: Snapshot): void {
    this.committed = s.metadata.index;
    this.unstable.restore(s);
  }

  /** Entries from `i` to the end, within `maxSize` bytes. Throws CompactedError below first. */
  entries(i: number, maxSize: number): Entry[] {
    if (i > this.lastIndex()) return [];
    return this.slice(i, this.lastIndex() + 1, maxSize);
  }

  slice(lo: number, hi: number, maxSize: number): Entry[] {
    if (lo === hi) return [];
    const first = this.firstIndex();
    if (lo < first) throw new CompactedError(lo, first);
    invariant(hi <= this.lastIndex() + 1, `slice [${lo}, ${hi}) beyond last ${this.lastIndex()}`);
    let ents: Entry[] = [];
    const off = this.unstable.offset;
    if (lo < off) {
      const stored = this.storage.entries(lo, Math.min(hi, off), maxSize);
      if (stored.length < Math.min(hi, off) - lo) return stored;
      ents = stored;
    }
    if (hi > off) {
      const u = this.unstable.slice(Math.max(lo, off), hi);
      ents = ents.length > 0 ? [...ents, ...u] : u;
    }
    return limitSize(ents, maxSize);
  }
}
