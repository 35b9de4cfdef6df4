/**
 * This node's cluster identity on disk: `state.json` (node id, raft id, cluster id, role, the
 * managers it knows) and `certificates/` (CA certificate, node key, node certificate) under the
 * data directory. Written atomically (temp file, fsync, rename, directory fsync) so a crash
 * leaves either the old or the new state, never half of one.
 *
 * May import node:fs, node:path, node:crypto, src/util.
 */

import { randomInt } from 'node:crypto';
import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { MeshError } from '../../util/errors.js';

export type Role = 'manager' | 'worker';

export interface ManagerAddr {
  raftId: number;
  nodeId: string;
  /** ip:port of its control listener (2377). */
  addr: string;
}

export interface NodeState {
  nodeId: string;
  clusterId: string;
  role: Role;
  /** Raft member id while a manager; a new one each time the node becomes a manager. */
  raftId?: number;
  advertiseAddr: string;
  /** ip:port this manager listens on for raft and RPC. */
  listenAddr: string;
  /** Managers last known (a worker dials these; a manager's own entry included). */
  managers: ManagerAddr[];
}

export interface Credentials {
  caPem: string;
  keyPem: string;
  certPem: string;
}

/** Raft ids go into u32 fields of conf change entries; removed ids are never reused. */
export function newRaftId(): number {
  return randomInt(1, 0xffffffff);
}

export function writeFileAtomic(path: string, data: string, mode = 0o600): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w', mode);
  try {
    writeSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  const dfd = openSync(dirname(path), 'r');
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}

export class NodeFiles {
  constructor(readonly dataDir: string) {}

  get raftDir(): string {
    return join(this.dataDir, 'raft');
  }
  private get statePath(): string {
    return join(this.dataDir, 'state.json');
  }
  private cert(name: string): string {
    return join(this.dataDir, 'certificates', name);
  }

  loadState(): NodeState | null {
    let text: string;
    try {
      text = readFileSync(this.statePath, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
    try {
      return JSON.parse(text) as NodeState;
    } catch {
      throw new MeshError(
        'EDATA',
        `read ${this.statePath}: not valid JSON; restore it from a backup, or remove the data dir ` +
          'and join the cluster again',
      );
    }
  }

  saveState(st: NodeState): void {
    writeFileAtomic(this.statePath, JSON.stringify(st, null, 2) + '\n');
  }

  loadCredentials(): Credentials | null {
    try {
      return {
        caPem: readFileSync(this.cert('ca.crt'), 'utf8'),
        keyPem: readFileSync(this.cert('node.key'), 'utf8'),
        certPem: readFileSync(this.cert('node.crt'), 'utf8'),
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  saveCredentials(c: Credentials): void {
    writeFileAtomic(this.cert('ca.crt'), c.caPem, 0o644);
    writeFileAtomic(this.cert('node.key'), c.keyPem, 0o600);
    writeFileAtomic(this.cert('node.crt'), c.certPem, 0o644);
  }

  /** Forget the cluster: identity, certificates and the raft log (cluster leave). */
  wipe(): void {
    rmSync(this.statePath, { force: true });
    rmSync(join(this.dataDir, 'certificates'), { recursive: true, force: true });
    rmSync(this.raftDir, { recursive: true, force: true });
  }

  /** Remove the raft log only (a demoted manager keeps its identity as a worker). */
  wipeRaft(): void {
    rmSync(this.raftDir, { recursive: true, force: true });
  }
}
