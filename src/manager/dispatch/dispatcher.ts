/**
 * The dispatcher: the leader's side of every agent's session. Each node long-polls its
 * assignments (its service tasks, the networks they and ingress need, the whole service
 * table); the first reply of a session is complete, later ones carry only what changed since
 * the version the node holds (a chain: `prev` must be what the node holds, else it resyncs).
 * Nodes report task state moves (committed in batches, forward only) and the view version their
 * load balancer and DNS have applied; `lbWait` tells a node stopping a task when every node has
 * stopped sending it new connections. Log requests for `meshctl service logs` ride on the long
 * poll.
 *
 * `nodeView` and `diffView` are pure. The Dispatcher class keeps sessions in memory (leader
 * only: a new leader answers the first poll of each node with a complete view) and uses timers
 * for long polls and debouncing; clock readings come from the host.
 *
 * May import src/api/, src/manager/{store,allocation}/ and src/util/errors.ts.
 */

import { MeshError } from '../../util/errors.js';
import { taskAttachments } from '../allocation/networks.js';
import {
  CLUSTER_ID,
  TASK_STATES,
  taskStateMayMove,
  taskStateRank,
  type Json,
  type Node,
  type Task,
  type TaskState,
  isPlain,
} from '../../api/objects.js';
import type {
  AssignedTask,
  Assignments,
  LbWaitReply,
  LogRequest,
  NetworkInfo,
  NodeView,
  ServiceEndpoint,
  ServiceEntry,
  ServiceRecord,
  TaskRecord,
  TaskStatus,
  TaskStatusUpdate,
} from '../../api/services.js';
import type { Op, Store } from '../store/store.js';

export interface DispatcherHost {
  store: Store;
  /** Raft commit of one command; throws MeshError (ECONFLICT when a version guard failed). */
  commit(ops: Op[]): Promise<number[]>;
  isLeader(): boolean;
  /** ms since the Unix epoch. */
  now(): number;
  /** Store version (raft index) views are stamped with. */
  appliedIndex(): number;
}

/** What changed between two views of one node (ids to remove, objects new or changed). */
export interface ViewDiff {
  upsert: Partial<NodeView>;
  remove: { tasks?: string[]; networks?: string[]; services?: string[] };
}

/** Longest long poll; the agent's RPC timeout is this plus a margin. */
export const MAX_WAIT_MS = 10_000;
/** Store changes within this long wake the long polls once. */
const DEBOUNCE_MS = 10;
const MAX_DEBOUNCE_MS = 200;
/** How often a manager with pending polls checks it is still the leader. */
const LEADER_CHECK_MS = 500;
/** A node that polled within this long counts as connected (polls end every ≤ 10 s). */
const CONNECTED_MS = 12_000;
const MAX_LB_WAIT_MS = 60_000;
const MAX_UPDATES = 10_000;
const MAX_LOG_REQUESTS = 64;
/** Status commits that lost a version race are rebuilt from the store this often. */
const COMMIT_ATTEMPTS = 5;
const DEFAULT_HEARTBEAT_MS = 2_000;

const FIRST_TERMINAL = taskStateRank('complete');
const isTerminal = (s: TaskState): boolean => taskStateRank(s) >= FIRST_TERMINAL;

/** A service task's record, or null for standalone tasks and records another build wrote oddly. */
export function taskRecordOf(task: Task): TaskRecord | null {
  const s = task.spec;
  if (task.serviceId === undefined || !isPlain(s)) return null;
  if (
    typeof s['serviceName'] !== 'string' ||
    typeof s['specVersion'] !== 'number' ||
    (s['desiredState'] !== 'running' && s['desiredState'] !== 'shutdown') ||
    !isPlain(s['template']) ||
    !Array.isArray(s['hostPorts'])
  ) {
    return null;
  }
  return s as unknown as TaskRecord;
}

/** A service's record, or null if the spec is not one. */
export function serviceRecordOf(spec: Json): ServiceRecord | null {
  if (!isPlain(spec)) return null;
  const inner = spec['spec'];
  const ep = spec['endpoint'];
  if (
    !isPlain(inner) ||
    !isPlain(ep) ||
    !Array.isArray(ep['vips']) ||
    !Array.isArray(ep['ports'])
  ) {
    return null;
  }
  if (!isPlain(inner['endpoint']) || !Array.isArray(inner['networks'])) return null;
  return spec as unknown as ServiceRecord;
}

