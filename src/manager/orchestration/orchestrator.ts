/**
 * The orchestrator's planner: from the store and the time, the ops that move services toward
 * their specs. Replicated services keep `replicas` slots filled; global ones one task per
 * eligible node. Ended tasks are replaced per restart policy (delay via `notBefore`), tasks on
 * down or drained nodes are replaced elsewhere, scale down stops the highest slots, a spec change
 * rolls out in batches (parallelism, delay, monitor, failure action), removal stops every task
 * and deletes tasks then the service, and each slot keeps at most TASK_HISTORY ended tasks.
 * New tasks are created `assigned` with their node, addresses and the nodes' load-balancer
 * addresses in the same ops (one command), guarded by network versions.
 *
 * Pure and deterministic: `now` and task ids come in; no clock, randomness or I/O.
 * May import src/api/, ./scheduler.ts, ./services.ts, src/manager/store/, src/util/errors.ts.
 */

import { MeshError } from '../../util/errors.js';
import type { Json, Node, Service, Task } from '../../api/objects.js';
import {
  addFailure,
  addLoad,
  matchesConstraints,
  nodeAcceptsTasks,
  pickNode,
  removeLoad,
  type NodeLoad,
} from './scheduler.js';
import {
  AddressAllocator,
  ingressNetwork,
  isTerminal,
  recordOf,
  rollbackOps,
  taskRecordOf,
  type StoredServiceRecord,
} from './services.js';
import type { PortSpec, TaskRecord } from '../../api/services.js';
import type { Op, Store } from '../store/store.js';

/** Ended tasks kept per slot (replicated) or node (global) for `service ps`. */
export const TASK_HISTORY = 5;
/** New tasks per plan at most (keeps one command bounded; the next round does the rest). */
export const MAX_NEW_TASKS = 1000;

interface Entry {
  task: Task;
  rec: TaskRecord;
  /** Changed in this plan (the update op is emitted at the end). */
  dirty: boolean;
  deleted: boolean;
}

const live = (e: Entry): boolean =>
  !e.deleted && e.rec.desiredState === 'running' && !isTerminal(e.task);
const holding = (e: Entry): boolean => !e.deleted && e.rec.desiredState === 'running';

export interface ReconcileResult {
  ops: Op[];
  /** Human-readable notes (for the driver's log), e.g. "web: update paused: …". */
  events: string[];
}

/**
 * One reconcile round. `newId` gives fresh task ids (the driver's random ids; tests pass a
 * counter). Returns no ops when everything is as it should be.
 */
export function reconcile(store: Store, now: number, newId: () => string): ReconcileResult {
  const p = new Planner(store, now, newId);
  for (const svc of store.list('service')) p.service(svc);
  p.orphans();
  return { ops: p.finish(), events: p.events };
}

class Planner {
  readonly events: string[] = [];
  private readonly alloc: AddressAllocator;
  private readonly nodes: Node[];
  private readonly nodeById: Map<string, Node>;
  private readonly load = new Map<string, NodeLoad>();
  private readonly byService = new Map<string, Entry[]>();
  private readonly creates: Op[] = [];
  private readonly serviceOps: Op[] = [];
  private readonly deletes: Op[] = [];
  private created = 0;
  private rolledBack = false;

  constructor(
    private readonly store: Store,
    private readonly now: number,
    private readonly newId: () => string,
  ) {
    this.alloc = new AddressAllocator(store);
    this.nodes = store.list('node');
    this.nodeById = new Map(this.nodes.map((n) => [n.id, n]));
    for (const task of store.list('task')) {
      const rec = taskRecordOf(task);
      if (rec === null) continue;
      const e: Entry = { task, rec, dirty: false, deleted: false };
      const l = this.byService.get(task.serviceId!) ?? [];
      l.push(e);
      this.byService.set(task.serviceId!, l);
      if (task.nodeId !== undefined) {
        if (live(e)) addLoad(this.load, task.nodeId, task.serviceId!, rec.hostPorts);
        if (task.state === 'failed' || task.state === 'rejected') {
          addFailure(this.load, task.nodeId, task.serviceId!, rec.status?.at ?? 0);
        }
      }
    }
  }

