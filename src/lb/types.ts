/**
 * The load balancer's one interface: what a service front end (a VIP on a network, or a
 * published port of the ingress routing mesh) and its backends look like, and what a kernel
 * backend (IPVS or nftables) must do with a desired list of them. Pure types; imports api/lb.ts.
 */
import type { BackendState, Scheduler } from '../api/lb.js';

export interface Backend {
  ip: string;
  port: number;
  weight: number;
  state: BackendState;
  /** For `meshctl lb show`: the task and node behind this address. */
  task?: string;
  node?: string;
}

export interface LbService {
  /** Stable key, e.g. `vip:<network id>:<service id>` or `ingress:<port>/<proto>`. */
  key: string;
  /** Firewall mark, ≥ 256 (DESIGN.md): traffic is classified by mark. */
  fwmark: number;
  protocol: 'tcp' | 'udp';
  /** The front end: a VIP and port, or (ingress, no vip) a published port on any local address. */
  vip?: string;
  port: number;
  /** Port the tasks listen on (the DNAT target port). */
  targetPort: number;
  scheduler: Scheduler;
  /** Idle timeouts in seconds (Swarm's fixed 900 s TCP idle timeout is a top complaint). */
  timeouts?: { tcp?: number; tcpFin?: number; udp?: number };
  backends: Backend[];
}

export interface BackendStats {
  /** Connections the scheduler sent to this backend (nftables: the backend chain's counter). */
  scheduledConns?: number;
  activeConns?: number;
  inactiveConns?: number;
  packets?: number;
  bytes?: number;
}

export interface LbBackend {
  readonly name: 'ipvs' | 'nftables';
  /**
   * Make the kernel match `desired` exactly (our objects only; never anything else), in one
   * atomic transaction where the kernel allows. Returns how many changes were needed (drift).
   */
  apply(desired: LbService[]): Promise<{ changes: number }>;
  /** What the kernel holds now, with per-backend statistics where the kernel keeps them. */
  read(): Promise<Array<Omit<LbService, 'backends'> & { backends: Array<Backend & BackendStats> }>>;
  /** Remove everything of ours. */
  flush(): Promise<void>;
}
