// Service requests and plans against a real Store (store.apply as a fake raft): validation
// with clear EUSAGE messages, VIPs per network and ingress, published ports unique
// cluster-wide with automatic ones from 30000-32767, dnsrr + ingress refused, stale plans
// refused by the store, update/scale/rollback records, views, network removal refused while a
// service uses the network, and the ServiceController over a fake host (create → tasks by the
// loop, ECONFLICT retried, remove).
import t, { type Test } from 'tap';

function throwsWith(t: Test, f: () => unknown, ok: (e: unknown) => boolean, msg?: string): void {
  try {
    f();
    t.fail(`no error${msg ? ` (${msg})` : ''}`);
  } catch (e) {
    t.ok(ok(e), `${msg ?? 'error'}: ${(e as Error).message}`);
  }
}

import { parseDuration, parsePort, parseServiceArgs } from '../../src/cli/service.js';
import {
  ServiceController,
  type ControllerHost,
} from '../../src/manager/orchestration/controller.js';
import {
  addressesInUse,
  planCreateNetwork,
  planIngressNetwork,
  planRemoveNetwork,
} from '../../src/manager/allocation/networks.js';
import {
  AUTO_PORT_MIN,
  describeService,
  listServices,
  listTasks,
  parseServiceRequest,
  planCreateService,
  planRollbackService,
  planScaleService,
  planUpdateService,
  recordOf,
} from '../../src/manager/orchestration/services.js';
import { Store, encodeCommand, type ApplyResult, type Op } from '../../src/manager/store/store.js';
import { MeshError } from '../../src/util/errors.js';

class H {
  store = new Store();
  private seq = 0;
  apply(ops: Op[]): ApplyResult {
    return this.store.apply(
      this.store.appliedIndex + 1,
      encodeCommand({ client: 'test', seq: ++this.seq, ops }),
    );
  }
  must(ops: Op[]): void {
    const r = this.apply(ops);
    if (!r.ok) throw new MeshError(r.error.code, r.error.message);
  }
}

function setup(): H {
  const h = new H();
  h.must([
    {
      op: 'create',
      kind: 'node',
      value: {
        id: 'n1',
        hostname: 'h1',
        role: 'worker',
        addr: '198.18.0.1',
        availability: 'active',
        labels: {},
        status: { state: 'ready' },
        certificate: { notAfter: 1, serial: '01' },
      },
    },
  ]);
  h.must(planIngressNetwork(h.store, 'ing').ops);
  h.must(planCreateNetwork(h.store, { name: 'app' }, 'app').ops);
  return h;
}

const code = (c: string, re?: RegExp) => (e: unknown) =>
  e instanceof MeshError && e.code === c && (re === undefined || re.test(e.message));

