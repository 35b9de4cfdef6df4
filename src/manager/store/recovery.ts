/**
 * Quorum-loss recovery: `meshd --force-new-cluster` on a surviving manager. The committed state
 * in its log is kept; the raft membership is rewritten to this manager alone, so it leads at
 * once and the others can be joined again (as new members: old raft ids are never reused).
 *
 * How: replay the local log up to the commit index into a store, then replace the raft
 * directory (the old one is kept beside it as raft.old-<time>) with a snapshot of that store at
 * the same index and term whose membership is just this node. Uncommitted entries are dropped:
 * they were never acknowledged to anyone.
 *
 * May import src/raft, ./store.ts, src/manager/ca/identity.ts (the node's files), src/util, node built-ins.
 */
import { renameSync } from 'node:fs';
import { DiskStorage } from '../../raft/diskstorage.js';
import { EntryType, type Ready } from '../../raft/index.js';
import { MeshError } from '../../util/errors.js';
import { createLogger } from '../../util/log.js';
import type { NodeFiles, NodeState } from '../ca/identity.js';
import { Store } from './store.js';

const log = createLogger('recovery');

export async function forceNewCluster(files: NodeFiles, state: NodeState): Promise<void> {
  const self = state.raftId;
  if (self === undefined) {
    throw new MeshError('EUSAGE', '--force-new-cluster: this node has no raft id (not a manager)');
  }
  const old = await DiskStorage.open(files.raftDir);
  const hs = old.initialState().hardState;
  const cs = old.initialState().confState;
  const snap = old.snapshot();
  let store = snap.metadata.index > 0 ? Store.restore(snap.data) : new Store();
  const commit = Math.max(hs.commit, snap.metadata.index);
  let index = snap.metadata.index;
  while (index < commit) {
    const ents = old.entries(index + 1, commit + 1, 64 << 20);
    for (const e of ents) {
      if (e.type === EntryType.Normal && e.data.length > 0) store.apply(e.index, e.data);
      index = e.index;
    }
  }
  const term = commit > 0 ? old.term(commit) : 0;
  await old.close();
  const removed = [...new Set([...cs.voters, ...cs.learners, ...cs.removed])].filter(
    (id) => id !== self,
  );
  const backup = `${files.raftDir}.old-${Date.now()}`;
  renameSync(files.raftDir, backup);
  const fresh = await DiskStorage.open(files.raftDir);
  const rd: Ready = {
    readStates: [],
    entries: [],
    committedEntries: [],
    messages: [],
    persistedMessages: [],
    mustSync: true,
    snapshot: {
      metadata: { index: commit, term, confState: { voters: [self], learners: [], removed } },
      data: store.snapshot(),
    },
    hardState: { term: hs.term, vote: 0, commit },
  };
  await fresh.save(rd);
  await fresh.close();
  store = Store.restore(rd.snapshot!.data);
  log.warn('forced a new cluster from the local state', {
    index: commit,
    term,
    removedMembers: removed.join(','),
    oldLog: backup,
    nodes: store.count('node'),
  });
}
