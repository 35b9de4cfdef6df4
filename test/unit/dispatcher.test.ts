// The dispatcher against a real Store fed through store.apply (a fake raft: each commit is the
// next index). Views: complete first, then incremental with a version chain, a gap (or a new
// session) gives a complete view; removals of tasks, services and networks; endpoint states;
// standalone tasks left out. Status: batched forward-only commits, stale moves dropped, tasks
// of other nodes refused with EAUTH, version races retried. lbWait resolving when every node
// applied the version (also nodes whose view did not change) and at the timeout with laggards.
// Log requests relayed through the long poll; close() ends everything with EUNAVAILABLE.
import t from 'tap';
import {
  Dispatcher,
  diffView,
  nodeView,
  viewShared,
  type DispatcherHost,
} from '../../src/manager/dispatch/dispatcher.js';
import type { Json, TaskState } from '../../src/api/objects.js';
import type { Assignments, NodeView, ServiceRecord, TaskRecord } from '../../src/api/services.js';
import { Store, encodeCommand, type Op } from '../../src/manager/store/store.js';
import { MeshError } from '../../src/util/errors.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

class Host implements DispatcherHost {
  store = new Store();
  leader = true;
  commits = 0;
  /** Ops run (as another writer) just before the next commit applies. */
  interfere: Op[] | undefined;
  private seq = 0;
  isLeader = () => this.leader;
  now = () => Date.now();
  appliedIndex = () => this.store.appliedIndex;
  must(ops: Op[]): number {
    const r = this.store.apply(
      this.store.appliedIndex + 1,
      encodeCommand({ client: 'test', seq: ++this.seq, ops }),
    );
    if (!r.ok) throw new MeshError(r.error.code, r.error.message);
    return this.store.appliedIndex;
  }
  /** A raft commit takes this long (reports arriving meanwhile are batched). */
  commitDelayMs = 0;
  commit = async (ops: Op[]): Promise<number[]> => {
    this.commits++;
    if (this.commitDelayMs > 0) await sleep(this.commitDelayMs);
    if (this.interfere !== undefined) {
      const x = this.interfere;
      this.interfere = undefined;
      this.must(x);
    }
    this.must(ops);
    return ops.map(() => this.store.appliedIndex);
  };
}

const node = (id: string, state: 'ready' | 'down' = 'ready', lbAddrs?: Record<string, string>) =>
  ({
    op: 'create',
    kind: 'node',
    value: {
      id,
      hostname: `host-${id}`,
      role: 'worker',
      addr: `198.18.0.${id.slice(1)}`,
      availability: 'active',
      labels: {},
      status: { state },
      certificate: { notAfter: 1, serial: '01' },
      ...(lbAddrs ? { lbAddrs } : {}),
    },
  }) as Op;

const network = (id: string, third: number, ingress = false): Op => ({
  op: 'create',
  kind: 'network',
  value: {
    id,
    name: `net-${id}`,
    driver: 'overlay',
    subnets: [{ subnet: `10.0.${third}.0/24`, gateway: `10.0.${third}.1` }],
    vni: 4096 + third,
    options: { encrypted: false, internal: false, attachable: false, ingress },
    labels: {},
  },
});

const template = {
  cmd: ['sleep', '1000'],
  env: {},
  restart: { condition: 'any', delayMs: 0, maxAttempts: 0, windowMs: 0 },
  constraints: [],
  stopGraceMs: 1000,
} as const;

function serviceRecord(networks: string[], vips: Record<string, string>): ServiceRecord {
  const upd = {
    parallelism: 1,
    delayMs: 0,
    failureAction: 'pause',
    monitorMs: 0,
    maxFailureRatio: 0,
  } as const;
  return {
    spec: {
      name: 'web',
      labels: {},
      mode: 'replicated',
      replicas: 2,
      task: {
        ...template,
        restart: { ...template.restart },
        constraints: [],
        env: {},
        cmd: [...template.cmd],
      },
      networks: networks.map((n) => ({ network: n, aliases: [`alias-${n}`] })),
      endpoint: { mode: 'vip', ports: [] },
      update: upd,
      rollback: upd,
    },
    specVersion: 1,
    endpoint: {
      vips: Object.entries(vips).map(([networkId, addr]) => ({ networkId, addr })),
      ports: [{ published: 8080, target: 80, protocol: 'tcp', mode: 'ingress' }],
    },
  };
}