const plainIp = (cidr: string): string => cidr.split('/')[0]!;

function lbAddrsOf(node: Node | undefined): Readonly<Record<string, string>> {
  const l = (node as { lbAddrs?: unknown } | undefined)?.lbAddrs;
  return isPlain(l) ? (l as Record<string, string>) : {};
}

/**
 * The service table every node gets: each service with its endpoints (rules on
 * ServiceEndpoint.state), sorted by id. Pure.
 */
export function serviceTable(store: Store): ServiceEntry[] {
  const endpoints = new Map<string, ServiceEndpoint[]>();
  const nodes = new Map(store.list('node').map((n) => [n.id, n]));
  for (const t of store.list('task')) {
    const r = taskRecordOf(t);
    if (r === null || t.serviceId === undefined || t.nodeId === undefined) continue;
    const state = endpointState(t, r, nodes.get(t.nodeId));
    if (state === null) continue;
    const list = endpoints.get(t.serviceId) ?? [];
    list.push({
      taskId: t.id,
      taskName: t.name,
      nodeId: t.nodeId,
      nodeAddr: nodes.get(t.nodeId)?.addr ?? '',
      addresses: Object.fromEntries(
        taskAttachments(t)
          .filter((a) => a.addresses.length > 0)
          .map((a) => [a.networkId, plainIp(a.addresses[0]!)]),
      ),
      state,
    });
    endpoints.set(t.serviceId, list);
  }
  const out: ServiceEntry[] = [];
  for (const s of store.list('service')) {
    const r = serviceRecordOf(s.spec);
    if (r === null) continue;
    out.push({
      id: s.id,
      name: s.name,
      endpointMode: r.spec.endpoint.mode,
      vips: Object.fromEntries(r.endpoint.vips.map((v) => [v.networkId, plainIp(v.addr)])),
      ports: r.endpoint.ports,
      networks: r.spec.networks.map((n) => ({ networkId: n.network, aliases: [...n.aliases] })),
      endpoints: endpoints.get(s.id) ?? [],
    });
  }
  return out;
}

/** What every node's view is computed from; the same for all nodes at one store state. */
export interface ViewShared {
  services: ServiceEntry[];
  /** Tasks per node id, sorted by id. */
  tasksByNode: Map<string, Task[]>;
}

export function viewShared(
  store: Store,
  services: ServiceEntry[] = serviceTable(store),
): ViewShared {
  const tasksByNode = new Map<string, Task[]>();
  for (const t of store.list('task')) {
    if (t.nodeId === undefined) continue;
    const l = tasksByNode.get(t.nodeId);
    if (l === undefined) tasksByNode.set(t.nodeId, [t]);
    else l.push(t);
  }
  return { services, tasksByNode };
}

/**
 * What node `nodeId` is told. Tasks: its service tasks except those both terminal and desired
 * shutdown (a terminal task still desired running is listed so the agent sees the managers'
 * verdict); standalone tasks (`meshctl run`, no service) are the node's own business. Networks:
 * those its tasks are attached to, plus the ingress network, each with the node's LB address
 * when allocated. Services: the whole service table. `shared` (from viewShared) saves
 * recomputing the parts common to all nodes when computing many views of one store state. Everything sorted by id, so equal stores give equal views. Pure.
 */
