/**
 * Typed objects of the cluster store (nodes, networks, services, tasks, the cluster, a debug kv
 * register) and their structural validators.
 *
 * Every object carries `id`, `version` (raft index of its last change) and `createdIndex`; the
 * store sets the last two. Shapes only ever gain fields: a validator checks the fields it knows
 * and keeps unknown ones, so replicas running an older build apply entries written by a newer
 * one to the same state. Validators check structure only (types, enums, ranges); policy (name
 * syntax, address parsing, referential checks) belongs to the API layer that proposes commands.
 * Pure; may import nothing.
 */

/** Any value JSON can carry. */
export type Json =
  null | boolean | number | string | readonly Json[] | { readonly [k: string]: Json };

export interface Meta {
  readonly id: string;
  /** Raft index of the command that last changed this object. */
  readonly version: number;
  /** Raft index of the command that created this object. */
  readonly createdIndex: number;
}

export type NodeRole = 'manager' | 'worker';
export type NodeAvailability = 'active' | 'pause' | 'drain';
export type NodeState = 'unknown' | 'ready' | 'down' | 'disconnected';

export interface Node extends Meta {
  readonly hostname: string;
  readonly role: NodeRole;
  /** Raft member id, for managers. */
  readonly raftId?: number;
  /** Managers: `ip:port` of the control listener (raft and RPC, TCP 2377) others dial. */
  readonly managerAddr?: string;
  /** `ip:port` of its gossip agent (UDP+TCP 7946), handed to other nodes as gossip seeds. */
  readonly gossipAddr?: string;
  /** Advertise IP address. */
  readonly addr: string;
  readonly availability: NodeAvailability;
  readonly labels: Readonly<Record<string, string>>;
  readonly status: {
    readonly state: NodeState;
    readonly message?: string;
    /** Leader's clock (ms since the Unix epoch) at the last heartbeat it logged. */
    readonly heartbeatAt?: number;
  };
  readonly certificate: {
    /** ms since the Unix epoch. */
    readonly notAfter: number;
    /** Hex serial number. */
    readonly serial: string;
  };
  /** Set by promote/demote until the role change has been carried out. */
  readonly desiredRole?: NodeRole;
  /** Per network id, this node's load-balancer address (CIDR) on it (services allocate them). */
  readonly lbAddrs?: Readonly<Record<string, string>>;
}

export interface Subnet {
  /** CIDR, e.g. 10.0.1.0/24. */
  readonly subnet: string;
  readonly gateway: string;
  /** CIDR inside `subnet` from which task addresses are drawn. */
  readonly ipRange?: string;
}

export interface Network extends Meta {
  readonly name: string;
  readonly driver: 'overlay';
  readonly subnets: readonly Subnet[];
  /** VXLAN network identifier (24 bits); 0 while not yet allocated. */
  readonly vni: number;
  readonly options: {
    readonly encrypted: boolean;
    readonly mtu?: number;
    readonly internal: boolean;
    readonly attachable: boolean;
    readonly ingress: boolean;
  };
  readonly labels: Readonly<Record<string, string>>;
  /**
   * Address allocation state (src/manager/allocation/ipam.ts): per subnet (CIDR), the address handed out
   * last, so allocation continues after it, also on a new leader.
   */
  readonly ipam?: { readonly last: Readonly<Record<string, string>> };
}

export interface Service extends Meta {
  readonly name: string;
  /** Opaque until the services issue defines it. */
  readonly spec: Json;
}

/**
 * Task states in their only allowed direction (DESIGN.md, "Contracts"). The last five are
 * terminal alternatives: a task reaches at most one of them and never leaves it.
 */
export const TASK_STATES = [
  'new',
  'pending',
  'assigned',
  'accepted',
  'preparing',
  'ready',
  'starting',
  'running',
  'complete',
  'shutdown',
  'failed',
  'rejected',
  'orphaned',
] as const;
export type TaskState = (typeof TASK_STATES)[number];
const FIRST_TERMINAL = TASK_STATES.indexOf('complete');

/** Position of a state in the forward order; every terminal state has the same rank. */
export function taskStateRank(s: TaskState): number {
  return Math.min(TASK_STATES.indexOf(s), FIRST_TERMINAL);
}