const service = (id: string, rec: ServiceRecord, op: 'create' | 'update' = 'create'): Op => ({
  op,
  kind: 'service',
  value: { id, name: `svc-${id}`, spec: rec as unknown as Json },
});

function taskRecord(
  atts: Record<string, string>,
  desiredState: 'running' | 'shutdown' = 'running',
  extra: Partial<TaskRecord> = {},
): TaskRecord {
  return {
    attachments: Object.entries(atts).map(([networkId, a]) => ({ networkId, addresses: [a] })),
    serviceName: 'svc-s1',
    slot: 1,
    specVersion: 1,
    desiredState,
    template: {
      ...template,
      restart: { ...template.restart },
      constraints: [],
      env: {},
      cmd: [...template.cmd],
    },
    hostPorts: [],
    status: { message: 'assigned', at: 1 },
    ...extra,
  };
}

const task = (
  id: string,
  nodeId: string,
  state: TaskState,
  rec: TaskRecord,
  op: 'create' | 'update' = 'create',
): Op => ({
  op,
  kind: 'task',
  value: { id, name: `web.${id}`, serviceId: 's1', nodeId, state, spec: rec as unknown as Json },
});

/** Two nodes, network a (+ ingress), service s1 with a task on each node. */
function setup(): Host {
  const h = new Host();
  h.must([
    node('n1', 'ready', { a: '10.0.1.250/24', ing: '10.0.255.250/24' }),
    node('n2'),
    network('a', 1),
    network('b', 2),
    network('ing', 255, true),
    service('s1', serviceRecord(['a'], { a: '10.0.1.2/24', ing: '10.0.255.2/24' })),
    task('t1', 'n1', 'running', taskRecord({ a: '10.0.1.10/24' })),
    task('t2', 'n2', 'running', taskRecord({ a: '10.0.1.11/24' })),
  ]);
  return h;
}

const taskOp = (h: Host, id: string, f: (r: TaskRecord) => TaskRecord, state?: TaskState): Op => {
  const cur = h.store.get('task', id)!;
  return task(id, cur.nodeId!, state ?? cur.state, f(cur.spec as unknown as TaskRecord), 'update');
};

function viewOf(a: Assignments): NodeView {
  if (!a.complete) throw new Error('expected a complete view');
  return a.view;
}

t.test('nodeView: tasks, networks with lbAddr, services with endpoint states', async (t) => {
  const h = setup();
  h.must([
    // Standalone task (meshctl run): no serviceId, only attachments: not the dispatcher's.
    {
      op: 'create',
      kind: 'task',
      value: {
        id: 'x1',
        name: 'solo',
        nodeId: 'n1',
        state: 'running',
        spec: { attachments: [{ networkId: 'b', addresses: ['10.0.2.5/24'] }] },
      },
    },
    task('t3', 'n1', 'failed', taskRecord({ a: '10.0.1.12/24' }, 'shutdown')),
    task('t4', 'n1', 'failed', taskRecord({ a: '10.0.1.13/24' }, 'running')),
    task('t5', 'n2', 'running', taskRecord({ a: '10.0.1.14/24' }, 'shutdown')),
    task(
      't6',
      'n2',
      'running',
      taskRecord({ a: '10.0.1.15/24' }, 'running', {
        status: { message: 'unhealthy', healthy: false, at: 2 },
      }),
    ),
    task('t7', 'n2', 'starting', taskRecord({ a: '10.0.1.16/24' })),
  ]);
  const v = nodeView(h.store, 'n1');
  t.same(
    v.tasks.map((x) => x.id),
    ['t1', 't4'],
    'own service tasks; terminal+desired shutdown and standalone left out',
  );
  const t1 = v.tasks[0]!;
  t.same(t1.attachments, [{ networkId: 'a', address: '10.0.1.10/24', aliases: ['alias-a'] }]);
  t.equal(t1.serviceName, 'svc-s1');
  t.equal(t1.version, h.store.get('task', 't1')!.version);
  t.same(
    v.networks.map((n) => [n.id, n.lbAddr ?? null, n.ingress]),
    [
      ['a', '10.0.1.250/24', false],
      ['ing', '10.0.255.250/24', true],
    ],
    "its tasks' networks plus ingress, with the node's LB addresses; not b (standalone task's)",
  );
  t.equal(v.services.length, 1);
  const s = v.services[0]!;
  t.same(s.vips, { a: '10.0.1.2', ing: '10.0.255.2' });
  t.same(s.networks, [{ networkId: 'a', aliases: ['alias-a'] }]);
  t.same(
    s.endpoints.map((e) => [e.taskId, e.state, e.addresses['a'], e.nodeAddr]),
    [
      ['t1', 'active', '10.0.1.10', '198.18.0.1'],
      ['t2', 'active', '10.0.1.11', '198.18.0.2'],
      ['t5', 'draining', '10.0.1.14', '198.18.0.2'],
    ],
    'unhealthy, starting and failed tasks are not endpoints; desired shutdown running = draining',
  );
  t.same(
    nodeView(h.store, 'n2').networks.map((n) => [n.id, n.lbAddr ?? null]),
    [
      ['a', null],
      ['ing', null],
    ],
  );

  // A node that is not ready gets no active endpoints.
  const n2 = h.store.get('node', 'n2')!;
  h.must([{ op: 'update', kind: 'node', value: { ...n2, status: { state: 'down' } } }]);
  t.same(
    nodeView(h.store, 'n1').services[0]!.endpoints.map((e) => [e.taskId, e.state]),
    [
      ['t1', 'active'],
      ['t5', 'draining'],
    ],
  );
  t.same(nodeView(h.store, 'n1'), nodeView(Store.restore(h.store.snapshot()), 'n1'), 'pure');
  for (const n of ['n1', 'n2', 'n9']) {
    t.same(nodeView(h.store, n, viewShared(h.store)), nodeView(h.store, n), `shared parts: ${n}`);
  }
});