  /** Where a live task may keep running: its node exists, is not down and not drained. */
  private nodeKeeps(nodeId: string | undefined): string | null {
    if (nodeId === undefined) return null;
    const n = this.nodeById.get(nodeId);
    if (n === undefined) return 'node removed';
    if (n.status.state === 'down') return 'node down';
    if (n.availability === 'drain') return 'node drained';
    return null;
  }

  private nodeGone(nodeId: string | undefined): boolean {
    if (nodeId === undefined) return true;
    const n = this.nodeById.get(nodeId);
    return n === undefined || n.status.state === 'down';
  }

  private shutdown(e: Entry, why: string): void {
    if (e.rec.desiredState === 'shutdown') return;
    if (live(e) && e.task.nodeId !== undefined) {
      removeLoad(this.load, e.task.nodeId, e.task.serviceId!, e.rec.hostPorts);
    }
    if (e.task.nodeId === undefined) {
      // Never placed: nothing runs anywhere, so it can go at once.
      e.deleted = true;
      this.deletes.push({ op: 'delete', kind: 'task', id: e.task.id, version: e.task.version });
      return;
    }
    e.rec = {
      ...e.rec,
      desiredState: 'shutdown',
      status: isTerminal(e.task) ? e.rec.status : { ...e.rec.status, message: why },
    };
    e.dirty = true;
  }

  service(svc: Service): void {
    const rec = recordOf(svc);
    if (rec === null) return;
    const entries = this.byService.get(svc.id) ?? [];
    if (rec.removing === true) {
      this.remove(svc, entries);
      return;
    }
    const spec = rec.spec;
    const restart = spec.task.restart;
    const keyOf = (e: Entry): string =>
      spec.mode === 'replicated' ? String(e.rec.slot ?? 0) : (e.task.nodeId ?? '');
    /** Slot key → notBefore for the replacement of a task that ended or lost its node. */
    const refill = new Map<string, number | undefined>();
    const progress = { failed: 0, started: 0, ...(rec.progress ?? {}) };
    let recChanged = false;

    // Ended tasks: replace per restart policy, or hold their slot (none / on-failure after a
    // clean exit / too many attempts).
    for (const e of entries) {
      if (!holding(e) || !isTerminal(e.task)) continue;
      if (restart.condition === 'none') continue;
      if (restart.condition === 'on-failure' && e.task.state === 'complete') continue;
      if (restart.maxAttempts > 0) {
        const k = keyOf(e);
        const ended = entries.filter(
          (x) =>
            keyOf(x) === k &&
            isTerminal(x.task) &&
            (restart.windowMs === 0 || this.now - (x.rec.status?.at ?? 0) <= restart.windowMs),
        ).length;
        if (ended > restart.maxAttempts) continue;
      }
      if (
        e.rec.specVersion === rec.specVersion &&
        (e.task.state === 'failed' || e.task.state === 'rejected') &&
        (rec.updateStatus?.state === 'updating' || rec.updateStatus?.state === 'rollback_started')
      ) {
        progress.failed++;
        recChanged = true;
      }
      this.shutdown(e, 'replaced after it ended');
      refill.set(keyOf(e), this.now + restart.delayMs);
    }
    // Live tasks on down, drained or removed nodes.
    for (const e of entries) {
      if (!live(e)) continue;
      const why = this.nodeKeeps(e.task.nodeId);
      if (why !== null) {
        this.shutdown(e, why);
        if (!refill.has(keyOf(e))) refill.set(keyOf(e), undefined);
      }
    }
    // Tasks waiting for a node.
    for (const e of entries) {
      if (live(e) && e.task.nodeId === undefined) this.place(svc, rec, e);
    }

    if (spec.mode === 'replicated') this.replicated(svc, rec, entries, refill);
    else this.global(svc, rec, entries, refill);

    const st = rec.updateStatus?.state;
    let next: StoredServiceRecord = rec;
    if (st === 'updating' || st === 'rollback_started') {
      const r = this.rollout(svc, rec, entries, progress);
      if (r === 'rolled-back') return;
      next = r;
      recChanged ||= next !== rec;
    }
    if (recChanged) {
      next = { ...next, progress: { ...(next.progress ?? progress), failed: progress.failed } };
      const { version: _v, createdIndex: _c, ...value } = svc;
      this.serviceOps.push({
        op: 'update',
        kind: 'service',
        value: { ...value, spec: next as unknown as Json },
        version: svc.version,
      });
    }
    this.history(rec, entries, keyOf);
  }

