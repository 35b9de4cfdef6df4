/**
 * The write-ahead log: durable storage for what the raft core's `Ready` hands over (entries,
 * hard state, snapshot markers), in segment files `<seq:16 hex>-<first index:16 hex>.wal`.
 *
 * Record frame (little endian): u32 payload length, u8 record type, u32 CRC-32C over the
 * length, the type and the payload (see crc32c.ts for why CRC-32C), then the payload. A zeroed or
 * half-written frame fails the CRC.
 *
 * Durability: `append()` resolves only after the bytes are written and fdatasync'ed (the Raft
 * paper's Figure 2 rule "respond to RPCs only after updating stable storage"), so a caller that
 * sends `Ready.persistedMessages` after awaiting it cannot promise state the disk lacks. Appends
 * made while a sync is in flight are written and synced together by the next one (group
 * commit). A failed write or sync poisons the log: every later append rejects with
 * `WalFailedError` and the process must restart (after a failed fsync the page cache state is
 * unknown; retrying can report success for lost data, PostgreSQL "fsyncgate", 2018).
 *
 * Segments: a new segment is written as `<name>.tmp`, synced, renamed and the directory synced,
 * so a segment under its final name always starts with a valid header. Each header repeats the
 * latest snapshot marker and hard state, so segments wholly covered by a snapshot can be deleted.
 *
 * Recovery: every segment is replayed and every CRC checked. In the last segment the first bad
 * frame and everything after it is the torn tail of an unsynced write and is truncated; a bad
 * frame in any earlier segment (all of which were synced before the next was created) is
 * corruption and `open` refuses with `WalCorruptError` naming the file and offset.
 *
 * Stalls: `stallMs()` is how long the write or fsync in flight has been running (0 when idle);
 * the daemon polls it each tick and a leader whose disk has stalled for longer than its election
 * timeout transfers leadership or steps down (issue 4).
 *
 * I/O module: may import node:fs/promises, node:path, node:perf_hooks, ./types.js, ./crc32c.js
 * and src/util/errors.ts.
 */

import * as fsp from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { MeshError, invariant } from '../util/errors.js';
import { crc32c } from './crc32c.js';
import type { Entry, HardState } from './types.js';

/** On disk: never renumber. */
export enum RecordType {
  SegmentHeader = 1,
  Entry = 2,
  HardState = 3,
  /** A snapshot at (index, term) is durable in the snapshot directory. */
  Snapshot = 4,
}

export type WalRecord =
  | { type: RecordType.Entry; entry: Entry }
  | { type: RecordType.HardState; hardState: HardState }
  | { type: RecordType.Snapshot; index: number; term: number };

/** The WAL on disk is damaged in a way that cannot be repaired automatically. */
export class WalCorruptError extends MeshError {
  readonly file: string;
  readonly offset: number;
  constructor(file: string, offset: number, detail: string) {
    super(
      'EWAL_CORRUPT',
      `open wal ${file}: ${detail} at offset ${offset} (the log is corrupt; restore the data ` +
        `dir from a backup, or remove this manager and rejoin it with an empty data dir)`,
    );
    this.file = file;
    this.offset = offset;
  }
}

/** A write or fsync failed; the log refuses further appends. Restart the process. */
export class WalFailedError extends MeshError {
  constructor(op: string, cause: unknown) {
    super('EWAL_FAILED', `${op} wal: ${String(cause)} (restart meshd; check the disk)`, { cause });
  }
}

/** The file operations the WAL uses; tests inject counting or stalling versions. */
export interface WalFile {
  write(
    buf: Uint8Array,
    offset: number,
    length: number,
    position: number,
  ): Promise<{ bytesWritten: number }>;
  datasync(): Promise<void>;
  truncate(len: number): Promise<void>;
  close(): Promise<void>;
}

export interface WalFs {
  open(path: string, flags: string): Promise<WalFile>;
  readFile(path: string): Promise<Uint8Array>;
  readdir(dir: string): Promise<string[]>;
  rename(from: string, to: string): Promise<void>;
  unlink(path: string): Promise<void>;
  mkdir(dir: string): Promise<void>;
  /** fsync a directory so that file creations, renames and removals in it are durable. */
  syncDir(dir: string): Promise<void>;
}