/** Whether a task may move from `from` to `to`: forward, or staying where it is. */
export function taskStateMayMove(from: TaskState, to: TaskState): boolean {
  return from === to || taskStateRank(to) > taskStateRank(from);
}

export interface Task extends Meta {
  readonly name: string;
  readonly serviceId?: string;
  readonly nodeId?: string;
  readonly state: TaskState;
  /** Opaque until the services issue defines it. */
  readonly spec: Json;
}

export const CLUSTER_ID = 'default';

export interface Cluster extends Meta {
  /** Always `default`: there is one cluster object. */
  readonly id: typeof CLUSTER_ID;
  readonly clusterId: string;
  readonly caCertPem: string;
  readonly caKeyPem: string;
  /**
   * Raft voters at index 0 of the log (the manager that ran `cluster init`). A new manager
   * starts its empty log from the same base, so replaying the log gives it the same membership.
   */
  readonly bootstrapRaftIds?: readonly number[];
  /** Join token secrets (the part after the CA digest). */
  readonly tokens: { readonly worker: string; readonly manager: string };
  readonly settings: {
    readonly heartbeatPeriodMs: number;
  };
  /** Data-path encryption keys; defined by the encryption issue. */
  readonly keys: readonly Json[];
}

/** Debug register for tests and benchmarks: `id` is the key. */
export interface Kv extends Meta {
  readonly value: string;
}

export interface ObjectMap {
  node: Node;
  network: Network;
  service: Service;
  task: Task;
  cluster: Cluster;
  kv: Kv;
}
export type Kind = keyof ObjectMap;
export const KINDS: readonly Kind[] = ['cluster', 'kv', 'network', 'node', 'service', 'task'];
export type StoreObject = ObjectMap[Kind];

/** Kinds whose `name` is unique among objects of that kind. */
export type NamedKind = 'network' | 'service';
export const NAMED_KINDS: readonly Kind[] = ['network', 'service'];

/** What a create/update op carries: meta fields may be present and are ignored (the store sets them). */
export type ObjectInput<K extends Kind> = Omit<ObjectMap[K], 'version' | 'createdIndex'> & {
  readonly version?: number;
  readonly createdIndex?: number;
};

export function isKind(k: unknown): k is Kind {
  return typeof k === 'string' && (KINDS as readonly string[]).includes(k);
}

// ---- structural validation -------------------------------------------------------------------

/** A check returns null when `v` is acceptable, else what is wrong with it (`path` names it). */
type Check = (v: unknown, path: string) => string | null;

/** A JSON object (not null, not an array): the first check of every decoder of ours. */
export const isPlain = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

const str =
  (max = 4096, min = 0): Check =>
  (v, p) =>
    typeof v !== 'string'
      ? `${p} must be a string`
      : v.length < min
        ? `${p} must not be empty`
        : v.length > max
          ? `${p} is longer than ${max} characters`
          : null;

const int =
  (min: number, max: number): Check =>
  (v, p) =>
    typeof v === 'number' && Number.isSafeInteger(v) && v >= min && v <= max
      ? null
      : `${p} must be an integer in [${min}, ${max}]`;

const bool: Check = (v, p) => (typeof v === 'boolean' ? null : `${p} must be true or false`);

const oneOf =
  (vals: readonly string[]): Check =>
  (v, p) =>
    typeof v === 'string' && vals.includes(v) ? null : `${p} must be one of ${vals.join(', ')}`;

const anyJson: Check = () => null;

const arrayOf =
  (each: Check, max = 4096): Check =>
  (v, p) => {
    if (!Array.isArray(v)) return `${p} must be an array`;
    if (v.length > max) return `${p} has more than ${max} entries`;
    for (let i = 0; i < v.length; i++) {
      const e = each(v[i], `${p}[${i}]`);
      if (e !== null) return e;
    }
    return null;
  };

const strRecord: Check = (v, p) => {
  if (!isPlain(v)) return `${p} must be an object of strings`;
  for (const k of Object.keys(v)) {
    if (typeof v[k] !== 'string') return `${p}.${k} must be a string`;
  }
  return null;
};