t.test('request validation', async (t) => {
  const h = setup();
  const p = (req: unknown) => () => parseServiceRequest(h.store, req);
  throwsWith(t, p(null), code('EUSAGE', /JSON object/));
  throwsWith(t, p({ name: 'bad name', cmd: ['x'] }), code('EUSAGE', /the name must be/));
  throwsWith(t, p({ name: 'web' }), code('EUSAGE', /a command is needed/));
  throwsWith(t, p({ name: 'web', cmd: ['x'], replicas: -1 }), code('EUSAGE', /replicas must be/));
  throwsWith(t, p({ name: 'web', cmd: ['x'], bogus: 1 }), code('EUSAGE', /unknown field "bogus"/));
  throwsWith(
    t,
    p({ name: 'web', cmd: ['x'], mode: 'global', replicas: 3 }),
    code('EUSAGE', /global/),
  );
  throwsWith(
    t,
    p({ name: 'web', cmd: ['x'], networks: ['nope'] }),
    code('ENOTFOUND', /no network "nope"/),
  );
  throwsWith(
    t,
    p({ name: 'web', cmd: ['x'], networks: ['ingress'] }),
    code('EUSAGE', /ingress network/),
  );
  throwsWith(
    t,
    p({ name: 'web', cmd: ['x'], constraints: ['zone=a'] }),
    code('EUSAGE', /constraint/),
  );
  throwsWith(
    t,
    p({ name: 'web', cmd: ['x'], endpointMode: 'dnsrr', ports: [{ target: 80, published: 80 }] }),
    code('EUSAGE', /dnsrr has no VIP/),
  );
  throwsWith(
    t,
    p({ name: 'web', cmd: ['x'], ports: [{ target: 80, mode: 'host' }] }),
    code('EUSAGE', /needs a published port/),
  );
  throwsWith(
    t,
    p({ name: 'web', cmd: ['x'], ports: [{ target: 0 }] }),
    code('EUSAGE', /port target/),
  );
  throwsWith(
    t,
    p({ name: 'web', cmd: ['x'], restart: { condition: 'sometimes' } }),
    code('EUSAGE', /restart condition/),
  );
  throwsWith(
    t,
    p({ name: 'web', cmd: ['x'], update: { maxFailureRatio: 2 } }),
    code('EUSAGE', /max failure ratio/),
  );
  throwsWith(t, p({ name: 'web', cmd: ['x'], env: { '': 'v' } }), code('EUSAGE', /env/));
  const s = parseServiceRequest(h.store, {
    name: 'web',
    cmd: ['sleep', '1'],
    networks: [{ network: 'app', aliases: ['www'] }],
    ports: [{ published: 8080, target: 80 }],
  });
  t.equal(s.replicas, 1);
  t.same(s.networks, [{ network: 'app', aliases: ['www'] }], 'network name resolved to id');
  t.same(s.endpoint.ports, [{ published: 8080, target: 80, protocol: 'tcp', mode: 'ingress' }]);
  t.equal(s.task.restart.condition, 'any');
  {
    const d = parseServiceRequest(h.store, {
      name: 'd',
      cmd: ['x'],
      endpointMode: 'dnsrr',
      ports: [{ target: 80, published: 80, mode: 'host' }],
    });
    t.equal(d.endpoint.mode, 'dnsrr', 'dnsrr with host-mode ports is fine');
  }
});

t.test('allocation: VIPs, ports unique, auto ports, stale plans refused', async (t) => {
  const h = setup();
  const req = (name: string, ports: unknown[]) => ({ name, cmd: ['x'], networks: ['app'], ports });
  const a = planCreateService(
    h.store,
    req('web', [{ published: 8080, target: 80 }, { target: 81 }]),
    'sweb',
    5,
  );
  h.must(a.ops);
  const rec = recordOf(h.store.get('service', 'sweb')!)!;
  t.equal(rec.endpoint.vips.length, 2, 'VIP on app and on ingress');
  t.same(
    rec.endpoint.ports.map((x) => x.published),
    [8080, AUTO_PORT_MIN],
  );
  t.ok(
    addressesInUse(h.store, 'app').has(rec.endpoint.vips[0]!.addr.split('/')[0]!),
    'VIP counted as in use',
  );
  throwsWith(
    t,
    () => planCreateService(h.store, req('api', [{ published: 8080, target: 80 }]), 'sapi', 5),
    code('ECONFLICT', /published port 8080\/tcp is used by service web/),
  );
  throwsWith(
    t,
    () => planCreateService(h.store, req('web', []), 'sx', 5),
    code('ECONFLICT', /named web exists/),
  );
  const udp = planCreateService(
    h.store,
    req('dns', [{ published: 8080, target: 53, protocol: 'udp' }]),
    'sdns',
    5,
  );
  h.must(udp.ops);
  // Two plans from the same state: the second one is refused by the store.
  const p1 = planCreateService(h.store, req('p1', [{ target: 1 }]), 'sp1', 5);
  const p2 = planCreateService(h.store, req('p2', [{ target: 2 }]), 'sp2', 5);
  t.equal(p1.record.endpoint.ports[0]!.published, AUTO_PORT_MIN + 1);
  t.equal(p2.record.endpoint.ports[0]!.published, AUTO_PORT_MIN + 1, 'same port planned twice…');
  h.must(p1.ops);
  const r = h.apply(p2.ops);
  t.notOk(r.ok, '…but the stale plan is refused');
  t.equal(!r.ok && r.error.code, 'ECONFLICT');
  h.must(planCreateService(h.store, req('p2', [{ target: 2 }]), 'sp2', 5).ops);
  t.equal(
    recordOf(h.store.get('service', 'sp2')!)!.endpoint.ports[0]!.published,
    AUTO_PORT_MIN + 2,
  );
  const vips = h.store
    .list('service')
    .flatMap((s) => recordOf(s)!.endpoint.vips.map((v) => `${v.networkId} ${v.addr}`));
  t.equal(new Set(vips).size, vips.length, 'no VIP twice');
});