t.test('diffView: upserts, removals, null when equal', async (t) => {
  const h = setup();
  const a = nodeView(h.store, 'n1');
  t.equal(diffView(a, nodeView(h.store, 'n1')), null);
  h.must([
    { op: 'delete', kind: 'task', id: 't2' },
    task('t9', 'n1', 'assigned', taskRecord({ a: '10.0.1.20/24' })),
  ]);
  const d = diffView(a, nodeView(h.store, 'n1'))!;
  t.same(
    d.upsert.tasks?.map((x) => x.id),
    ['t9'],
  );
  t.same(
    d.upsert.services?.map((x) => x.id),
    ['s1'],
    'endpoint t2 gone changes the service',
  );
  t.equal(d.upsert.networks, undefined);
  t.same(d.remove, {});
  const b = nodeView(h.store, 'n1');
  h.must([
    { op: 'delete', kind: 'task', id: 't1' },
    { op: 'delete', kind: 'task', id: 't9' },
    { op: 'delete', kind: 'service', id: 's1' },
  ]);
  const d2 = diffView(b, nodeView(h.store, 'n1'))!;
  t.same(d2.remove, { tasks: ['t1', 't9'], networks: ['a'], services: ['s1'] });
  t.same(d2.upsert, {});
});

t.test('assignments: complete, incremental, long poll wakeup, gap, removal', async (t) => {
  const h = setup();
  const d = new Dispatcher(h);
  t.teardown(() => d.close());
  const first = await d.assignments('n1', { since: null });
  t.ok(first.complete);
  t.equal(first.version, h.store.appliedIndex);
  t.same(viewOf(first), nodeView(h.store, 'n1'));

  // Nothing changed: the poll waits, then ends empty with the same version.
  const t0 = Date.now();
  const empty = await d.assignments('n1', { since: first.version, waitMs: 60 });
  t.ok(Date.now() - t0 >= 55, 'waited');
  t.same(empty, {
    complete: false,
    version: first.version,
    prev: first.version,
    upsert: {},
    remove: {},
  });

  // A change while polling wakes the poll (debounced) with just that change.
  const pending = d.assignments('n1', { since: first.version, waitMs: 5000 });
  const t1 = Date.now();
  const idx = h.must([taskOp(h, 't1', (r) => ({ ...r, desiredState: 'shutdown' }))]);
  const inc = await pending;
  t.ok(Date.now() - t1 < 1000, 'woken by the change, not the timeout');
  if (inc.complete) throw new Error('expected incremental');
  t.equal(inc.prev, first.version);
  t.equal(inc.version, idx);
  t.same(
    inc.upsert.tasks?.map((x) => [x.id, x.desiredState, x.version]),
    [['t1', 'shutdown', idx]],
  );
  t.same(
    inc.upsert.services?.[0]?.endpoints.map((e) => [e.taskId, e.state]),
    [
      ['t1', 'draining'],
      ['t2', 'active'],
    ],
  );

  // A change made before the poll: returned at once.
  h.must([task('t8', 'n1', 'assigned', taskRecord({ a: '10.0.1.30/24' }))]);
  const inc2 = await d.assignments('n1', { since: inc.version, waitMs: 5000 });
  t.notOk(inc2.complete);
  if (!inc2.complete)
    t.same(
      inc2.upsert.tasks?.map((x) => x.id),
      ['t8'],
    );

  // Removal: terminal + desired shutdown leaves the node's view; the service goes too.
  h.must([
    taskOp(h, 't1', (r) => r, 'shutdown'),
    { op: 'delete', kind: 'task', id: 't8' },
    { op: 'delete', kind: 'task', id: 't2' },
    { op: 'delete', kind: 'service', id: 's1' },
  ]);
  const inc3 = await d.assignments('n1', { since: inc2.version, waitMs: 5000 });
  if (inc3.complete) throw new Error('expected incremental');
  t.same(inc3.remove, { tasks: ['t1', 't8'], networks: ['a'], services: ['s1'] });

  // A gap (a version this session never sent) or a new leader: complete view.
  const gap = await d.assignments('n1', { since: inc3.version - 1, waitMs: 5000 });
  t.ok(gap.complete, 'gap → complete');
  const d2 = new Dispatcher(h);
  t.teardown(() => d2.close());
  t.ok((await d2.assignments('n1', { since: gap.version, waitMs: 5000 })).complete, 'new leader');
});

