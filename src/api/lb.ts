/**
 * What `meshctl lb show` reads (GET /v1/lb): each node's load-balancer entries, their backends
 * and the self-check's counters; and the scheduler and backend-state names the LB uses.
 * Pure types; imports nothing.
 */

export type Scheduler = 'rr' | 'wrr' | 'lc' | 'sh' | 'mh';

/**
 * active: receives new connections; draining: weight 0, existing connections continue and no
 * new ones arrive; unhealthy: not programmed at all.
 */
export type BackendState = 'active' | 'draining' | 'unhealthy';

export interface LbShowBackend {
  task?: string;
  node?: string;
  address: string;
  /** 0 = the packet's own port (all-ports VIP). */
  port: number;
  weight: number;
  state: BackendState;
  activeConns?: number;
  inactiveConns?: number;
  scheduledConns?: number;
  /** The self-check found no data path to it (ms since the epoch): out of rotation since. */
  unreachableSince?: number;
}

export interface LbShowEntry {
  kind: 'vip' | 'ingress' | 'host';
  service: string;
  serviceId: string;
  /** Network name (vip, ingress) */
  network?: string;
  networkId?: string;
  /** Namespace holding the entry (host entries: the node's). */
  namespace: string;
  vip?: string;
  protocol: 'tcp' | 'udp';
  /** Front-end port (0 = every port of the VIP). */
  port: number;
  targetPort: number;
  fwmark?: number;
  scheduler?: Scheduler;
  /** False when the kernel does not hold the entry (drift not yet repaired). */
  programmed: boolean;
  backends: LbShowBackend[];
}

export interface LbShow {
  node: string;
  backend: 'ipvs' | 'nftables';
  /** ms since the epoch. */
  lastApply?: number;
  lastReconcile?: number;
  /** Changes made by reconcile() since start (drift repaired). */
  driftRepaired: number;
  /** The self-check (checkReach): backends found unreachable / reachable again since start. */
  reach?: ReachCounters;
  entries: LbShowEntry[];
}

export interface ReachCounters {
  checks: number;
  /** Backends taken out of rotation because the data path to them was missing. */
  unreachable: number;
  /** Backends put back once it was there again. */
  restored: number;
  /** Backends out of rotation now. */
  current: number;
}
