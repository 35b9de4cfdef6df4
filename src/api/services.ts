/**
 * The shapes services and their tasks take in the cluster store, and what the dispatcher sends
 * each node (its assignments plus the service table every node's load balancer and DNS use).
 * Pure types and constants; imports nothing but objects.ts types.
 *
 * Where things live:
 *   - `Service.spec` (store) holds a `ServiceRecord`: the user's spec, the previous one (for
 *     rollback), what the allocator gave it (VIPs, published ports) and the update's progress.
 *   - `Task.spec` (store) holds a `TaskRecord`: the service spec's task part at the spec version
 *     the task was made from, its network attachments (addresses allocated with the task), its
 *     desired state, and the last status its node reported. `Task.state` is the current state
 *     (forward only, objects.ts).
 *   - `Node.lbAddrs` (store): per network id, this node's load-balancer address (CIDR) on it
 *     (the source address of VIP / ingress traffic after SNAT, so replies come back).
 */
import type { TaskState } from './objects.js';

export type Protocol = 'tcp' | 'udp';

export interface PortSpec {
  /** Port on every node (ingress) or on the task's node (host). */
  published: number;
  /** Port the task listens on. */
  target: number;
  protocol: Protocol;
  mode: 'ingress' | 'host';
}

export interface ServiceNetworkSpec {
  /** Network id (the API resolves names). */
  network: string;
  /** Extra DNS names of the service on this network. */
  aliases: string[];
}

export interface RestartPolicy {
  condition: 'any' | 'on-failure' | 'none';
  /** Wait this long after a task ends before its replacement starts. */
  delayMs: number;
  /** Restarts allowed within `windowMs` (0 = unlimited). */
  maxAttempts: number;
  windowMs: number;
}

export interface UpdateConfig {
  /** Tasks replaced at once (0 = all at once). */
  parallelism: number;
  /** Wait between batches. */
  delayMs: number;
  failureAction: 'pause' | 'continue' | 'rollback';
  /** A new task failing within this long after it started counts as a failed update. */
  monitorMs: number;
  /** Fraction of failed tasks tolerated in an update (0..1). */
  maxFailureRatio: number;
}

export interface HealthCheck {
  /** Run inside the task's network namespace; exit 0 = healthy. */
  cmd: string[];
  intervalMs: number;
  timeoutMs: number;
  /** Consecutive failures before unhealthy. */
  retries: number;
  /** Failures during this long after start do not count. */
  startPeriodMs: number;
}

export interface TaskTemplate {
  cmd: string[];
  env: Record<string, string>;
  health?: HealthCheck;
  restart: RestartPolicy;
  /** `node.labels.K==V`, `node.labels.K!=V`, `node.role==manager`, `node.hostname==h`, `node.id==x`. */
  constraints: string[];
  /** SIGTERM, then SIGKILL after this long. */
  stopGraceMs: number;
}

export interface ServiceSpec {
  name: string;
  labels: Record<string, string>;
  mode: 'replicated' | 'global';
  /** Replicated services only (global: ignored, 0). */
  replicas: number;
  task: TaskTemplate;
  networks: ServiceNetworkSpec[];
  endpoint: {
    mode: 'vip' | 'dnsrr';
    /** `published: 0` in a create/update request = pick a free one from 30000–32767. */
    ports: PortSpec[];
  };
  update: UpdateConfig;
  rollback: UpdateConfig;
}

export type UpdateState =
  | 'updating'
  | 'paused'
  | 'completed'
  | 'rollback_started'
  | 'rollback_paused'
  | 'rollback_completed';

/** What `Service.spec` holds. */
export interface ServiceRecord {
  spec: ServiceSpec;
  /** +1 on every spec change; tasks carry the version they were made from. */
  specVersion: number;
  /** The spec before the last update (what `rollback` returns to). */
  previousSpec?: ServiceSpec;
  /** What the allocator gave the service. */
  endpoint: {
    /** vip mode: one VIP per network, including ingress when it has ingress ports. CIDR. */
    vips: { networkId: string; addr: string }[];
    /** Published ports with automatic ones filled in. */
    ports: PortSpec[];
  };
  updateStatus?: {
    state: UpdateState;
    message: string;
    /** ms since the Unix epoch (leader's clock). */
    startedAt?: number;
    completedAt?: number;
  };
}

export type DesiredState = 'running' | 'shutdown';

export interface TaskStatus {
  /** Human-readable: "started", "exit code 1", "no node satisfies …". */
  message: string;
  err?: string;
  exitCode?: number;
  /** undefined: no health check (or not yet known). */
  healthy?: boolean;
  /** ms since the Unix epoch (reporter's clock). */
  at: number;
}

