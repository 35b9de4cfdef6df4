/**
 * Services on the manager side: API request validation (→ ServiceSpec), the allocator (VIPs per
 * network, published ingress ports, task and load-balancer addresses), plans that turn
 * create/update/scale/rollback/rm into store ops, and the views `service ls|inspect|ps` show.
 *
 * Plans read a (maybe stale) store and return ops whose guards make a stale plan fail with
 * ECONFLICT: every address allocation updates its network WITH its version (networks.ts), and
 * every service create/update/rollback compare-and-sets SERVICE_ALLOC_KEY, so two plans from the
 * same state cannot both take a published port.
 *
 * Pure: reads the store, never writes it; time comes in as `now`; no randomness, no I/O.
 * May import src/api/, ./scheduler.ts, src/manager/{allocation,store}/, src/util/errors.ts.
 */

import { MeshError } from '../../util/errors.js';
import { allocateAddress, parseCidr } from '../allocation/ipam.js';
import { addressesInUse, findNetwork } from '../allocation/networks.js';
import type { Json, Network, Node, Service, Task } from '../../api/objects.js';
import { taskStateRank, isPlain } from '../../api/objects.js';
import { parseConstraint } from './scheduler.js';
import type {
  HealthCheck,
  PortSpec,
  RestartPolicy,
  ServiceNetworkSpec,
  ServiceRecord,
  ServiceSpec,
  TaskRecord,
  UpdateConfig,
} from '../../api/services.js';
import type { Op, Store } from '../store/store.js';

/** kv key every service create/update/rollback compare-and-sets (published ports, names). */
export const SERVICE_ALLOC_KEY = 'mesh/service-alloc';
export const AUTO_PORT_MIN = 30000;
export const AUTO_PORT_MAX = 32767;
/** Highest replica count accepted. */
export const MAX_REPLICAS = 10_000;
const NAME_RE = /^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$/;

/**
 * What `Service.spec` holds: the contract's ServiceRecord plus fields only the orchestrator
 * reads (kept by every build since store validators keep unknown fields).
 */
export interface StoredServiceRecord extends ServiceRecord {
  /** `service rm` committed: tasks are being stopped, then the service is deleted. */
  removing?: boolean;
  /** Rolling update bookkeeping. */
  progress?: {
    /** When the last batch of tasks was replaced (ms). */
    batchAt?: number;
    /** Tasks of the new spec that failed during this update. */
    failed: number;
    /** Tasks of the new spec started during this update. */
    started: number;
  };
}

export const DEFAULT_RESTART: RestartPolicy = {
  condition: 'any',
  delayMs: 5_000,
  maxAttempts: 0,
  windowMs: 0,
};
export const DEFAULT_UPDATE: UpdateConfig = {
  parallelism: 1,
  delayMs: 0,
  failureAction: 'pause',
  monitorMs: 5_000,
  maxFailureRatio: 0,
};
export const DEFAULT_STOP_GRACE_MS = 10_000;

const usage = (m: string): MeshError => new MeshError('EUSAGE', m);
const TERMINAL_RANK = taskStateRank('complete');
export const isTerminal = (t: Task): boolean => taskStateRank(t.state) >= TERMINAL_RANK;
const ASSIGNED_RANK = taskStateRank('assigned');

// ---- records ---------------------------------------------------------------------------------

/** The record of a service, or null if its spec is not one (written by something else). */
export function recordOf(s: Service): StoredServiceRecord | null {
  const r = s.spec;
  if (!isPlain(r) || !isPlain(r['spec']) || !isPlain(r['endpoint'])) return null;
  const spec = r['spec'];
  if (!isPlain(spec['task']) || !Array.isArray(spec['networks']) || !isPlain(spec['endpoint'])) {
    return null;
  }
  return r as unknown as StoredServiceRecord;
}

/** A service task's record, or null for standalone tasks. */
export function taskRecordOf(t: Task): TaskRecord | null {
  const s = t.spec;
  if (t.serviceId === undefined || !isPlain(s)) return null;
  if (s['desiredState'] !== 'running' && s['desiredState'] !== 'shutdown') return null;
  if (!isPlain(s['template']) || typeof s['specVersion'] !== 'number') return null;
  return s as unknown as TaskRecord;
}

/** By exact id, exact name, then unique id prefix. */
export function findService(store: Store, ref: string): Service | undefined {
  const byId = store.get('service', ref);
  if (byId !== undefined) return byId;
  const byName = store.findByName('service', ref);
  if (byName !== undefined) return byName;
  if (ref === '') return undefined;
  const hits = store.list('service', (s) => s.id.startsWith(ref));
  return hits.length === 1 ? hits[0] : undefined;
}

