/**
 * SWIM core configuration (the protocol half of hashicorp/memberlist's config.go): every field
 * with its unit, default, which way to tune it and what that costs; frozen LAN/WAN/Local presets
 * with memberlist's values; validateConfig() naming the bad field. Identity (name, address) is
 * not here: it is passed to the core itself. May import src/util/errors.ts.
 */

import { UsageError } from '../util/errors.js';

export interface SwimConfig {
  /**
   * Milliseconds between failure-detection probes (one member per round, round-robin over a
   * shuffled list). Default 1000 (LAN), 5000 (WAN). Lower detects failures sooner at the cost
   * of more ping/ack traffic; each node sends one ping per interval whatever the cluster size.
   * Scaled by the local health multiplier (Lifeguard §3.1) when this node looks unhealthy.
   */
  probeInterval: number;
  /**
   * Milliseconds to wait for a direct ack before asking `indirectChecks` members to probe the
   * target for us. Default 500 (LAN), 3000 (WAN), 200 (Local). Should be about the 99th
   * percentile RTT: lower gives the indirect path more time but sends more indirect pings on a
   * slow network. Not scaled by health (waiting longer does not help UDP through).
   */
  probeTimeout: number;
  /**
   * Members asked to probe a target indirectly after a direct ping fails. Default 3 (LAN/WAN),
   * 1 (Local). Higher makes a false suspicion from one lossy path less likely and costs
   * 2·indirectChecks extra packets per failed probe.
   */
  indirectChecks: number;
  /**
   * Minimum suspicion time = suspicionMult · max(1, log10(N)) · probeInterval, before a suspect
   * is declared dead. Default 4 (LAN), 6 (WAN), 3 (Local). Higher gives a slow or overloaded node
   * more time to refute (fewer false positives) and delays detection of real failures.
   * Also sets the confirmations that shorten a suspicion: suspicionMult − 2 (Lifeguard §3.2).
   */
  suspicionMult: number;
  /**
   * Maximum suspicion time as a multiple of the minimum: a suspicion starts at the maximum and
   * decays towards the minimum as independent members confirm it. Default 6 (all presets).
   * Higher protects better against a single confused accuser; costs detection time when no one
   * else confirms (for example in a two-node cluster).
   */
  suspicionMaxTimeoutMult: number;
  /**
   * Milliseconds between piggyback gossip rounds to `gossipNodes` random members. Default 200
   * (LAN), 500 (WAN), 100 (Local). Lower spreads updates faster and sends more packets; rounds
   * with nothing queued send nothing.
   */
  gossipInterval: number;
  /** Random members gossiped to per round. Default 3 (LAN/Local), 4 (WAN). Higher spreads
   * faster at the cost of proportionally more packets per round. */
  gossipNodes: number;
  /**
   * Milliseconds a dead (or left) member is still gossiped to, so it can learn it was declared
   * dead and refute; also how long dead members stay in the member list before they are reaped
   * (removed when the probe list wraps). Default 30000 (LAN), 60000 (WAN), 15000 (Local). Longer
   * gives partitioned nodes more time to rejoin by themselves; costs memory and wasted packets.
   */
  gossipToTheDeadTime: number;
  /**
   * Milliseconds between full state exchanges (push/pull over a stream) with one random member:
   * anti-entropy that repairs what gossip lost. Default 30000 (LAN), 60000 (WAN), 15000 (Local);
   * 0 disables it. Scaled up by ceil(log2(N) − log2(32)) + 1 above 32 members. Lower converges
   * faster after partitions; each exchange costs O(N) bytes on both sides.
   */
  pushPullInterval: number;
  /**
   * Retransmissions of each broadcast = retransmitMult · ceil(log10(N + 1)). Default 4
   * (LAN/WAN), 2 (Local). Higher makes delivery to every member more likely under loss at the
   * cost of bandwidth.
   */
  retransmitMult: number;
  /**
   * Upper bound of the local health multiplier (Lifeguard §3.1): the probe interval is scaled by
   * up to this factor while this node misses acks and nacks. Default 8. 1 disables Lifeguard's
   * local health awareness. Higher slows an unhealthy node's probing further (fewer false
   * accusations from it) and its detection of real failures.
   */
  awarenessMaxMultiplier: number;
  /**
   * Milliseconds after which a dead member's name may be claimed by a different address.
   * Default 0: never (an alive from another address is a conflict while the old entry is
   * dead; a left member may always be replaced). Set it where addresses are reused on restart.
   */
  deadNodeReclaimTime: number;
  /**
   * When a UDP probe fails, also ping the target over a stream (memberlist's TCP fallback,
   * protocol ≥ 3), so a node whose UDP is blocked is not declared dead. Default true. Disable to
   * save a TCP connection per failed probe, or when streams are known not to work.
   */
  tcpPings: boolean;
  /**
   * Milliseconds a stream exchange (push/pull, TCP ping) may take before the driver gives up.
   * Default 10000 (LAN), 30000 (WAN), 1000 (Local). Longer tolerates slow links; shorter frees
   * a failed join or anti-entropy round sooner.
   */
  tcpTimeout: number;
  /**
   * Largest UDP payload in bytes the core fills with a message plus piggybacked broadcasts.
   * Default 1400 (fits a 1500-byte MTU with room for IP/UDP and CRC). Larger carries more
   * broadcasts per packet but risks IP fragmentation and loss.
   */
  udpBufferSize: number;
}