  private replicated(
    svc: Service,
    rec: StoredServiceRecord,
    entries: Entry[],
    refill: Map<string, number | undefined>,
  ): void {
    const bySlot = new Map<number, Entry[]>();
    for (const e of entries) {
      if (!holding(e)) continue;
      const s = e.rec.slot ?? 0;
      bySlot.set(s, [...(bySlot.get(s) ?? []), e]);
    }
    // Two holders of one slot (should not happen): keep the newest.
    for (const list of bySlot.values()) {
      list.sort((a, b) => b.task.createdIndex - a.task.createdIndex);
      for (const extra of list.slice(1)) this.shutdown(extra, 'duplicate slot');
    }
    const slots = [...bySlot.keys()].sort((a, b) => a - b);
    const want = rec.spec.replicas;
    for (const s of slots.slice(want).reverse()) {
      this.shutdown(bySlot.get(s)![0]!, 'scaled down');
      bySlot.delete(s);
    }
    let missing = want - bySlot.size;
    if (missing <= 0) return;
    const picks: [number, number | undefined][] = [];
    for (const [k, nb] of [...refill].sort(([a], [b]) => Number(a) - Number(b))) {
      const s = Number(k);
      if (missing > 0 && s >= 1 && !bySlot.has(s)) {
        picks.push([s, nb]);
        bySlot.set(s, []);
        missing--;
      }
    }
    for (let s = 1; missing > 0; s++) {
      if (bySlot.has(s)) continue;
      picks.push([s, undefined]);
      bySlot.set(s, []);
      missing--;
    }
    for (const [slot, nb] of picks) {
      if (this.created >= MAX_NEW_TASKS) return;
      this.create(svc, rec, { slot }, nb);
    }
  }

  private global(
    svc: Service,
    rec: StoredServiceRecord,
    entries: Entry[],
    refill: Map<string, number | undefined>,
  ): void {
    const byNode = new Map<string, Entry[]>();
    for (const e of entries) {
      if (!holding(e) || e.task.nodeId === undefined) continue;
      byNode.set(e.task.nodeId, [...(byNode.get(e.task.nodeId) ?? []), e]);
    }
    for (const [nodeId, list] of byNode) {
      list.sort((a, b) => b.task.createdIndex - a.task.createdIndex);
      for (const extra of list.slice(1)) this.shutdown(extra, 'duplicate on node');
      const node = this.nodeById.get(nodeId);
      if (node !== undefined && !matchesConstraints(node, rec.spec.task.constraints)) {
        this.shutdown(list[0]!, 'constraints no longer met');
        byNode.delete(nodeId);
      }
    }
    for (const node of this.nodes) {
      if (byNode.has(node.id) || !nodeAcceptsTasks(node)) continue;
      if (!matchesConstraints(node, rec.spec.task.constraints)) continue;
      if (this.created >= MAX_NEW_TASKS) return;
      this.create(svc, rec, { node }, refill.get(node.id));
    }
  }