export function mustFindService(store: Store, ref: string, at: string): Service {
  const s = findService(store, ref);
  if (s === undefined) {
    throw new MeshError('ENOTFOUND', `${at}: no such service; \`meshctl service ls\` lists them`);
  }
  return s;
}

// ---- request validation ----------------------------------------------------------------------

function int(at: string, v: unknown, what: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw usage(`${at}: ${what} must be a whole number in [${min}, ${max}]`);
  }
  return v;
}

function strList(at: string, v: unknown, what: string, max = 1024): string[] {
  if (!Array.isArray(v) || v.length > max || !v.every((x) => typeof x === 'string')) {
    throw usage(`${at}: ${what} must be a list of strings`);
  }
  return [...v];
}

function strMap(at: string, v: unknown, what: string): Record<string, string> {
  if (!isPlain(v)) throw usage(`${at}: ${what} must be an object of strings`);
  const out: [string, string][] = [];
  for (const [k, x] of Object.entries(v)) {
    if (k === '' || typeof x !== 'string') {
      throw usage(`${at}: ${what} ${JSON.stringify(k)} needs a non-empty key and a string value`);
    }
    out.push([k, x]);
  }
  return Object.fromEntries(out);
}

function oneOf<T extends string>(at: string, v: unknown, what: string, vals: readonly T[]): T {
  if (typeof v !== 'string' || !(vals as readonly string[]).includes(v)) {
    throw usage(`${at}: ${what} must be one of ${vals.join(', ')}`);
  }
  return v as T;
}

const HOUR = 3_600_000;

function restartOf(at: string, v: unknown, base: RestartPolicy): RestartPolicy {
  if (v === undefined) return base;
  if (!isPlain(v)) throw usage(`${at}: restart must be an object`);
  return {
    condition:
      v['condition'] === undefined
        ? base.condition
        : oneOf(at, v['condition'], 'restart condition', ['any', 'on-failure', 'none'] as const),
    delayMs:
      v['delayMs'] === undefined ? base.delayMs : int(at, v['delayMs'], 'restart delay', 0, HOUR),
    maxAttempts:
      v['maxAttempts'] === undefined
        ? base.maxAttempts
        : int(at, v['maxAttempts'], 'restart max attempts', 0, 1000),
    windowMs:
      v['windowMs'] === undefined
        ? base.windowMs
        : int(at, v['windowMs'], 'restart window', 0, 24 * HOUR),
  };
}

function updateOf(at: string, v: unknown, base: UpdateConfig, what: string): UpdateConfig {
  if (v === undefined) return base;
  if (!isPlain(v)) throw usage(`${at}: ${what} must be an object`);
  const ratio = v['maxFailureRatio'];
  if (ratio !== undefined && (typeof ratio !== 'number' || !(ratio >= 0 && ratio <= 1))) {
    throw usage(`${at}: ${what} max failure ratio must be a number in [0, 1]`);
  }
  return {
    parallelism:
      v['parallelism'] === undefined
        ? base.parallelism
        : int(at, v['parallelism'], `${what} parallelism`, 0, MAX_REPLICAS),
    delayMs:
      v['delayMs'] === undefined ? base.delayMs : int(at, v['delayMs'], `${what} delay`, 0, HOUR),
    failureAction:
      v['failureAction'] === undefined
        ? base.failureAction
        : oneOf(at, v['failureAction'], `${what} failure action`, [
            'pause',
            'continue',
            'rollback',
          ] as const),
    monitorMs:
      v['monitorMs'] === undefined
        ? base.monitorMs
        : int(at, v['monitorMs'], `${what} monitor`, 0, HOUR),
    maxFailureRatio: ratio === undefined ? base.maxFailureRatio : ratio,
  };
}

function healthOf(at: string, v: unknown): HealthCheck | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isPlain(v)) throw usage(`${at}: health must be an object`);
  const cmd = strList(at, v['cmd'], 'health cmd', 256);
  if (cmd.length === 0) throw usage(`${at}: health cmd must not be empty`);
  const g = (k: string, d: number, what: string, min: number) =>
    v[k] === undefined ? d : int(at, v[k], what, min, HOUR);
  return {
    cmd,
    intervalMs: g('intervalMs', 5_000, 'health interval', 100),
    timeoutMs: g('timeoutMs', 3_000, 'health timeout', 100),
    retries: v['retries'] === undefined ? 3 : int(at, v['retries'], 'health retries', 1, 100),
    startPeriodMs: g('startPeriodMs', 0, 'health start period', 0),
  };
}