export const LAN_CONFIG: Readonly<SwimConfig> = Object.freeze({
  probeInterval: 1000,
  probeTimeout: 500,
  indirectChecks: 3,
  suspicionMult: 4,
  suspicionMaxTimeoutMult: 6,
  gossipInterval: 200,
  gossipNodes: 3,
  gossipToTheDeadTime: 30_000,
  pushPullInterval: 30_000,
  retransmitMult: 4,
  awarenessMaxMultiplier: 8,
  deadNodeReclaimTime: 0,
  tcpPings: true,
  tcpTimeout: 10_000,
  udpBufferSize: 1400,
});

/** memberlist's DefaultWANConfig: slower probing and longer timeouts for high RTTs. */
export const WAN_CONFIG: Readonly<SwimConfig> = Object.freeze({
  ...LAN_CONFIG,
  tcpTimeout: 30_000,
  suspicionMult: 6,
  pushPullInterval: 60_000,
  probeTimeout: 3000,
  probeInterval: 5000,
  gossipNodes: 4,
  gossipInterval: 500,
  gossipToTheDeadTime: 60_000,
});

/** memberlist's DefaultLocalConfig: one host or a very low-latency network. */
export const LOCAL_CONFIG: Readonly<SwimConfig> = Object.freeze({
  ...LAN_CONFIG,
  tcpTimeout: 1000,
  indirectChecks: 1,
  retransmitMult: 2,
  suspicionMult: 3,
  pushPullInterval: 15_000,
  probeTimeout: 200,
  probeInterval: 1000,
  gossipInterval: 100,
  gossipToTheDeadTime: 15_000,
});

interface Rule {
  field: keyof SwimConfig;
  min: number;
  int?: boolean;
  why: string;
}

const rules: Rule[] = [
  { field: 'probeInterval', min: 1, why: 'milliseconds between probes' },
  { field: 'probeTimeout', min: 1, why: 'milliseconds to wait for an ack' },
  { field: 'indirectChecks', min: 0, int: true, why: 'a member count' },
  { field: 'suspicionMult', min: 1, int: true, why: 'a multiplier' },
  { field: 'suspicionMaxTimeoutMult', min: 1, int: true, why: 'a multiplier' },
  { field: 'gossipInterval', min: 1, why: 'milliseconds between gossip rounds' },
  { field: 'gossipNodes', min: 0, int: true, why: 'a member count' },
  { field: 'gossipToTheDeadTime', min: 0, why: 'milliseconds' },
  { field: 'pushPullInterval', min: 0, why: 'milliseconds, 0 to disable' },
  { field: 'retransmitMult', min: 1, int: true, why: 'a multiplier' },
  { field: 'awarenessMaxMultiplier', min: 1, int: true, why: 'a multiplier, 1 to disable' },
  { field: 'deadNodeReclaimTime', min: 0, why: 'milliseconds, 0 for never' },
  { field: 'tcpTimeout', min: 1, why: 'milliseconds' },
  { field: 'udpBufferSize', min: 64, int: true, why: 'bytes' },
];

/** Throws a UsageError naming the first bad field; returns a frozen copy otherwise. */
export function validateConfig(c: SwimConfig): Readonly<SwimConfig> {
  for (const r of rules) {
    const v = c[r.field];
    if (
      typeof v !== 'number' ||
      !Number.isFinite(v) ||
      v < r.min ||
      (r.int && !Number.isInteger(v))
    ) {
      throw new UsageError(
        `validate gossip config: ${r.field} is ${String(v)}, want ${r.int ? 'an integer' : 'a number'} >= ${r.min} (${r.why})`,
      );
    }
  }
  if (typeof c.tcpPings !== 'boolean') {
    throw new UsageError(
      `validate gossip config: tcpPings is ${String(c.tcpPings)}, want a boolean`,
    );
  }
  if (c.probeTimeout > c.probeInterval) {
    throw new UsageError(
      `validate gossip config: probeTimeout (${c.probeTimeout} ms) exceeds probeInterval ` +
        `(${c.probeInterval} ms); the indirect probe would get no time (raise probeInterval)`,
    );
  }
  return Object.freeze({ ...c });
}
