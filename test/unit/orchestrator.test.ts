// The orchestrator's planner against a real Store fed through store.apply (a fake raft): slots
// filled and spread, addresses and LB addresses in the same commit, restart policies with
// delays, node down and drain, scale down from the top, rolling updates in batches with delay
// and failure actions, rollback, removal, global services, task history limit.
import t from 'tap';
import type { Node, Task, TaskState } from '../../src/api/objects.js';
import { reconcile } from '../../src/manager/orchestration/orchestrator.js';
import {
  listTasks,
  planCreateService,
  planRemoveService,
  planRollbackService,
  planScaleService,
  planUpdateService,
  recordOf,
  taskRecordOf,
} from '../../src/manager/orchestration/services.js';
import { Store, encodeCommand, type Op } from '../../src/manager/store/store.js';
import { planCreateNetwork, planIngressNetwork } from '../../src/manager/allocation/networks.js';

class H {
  store = new Store();
  now = 1_000_000;
  private seq = 0;
  private ids = 0;
  must(ops: Op[]): void {
    const r = this.store.apply(
      this.store.appliedIndex + 1,
      encodeCommand({ client: 'test', seq: ++this.seq, ops }),
    );
    if (!r.ok) throw new Error(r.error.message);
  }
  newId = (): string => `t${String(++this.ids).padStart(10, '0')}`;
  /** Reconcile rounds until nothing is left to do (bounded). */
  settle(max = 20): number {
    for (let i = 0; i < max; i++) {
      const p = reconcile(this.store, this.now, this.newId);
      if (p.ops.length === 0) return i;
      this.must(p.ops);
    }
    throw new Error('did not settle');
  }
  node(id: string, over: Partial<Node> = {}): void {
    const cur = this.store.get('node', id);
    const {
      version: _v,
      createdIndex: _c,
      ...base
    } = cur ?? {
      id,
      hostname: `host-${id}`,
      role: 'worker' as const,
      addr: '198.18.0.1',
      availability: 'active' as const,
      labels: {},
      status: { state: 'ready' as const },
      certificate: { notAfter: 1, serial: '01' },
      version: 0,
      createdIndex: 0,
    };
    this.must([{ op: cur ? 'update' : 'create', kind: 'node', value: { ...base, ...over } }]);
  }
  tasks(svc = 'web'): Task[] {
    const s = this.store.findByName('service', svc);
    return this.store.list('task', (x) => x.serviceId === s?.id);
  }
  live(svc = 'web'): Task[] {
    return this.tasks(svc).filter((x) => taskRecordOf(x)!.desiredState === 'running');
  }
  setState(task: Task, state: TaskState): void {
    const { version: _v, createdIndex: _c, ...value } = task;
    const rec = taskRecordOf(task)!;
    this.must([
      {
        op: 'update',
        kind: 'task',
        value: {
          ...value,
          state,
          spec: { ...rec, status: { message: state, at: this.now } } as never,
        },
      },
    ]);
  }
  runAll(svc = 'web'): void {
    for (const x of this.live(svc)) if (x.state === 'assigned') this.setState(x, 'running');
  }
}

function setup(nodes = 3): H {
  const h = new H();
  for (let i = 1; i <= nodes; i++) h.node(`n${i}`);
  h.must(planIngressNetwork(h.store, 'ingress0').ops);
  h.must(planCreateNetwork(h.store, { name: 'app' }, 'app0').ops);
  return h;
}

const create = (h: H, req: Record<string, unknown>) =>
  h.must(
    planCreateService(h.store, { name: 'web', cmd: ['sleep', '1'], ...req }, 'svcweb', h.now).ops,
  );

t.test('replicated: slots filled, spread, addresses and LB addresses in one commit', async (t) => {
  const h = setup();
  create(h, { replicas: 6, networks: ['app'], ports: [{ published: 8080, target: 80 }] });
  const plan = reconcile(h.store, h.now, h.newId);
  h.must(plan.ops);
  t.equal(h.settle(), 0, 'one round does it all');
  const tasks = h.live();
  t.equal(tasks.length, 6);
  t.same(tasks.map((x) => taskRecordOf(x)!.slot).sort(), [1, 2, 3, 4, 5, 6]);
  const per = new Map<string, number>();
  for (const x of tasks) per.set(x.nodeId!, (per.get(x.nodeId!) ?? 0) + 1);
  t.same([...per.values()], [2, 2, 2], 'two per node');
  t.ok(tasks.every((x) => x.state === 'assigned'));
  t.match(tasks[0]!.name, /^web\.\d\.t\d{7}$/);
  const addrs = tasks.flatMap((x) => taskRecordOf(x)!.attachments.flatMap((a) => a.addresses));
  t.equal(addrs.length, 12, 'app + ingress address per task');
  const vips = recordOf(h.store.findByName('service', 'web')!)!.endpoint.vips.map((v) => v.addr);
  const lbs = h.store.list('node').flatMap((n) => Object.values(n.lbAddrs ?? {}));
  t.equal(lbs.length, 6, 'each node: app and ingress LB address');
  const all = [...addrs, ...vips, ...lbs].map((a) => a.split('/')[0]);
  t.equal(new Set(all).size, all.length, 'no address twice');
});