function portsOf(at: string, v: unknown): PortSpec[] {
  if (!Array.isArray(v) || v.length > 256) throw usage(`${at}: ports must be a list`);
  const out: PortSpec[] = [];
  for (const p of v as unknown[]) {
    if (!isPlain(p)) throw usage(`${at}: each port must be an object`);
    const target = int(at, p['target'], 'port target', 1, 65535);
    const published =
      p['published'] === undefined ? 0 : int(at, p['published'], 'published port', 0, 65535);
    const protocol =
      p['protocol'] === undefined
        ? 'tcp'
        : oneOf(at, p['protocol'], 'port protocol', ['tcp', 'udp'] as const);
    const mode =
      p['mode'] === undefined
        ? 'ingress'
        : oneOf(at, p['mode'], 'port mode', ['ingress', 'host'] as const);
    if (mode === 'host' && published === 0) {
      throw usage(`${at}: host-mode port ${target}/${protocol} needs a published port`);
    }
    const dup = out.find(
      (o) => o.published !== 0 && o.published === published && o.protocol === protocol,
    );
    if (dup !== undefined) {
      throw usage(`${at}: published port ${published}/${protocol} is given twice`);
    }
    out.push({ published, target, protocol, mode });
  }
  return out;
}

function networksOf(store: Store, at: string, v: unknown): ServiceNetworkSpec[] {
  if (!Array.isArray(v) || v.length > 64) throw usage(`${at}: networks must be a list`);
  const out: ServiceNetworkSpec[] = [];
  for (const n of v as unknown[]) {
    const ref = typeof n === 'string' ? n : isPlain(n) ? n['network'] : undefined;
    if (typeof ref !== 'string' || ref === '') {
      throw usage(`${at}: each network needs a name or id`);
    }
    const aliases =
      isPlain(n) && n['aliases'] !== undefined ? strList(at, n['aliases'], 'aliases', 64) : [];
    for (const a of aliases) {
      if (!NAME_RE.test(a)) throw usage(`${at}: alias ${JSON.stringify(a)} is not a valid name`);
    }
    const net = findNetwork(store, ref);
    if (net === undefined) {
      throw new MeshError(
        'ENOTFOUND',
        `${at}: no network ${JSON.stringify(ref)}; \`meshctl net ls\` lists them`,
      );
    }
    if (net.options.ingress) {
      throw usage(`${at}: ${net.name} is the ingress network; publish ports with -p instead`);
    }
    if (out.some((o) => o.network === net.id)) {
      throw usage(`${at}: network ${net.name} is given twice`);
    }
    out.push({ network: net.id, aliases });
  }
  return out;
}

const CREATE_FIELDS = new Set([
  'name',
  'labels',
  'mode',
  'replicas',
  'cmd',
  'env',
  'networks',
  'ports',
  'endpointMode',
  'constraints',
  'restart',
  'update',
  'rollback',
  'health',
  'stopGraceMs',
]);

/**
 * A create request (JSON body of POST /v1/services), or an update request over `base` (only the
 * fields given change; `id` and `force` are the update route's own), as a ServiceSpec with
 * defaults filled in. Throws EUSAGE / ENOTFOUND naming the field.
 */
