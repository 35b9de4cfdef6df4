// The manager tier between real meshd processes on namespaced hosts: cluster init and join
// with tokens (managers and workers), tokens pinned to the CA and rotated, worker refusals,
// promote/demote, kill -9 of the leader with the survivors still committing and the killed
// manager catching up on restart, leave + node rm, and quorum-loss recovery with
// --force-new-cluster keeping the committed state.
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MeshHosts, until } from '../lib/meshd.js';
import { testnet, type TestHost } from '../lib/testnet.js';
import { requireRoot } from '../lib/require.js';

requireRoot('netns tests');

interface NodeRow {
  id: string;
  hostname: string;
  role: string;
  status: { state: string; message?: string };
  managerStatus?: string;
}

t.test('cluster init, join, promote, demote, failover, leave, force-new-cluster', async (t) => {
  const net = testnet(t, { hosts: 3 });
  const dir = mkdtempSync(join(tmpdir(), 'meshd-cluster-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const mh = new MeshHosts(dir);
  t.teardown(() => mh.killAll());
  const procs = mh.procs;
  const sock = (h: TestHost) => mh.sock(h);
  const start = (h: TestHost, extra: string[] = []) => mh.start(h, extra);
  const ctl = (h: TestHost, ...args: string[]) => mh.ctl(h, ...args);
  const ok = (h: TestHost, ...args: string[]) => mh.ok(h, ...args);
  const nodes = (h: TestHost): NodeRow[] | undefined => {
    const r = ctl(h, 'node', 'ls', '--json');
    return r.status === 0 ? (JSON.parse(r.stdout) as NodeRow[]) : undefined;
  };
  const kvPut = (h: TestHost, key: string, value: string) =>
    h.exec('curl', [
      '-s',
      '--unix-socket',
      sock(h),
      '-XPOST',
      '-d',
      JSON.stringify({ key, value }),
      'http://meshd/v1/debug/kv',
    ]);
  const kvGet = (h: TestHost, key: string) =>
    h.exec('curl', ['-s', '--unix-socket', sock(h), `http://meshd/v1/debug/kv?key=${key}`]);

  const [h1, h2, h3] = net.hosts as [TestHost, TestHost, TestHost];
  for (const h of net.hosts) start(h);
  await until('three API sockets', () => net.hosts.every((h) => ctl(h, 'version').status === 0));

  // --- init and tokens ---
  t.match(
    ok(h1, 'cluster', 'init'),
    /initialized; this node \(\w+\) is its manager at 198\.18\.0\.1:2377/,
  );
  const mgrToken = ok(h1, 'cluster', 'join-token', 'manager', '-q').trim();
  const wrkToken = ok(h1, 'cluster', 'join-token', 'worker', '-q').trim();
  t.match(mgrToken, /^MESHTKN-1-[0-9a-z]{50}-[0-9a-z]{25}$/);
  t.not(mgrToken, wrkToken, 'manager and worker tokens differ');

  const usage = ctl(h2, 'cluster', 'join', h1.addr);
  t.equal(usage.status, 2, 'join without --token is a usage error (exit 2)');
  const badSecret = wrkToken.slice(0, -1) + (wrkToken.endsWith('a') ? 'b' : 'a');
  const bad = ctl(h2, 'cluster', 'join', '--token', badSecret, h1.addr);
  t.equal(bad.status, 1);
  t.match(bad.stderr, /token is not valid.*join-token/, 'a wrong secret is refused, saying why');
  const otherCa = wrkToken.replace(
    /^(MESHTKN-1-)./,
    (_m, p: string) => `${p}${wrkToken[10] === '0' ? '1' : '0'}`,
  );
  const pin = ctl(h2, 'cluster', 'join', '--token', otherCa, h1.addr);
  t.match(
    pin.stderr,
    /CA does not match the token/,
    'a token for another CA is refused by the joiner',
  );

  // --- join a manager and a worker ---
  t.match(
    ok(h2, 'cluster', 'join', '--token', mgrToken, `${h1.addr}:2377`),
    /joined cluster \w+ as a manager/,
  );
  t.match(ok(h3, 'cluster', 'join', '--token', wrkToken, h1.addr), /as a worker/);
  const ls = await until('3 nodes in node ls', () => {
    const n = nodes(h2);
    return n && n.length === 3 && n.every((x) => x.status.state === 'ready') ? n : undefined;
  });
  t.same(
    ls.map((n) => [n.hostname, n.role, n.managerStatus ?? '']).sort(),
    [
      ['h1', 'manager', 'leader'],
      ['h2', 'manager', 'reachable'],
      ['h3', 'worker', ''],
    ],
    'node ls on a follower manager lists everyone with roles and manager status',
  );
  await until("gossip to form from the managers' seeds (no --join flags)", () =>
    net.hosts.every((h) => {
      const r = ctl(h, 'debug', 'gossip', '--json');
      if (r.status !== 0) return false;
      const g = JSON.parse(r.stdout) as { members: { state: string }[] };
      return g.members.filter((m) => m.state === 'alive').length === 3;
    }),
  );
  t.pass('every node gossips with every other, seeded by the managers');
  const table = ok(h1, 'node', 'ls');
  t.match(table, /^ID +HOSTNAME +STATUS +AVAILABILITY +MANAGER STATUS +ADDRESS\n/);
  const onWorker = ctl(h3, 'node', 'ls');
  t.equal(onWorker.status, 1);
  t.match(onWorker.stderr, /this node is a worker; run it on a manager \(198\.18\.0\.\d:2377/);
  t.equal(ctl(h3, 'cluster', 'init').status, 1, 'init on a member is refused');

  // --- token rotation ---
  const rotated = ok(h1, 'cluster', 'join-token', 'worker', '--rotate', '-q').trim();
  t.not(rotated, wrkToken);
  t.equal(ok(h2, 'cluster', 'join-token', 'worker', '-q').trim(), rotated, 'every manager sees it');

  // --- node update, promote ---
  ok(h1, 'node', 'update', '--availability', 'drain', '--label-add', 'zone=b', 'h3');
  const h3row = JSON.parse(ok(h2, 'node', 'inspect', 'h3', '--json')) as {
    availability: string;
    labels: Record<string, string>;
  };
  t.same([h3row.availability, h3row.labels], ['drain', { zone: 'b' }], 'node update is replicated');
  ok(h1, 'node', 'promote', 'h3');
  await until('h3 to be a reachable manager', () =>
    nodes(h1)?.find((n) => n.hostname === 'h3' && n.managerStatus === 'reachable'),
  );
  t.pass('a promoted worker becomes a voting manager');
  t.match(kvPut(h3, 'k', 'v1').stdout, /"ok":true/, 'writes through the new manager commit');

  // --- kill -9 the leader: the survivors elect and commit; it catches up on restart ---
  procs.get(1)!.kill('SIGKILL');
  const t0 = Date.now();
  await until('a write to commit after the leader is killed', () =>
    kvPut(h2, 'k', 'v2').stdout.includes('"ok":true'),
  );
  t.pass(`survivors commit again ${Date.now() - t0} ms after kill -9 of the leader`);
  start(h1);
  await until('the restarted manager to catch up', () => kvGet(h1, 'k').stdout.includes('"v2"'));
  t.pass('the killed manager restarts from its log and catches up');

  // --- demote, leave, rm ---
  ok(h2, 'node', 'demote', 'h1');
  await until('h1 to be a worker', () =>
    JSON.parse(ctl(h1, 'cluster', 'info', '--json').stdout || '{}').role === 'worker'
      ? true
      : undefined,
  );
  t.pass('a demoted manager continues as a worker');
  t.match(ok(h1, 'cluster', 'leave'), /left cluster/);
  await until('h1 down after leaving', () =>
    nodes(h2)?.find((n) => n.hostname === 'h1' && n.status.state === 'down'),
  );
  ok(h2, 'node', 'rm', 'h1');
  t.same(
    nodes(h2)
      ?.map((n) => n.hostname)
      .sort(),
    ['h2', 'h3'],
    'node rm removes a node that left',
  );
  const mgrLeave = ctl(h2, 'cluster', 'leave');
  t.match(mgrLeave.stderr, /is a manager.*demote it first/, 'a manager may not just leave');

  // --- quorum loss and --force-new-cluster ---
  t.match(kvPut(h2, 'keep', 'me').stdout, /"ok":true/);
  procs.get(3)!.kill('SIGKILL');
  const lost = await until('a quorum-loss error', () => {
    const r = kvPut(h2, 'x', 'y').stdout;
    return r.includes('ENOQUORUM') ? r : undefined;
  });
  t.match(lost, /no leader.*force-new-cluster/, 'lost quorum is reported as such, with the fix');
  procs.get(2)!.kill('SIGTERM');
  await until('h2 to stop', () => procs.get(2)!.exitCode !== null);
  start(h2, ['--force-new-cluster']);
  await until('writes after --force-new-cluster', () =>
    kvPut(h2, 'after', 'recovery').stdout.includes('"ok":true'),
  );
  t.match(kvGet(h2, 'keep').stdout, /"me"/, 'committed state survives the forced new cluster');
  t.match(kvGet(h2, 'k').stdout, /"v2"/);
});
