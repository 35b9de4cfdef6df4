/**
 * Durable raft storage: the core's `Storage` interface answered from memory (a `MemoryStorage`
 * loaded at open), written through the WAL (`wal/`) and the snapshot files (`snap/`) under one
 * directory. The driver calls `save(rd)` for each Ready and sends `rd.persistedMessages` only
 * after it resolves.
 *
 * I/O module: may import node:path, ./wal.js, ./snapfile.js, ./storage.js, ./types.js and
 * src/util/errors.ts.
 */

import { join } from 'node:path';
import { invariant } from '../util/errors.js';
import { SnapshotStore } from './snapfile.js';
import { MemoryStorage, cloneConfState, type InitialState, type Storage } from './storage.js';
import type { ConfState, Entry, HardState, Ready, Snapshot } from './types.js';
import {
  RecordType,
  Wal,
  type WalOptions,
  type WalRecord,
  type WalState,
  type WalStats,
} from './wal.js';

export interface DiskStorageOptions extends WalOptions {
  /**
   * Voters of a brand-new cluster; used only when the directory holds no log yet (written as
   * a snapshot at index 0 whose conf state lists them, the bootstrap `MemoryStorage` uses).
   */
  bootstrapVoters?: number[];
}

export class DiskStorage implements Storage {
  private readonly mem: MemoryStorage;
  readonly wal: Wal;
  private readonly snaps: SnapshotStore;
  /** Serializes the preparation of writes so that records reach the WAL in call order. */
  private order: Promise<unknown> = Promise.resolve();
  /** What replay found (for logs: `repaired` says whether a torn tail was cut). */
  readonly recovered: WalState;

  private constructor(mem: MemoryStorage, wal: Wal, snaps: SnapshotStore, recovered: WalState) {
    this.mem = mem;
    this.wal = wal;
    this.snaps = snaps;
    this.recovered = recovered;
  }

  static async open(dir: string, opts: DiskStorageOptions = {}): Promise<DiskStorage> {
    const snaps = await SnapshotStore.open(join(dir, 'snap'), opts.fs);
    const { wal, state } = await Wal.open(join(dir, 'wal'), opts);
    const mem = new MemoryStorage();
    let snapshot: Snapshot | null = null;
    if (state.snapshot !== null) {
      snapshot = await snaps.load(state.snapshot.index, state.snapshot.term);
      await snaps.retainOnly(state.snapshot.index, state.snapshot.term);
    } else if (state.entries.length === 0 && opts.bootstrapVoters !== undefined) {
      snapshot = {
        metadata: {
          index: 0,
          term: 0,
          confState: { voters: [...opts.bootstrapVoters], learners: [], removed: [] },
        },
        data: new Uint8Array(0),
      };
      await snaps.save(snapshot);
      await wal.append([{ type: RecordType.Snapshot, index: 0, term: 0 }]);
    } else {
      await snaps.retainOnly(-1, -1);
    }
    const storage = new DiskStorage(mem, wal, snaps, state);
    storage.load(snapshot, state.entries, state.hardState);
    return storage;
  }

  private load(snap: Snapshot | null, ents: Entry[], hs: HardState): void {
    const sIndex = snap?.metadata.index ?? 0;
    const first = ents[0];
    if (snap !== null && first !== undefined && first.index <= sIndex) {
      // A retained tail below the snapshot: MemoryStorage keeps a dummy entry at
      // firstIndex - 1 whose term must be right, so the oldest held entry becomes the dummy.
      const conf = snap.metadata.confState;
      const base = { index: first.index, term: first.term, confState: cloneConfState(conf) };
      if (first.index > 0) this.mem.applySnapshot({ metadata: base, data: new Uint8Array(0) });
      this.mem.append(ents.slice(1));
      if (sIndex > first.index) this.mem.createSnapshot(sIndex, conf, snap.data);
      else replaceSnapshot(this.mem, snap);
    } else {
      if (snap !== null) {
        if (sIndex > 0) this.mem.applySnapshot(snap);
        else replaceSnapshot(this.mem, snap);
      }
      this.mem.append(ents);
    }
    this.mem.setHardState(hs);
  }

