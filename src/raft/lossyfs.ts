/**
 * A test-only `WalFs` that keeps file writes in process memory until the file is fdatasync'ed,
 * so that `kill -9` loses exactly what a power cut may lose: every byte written but not yet
 * synced. With the real file system a killed process loses nothing that reached `write(2)`
 * (the page cache survives it), so a crash test on real processes would never exercise the
 * "unsynced writes are gone" half of recovery without this.
 *
 * Model: each file (by path, following renames) has an ordered list of unsynced changes
 * (writes and truncations). The process sees its own changes (`readFile` overlays them on the
 * real contents); `datasync()` on any handle of the file applies the list to the real file in
 * order, then fdatasyncs it, as fsync(2) writes back every dirty page of the inode whatever
 * descriptor dirtied it. Changes still listed when a handle is closed stay pending (a later
 * sync of the same file writes them); `unlink` or being renamed over discards them.
 * Directory operations (create, rename, unlink) go straight to the real file system: they
 * are not made lossy, so a lost directory entry is not simulated here (the WAL's own
 * power-cut test, test/unit/raft-wal-crash.test.ts, covers those on a simulated disk).
 *
 * Enabled in meshd by MESH_TEST_LOSSY_FS=1 (`lossyFsFromEnv`); never for production use: it
 * only delays writes, so it is as durable as the real disk at every sync, but a clean exit
 * without a sync loses data too.
 *
 * I/O module: may import node:fs/promises and ./wal.js.
 */

import * as fsp from 'node:fs/promises';
import { nodeFs, type WalFile, type WalFs } from './wal.js';

type Change = { kind: 'write'; pos: number; data: Uint8Array } | { kind: 'truncate'; len: number };

/** Unsynced state of one file. */
interface Dirty {
  changes: Change[];
}

export interface LossyFsStats {
  /** Changes written to real files at a sync. */
  flushed: number;
  /** Bytes written to real files at a sync. */
  flushedBytes: number;
  /** Changes discarded by `crash()` (what a kill -9 would have lost). */
  lost: number;
  lostBytes: number;
}

export interface LossyFs extends WalFs {
  /**
   * Simulate a crash inside this process (tests): close every real descriptor without
   * writing what is pending and forget it. The object is unusable afterwards.
   */
  crash(): Promise<void>;
  /** Bytes written but not yet synced, over all files. */
  pendingBytes(): number;
  stats(): LossyFsStats;
}

function changeBytes(c: Change): number {
  return c.kind === 'write' ? c.data.length : 0;
}

/** Apply `changes` in order to a copy of `base` (what the process should read back). */
function overlay(base: Uint8Array, changes: readonly Change[]): Uint8Array {
  let buf = base;
  for (const c of changes) {
    if (c.kind === 'truncate') {
      if (c.len <= buf.length) buf = buf.slice(0, c.len);
      else {
        const b = new Uint8Array(c.len);
        b.set(buf);
        buf = b;
      }
      continue;
    }
    const end = c.pos + c.data.length;
    if (end > buf.length) {
      const b = new Uint8Array(end);
      b.set(buf);
      buf = b;
    } else if (buf === base) buf = buf.slice();
    buf.set(c.data, c.pos);
  }
  return buf;
}

/** A lossy file system over the real one (see the module comment). */
export function lossyFs(): LossyFs {
  const dirty = new Map<string, Dirty>();
  const open = new Set<fsp.FileHandle>();
  const st: LossyFsStats = { flushed: 0, flushedBytes: 0, lost: 0, lostBytes: 0 };
  /** Open handles by the path they now have (a rename moves them). */
  const handles = new Set<{ name: string }>();
  let crashed = false;

  const alive = (): void => {
    if (crashed) throw new Error('lossy fs: used after crash()');
  };
  /** Run `f` now (the change is recorded in call order) and settle as an async call would. */
  const later = <T>(f: () => T): Promise<T> => {
    try {
      alive();
      return Promise.resolve(f());
    } catch (e) {
      return Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
  };
  const dirtyOf = (path: string): Dirty => {
    let d = dirty.get(path);
    if (d === undefined) dirty.set(path, (d = { changes: [] }));
    return d;
  };

  /** Write the pending changes of `d` through `fh`, oldest first, each dropped once applied. */
  async function flush(fh: fsp.FileHandle, d: Dirty): Promise<void> {
    // Bounded: every turn removes one change; changes queued meanwhile are written too.
    for (let n = 0; n < 1_000_000 && d.changes.length > 0; n++) {
      const c = d.changes[0]!;
      if (c.kind === 'truncate') await fh.truncate(c.len);
      else {
        let o = 0;
        for (let tries = 0; o < c.data.length; tries++) {
          if (tries > 64) throw new Error(`lossy fs: short writes at offset ${c.pos + o}`);
          o += (await fh.write(c.data, o, c.data.length - o, c.pos + o)).bytesWritten;
        }
      }
      if (crashed) return;
      d.changes.shift();
      st.flushed++;
      st.flushedBytes += changeBytes(c);
    }
  }

  const fs: LossyFs = {
    async open(path, flags) {
      alive();
      const fh = await fsp.open(path, flags);
      open.add(fh);
      // Opening with 'w' truncates the real file at once; older unsynced changes are void.
      if (flags.startsWith('w')) dirty.delete(path);
      const self = { name: path };
      handles.add(self);
      const file: WalFile = {
        write: (buf, offset, length, position) =>
          later(() => {
            dirtyOf(self.name).changes.push({
              kind: 'write',
              pos: position,
              data: buf.slice(offset, offset + length),
            });
            return { bytesWritten: length };
          }),
        truncate: (len) =>
          later(() => {
            dirtyOf(self.name).changes.push({ kind: 'truncate', len });
          }),
        async datasync() {
          alive();
          const d = dirty.get(self.name);
          if (d !== undefined) {
            await flush(fh, d);
            if (d.changes.length === 0 && dirty.get(self.name) === d) dirty.delete(self.name);
          }
          alive();
          await fh.datasync();
        },
        async close() {
          handles.delete(self);
          open.delete(fh);
          await fh.close();
        },
      };
      return file;
    },
    async readFile(path) {
      alive();
      const base = await fsp.readFile(path);
      const d = dirty.get(path);
      return d === undefined ? base : overlay(base, d.changes);
    },
    readdir: (d) => (alive(), nodeFs.readdir(d)),
    async rename(from, to) {
      alive();
      await nodeFs.rename(from, to);
      const d = dirty.get(from);
      dirty.delete(to);
      if (d !== undefined) {
        dirty.delete(from);
        dirty.set(to, d);
      }
      for (const h of handles) if (h.name === from) h.name = to;
    },
    async unlink(path) {
      alive();
      await nodeFs.unlink(path);
      dirty.delete(path);
    },
    mkdir: (d) => (alive(), nodeFs.mkdir(d)),
    syncDir: (d) => (alive(), nodeFs.syncDir(d)),
    async crash() {
      if (crashed) return;
      crashed = true;
      for (const d of dirty.values()) {
        for (const c of d.changes) {
          st.lost++;
          st.lostBytes += changeBytes(c);
        }
      }
      dirty.clear();
      for (const fh of open) await fh.close().catch(() => undefined);
      open.clear();
    },
    pendingBytes() {
      let n = 0;
      for (const d of dirty.values()) for (const c of d.changes) n += changeBytes(c);
      return n;
    },
    stats: () => ({ ...st }),
  };
  return fs;
}