t.test('assignments: one pending poll per node; unknown node; bad params', async (t) => {
  const h = setup();
  const d = new Dispatcher(h);
  t.teardown(() => d.close());
  const v = (await d.assignments('n2', { since: null })).version;
  const old = d.assignments('n2', { since: v, waitMs: 5000 });
  const fresh = d.assignments('n2', { since: v, waitMs: 50 });
  t.same(
    await old,
    { complete: false, version: v, prev: v, upsert: {}, remove: {} },
    'old poll ended empty',
  );
  t.same((await fresh).version, v);
  await t.rejects(d.assignments('zz', { since: null }), { code: 'EAUTH' });
  await t.rejects(d.assignments('n2', { since: -1 }), { code: 'EUSAGE' });
  t.same(d.connectedNodes(), ['n2']);
});

t.test('status: batched forward-only commits, EAUTH for tasks of other nodes', async (t) => {
  const h = setup();
  h.must([
    task('t3', 'n1', 'assigned', taskRecord({ a: '10.0.1.12/24' })),
    task('t4', 'n2', 'assigned', taskRecord({ a: '10.0.1.13/24' })),
  ]);
  const d = new Dispatcher(h);
  t.teardown(() => d.close());
  const st = (message: string, extra = {}) => ({ message, at: 5, ...extra });
  const before = h.commits;
  h.commitDelayMs = 20;
  await Promise.all([
    d.status('n1', {
      updates: [
        { taskId: 't3', state: 'starting', status: st('starting') },
        { taskId: 't3', state: 'running', status: st('started') },
        { taskId: 't1', state: 'starting', status: st('backwards') },
        { taskId: 'gone', state: 'running', status: st('deleted task') },
      ],
    }),
    // Arrive while the first commit is in flight: one commit for both.
    sleep(5).then(() =>
      d.status('n2', { updates: [{ taskId: 't4', state: 'preparing', status: st('pulling') }] }),
    ),
    sleep(5).then(() =>
      d.status('n1', {
        updates: [{ taskId: 't1', state: 'running', status: st('healthy', { healthy: true }) }],
      }),
    ),
  ]);
  h.commitDelayMs = 0;
  t.equal(h.commits - before, 2, 'three reports, two commits');
  t.equal((h.store.get('task', 't1')!.spec as unknown as TaskRecord).status.healthy, true);
  const t3 = h.store.get('task', 't3')!;
  t.equal(t3.state, 'running', 'furthest state of the batch');
  t.equal((t3.spec as unknown as TaskRecord).status.message, 'started');
  t.equal(h.store.get('task', 't1')!.state, 'running', 'a backwards move is dropped');
  t.equal(h.store.get('task', 't4')!.state, 'preparing');

  // A repeat with the same status changes nothing; a health change in the same state commits.
  const c0 = h.commits;
  await d.status('n1', { updates: [{ taskId: 't3', state: 'running', status: st('started') }] });
  t.equal(h.commits, c0, 'repeat: no commit');
  await d.status('n1', {
    updates: [{ taskId: 't3', state: 'running', status: st('unhealthy', { healthy: false }) }],
  });
  t.equal((h.store.get('task', 't3')!.spec as unknown as TaskRecord).status.healthy, false);

  // Another node's task: refused (EAUTH); the node's own update in the same call still lands.
  await t.rejects(
    d.status('n2', {
      updates: [
        { taskId: 't1', state: 'failed', status: st('not yours') },
        { taskId: 't4', state: 'running', status: st('up') },
      ],
    }),
    { code: 'EAUTH', message: /web\.t1/ },
  );
  t.equal(h.store.get('task', 't1')!.state, 'running', 'foreign update not applied');
  t.equal(h.store.get('task', 't4')!.state, 'running');

  // The orchestrator changed the task between our read and our commit: rebuilt and retried,
  // keeping the orchestrator's change.
  h.interfere = [taskOp(h, 't3', (r) => ({ ...r, desiredState: 'shutdown' }))];
  await d.status('n1', { updates: [{ taskId: 't3', state: 'complete', status: st('exit 0') }] });
  const t3b = h.store.get('task', 't3')!;
  t.equal(t3b.state, 'complete');
  t.equal((t3b.spec as unknown as TaskRecord).desiredState, 'shutdown', 'concurrent change kept');

  await t.rejects(
    d.status('n1', { updates: [{ taskId: 't3', state: 'bogus' as TaskState, status: st('x') }] }),
    {
      code: 'EUSAGE',
    },
  );
});