export const nodeFs: WalFs = {
  open: (p, flags) => fsp.open(p, flags),
  readFile: (p) => fsp.readFile(p),
  readdir: (d) => fsp.readdir(d),
  rename: (a, b) => fsp.rename(a, b),
  unlink: (p) => fsp.unlink(p),
  mkdir: async (d) => {
    await fsp.mkdir(d, { recursive: true });
  },
  syncDir: async (d) => {
    const fh = await fsp.open(d, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  },
};

export interface WalOptions {
  /** Rotate to a new segment once the current one reaches this many bytes. @default 64 MiB */
  segmentBytes?: number;
  fs?: WalFs;
  /** Monotonic milliseconds, for `stallMs()`. @default performance.now */
  now?: () => number;
}

export interface WalStats {
  /** fdatasync calls on segment files (group commit makes this lower than `appends`). */
  syncs: number;
  appends: number;
  bytes: number;
  lastSyncMs: number;
  maxSyncMs: number;
  segments: number;
}

/** What replay found, for the storage layer to load. */
export interface WalState {
  hardState: HardState;
  /** The latest durable snapshot marker, or null when none was ever written. */
  snapshot: { index: number; term: number } | null;
  /** Contiguous entries as of the end of the log (they may start below the snapshot index). */
  entries: Entry[];
  /** Set when a torn tail was cut off the last segment. */
  repaired: { file: string; offset: number; droppedBytes: number } | null;
}

interface Segment {
  seq: number;
  start: number;
  name: string;
}

const HEADER = 9;
const MAGIC = 0x4c41574d;
const VERSION = 1;
const MAX_RECORD = 256 * 1024 * 1024;
const SEGMENT_RE = /^([0-9a-f]{16})-([0-9a-f]{16})\.wal$/;

export function segmentName(seq: number, start: number): string {
  return `${seq.toString(16).padStart(16, '0')}-${start.toString(16).padStart(16, '0')}.wal`;
}

/** A non-negative safe integer as 64-bit little-endian (indexes and terms stay below 2^53). */
export function put64(v: DataView, off: number, n: number): void {
  v.setUint32(off, n % 0x100000000, true);
  v.setUint32(off + 4, Math.floor(n / 0x100000000), true);
}

export function get64(v: DataView, off: number): number {
  return v.getUint32(off, true) + v.getUint32(off + 4, true) * 0x100000000;
}

function payloadSize(r: WalRecord): number {
  switch (r.type) {
    case RecordType.Entry:
      return 17 + r.entry.data.length;
    case RecordType.HardState:
      return 24;
    case RecordType.Snapshot:
      return 16;
  }
}

/** Frame `records` into one buffer (header records are built by `encodeHeader`). */
export function encodeRecords(records: WalRecord[]): Uint8Array {
  let size = 0;
  for (const r of records) size += HEADER + payloadSize(r);
  const buf = new Uint8Array(size);
  const v = new DataView(buf.buffer);
  let o = 0;
  for (const r of records) {
    const len = payloadSize(r);
    const p = o + HEADER;
    switch (r.type) {
      case RecordType.Entry:
        put64(v, p, r.entry.index);
        put64(v, p + 8, r.entry.term);
        v.setUint8(p + 16, r.entry.type);
        buf.set(r.entry.data, p + 17);
        break;
      case RecordType.HardState:
        put64(v, p, r.hardState.term);
        put64(v, p + 8, r.hardState.vote);
        put64(v, p + 16, r.hardState.commit);
        break;
      case RecordType.Snapshot:
        put64(v, p, r.index);
        put64(v, p + 8, r.term);
        break;
    }
    frame(buf, v, o, r.type, len);
    o = p + len;
  }
  return buf;
}

function frame(buf: Uint8Array, v: DataView, o: number, type: number, len: number): void {
  v.setUint32(o, len, true);
  v.setUint8(o + 4, type);
  const crc = crc32c(buf, crc32c(buf, 0, o, o + 5), o + HEADER, o + HEADER + len);
  v.setUint32(o + 5, crc, true);
}

function encodeHeader(seq: number, start: number): Uint8Array {
  const buf = new Uint8Array(HEADER + 21);
  const v = new DataView(buf.buffer);
  v.setUint32(HEADER, MAGIC, true);
  v.setUint8(HEADER + 4, VERSION);
  put64(v, HEADER + 5, seq);
  put64(v, HEADER + 13, start);
  frame(buf, v, 0, RecordType.SegmentHeader, 21);
  return buf;
}

type Decoded =
  | { ok: true; type: RecordType; payload: DataView; data: Uint8Array; next: number }
  | { ok: false; why: string };

function decodeAt(buf: Uint8Array, o: number): Decoded {
  if (buf.length - o < HEADER) return { ok: false, why: 'short record header' };
  const v = new DataView(buf.buffer, buf.byteOffset + o);
  const len = v.getUint32(0, true);
  const type = v.getUint8(4);
  if (len > MAX_RECORD) return { ok: false, why: `record length ${len} too large` };
  if (buf.length - o - HEADER < len) return { ok: false, why: 'short record payload' };
  const want = v.getUint32(5, true);
  const got = crc32c(buf, crc32c(buf, 0, o, o + 5), o + HEADER, o + HEADER + len);
  if (got !== want) return { ok: false, why: 'crc mismatch' };
  const data = buf.subarray(o + HEADER, o + HEADER + len);
  return {
    ok: true,
    type: type as RecordType,
    payload: new DataView(data.buffer, data.byteOffset, len),
    data,
    next: o + HEADER + len,
  };
}

/** A record that is intact but inconsistent with the log before it. */
class ReplayError extends Error {}

/** Replays records into the log state; throws ReplayError for a logical inconsistency. */
class Replay {
  hardState: HardState = { term: 0, vote: 0, commit: 0 };
  snapshot: { index: number; term: number } | null = null;
  entries: Entry[] = [];
  lastIndex = 0;
  /**
   * Entries at or below this index were in segments removed by `release()`; the first kept
   * segment may start right after it. `finish()` checks that the snapshot covers the gap.
   */
  base = 0;

  private snapIndex(): number {
    return this.snapshot?.index ?? 0;
  }

  entry(e: Entry): void {
    const first = this.entries[0];
    if (first === undefined) {
      if (e.index > Math.max(this.snapIndex(), this.base) + 1) {
        throw new ReplayError(`entry ${e.index} follows snapshot ${this.snapIndex()} with a gap`);
      }
      this.entries.push(e);
    } else {
      const last = first.index + this.entries.length - 1;
      if (e.index > last + 1)
        throw new ReplayError(`entry ${e.index} follows entry ${last} with a gap`);
      if (e.index < first.index) {
        if (e.index <= this.snapIndex()) return;
        // The first kept segment after a release may hold entries that a later suffix
        // overwrite replaced from below its start; what lies below is checked by finish().
        this.entries = [e];
        this.lastIndex = e.index;
        return;
      }
      this.entries.length = e.index - first.index;
      this.entries.push(e);
    }
    this.lastIndex = e.index;
  }

  /** At the end of replay: the retained entries must join the snapshot. */
  finish(): string | null {
    const first = this.entries[0];
    if (first !== undefined && first.index > this.snapIndex() + 1) {
      return `entries start at ${first.index} but the latest snapshot ends at ${this.snapIndex()}`;
    }
    if (first === undefined && this.base > this.snapIndex()) {
      return `released segments reach ${this.base} beyond the latest snapshot ${this.snapIndex()}`;
    }
    return null;
  }

  /** After replay only the marker and the last index are tracked, not the entries. */
  snapMarker(index: number, term: number): void {
    if (this.snapshot !== null && index <= this.snapshot.index) return;
    this.snapshot = { index, term };
    this.lastIndex = Math.max(this.lastIndex, index);
  }

  snap(index: number, term: number): void {
    if (this.snapshot !== null && index <= this.snapshot.index) return;
    this.snapshot = { index, term };
    const first = this.entries[0];
    // A snapshot taken locally covers entries we hold or held (keep them: the retained tail,
    // or entries above a snapshot below the first kept segment); one received from the leader
    // replaced a log that did not hold its last entry.
    if (first !== undefined && index >= first.index) {
      const held = this.entries[index - first.index];
      if (held === undefined || held.term !== term) this.entries = [];
    }
    this.lastIndex = Math.max(this.lastIndex, index);
  }
}

function decodeRecord(d: Extract<Decoded, { ok: true }>, r: Replay, seg: Segment | null): void {
  const v = d.payload;
  switch (d.type) {
    case RecordType.SegmentHeader: {
      if (d.data.length !== 21 || v.getUint32(0, true) !== MAGIC)
        throw new ReplayError('bad segment header');
      if (v.getUint8(4) !== VERSION)
        throw new ReplayError(`unsupported wal version ${v.getUint8(4)}`);
      if (seg !== null && get64(v, 5) !== seg.seq)
        throw new ReplayError(`header names segment ${get64(v, 5)}`);
      return;
    }
    case RecordType.Entry:
      if (d.data.length < 17) throw new ReplayError('short entry record');
      r.entry({
        index: get64(v, 0),
        term: get64(v, 8),
        type: v.getUint8(16),
        data: new Uint8Array(d.data.subarray(17)),
      });
      return;
    case RecordType.HardState:
      if (d.data.length !== 24) throw new ReplayError('bad hard state record');
      r.hardState = { term: get64(v, 0), vote: get64(v, 8), commit: get64(v, 16) };
      return;
    case RecordType.Snapshot:
      if (d.data.length !== 16) throw new ReplayError('bad snapshot record');
      r.snap(get64(v, 0), get64(v, 8));
      return;
    default:
      throw new ReplayError(`unknown record type ${String(d.type)}`);
  }
}

interface Pending {
  buf: Uint8Array;
  records: WalRecord[];
  sync: boolean;
  resolve: () => void;
  reject: (e: unknown) => void;
}

export class Wal {
  private readonly dir: string;
  private readonly fs: WalFs;
  private readonly now: () => number;
  private readonly segmentBytes: number;
  private segs: Segment[];
  private fh: WalFile;
  private size: number;
  private queue: Pending[] = [];
  private flushing: Promise<void> | null = null;
  private failed: WalFailedError | null = null;
  private closed = false;
  private ioSince = 0;
  private readonly durable: Replay;
  private readonly st: WalStats = {
    syncs: 0,
    appends: 0,
    bytes: 0,
    lastSyncMs: 0,
    maxSyncMs: 0,
    segments: 0,
  };

  private constructor(
    dir: string,
    opts: WalOptions,
    segs: Segment[],
    fh: WalFile,
    size: number,
    durable: Replay,
  ) {
    this.dir = dir;
    this.fs = opts.fs ?? nodeFs;
    this.now = opts.now ?? (() => performance.now());
    this.segmentBytes = opts.segmentBytes ?? 64 * 1024 * 1024;
    this.segs = segs;
    this.fh = fh;
    this.size = size;
    this.durable = durable;
  }

  /** Open (creating if needed) the log in `dir`, replaying and repairing it. */
  static async open(dir: string, opts: WalOptions = {}): Promise<{ wal: Wal; state: WalState }> {
    const fs = opts.fs ?? nodeFs;
    await fs.mkdir(dir);
    // The directory's own entry must be durable before anything in it is relied on.
    await fs.syncDir(dirname(dir));
    const names = await fs.readdir(dir);
    const segs: Segment[] = [];
    for (const n of names) {
      if (n.endsWith('.wal.tmp')) {
        await fs.unlink(join(dir, n));
        continue;
      }
      const m = SEGMENT_RE.exec(n);
      if (m) segs.push({ seq: parseInt(m[1]!, 16), start: parseInt(m[2]!, 16), name: n });
    }
    segs.sort((a, b) => a.seq - b.seq);
    for (let i = 1; i < segs.length; i++) {
      if (segs[i]!.seq !== segs[i - 1]!.seq + 1) {
        throw new WalCorruptError(
          segs[i]!.name,
          0,
          `segment ${segs[i - 1]!.seq + 1} is missing before it`,
        );
      }
    }
    const r = new Replay();
    r.base = segs[0] === undefined ? 0 : segs[0].start - 1;
    let repaired: WalState['repaired'] = null;
    let lastSize = 0;
    for (let i = 0; i < segs.length; i++) {
      const seg = segs[i]!;
      const isLast = i === segs.length - 1;
      const buf = await fs.readFile(join(dir, seg.name));
      let o = 0;
      while (o < buf.length) {
        const d = decodeAt(buf, o);
        if (!d.ok) {
          if (!isLast || o === 0) throw new WalCorruptError(seg.name, o, d.why);
          const fh = await fs.open(join(dir, seg.name), 'r+');
          try {
            await fh.truncate(o);
            await fh.datasync();
          } finally {
            await fh.close();
          }
          repaired = { file: seg.name, offset: o, droppedBytes: buf.length - o };
          break;
        }
        if ((o === 0) !== (d.type === RecordType.SegmentHeader)) {
          throw new WalCorruptError(seg.name, o, 'segment header missing or misplaced');
        }
        try {
          decodeRecord(d, r, seg);
        } catch (why) {
          if (!(why instanceof ReplayError)) throw why;
          throw new WalCorruptError(seg.name, o, why.message);
        }
        o = d.next;
      }
      if (o === 0) throw new WalCorruptError(seg.name, 0, 'empty segment');
      lastSize = o;
    }
    const bad = r.finish();
    if (bad !== null) throw new WalCorruptError(segs[0]!.name, 0, bad);
    const state: WalState = {
      hardState: { ...r.hardState },
      snapshot: r.snapshot === null ? null : { ...r.snapshot },
      entries: r.entries,
      repaired,
    };
    r.entries = [];
    let fh: WalFile;
    let size: number;
    const last = segs[segs.length - 1];
    if (last === undefined) {
      const seg = { seq: 1, start: 1, name: segmentName(1, 1) };
      ({ fh, size } = await Wal.createSegment(fs, dir, seg, r));
      segs.push(seg);
    } else {
      fh = await fs.open(join(dir, last.name), 'r+');
      size = lastSize;
    }
    const wal = new Wal(dir, opts, segs, fh, size, r);
    return { wal, state };
  }

  private static async createSegment(
    fs: WalFs,
    dir: string,
    seg: Segment,
    state: Replay,
  ): Promise<{ fh: WalFile; size: number }> {
    const extra: WalRecord[] = [];
    if (state.snapshot !== null) {
      extra.push({
        type: RecordType.Snapshot,
        index: state.snapshot.index,
        term: state.snapshot.term,
      });
    }
    extra.push({ type: RecordType.HardState, hardState: { ...state.hardState } });
    const head = encodeHeader(seg.seq, seg.start);
    const rest = encodeRecords(extra);
    const buf = new Uint8Array(head.length + rest.length);
    buf.set(head);
    buf.set(rest, head.length);
    const tmp = join(dir, `${seg.name}.tmp`);
    const fh = await fs.open(tmp, 'w+');
    try {
      await writeFully(fh, buf, 0);
      await fh.datasync();
      await fs.rename(tmp, join(dir, seg.name));
      await fs.syncDir(dir);
    } catch (e) {
      await fh.close();
      throw e;
    }
    return { fh, size: buf.length };
  }

  /**
   * Append `records` (in order). Resolves once they are durable (`sync`) or written (`!sync`,
   * e.g. a Ready whose `mustSync` is false: only the commit index changed). Concurrent appends
   * share one write and one fdatasync.
   */
  append(records: WalRecord[], sync = true): Promise<void> {
    if (this.failed !== null) return Promise.reject(this.failed);
    if (this.closed) return Promise.reject(new WalFailedError('append', 'wal is closed'));
    const buf = encodeRecords(records);
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ buf, records, sync, resolve, reject });
      this.flushing ??= this.flushLoop();
    });
  }

  private async flushLoop(): Promise<void> {
    // Let appends made in the same tick join the first batch.
    await Promise.resolve();
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0);
      try {
        let total = 0;
        for (const p of batch) total += p.buf.length;
        const buf = new Uint8Array(total);
        let o = 0;
        for (const p of batch) {
          buf.set(p.buf, o);
          o += p.buf.length;
        }
        this.ioSince = this.now();
        await writeFully(this.fh, buf, this.size);
        this.size += total;
        if (batch.some((p) => p.sync)) {
          const t0 = this.now();
          await this.fh.datasync();
          const ms = this.now() - t0;
          this.st.syncs++;
          this.st.lastSyncMs = ms;
          this.st.maxSyncMs = Math.max(this.st.maxSyncMs, ms);
        }
        this.ioSince = 0;
        this.st.appends += batch.length;
        this.st.bytes += total;
        for (const p of batch) {
          for (const r of p.records) {
            if (r.type === RecordType.Entry) this.durable.lastIndex = r.entry.index;
            else if (r.type === RecordType.HardState) this.durable.hardState = r.hardState;
            else this.durable.snapMarker(r.index, r.term);
          }
        }
        for (const p of batch) p.resolve();
        if (this.size >= this.segmentBytes) await this.rotate();
      } catch (e) {
        this.ioSince = 0;
        this.failed = e instanceof WalFailedError ? e : new WalFailedError('write', e);
        for (const p of batch) p.reject(this.failed);
        for (const p of this.queue.splice(0)) p.reject(this.failed);
        break;
      }
    }
    this.flushing = null;
  }

  private async rotate(): Promise<void> {
    try {
      await this.fh.datasync();
      const seq = this.segs[this.segs.length - 1]!.seq + 1;
      const seg = {
        seq,
        start: this.durable.lastIndex + 1,
        name: segmentName(seq, this.durable.lastIndex + 1),
      };
      const { fh, size } = await Wal.createSegment(this.fs, this.dir, seg, this.durable);
      const old = this.fh;
      this.fh = fh;
      this.size = size;
      this.segs.push(seg);
      await old.close();
    } catch (e) {
      throw new WalFailedError('rotate', e);
    }
  }

  /**
   * Delete segments whose entries are all at or below `index`, which must not exceed the latest
   * durable snapshot marker. Segment k may go when segment k+1 starts at or below `index + 1`:
   * every entry of the final log at or above a segment's start index was written into it or a
   * later one. Replay then starts at the first kept segment's start index; the later segments
   * hold the snapshot marker (or their headers repeat it) and the hard state, and `open` checks
   * that the snapshot reaches the first retained entry. Returns the number of segments removed.
   */
  async release(index: number): Promise<number> {
    const snap = this.durable.snapshot?.index ?? 0;
    invariant(index <= snap, `wal release ${index} beyond the durable snapshot ${snap}`);
    let n = 0;
    while (this.segs.length > 1 && this.segs[1]!.start <= index + 1) {
      this.segs.shift();
      n++;
    }
    if (n === 0) return 0;
    const names = await this.fs.readdir(this.dir);
    const keep = new Set(this.segs.map((s) => s.name));
    const first = this.segs[0]!.seq;
    // Oldest first, so that a crash part-way leaves a contiguous run of segments.
    const doomed = names
      .map((name) => ({ name, m: SEGMENT_RE.exec(name) }))
      .filter((x) => x.m !== null && !keep.has(x.name) && parseInt(x.m[1]!, 16) < first)
      .sort((a, b) => (a.name < b.name ? -1 : 1));
    // One directory fsync per removal: whatever order the file system persists unsynced
    // removals in, a crash never leaves a hole in the sequence (compaction is rare).
    for (const d of doomed) {
      await this.fs.unlink(join(this.dir, d.name));
      await this.fs.syncDir(this.dir);
    }
    return n;
  }

  /** Milliseconds the write or fdatasync in flight has been running; 0 when the disk is idle. */
  stallMs(): number {
    return this.ioSince === 0 ? 0 : Math.max(0, this.now() - this.ioSince);
  }

  stats(): WalStats {
    return { ...this.st, segments: this.segs.length };
  }

  /** Segment file names, oldest first. */
  segments(): string[] {
    return this.segs.map((s) => s.name);
  }

  /** Index of the latest durable snapshot marker (0 if none). */
  snapshotIndex(): number {
    return this.durable.snapshot?.index ?? 0;
  }

  /** Wait for queued appends, then close the current segment. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    while (this.flushing !== null) await this.flushing;
    await this.fh.close();
  }
}

async function writeFully(fh: WalFile, buf: Uint8Array, position: number): Promise<void> {
  let o = 0;
  // A regular file write returns short only on ENOSPC-like conditions; bound the retries.
  for (let tries = 0; o < buf.length; tries++) {
    if (tries > 64) throw new Error(`short writes at offset ${position + o}`);
    const { bytesWritten } = await fh.write(buf, o, buf.length - o, position + o);
    o += bytesWritten;
  }
}
