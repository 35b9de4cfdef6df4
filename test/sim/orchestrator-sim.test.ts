// The orchestrator under seeded random churn: nodes going down and coming back, drains, tasks
// starting, failing and finishing, scale, spec updates (some failing), rollbacks, services
// created and removed, time passing; the planner's ops applied to a real Store, sometimes late
// (a round skipped) or after another writer (stale plans refused with ECONFLICT and re-planned).
// After every step: never more desired-running tasks than replicas, no address held twice on a
// network (tasks, VIPs, LB addresses), no ingress port published twice; after each applied round
// every live task sits on a node that is neither down nor drained. At the end, with every node
// up and tasks running, each service converges to its replica count at its spec version.
// ORCH_SIM_SEEDS=N sets the runs, ORCH_SIM_STEPS the steps per run.
import t from 'tap';
import { SeededRandom } from '../../src/raft/random.js';
import type { Node, Task, TaskState } from '../../src/api/objects.js';
import { reconcile } from '../../src/manager/orchestration/orchestrator.js';
import { planCreateNetwork, planIngressNetwork } from '../../src/manager/allocation/networks.js';
import {
  isTerminal,
  planCreateService,
  planRemoveService,
  planRollbackService,
  planScaleService,
  planUpdateService,
  recordOf,
  taskRecordOf,
} from '../../src/manager/orchestration/services.js';
import { Store, encodeCommand, type Op } from '../../src/manager/store/store.js';
import { MeshError } from '../../src/util/errors.js';

const SEEDS = Number(process.env.ORCH_SIM_SEEDS ?? 8);
const STEPS = Number(process.env.ORCH_SIM_STEPS ?? 600);
const NODES = 5;

class Sim {
  store = new Store();
  now = 1_000_000;
  private seq = 0;
  private ids = 0;
  conflicts = 0;
  constructor(readonly r: SeededRandom) {}
  apply(ops: Op[]): boolean {
    const res = this.store.apply(
      this.store.appliedIndex + 1,
      encodeCommand({ client: 'sim', seq: ++this.seq, ops }),
    );
    if (!res.ok && res.error.code !== 'ECONFLICT') throw new Error(res.error.message);
    if (!res.ok) this.conflicts++;
    return res.ok;
  }
  newId = (): string => `task${String(++this.ids).padStart(8, '0')}x`;
  tryPlan(f: () => Op[]): void {
    try {
      const ops = f();
      if (ops.length > 0) this.apply(ops);
    } catch (e) {
      if (!(e instanceof MeshError)) throw e;
    }
  }
  node(id: string, over: Partial<Node>): void {
    const cur = this.store.get('node', id)!;
    const { version: _v, createdIndex: _c, ...base } = cur;
    this.apply([{ op: 'update', kind: 'node', value: { ...base, ...over } }]);
  }
  move(task: Task, state: TaskState): void {
    const rec = taskRecordOf(task)!;
    const { version: _v, createdIndex: _c, ...value } = task;
    this.apply([
      {
        op: 'update',
        kind: 'task',
        value: {
          ...value,
          state,
          spec: { ...rec, status: { message: state, at: this.now } } as never,
        },
        version: task.version,
      },
    ]);
  }
}

function check(s: Sim, afterRound: boolean, applied = afterRound): string | null {
  const store = s.store;
  const owners = new Map<string, string>();
  const claim = (net: string, cidr: string, who: string): string | null => {
    const k = `${net} ${cidr.split('/')[0]}`;
    const prev = owners.get(k);
    if (prev !== undefined) return `address ${k} held by ${prev} and ${who}`;
    owners.set(k, who);
    return null;
  };
  const ports = new Map<string, string>();
  for (const svc of store.list('service')) {
    const rec = recordOf(svc)!;
    for (const v of rec.endpoint.vips) {
      const e = claim(v.networkId, v.addr, `vip of ${svc.name}`);
      if (e) return e;
    }
    for (const p of rec.endpoint.ports) {
      if (p.mode !== 'ingress') continue;
      const k = `${p.published}/${p.protocol}`;
      if (ports.has(k)) return `ingress port ${k} of ${ports.get(k)} and ${svc.name}`;
      ports.set(k, svc.name);
    }
    const tasks = store.list('task', (x) => x.serviceId === svc.id);
    const desired = tasks.filter((x) => taskRecordOf(x)!.desiredState === 'running');
    if (applied && rec.spec.mode === 'replicated' && desired.length > rec.spec.replicas) {
      return `${svc.name}: ${desired.length} desired running > ${rec.spec.replicas} replicas`;
    }
  }
  for (const n of store.list('node')) {
    for (const [net, a] of Object.entries(n.lbAddrs ?? {})) {
      const e = claim(net, a, `lb of ${n.id}`);
      if (e) return e;
    }
  }
  for (const x of store.list('task')) {
    const rec = taskRecordOf(x)!;
    for (const a of rec.attachments) {
      for (const addr of a.addresses) {
        const e = claim(a.networkId, addr, x.name);
        if (e) return e;
      }
    }
    if (afterRound && rec.desiredState === 'running' && !isTerminal(x) && x.nodeId !== undefined) {
      const n = store.get('node', x.nodeId);
      if (n === undefined || n.status.state === 'down' || n.availability === 'drain') {
        return `${x.name} desired running on ${x.nodeId} (${n?.status.state}/${n?.availability})`;
      }
    }
  }
  return null;
}

