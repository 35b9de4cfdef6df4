/**
 * The service controller: the leader's driver around the pure service planners. API methods
 * plan from the local store, commit, and re-plan on ECONFLICT (another writer got there first);
 * reads are linearizable. While leader, a loop runs the orchestrator on every store change
 * (debounced) and every 500 ms (restart delays, update delays and monitor windows are times,
 * not store changes), committing what it plans.
 *
 * Holds timers and draws random task ids; the planning itself is in services.ts and
 * orchestrator.ts. May import ./orchestrator.ts, ./services.ts, src/manager/store/, src/util/{errors,ids}.ts.
 */

import { MeshError } from '../../util/errors.js';
import { reconcile } from './orchestrator.js';
import {
  describeService,
  listServices,
  listTasks,
  mustFindService,
  planCreateService,
  planRemoveService,
  planRollbackService,
  planScaleService,
  planUpdateService,
  type ServiceRow,
  type ServiceView,
  type TaskRow,
} from './services.js';
import type { Op, Store } from '../store/store.js';
import { newId } from '../../util/ids.js';

export interface ControllerHost {
  store: Store;
  /** Raft commit; throws MeshError (ECONFLICT when a guard failed). */
  commit(ops: Op[]): Promise<number[]>;
  /** Linearizable read (ReadIndex). */
  read<T>(f: (s: Store) => T): Promise<T>;
  isLeader(): boolean;
  /** ms since the Unix epoch. */
  now(): number;
}

/** Plans re-made after an ECONFLICT before the API call fails with it. */
const ATTEMPTS = 4;
const TICK_MS = 500;
const DEBOUNCE_MS = 20;

export class ServiceController {
  private unwatch: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private running = false;
  private again = false;
  private stopped = true;
  /** Reconcile rounds run and ops committed (for debugging and tests). */
  readonly stats = { rounds: 0, commits: 0, conflicts: 0, errors: 0 };
  /** Last error of the loop (messages only; the loop keeps going). */
  lastError: string | undefined;

  constructor(private readonly host: ControllerHost) {}

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.unwatch = this.host.store.watch(['service', 'task', 'node', 'network'], () => this.kick());
    this.timer = setInterval(() => this.kick(0), TICK_MS);
    this.timer.unref?.();
    this.kick();
  }

  stop(): void {
    this.stopped = true;
    this.unwatch?.();
    this.unwatch = undefined;
    if (this.timer !== undefined) clearInterval(this.timer);
    if (this.debounce !== undefined) clearTimeout(this.debounce);
    this.timer = this.debounce = undefined;
  }

  /** Run a reconcile round soon (coalescing bursts of store changes). */
  private kick(delay = DEBOUNCE_MS): void {
    if (this.stopped || !this.host.isLeader()) return;
    if (this.debounce !== undefined) return;
    this.debounce = setTimeout(() => {
      this.debounce = undefined;
      void this.round();
    }, delay);
    this.debounce.unref?.();
  }

  /** One reconcile round (at most one at a time; a request meanwhile runs another after). */
  async round(): Promise<void> {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    let conflicts = 0;
    try {
      do {
        this.again = false;
        if (this.stopped || !this.host.isLeader()) return;
        this.stats.rounds++;
        const plan = reconcile(this.host.store, this.host.now(), newId);
        if (plan.ops.length === 0) continue;
        try {
          await this.host.commit(plan.ops);
          this.stats.commits++;
        } catch (e) {
          if (e instanceof MeshError && e.code === 'ECONFLICT') {
            // Another writer changed what the plan read: plan again from the new state, a few
            // times; the next store change or tick tries again after that.
            this.stats.conflicts++;
            this.again = ++conflicts < ATTEMPTS;
          } else {
            this.stats.errors++;
            this.lastError = (e as Error).message;
          }
        }
      } while (this.again);
    } finally {
      this.running = false;
    }
  }

  /** Plan from the local store and commit, re-planning after ECONFLICT. */
  private async commitPlan<T>(plan: () => { ops: Op[]; result: T }): Promise<T> {
    for (let i = 1; ; i++) {
      const p = plan();
      if (p.ops.length === 0) return p.result;
      try {
        await this.host.commit(p.ops);
        this.kick();
        return p.result;
      } catch (e) {
        if (!(e instanceof MeshError) || e.code !== 'ECONFLICT' || i >= ATTEMPTS) throw e;
      }
    }
  }

  private view(ref: string, at: string): ServiceView {
    return describeService(this.host.store, mustFindService(this.host.store, ref, at));
  }

  async create(req: unknown): Promise<ServiceView> {
    const id = newId();
    await this.commitPlan(() => ({
      ops: planCreateService(this.host.store, req, id, this.host.now()).ops,
      result: null,
    }));
    return this.view(id, 'create service');
  }

  async update(ref: string, req: unknown): Promise<ServiceView> {
    const id = await this.commitPlan(() => {
      const p = planUpdateService(this.host.store, ref, req, this.host.now());
      return { ops: p.ops, result: p.service.id };
    });
    return this.view(id, `update service ${ref}`);
  }

  async scale(ref: string, replicas: number): Promise<ServiceView> {
    const id = mustFindService(this.host.store, ref, `scale service ${ref}`).id;
    await this.commitPlan(() => ({
      ops: planScaleService(this.host.store, id, replicas),
      result: null,
    }));
    return this.view(id, `scale service ${ref}`);
  }

  async rollback(ref: string): Promise<ServiceView> {
    const id = mustFindService(this.host.store, ref, `rollback service ${ref}`).id;
    await this.commitPlan(() => ({
      ops: planRollbackService(this.host.store, id, this.host.now()),
      result: null,
    }));
    return this.view(id, `rollback service ${ref}`);
  }

  /** Marks the service for removal; the loop stops its tasks, then deletes them and it. */
  async remove(ref: string): Promise<void> {
    await this.commitPlan(() => ({ ops: planRemoveService(this.host.store, ref), result: null }));
  }

  inspect(ref: string): Promise<ServiceView> {
    return this.host.read((s) =>
      describeService(s, mustFindService(s, ref, `inspect service ${ref}`)),
    );
  }

  list(): Promise<ServiceRow[]> {
    return this.host.read((s) => listServices(s));
  }

  tasks(ref?: string): Promise<TaskRow[]> {
    return this.host.read((s) => {
      const id =
        ref === undefined || ref === ''
          ? undefined
          : mustFindService(s, ref, `ps service ${ref}`).id;
      return listTasks(s, this.host.now(), id);
    });
  }
}