  /** Rolling update / rollback: replace old-version tasks in batches. */
  private rollout(
    svc: Service,
    rec: StoredServiceRecord,
    entries: Entry[],
    progress: { failed: number; started: number; batchAt?: number },
  ): StoredServiceRecord | 'rolled-back' {
    const rollingBack = rec.updateStatus?.state === 'rollback_started';
    const cfg = rollingBack ? rec.spec.rollback : rec.spec.update;
    const old = entries.filter((e) => holding(e) && e.rec.specVersion !== rec.specVersion);
    const inflight = entries.filter(
      (e) =>
        live(e) &&
        e.rec.specVersion === rec.specVersion &&
        (e.task.state !== 'running' || this.now - (e.rec.status?.at ?? 0) < cfg.monitorMs),
    ).length;
    const ratio = progress.failed / Math.max(1, progress.started);
    if (progress.failed > 0 && ratio > cfg.maxFailureRatio && cfg.failureAction !== 'continue') {
      if (cfg.failureAction === 'rollback' && !rollingBack && rec.previousSpec !== undefined) {
        if (this.rolledBack) return rec;
        this.rolledBack = true;
        try {
          this.serviceOps.push(...rollbackOps(this.store, svc, rec, this.now, this.alloc));
          this.events.push(`${svc.name}: update failed (${progress.failed} tasks), rolling back`);
          return 'rolled-back';
        } catch (e) {
          if (!(e instanceof MeshError)) throw e;
        }
      }
      const state = rollingBack ? 'rollback_paused' : 'paused';
      this.events.push(`${svc.name}: ${state} after ${progress.failed} failed tasks`);
      return {
        ...rec,
        updateStatus: {
          ...rec.updateStatus,
          state,
          message: `${rollingBack ? 'rollback' : 'update'} paused: ${progress.failed} of ${progress.started} new tasks failed`,
        },
      };
    }
    if (old.length === 0 && inflight === 0) {
      return {
        ...rec,
        updateStatus: {
          ...rec.updateStatus,
          state: rollingBack ? 'rollback_completed' : 'completed',
          message: rollingBack ? 'rollback completed' : 'update completed',
          completedAt: this.now,
        },
        progress: { ...progress },
      };
    }
    const par = cfg.parallelism === 0 ? Infinity : cfg.parallelism;
    if (old.length === 0 || inflight >= par) return rec;
    if (progress.batchAt !== undefined && this.now < progress.batchAt + cfg.delayMs) return rec;
    // Tasks that are not running first (replacing them costs nothing), then by slot / node.
    old.sort(
      (a, b) =>
        Number(a.task.state === 'running') - Number(b.task.state === 'running') ||
        (a.rec.slot ?? 0) - (b.rec.slot ?? 0) ||
        (a.task.nodeId ?? '').localeCompare(b.task.nodeId ?? ''),
    );
    const batch = old.slice(0, Math.min(par - inflight, old.length));
    for (const e of batch) {
      if (this.created >= MAX_NEW_TASKS) break;
      this.shutdown(e, `replaced by spec version ${rec.specVersion}`);
      const node = e.task.nodeId === undefined ? undefined : this.nodeById.get(e.task.nodeId);
      if (rec.spec.mode === 'replicated') this.create(svc, rec, { slot: e.rec.slot ?? 1 });
      else if (node !== undefined && nodeAcceptsTasks(node)) this.create(svc, rec, { node });
    }
    return {
      ...rec,
      progress: { ...progress, started: progress.started + batch.length, batchAt: this.now },
    };
  }

  /** Give a waiting task a node and its addresses, or refresh why it waits. */
  private place(svc: Service, rec: StoredServiceRecord, e: Entry): void {
    const hostPorts = rec.endpoint.ports.filter((x) => x.mode === 'host');
    const got = pickNode(
      this.nodes,
      this.load,
      { serviceId: svc.id, constraints: e.rec.template.constraints, hostPorts },
      this.now,
    );
    if ('error' in got) {
      if (e.rec.status?.message !== got.error) {
        e.rec = { ...e.rec, status: { message: got.error, at: this.now } };
        e.dirty = true;
      }
      return;
    }
    const attachments = this.attach(svc, rec, got.node.id);
    if (typeof attachments === 'string') {
      removeLoad(this.load, got.node.id, svc.id, hostPorts);
      e.rec = { ...e.rec, status: { message: attachments, at: this.now } };
      e.dirty = true;
      return;
    }
    e.task = { ...e.task, nodeId: got.node.id, state: 'assigned' };
    e.rec = { ...e.rec, attachments, status: { message: 'assigned', at: this.now } };
    e.dirty = true;
  }

