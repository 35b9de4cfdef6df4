/**
 * Which remote peers a network's overlay namespace should hold, from the peer tables and what was
 * programmed before. Pure (the agent passes the clock in).
 *
 * The tables can lose every endpoint of a node at once while its tasks still run: gossip found
 * its meshd dead (kill -9, a slow restart), or this meshd restarted and its tables are still
 * empty. Programming the tables as they are would then delete the node's neighbour/FDB entries,
 * and every request a load balancer sends to its tasks (the managers still list them as running
 * until the node's heartbeats time out) would be lost; test/netns/agent-restart.test.ts saw it.
 * So the last endpoints of a node that vanished from a network's table as a whole are *held*
 * (kept programmed) until the tables list that node again (then the tables rule, which is how an
 * endpoint removed meanwhile goes away) or `holdMs` has passed. Entries for a dead node are
 * harmless: nothing balances to them once the managers mark the node down, and an address given
 * to a new endpoint is taken by the tables' entry (the held one is dropped).
 * May import: overlay/ (types).
 */
import type { Peer } from '../overlay/index.js';

/** A node's endpoints kept programmed since `since` (ms) although the tables lost them. */
export interface Held {
  since: number;
  peers: Peer[];
}

export interface HoldState {
  /** What the last successful programming put in the kernel (remote peers). */
  programmed: readonly Peer[];
  /** By VTEP. */
  held: ReadonlyMap<string, Held>;
}

export interface HoldPlan {
  peers: Peer[];
  held: Map<string, Held>;
  /** VTEPs whose endpoints are held from now on. */
  newlyHeld: string[];
  /** VTEPs the tables list again (released) or whose hold expired. */
  released: string[];
  expired: string[];
  /** When the next hold expires (ms), if any is held. */
  nextExpiry?: number;
}

const bare = (ip: string): string => ip.split('/')[0] ?? ip;

/**
 * `deleted`: VTEPs whose last endpoints their owner deleted (netdb tombstones: the node's tasks
 * were removed on purpose); those are never held, so a removed task leaves every peer at once.
 */
export function planPeerHold(
  fromTables: readonly Peer[],
  prev: HoldState,
  now: number,
  holdMs: number,
  deleted: ReadonlySet<string> = new Set(),
): HoldPlan {
  const inTables = new Set(fromTables.map((p) => p.vtep));
  const held = new Map<string, Held>();
  const released: string[] = [];
  const expired: string[] = [];
  for (const [vtep, h] of prev.held) {
    if (inTables.has(vtep)) released.push(vtep);
    else if (now - h.since >= holdMs) expired.push(vtep);
    else held.set(vtep, h);
  }
  const gone = new Set([...released, ...expired]);
  const newlyHeld: string[] = [];
  for (const p of prev.programmed) {
    if (inTables.has(p.vtep) || gone.has(p.vtep) || deleted.has(p.vtep)) continue;
    let h = held.get(p.vtep);
    if (!h) {
      h = { since: now, peers: [] };
      held.set(p.vtep, h);
      newlyHeld.push(p.vtep);
    }
    if (newlyHeld.includes(p.vtep)) h.peers.push(p);
  }
  const ips = new Set(fromTables.map((p) => bare(p.ip)));
  const macs = new Set(fromTables.map((p) => p.mac.toLowerCase()));
  const peers = [...fromTables];
  let nextExpiry: number | undefined;
  for (const h of held.values()) {
    nextExpiry = Math.min(nextExpiry ?? Infinity, h.since + holdMs);
    for (const p of h.peers) {
      // An address or MAC the tables give to another endpoint now is theirs.
      if (ips.has(bare(p.ip)) || macs.has(p.mac.toLowerCase())) continue;
      ips.add(bare(p.ip));
      macs.add(p.mac.toLowerCase());
      peers.push(p);
    }
  }
  return {
    peers,
    held,
    newlyHeld,
    released,
    expired,
    ...(nextExpiry !== undefined ? { nextExpiry } : {}),
  };
}