export function parseServiceRequest(store: Store, req: unknown, base?: ServiceSpec): ServiceSpec {
  const name0 = isPlain(req) && typeof req['name'] === 'string' ? req['name'] : base?.name;
  const at = `${base === undefined ? 'create' : 'update'} service ${name0 ?? '?'}`;
  if (!isPlain(req)) throw usage(`${at}: the request must be a JSON object`);
  for (const k of Object.keys(req)) {
    if (!CREATE_FIELDS.has(k) && !(base !== undefined && (k === 'id' || k === 'force'))) {
      throw usage(`${at}: unknown field ${JSON.stringify(k)}`);
    }
  }
  const has = (k: string) => req[k] !== undefined;
  const name = has('name') ? req['name'] : base?.name;
  if (typeof name !== 'string' || !NAME_RE.test(name)) {
    throw usage(
      `${at}: the name must be 1-63 letters, digits, '-' or '_', starting and ending with a letter or digit`,
    );
  }
  if (base !== undefined && name !== base.name) {
    throw usage(`${at}: a service cannot be renamed (it is ${base.name})`);
  }
  const mode = has('mode')
    ? oneOf(at, req['mode'], 'mode', ['replicated', 'global'] as const)
    : (base?.mode ?? 'replicated');
  if (base !== undefined && mode !== base.mode) {
    throw usage(`${at}: the mode cannot change (${base.mode}); remove and create the service`);
  }
  let replicas = has('replicas')
    ? int(at, req['replicas'], 'replicas', 0, MAX_REPLICAS)
    : (base?.replicas ?? 1);
  if (mode === 'global') {
    if (has('replicas') && req['replicas'] !== 0 && base === undefined) {
      throw usage(`${at}: --replicas is for replicated services; a global one runs on every node`);
    }
    replicas = 0;
  }
  const cmd = has('cmd') ? strList(at, req['cmd'], 'cmd', 4096) : base?.task.cmd;
  if (cmd === undefined || cmd.length === 0 || cmd[0] === '') {
    throw usage(`${at}: a command is needed (meshctl service create … -- CMD ARGS…)`);
  }
  const constraints = has('constraints')
    ? strList(at, req['constraints'], 'constraints', 64)
    : (base?.task.constraints ?? []);
  for (const c of constraints) {
    try {
      parseConstraint(c);
    } catch (e) {
      throw usage(`${at}: ${(e as Error).message}`);
    }
  }
  const endpointMode = has('endpointMode')
    ? oneOf(at, req['endpointMode'], 'endpoint mode', ['vip', 'dnsrr'] as const)
    : (base?.endpoint.mode ?? 'vip');
  const ports = has('ports') ? portsOf(at, req['ports']) : (base?.endpoint.ports ?? []);
  if (endpointMode === 'dnsrr' && ports.some((p) => p.mode === 'ingress')) {
    throw usage(
      `${at}: endpoint mode dnsrr has no VIP, so ports cannot be published through the routing mesh; publish with mode=host or use --endpoint-mode vip`,
    );
  }
  const health = has('health') ? healthOf(at, req['health']) : base?.task.health;
  const stopGraceMs = has('stopGraceMs')
    ? int(at, req['stopGraceMs'], 'stop grace period', 0, HOUR)
    : (base?.task.stopGraceMs ?? DEFAULT_STOP_GRACE_MS);
  return {
    name,
    labels: has('labels') ? strMap(at, req['labels'], 'label') : { ...(base?.labels ?? {}) },
    mode,
    replicas,
    task: {
      cmd,
      env: has('env') ? strMap(at, req['env'], 'env') : { ...(base?.task.env ?? {}) },
      ...(health !== undefined ? { health } : {}),
      restart: restartOf(at, req['restart'], base?.task.restart ?? DEFAULT_RESTART),
      constraints,
      stopGraceMs,
    },
    networks: has('networks') ? networksOf(store, at, req['networks']) : (base?.networks ?? []),
    endpoint: { mode: endpointMode, ports },
    update: updateOf(at, req['update'], base?.update ?? DEFAULT_UPDATE, 'update'),
    rollback: updateOf(at, req['rollback'], base?.rollback ?? DEFAULT_UPDATE, 'rollback'),
  };
}

// ---- allocation ------------------------------------------------------------------------------

export function ingressNetwork(store: Store): Network | undefined {
  return store.list('network', (n) => n.options.ingress)[0];
}

/**
 * Hands out addresses on networks for one plan: addresses given earlier in the same plan are
 * in use for later ones, and `ops()` gives one update per touched network WITH its version.
 */
export class AddressAllocator {
  private inUse = new Map<string, Set<string>>();
  private last = new Map<string, Record<string, string>>();
  private touched = new Map<string, Network>();
  constructor(private readonly store: Store) {}

  /** A free address on network `id` in CIDR notation; throws EEXHAUSTED / ENOTFOUND. */
  take(id: string, at: string): string {
    const net = this.store.get('network', id);
    if (net === undefined) throw new MeshError('ENOTFOUND', `${at}: network ${id} is gone`);
    let used = this.inUse.get(id);
    if (used === undefined) this.inUse.set(id, (used = addressesInUse(this.store, id)));
    let last = this.last.get(id);
    if (last === undefined) this.last.set(id, (last = { ...(net.ipam?.last ?? {}) }));
    for (const s of net.subnets) {
      let ip: string;
      try {
        ip = allocateAddress(s.subnet, s.ipRange, s.gateway, used, last[s.subnet]);
      } catch (e) {
        if (e instanceof MeshError && e.code === 'EEXHAUSTED') continue;
        throw e;
      }
      used.add(ip);
      last[s.subnet] = ip;
      this.touched.set(id, net);
      return `${ip}/${parseCidr(s.subnet).prefix}`;
    }
    throw new MeshError(
      'EEXHAUSTED',
      `${at}: no free address on network ${net.name}; remove tasks or services from it, or use a network with a larger subnet`,
    );
  }

