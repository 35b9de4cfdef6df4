/**
 * The storage interface the raft core reads its durable state through, and an in-memory
 * implementation for tests and the simulator (the WAL implements the same interface later).
 *
 * The core only reads storage; the driver writes it with what `Ready` hands over. May import
 * ./types.js, ./errors.js and src/util/errors.ts.
 */

import { invariant } from '../util/errors.js';
import { CompactedError, SnapshotOutOfDateError, UnavailableError } from './errors.js';
import type { ConfState, Entry, HardState, Snapshot } from './types.js';

export interface InitialState {
  hardState: HardState;
  confState: ConfState;
}

/**
 * Read side of stable storage. Entries are kept from `firstIndex()` to `lastIndex()`; the entry
 * at `firstIndex() - 1` is covered by the latest snapshot, whose term `term()` still answers.
 * Implementations may throw CompactedError / UnavailableError / SnapshotTemporarilyUnavailableError.
 */
export interface Storage {
  initialState(): InitialState;
  /** Entries [lo, hi), at least one if any exist, then up to `maxSize` bytes in total. */
  entries(lo: number, hi: number, maxSize: number): Entry[];
  term(index: number): number;
  firstIndex(): number;
  lastIndex(): number;
  /** The most recent snapshot, to send to a follower that is behind `firstIndex()`. */
  snapshot(): Snapshot;
}

/** Bytes an entry costs in a message: its data plus a fixed header estimate. */
export function entrySize(e: Entry): number {
  return e.data.length + 24;
}

/** Take a prefix of `ents` within `maxSize` bytes, always keeping at least one entry. */
export function limitSize(ents: Entry[], maxSize: number): Entry[] {
  if (ents.length === 0) return ents;
  let size = entrySize(ents[0]!);
  let n = 1;
  for (; n < ents.length; n++) {
    size += entrySize(ents[n]!);
    if (size > maxSize) break;
  }
  return n === ents.length ? ents : ents.slice(0, n);
}

export function emptyConfState(): ConfState {
  return { voters: [], learners: [], removed: [] };
}

export function cloneConfState(cs: ConfState): ConfState {
  return { voters: [...cs.voters], learners: [...cs.learners], removed: [...cs.removed] };
}

/**
 * In-memory Storage. `ents[0]` is a dummy entry holding the snapshot's index and term, so that
 * `term(firstIndex - 1)` keeps working after compaction.
 */
export class MemoryStorage implements Storage {
  private hardState: HardState = { term: 0, vote: 0, commit: 0 };
  private snap: Snapshot = {
    metadata: { index: 0, term: 0, confState: emptyConfState() },
    data: new Uint8Array(0),
  };
  private ents: Entry[] = [{ term: 0, index: 0, type: 0, data: new Uint8Array(0) }];

  /** A storage for a brand-new cluster whose initial voters are `voters`. */
  static bootstrap(voters: number[]): MemoryStorage {
    const s = new MemoryStorage();
    s.snap.metadata.confState.voters = [...voters];
    return s;
  }

  initialState(): InitialState {
    return {
      hardState: { ...this.hardState },
      confState: cloneConfState(this.snap.metadata.confState),
    };
  }

  setHardState(hs: HardState): void {
    this.hardState = { ...hs };
  }

  private offset(): number {
    return this.ents[0]!.index;
  }

  firstIndex(): number {
    return this.offset() + 1;
  }

  lastIndex(): number {
    return this.offset() + this.ents.length - 1;
  }

  term(index: number): number {
    const off = this.offset();
    if (index < off) throw new CompactedError(index, off + 1);
    const e = this.ents[index - off];
    if (e === undefined) throw new UnavailableError(index, this.lastIndex());
    return e.term;
  }

  entries(lo: number, hi: number, maxSize: number): Entry[] {
    const off = this.offset();
    if (lo <= off) throw new CompactedError(lo, off + 1);
    invariant(
      hi <= this.lastIndex() + 1,
      `storage entries hi ${hi} > last ${this.lastIndex()} + 1`,
    );
    return limitSize(this.ents.slice(lo - off, hi - off), maxSize);
  }

  snapshot(): Snapshot {
    return this.snap;
  }

  /** Replace everything with a snapshot received from the leader. */
  applySnapshot(snap: Snapshot): void {
    const have = this.snap.metadata.index;
    if (snap.metadata.index <= have) throw new SnapshotOutOfDateError(snap.metadata.index, have);
    this.snap = snap;
    this.ents = [
      { term: snap.metadata.term, index: snap.metadata.index, type: 0, data: new Uint8Array(0) },
    ];
  }

  /** Record a snapshot of the state machine at applied index `index` (≤ last index). */
  createSnapshot(index: number, confState: ConfState, data: Uint8Array): Snapshot {
    const have = this.snap.metadata.index;
    if (index <= have) throw new SnapshotOutOfDateError(index, have);
    invariant(index <= this.lastIndex(), `snapshot index ${index} > last ${this.lastIndex()}`);
    this.snap = {
      metadata: { index, term: this.term(index), confState: cloneConfState(confState) },
      data,
    };
    return this.snap;
  }

  /** Drop entries before `compactIndex`; the entry at `compactIndex` becomes the dummy. */
  compact(compactIndex: number): void {
    const off = this.offset();
    if (compactIndex <= off) throw new CompactedError(compactIndex, off + 1);
    invariant(
      compactIndex <= this.lastIndex(),
      `compact ${compactIndex} > last ${this.lastIndex()}`,
    );
    const i = compactIndex - off;
    const head = this.ents[i]!;
    this.ents = [
      { term: head.term, index: head.index, type: 0, data: new Uint8Array(0) },
      ...this.ents.slice(i + 1),
    ];
  }

  /** Append entries, truncating any existing suffix they overwrite. */
  append(entries: Entry[]): void {
    if (entries.length === 0) return;
    const first = this.firstIndex();
    const last = entries[0]!.index + entries.length - 1;
    if (last < first) return;
    let ents = entries;
    if (first > entries[0]!.index) ents = entries.slice(first - entries[0]!.index);
    const off = ents[0]!.index - this.offset();
    invariant(
      off <= this.ents.length,
      `storage append gap: ${ents[0]!.index} after ${this.lastIndex()}`,
    );
    this.ents.length = off;
    for (const e of ents) this.ents.push(e);
  }
}