export function nodeView(store: Store, nodeId: string, shared?: ViewShared): NodeView {
  const services = shared?.services ?? serviceTable(store);
  const mine =
    shared?.tasksByNode.get(nodeId) ??
    (shared ? [] : store.list('task', (x) => x.nodeId === nodeId));
  const tasks: AssignedTask[] = [];
  for (const t of mine) {
    const r = taskRecordOf(t);
    if (r === null || t.serviceId === undefined) continue;
    if (isTerminal(t.state) && r.desiredState === 'shutdown') continue;
    const svc = serviceRecordOf(store.get('service', t.serviceId)?.spec ?? null);
    const aliasesOf = (networkId: string): string[] => [
      ...(svc?.spec.networks.find((x) => x.network === networkId)?.aliases ?? []),
    ];
    tasks.push({
      id: t.id,
      name: t.name,
      version: t.version,
      serviceId: t.serviceId,
      serviceName: r.serviceName,
      ...(r.slot !== undefined ? { slot: r.slot } : {}),
      specVersion: r.specVersion,
      state: t.state,
      desiredState: r.desiredState,
      template: r.template,
      attachments: taskAttachments(t)
        .filter((a) => a.addresses.length > 0)
        .map((a) => ({
          networkId: a.networkId,
          address: a.addresses[0]!,
          aliases: aliasesOf(a.networkId),
        })),
      hostPorts: r.hostPorts,
      ...(r.notBefore !== undefined ? { notBefore: r.notBefore } : {}),
    });
  }

  const wanted = new Set<string>();
  for (const t of tasks) for (const a of t.attachments) wanted.add(a.networkId);
  const lbAddrs = lbAddrsOf(store.get('node', nodeId));
  const networks: NetworkInfo[] = [];
  for (const n of store.list('network')) {
    if (!wanted.has(n.id) && !n.options.ingress) continue;
    const lbAddr = lbAddrs[n.id];
    networks.push({
      id: n.id,
      name: n.name,
      vni: n.vni,
      subnets: n.subnets.map((s) => ({ subnet: s.subnet, gateway: s.gateway })),
      ...(n.options.mtu !== undefined ? { mtu: n.options.mtu } : {}),
      internal: n.options.internal,
      encrypted: n.options.encrypted,
      ingress: n.options.ingress,
      ...(typeof lbAddr === 'string' ? { lbAddr } : {}),
    });
  }
  return { tasks, networks, services };
}

/** api/services.ts ServiceEndpoint.state: active, draining, or not listed (null). */
function endpointState(
  t: Task,
  r: TaskRecord,
  node: Node | undefined,
): 'active' | 'draining' | null {
  if (t.state !== 'running') return null;
  if (r.desiredState === 'shutdown') return 'draining';
  const healthy = isPlain(r.status) ? r.status.healthy : undefined;
  return node?.status.state === 'ready' && healthy !== false ? 'active' : null;
}

function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as unknown[];
    return a.length === bb.length && a.every((x, i) => sameJson(x, bb[i]));
  }
  const ao = a as Record<string, unknown>;
  const bo = b as Record<string, unknown>;
  const ka = Object.keys(ao).filter((k) => ao[k] !== undefined);
  const kb = Object.keys(bo).filter((k) => bo[k] !== undefined);
  return ka.length === kb.length && ka.every((k) => sameJson(ao[k], bo[k]));
}

/** Changes turning `prev` into `next`, or null when they are equal. Pure. */
export function diffView(prev: NodeView, next: NodeView): ViewDiff | null {
  const out: ViewDiff = { upsert: {}, remove: {} };
  let any = false;
  const part = <K extends keyof NodeView>(key: K): void => {
    const before = new Map((prev[key] as { id: string }[]).map((x) => [x.id, x]));
    const after = next[key] as { id: string }[];
    const up = after.filter((x) => !sameJson(before.get(x.id), x));
    const ids = new Set(after.map((x) => x.id));
    const gone = [...before.keys()].filter((id) => !ids.has(id));
    if (up.length > 0) (out.upsert as Record<string, unknown>)[key] = up;
    if (gone.length > 0) out.remove[key] = gone;
    any ||= up.length > 0 || gone.length > 0;
  };
  part('tasks');
  part('networks');
  part('services');
  return any ? out : null;
}

// ---- the sessions ------------------------------------------------------------------------------