t.test('restart policy: any with delay, on-failure, none, max attempts', async (t) => {
  const h = setup();
  create(h, { replicas: 1, restart: { delayMs: 3000 } });
  h.settle();
  h.runAll();
  const first = h.live()[0]!;
  h.setState(h.store.get('task', first.id)!, 'failed');
  h.settle();
  const repl = h.live();
  t.equal(repl.length, 1);
  t.not(repl[0]!.id, first.id, 'replaced');
  t.equal(taskRecordOf(repl[0]!)!.slot, 1, 'same slot');
  t.equal(taskRecordOf(repl[0]!)!.notBefore, h.now + 3000, 'restart delay');
  t.equal(taskRecordOf(h.store.get('task', first.id)!)!.desiredState, 'shutdown');

  for (const [condition, end, replaced] of [
    ['none', 'failed', false],
    ['on-failure', 'complete', false],
    ['on-failure', 'failed', true],
  ] as const) {
    const g = setup();
    create(g, { replicas: 1, restart: { condition } });
    g.settle();
    const x = g.live()[0]!;
    g.setState(x, end);
    g.settle();
    const now = g.live();
    t.equal(now.length, 1, `${condition}/${end}: one holder of the slot`);
    t.equal(now[0]!.id !== x.id, replaced, `${condition}/${end}: replaced=${replaced}`);
  }

  const m = setup();
  create(m, { replicas: 1, restart: { maxAttempts: 2, delayMs: 0 } });
  m.settle();
  const seen = new Set<string>();
  for (let i = 0; i < 5; i++) {
    const x = m.live()[0]!;
    seen.add(x.id);
    if (x.state !== 'failed') m.setState(x, 'failed');
    m.settle();
  }
  t.equal(seen.size, 3, 'first task + 2 restarts, then the slot is held');
});

t.test('node down and drain: replaced elsewhere; pause keeps tasks', async (t) => {
  const h = setup();
  create(h, { replicas: 3 });
  h.settle();
  h.runAll();
  h.node('n1', { status: { state: 'down' } });
  h.settle();
  let live = h.live().filter((x) => x.state !== 'failed');
  t.equal(live.length, 3);
  t.notOk(
    live.some((x) => x.nodeId === 'n1'),
    'none on the down node',
  );
  // `service ps` shows the tasks left on n1 with their node's state (their last report stays).
  const rows = listTasks(h.store, 0);
  t.ok(
    rows.some((r) => r.node !== '' && r.nodeId === 'n1' && r.nodeState === 'down'),
    'rows of tasks on n1 say the node is down',
  );
  t.ok(
    rows.some((r) => r.nodeId === 'n1' && r.stale === true && r.state === 'running'),
    'a task still running there is marked stale (its state is the last report)',
  );
  t.notOk(
    rows.some((r) => r.stale && (r.nodeId !== 'n1' || r.state !== 'running')),
    'nothing else is',
  );
  t.ok(
    rows
      .filter((r) => r.nodeId !== undefined && r.nodeId !== 'n1')
      .every((r) => r.nodeState === 'ready'),
    'the others say ready',
  );
  h.node('n2', { availability: 'drain' });
  h.settle();
  live = h.live();
  t.same(
    live.map((x) => x.nodeId),
    ['n3', 'n3', 'n3'],
    'all on the last node',
  );
  h.node('n3', { availability: 'pause' });
  h.settle();
  t.equal(h.live().length, 3, 'pause keeps running tasks');
});

t.test('no eligible node: pending with a reason, placed once a node qualifies', async (t) => {
  const h = setup(1);
  create(h, { replicas: 2, constraints: ['node.labels.zone==a'] });
  h.settle();
  const p = h.live();
  t.equal(p.length, 2);
  t.ok(p.every((x) => x.state === 'pending' && x.nodeId === undefined));
  t.match(taskRecordOf(p[0]!)!.status.message, /constraints node.labels.zone==a/);
  h.node('n1', { labels: { zone: 'a' } });
  h.settle();
  t.ok(h.live().every((x) => x.state === 'assigned' && x.nodeId === 'n1'));
  t.ok(h.live().every((x) => taskRecordOf(x)!.attachments.length === 0 || true));
});

t.test('scale down stops the highest slots; scale up fills the lowest', async (t) => {
  const h = setup();
  create(h, { replicas: 5 });
  h.settle();
  h.must(planScaleService(h.store, 'web', 2));
  h.settle();
  t.same(
    h
      .live()
      .map((x) => taskRecordOf(x)!.slot)
      .sort(),
    [1, 2],
  );
  h.must(planScaleService(h.store, 'web', 3));
  h.settle();
  t.same(
    h
      .live()
      .map((x) => taskRecordOf(x)!.slot)
      .sort(),
    [1, 2, 3],
  );
});