/** What `Task.spec` holds for service tasks (standalone tasks only have `attachments`). */
export interface TaskRecord {
  /** Same format as standalone tasks (networks.ts taskAttachments): CIDR addresses. */
  attachments: { networkId: string; addresses: string[] }[];
  serviceName: string;
  /** Replicated: 1..replicas; global: absent (one per node). */
  slot?: number;
  specVersion: number;
  desiredState: DesiredState;
  template: TaskTemplate;
  /** Host-mode ports of this task (bound on its node only). */
  hostPorts: PortSpec[];
  status: TaskStatus;
  /** Not to be started before this time (restart delay), ms since the Unix epoch. */
  notBefore?: number;
}

// ---- dispatcher → agent ----------------------------------------------------------------------

export interface NetworkInfo {
  id: string;
  name: string;
  vni: number;
  subnets: { subnet: string; gateway: string }[];
  mtu?: number;
  internal: boolean;
  encrypted: boolean;
  ingress: boolean;
  /** This node's load-balancer address on the network (CIDR), once allocated. */
  lbAddr?: string;
}

export interface AssignedTask {
  id: string;
  name: string;
  /** Store version (raft index) of the task's last change: an lbWait for this version means
   *  every node has applied the view in which this change is visible. */
  version: number;
  serviceId: string;
  serviceName: string;
  slot?: number;
  specVersion: number;
  /** Current state as the managers know it. */
  state: TaskState;
  desiredState: DesiredState;
  template: TaskTemplate;
  /** CIDR address per network; aliases = the service's aliases there. */
  attachments: { networkId: string; address: string; aliases: string[] }[];
  hostPorts: PortSpec[];
  notBefore?: number;
}

export interface ServiceEndpoint {
  taskId: string;
  taskName: string;
  nodeId: string;
  /** Underlay address of the task's node. */
  nodeAddr: string;
  /** Plain IP (no prefix) per network id. */
  addresses: Record<string, string>;
  /**
   * active: running, desired running, healthy (or no check), node ready → gets new connections;
   * draining: desired shutdown but maybe still running → existing connections only.
   * Tasks in neither state are not listed.
   */
  state: 'active' | 'draining';
}

export interface ServiceEntry {
  id: string;
  name: string;
  endpointMode: 'vip' | 'dnsrr';
  /** Plain IP per network id (vip mode). */
  vips: Record<string, string>;
  ports: PortSpec[];
  networks: { networkId: string; aliases: string[] }[];
  endpoints: ServiceEndpoint[];
}

/** Everything node N is told: its tasks, the networks they (and ingress) need, all services. */
export interface NodeView {
  tasks: AssignedTask[];
  networks: NetworkInfo[];
  services: ServiceEntry[];
}

/**
 * One long-poll reply. `complete`: `view` replaces everything. Otherwise the changes since
 * `prev`, which must equal the version the agent holds; if not (a gap), the agent asks again
 * with `since: null` and gets a complete view.
 */
export type Assignments =
  | { complete: true; version: number; view: NodeView; logRequests?: LogRequest[] }
  | {
      complete: false;
      version: number;
      prev: number;
      upsert: Partial<NodeView>;
      remove: { tasks?: string[]; networks?: string[]; services?: string[] };
      /** Log requests for tasks on this node (`meshctl service logs`): answer with dispatcher.logs. */
      logRequests?: LogRequest[];
    };

export interface LogRequest {
  id: string;
  taskIds: string[];
  /** Last N lines (0 = all). */
  tail: number;
}

/** Agent → manager, batched. */
export interface TaskStatusUpdate {
  taskId: string;
  state: TaskState;
  status: TaskStatus;
}

/** RPC names and parameters (mTLS, node identity from the certificate). */
export interface DispatcherRpc {
  /** Long poll: returns at once if anything changed since `since` (or since is null), else
   *  within `waitMs` (≤ 10,000) with the changes or an empty incremental reply. */
  'dispatcher.assignments': { since: number | null; waitMs?: number };
  /** Status transitions, and the view version this node's LB/DNS have applied. */
  'dispatcher.status': { updates: TaskStatusUpdate[]; lbApplied?: number };
  /** Resolves once every ready node has applied view version ≥ `version` (or the timeout). */
  'dispatcher.lbWait': { version: number; timeoutMs: number };
  /** Answer to a LogRequest: output per task id (missing = not on this node). */
  'dispatcher.logs': { id: string; logs: Record<string, string> };
}

export interface LbWaitReply {
  waitedMs: number;
  /** Node hostnames that had not applied it when the wait ended (empty: all did). */
  pending: string[];
}
