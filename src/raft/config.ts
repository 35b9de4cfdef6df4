/**
 * Raft core configuration: every field documented with unit and trade-off, frozen presets, and
 * validateConfig() naming the bad field. May import src/util/errors.ts.
 */

import { UsageError } from '../util/errors.js';

export interface RaftConfig {
  /** This node's id (> 0). Never reused after the node is removed. */
  id: number;
  /**
   * Ticks without hearing from a leader before a follower campaigns; the actual timeout is
   * randomized in [electionTick, 2·electionTick). Also the CheckQuorum and lease period. Lower
   * fails over faster but risks spurious elections when ticks or messages are delayed.
   */
  electionTick: number;
  /** Ticks between leader heartbeats. Must be well below electionTick (≥ 3× smaller advised). */
  heartbeatTick: number;
  /** Index already applied by the state machine at restart; entries ≤ it are not re-delivered. */
  applied: number;
  /**
   * Bytes of entries per append message. Larger means fewer messages under load but longer
   * head-of-line blocking and more lost work when a message is dropped.
   */
  maxSizePerMsg: number;
  /** Bytes of committed entries handed to the driver per Ready. */
  maxCommittedSizePerReady: number;
  /** Append messages in flight per follower in replicate state (the pipeline depth). */
  maxInflightMsgs: number;
  /** Bytes in flight per follower; 0 for no byte limit. */
  maxInflightBytes: number;
  /**
   * Bytes of proposed-but-uncommitted entry data the leader accepts before dropping proposals
   * with ProposalDroppedError; bounds memory when followers or disks fall behind. 0 = no limit.
   */
  maxUncommittedEntriesSize: number;
  /**
   * Leader steps down when it has not heard from a quorum within electionTick; followers then
   * also refuse votes while they hear from a leader (the leader lease), so a rejoining node
   * cannot depose a healthy leader.
   */
  checkQuorum: boolean;
  /** Run a pre-election that does not raise terms (thesis §9.6): a partitioned node that
   * rejoins cannot force an election. */
  preVote: boolean;
  /** Drop proposals at followers instead of forwarding them to the leader. */
  disableProposalForwarding: boolean;
}

export const DEFAULT_RAFT_CONFIG: Readonly<Omit<RaftConfig, 'id'>> = Object.freeze({
  electionTick: 10,
  heartbeatTick: 1,
  applied: 0,
  maxSizePerMsg: 1024 * 1024,
  maxCommittedSizePerReady: 4 * 1024 * 1024,
  maxInflightMsgs: 256,
  maxInflightBytes: 0,
  maxUncommittedEntriesSize: 64 * 1024 * 1024,
  checkQuorum: true,
  preVote: true,
  disableProposalForwarding: false,
});

export function raftConfig(id: number, over: Partial<RaftConfig> = {}): RaftConfig {
  return validateConfig({ ...DEFAULT_RAFT_CONFIG, id, ...over });
}

export function validateConfig(c: RaftConfig): RaftConfig {
  const bad = (field: string, why: string): never => {
    throw new UsageError(`raft config: ${field} ${why}`);
  };
  if (!Number.isSafeInteger(c.id) || c.id <= 0) bad('id', 'must be a positive integer');
  if (!Number.isSafeInteger(c.heartbeatTick) || c.heartbeatTick <= 0)
    bad('heartbeatTick', 'must be a positive integer');
  if (!Number.isSafeInteger(c.electionTick) || c.electionTick <= c.heartbeatTick)
    bad('electionTick', 'must be an integer greater than heartbeatTick');
  if (c.maxInflightMsgs <= 0) bad('maxInflightMsgs', 'must be positive');
  if (c.maxSizePerMsg <= 0) bad('maxSizePerMsg', 'must be positive');
  if (c.maxCommittedSizePerReady <= 0) bad('maxCommittedSizePerReady', 'must be positive');
  if (c.maxUncommittedEntriesSize < 0) bad('maxUncommittedEntriesSize', 'must be ≥ 0');
  if (c.maxInflightBytes < 0) bad('maxInflightBytes', 'must be ≥ 0');
  if (c.applied < 0) bad('applied', 'must be ≥ 0');
  return c;
}
