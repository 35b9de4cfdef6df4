/**
 * The agent's side of the dispatcher session: long-polls this node's assignments (a complete
 * view, then increments chained by version), runs and stops service tasks to match, reports
 * their state transitions in batches, runs health checks, and hands the cluster's service
 * table to the node's load balancer and DNS. Reports which view version the load balancer has
 * applied, so a manager can tell when every node has stopped sending to a task.
 *
 * Starting a task: it is reported `running` (an active backend everywhere) only once it listens
 * on its service's published target ports; `starting` until then (bounded).
 *
 * Stopping a task: the dispatcher's view already lists it as draining (no new connections) from
 * the version that set its desired state to shutdown; the worker asks the managers to wait until
 * every node has applied that version (`dispatcher.lbWait`, measured), then signals the task.
 *
 * Restarts are the orchestrator's: a task that exits is reported `complete`/`failed` and never
 * started again here; the managers create its replacement.
 * May import: src/agent, src/manager (types), src/netlink, src/util, node built-ins.
 */
import { spawn } from 'node:child_process';
import type {
  AssignedTask,
  Assignments,
  LbWaitReply,
  LogRequest,
  NetworkInfo,
  NodeView,
  PortSpec,
  ServiceEntry,
  TaskStatusUpdate,
} from '../api/services.js';
import type { TaskState } from '../api/objects.js';
import { netnsOpen, withNetns } from '../netlink/index.js';
import { MeshError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import type { Agent } from './agent.js';
import { listeningPorts } from './proc.js';

const log = createLogger('worker');

export type Rpc = (method: string, params: unknown, timeoutMs?: number) => Promise<unknown>;

/** What the worker needs from the node's load balancer (src/lb/mesh.ts ServiceLb). */
export interface WorkerLb {
  apply(
    services: ServiceEntry[],
    networks: NetworkInfo[],
    localNetworks: Set<string>,
    hostTasks: HostTask[],
  ): Promise<{ changes: number }>;
  /** Load-balancer namespaces' endpoints, published in the networks' peer tables. */
  lbEndpoints(): { networkId: string; ip: string; mac: string }[];
}

export interface HostTask {
  taskId: string;
  gatewayIp: string;
  ports: AssignedTask['hostPorts'];
}

/** What the worker needs from the embedded DNS (src/dns). */
export interface WorkerDns {
  update(services: ServiceEntry[]): void;
  /** Start a resolver inside a task's namespace for the networks it is on. */
  serve(netnsPath: string, networks: string[]): Promise<{ close(): Promise<void> }>;
  /** The task's resolv.conf. */
  resolvConf(): string;
}

export interface WorkerOptions {
  nodeId: string;
  /** This node's name (MESH_NODE_NAME in tasks). */
  nodeName: string;
  agent: Agent;
  rpc: Rpc;
  lb?: WorkerLb;
  dns?: WorkerDns;
  /** Long-poll wait asked of the dispatcher. @default 10,000 ms */
  pollMs?: number;
  /** Longest wait for every node to drop a stopping task from its load balancer. @default 5,000 ms */
  lbWaitMs?: number;
  /** Longest wait for a new task to listen on its published ports. @default 30,000 ms */
  listenWaitMs?: number;
}

/** How often a starting task's listening sockets are read (a few small /proc reads). */
const LISTEN_POLL_MS = 50;

const TERMINAL: ReadonlySet<TaskState> = new Set([
  'complete',
  'shutdown',
  'failed',
  'rejected',
  'orphaned',
]);

interface Local {
  /** Last state reported (or being reported). */
  reported?: TaskState;
  busy?: Promise<void>;
  dns?: { close(): Promise<void> };
  health?: HealthProbe;
  /** We stopped it (desired shutdown): its exit is `shutdown`, not a failure. */
  stopping?: boolean;
  /** Removing it failed: not tried again before this time (ms). */
  retryAt?: number;
}

export interface WorkerCounters {
  polls: number;
  completeViews: number;
  gaps: number;
  started: number;
  startFailures: number;
  stopped: number;
  statusBatches: number;
  lbApplies: number;
  lbErrors: number;
  lastLbWaitMs: number;
  maxLbWaitMs: number;
  healthChecks: number;
}

export class Worker {
  private version: number | null = null;
  private readonly tasks = new Map<string, AssignedTask>();
  private readonly networks = new Map<string, NetworkInfo>();
  private readonly services = new Map<string, ServiceEntry>();
  private readonly local = new Map<string, Local>();
  private readonly updates = new Map<string, TaskStatusUpdate>();
  private flushing: Promise<void> | undefined;
  private reconciling = false;
  private dirty = false;
  private closed = false;
  private lbApplied: number | undefined;
  private lbReported: number | undefined;
  private lbNetworks = new Set<string>();
  private wakeTimer: NodeJS.Timeout | undefined;
  private readonly unsubscribe: () => void;
  lastError = '';
  readonly counters: WorkerCounters = {
    polls: 0,
    completeViews: 0,
    gaps: 0,
    started: 0,
    startFailures: 0,
    stopped: 0,
    statusBatches: 0,
    lbApplies: 0,
    lbErrors: 0,
    lastLbWaitMs: 0,
    maxLbWaitMs: 0,
    healthChecks: 0,
  };

  constructor(private readonly opts: WorkerOptions) {
    this.unsubscribe = opts.agent.runtime.onExit((e) => this.onExit(e.id, e.exitCode));
  }

  start(): void {
    void this.pollLoop();
  }

  // ---- session ----

  private async pollLoop(): Promise<void> {
    let backoff = 200;
    const pollMs = this.opts.pollMs ?? 10_000;
    while (!this.closed) {
      try {
        const r = (await this.opts.rpc(
          'dispatcher.assignments',
          { since: this.version, waitMs: pollMs },
          pollMs + 5_000,
        )) as Assignments;
        this.counters.polls++;
        this.receive(r);
        backoff = 200;
        this.lastError = '';
      } catch (e) {
        if (this.closed) return;
        this.lastError = (e as Error).message;
        log.debug('assignments poll failed; retrying', { err: e, backoffMs: backoff });
        // A new leader knows nothing of our version: ask for a complete view there.
        this.version = null;
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 2_000);
      }
    }
  }

  private receive(r: Assignments): void {
    if (r.complete) {
      this.counters.completeViews++;
      this.tasks.clear();
      this.networks.clear();
      this.services.clear();
      this.merge(r.view);
    } else {
      if (r.prev !== this.version) {
        // A gap in the chain: what we hold is not what the increment applies to.
        this.counters.gaps++;
        this.version = null;
        return;
      }
      this.merge(r.upsert);
      for (const id of r.remove.tasks ?? []) this.tasks.delete(id);
      for (const id of r.remove.networks ?? []) this.networks.delete(id);
      for (const id of r.remove.services ?? []) this.services.delete(id);
    }
    const changed = this.version !== r.version;
    this.version = r.version;
    if (r.logRequests) for (const q of r.logRequests) void this.answerLogs(q);
    if (changed || r.complete) this.kick();
  }

  private merge(v: Partial<NodeView>): void {
    for (const t of v.tasks ?? []) this.tasks.set(t.id, t);
    for (const n of v.networks ?? []) this.networks.set(n.id, n);
    for (const s of v.services ?? []) this.services.set(s.id, s);
  }

  private async answerLogs(q: LogRequest): Promise<void> {
    const logs: Record<string, string> = {};
    for (const id of q.taskIds) {
      if (!this.opts.agent.has(id)) continue;
      try {
        let text = this.opts.agent.logs(id);
        if (q.tail > 0) {
          const lines = text.split('\n');
          if (lines.at(-1) === '') lines.pop();
          text = lines.slice(-q.tail).join('\n') + (lines.length > 0 ? '\n' : '');
        }
        logs[id] = text;
      } catch (e) {
        logs[id] = `(logs unavailable: ${(e as Error).message})\n`;
      }
    }
    await this.opts
      .rpc('dispatcher.logs', { id: q.id, logs })
      .catch((e: unknown) => log.debug('log answer failed', { err: e }));
  }

  // ---- reconcile ----

  /** Run reconcile now (or again right after the running one). */
  private kick(): void {
    this.dirty = true;
    if (this.reconciling || this.closed) return;
    this.reconciling = true;
    void (async () => {
      try {
        while (this.dirty && !this.closed) {
          this.dirty = false;
          await this.reconcile();
        }
      } catch (e) {
        log.warn('reconcile failed', { err: e });
      } finally {
        this.reconciling = false;
      }
    })();
  }

  private async reconcile(): Promise<void> {
    const agent = this.opts.agent;
    const now = Date.now();
    let nextWake = Infinity;
    for (const t of this.tasks.values()) {
      const loc = this.localOf(t.id);
      if (loc.busy) continue;
      if (loc.retryAt !== undefined && loc.retryAt > now) {
        nextWake = Math.min(nextWake, loc.retryAt);
        continue;
      }
      const info = agent.runtime.get(t.id);
      if (t.desiredState === 'running') {
        if (!agent.has(t.id)) {
          if (TERMINAL.has(t.state) || (loc.reported && TERMINAL.has(loc.reported))) continue;
          if (t.notBefore !== undefined && t.notBefore > now) {
            nextWake = Math.min(nextWake, t.notBefore);
            continue;
          }
          loc.busy = this.startTask(t).finally(() => {
            loc.busy = undefined;
            this.kick();
          });
        } else if (info?.state === 'exited' && !TERMINAL.has(loc.reported ?? 'new')) {
          this.exitReport(t.id, info.exitCode ?? null);
        } else if (info?.state === 'running' && loc.reported === undefined) {
          // Adopted after a meshd restart: its DNS server and health probe died with the old
          // meshd; bring them back and tell the managers it still runs.
          loc.busy = this.readopt(t, info.netnsPath).finally(() => {
            loc.busy = undefined;
          });
        }
      } else if (agent.has(t.id)) {
        loc.busy = this.stopTask(t).finally(() => {
          loc.busy = undefined;
          this.kick();
        });
      } else if (!TERMINAL.has(t.state) && !TERMINAL.has(loc.reported ?? 'new')) {
        this.report(t.id, 'shutdown', { message: 'shut down before it started' });
      }
    }
    // Service tasks the managers no longer assign us (deleted, or moved while we were away).
    for (const v of agent.list()) {
      if (v.serviceId === undefined || this.tasks.has(v.id)) continue;
      const loc = this.localOf(v.id);
      if (loc.busy) continue;
      if (loc.retryAt !== undefined && loc.retryAt > now) {
        nextWake = Math.min(nextWake, loc.retryAt);
        continue;
      }
      loc.busy = this.removeLocal(v.id, 'no longer assigned').finally(() => {
        loc.busy = undefined;
        if (!agent.has(v.id)) this.local.delete(v.id);
        this.kick();
      });
    }
    for (const id of [...this.local.keys()]) {
      if (!this.tasks.has(id) && !agent.has(id) && !this.local.get(id)?.busy) this.local.delete(id);
    }
    // A failed load-balancer update is retried in 2 s even if nothing else changes.
    if (!(await this.applyLb())) nextWake = Math.min(nextWake, Date.now() + 2_000);
    if (this.wakeTimer) clearTimeout(this.wakeTimer);
    this.wakeTimer = undefined;
    if (nextWake !== Infinity) {
      this.wakeTimer = setTimeout(() => this.kick(), Math.max(10, nextWake - Date.now()));
    }
  }

  private localOf(id: string): Local {
    let l = this.local.get(id);
    if (!l) {
      l = {};
      this.local.set(id, l);
    }
    return l;
  }

  private async startTask(t: AssignedTask): Promise<void> {
    const loc = this.localOf(t.id);
    this.report(t.id, 'preparing', { message: 'preparing' });
    const attachments: { net: NetworkInfo; address: string }[] = [];
    for (const a of t.attachments) {
      const net = this.networks.get(a.networkId);
      if (!net) {
        this.report(t.id, 'rejected', {
          message: 'network unknown',
          err: `network ${a.networkId} is not in this node's assignment`,
        });
        return;
      }
      attachments.push({ net, address: a.address });
    }
    const dns = this.opts.dns;
    let pid: number | undefined;
    try {
      ({ pid } = await this.opts.agent.runService({
        id: t.id,
        name: t.name,
        serviceId: t.serviceId,
        cmd: t.template.cmd,
        // Who the task is, the way Swarm's {{.Task.Name}} templates tell it: responses that
        // name their task and node make `meshctl lb show` easy to check against.
        env: {
          MESH_SERVICE_ID: t.serviceId,
          MESH_SERVICE_NAME: t.serviceName,
          MESH_TASK_ID: t.id,
          MESH_TASK_NAME: t.name,
          ...(t.slot !== undefined ? { MESH_TASK_SLOT: String(t.slot) } : {}),
          MESH_NODE_ID: this.opts.nodeId,
          MESH_NODE_NAME: this.opts.nodeName,
          ...t.template.env,
        },
        attachments,
        ...(dns
          ? {
              resolvConf: dns.resolvConf(),
              beforeStart: async (nsPath: string) => {
                loc.dns = await dns.serve(
                  nsPath,
                  t.attachments.map((a) => a.networkId),
                );
              },
            }
          : {}),
      }));
      this.counters.started++;
      if (!(await this.untilListening(t, pid))) return;
      this.report(t.id, 'running', {
        message: 'started',
        ...(t.template.health ? { healthy: false } : {}),
      });
      if (t.template.health) loc.health = this.startHealth(t);
    } catch (e) {
      this.counters.startFailures++;
      await loc.dns?.close().catch(() => undefined);
      loc.dns = undefined;
      const err = (e as Error).message;
      log.warn('service task failed to start', { task: t.name, err });
      this.report(t.id, 'rejected', { message: 'failed to start', err });
    }
  }

  /**
   * A running task enters every node's load balancer, so it is reported `running` only once it
   * listens on the target port of each of its service's published ports (`starting` until
   * then): a process spawned is not a server accepting, and connections balanced to it in
   * between were refused (the soak lost requests at every new task of a scale up, drain or
   * rolling update, docs/soak.md). Bounded by `listenWaitMs`, after which it is reported running
   * anyway (as Swarm does without a health check). False when it should not be reported running
   * at all: it exited (reported by onExit) or is being stopped.
   */
  private async untilListening(t: AssignedTask, pid: number | undefined): Promise<boolean> {
    const ports = new Map<string, PortSpec>();
    for (const p of [...(this.services.get(t.serviceId)?.ports ?? []), ...t.hostPorts]) {
      ports.set(`${p.target}/${p.protocol}`, p);
    }
    if (pid === undefined || ports.size === 0) return true;
    const want = [...ports.keys()].join(', ');
    this.report(t.id, 'starting', { message: `waiting for it to listen on ${want}` });
    const limit = Date.now() + (this.opts.listenWaitMs ?? 30_000);
    const alive = () =>
      !this.closed &&
      this.localOf(t.id).stopping !== true &&
      this.tasks.get(t.id)?.desiredState === 'running' &&
      this.opts.agent.runtime.get(t.id)?.state === 'running';
    for (;;) {
      if (!alive()) return false;
      const missing = [...ports.values()].filter(
        (p) => !listeningPorts(pid, p.protocol).has(p.target),
      );
      if (missing.length === 0) return true;
      if (Date.now() >= limit) {
        log.warn('task does not listen on its published ports; putting it in rotation anyway', {
          task: t.name,
          ports: missing.map((p) => `${p.target}/${p.protocol}`).join(','),
          waitedMs: this.opts.listenWaitMs ?? 30_000,
        });
        return true;
      }
      await sleep(LISTEN_POLL_MS);
    }
  }

  private async readopt(t: AssignedTask, netnsPath: string): Promise<void> {
    const loc = this.localOf(t.id);
    if (this.opts.dns && !loc.dns) {
      try {
        loc.dns = await this.opts.dns.serve(
          netnsPath,
          t.attachments.map((a) => a.networkId),
        );
      } catch (e) {
        log.warn('could not restart the DNS server of an adopted task', { task: t.name, err: e });
      }
    }
    this.report(t.id, 'running', {
      message: 'adopted after a meshd restart',
      ...(t.template.health ? { healthy: false } : {}),
    });
    if (t.template.health && !loc.health) loc.health = this.startHealth(t);
  }

  private async stopTask(t: AssignedTask): Promise<void> {
    const loc = this.localOf(t.id);
    loc.stopping = true;
    const running = this.opts.agent.runtime.get(t.id)?.state === 'running';
    if (running) {
      // Every node must stop sending new connections first (it already sees the task as
      // draining in the view of version t.version); measured, bounded.
      const timeoutMs = this.opts.lbWaitMs ?? 5_000;
      try {
        const r = (await this.opts.rpc(
          'dispatcher.lbWait',
          { version: t.version, timeoutMs },
          timeoutMs + 5_000,
        )) as LbWaitReply;
        this.counters.lastLbWaitMs = r.waitedMs;
        this.counters.maxLbWaitMs = Math.max(this.counters.maxLbWaitMs, r.waitedMs);
        if (r.pending.length > 0) {
          log.warn('stopping a task before every node dropped it from its load balancer', {
            task: t.name,
            pending: r.pending.join(','),
            waitedMs: r.waitedMs,
          });
        }
      } catch (e) {
        log.warn('could not confirm the load balancers dropped the task; stopping it anyway', {
          task: t.name,
          err: e,
        });
      }
    }
    await this.removeLocal(t.id, 'shut down', t.template.stopGraceMs);
    this.counters.stopped++;
    if (!TERMINAL.has(t.state)) this.report(t.id, 'shutdown', { message: 'shut down' });
  }

  private async removeLocal(id: string, why: string, graceMs = 10_000): Promise<void> {
    const loc = this.localOf(id);
    loc.stopping = true;
    loc.health?.stop();
    loc.health = undefined;
    try {
      await this.opts.agent.stop(id, graceMs);
      await this.opts.agent.remove(id);
      loc.retryAt = undefined;
    } catch (e) {
      loc.retryAt = Date.now() + 2_000;
      log.warn('removing a service task failed; retried in 2 s', {
        task: id,
        why,
        err: e,
      });
    }
    await loc.dns?.close().catch(() => undefined);
    loc.dns = undefined;
  }

  private onExit(id: string, exitCode: number | null): void {
    const loc = this.local.get(id);
    const t = this.tasks.get(id);
    if (!loc || !t || loc.stopping) return;
    this.exitReport(id, exitCode);
    loc.health?.stop();
    loc.health = undefined;
  }

  private exitReport(id: string, exitCode: number | null): void {
    const code = exitCode ?? undefined;
    if (code === 0) this.report(id, 'complete', { message: 'finished', exitCode: 0 });
    else {
      this.report(id, 'failed', {
        message: code === undefined ? 'exited (code unknown)' : `exit code ${code}`,
        err:
          code === undefined
            ? 'the task exited while meshd was not watching'
            : `task exited with code ${code}`,
        ...(code !== undefined ? { exitCode: code } : {}),
      });
    }
  }

  // ---- health ----

  private startHealth(t: AssignedTask): HealthProbe {
    const h = t.template.health!;
    const info = this.opts.agent.runtime.get(t.id);
    const started = Date.now();
    let failures = 0;
    let healthy: boolean | undefined;
    const probe = new HealthProbe(h.intervalMs, async () => {
      if (!info) return;
      this.counters.healthChecks++;
      const ok = await runCheck(info.netnsPath, h.cmd, h.timeoutMs);
      if (ok) {
        failures = 0;
        if (healthy !== true) {
          healthy = true;
          this.report(t.id, 'running', { message: 'healthy', healthy: true });
        }
      } else if (Date.now() - started >= h.startPeriodMs) {
        failures++;
        if (failures >= h.retries && healthy !== false) {
          healthy = false;
          const err = `health check failed ${failures} times in a row`;
          this.report(t.id, 'running', { message: 'unhealthy', healthy: false, err });
          const loc = this.localOf(t.id);
          if (!loc.busy && !loc.stopping) {
            loc.busy = this.failUnhealthy(t, err).finally(() => {
              loc.busy = undefined;
              this.kick();
            });
          }
        }
      }
    });
    return probe;
  }

  /**
   * An unhealthy task fails, as in Swarm: it is stopped and reported `failed`, so the managers
   * replace it and a rolling update counts it against --update-failure-action (a task left
   * running unhealthy counted as updated: an update to a broken spec replaced every replica and
   * the service answered nothing, test/netns/service-update.test.ts). It is stopped only once it
   * is out of rotation: the report above makes it no active backend in the managers' view, and
   * every node must have applied that view (as for any stopping task).
   */
  private async failUnhealthy(t: AssignedTask, err: string): Promise<void> {
    const loc = this.localOf(t.id);
    loc.health?.stop();
    loc.health = undefined;
    loc.stopping = true;
    const deadline = Date.now() + (this.opts.lbWaitMs ?? 5_000) * 2;
    const inRotation = () =>
      [...this.services.values()].some((s) =>
        s.endpoints.some((e) => e.taskId === t.id && e.state === 'active'),
      );
    while (inRotation() && Date.now() < deadline && !this.closed) await sleep(100);
    const version = this.version;
    if (version !== null) {
      const timeoutMs = this.opts.lbWaitMs ?? 5_000;
      await this.opts
        .rpc('dispatcher.lbWait', { version, timeoutMs }, timeoutMs + 5_000)
        .catch((e: unknown) => log.debug('lbWait before stopping an unhealthy task', { err: e }));
    }
    log.warn('stopping an unhealthy task; the managers replace it', { task: t.name, err });
    try {
      await this.opts.agent.stop(t.id, t.template.stopGraceMs);
    } catch (e) {
      log.warn('stopping an unhealthy task failed', { task: t.name, err: e });
    }
    this.report(t.id, 'failed', { message: 'unhealthy', err: `${err}; stopped` });
  }

  // ---- load balancer and DNS ----

  /** Bring the load balancer and DNS to the view; false if that failed (retry later). */
  private async applyLb(): Promise<boolean> {
    if (this.version === null) return true;
    const version = this.version;
    const services = [...this.services.values()];
    this.opts.dns?.update(services);
    const lb = this.opts.lb;
    if (!lb) {
      this.lbApplied = version;
      this.flushSoon();
      return true;
    }
    const agent = this.opts.agent;
    const mine = agent.list().filter((v) => v.serviceId !== undefined && v.state === 'running');
    const needed = new Set<string>();
    for (const v of mine) for (const n of v.networks) needed.add(n.networkId);
    const ingress = [...this.networks.values()].find((n) => n.ingress);
    if (ingress && services.some((s) => s.ports.some((p) => p.mode === 'ingress'))) {
      needed.add(ingress.id);
    }
    try {
      for (const id of needed) {
        const net = this.networks.get(id);
        if (net && !this.lbNetworks.has(id)) {
          await agent.useNetwork(net, 'lb');
          this.lbNetworks.add(id);
        }
      }
      const hostTasks: HostTask[] = [];
      for (const v of mine) {
        const t = this.tasks.get(v.id);
        if (t && t.hostPorts.length > 0 && v.gatewayIp) {
          hostTasks.push({ taskId: v.id, gatewayIp: v.gatewayIp, ports: t.hostPorts });
        }
      }
      const nets = [...this.networks.values()];
      await lb.apply(services, nets, needed, hostTasks);
      this.counters.lbApplies++;
      for (const e of lb.lbEndpoints()) {
        agent.publishEndpoint(e.networkId, `lb-${this.opts.nodeId}.${e.networkId}`, e.ip, e.mac);
      }
      for (const id of [...this.lbNetworks]) {
        if (needed.has(id)) continue;
        agent.unpublishEndpoint(id, `lb-${this.opts.nodeId}.${id}`);
        await agent.unuseNetwork(id, 'lb');
        this.lbNetworks.delete(id);
      }
      this.lbApplied = version;
      this.flushSoon();
      return true;
    } catch (e) {
      this.counters.lbErrors++;
      log.warn('load balancer update failed; retried in 2 s', { err: e });
      return false;
    }
  }

  // ---- status reports ----

  private report(id: string, state: TaskState, status: Omit<TaskStatusUpdate['status'], 'at'>) {
    const loc = this.localOf(id);
    loc.reported = state;
    this.updates.set(id, { taskId: id, state, status: { ...status, at: Date.now() } });
    this.flushSoon();
  }

  private flushSoon(): void {
    if (this.flushing || this.closed) return;
    this.flushing = (async () => {
      let failures = 0;
      while (!this.closed && (this.updates.size > 0 || this.lbApplied !== this.lbReported)) {
        const updates = [...this.updates.values()];
        this.updates.clear();
        const lbApplied = this.lbApplied;
        try {
          await this.opts.rpc('dispatcher.status', {
            updates,
            ...(lbApplied !== undefined ? { lbApplied } : {}),
          });
          this.counters.statusBatches++;
          this.lbReported = lbApplied;
          failures = 0;
        } catch (e) {
          // Put back what was not superseded meanwhile; forward-only states make resending safe.
          for (const u of updates) if (!this.updates.has(u.taskId)) this.updates.set(u.taskId, u);
          if (e instanceof MeshError && e.code === 'EAUTH') {
            log.warn('status refused', { err: e });
            this.updates.clear();
          }
          failures++;
          await sleep(Math.min(200 * 2 ** failures, 2_000));
        }
      }
    })().finally(() => {
      this.flushing = undefined;
    });
  }

  status(): unknown {
    return {
      version: this.version,
      lbApplied: this.lbApplied ?? null,
      tasks: [...this.tasks.values()].map((t) => ({
        id: t.id,
        name: t.name,
        desired: t.desiredState,
        managerState: t.state,
        reported: this.local.get(t.id)?.reported ?? null,
      })),
      services: this.services.size,
      lastError: this.lastError,
      counters: this.counters,
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.unsubscribe();
    if (this.wakeTimer) clearTimeout(this.wakeTimer);
    for (const l of this.local.values()) {
      l.health?.stop();
      await l.dns?.close().catch(() => undefined);
    }
  }
}

/** Runs `check` every `intervalMs`, never two at once. */
class HealthProbe {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  constructor(intervalMs: number, check: () => Promise<void>) {
    const loop = (): void => {
      if (this.stopped) return;
      void check()
        .catch(() => undefined)
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(loop, intervalMs);
        });
    };
    this.timer = setTimeout(loop, Math.min(intervalMs, 1_000));
  }
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }
}

/** Run a health command inside the task's namespace; true when it exits 0 within the timeout. */
function runCheck(netnsPath: string, cmd: string[], timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const [file, ...args] = cmd;
    if (file === undefined) {
      resolve(false);
      return;
    }
    let child;
    try {
      const ns = netnsOpen({ path: netnsPath });
      try {
        child = withNetns(ns, () => spawn(file, args, { stdio: 'ignore', timeout: timeoutMs }));
      } finally {
        ns.close();
      }
    } catch {
      resolve(false);
      return;
    }
    child.once('error', () => resolve(false));
    child.once('exit', (code) => resolve(code === 0));
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