  /** Network updates recording the allocations, each guarded by the network's version. */
  ops(): Op[] {
    return [...this.touched.values()].map((net) => {
      const { version: _v, createdIndex: _c, ...value } = net;
      return {
        op: 'update',
        kind: 'network',
        value: { ...value, ipam: { last: this.last.get(net.id)! } },
        version: net.version,
      };
    });
  }
}

function allocGuard(store: Store): Op {
  const cur = store.get('kv', SERVICE_ALLOC_KEY);
  const n = cur === undefined ? 0 : Number(cur.value);
  return {
    op: 'cas',
    kind: 'kv',
    id: SERVICE_ALLOC_KEY,
    prev: cur === undefined ? null : cur.value,
    value: String((Number.isSafeInteger(n) ? n : 0) + 1),
  };
}

/** Ingress ports published by services other than `exceptId`: `port/proto` → service name. */
function ingressPortsInUse(store: Store, exceptId: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const s of store.list('service')) {
    if (s.id === exceptId) continue;
    const r = recordOf(s);
    if (r === null) continue;
    for (const p of r.endpoint.ports) {
      if (p.mode === 'ingress') m.set(`${p.published}/${p.protocol}`, s.name);
    }
  }
  return m;
}

/**
 * Published ports with automatic ones filled in: a `published: 0` port keeps the one it had in
 * `prev` (same target, protocol and mode), else the lowest free port in 30000–32767. Ingress
 * ports are unique cluster-wide.
 */
export function allocatePorts(
  store: Store,
  serviceId: string,
  at: string,
  wanted: readonly PortSpec[],
  prev: readonly PortSpec[],
): PortSpec[] {
  const used = ingressPortsInUse(store, serviceId);
  const mine = new Set<string>();
  const out: PortSpec[] = [];
  for (const p of wanted) {
    if (p.published === 0) continue;
    const key = `${p.published}/${p.protocol}`;
    const holder = p.mode === 'ingress' ? used.get(key) : undefined;
    if (holder !== undefined) {
      throw new MeshError(
        'ECONFLICT',
        `${at}: published port ${key} is used by service ${holder}; pick another port`,
      );
    }
    mine.add(key);
  }
  for (const p of wanted) {
    if (p.published !== 0) {
      out.push({ ...p });
      continue;
    }
    const keep = prev.find(
      (q) =>
        q.target === p.target &&
        q.protocol === p.protocol &&
        q.mode === p.mode &&
        !mine.has(`${q.published}/${q.protocol}`) &&
        !used.has(`${q.published}/${q.protocol}`),
    );
    let port = keep?.published;
    for (let c = AUTO_PORT_MIN; port === undefined && c <= AUTO_PORT_MAX; c++) {
      const key = `${c}/${p.protocol}`;
      if (!used.has(key) && !mine.has(key)) port = c;
    }
    if (port === undefined) {
      throw new MeshError(
        'EEXHAUSTED',
        `${at}: no free port left in ${AUTO_PORT_MIN}-${AUTO_PORT_MAX} for ${p.target}/${p.protocol}; give one with -p PUBLISHED:${p.target}`,
      );
    }
    mine.add(`${port}/${p.protocol}`);
    out.push({ ...p, published: port });
  }
  return out;
}

/**
 * The service's VIPs for `spec` (vip mode: one per network, plus ingress when it publishes
 * ingress ports), keeping the ones it had on networks it stays on.
 */
function allocateVips(
  store: Store,
  alloc: AddressAllocator,
  at: string,
  spec: ServiceSpec,
  ports: readonly PortSpec[],
  prev: readonly { networkId: string; addr: string }[],
): { networkId: string; addr: string }[] {
  const nets = spec.networks.map((n) => n.network);
  if (ports.some((p) => p.mode === 'ingress')) {
    const ing = ingressNetwork(store);
    if (ing === undefined) {
      throw new MeshError(
        'ENOTFOUND',
        `${at}: the cluster has no ingress network to publish ports on; create one with \`meshctl net create --ingress ingress\``,
      );
    }
    nets.push(ing.id);
  }
  if (spec.endpoint.mode !== 'vip') return [];
  return nets.map((id) => {
    const had = prev.find((v) => v.networkId === id);
    return had ?? { networkId: id, addr: alloc.take(id, at) };
  });
}

