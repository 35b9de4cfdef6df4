// Cluster store: transactions, optimistic concurrency, unique names, forward-only task states,
// exactly-once via sessions, canonical snapshots, watches, and garbage that never throws.
import { encodeEntry } from '../../src/manager/store/entry.js';
import t from 'tap';
import { SeededRandom } from '../../src/raft/random.js';
import {
  TASK_STATES,
  taskStateMayMove,
  type Kind,
  type ObjectInput,
  type TaskState,
} from '../../src/api/objects.js';
import {
  Store,
  encodeCommand,
  type ApplyResult,
  type Op,
  type WatchEvent,
} from '../../src/manager/store/store.js';

const node = (id: string, over: Partial<ObjectInput<'node'>> = {}): ObjectInput<'node'> => ({
  id,
  hostname: `host-${id}`,
  role: 'worker',
  addr: '198.18.0.1',
  availability: 'active',
  labels: {},
  status: { state: 'ready' },
  certificate: { notAfter: 1_900_000_000_000, serial: 'ab01' },
  ...over,
});
const network = (
  id: string,
  name: string,
  over: Partial<ObjectInput<'network'>> = {},
): ObjectInput<'network'> => ({
  id,
  name,
  driver: 'overlay',
  subnets: [{ subnet: '10.0.1.0/24', gateway: '10.0.1.1' }],
  vni: 4096,
  options: { encrypted: false, internal: false, attachable: true, ingress: false },
  labels: {},
  ...over,
});
const task = (id: string, state: TaskState = 'new'): ObjectInput<'task'> => ({
  id,
  name: `svc.${id}`,
  state,
  spec: { image: 'x' },
});
const cluster = (): ObjectInput<'cluster'> => ({
  id: 'default',
  clusterId: 'c1',
  caCertPem: 'CERT',
  caKeyPem: 'KEY',
  tokens: { worker: 'w', manager: 'm' },
  settings: { heartbeatPeriodMs: 5000 },
  keys: [],
});

/** A store fed by one client, indices 1, 2, 3… */
class Feed {
  store = new Store();
  index = 0;
  seq = 0;
  run(...ops: Op[]): ApplyResult {
    return this.store.apply(++this.index, encodeCommand({ client: 'c', seq: ++this.seq, ops }));
  }
}

const objectsOf = (s: Store): string => {
  const o = JSON.parse(new TextDecoder().decode(s.snapshot()));
  return JSON.stringify(o.objects);
};
const KIND_LIST = ['cluster', 'kv', 'network', 'node', 'service', 'task'] as const;
/** Stored objects are immutable and replaced on change: same references, same objects. */
const refsOf = (s: Store): unknown[] => KIND_LIST.flatMap((k) => s.list(k));
const sameRefs = (a: unknown[], b: unknown[]): boolean =>
  a.length === b.length && a.every((x, i) => x === b[i]);
const errOf = (r: ApplyResult) => (r.ok ? null : r.error);

t.test('create, get, update keeps createdIndex, delete', (t) => {
  const f = new Feed();
  t.same(f.run({ op: 'create', kind: 'node', value: node('n1') }), { ok: true, versions: [1] });
  const n = f.store.get('node', 'n1');
  t.equal(n?.version, 1);
  t.equal(n?.createdIndex, 1);
  const r = f.run({ op: 'update', kind: 'node', value: { ...n!, availability: 'drain' } });
  t.same(r, { ok: true, versions: [2] });
  const n2 = f.store.get('node', 'n1');
  t.equal(n2?.availability, 'drain');
  t.equal(n2?.version, 2);
  t.equal(n2?.createdIndex, 1, 'createdIndex survives updates');
  t.same(f.run({ op: 'delete', kind: 'node', id: 'n1' }), { ok: true, versions: [3] });
  t.equal(f.store.get('node', 'n1'), undefined);
  t.equal(errOf(f.run({ op: 'delete', kind: 'node', id: 'n1' }))?.code, 'ENOTFOUND');
  t.equal(f.store.appliedIndex, 4);
  t.end();
});