t.test('update, scale, rollback records; views', async (t) => {
  const h = setup();
  h.must(
    planCreateService(
      h.store,
      { name: 'web', cmd: ['x'], replicas: 2, ports: [{ target: 80 }] },
      'sweb',
      5,
    ).ops,
  );
  t.same(
    planUpdateService(h.store, 'web', { id: 'web', replicas: 2 }, 6).ops,
    [],
    'no change, no ops',
  );
  h.must(planScaleService(h.store, 'web', 4));
  let rec = recordOf(h.store.get('service', 'sweb')!)!;
  t.equal(rec.spec.replicas, 4);
  t.equal(rec.specVersion, 1, 'scale is not a redeploy');
  throwsWith(
    t,
    () => planRollbackService(h.store, 'web', 7),
    code('ECONFLICT', /no previous spec/),
  );
  h.must(planUpdateService(h.store, 'web', { id: 'web', env: { A: '1' } }, 7).ops);
  rec = recordOf(h.store.get('service', 'sweb')!)!;
  t.equal(rec.specVersion, 2);
  t.equal(rec.updateStatus?.state, 'updating');
  t.same(rec.spec.endpoint.ports[0]!.published, AUTO_PORT_MIN, 'auto port kept');
  throwsWith(
    t,
    () => planUpdateService(h.store, 'web', { name: 'other' }, 7),
    code('EUSAGE', /renamed/),
  );
  h.must(planRollbackService(h.store, 'web', 8));
  rec = recordOf(h.store.get('service', 'sweb')!)!;
  t.equal(rec.specVersion, 3);
  t.equal(rec.updateStatus?.state, 'rollback_started');
  t.same(rec.spec.task.env, {});
  t.equal(rec.spec.replicas, 4, 'rollback keeps the replica count');
  const v = describeService(h.store, h.store.get('service', 'sweb')!);
  t.same(Object.keys(v.endpoint.vips), ['ingress']);
  t.same(v.replicas, { running: 0, desired: 4 });
  t.same(
    listServices(h.store).map((r) => [r.name, r.ports]),
    [['web', [`${AUTO_PORT_MIN}->80/tcp`]]],
  );
  t.same(listTasks(h.store, 0), []);
  throwsWith(t, () => planScaleService(h.store, 'nope', 1), code('ENOTFOUND', /no such service/));
});

t.test('network removal refused while a service uses it; LB addresses dropped', async (t) => {
  const h = setup();
  h.must(planCreateNetwork(h.store, { name: 'other' }, 'other').ops);
  h.must(
    planCreateService(h.store, { name: 'web', cmd: ['x'], networks: ['other'] }, 'sweb', 5).ops,
  );
  throwsWith(
    t,
    () => planRemoveNetwork(h.store, 'other'),
    code('ECONFLICT', /in use by service web/),
  );
  const n = h.store.get('node', 'n1')!;
  const { version: _v, createdIndex: _c, ...value } = n;
  h.must([
    {
      op: 'update',
      kind: 'node',
      value: { ...value, lbAddrs: { app: '10.0.1.9/24', other: 'x' } },
    },
  ]);
  t.ok(addressesInUse(h.store, 'app').has('10.0.1.9'), 'LB address counted as in use');
  h.must(planRemoveNetwork(h.store, 'app'));
  t.same(
    h.store.get('node', 'n1')!.lbAddrs,
    { other: 'x' },
    'the removed network’s LB address dropped',
  );
});