function serviceValue(id: string, name: string, record: StoredServiceRecord): Op {
  return {
    op: 'create',
    kind: 'service',
    value: { id, name, spec: record as unknown as Json },
  };
}

/** Ops creating service `newId` from a create request. */
export function planCreateService(
  store: Store,
  req: unknown,
  newId: string,
  now: number,
): { ops: Op[]; record: StoredServiceRecord } {
  const spec = parseServiceRequest(store, req);
  const at = `create service ${spec.name}`;
  const dup = store.findByName('service', spec.name);
  if (dup !== undefined) {
    throw new MeshError(
      'ECONFLICT',
      `${at}: a service named ${spec.name} exists (id ${dup.id}); pick another name or remove it first`,
    );
  }
  const alloc = new AddressAllocator(store);
  const ports = allocatePorts(store, newId, at, spec.endpoint.ports, []);
  const vips = allocateVips(store, alloc, at, spec, ports, []);
  const record: StoredServiceRecord = {
    spec: { ...spec, endpoint: { ...spec.endpoint, ports } },
    specVersion: 1,
    endpoint: { vips, ports },
    updateStatus: { state: 'completed', message: 'created', startedAt: now, completedAt: now },
  };
  return {
    ops: [allocGuard(store), ...alloc.ops(), serviceValue(newId, spec.name, record)],
    record,
  };
}

const canon = (x: unknown): string =>
  JSON.stringify(x, (_k, v: unknown) =>
    isPlain(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1))) : v,
  );

/** Whether running tasks must be replaced to get from spec `a` to `b`. */
export function needsRedeploy(a: ServiceSpec, b: ServiceSpec): boolean {
  return (
    canon(a.task) !== canon(b.task) ||
    canon(a.networks) !== canon(b.networks) ||
    canon(a.endpoint) !== canon(b.endpoint)
  );
}

function updateOps(
  store: Store,
  svc: Service,
  rec: StoredServiceRecord,
  next: ServiceSpec,
  at: string,
  now: number,
  opts: { force: boolean; rollback: boolean },
  shared?: AddressAllocator,
): { ops: Op[]; record: StoredServiceRecord } {
  const alloc = shared ?? new AddressAllocator(store);
  const ports = allocatePorts(store, svc.id, at, next.endpoint.ports, rec.endpoint.ports);
  const vips = allocateVips(store, alloc, at, next, ports, rec.endpoint.vips);
  const spec: ServiceSpec = { ...next, endpoint: { ...next.endpoint, ports } };
  const redeploy = opts.force || needsRedeploy(rec.spec, spec);
  const record: StoredServiceRecord = {
    ...rec,
    spec,
    previousSpec: rec.spec,
    endpoint: { vips, ports },
  };
  if (redeploy) {
    record.specVersion = rec.specVersion + 1;
    record.updateStatus = opts.rollback
      ? { state: 'rollback_started', message: 'rollback started', startedAt: now }
      : { state: 'updating', message: 'update in progress', startedAt: now };
    record.progress = { failed: 0, started: 0 };
  }
  const { version: _v, createdIndex: _c, ...value } = svc;
  return {
    ops: [
      allocGuard(store),
      ...(shared === undefined ? alloc.ops() : []),
      {
        op: 'update',
        kind: 'service',
        value: { ...value, spec: record as unknown as Json },
        version: svc.version,
      },
    ],
    record,
  };
}

function liveRecord(store: Store, ref: string, at: string): [Service, StoredServiceRecord] {
  const svc = mustFindService(store, ref, at);
  const rec = recordOf(svc);
  if (rec === null) {
    throw new MeshError('ECONFLICT', `${at}: its record is not one this build understands`);
  }
  if (rec.removing === true) {
    throw new MeshError('ECONFLICT', `${at}: the service is being removed`);
  }
  return [svc, rec];
}

/** Ops applying an update request (POST /v1/service/update); no ops when nothing changes. */
export function planUpdateService(
  store: Store,
  ref: string,
  req: unknown,
  now: number,
): { ops: Op[]; service: Service } {
  const [svc, rec] = liveRecord(store, ref, `update service ${ref}`);
  const at = `update service ${svc.name}`;
  const next = parseServiceRequest(store, req, rec.spec);
  const force = isPlain(req) && req['force'] === true;
  if (!force && canon(next) === canon(rec.spec)) return { ops: [], service: svc };
  return {
    ops: updateOps(store, svc, rec, next, at, now, { force, rollback: false }).ops,
    service: svc,
  };
}