  initialState(): InitialState {
    return this.mem.initialState();
  }
  entries(lo: number, hi: number, maxSize: number): Entry[] {
    return this.mem.entries(lo, hi, maxSize);
  }
  term(index: number): number {
    return this.mem.term(index);
  }
  firstIndex(): number {
    return this.mem.firstIndex();
  }
  lastIndex(): number {
    return this.mem.lastIndex();
  }
  snapshot(): Snapshot {
    return this.mem.snapshot();
  }

  private serial<T>(f: () => Promise<T>): Promise<T> {
    const p = this.order.then(f);
    this.order = p.then(
      () => undefined,
      () => undefined,
    );
    return p;
  }

  /**
   * Persist a Ready: its snapshot (file first, then the WAL marker), its entries (truncating
   * any suffix they overwrite), then its hard state, as one WAL batch. Resolves when durable
   * (written only, when `rd.mustSync` is false and no snapshot is involved).
   */
  async save(rd: Ready): Promise<void> {
    const { durable } = await this.serial(async () => {
      const recs: WalRecord[] = [];
      if (rd.snapshot !== undefined) {
        await this.snaps.save(rd.snapshot);
        this.mem.applySnapshot(rd.snapshot);
        const { index, term } = rd.snapshot.metadata;
        recs.push({ type: RecordType.Snapshot, index, term });
      }
      for (const e of rd.entries) recs.push({ type: RecordType.Entry, entry: e });
      this.mem.append(rd.entries);
      if (rd.hardState !== undefined) {
        recs.push({ type: RecordType.HardState, hardState: { ...rd.hardState } });
        this.mem.setHardState(rd.hardState);
      }
      if (recs.length === 0) return { durable: Promise.resolve() };
      return { durable: this.wal.append(recs, rd.mustSync || rd.snapshot !== undefined) };
    });
    await durable;
  }

  /**
   * Record a snapshot of the state machine at applied index `index`: the file, then the WAL
   * marker, then older snapshot files are removed.
   */
  createSnapshot(index: number, confState: ConfState, data: Uint8Array): Promise<Snapshot> {
    return this.serial(async () => {
      const snap = this.mem.createSnapshot(index, confState, data);
      await this.snaps.save(snap);
      await this.wal.append([{ type: RecordType.Snapshot, index, term: snap.metadata.term }]);
      await this.snaps.retainOnly(index, snap.metadata.term);
      return snap;
    });
  }

  /**
   * Drop entries before `compactIndex` from memory and delete WAL segments wholly at or below
   * it. `compactIndex` must not exceed the latest snapshot's index. Returns segments removed.
   */
  compact(compactIndex: number): Promise<number> {
    return this.serial(async () => {
      invariant(
        compactIndex <= this.mem.snapshot().metadata.index,
        `compact ${compactIndex} beyond the snapshot ${this.mem.snapshot().metadata.index}`,
      );
      this.mem.compact(compactIndex);
      return this.wal.release(Math.min(compactIndex, this.wal.snapshotIndex()));
    });
  }

  /** See `Wal.stallMs()`: how long the disk write in flight has been running. */
  stallMs(): number {
    return this.wal.stallMs();
  }

  stats(): WalStats {
    return this.wal.stats();
  }

  async close(): Promise<void> {
    await this.order;
    await this.wal.close();
  }
}

/** Set the snapshot without touching entries (index 0 bootstrap, or one at the dummy entry). */
function replaceSnapshot(mem: MemoryStorage, snap: Snapshot): void {
  const cur = mem.snapshot();
  invariant(cur.metadata.index === snap.metadata.index, 'replaceSnapshot index mismatch');
  cur.metadata.term = snap.metadata.term;
  cur.metadata.confState = cloneConfState(snap.metadata.confState);
  cur.data = snap.data;
}
