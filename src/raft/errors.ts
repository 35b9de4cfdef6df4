/**
 * Typed errors of the raft core: expected outcomes a caller handles (retry, redirect, wait).
 *
 * Broken invariants are not here: they throw through `invariant()` and crash. May import
 * src/util/errors.ts only.
 */

import { MeshError } from '../util/errors.js';

export class RaftError extends MeshError {}

/** The proposal was not appended: no leader known, leadership transfer in progress, too many
 * uncommitted bytes, a conf change already pending, or this node is not a voter. Retry later,
 * preferably at the leader. */
export class ProposalDroppedError extends RaftError {
  constructor(detail: string) {
    super('ERAFT_PROPOSAL_DROPPED', `raft propose: ${detail}`);
  }
}

/** Storage: the requested index was compacted into a snapshot. */
export class CompactedError extends RaftError {
  constructor(index: number, first: number) {
    super('ERAFT_COMPACTED', `raft storage: index ${index} compacted (first index ${first})`);
  }
}

/** Storage: the requested index is beyond the last index. */
export class UnavailableError extends RaftError {
  constructor(index: number, last: number) {
    super('ERAFT_UNAVAILABLE', `raft storage: index ${index} unavailable (last index ${last})`);
  }
}

/** Storage: a snapshot older than the one already held was offered. */
export class SnapshotOutOfDateError extends RaftError {
  constructor(index: number, have: number) {
    super('ERAFT_SNAP_OUT_OF_DATE', `raft storage: snapshot ${index} older than ${have}`);
  }
}

/** Storage: the snapshot is being generated; the leader retries on a later heartbeat. */
export class SnapshotTemporarilyUnavailableError extends RaftError {
  constructor() {
    super('ERAFT_SNAP_UNAVAILABLE', 'raft storage: snapshot temporarily unavailable');
  }
}

/** A conf change the membership rules refuse (removed id reused, learner removal of last voter…). */
export class ConfChangeRejectedError extends RaftError {
  constructor(detail: string) {
    super('ERAFT_CONF_CHANGE', `raft conf change: ${detail}`);
  }
}

/** A message step() refuses, e.g. a local-only message type arriving from the network. */
export class StepRejectedError extends RaftError {
  constructor(detail: string) {
    super('ERAFT_STEP', `raft step: ${detail}`);
  }
}