t.test('controller: create, the loop places tasks, conflicts retried, remove', async (t) => {
  const h = setup();
  let interfere = 0;
  const host: ControllerHost = {
    store: h.store,
    commit: async (ops) => {
      if (interfere > 0) {
        interfere--;
        h.must([{ op: 'put', kind: 'kv', id: 'mesh/service-alloc', value: `x${interfere}` }]);
      }
      h.must(ops);
      return ops.map(() => h.store.appliedIndex);
    },
    read: async (f) => f(h.store),
    isLeader: () => true,
    now: () => Date.now(),
  };
  const c = new ServiceController(host);
  c.start();
  t.teardown(() => c.stop());
  interfere = 2;
  const v = await c.create({ name: 'web', cmd: ['x'], replicas: 3, networks: ['app'] });
  t.equal(v.name, 'web', 'created after two ECONFLICTs');
  const until = async (f: () => boolean) => {
    for (let i = 0; i < 100 && !f(); i++) await new Promise((r) => setTimeout(r, 20));
    return f();
  };
  t.ok(await until(() => h.store.count('task') === 3), 'the loop created 3 tasks');
  const rows = await c.tasks('web');
  t.equal(rows.length, 3);
  t.same(
    rows.map((r) => r.node),
    ['h1', 'h1', 'h1'],
  );
  t.ok(rows.every((r) => r.desired === 'running' && r.state === 'assigned'));
  t.equal((await c.list())[0]!.desired, 3);
  await c.update('nope', {}).then(
    () => t.fail('update of a missing service'),
    (e: unknown) => t.ok(code('ENOTFOUND')(e), 'ENOTFOUND'),
  );
  await c.create({ name: 'web', cmd: ['x'] }).then(
    () => t.fail('duplicate create'),
    (e: unknown) => t.ok(code('ECONFLICT')(e), 'ECONFLICT'),
  );
  await c.scale('web', 1);
  t.ok(
    await until(
      () =>
        h.store
          .list('task')
          .filter((x) => (x.spec as { desiredState: string }).desiredState === 'running').length ===
        1,
    ),
    'scaled to 1',
  );
  await c.remove('web');
  // Tasks end as their node reports them stopped.
  for (const x of h.store.list('task')) {
    const { version: _v, createdIndex: _c, ...value } = x;
    h.must([{ op: 'update', kind: 'task', value: { ...value, state: 'shutdown' } }]);
  }
  t.ok(
    await until(() => h.store.count('service') === 0 && h.store.count('task') === 0),
    'service and tasks gone',
  );
});

t.test('meshctl service options make a body the controller accepts', async (t) => {
  const h = setup();
  const p = parseServiceArgs([
    '--name',
    'web',
    '--replicas',
    '3',
    '--network',
    'app:www,w2',
    '-p',
    '8080:80',
    '-p',
    '9000:90/udp',
    '--publish',
    'published=53,target=53,protocol=udp,mode=host',
    '--constraint',
    'node.role==worker',
    '-e',
    'A=1=2',
    '--restart-condition',
    'on-failure',
    '--restart-delay',
    '1.5s',
    '--update-parallelism',
    '2',
    '--update-delay',
    '500ms',
    '--update-failure-action',
    'rollback',
    '--health-cmd',
    'true',
    '--health-interval',
    '1s',
    '--stop-grace-period',
    '2m',
    '--detach',
    '--',
    'node',
    '-e',
    'x',
  ]);
  t.equal(p.detach, true);
  const s = parseServiceRequest(h.store, p.body);
  t.same(s.task.cmd, ['node', '-e', 'x']);
  t.same(s.networks, [{ network: 'app', aliases: ['www', 'w2'] }]);
  t.same(
    s.endpoint.ports.map((x) => `${x.published}:${x.target}/${x.protocol}/${x.mode}`),
    ['8080:80/tcp/ingress', '9000:90/udp/ingress', '53:53/udp/host'],
  );
  t.same(s.task.env, { A: '1=2' });
  t.same(s.task.restart, { condition: 'on-failure', delayMs: 1500, maxAttempts: 0, windowMs: 0 });
  t.equal(s.update.parallelism, 2);
  t.equal(s.update.delayMs, 500);
  t.equal(s.update.failureAction, 'rollback');
  t.same(s.task.health?.cmd, ['sh', '-c', 'true']);
  t.equal(s.task.health?.intervalMs, 1000);
  t.equal(s.task.stopGraceMs, 120_000);
  const u = parseServiceArgs(['--force', '-e', 'B=2', 'web']);
  t.same(u.positional, ['web']);
  t.same(u.body, { force: true, env: { B: '2' } });
  t.same(parsePort('80'), { target: 80 }, 'auto published port');
  for (const bad of [['--replicas', 'x'], ['--restart-delay', '5'], ['-p', '80:'], ['--bogus']]) {
    throwsWith(t, () => parseServiceArgs(bad), code('EUSAGE'), bad.join(' '));
  }
  t.equal(parseDuration('2h', 'x'), 7_200_000);
});
