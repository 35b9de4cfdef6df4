/**
 * Raft core data types: log entries, messages, persistent and volatile state, Ready.
 *
 * Pure data, no behaviour. May import nothing. The numeric enums below will be written to the
 * WAL and sent between managers: their values are on the wire and on disk, never renumber them.
 */

/** Node ids are positive integers; 0 means "nobody" (no leader, no vote). */
export const NONE = 0;

/** On disk and on the wire: never renumber. */
export enum EntryType {
  Normal = 0,
  ConfChange = 1,
}

export interface Entry {
  term: number;
  index: number;
  type: EntryType;
  /** Opaque command bytes; an empty Normal entry is the leader's no-op. */
  data: Uint8Array;
}

/** On the wire: never renumber. */
export enum MessageType {
  /** Local: election timeout fired or campaign() was called. */
  Hup = 0,
  /** Local: leader heartbeat timeout fired. */
  Beat = 1,
  Prop = 2,
  App = 3,
  AppResp = 4,
  Vote = 5,
  VoteResp = 6,
  Snap = 7,
  Heartbeat = 8,
  HeartbeatResp = 9,
  /** Local: the transport could not reach a peer. */
  Unreachable = 10,
  /** Local: the transport finished (or failed) sending a snapshot. */
  SnapStatus = 11,
  /** Local: the leader checks that it heard from a quorum in the last election timeout. */
  CheckQuorum = 12,
  TransferLeader = 13,
  TimeoutNow = 14,
  ReadIndex = 15,
  ReadIndexResp = 16,
  PreVote = 17,
  PreVoteResp = 18,
}

export interface Message {
  type: MessageType;
  from: number;
  to: number;
  /** Sender's term; 0 for local messages. */
  term: number;
  /** App: term of the entry at `index`. Rejected AppResp: term at `rejectHint`. Vote: last log term. */
  logTerm: number;
  /** App: index preceding `entries`. AppResp: last index matched (or rejected index). Vote: last index. */
  index: number;
  entries: Entry[];
  commit: number;
  reject: boolean;
  rejectHint: number;
  snapshot?: Snapshot;
  /** ReadIndex/Heartbeat: the read request context. Vote: CAMPAIGN_TRANSFER for a forced election. */
  context?: Uint8Array;
}

/** One-at-a-time membership changes. On disk: never renumber. */
export enum ConfChangeType {
  AddVoter = 0,
  AddLearner = 1,
  RemoveNode = 2,
  PromoteLearner = 3,
}

export interface ConfChange {
  type: ConfChangeType;
  nodeId: number;
  /** Opaque to the core (e.g. the new member's address), carried to the driver on apply. */
  context?: Uint8Array;
}

export interface ConfState {
  voters: number[];
  learners: number[];
  /** Every id ever removed; never admitted again. */
  removed: number[];
}

export interface SnapshotMetadata {
  index: number;
  term: number;
  confState: ConfState;
}

export interface Snapshot {
  metadata: SnapshotMetadata;
  data: Uint8Array;
}

/** Must reach stable storage before any message in `Ready.persistedMessages` is sent. */
export interface HardState {
  term: number;
  vote: number;
  commit: number;
}

export enum StateRole {
  Follower = 0,
  Candidate = 1,
  Leader = 2,
  PreCandidate = 3,
}

export interface SoftState {
  lead: number;
  role: StateRole;
}

/** Answer to a readIndex() call: reads at `index` are linearizable once `applied >= index`. */
export interface ReadState {
  index: number;
  requestCtx: Uint8Array;
}

export interface Ready {
  /** Changed volatile state, for the driver's information (not persisted). */
  softState?: SoftState;
  /** Changed persistent state; write it before sending `persistedMessages`. */
  hardState?: HardState;
  readStates: ReadState[];
  /** Entries to append to stable storage (after truncating any conflicting suffix). */
  entries: Entry[];
  /** A snapshot received from the leader, to persist and load into the state machine. */
  snapshot?: Snapshot;
  /** Committed and already durable entries, to apply in order. */
  committedEntries: Entry[];
  /**
   * May be sent at once, before or during the write of this Ready: the leader's appends and
   * heartbeats (thesis §10.2.1: the leader may write its log in parallel with replicating, since
   * it counts itself towards a commit quorum only after its own write, see `advance`).
   */
  messages: Message[];
  /**
   * Must be sent only after `hardState`, `entries` and `snapshot` are durable: votes, vote
   * grants and append acknowledgements promise state that must survive a crash (Raft paper
   * Figure 2, "respond to RPCs only after updating stable storage"; thesis §3.8).
   */
  persistedMessages: Message[];
  /** True when this Ready must be fsynced (term, vote or entries changed), not just written. */
  mustSync: boolean;
}