  /** Addresses on the service's networks (and ingress), or why there are none. */
  private attach(
    svc: Service,
    rec: StoredServiceRecord,
    nodeId: string,
  ): TaskRecord['attachments'] | string {
    const nets = rec.spec.networks.map((n) => n.network);
    const ing = ingressNetwork(this.store);
    if (ing !== undefined && rec.endpoint.ports.some((x) => x.mode === 'ingress')) {
      nets.push(ing.id);
    }
    const out: TaskRecord['attachments'] = [];
    try {
      for (const id of nets) {
        out.push({ networkId: id, addresses: [this.alloc.take(id, `place task of ${svc.name}`)] });
      }
    } catch (e) {
      if (e instanceof MeshError) return e.message;
      throw e;
    }
    for (const id of nets) this.needLb(nodeId, id);
    return out;
  }

  private readonly lbNeeds = new Map<string, Set<string>>();
  private needLb(nodeId: string, netId: string): void {
    const s = this.lbNeeds.get(nodeId) ?? new Set<string>();
    s.add(netId);
    this.lbNeeds.set(nodeId, s);
  }

  private create(
    svc: Service,
    rec: StoredServiceRecord,
    where: { slot: number } | { node: Node },
    notBefore?: number,
  ): void {
    const id = this.newId();
    const spec = rec.spec;
    const hostPorts: PortSpec[] = rec.endpoint.ports.filter((x) => x.mode === 'host');
    const name =
      'slot' in where
        ? `${svc.name}.${where.slot}.${id.slice(0, 8)}`
        : `${svc.name}.${where.node.id.slice(0, 8)}.${id.slice(0, 8)}`;
    const base: TaskRecord = {
      attachments: [],
      serviceName: svc.name,
      ...('slot' in where ? { slot: where.slot } : {}),
      specVersion: rec.specVersion,
      desiredState: 'running',
      template: spec.task,
      hostPorts,
      status: { message: 'pending', at: this.now },
      ...(notBefore !== undefined && notBefore > this.now ? { notBefore } : {}),
    };
    let nodeId: string | undefined;
    if ('node' in where) {
      const l = this.load.get(where.node.id);
      const clash = hostPorts.find((x) => l?.hostPorts.has(`${x.published}/${x.protocol}`));
      if (clash !== undefined) {
        this.events.push(
          `${svc.name}: host port ${clash.published}/${clash.protocol} taken on ${where.node.hostname}`,
        );
        return;
      }
      addLoad(this.load, where.node.id, svc.id, hostPorts);
      nodeId = where.node.id;
    } else {
      const got = pickNode(
        this.nodes,
        this.load,
        { serviceId: svc.id, constraints: spec.task.constraints, hostPorts },
        this.now,
      );
      if ('error' in got) base.status = { message: got.error, at: this.now };
      else nodeId = got.node.id;
    }
    if (nodeId !== undefined) {
      const attachments = this.attach(svc, rec, nodeId);
      if (typeof attachments === 'string') {
        removeLoad(this.load, nodeId, svc.id, hostPorts);
        if ('node' in where) return;
        base.status = { message: attachments, at: this.now };
        nodeId = undefined;
      } else {
        base.attachments = attachments;
        base.status = { message: 'assigned', at: this.now };
      }
    }
    this.created++;
    this.creates.push({
      op: 'create',
      kind: 'task',
      value: {
        id,
        name,
        serviceId: svc.id,
        ...(nodeId !== undefined ? { nodeId } : {}),
        state: nodeId !== undefined ? 'assigned' : 'pending',
        spec: base as unknown as Json,
      },
    });
  }

