/**
 * netdb timing and sizes. Every field says what it does, its unit and which way to tune it
 * (STYLE.md: memberlist config.go). Defaults are Docker networkdb's (moby libnetwork
 * networkdb/cluster.go: gossip 200 ms to 3 nodes, bulk sync 30 s, tombstones reaped after
 * 30 min, failed nodes after 24 h). May import util/errors only.
 */

import { UsageError } from '../util/errors.js';

export interface NetdbConfig {
  /**
   * Milliseconds between gossip rounds. Each round sends the queued table events of each
   * network to `gossipNodes` random peers of that network, and the queued network join/leave
   * events to `gossipNodes` random members of the cluster. Lower: faster convergence, more
   * packets. @default 200
   */
  gossipIntervalMs: number;
  /**
   * Packets per network per gossip round while its queue is deep (each to the same peers):
   * a burst of writes (a service scaled up) drains that many times faster. 1 is networkdb's
   * behaviour. @default 4
   */
  maxGossipPackets: number;
  /** Peers per network per gossip round. Higher: faster and more redundant, more packets. @default 3 */
  gossipNodes: number;
  /**
   * A queued event is sent for `retransmitMult · ceil(log10(N + 1))` rounds, N the peers of
   * its network (memberlist's retransmit limit). Higher: more robust to loss, more bytes.
   * @default 4
   */
  retransmitMult: number;
  /**
   * Milliseconds between periodic bulk syncs: per network, all entries exchanged with one
   * random peer over the reliable path; the last resort behind digests. @default 30000
   */
  bulkSyncIntervalMs: number;
  /**
   * Milliseconds to wait for the answer to a member's bulk sync (on our join, or when it
   * joins) before asking it again; also the least time between two digest-triggered syncs
   * with one member. @default 5000
   */
  bulkSyncTimeoutMs: number;
  /**
   * Milliseconds between digests: per network, a count and hash of every entry we hold
   * (tombstones included) sent to one random member while our gossip queue of it is empty; a
   * member whose queue is empty too and whose table differs starts a bulk sync with us. Closes
   * whatever gap gossip left (a lost event, a member we did not know yet) in seconds instead of
   * at the next periodic bulk sync. Lower: faster repair, more (small) packets. @default 1000
   */
  digestIntervalMs: number;
  /**
   * Milliseconds a table event for a network we are not in is held (the newest per key),
   * waiting for our own join: members that joined a moment before us gossip to us before we
   * are in. Applied on our join; dropped after this long. @default 10000
   */
  holdMs: number;
  /** Most table events held at once (all networks); beyond it they are dropped. @default 1000 */
  maxHeldEvents: number;
  /**
   * Milliseconds between exchanges of the cluster-wide network membership records with one
   * random member (anti-entropy for network join/leave events). @default 30000
   */
  pushPullIntervalMs: number;
  /** Milliseconds a deleted entry's tombstone is kept (then reaped). @default 1800000 (30 min) */
  reapEntryMs: number;
  /**
   * Milliseconds a network leave record is kept. Longer than `reapEntryMs`, so a stale entry
   * of the node that left is refused for as long as its tombstones live. @default 1830000
   */
  reapNetworkMs: number;
  /**
   * Milliseconds a failed node's entries are kept hidden, waiting for it to come back, before
   * they are removed; also how long a departed node is remembered. @default 86400000 (24 h)
   */
  reapNodeMs: number;
  /**
   * Largest gossip payload (bytes) before the driver's type byte and gossip framing; must fit
   * in one UDP packet with memberlist's headers, label and encryption (udpBufferSize 1400).
   * A single event larger than this still goes alone. @default 1200
   */
  maxPacketBytes: number;
  /**
   * Events learned from a bulk sync are re-gossiped only while the network's queue holds
   * fewer than this (networkdb maxQueueLenBroadcastOnSync). @default 500
   */
  maxRebroadcastQueue: number;
}

export const DEFAULT_CONFIG: Readonly<NetdbConfig> = Object.freeze({
  gossipIntervalMs: 200,
  maxGossipPackets: 4,
  gossipNodes: 3,
  retransmitMult: 4,
  bulkSyncIntervalMs: 30_000,
  bulkSyncTimeoutMs: 5_000,
  digestIntervalMs: 1_000,
  holdMs: 10_000,
  maxHeldEvents: 1_000,
  pushPullIntervalMs: 30_000,
  reapEntryMs: 30 * 60_000,
  reapNetworkMs: 30 * 60_000 + 30_000,
  reapNodeMs: 24 * 3600_000,
  maxPacketBytes: 1200,
  maxRebroadcastQueue: 500,
});

/** Throws a UsageError naming the first bad field. */
export function validateConfig(c: NetdbConfig): void {
  const positive: (keyof NetdbConfig)[] = [
    'gossipIntervalMs',
    'maxGossipPackets',
    'gossipNodes',
    'retransmitMult',
    'bulkSyncIntervalMs',
    'bulkSyncTimeoutMs',
    'digestIntervalMs',
    'holdMs',
    'maxHeldEvents',
    'pushPullIntervalMs',
    'reapEntryMs',
    'reapNetworkMs',
    'reapNodeMs',
    'maxPacketBytes',
    'maxRebroadcastQueue',
  ];
  for (const k of positive) {
    const v = c[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      throw new UsageError(`validate netdb config: ${k} = ${String(v)}, want a positive number`);
    }
  }
  if (c.maxPacketBytes < 256) {
    throw new UsageError(
      `validate netdb config: maxPacketBytes = ${c.maxPacketBytes}, want >= 256`,
    );
  }
  if (c.reapNetworkMs < c.reapEntryMs) {
    throw new UsageError(
      `validate netdb config: reapNetworkMs = ${c.reapNetworkMs} is below reapEntryMs = ${c.reapEntryMs}`,
    );
  }
}