t.test('lbWait: resolves when every node applied the version, else lists laggards', async (t) => {
  const h = setup();
  // Not ready: never waited for, even with a task.
  h.must([node('n3', 'down'), task('t7', 'n3', 'running', taskRecord({ a: '10.0.1.50/24' }))]);
  const d = new Dispatcher(h);
  t.teardown(() => d.close());
  const v1 = (await d.assignments('n1', { since: null })).version;
  const v2 = (await d.assignments('n2', { since: null })).version;
  await d.status('n1', { updates: [], lbApplied: v1 });
  await d.status('n2', { updates: [], lbApplied: v2 });

  // The agent of n1 stops t1: desired shutdown at version X; both nodes see t1 draining.
  const x = h.must([taskOp(h, 't1', (r) => ({ ...r, desiredState: 'shutdown' }))]);
  const wait = d.lbWait('n1', { version: x, timeoutMs: 3000 });
  const a1 = await d.assignments('n1', { since: v1, waitMs: 2000 });
  const a2 = await d.assignments('n2', { since: v2, waitMs: 2000 });
  t.equal(a1.version, x);
  t.equal(a2.version, x);
  await sleep(30);
  await d.status('n1', { updates: [], lbApplied: x });
  let settled = false;
  void wait.then(() => (settled = true));
  await sleep(30);
  t.notOk(settled, 'still waiting for n2');
  await d.status('n2', { updates: [], lbApplied: x });
  const r = await wait;
  t.same(r.pending, []);
  t.ok(r.waitedMs >= 50 && r.waitedMs < 1000, `measured: ${r.waitedMs} ms`);

  // A change invisible to n2 (a task of n1 that is no endpoint): n2's unchanged view counts.
  const y = h.must([task('t9', 'n1', 'assigned', taskRecord({ a: '10.0.1.40/24' }))]);
  const w2 = d.lbWait('n1', { version: y, timeoutMs: 3000 });
  const b1 = await d.assignments('n1', { since: x, waitMs: 2000 });
  t.equal(b1.version, y);
  await d.status('n1', { updates: [], lbApplied: y });
  const r2 = await w2;
  t.same(r2.pending, [], 'n2 (view unchanged since x) is not a laggard');

  // Timeout: n2 never applies z; n4 (ready, a task, never polled) has applied nothing.
  h.must([node('n4'), task('t8', 'n4', 'assigned', taskRecord({ a: '10.0.1.60/24' }))]);
  const z = h.must([taskOp(h, 't2', (r) => ({ ...r, desiredState: 'shutdown' }))]);
  await d.assignments('n1', { since: y, waitMs: 2000 });
  await d.status('n1', { updates: [], lbApplied: z });
  const r3 = await d.lbWait('n2', { version: z, timeoutMs: 80 });
  t.same(r3.pending, ['host-n2', 'host-n4']);
  t.ok(r3.waitedMs >= 75, `timed out after ${r3.waitedMs} ms`);
});