t.test('a command applies all its ops or none', (t) => {
  const f = new Feed();
  f.run({ op: 'create', kind: 'kv', value: { id: 'k0', value: 'v0' } });
  const before = objectsOf(f.store);
  const seen: WatchEvent[] = [];
  f.store.watch('*', (e) => seen.push(e));
  const r = f.run(
    { op: 'create', kind: 'network', value: network('n1', 'web') },
    { op: 'put', kind: 'kv', id: 'k0', value: 'changed' },
    { op: 'delete', kind: 'kv', id: 'k0' },
    { op: 'create', kind: 'node', value: node('a') },
    { op: 'update', kind: 'node', value: node('missing') },
  );
  t.equal(errOf(r)?.code, 'ENOTFOUND');
  t.match(
    errOf(r)?.message,
    /^update node missing: no node with id missing; .*no op of this command was applied/,
  );
  t.equal(objectsOf(f.store), before, 'nothing changed');
  t.equal(f.store.findByName('network', 'web'), undefined, 'name index rolled back');
  t.equal(f.store.get('kv', 'k0')?.value, 'v0');
  t.equal(seen.length, 0, 'no events for a failed command');
  t.equal(f.store.appliedIndex, 2, 'the entry still counts as applied');
  // The name is free again, and later ops of a command see the earlier ones.
  const ok = f.run(
    { op: 'create', kind: 'network', value: network('n1', 'web') },
    { op: 'update', kind: 'network', value: network('n1', 'web2'), version: 3 },
    { op: 'create', kind: 'network', value: network('n2', 'web') },
  );
  t.same(ok, { ok: true, versions: [3, 3, 3] });
  t.equal(f.store.findByName('network', 'web')?.id, 'n2');
  t.equal(f.store.findByName('network', 'web2')?.id, 'n1');
  t.same(
    seen.map((e) => [e.op, e.kind, e.object.id]),
    [
      ['create', 'network', 'n1'],
      ['update', 'network', 'n1'],
      ['create', 'network', 'n2'],
    ],
  );
  t.end();
});

t.test('optimistic concurrency: a stale version is refused', (t) => {
  const f = new Feed();
  f.run({ op: 'create', kind: 'kv', value: { id: 'k', value: 'a' } });
  f.run({ op: 'put', kind: 'kv', id: 'k', value: 'b' });
  const r = f.run({ op: 'update', kind: 'kv', value: { id: 'k', value: 'c' }, version: 1 });
  t.equal(errOf(r)?.code, 'ECONFLICT');
  t.match(
    errOf(r)?.message,
    /^update kv k: version 1 is not the current one \(2\).*read it again and retry/,
  );
  t.equal(errOf(f.run({ op: 'delete', kind: 'kv', id: 'k', version: 1 }))?.code, 'ECONFLICT');
  t.equal(f.store.get('kv', 'k')?.value, 'b');
  t.same(f.run({ op: 'update', kind: 'kv', value: { id: 'k', value: 'c' }, version: 2 }), {
    ok: true,
    versions: [5],
  });
  t.same(f.run({ op: 'delete', kind: 'kv', id: 'k', version: 5 }), { ok: true, versions: [6] });
  t.end();
});

t.test('compare-and-set and put on the kv register', (t) => {
  const f = new Feed();
  t.ok(f.run({ op: 'cas', kind: 'kv', id: 'x', prev: null, value: '1' }).ok, 'absent → 1');
  t.equal(
    errOf(f.run({ op: 'cas', kind: 'kv', id: 'x', prev: null, value: '2' }))?.code,
    'ECONFLICT',
  );
  t.equal(
    errOf(f.run({ op: 'cas', kind: 'kv', id: 'x', prev: '0', value: '2' }))?.code,
    'ECONFLICT',
  );
  t.ok(f.run({ op: 'cas', kind: 'kv', id: 'x', prev: '1', value: '2' }).ok);
  t.equal(f.store.get('kv', 'x')?.value, '2');
  t.ok(f.run({ op: 'put', kind: 'kv', id: 'y', value: '' }).ok);
  t.equal(f.store.get('kv', 'y')?.value, '');
  t.equal(
    errOf(f.run({ op: 'cas', kind: 'kv', id: 'y', prev: null, value: 'z' }))?.code,
    'ECONFLICT',
    'empty string is not absent',
  );
  const wrong = f.run({ op: 'put', kind: 'network', id: 'y', value: 'v' } as unknown as Op);
  t.match(errOf(wrong), { code: 'EUSAGE', message: /^put network y: put works on kind kv only/ });
  t.end();
});