t.test('rolling update: batches of parallelism, delay between, completion', async (t) => {
  const h = setup();
  create(h, {
    replicas: 4,
    update: { parallelism: 2, delayMs: 1000, monitorMs: 0 },
    rollback: { parallelism: 0, monitorMs: 0 },
  });
  h.settle();
  h.runAll();
  h.must(planUpdateService(h.store, 'web', { id: 'web', env: { V: '2' } }, h.now).ops);
  h.settle();
  const v2 = () => h.live().filter((x) => taskRecordOf(x)!.specVersion === 2);
  t.equal(v2().length, 2, 'first batch of 2');
  t.equal(h.live().length, 4, 'never more than replicas');
  h.runAll();
  h.settle();
  t.equal(v2().length, 2, 'waits for the delay');
  h.now += 1000;
  h.settle();
  t.equal(v2().length, 4, 'second batch');
  h.runAll();
  h.settle();
  const rec = recordOf(h.store.findByName('service', 'web')!)!;
  t.equal(rec.updateStatus?.state, 'completed');
  t.same(taskRecordOf(v2()[0]!)!.template.env, { V: '2' });

  // Rollback returns to the previous spec the same way.
  h.must(planRollbackService(h.store, 'web', h.now));
  for (let i = 0; i < 10; i++) {
    h.now += 1000;
    h.settle();
    h.runAll();
  }
  h.settle();
  const r2 = recordOf(h.store.findByName('service', 'web')!)!;
  t.equal(r2.updateStatus?.state, 'rollback_completed');
  t.ok(
    h
      .live()
      .every(
        (x) =>
          taskRecordOf(x)!.specVersion === 3 && taskRecordOf(x)!.template.env['V'] === undefined,
      ),
  );
});

t.test('failed update: pause, or roll back', async (t) => {
  for (const action of ['pause', 'rollback'] as const) {
    const h = setup();
    create(h, {
      replicas: 3,
      update: { parallelism: 1, failureAction: action, monitorMs: 0 },
      rollback: { parallelism: 0, monitorMs: 0 },
    });
    h.settle();
    h.runAll();
    h.must(planUpdateService(h.store, 'web', { env: { BAD: '1' } }, h.now).ops);
    h.settle();
    const n = h.live().find((x) => taskRecordOf(x)!.specVersion === 2)!;
    h.setState(n, 'failed');
    h.settle();
    const rec = recordOf(h.store.findByName('service', 'web')!)!;
    if (action === 'pause') {
      t.equal(rec.updateStatus?.state, 'paused', 'paused');
      t.equal(
        h.live().filter((x) => taskRecordOf(x)!.specVersion === 1).length,
        2,
        'old tasks stay',
      );
    } else {
      t.equal(rec.updateStatus?.state, 'rollback_started');
      h.runAll();
      h.settle();
      h.runAll();
      h.settle();
      h.runAll();
      h.settle();
      const r = recordOf(h.store.findByName('service', 'web')!)!;
      t.equal(r.updateStatus?.state, 'rollback_completed');
      t.ok(h.live().every((x) => taskRecordOf(x)!.template.env['BAD'] === undefined));
    }
  }
});

t.test('global: one per eligible node, follows nodes', async (t) => {
  const h = setup();
  create(h, { mode: 'global', constraints: ['node.role!=manager'] });
  h.settle();
  t.same(
    h
      .live()
      .map((x) => x.nodeId)
      .sort(),
    ['n1', 'n2', 'n3'],
  );
  t.match(h.live()[0]!.name, /^web\.n\d\.t\d+$/);
  h.node('n4');
  h.settle();
  t.equal(h.live().length, 4, 'new node gets one');
  h.node('n2', { availability: 'drain' });
  h.node('n3', { role: 'manager' });
  h.settle();
  t.same(
    h
      .live()
      .map((x) => x.nodeId)
      .sort(),
    ['n1', 'n4'],
  );
});

t.test('remove: tasks stopped, deleted once ended, then the service', async (t) => {
  const h = setup();
  create(h, { replicas: 3, networks: ['app'] });
  h.settle();
  h.runAll();
  h.must(planRemoveService(h.store, 'web'));
  h.settle();
  t.ok(h.store.findByName('service', 'web'), 'still there while tasks run');
  t.ok(h.tasks().every((x) => taskRecordOf(x)!.desiredState === 'shutdown'));
  for (const x of h.tasks()) h.setState(x, 'shutdown');
  h.settle();
  t.equal(h.store.findByName('service', 'web'), undefined, 'service gone');
  t.equal(h.store.count('task'), 0, 'tasks gone');
});

t.test('history: at most 5 ended tasks per slot', async (t) => {
  const h = setup(1);
  create(h, { replicas: 1, restart: { delayMs: 0 } });
  h.settle();
  for (let i = 0; i < 12; i++) {
    h.setState(h.live()[0]!, 'failed');
    h.settle();
  }
  t.equal(h.tasks().length, 6, '1 live + 5 history');
});