t.test('log requests ride on the long poll; only the asked node answers', async (t) => {
  const h = setup();
  const d = new Dispatcher(h);
  t.teardown(() => d.close());
  await t.rejects(d.requestLogs('n1', ['t1'], 0, 100), { code: 'EUNAVAILABLE' }, 'not connected');
  const v = (await d.assignments('n1', { since: null })).version;
  const poll = d.assignments('n1', { since: v, waitMs: 5000 });
  const got = d.requestLogs('n1', ['t1'], 10, 2000);
  const r = await poll;
  t.equal(r.version, v, 'empty reply, chain unchanged');
  t.same(
    r.logRequests?.map((q) => [q.taskIds, q.tail]),
    [[['t1'], 10]],
  );
  const id = r.logRequests![0]!.id;
  await t.rejects(d.logs('n2', { id, logs: { t1: 'x' } }), { code: 'EAUTH' });
  await d.logs('n1', { id, logs: { t1: 'hello\n', other: 'dropped' } });
  t.same(await got, { t1: 'hello\n' });

  // Unanswered: ETIMEDOUT.
  const v2 = (await d.assignments('n1', { since: v, waitMs: 0 })).version;
  const lost = d.requestLogs('n1', ['t1'], 0, 50);
  const r2 = await d.assignments('n1', { since: v2, waitMs: 5000 });
  t.equal(r2.logRequests?.length, 1, 'queued request delivered on the next poll');
  await t.rejects(lost, { code: 'ETIMEDOUT' });
});

t.test(
  'close and leadership loss end polls, waits and log requests with EUNAVAILABLE',
  async (t) => {
    const h = setup();
    const d = new Dispatcher(h);
    const v = (await d.assignments('n1', { since: null })).version;
    const logs = d.requestLogs('n1', ['t1'], 0, 5000);
    t.equal((await d.assignments('n1', { since: v, waitMs: 5000 })).logRequests?.length, 1);
    const poll = d.assignments('n1', { since: v, waitMs: 5000 });
    const wait = d.lbWait('n1', { version: v + 100, timeoutMs: 5000 });
    d.close();
    await t.rejects(poll, { code: 'EUNAVAILABLE' });
    await t.rejects(wait, { code: 'EUNAVAILABLE' });
    await t.rejects(logs, { code: 'EUNAVAILABLE' });
    await t.rejects(d.assignments('n1', { since: null }), { code: 'EUNAVAILABLE' });

    const d2 = new Dispatcher(h);
    t.teardown(() => d2.close());
    const v2 = (await d2.assignments('n1', { since: null })).version;
    const poll2 = d2.assignments('n1', { since: v2, waitMs: 5000 });
    h.leader = false;
    h.must([taskOp(h, 't1', (r) => ({ ...r, desiredState: 'shutdown' }))]);
    await t.rejects(
      poll2,
      { code: 'EUNAVAILABLE' },
      'lost leadership: the agent goes to the new leader',
    );

    // Leadership lost without any store change: noticed by the 500 ms check.
    h.leader = true;
    const v3 = (await d2.assignments('n1', { since: null })).version;
    const poll3 = d2.assignments('n1', { since: v3, waitMs: 5000 });
    const t0 = Date.now();
    h.leader = false;
    await t.rejects(poll3, { code: 'EUNAVAILABLE' });
    t.ok(Date.now() - t0 < 1500, `noticed after ${Date.now() - t0} ms`);
  },
);
