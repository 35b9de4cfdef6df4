/**
 * The load balancer's self-check, planned: which backends on other nodes the data path cannot
 * reach, so they are taken out of rotation until it can. A remote backend is reachable from this
 * node only through the overlay's static ARP and FDB entries for its address (the vxlan device
 * neither learns nor floods); when they are missing (a peer-table event lost, an entry deleted
 * by hand) every connection balanced to it is lost, while the managers' view — which the load
 * balancer otherwise trusts — says it is fine (issue 13). Pure: the driver (src/lb/mesh.ts)
 * reads the kernel and the clock.
 * May import: nothing.
 */

export interface ReachBackend {
  ip: string;
  /** The backend's node; backends on this node are on the local bridge, always reachable. */
  node?: string;
}

export interface ReachPlan {
  /** Unreachable backend addresses → since when (ms). */
  unreachable: Map<string, number>;
  /** Newly unreachable (to log and count once). */
  lost: string[];
  /** Reachable again. */
  back: string[];
}

/**
 * `reachable`: the remote addresses the overlay namespace holds ARP + FDB entries for.
 * `prev`: the unreachable set of the last check (addresses no longer backends are forgotten).
 */
export function planReach(
  backends: readonly ReachBackend[],
  selfNode: string,
  reachable: ReadonlySet<string>,
  prev: ReadonlyMap<string, number>,
  now: number,
): ReachPlan {
  const unreachable = new Map<string, number>();
  const lost: string[] = [];
  const back: string[] = [];
  const seen = new Set<string>();
  for (const b of backends) {
    if (seen.has(b.ip)) continue;
    seen.add(b.ip);
    const remote = b.node !== undefined && b.node !== selfNode;
    if (remote && !reachable.has(b.ip)) {
      const since = prev.get(b.ip);
      unreachable.set(b.ip, since ?? now);
      if (since === undefined) lost.push(b.ip);
    } else if (prev.has(b.ip)) back.push(b.ip);
  }
  return { unreachable, lost, back };
}