t.test('unique names and ids', (t) => {
  const f = new Feed();
  t.ok(f.run({ op: 'create', kind: 'network', value: network('id1', 'web') }).ok);
  const dupName = f.run({ op: 'create', kind: 'network', value: network('id2', 'web') });
  t.same(errOf(dupName), {
    code: 'ECONFLICT',
    message:
      'create network web: a network named web exists (id id1); pick another name or remove it first',
  });
  const dupId = f.run({ op: 'create', kind: 'network', value: network('id1', 'other') });
  t.equal(errOf(dupId)?.code, 'ECONFLICT');
  t.match(errOf(dupId)?.message, /a network with id id1 exists/);
  t.ok(f.run({ op: 'create', kind: 'network', value: network('id2', 'db') }).ok);
  const rename = f.run({ op: 'update', kind: 'network', value: network('id2', 'web') });
  t.equal(errOf(rename)?.code, 'ECONFLICT', 'rename onto a taken name');
  t.equal(
    errOf(
      f.run(
        { op: 'create', kind: 'node', value: node('n') },
        { op: 'create', kind: 'node', value: node('n') },
      ),
    )?.code,
    'ECONFLICT',
    'node ids unique, even within one command',
  );
  t.equal(f.store.get('node', 'n'), undefined);
  t.ok(f.run({ op: 'delete', kind: 'network', id: 'id1' }).ok);
  t.ok(
    f.run({ op: 'update', kind: 'network', value: network('id2', 'web') }).ok,
    'a freed name can be taken',
  );
  t.equal(f.store.findByName('network', 'db'), undefined, 'the old name is released');
  // services have unique names too, tasks do not
  t.ok(f.run({ op: 'create', kind: 'service', value: { id: 's1', name: 'api', spec: {} } }).ok);
  t.equal(
    errOf(f.run({ op: 'create', kind: 'service', value: { id: 's2', name: 'api', spec: null } }))
      ?.code,
    'ECONFLICT',
  );
  t.ok(
    f.run(
      { op: 'create', kind: 'task', value: { ...task('t1'), name: 'same' } },
      { op: 'create', kind: 'task', value: { ...task('t2'), name: 'same' } },
    ).ok,
  );
  // one cluster object, id default
  t.ok(f.run({ op: 'create', kind: 'cluster', value: cluster() }).ok);
  t.match(errOf(f.run({ op: 'create', kind: 'cluster', value: cluster() })), {
    code: 'ECONFLICT',
    message: /update it instead/,
  });
  t.equal(
    errOf(f.run({ op: 'create', kind: 'cluster', value: { ...cluster(), id: 'other' } as never }))
      ?.code,
    'EUSAGE',
  );
  t.equal(errOf(f.run({ op: 'delete', kind: 'cluster', id: 'default' }))?.code, 'EUSAGE');
  t.end();
});

t.test('task states only move forward', (t) => {
  let checked = 0;
  for (const from of TASK_STATES) {
    for (const to of TASK_STATES) {
      const f = new Feed();
      f.run({ op: 'create', kind: 'task', value: task('t', from) });
      const r = f.run({ op: 'update', kind: 'task', value: task('t', to) });
      const fi = TASK_STATES.indexOf(from);
      const ti = TASK_STATES.indexOf(to);
      const terminal = (i: number): boolean => i >= TASK_STATES.indexOf('complete');
      const expect = from === to || (!terminal(fi) && ti > fi);
      t.equal(taskStateMayMove(from, to), expect, `${from} → ${to}`);
      if (expect) {
        if (!r.ok) t.fail(`${from} → ${to} refused: ${r.error.message}`);
        t.equal(f.store.get('task', 't')?.state, to);
      } else {
        if (r.ok) t.fail(`${from} → ${to} accepted`);
        else t.equal(r.error.code, 'ECONFLICT');
        t.equal(f.store.get('task', 't')?.state, from);
      }
      checked++;
    }
  }
  t.equal(checked, 169);
  const f = new Feed();
  f.run({ op: 'create', kind: 'task', value: task('t', 'running') });
  t.match(
    errOf(f.run({ op: 'update', kind: 'task', value: task('t', 'assigned') }))?.message,
    /^update task t: state cannot go from running to assigned; task states only move forward/,
  );
  t.end();
});

