/**
 * Snapshot files: one file per snapshot, `<index:16 hex>-<term:16 hex>.snap`, written to a
 * `.tmp` name, fdatasync'ed, renamed and the directory fsynced, so a file under its final name
 * is always complete. The WAL's snapshot marker is written only after `save()` resolves; on open
 * the storage loads the file the latest marker names, and files newer than it (a crash between
 * the file and the marker) are removed.
 *
 * Format (little endian): u32 magic "MSNP", u8 version, u64 index, u64 term, three id lists
 * (voters, learners, removed; each a u32 count and u64 ids), u64 data length, data, then a
 * CRC-32C of everything before it.
 *
 * I/O module: may import node:path, ./wal.js (file operations), ./crc32c.js, ./types.js and
 * src/util/errors.ts.
 */

import { dirname, join } from 'node:path';
import { MeshError } from '../util/errors.js';
import { crc32c } from './crc32c.js';
import type { Snapshot } from './types.js';
import { get64, nodeFs, put64, type WalFs } from './wal.js';

const MAGIC = 0x504e534d;
const VERSION = 1;
const SNAP_RE = /^([0-9a-f]{16})-([0-9a-f]{16})\.snap$/;

export class SnapshotCorruptError extends MeshError {
  constructor(file: string, detail: string) {
    super(
      'ESNAP_CORRUPT',
      `load snapshot ${file}: ${detail} (restore the data dir from a backup, or remove this ` +
        `manager and rejoin it with an empty data dir)`,
    );
  }
}

export function snapName(index: number, term: number): string {
  return `${index.toString(16).padStart(16, '0')}-${term.toString(16).padStart(16, '0')}.snap`;
}

export function encodeSnapshot(s: Snapshot): Uint8Array {
  const cs = s.metadata.confState;
  const lists = [cs.voters, cs.learners, cs.removed];
  let size = 4 + 1 + 16 + 8 + s.data.length + 4;
  for (const l of lists) size += 4 + 8 * l.length;
  const buf = new Uint8Array(size);
  const v = new DataView(buf.buffer);
  v.setUint32(0, MAGIC, true);
  v.setUint8(4, VERSION);
  put64(v, 5, s.metadata.index);
  put64(v, 13, s.metadata.term);
  let o = 21;
  for (const l of lists) {
    v.setUint32(o, l.length, true);
    o += 4;
    for (const id of l) {
      put64(v, o, id);
      o += 8;
    }
  }
  put64(v, o, s.data.length);
  o += 8;
  buf.set(s.data, o);
  o += s.data.length;
  v.setUint32(o, crc32c(buf, 0, 0, o), true);
  return buf;
}

export function decodeSnapshot(buf: Uint8Array, file: string): Snapshot {
  if (buf.length < 4 + 1 + 16 + 12 + 8 + 4) throw new SnapshotCorruptError(file, 'file too short');
  const v = new DataView(buf.buffer, buf.byteOffset, buf.length);
  const end = buf.length - 4;
  if (crc32c(buf, 0, 0, end) !== v.getUint32(end, true)) {
    throw new SnapshotCorruptError(file, 'crc mismatch');
  }
  if (v.getUint32(0, true) !== MAGIC) throw new SnapshotCorruptError(file, 'bad magic');
  if (v.getUint8(4) !== VERSION) throw new SnapshotCorruptError(file, `version ${v.getUint8(4)}`);
  const index = get64(v, 5);
  const term = get64(v, 13);
  let o = 21;
  const lists: number[][] = [];
  for (let k = 0; k < 3; k++) {
    if (o + 4 > end) throw new SnapshotCorruptError(file, 'truncated member list');
    const n = v.getUint32(o, true);
    o += 4;
    if (o + 8 * n > end) throw new SnapshotCorruptError(file, 'truncated member list');
    const l: number[] = [];
    for (let i = 0; i < n; i++, o += 8) l.push(get64(v, o));
    lists.push(l);
  }
  if (o + 8 > end) throw new SnapshotCorruptError(file, 'truncated data length');
  const len = get64(v, o);
  o += 8;
  if (o + len !== end) throw new SnapshotCorruptError(file, 'data length mismatch');
  return {
    metadata: {
      index,
      term,
      confState: { voters: lists[0]!, learners: lists[1]!, removed: lists[2]! },
    },
    data: new Uint8Array(buf.subarray(o, end)),
  };
}

export class SnapshotStore {
  readonly dir: string;
  private readonly fs: WalFs;

  private constructor(dir: string, fs: WalFs) {
    this.dir = dir;
    this.fs = fs;
  }

  /** Open `dir` (created if needed), removing leftover temp files. */
  static async open(dir: string, fs: WalFs = nodeFs): Promise<SnapshotStore> {
    await fs.mkdir(dir);
    await fs.syncDir(dirname(dir));
    for (const n of await fs.readdir(dir)) {
      if (n.endsWith('.snap.tmp')) await fs.unlink(join(dir, n));
    }
    return new SnapshotStore(dir, fs);
  }

  /** Durably write `s`; resolves after the file and its directory entry are synced. */
  async save(s: Snapshot): Promise<void> {
    const name = snapName(s.metadata.index, s.metadata.term);
    const tmp = join(this.dir, `${name}.tmp`);
    const buf = encodeSnapshot(s);
    const fh = await this.fs.open(tmp, 'w');
    try {
      let o = 0;
      for (let tries = 0; o < buf.length; tries++) {
        if (tries > 64) throw new Error(`short writes to ${tmp}`);
        o += (await fh.write(buf, o, buf.length - o, o)).bytesWritten;
      }
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await this.fs.rename(tmp, join(this.dir, name));
    await this.fs.syncDir(this.dir);
  }

  async load(index: number, term: number): Promise<Snapshot> {
    const name = snapName(index, term);
    let buf: Uint8Array;
    try {
      buf = await this.fs.readFile(join(this.dir, name));
    } catch (e) {
      throw new SnapshotCorruptError(name, `the wal names it but it cannot be read: ${String(e)}`);
    }
    const s = decodeSnapshot(buf, name);
    if (s.metadata.index !== index || s.metadata.term !== term) {
      throw new SnapshotCorruptError(name, 'contents do not match its name');
    }
    return s;
  }

  /** (index, term) of every snapshot file, oldest first. */
  async list(): Promise<{ index: number; term: number; name: string }[]> {
    const out: { index: number; term: number; name: string }[] = [];
    for (const name of await this.fs.readdir(this.dir)) {
      const m = SNAP_RE.exec(name);
      if (m) out.push({ index: parseInt(m[1]!, 16), term: parseInt(m[2]!, 16), name });
    }
    return out.sort((a, b) => a.index - b.index || a.term - b.term);
  }

  /** Remove every snapshot file except the one at (index, term). */
  async retainOnly(index: number, term: number): Promise<number> {
    const keep = snapName(index, term);
    let n = 0;
    for (const f of await this.list()) {
      if (f.name === keep) continue;
      await this.fs.unlink(join(this.dir, f.name));
      n++;
    }
    if (n > 0) await this.fs.syncDir(this.dir);
    return n;
  }
}