  private remove(svc: Service, entries: Entry[]): void {
    let left = 0;
    for (const e of entries) {
      this.shutdown(e, 'service removed');
      if (e.deleted) continue;
      if (isTerminal(e.task) || this.nodeGone(e.task.nodeId)) {
        e.deleted = true;
        this.deletes.push({ op: 'delete', kind: 'task', id: e.task.id });
      } else {
        left++;
      }
    }
    if (left === 0) this.deletes.push({ op: 'delete', kind: 'service', id: svc.id });
  }

  /** Keep the newest TASK_HISTORY ended tasks per slot / node; delete older ones. */
  private history(rec: StoredServiceRecord, entries: Entry[], keyOf: (e: Entry) => string): void {
    const keep = Math.max(TASK_HISTORY, rec.spec.task.restart.maxAttempts + 1);
    const byKey = new Map<string, Entry[]>();
    for (const e of entries) {
      if (e.deleted || e.rec.desiredState !== 'shutdown') continue;
      if (!isTerminal(e.task) && !this.nodeGone(e.task.nodeId)) continue;
      const k = keyOf(e);
      byKey.set(k, [...(byKey.get(k) ?? []), e]);
    }
    for (const list of byKey.values()) {
      list.sort((a, b) => b.task.createdIndex - a.task.createdIndex);
      for (const e of list.slice(keep)) {
        e.deleted = true;
        this.deletes.push({ op: 'delete', kind: 'task', id: e.task.id });
      }
    }
  }

  /** Tasks whose service is gone: delete once ended (or their node is down). */
  orphans(): void {
    for (const [sid, entries] of this.byService) {
      if (this.store.get('service', sid) !== undefined) continue;
      for (const e of entries) {
        if (e.deleted) continue;
        this.shutdown(e, 'service removed');
        if (!e.deleted && (isTerminal(e.task) || this.nodeGone(e.task.nodeId))) {
          e.deleted = true;
          this.deletes.push({ op: 'delete', kind: 'task', id: e.task.id });
        }
      }
    }
  }

  private lbOps(): Op[] {
    for (const entries of this.byService.values()) {
      for (const e of entries) {
        if (!live(e) || e.task.nodeId === undefined) continue;
        for (const a of e.rec.attachments ?? []) this.needLb(e.task.nodeId, a.networkId);
      }
    }
    const ing = ingressNetwork(this.store);
    const publishes = this.store.list('service').some((s) => {
      const r = recordOf(s);
      return (
        r !== null && r.removing !== true && r.endpoint.ports.some((x) => x.mode === 'ingress')
      );
    });
    if (ing !== undefined && publishes) {
      for (const n of this.nodes) if (n.status.state === 'ready') this.needLb(n.id, ing.id);
    }
    const ops: Op[] = [];
    for (const n of this.nodes) {
      const need = this.lbNeeds.get(n.id);
      if (need === undefined) continue;
      const have = { ...(n.lbAddrs ?? {}) };
      let changed = false;
      for (const net of [...need].sort()) {
        if (have[net] !== undefined || this.store.get('network', net) === undefined) continue;
        try {
          have[net] = this.alloc.take(net, `load-balancer address of ${n.hostname}`);
          changed = true;
        } catch (e) {
          if (!(e instanceof MeshError)) throw e;
          this.events.push(e.message);
        }
      }
      if (!changed) continue;
      const { version: _v, createdIndex: _c, ...value } = n;
      ops.push({
        op: 'update',
        kind: 'node',
        value: { ...value, lbAddrs: have },
        version: n.version,
      });
    }
    return ops;
  }

  finish(): Op[] {
    const lb = this.lbOps();
    const updates: Op[] = [];
    for (const entries of this.byService.values()) {
      for (const e of entries) {
        if (!e.dirty || e.deleted) continue;
        const { version: _v, createdIndex: _c, ...value } = e.task;
        updates.push({
          op: 'update',
          kind: 'task',
          value: { ...value, spec: e.rec as unknown as Json },
          version: e.task.version,
        });
      }
    }
    const ops = [...this.alloc.ops(), ...lb, ...this.serviceOps, ...updates, ...this.creates];
    // A task deleted after an update in the same plan: the delete carries no version guard.
    return [...ops, ...this.deletes];
  }
}