/** Known fields: `[check, required]`. Unknown fields are kept as they are. */
const shape =
  (fields: Record<string, readonly [Check, boolean]>): Check =>
  (v, p) => {
    if (!isPlain(v)) return `${p} must be an object`;
    for (const [k, [check, required]] of Object.entries(fields)) {
      const has = Object.prototype.hasOwnProperty.call(v, k);
      if (!has) {
        if (required) return `${p === '' ? '' : p + '.'}${k} is missing`;
        continue;
      }
      const e = check(v[k], p === '' ? k : `${p}.${k}`);
      if (e !== null) return e;
    }
    return null;
  };

const req = (c: Check) => [c, true] as const;
const opt = (c: Check) => [c, false] as const;

/** Ids of stored objects other than kv keys: no spaces, no slashes, reasonable length. */
export const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const objectId: Check = (v, p) =>
  typeof v === 'string' && ID_RE.test(v)
    ? null
    : `${p} must be 1-128 characters of A-Z a-z 0-9 _ . - (starting with a letter or digit)`;

const metaFields = {
  version: opt(int(0, Number.MAX_SAFE_INTEGER)),
  createdIndex: opt(int(0, Number.MAX_SAFE_INTEGER)),
};

const VALIDATORS: Record<Kind, Check> = {
  node: shape({
    id: req(objectId),
    ...metaFields,
    hostname: req(str(255)),
    role: req(oneOf(['manager', 'worker'])),
    raftId: opt(int(1, Number.MAX_SAFE_INTEGER)),
    addr: req(str(255)),
    availability: req(oneOf(['active', 'pause', 'drain'])),
    labels: req(strRecord),
    status: req(
      shape({
        state: req(oneOf(['unknown', 'ready', 'down', 'disconnected'])),
        message: opt(str()),
        heartbeatAt: opt(int(0, Number.MAX_SAFE_INTEGER)),
      }),
    ),
    certificate: req(
      shape({ notAfter: req(int(0, Number.MAX_SAFE_INTEGER)), serial: req(str(255)) }),
    ),
    desiredRole: opt(oneOf(['manager', 'worker'])),
    lbAddrs: opt(strRecord),
  }),
  network: shape({
    id: req(objectId),
    ...metaFields,
    name: req(str(255, 1)),
    driver: req(oneOf(['overlay'])),
    subnets: req(
      arrayOf(
        shape({ subnet: req(str(64, 1)), gateway: req(str(64)), ipRange: opt(str(64, 1)) }),
        256,
      ),
    ),
    vni: req(int(0, 0xffffff)),
    options: req(
      shape({
        encrypted: req(bool),
        mtu: opt(int(68, 65535)),
        internal: req(bool),
        attachable: req(bool),
        ingress: req(bool),
      }),
    ),
    labels: req(strRecord),
    ipam: opt(shape({ last: req(strRecord) })),
  }),
  service: shape({
    id: req(objectId),
    ...metaFields,
    name: req(str(255, 1)),
    spec: req(anyJson),
  }),
  task: shape({
    id: req(objectId),
    ...metaFields,
    name: req(str(255, 1)),
    serviceId: opt(objectId),
    nodeId: opt(objectId),
    state: req(oneOf(TASK_STATES)),
    spec: req(anyJson),
  }),
  cluster: shape({
    id: req(oneOf([CLUSTER_ID])),
    ...metaFields,
    clusterId: req(str(255, 1)),
    caCertPem: req(str(65536)),
    caKeyPem: req(str(65536)),
    tokens: req(shape({ worker: req(str(255, 1)), manager: req(str(255, 1)) })),
    settings: req(shape({ heartbeatPeriodMs: req(int(1, 86_400_000)) })),
    keys: req(arrayOf(anyJson, 1024)),
  }),
  kv: shape({
    id: req(str(4096, 1)),
    ...metaFields,
    value: req(str(1 << 20)),
  }),
};

/**
 * Structural check of an object of `kind` (as carried by a create/update op, or read from a
 * snapshot). Returns null when valid, else what is wrong, naming the field.
 */
export function validateObject(kind: Kind, v: unknown): string | null {
  return VALIDATORS[kind](v, '');
}

/** Kv keys are free-form; every other id follows ID_RE (the cluster's is always `default`). */
export function validateId(kind: Kind, id: unknown): string | null {
  if (kind === 'kv') return str(4096, 1)(id, 'id');
  if (kind === 'cluster') return oneOf([CLUSTER_ID])(id, 'id');
  return objectId(id, 'id');
}