/** Ops setting the replica count (no redeploy: running tasks stay). */
export function planScaleService(store: Store, ref: string, replicas: unknown): Op[] {
  const [svc, rec] = liveRecord(store, ref, `scale service ${ref}`);
  const at = `scale service ${svc.name}`;
  const n = int(at, replicas, 'replicas', 0, MAX_REPLICAS);
  if (rec.spec.mode === 'global') {
    throw usage(`${at}: it is a global service (one task per node); only replicated ones scale`);
  }
  if (rec.spec.replicas === n) return [];
  const record: StoredServiceRecord = { ...rec, spec: { ...rec.spec, replicas: n } };
  const { version: _v, createdIndex: _c, ...value } = svc;
  return [
    {
      op: 'update',
      kind: 'service',
      value: { ...value, spec: record as unknown as Json },
      version: svc.version,
    },
  ];
}

/** Ops returning a service to its previous spec (rolled out with the rollback config). */
export function planRollbackService(store: Store, ref: string, now: number): Op[] {
  const [svc, rec] = liveRecord(store, ref, `rollback service ${ref}`);
  return rollbackOps(store, svc, rec, now);
}

/** With `shared`, its network ops are left to the caller (the orchestrator's own plan). */
export function rollbackOps(
  store: Store,
  svc: Service,
  rec: StoredServiceRecord,
  now: number,
  shared?: AddressAllocator,
): Op[] {
  const at = `rollback service ${svc.name}`;
  if (rec.previousSpec === undefined) {
    throw new MeshError('ECONFLICT', `${at}: it has no previous spec (it was never updated)`);
  }
  // Replicas are not part of what a rollback restores (scale is not an update).
  const prev: ServiceSpec = { ...rec.previousSpec, replicas: rec.spec.replicas };
  return updateOps(store, svc, rec, prev, at, now, { force: false, rollback: true }, shared).ops;
}

/** Ops starting a removal: tasks are stopped, then the orchestrator deletes them and the service. */
export function planRemoveService(store: Store, ref: string): Op[] {
  const svc = mustFindService(store, ref, `remove service ${ref}`);
  const rec = recordOf(svc);
  if (rec === null) return [{ op: 'delete', kind: 'service', id: svc.id }];
  if (rec.removing === true) return [];
  const { version: _v, createdIndex: _c, ...value } = svc;
  return [
    {
      op: 'update',
      kind: 'service',
      value: { ...value, spec: { ...rec, removing: true } as unknown as Json },
      version: svc.version,
    },
  ];
}

// ---- views -----------------------------------------------------------------------------------

export interface ServiceView {
  id: string;
  name: string;
  mode: 'replicated' | 'global';
  specVersion: number;
  spec: ServiceSpec;
  previousSpec?: ServiceSpec;
  endpoint: {
    mode: 'vip' | 'dnsrr';
    /** VIP (CIDR) per network name. */
    vips: Record<string, string>;
    ports: PortSpec[];
  };
  updateStatus?: ServiceRecord['updateStatus'];
  removing: boolean;
  replicas: { running: number; desired: number };
  createdIndex: number;
  version: number;
}

export interface ServiceRow {
  id: string;
  name: string;
  mode: 'replicated' | 'global';
  running: number;
  desired: number;
  /** `8080->80/tcp` (ingress) or `8080->80/tcp (host)`. */
  ports: string[];
  updateState?: string;
}

export interface TaskRow {
  id: string;
  name: string;
  serviceId: string;
  service: string;
  slot?: number;
  nodeId?: string;
  /** Hostname of the task's node. */
  node: string;
  /** State of the task's node (ready, down, …). */
  nodeState?: string;
  /** The task is live on a node that is not ready: `state` is that node's last report. */
  stale?: true;
  desired: string;
  state: string;
  specVersion: number;
  message: string;
  error?: string;
  /** Addresses per network name. */
  addresses: Record<string, string>;
  /** ms since the task's status was last reported. */
  ageMs: number;
}

function counts(
  store: Store,
  svc: Service,
  rec: StoredServiceRecord,
): { running: number; desired: number } {
  let running = 0;
  for (const t of store.list('task', (x) => x.serviceId === svc.id)) {
    const tr = taskRecordOf(t);
    if (tr !== null && tr.desiredState === 'running' && t.state === 'running') running++;
  }
  const desired =
    rec.removing === true
      ? 0
      : rec.spec.mode === 'replicated'
        ? rec.spec.replicas
        : globalTargets(store, rec.spec).length;
  return { running, desired };
}