function run(seed: number): { error: string | null; conflicts: number; tasks: number } {
  const r = new SeededRandom(seed);
  const s = new Sim(r);
  const nodeIds = Array.from({ length: NODES }, (_, i) => `node${i}`);
  s.apply(
    nodeIds.map((id, i) => ({
      op: 'create',
      kind: 'node',
      value: {
        id,
        hostname: `h${i}`,
        role: i === 0 ? 'manager' : 'worker',
        addr: `198.18.0.${i + 1}`,
        availability: 'active',
        labels: { zone: i % 2 ? 'a' : 'b' },
        status: { state: 'ready' },
        certificate: { notAfter: 1, serial: '01' },
      },
    })),
  );
  s.apply(planIngressNetwork(s.store, 'ingressnet').ops);
  // A small subnet so exhaustion happens.
  s.apply(
    planCreateNetwork(s.store, { name: 'app', subnets: [{ subnet: '10.9.0.0/27' }] }, 'appnet').ops,
  );
  let made = 0;
  const newService = () => {
    const name = `s${made++}`;
    const global = r.intn(5) === 0;
    s.tryPlan(
      () =>
        planCreateService(
          s.store,
          {
            name,
            cmd: ['x'],
            ...(global ? { mode: 'global' } : { replicas: 1 + r.intn(6) }),
            networks: r.intn(2) ? ['app'] : [],
            ports: r.intn(2) ? [{ target: 80, published: r.intn(2) ? 0 : 8080 + r.intn(3) }] : [],
            ...(r.intn(3) === 0 ? { constraints: ['node.labels.zone==a'] } : {}),
            restart: {
              condition: (['any', 'on-failure', 'none'] as const)[r.intn(3)],
              delayMs: r.intn(3) * 1000,
              maxAttempts: r.intn(3),
            },
            update: {
              parallelism: r.intn(3),
              delayMs: r.intn(2) * 1000,
              monitorMs: r.intn(2) * 2000,
              failureAction: (['pause', 'continue', 'rollback'] as const)[r.intn(3)],
            },
            rollback: { parallelism: 0, monitorMs: 0 },
          },
          `svc${made}`,
          s.now,
        ).ops,
    );
  };
  for (let i = 0; i < 3; i++) newService();
  const pick = <T>(xs: T[]): T | undefined => (xs.length === 0 ? undefined : xs[r.intn(xs.length)]);
  for (let step = 0; step < STEPS; step++) {
    const services = s.store.list('service');
    const svc = pick(services);
    switch (r.intn(14)) {
      case 0: {
        const n = pick(nodeIds)!;
        const down = s.store.get('node', n)!.status.state === 'down';
        s.node(n, { status: { state: down ? 'ready' : 'down' } });
        break;
      }
      case 1: {
        const n = pick(nodeIds)!;
        s.node(n, { availability: (['active', 'drain', 'pause'] as const)[r.intn(3)] });
        break;
      }
      case 2:
        if (svc) s.tryPlan(() => planScaleService(s.store, svc.id, r.intn(8)));
        break;
      case 3:
        if (svc)
          s.tryPlan(
            () => planUpdateService(s.store, svc.id, { env: { V: String(step) } }, s.now).ops,
          );
        break;
      case 4:
        if (svc && r.intn(3) === 0) s.tryPlan(() => planRollbackService(s.store, svc.id, s.now));
        else if (svc && r.intn(4) === 0) s.tryPlan(() => planRemoveService(s.store, svc.id));
        else if (services.length < 6) newService();
        break;
      case 5:
        s.now += r.intn(3000);
        break;
      default: {
        // Agents: move a few tasks forward as nodes would report.
        for (const x of s.store.list('task')) {
          if (r.intn(3) !== 0 || x.nodeId === undefined || isTerminal(x)) continue;
          const node = s.store.get('node', x.nodeId);
          if (node === undefined || node.status.state === 'down') continue;
          const rec = taskRecordOf(x)!;
          if (rec.desiredState === 'shutdown') s.move(x, 'shutdown');
          else if (x.state === 'assigned') s.move(x, r.intn(8) === 0 ? 'rejected' : 'running');
          else if (x.state === 'running' && r.intn(6) === 0) {
            s.move(x, r.intn(2) ? 'failed' : 'complete');
          }
        }
      }
    }
    let err = check(s, false);
    if (err)
      return {
        error: `seed ${seed} step ${step} (before round): ${err}`,
        conflicts: s.conflicts,
        tasks: 0,
      };
    // The leader's round: sometimes late, sometimes beaten by another writer (a stale plan).
    if (r.intn(5) !== 0) {
      const plan = reconcile(s.store, s.now, s.newId);
      if (r.intn(10) === 0) {
        const x = pick(s.store.list('task', (y) => y.nodeId !== undefined && !isTerminal(y)));
        if (x) s.move(x, x.state);
      }
      const ok = plan.ops.length === 0 || s.apply(plan.ops);
      err = check(s, false, ok);
      if (err)
        return {
          error: `seed ${seed} step ${step} (after round): ${err}`,
          conflicts: s.conflicts,
          tasks: 0,
        };
      if (ok) {
        const again = reconcile(s.store, s.now, s.newId);
        if (again.ops.length === 0) {
          err = check(s, true);
          if (err)
            return {
              error: `seed ${seed} step ${step} (settled): ${err}`,
              conflicts: s.conflicts,
              tasks: 0,
            };
        }
      }
    }
  }
  // Heal: every node up and active, tasks start and stay up; each service converges.
  for (const n of nodeIds) s.node(n, { status: { state: 'ready' }, availability: 'active' });
  for (const svc of s.store.list('service')) {
    const rec = recordOf(svc)!;
    if (rec.updateStatus?.state === 'paused' || rec.updateStatus?.state === 'rollback_paused') {
      s.tryPlan(() => planUpdateService(s.store, svc.id, { force: true }, s.now).ops);
    }
  }
  for (let i = 0; i < 200; i++) {
    s.now += 5000;
    const plan = reconcile(s.store, s.now, s.newId);
    if (plan.ops.length > 0) s.apply(plan.ops);
    for (const x of s.store.list('task')) {
      if (isTerminal(x) || x.nodeId === undefined) continue;
      const rec = taskRecordOf(x)!;
      if (rec.desiredState === 'shutdown') s.move(x, 'shutdown');
      else if (x.state === 'assigned') s.move(x, 'running');
    }
  }
  for (const svc of s.store.list('service')) {
    const rec = recordOf(svc)!;
    if (rec.removing === true)
      return { error: `seed ${seed}: ${svc.name} never removed`, conflicts: s.conflicts, tasks: 0 };
    const live = s.store.list(
      'task',
      (x) =>
        x.serviceId === svc.id && taskRecordOf(x)!.desiredState === 'running' && !isTerminal(x),
    );
    const running = live.filter(
      (x) => x.state === 'running' && taskRecordOf(x)!.specVersion === rec.specVersion,
    );
    if (rec.spec.mode === 'replicated') {
      const held = s.store.list(
        'task',
        (x) =>
          x.serviceId === svc.id && taskRecordOf(x)!.desiredState === 'running' && isTerminal(x),
      ).length;
      // Slots held by ended tasks (restart none / attempts used up) or waiting for addresses.
      const pending = live.filter((x) => x.state === 'pending').length;
      if (running.length + held + pending !== rec.spec.replicas) {
        return {
          error: `seed ${seed}: ${svc.name} ${running.length} running + ${held} held + ${pending} pending != ${rec.spec.replicas}`,
          conflicts: s.conflicts,
          tasks: 0,
        };
      }
    }
  }
  return { error: null, conflicts: s.conflicts, tasks: s.store.count('task') };
}

t.test(`orchestrator under churn (${SEEDS} seeds × ${STEPS} steps)`, async (t) => {
  let conflicts = 0;
  for (let seed = 1; seed <= SEEDS; seed++) {
    const res = run(seed);
    if (res.error !== null) {
      t.fail(res.error);
      return;
    }
    conflicts += res.conflicts;
  }
  t.pass(`all invariants held; ${conflicts} stale plans refused by the store`);
});