interface Poll {
  resolve(a: Assignments): void;
  reject(e: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

interface Session {
  /** Version of the last view sent, and that view. */
  version: number;
  view: NodeView;
  /** Latest applied index at which this node's view was found equal to the one sent. */
  validThrough: number;
}

interface NodeState {
  session?: Session;
  poll?: Poll;
  /** host.now() of the last poll start or end, status report or lbApplied. */
  seenAt?: number;
  lbApplied?: number;
  logRequests: LogRequest[];
}

interface LbWaiter {
  version: number;
  start: number;
  resolve(r: LbWaitReply): void;
  reject(e: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

interface PendingLogs {
  nodeId: string;
  taskIds: Set<string>;
  resolve(r: Record<string, string>): void;
  reject(e: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

interface Queued {
  nodeId: string;
  updates: TaskStatusUpdate[];
  resolve(): void;
  reject(e: Error): void;
}

const unavailable = (what: string): MeshError =>
  new MeshError(
    'EUNAVAILABLE',
    `${what}: this manager is not serving agent sessions (stopped or no longer the leader); retry with the leader`,
  );

export class Dispatcher {
  private readonly nodes = new Map<string, NodeState>();
  private readonly waiters = new Set<LbWaiter>();
  private readonly logs_ = new Map<string, PendingLogs>();
  private queue: Queued[] = [];
  private committing = false;
  private wakeTimer: ReturnType<typeof setTimeout> | undefined;
  private leaderTimer: ReturnType<typeof setInterval> | undefined;
  private wakeCostMs = 0;
  private lastTable = new Map<string, { entry: ServiceEntry; json: string }>();
  private unwatch: (() => void) | undefined;
  private closed = false;
  private logSeq = 0;

  constructor(private readonly host: DispatcherHost) {
    this.unwatch = host.store.watch('*', () => this.wakeSoon());
  }

  /**
   * Long poll of node `nodeId`. `since` null or not the version this session last sent: a
   * complete view at once. Else the changes since then, at once if there are any, otherwise
   * when some arrive or after `waitMs` (≤ 10 s) as an empty reply (`version === prev`).
   */
  async assignments(
    nodeId: string,
    p: { since: number | null; waitMs?: number },
  ): Promise<Assignments> {
    const at = 'assignments';
    this.serving(at);
    if (!isPlain(p) || (p.since !== null && !isIndex(p.since))) {
      throw new MeshError('EUSAGE', `${at}: since must be a version number or null`);
    }
    if (p.waitMs !== undefined && (typeof p.waitMs !== 'number' || !(p.waitMs >= 0))) {
      throw new MeshError('EUSAGE', `${at}: waitMs must be a number of ms ≥ 0`);
    }
    if (this.host.store.get('node', nodeId) === undefined) {
      throw new MeshError(
        'EAUTH',
        `${at}: node ${nodeId} is not a member of this cluster; join it again`,
      );
    }
    const ns = this.stateOf(nodeId);
    ns.seenAt = this.host.now();
    if (ns.poll !== undefined) this.endPoll(ns, this.emptyReply(ns));

    const view = nodeView(
      this.host.store,
      nodeId,
      viewShared(this.host.store, this.internedTable()),
    );
    const version = this.host.appliedIndex();
    const s = ns.session;
    if (p.since === null || s === undefined || p.since !== s.version) {
      ns.session = { version, view, validThrough: version };
      return { complete: true, version, view, ...this.takeLogRequests(ns) };
    }
    const d = diffView(s.view, view);
    if (d !== null) {
      ns.session = { version, view, validThrough: version };
      return { complete: false, version, prev: s.version, ...d, ...this.takeLogRequests(ns) };
    }
    s.validThrough = Math.max(s.validThrough, version);
    this.checkWaiters();
    if (ns.logRequests.length > 0) return this.emptyReply(ns);
    const waitMs = Math.min(p.waitMs ?? MAX_WAIT_MS, MAX_WAIT_MS);
    if (waitMs === 0) return this.emptyReply(ns);
    return new Promise<Assignments>((resolve, reject) => {
      const poll: Poll = {
        resolve,
        reject,
        timer: setTimeout(() => {
          if (ns.poll === poll) this.endPoll(ns, this.emptyReply(ns));
        }, waitMs),
      };
      ns.poll = poll;
      this.watchLeadership();
    });
  }

  /**
   * Task state reports of node `nodeId` and the view version its LB/DNS applied. Updates are
   * committed in batches (with those of other nodes arriving meanwhile), each guarded by the
   * task's version; moves backwards and repeats are dropped. Updates for tasks of other nodes
   * are refused with EAUTH (after the node's own ones are committed).
   */
  async status(
    nodeId: string,
    p: { updates: TaskStatusUpdate[]; lbApplied?: number },
  ): Promise<{ ok: true }> {
    const at = 'task status';
    this.serving(at);
    if (!isPlain(p) || !Array.isArray(p.updates) || p.updates.length > MAX_UPDATES) {
      throw new MeshError('EUSAGE', `${at}: updates must be an array of at most ${MAX_UPDATES}`);
    }
    if (p.lbApplied !== undefined && !isIndex(p.lbApplied)) {
      throw new MeshError('EUSAGE', `${at}: lbApplied must be a version number`);
    }
    const updates = p.updates.map((u, i) => checkUpdate(u, `${at}: updates[${i}]`));
    const ns = this.stateOf(nodeId);
    ns.seenAt = this.host.now();
    if (p.lbApplied !== undefined) {
      ns.lbApplied = Math.max(ns.lbApplied ?? 0, p.lbApplied);
      this.checkWaiters();
    }
    const foreign: string[] = [];
    const mine: TaskStatusUpdate[] = [];
    for (const u of updates) {
      const t = this.host.store.get('task', u.taskId);
      if (t !== undefined && t.nodeId !== nodeId) foreign.push(t.name);
      else mine.push(u);
    }
    if (mine.length > 0) {
      await new Promise<void>((resolve, reject) => {
        this.queue.push({ nodeId, updates: mine, resolve, reject });
        void this.flush();
      });
    }
    if (foreign.length > 0) {
      throw new MeshError(
        'EAUTH',
        `${at}: node ${nodeId} reported tasks of other nodes (${foreign.slice(0, 5).join(', ')}); only a task's own node reports its state`,
      );
    }
    return { ok: true };
  }

  /**
   * Resolves once every node that matters has applied view `version` in its load balancer:
   * nodes whose status is ready and that have a live service task or polled recently (three
   * heartbeat periods, at least 12 s). A node whose view did not change between the version it
   * applied and `version` counts as having applied it. At `timeoutMs` it resolves anyway,
   * listing the laggards.
   */
  async lbWait(nodeId: string, p: { version: number; timeoutMs: number }): Promise<LbWaitReply> {
    const at = 'lb wait';
    this.serving(at);
    if (!isPlain(p) || !isIndex(p.version)) {
      throw new MeshError('EUSAGE', `${at}: version must be a version number`);
    }
    if (typeof p.timeoutMs !== 'number' || !(p.timeoutMs >= 0)) {
      throw new MeshError('EUSAGE', `${at}: timeoutMs must be a number of ms ≥ 0`);
    }
    this.stateOf(nodeId).seenAt = this.host.now();
    const start = this.host.now();
    const timeoutMs = Math.min(p.timeoutMs, MAX_LB_WAIT_MS);
    return new Promise<LbWaitReply>((resolve, reject) => {
      const w: LbWaiter = {
        version: p.version,
        start,
        resolve,
        reject,
        timer: setTimeout(() => {
          if (!this.waiters.delete(w)) return;
          resolve({ waitedMs: this.host.now() - start, pending: this.laggards(w.version) });
        }, timeoutMs),
      };
      this.waiters.add(w);
      this.checkWaiters();
    });
  }

  /** A node's answer to a log request; only the node asked may answer it. */
  logs(nodeId: string, p: { id: string; logs: Record<string, string> }): Promise<{ ok: true }> {
    try {
      this.answerLogs(nodeId, p);
      return Promise.resolve({ ok: true });
    } catch (e) {
      return Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
  }

  private answerLogs(nodeId: string, p: { id: string; logs: Record<string, string> }): void {
    const at = 'task logs';
    this.serving(at);
    if (!isPlain(p) || typeof p.id !== 'string' || !isPlain(p.logs)) {
      throw new MeshError('EUSAGE', `${at}: id (string) and logs (object) are required`);
    }
    const q = this.logs_.get(p.id);
    if (q === undefined) return; // timed out meanwhile
    if (q.nodeId !== nodeId) {
      throw new MeshError('EAUTH', `${at}: log request ${p.id} was sent to another node`);
    }
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(p.logs)) {
      if (q.taskIds.has(k) && typeof v === 'string') out[k] = v;
    }
    this.logs_.delete(p.id);
    clearTimeout(q.timer);
    q.resolve(out);
  }

  /**
   * Ask node `nodeId` (through its long poll) for the output of `taskIds`, last `tail` lines
   * (0 = all). Resolves with output per task id the node has; EUNAVAILABLE if the node is not
   * connected, ETIMEDOUT if it does not answer within `timeoutMs`.
   */
  async requestLogs(
    nodeId: string,
    taskIds: string[],
    tail: number,
    timeoutMs: number,
  ): Promise<Record<string, string>> {
    const at = 'service logs';
    this.serving(at);
    const host = this.host.store.get('node', nodeId)?.hostname ?? nodeId;
    const ns = this.nodes.get(nodeId);
    if (ns === undefined || !this.connected(ns, CONNECTED_MS)) {
      throw new MeshError('EUNAVAILABLE', `${at}: node ${host} is not connected to the leader`);
    }
    if (ns.logRequests.length >= MAX_LOG_REQUESTS) {
      throw new MeshError('EUNAVAILABLE', `${at}: node ${host} has too many log requests pending`);
    }
    const id = `logs-${++this.logSeq}`;
    const req: LogRequest = { id, taskIds: [...taskIds], tail };
    const done = new Promise<Record<string, string>>((resolve, reject) => {
      this.logs_.set(id, {
        nodeId,
        taskIds: new Set(taskIds),
        resolve,
        reject,
        timer: setTimeout(() => {
          this.logs_.delete(id);
          ns.logRequests = ns.logRequests.filter((r) => r.id !== id);
          reject(
            new MeshError('ETIMEDOUT', `${at}: node ${host} did not answer within ${timeoutMs} ms`),
          );
        }, timeoutMs),
      });
    });
    ns.logRequests.push(req);
    if (ns.poll !== undefined) this.endPoll(ns, this.emptyReply(ns));
    return done;
  }

  /** Nodes with a poll pending or one in the last 12 s (sorted). */
  connectedNodes(): string[] {
    return [...this.nodes]
      .filter(([, ns]) => this.connected(ns, CONNECTED_MS))
      .map(([id]) => id)
      .sort();
  }

  /** End every long poll, lb wait and log request with EUNAVAILABLE; forget all sessions. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.unwatch?.();
    this.unwatch = undefined;
    if (this.wakeTimer !== undefined) clearTimeout(this.wakeTimer);
    if (this.leaderTimer !== undefined) clearInterval(this.leaderTimer);
    this.dropAll(unavailable('dispatcher'));
    for (const q of this.queue) q.reject(unavailable('task status'));
    this.queue = [];
  }

  // ---- internals --------------------------------------------------------------------------------

  private serving(what: string): void {
    if (this.closed || !this.host.isLeader()) throw unavailable(what);
  }

  private stateOf(nodeId: string): NodeState {
    let ns = this.nodes.get(nodeId);
    if (ns === undefined) {
      ns = { logRequests: [] };
      this.nodes.set(nodeId, ns);
    }
    return ns;
  }

  private connected(ns: NodeState, withinMs: number): boolean {
    if (ns.poll !== undefined) return true;
    return ns.seenAt !== undefined && this.host.now() - ns.seenAt <= withinMs;
  }

  private emptyReply(ns: NodeState): Assignments {
    const v = ns.session?.version ?? 0;
    return {
      complete: false,
      version: v,
      prev: v,
      upsert: {},
      remove: {},
      ...this.takeLogRequests(ns),
    };
  }

  private takeLogRequests(ns: NodeState): { logRequests?: LogRequest[] } {
    if (ns.logRequests.length === 0) return {};
    const logRequests = ns.logRequests;
    ns.logRequests = [];
    return { logRequests };
  }

  private endPoll(ns: NodeState, reply: Assignments): void {
    const poll = ns.poll;
    if (poll === undefined) return;
    ns.poll = undefined;
    ns.seenAt = this.host.now();
    clearTimeout(poll.timer);
    poll.resolve(reply);
  }

  /**
   * While polls are pending, notice a lost leadership even if no entry changes the store (a new
   * leader's first entry is an empty no-op): the agents should move on at once, not after 10 s.
   */
  private watchLeadership(): void {
    if (this.leaderTimer !== undefined) return;
    this.leaderTimer = setInterval(() => {
      if (!this.host.isLeader()) this.dropAll(unavailable('dispatcher'));
      if ([...this.nodes.values()].every((ns) => ns.poll === undefined)) {
        clearInterval(this.leaderTimer);
        this.leaderTimer = undefined;
      }
    }, LEADER_CHECK_MS);
    this.leaderTimer.unref();
  }

  private wakeSoon(): void {
    // Followers (and a leader no node polled yet) have nothing to wake.
    if (this.closed || this.wakeTimer !== undefined || this.nodes.size === 0) return;
    // A wake recomputes every session's view: under steady churn, leave the event loop at
    // least twice its cost for everything else.
    const delay = Math.min(Math.max(DEBOUNCE_MS, 2 * this.wakeCostMs), MAX_DEBOUNCE_MS);
    this.wakeTimer = setTimeout(() => {
      this.wakeTimer = undefined;
      const start = this.host.now();
      this.wake();
      this.wakeCostMs = this.host.now() - start;
    }, delay);
  }

  /** After store changes: send changed views to waiting polls, note unchanged ones as current. */
  private wake(): void {
    if (this.closed) return;
    if (!this.host.isLeader()) {
      this.dropAll(unavailable('dispatcher'));
      return;
    }
    const version = this.host.appliedIndex();
    let shared: ViewShared | undefined;
    for (const [nodeId, ns] of this.nodes) {
      const s = ns.session;
      if (s === undefined) continue;
      if (this.host.store.get('node', nodeId) === undefined) {
        if (ns.poll !== undefined) {
          const p = ns.poll;
          ns.poll = undefined;
          clearTimeout(p.timer);
          p.reject(new MeshError('EAUTH', `assignments: node ${nodeId} left the cluster`));
        }
        this.nodes.delete(nodeId);
        continue;
      }
      shared ??= viewShared(this.host.store, this.internedTable());
      const view = nodeView(this.host.store, nodeId, shared);
      const d = diffView(s.view, view);
      if (d === null) {
        s.validThrough = Math.max(s.validThrough, version);
      } else if (ns.poll !== undefined) {
        ns.session = { version, view, validThrough: version };
        this.endPoll(ns, {
          complete: false,
          version,
          prev: s.version,
          ...d,
          ...this.takeLogRequests(ns),
        });
      }
    }
    this.checkWaiters();
  }

  /**
   * The service table, reusing the previous one's entry objects for services that did not
   * change, so comparing them with what sessions hold is mostly a reference check.
   */
  private internedTable(): ServiceEntry[] {
    const next = new Map<string, { entry: ServiceEntry; json: string }>();
    const out = serviceTable(this.host.store).map((e) => {
      const json = JSON.stringify(e);
      const old = this.lastTable.get(e.id);
      const entry = old !== undefined && old.json === json ? old.entry : e;
      next.set(e.id, { entry, json });
      return entry;
    });
    this.lastTable = next;
    return out;
  }

  /** Nodes an lbWait waits for, with the view version each has applied (-1: none known). */
  private mustApply(): { hostname: string; applied: number }[] {
    const store = this.host.store;
    const period =
      store.get('cluster', CLUSTER_ID)?.settings.heartbeatPeriodMs ?? DEFAULT_HEARTBEAT_MS;
    const window = 3 * period;
    const withTasks = new Set<string>();
    for (const t of store.list('task')) {
      if (t.nodeId !== undefined && t.serviceId !== undefined && !isTerminal(t.state)) {
        withTasks.add(t.nodeId);
      }
    }
    const out: { hostname: string; applied: number }[] = [];
    for (const n of store.list('node')) {
      if (n.status.state !== 'ready') continue;
      const ns = this.nodes.get(n.id);
      const live = ns !== undefined && this.connected(ns, window);
      if (!live && !withTasks.has(n.id)) continue;
      out.push({ hostname: n.hostname, applied: effectiveApplied(ns) });
    }
    return out;
  }

  /** Hostnames (sorted) of nodes that must apply `version` and have not. */
  private laggards(version: number, nodes = this.mustApply()): string[] {
    return nodes
      .filter((n) => n.applied < version)
      .map((n) => n.hostname)
      .sort();
  }

  private checkWaiters(): void {
    if (this.waiters.size === 0) return;
    const nodes = this.mustApply();
    for (const w of [...this.waiters]) {
      if (this.laggards(w.version, nodes).length > 0) continue;
      this.waiters.delete(w);
      clearTimeout(w.timer);
      w.resolve({ waitedMs: this.host.now() - w.start, pending: [] });
    }
  }

  private dropAll(err: MeshError): void {
    for (const ns of this.nodes.values()) {
      const p = ns.poll;
      if (p === undefined) continue;
      ns.poll = undefined;
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.nodes.clear();
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    this.waiters.clear();
    for (const q of this.logs_.values()) {
      clearTimeout(q.timer);
      q.reject(err);
    }
    this.logs_.clear();
  }

  /** Commit queued status updates, all queued ones in one command, one command at a time. */
  private async flush(): Promise<void> {
    if (this.committing) return;
    this.committing = true;
    try {
      while (this.queue.length > 0 && !this.closed) {
        const batch = this.queue;
        this.queue = [];
        try {
          await this.commitBatch(batch);
          for (const q of batch) q.resolve();
        } catch (e) {
          for (const q of batch) q.reject(e as Error);
        }
      }
    } finally {
      this.committing = false;
    }
  }

  private async commitBatch(batch: Queued[]): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const ops = statusOps(this.host.store, batch);
      if (ops.length === 0) return;
      try {
        await this.host.commit(ops);
        return;
      } catch (e) {
        // Another writer changed one of the tasks since we read it: rebuild from the new state.
        if (!(e instanceof MeshError) || e.code !== 'ECONFLICT' || attempt >= COMMIT_ATTEMPTS) {
          throw e;
        }
      }
    }
  }
}

function effectiveApplied(ns: NodeState | undefined): number {
  if (ns?.lbApplied === undefined) return -1;
  const s = ns.session;
  if (s !== undefined && ns.lbApplied >= s.version) return Math.max(ns.lbApplied, s.validThrough);
  return ns.lbApplied;
}

const isIndex = (v: unknown): v is number =>
  typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

const cut = (s: string, n: number): string => (s.length > n ? s.slice(0, n) + '…' : s);

function checkUpdate(u: unknown, at: string): TaskStatusUpdate {
  if (!isPlain(u) || typeof u['taskId'] !== 'string') {
    throw new MeshError('EUSAGE', `${at}: taskId (string) is required`);
  }
  const state = u['state'];
  if (typeof state !== 'string' || !(TASK_STATES as readonly string[]).includes(state)) {
    throw new MeshError('EUSAGE', `${at}: state must be one of ${TASK_STATES.join(', ')}`);
  }
  const s = u['status'];
  if (!isPlain(s) || typeof s['message'] !== 'string' || typeof s['at'] !== 'number') {
    throw new MeshError('EUSAGE', `${at}: status needs message (string) and at (ms)`);
  }
  const status: TaskStatus = { message: cut(s['message'], 1024), at: s['at'] };
  if (typeof s['err'] === 'string') status.err = cut(s['err'], 4096);
  if (typeof s['exitCode'] === 'number' && Number.isSafeInteger(s['exitCode'])) {
    status.exitCode = s['exitCode'];
  }
  if (typeof s['healthy'] === 'boolean') status.healthy = s['healthy'];
  return { taskId: u['taskId'], state: state as TaskState, status };
}

/** Ops for a batch: per task the furthest state reported (last report on ties). */
function statusOps(store: Store, batch: Queued[]): Op[] {
  const best = new Map<string, TaskStatusUpdate>();
  for (const q of batch) {
    for (const u of q.updates) {
      const t = store.get('task', u.taskId);
      if (t === undefined || t.nodeId !== q.nodeId || taskRecordOf(t) === null) continue;
      const prev = best.get(u.taskId);
      if (prev === undefined || taskStateMayMove(prev.state, u.state)) best.set(u.taskId, u);
    }
  }
  const ops: Op[] = [];
  for (const u of best.values()) {
    const t = store.get('task', u.taskId)!;
    const spec = t.spec as unknown as TaskRecord;
    if (!taskStateMayMove(t.state, u.state)) continue;
    if (t.state === u.state && sameStatus(spec.status, u.status)) continue;
    const { version: _v, createdIndex: _c, ...value } = t;
    ops.push({
      op: 'update',
      kind: 'task',
      value: { ...value, state: u.state, spec: { ...spec, status: u.status } as unknown as Json },
      version: t.version,
    });
  }
  return ops;
}

/** Same status apart from the report time (a repeat changes nothing worth a commit). */
function sameStatus(a: TaskStatus | undefined, b: TaskStatus): boolean {
  if (!isPlain(a)) return false;
  return (
    a.message === b.message &&
    a.err === b.err &&
    a.exitCode === b.exitCode &&
    a.healthy === b.healthy
  );
}