/** Nodes a global service runs on (ready or not yet down, active, constraints met). */
export function globalTargets(store: Store, spec: ServiceSpec): Node[] {
  return store.list(
    'node',
    (n) =>
      n.status.state === 'ready' &&
      n.availability === 'active' &&
      spec.task.constraints.every((c) => {
        try {
          return matches(n, c);
        } catch {
          return false;
        }
      }),
  );
}

function matches(n: Node, c: string): boolean {
  const k = parseConstraint(c);
  const v = k.field.startsWith('labels.')
    ? n.labels[k.field.slice(7)]
    : k.field === 'role'
      ? n.role
      : k.field === 'hostname'
        ? n.hostname
        : n.id;
  return k.op === '==' ? v === k.value : v !== k.value;
}

export function describeService(store: Store, svc: Service): ServiceView {
  const rec = recordOf(svc);
  if (rec === null) {
    throw new MeshError('ECONFLICT', `inspect service ${svc.name}: not a record this build reads`);
  }
  const netName = (id: string) => store.get('network', id)?.name ?? id;
  return {
    id: svc.id,
    name: svc.name,
    mode: rec.spec.mode,
    specVersion: rec.specVersion,
    spec: rec.spec,
    ...(rec.previousSpec !== undefined ? { previousSpec: rec.previousSpec } : {}),
    endpoint: {
      mode: rec.spec.endpoint.mode,
      vips: Object.fromEntries(rec.endpoint.vips.map((v) => [netName(v.networkId), v.addr])),
      ports: rec.endpoint.ports,
    },
    ...(rec.updateStatus !== undefined ? { updateStatus: rec.updateStatus } : {}),
    removing: rec.removing === true,
    replicas: counts(store, svc, rec),
    createdIndex: svc.createdIndex,
    version: svc.version,
  };
}

const portText = (p: PortSpec): string =>
  `${p.published}->${p.target}/${p.protocol}${p.mode === 'host' ? ' (host)' : ''}`;

export function listServices(store: Store): ServiceRow[] {
  const out: ServiceRow[] = [];
  for (const s of store.list('service')) {
    const rec = recordOf(s);
    if (rec === null) continue;
    const c = counts(store, s, rec);
    out.push({
      id: s.id,
      name: s.name,
      mode: rec.spec.mode,
      running: c.running,
      desired: c.desired,
      ports: rec.endpoint.ports.map(portText),
      ...(rec.updateStatus !== undefined ? { updateState: rec.updateStatus.state } : {}),
    });
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Every task of every service (or of one): newest first per slot, slots in order. */
export function listTasks(store: Store, now: number, serviceId?: string): TaskRow[] {
  const netName = (id: string) => store.get('network', id)?.name ?? id;
  const rows: (TaskRow & { ci: number })[] = [];
  for (const t of store.list('task', (x) => serviceId === undefined || x.serviceId === serviceId)) {
    const r = taskRecordOf(t);
    if (r === null) continue;
    const node = t.nodeId === undefined ? undefined : store.get('node', t.nodeId);
    const svc = store.get('service', t.serviceId!);
    rows.push({
      id: t.id,
      name: t.name,
      serviceId: t.serviceId!,
      service: svc?.name ?? r.serviceName,
      ...(r.slot !== undefined ? { slot: r.slot } : {}),
      ...(t.nodeId !== undefined ? { nodeId: t.nodeId } : {}),
      node: node?.hostname ?? t.nodeId ?? '',
      ...(node ? { nodeState: node.status.state } : {}),
      ...(node &&
      node.status.state !== 'ready' &&
      !isTerminal(t) &&
      taskStateRank(t.state) >= ASSIGNED_RANK
        ? { stale: true as const }
        : {}),
      desired: r.desiredState,
      state: t.state,
      specVersion: r.specVersion,
      message: r.status?.message ?? '',
      ...(r.status?.err !== undefined ? { error: r.status.err } : {}),
      addresses: Object.fromEntries(
        (r.attachments ?? []).map((a) => [netName(a.networkId), a.addresses[0] ?? '']),
      ),
      ageMs: Math.max(0, now - (r.status?.at ?? now)),
      ci: t.createdIndex,
    });
  }
  rows.sort(
    (a, b) =>
      a.service.localeCompare(b.service) ||
      (a.slot ?? 0) - (b.slot ?? 0) ||
      a.node.localeCompare(b.node) ||
      b.ci - a.ci,
  );
  return rows.map(({ ci: _ci, ...r }) => r);
}
