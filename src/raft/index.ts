/**
 * Public surface of the raft core (pure, deterministic). Drivers (WAL, transport, manager)
 * import from here. May import the src/raft core modules only.
 */

export { DEFAULT_RAFT_CONFIG, raftConfig, validateConfig, type RaftConfig } from './config.js';
export { decodeConfChange, encodeConfChange, nextConfState } from './confchange.js';
export * from './errors.js';
export { ProgressState } from './progress.js';
export { SeededRandom, type RaftRandom } from './random.js';
export { SessionTable, type SessionEntry } from './sessions.js';
export { RawNode, type ProgressStatus, type Status } from './rawnode.js';
export { MemoryStorage, type InitialState, type Storage } from './storage.js';
export * from './types.js';