t.test('sessions: a duplicate returns the first result and is not applied again', (t) => {
  const s = new Store();
  const seen: WatchEvent[] = [];
  s.watch(['kv'], (e) => seen.push(e));
  const c1 = encodeCommand({
    client: 'a',
    seq: 1,
    ops: [{ op: 'create', kind: 'kv', value: { id: 'k', value: '1' } }],
  });
  t.same(s.apply(1, c1), { ok: true, versions: [1] });
  t.same(s.apply(2, c1), { ok: true, versions: [1] }, 'first result, not "exists"');
  t.equal(s.get('kv', 'k')?.version, 1);
  t.equal(seen.length, 1);
  // A refused command is remembered too: its retry gets the same refusal.
  const c2 = encodeCommand({
    client: 'a',
    seq: 2,
    ops: [{ op: 'cas', kind: 'kv', id: 'k', prev: 'x', value: '2' }],
  });
  const r2 = s.apply(3, c2);
  t.equal(errOf(r2)?.code, 'ECONFLICT');
  s.apply(
    4,
    encodeCommand({ client: 'b', seq: 1, ops: [{ op: 'put', kind: 'kv', id: 'k', value: 'x' }] }),
  );
  t.same(s.apply(5, c2), r2, 'a retry is not re-evaluated against the new state');
  t.equal(s.get('kv', 'k')?.value, 'x');
  // Sessions are part of the snapshot.
  const r = Store.restore(s.snapshot());
  t.same(r.apply(6, c2), r2, 'after restore: same answer to the retry');
  const old = r.apply(7, c1);
  t.equal(errOf(old)?.code, 'ECONFLICT', 'an older request than the last one cannot be answered');
  t.match(errOf(old)?.message, /^apply command a#1: request 2 of this client was applied already/);
  t.equal(r.get('kv', 'k')?.version, 4, 'neither changed anything');
  t.end();
});

t.test('snapshot: restore gives the same state and the same bytes; same state, same bytes', (t) => {
  const f = new Feed();
  f.run({ op: 'create', kind: 'cluster', value: cluster() });
  f.run(
    {
      op: 'create',
      kind: 'node',
      value: node('n1', { labels: JSON.parse('{"zone":"a","10":"x","9":"y","__proto__":"p"}') }),
    },
    { op: 'create', kind: 'network', value: network('w', 'web') },
  );
  f.run({ op: 'create', kind: 'task', value: task('t1', 'running') });
  f.run({ op: 'put', kind: 'kv', id: 'k', value: 'v' });
  const bytes = f.store.snapshot();
  const r = Store.restore(bytes);
  t.same(r.snapshot(), bytes, 'byte-identical after restore');
  t.equal(r.appliedIndex, f.store.appliedIndex);
  for (const k of ['cluster', 'kv', 'network', 'node', 'service', 'task'] as Kind[]) {
    t.same(r.list(k), f.store.list(k), `${k} objects equal`);
  }
  t.equal(r.findByName('network', 'web')?.id, 'w', 'name index rebuilt');
  t.equal(
    r.get('node', 'n1')?.labels['__proto__' as 'zone'],
    'p',
    'a __proto__ label is a plain key',
  );
  t.equal(
    errOf(r.apply(4, encodeCommand({ client: 'z', seq: 1, ops: [] })))?.code,
    'EUSAGE',
    'applied index restored',
  );

  // Same state reached with ops (and object keys) in another order: same bytes.
  const mk = (order: number): Uint8Array => {
    const s = new Store();
    const a: Op = { op: 'create', kind: 'kv', value: { id: 'a', value: '1' } };
    const b: Op = { op: 'create', kind: 'kv', value: { value: '2', id: 'b' } };
    const n: Op = {
      op: 'create',
      kind: 'node',
      value:
        order === 0
          ? node('n')
          : (Object.fromEntries(Object.entries(node('n')).reverse()) as never),
    };
    s.apply(7, encodeCommand({ client: 'q', seq: 1, ops: order === 0 ? [a, b, n] : [n, b, a] }));
    return s.snapshot();
  };
  t.same(mk(1), mk(0));

  t.throws(() => Store.restore(new TextEncoder().encode('{"format":"x"}')), { code: 'ESNAPSHOT' });
  const broken = JSON.parse(new TextDecoder().decode(bytes));
  broken.objects.network.push({ ...broken.objects.network[0], id: 'w2' });
  t.throws(() => Store.restore(new TextEncoder().encode(JSON.stringify(broken))), {
    code: 'ESNAPSHOT',
    message: /two networks named web/,
  });
  t.throws(() => Store.restore(new Uint8Array([0xff, 0xfe])), { code: 'ESNAPSHOT' });
  t.end();
});

t.test('objects handed out are immutable', (t) => {
  const f = new Feed();
  f.run({ op: 'create', kind: 'network', value: network('w', 'web') });
  const before = objectsOf(f.store);
  const n = f.store.get('network', 'w')!;
  t.throws(() => ((n as { name: string }).name = 'x'), TypeError);
  t.throws(() => ((n.labels as Record<string, string>)['a'] = 'b'), TypeError);
  t.throws(() => (n.subnets as unknown[]).push({}), TypeError);
  t.throws(() => ((n.options as { mtu: number }).mtu = 1), TypeError);
  const l = f.store.list('network');
  l.pop();
  t.equal(f.store.list('network').length, 1, 'list returns a fresh array');
  t.equal(objectsOf(f.store), before);
  t.end();
});

t.test('watch: after each command, in order, filtered by kind; unsubscribe stops it', (t) => {
  const f = new Feed();
  const all: string[] = [];
  const nets: string[] = [];
  let readInside: string | undefined;
  f.store.watch('*', (e) => {
    all.push(`${e.index}:${e.op}:${e.kind}:${e.object.id}`);
    readInside ??= f.store.get('kv', 'last')?.value;
  });
  const stop = f.store.watch(['network'], (e) => {
    nets.push(`${e.op}:${e.object.id}:${e.prev?.version ?? '-'}`);
  });
  f.run(
    { op: 'create', kind: 'network', value: network('w', 'web') },
    { op: 'put', kind: 'kv', id: 'last', value: 'seen' },
  );
  t.equal(readInside, 'seen', 'a watcher reads the state after the whole command');
  f.run({ op: 'update', kind: 'network', value: network('w', 'web', { vni: 4097 }) });
  f.run({ op: 'update', kind: 'network', value: network('nope', 'x') });
  stop();
  f.run({ op: 'delete', kind: 'network', id: 'w' });
  t.same(all, [
    '1:create:network:w',
    '1:create:kv:last',
    '2:update:network:w',
    '4:delete:network:w',
  ]);
  t.same(nets, ['create:w:-', 'update:w:1']);
  // A throwing watcher does not hide the event from others nor undo the command.
  const g = new Feed();
  const got: number[] = [];
  g.store.watch('*', () => {
    throw new Error('watcher bug');
  });
  g.store.watch('*', (e) => got.push(e.index));
  t.throws(() => g.run({ op: 'put', kind: 'kv', id: 'k', value: 'v' }), /watcher bug/);
  t.same(got, [1]);
  t.equal(g.store.get('kv', 'k')?.value, 'v');
  t.end();
});

t.test('validation: bad values are usage errors that name the field', (t) => {
  const f = new Feed();
  const cases: [Op, RegExp][] = [
    [
      { op: 'create', kind: 'node', value: node('n', { availability: 'gone' as never }) },
      /^create node n: availability must be one of active, pause, drain$/,
    ],
    [
      { op: 'create', kind: 'node', value: node('n', { status: { state: 'up' as never } }) },
      /^create node n: status\.state must be one of/,
    ],
    [
      { op: 'create', kind: 'node', value: node('n', { labels: { a: 1 } as never }) },
      /labels\.a must be a string/,
    ],
    [{ op: 'create', kind: 'node', value: node('bad id') }, /^create node "bad id": id must be/],
    [
      { op: 'create', kind: 'network', value: network('w', 'web', { vni: 1 << 24 }) },
      /^create network web: vni must be an integer in \[0, 16777215\]/,
    ],
    [
      {
        op: 'create',
        kind: 'network',
        value: network('w', 'web', { subnets: [{ subnet: '' } as never] }),
      },
      /subnets\[0\]\.subnet must not be empty/,
    ],
    [
      {
        op: 'create',
        kind: 'network',
        value: { ...network('w', 'web'), options: undefined } as never,
      },
      /options is missing/,
    ],
    [
      { op: 'create', kind: 'task', value: task('t', 'later' as never) },
      /^create task t: state must be one of new, pending/,
    ],
    [
      { op: 'create', kind: 'pod', value: {} } as unknown as Op,
      /^create pod: unknown kind; kinds are/,
    ],
    [{ op: 'upsert', kind: 'kv' } as unknown as Op, /unknown op upsert/],
    [
      { op: 'update', kind: 'kv', value: { id: 'k', value: 'v' }, version: 1.5 },
      /version must be an integer/,
    ],
  ];
  for (const [op, re] of cases) {
    const r = f.run(op);
    t.equal(errOf(r)?.code, 'EUSAGE');
    t.match(errOf(r)?.message, re);
  }
  t.equal(f.store.count('node') + f.store.count('network') + f.store.count('task'), 0);
  // unknown fields are kept (newer builds add fields; older replicas must store the same thing)
  t.ok(
    f.run({ op: 'create', kind: 'node', value: { ...node('n'), future: { x: [1] } } as never }).ok,
  );
  t.same((f.store.get('node', 'n') as unknown as { future: unknown }).future, { x: [1] });
  t.end();
});

t.test('entry handling: empty entries, index order, not-a-command', (t) => {
  const s = new Store();
  t.same(s.apply(3, new Uint8Array()), { ok: true, versions: [] }, 'raft no-op entry');
  t.equal(s.appliedIndex, 3);
  t.match(errOf(s.apply(3, new Uint8Array())), { code: 'EUSAGE', message: /already applied/ });
  t.match(errOf(s.apply(0.5, new Uint8Array())), { code: 'EUSAGE' });
  t.match(errOf(s.apply(5, new TextEncoder().encode('hello'))), {
    code: 'EUSAGE',
    message: /^apply entry 5: not a store command/,
  });
  t.equal(s.appliedIndex, 5);
  t.same(s.apply(6, encodeCommand({ client: 'a', seq: 1, ops: [] })), { ok: true, versions: [] });
  // The raft entry's frame is the command's one encoding (entry.ts): a good header with ops
  // that are not JSON is refused, and so is an entry whose ops are not an array.
  t.match(errOf(s.apply(7, encodeEntry('a', 2, new TextEncoder().encode('{nope')))), {
    code: 'EUSAGE',
    message: /^apply entry 7: the ops are not UTF-8 JSON/,
  });
  t.match(errOf(s.apply(8, encodeEntry('a', 3, new TextEncoder().encode('{"op":1}')))), {
    code: 'EUSAGE',
    message: /^apply entry 8: ops must be an array/,
  });
  t.end();
});

// ---- randomized -------------------------------------------------------------------------------

const pick = <T>(r: SeededRandom, xs: readonly T[]): T => xs[r.intn(xs.length)]!;

/** A random command over a small universe of ids and names, so conflicts are common. */
function randomOps(r: SeededRandom, s: Store): Op[] {
  const ops: Op[] = [];
  const n = r.intn(3) !== 0 ? 1 : 2 + r.intn(3);
  for (let i = 0; i < n; i++) {
    const id = `o${r.intn(12)}`;
    const curVersion = (k: Kind): number | undefined => {
      const v = s.get(k, id)?.version;
      return r.intn(4) === 0 ? undefined : r.intn(5) === 0 ? (v ?? 1) - 1 : v;
    };
    switch (r.intn(9)) {
      case 0:
        ops.push({
          op: 'create',
          kind: 'network',
          value: network(id, `net${r.intn(8)}`, {
            vni: 4096 + r.intn(100),
            labels: { k: `${r.intn(3)}` },
          }),
        });
        break;
      case 1:
        ops.push({
          op: 'update',
          kind: 'network',
          value: network(id, `net${r.intn(8)}`, { vni: 4096 + r.intn(100) }),
          ...(r.intn(2) ? { version: curVersion('network') ?? 0 } : {}),
        });
        break;
      case 2:
        ops.push({
          op: 'delete',
          kind: pick(r, ['network', 'task', 'kv', 'node'] as const),
          id,
          ...(r.intn(3) === 0 ? { version: r.intn(50) } : {}),
        });
        break;
      case 3:
        ops.push({
          op: r.intn(2) ? 'create' : 'update',
          kind: 'task',
          value: task(id, pick(r, TASK_STATES)),
        });
        break;
      case 4:
        ops.push({ op: 'put', kind: 'kv', id, value: `${r.intn(5)}` });
        break;
      case 5:
        ops.push({
          op: 'cas',
          kind: 'kv',
          id,
          prev: r.intn(3) === 0 ? null : `${r.intn(5)}`,
          value: `${r.intn(5)}`,
        });
        break;
      case 6:
        ops.push({
          op: r.intn(2) ? 'create' : 'update',
          kind: 'node',
          value: node(id, { availability: pick(r, ['active', 'pause', 'drain'] as const) }),
        });
        break;
      case 7:
        ops.push({
          op: r.intn(2) ? 'create' : 'update',
          kind: 'service',
          value: { id, name: `svc${r.intn(6)}`, spec: { replicas: r.intn(3) } },
        });
        break;
      default:
        ops.push({
          op: 'update',
          kind: 'kv',
          value: { id, value: 'u' },
          version: curVersion('kv') ?? 0,
        });
    }
  }
  return ops;
}

/** Problems found in the store's invariants (empty when sound). */
function invariantProblems(s: Store): string[] {
  const out: string[] = [];
  for (const k of ['network', 'service'] as const) {
    const objs = s.list(k);
    const names = new Set(objs.map((o) => o.name));
    if (names.size !== objs.length) out.push(`${k} names not unique`);
    for (const o of objs) {
      if (s.findByName(k, o.name)?.id !== o.id) out.push(`${k} name index broken for ${o.id}`);
    }
  }
  for (const k of ['cluster', 'kv', 'network', 'node', 'service', 'task'] as Kind[]) {
    for (const o of s.list(k)) {
      if (!(o.createdIndex <= o.version && o.version <= s.appliedIndex) || !Object.isFrozen(o)) {
        out.push(`${k} ${o.id} meta`);
      }
    }
  }
  return out;
}

t.test(
  '10,000 random commands: a store restored mid-way ends byte-identical; failed commands change nothing',
  (t) => {
    const r = new SeededRandom(20261122);
    const a = new Store();
    const sent: Uint8Array[] = [];
    let b: Store | null = null;
    const bResults: ApplyResult[] = [];
    const aResults: ApplyResult[] = [];
    let index = 0;
    let failedUnchanged = 0;
    const seqs = new Map<string, number>();
    const problems: string[] = [];
    const stats = { ok: 0, ECONFLICT: 0, ENOTFOUND: 0, EUSAGE: 0, dup: 0 };
    for (let i = 0; i < 10_000; i++) {
      index += 1 + (r.intn(10) === 0 ? r.intn(3) : 0);
      let data: Uint8Array;
      const roll = r.intn(100);
      if (roll < 4 && sent.length > 0) {
        data = sent[sent.length - 1 - r.intn(Math.min(3, sent.length))]!;
        stats.dup++;
      } else if (roll < 6) {
        data = new TextEncoder().encode(
          pick(r, ['', '{', '[]', '{"client":"x","seq":0,"ops":[]}', 'null']),
        );
      } else {
        const client = `c${r.intn(5)}`;
        const seq = (seqs.get(client) ?? 0) + 1;
        seqs.set(client, seq);
        data = encodeCommand({ client, seq, ops: randomOps(r, a) });
      }
      sent.push(data);
      const before = refsOf(a);
      const res = a.apply(index, data);
      if (res.ok) stats.ok++;
      else {
        stats[res.error.code]++;
        if (!sameRefs(refsOf(a), before)) t.fail(`command at ${index} failed but changed objects`);
        else failedUnchanged++;
      }
      if (i >= 5_000) {
        aResults.push(res);
        bResults.push(b!.apply(index, data));
      }
      if (i === 4_999) b = Store.restore(a.snapshot());
      if (i % 500 === 0) problems.push(...invariantProblems(a));
    }
    problems.push(...invariantProblems(a));
    t.same(problems, [], 'invariants hold throughout');
    t.same(bResults, aResults, 'same results on both replicas');
    t.same(Buffer.from(b!.snapshot()), Buffer.from(a.snapshot()), 'identical snapshots');
    t.same(Buffer.from(Store.restore(a.snapshot()).snapshot()), Buffer.from(a.snapshot()));
    t.ok(
      stats.ok > 2000 && stats.ECONFLICT > 500 && stats.ENOTFOUND > 500 && stats.EUSAGE > 100,
      JSON.stringify(stats),
    );
    t.ok(
      a.count('network') > 0 && a.count('task') > 0 && a.count('kv') > 0,
      'the state is not trivially empty',
    );
    t.ok(failedUnchanged > 1000);
    t.end();
  },
);

/** Random JSON built from the words the store looks for, to reach deep into its checks. */
function randomJson(r: SeededRandom, depth: number): unknown {
  const words = [
    'op',
    'kind',
    'value',
    'id',
    'version',
    'prev',
    'client',
    'seq',
    'ops',
    'name',
    'state',
    'labels',
    'status',
    '__proto__',
    'constructor',
    'toString',
    'create',
    'update',
    'delete',
    'cas',
    'put',
    'kv',
    'node',
    'network',
    'task',
    'cluster',
    'default',
  ];
  switch (depth <= 0 ? r.intn(5) : r.intn(8)) {
    case 0:
      return null;
    case 1:
      return pick(r, [true, false, 0, -1, 1.5, 1e308, -0, Number.MAX_SAFE_INTEGER + 2]);
    case 2:
    case 3:
      return pick(r, words);
    case 4:
      return 'x'.repeat(r.intn(3) * 3000);
    case 5:
      return Array.from({ length: r.intn(4) }, () => randomJson(r, depth - 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = r.intn(6); i > 0; i--)
        Object.defineProperty(o, pick(r, words), {
          value: randomJson(r, depth - 1),
          enumerable: true,
          configurable: true,
          writable: true,
        });
      return o;
    }
  }
}

t.test('garbage never throws and changes no object', (t) => {
  const r = new SeededRandom(7);
  const base = new Feed();
  base.run(
    { op: 'create', kind: 'cluster', value: cluster() },
    { op: 'create', kind: 'network', value: network('w', 'web') },
    { op: 'create', kind: 'task', value: task('t', 'running') },
    { op: 'put', kind: 'kv', id: 'k', value: 'v' },
  );
  const s = base.store;
  const valid = encodeCommand({ client: 'g', seq: 1, ops: randomOps(r, s) });
  const enc = new TextEncoder();
  const inputs: Uint8Array[] = [
    new Uint8Array([0xc3, 0x28]),
    enc.encode('['.repeat(200_000) + ']'.repeat(200_000)),
    enc.encode('{"a":'.repeat(5000) + '1' + '}'.repeat(5000)),
    // deep values inside an otherwise valid op: JSON.parse accepts them, a recursive walk would not
    enc.encode(
      `{"client":"g","seq":7,"ops":[{"op":"create","kind":"service","value":{"id":"s","name":"s","spec":${'['.repeat(200_000)}${']'.repeat(200_000)}}}]}`,
    ),
    enc.encode(
      `{"client":"g","seq":8,"ops":[{"op":"put","kind":"kv","id":"k","value":"v","x":${'{"a":'.repeat(100_000)}1${'}'.repeat(100_000)}}]}`,
    ),
    enc.encode(
      '{"client":"g","seq":2,"ops":[{"op":"create","kind":"node","value":{"__proto__":{"x":1}}}]}',
    ),
    enc.encode('{"client":"g","seq":3,"ops":[{"op":"create","kind":"__proto__","value":{}}]}'),
    enc.encode(
      '{"client":"g","seq":4,"ops":[{"op":"update","kind":"kv","value":{"id":"k","value":"v2"},"version":"1"}]}',
    ),
    enc.encode('{"client":"g","seq":5,"ops":[{"op":"delete","kind":"kv","id":{"toString":1}}]}'),
    enc.encode('{"client":"g","seq":1e400,"ops":[]}'),
    enc.encode(
      '{"client":"g","seq":6,"ops":{"length":1,"0":{"op":"put","kind":"kv","id":"k","value":"x"}}}',
    ),
  ];
  for (let i = 0; i < 3000; i++) {
    const m = r.intn(4);
    if (m === 0) inputs.push(Uint8Array.from({ length: r.intn(40) }, () => r.intn(256)));
    else if (m === 1) {
      const b = Uint8Array.from(valid);
      for (let j = 1 + r.intn(3); j > 0; j--)
        b[r.intn(b.length)] = pick(r, [
          0x22,
          0x7b,
          0x7d,
          0x5b,
          0x2c,
          0x3a,
          0x30,
          0x6e,
          r.intn(256),
        ]);
      inputs.push(r.intn(4) === 0 ? b.subarray(0, r.intn(b.length)) : b);
    } else if (m === 2) {
      inputs.push(enc.encode(JSON.stringify(randomJson(r, 5)) ?? 'null'));
    } else {
      const ops = Array.from({ length: 1 + r.intn(3) }, () => ({
        op: pick(r, ['create', 'update', 'delete', 'cas', 'put']),
        kind: pick(r, ['kv', 'node', 'network', 'task', 'cluster', 'service']),
        value: randomJson(r, 4),
        id: randomJson(r, 1),
        version: randomJson(r, 0),
        prev: randomJson(r, 0),
      }));
      inputs.push(enc.encode(JSON.stringify({ client: 'g', seq: 100 + i, ops })));
    }
  }
  let index = base.index;
  let changedOnFailure = 0;
  let threw = 0;
  let accepted = 0;
  for (const data of inputs) {
    try {
      const before = refsOf(s);
      const res = s.apply(++index, data);
      if (!res.ok && !sameRefs(refsOf(s), before)) changedOnFailure++;
      if (res.ok) {
        accepted++;
        continue;
      }
      if (
        typeof res.error.message !== 'string' ||
        !['EUSAGE', 'ECONFLICT', 'ENOTFOUND'].includes(res.error.code)
      )
        t.fail('bad error shape');
    } catch (e) {
      threw++;
      if (threw < 3)
        t.fail(`threw on ${new TextDecoder().decode(data).slice(0, 200)}: ${String(e)}`);
    }
  }
  t.equal(threw, 0, 'no input threw');
  t.equal(({} as Record<string, unknown>)['x'], undefined, 'Object.prototype untouched');
  t.equal(changedOnFailure, 0, 'no refused input changed an object');
  t.ok(accepted < inputs.length / 10, `${accepted} random inputs happened to be valid commands`);
  t.same(invariantProblems(s), []);
  t.same(
    Buffer.from(Store.restore(s.snapshot()).snapshot()),
    Buffer.from(s.snapshot()),
    'still snapshots and restores',
  );
  t.end();
});

t.test('load: a snapshot installed in place; watchers see the difference as events', (t) => {
  const r = new SeededRandom(99);
  const ahead = new Store();
  const behind = new Store();
  // What a watcher (allocator, scheduler…) would keep: every object, from events alone.
  const mirror = new Map<string, unknown>();
  let events = 0;
  behind.watch('*', (e) => {
    events++;
    const key = `${e.kind}/${e.object.id}`;
    if (e.op === 'delete') {
      if (!mirror.delete(key)) t.fail(`delete of unknown ${key}`);
    } else {
      if (e.op === 'create' && mirror.has(key)) t.fail(`create of known ${key}`);
      if (e.op === 'update' && mirror.get(key) !== e.prev)
        t.fail(`update of ${key}: prev mismatch`);
      mirror.set(key, e.object);
    }
  });
  const mirrorMatches = (s: Store): boolean => {
    const objs = KIND_LIST.flatMap((k) => s.list(k).map((o) => [`${k}/${o.id}`, o] as const));
    return objs.length === mirror.size && objs.every(([k, o]) => mirror.get(k) === o);
  };
  for (let i = 1; i <= 2000; i++) {
    const data = encodeCommand({ client: 'c', seq: i, ops: randomOps(r, ahead) });
    ahead.apply(i, data);
    if (i <= 600) behind.apply(i, data);
  }
  t.ok(mirrorMatches(behind), 'mirror follows applies');
  const eventsBefore = events;
  const snap = ahead.snapshot();
  t.throws(() => behind.load(snap.subarray(0, snap.length - 1)), { code: 'ESNAPSHOT' });
  t.equal(behind.appliedIndex, 600, 'bad bytes change nothing');
  behind.load(snap);
  t.ok(events > eventsBefore, `${events - eventsBefore} events for the jump`);
  t.same(Buffer.from(behind.snapshot()), Buffer.from(snap), 'same state as the leader');
  t.ok(mirrorMatches(behind), 'mirror follows the snapshot install');
  const next = encodeCommand({ client: 'c', seq: 2001, ops: randomOps(r, ahead) });
  t.same(behind.apply(2001, next), ahead.apply(2001, next), 'and applying goes on from there');
  t.ok(mirrorMatches(behind));
  t.end();
});
