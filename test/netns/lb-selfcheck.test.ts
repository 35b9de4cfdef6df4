// The load balancer's self-check on the real kernel (issue 13): delete by hand, in h1's ingress
// overlay namespace, the ARP and FDB entries of a task on another node — the black hole seen in
// the demo, where meshd's own view stayed correct. h1's meshd must find it itself: `lb show`
// marks the backend `unreachable` and it leaves rotation, so every request through h1's published
// port is answered by the remaining tasks; once the agent's reconcile restores the entries the
// backend is back. Without the self-check a third of the requests through h1 are lost.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { until } from '../lib/meshd.js';
import { ECHO_SERVER, clientLoop, cluster, converged } from '../lib/published.js';
import type { LbShow } from '../../src/api/lb.js';
import { netnsList } from '../../src/netlink/index.js';

if (process.getuid?.() !== 0) {
  t.plan(0, 'netns tests need root (they create network namespaces)');
  process.exit(0);
}

t.test('a backend whose overlay entries are gone leaves rotation, and returns', async (t) => {
  const c = await cluster(t, '2s');
  const { mh, hosts } = c;
  const [h1, , h3] = hosts;
  mh.ok(h1, 'service', 'create', '--name', 'web', '--replicas', '3', '--network', 'app', '-p', '8080:80', '--', ...ECHO_SERVER); // prettier-ignore
  await until('3 running', () => c.running('web').length === 3, 60_000);
  await converged(hosts, (s) => s.size === 3, 'reaching all 3 tasks');

  const show = () => JSON.parse(mh.ok(h1, 'lb', 'show', '--json')) as LbShow;
  const ingress = () => show().entries.find((e) => e.kind === 'ingress' && e.port === 8080);
  const victim = ingress()?.backends.find((b) => b.node !== show().node);
  t.ok(victim, `h1's published port has a backend on another node (${victim?.task})`);
  const ip = victim!.address;
  // h1's overlay namespace holding the static entries for it.
  const sh = (ns: string, ...cmd: string[]) =>
    spawnSync('ip', ['netns', 'exec', ns, ...cmd], { encoding: 'utf8' });
  const ns = netnsList()
    .filter((n) => n.startsWith(`${mh.prefix(h1)}mesh-ov-`))
    .find((n) => sh(n, 'ip', 'neigh', 'show', 'nud', 'permanent').stdout.includes(`${ip} `));
  t.ok(ns, `h1 has a permanent ARP entry for ${ip} in ${ns}`);
  const line = sh(ns!, 'ip', 'neigh', 'show', ip, 'nud', 'permanent').stdout.trim();
  const [, dev, mac] = /dev (\S+) lladdr (\S+)/.exec(line) ?? [];
  t.ok(dev && mac, `its device and MAC (${line})`);
  const fdb = sh(ns!, 'bridge', 'fdb', 'show', 'dev', dev!)
    .stdout.split('\n')
    .find((l) => l.startsWith(`${mac} `) && / dst /.test(l));
  const dst = / dst (\S+)/.exec(fdb ?? '')?.[1];
  t.ok(dst, `and its FDB entry towards the VTEP (${fdb})`);

  // Break the data path to it on h1 only.
  const brokenAt = Date.now();
  t.equal(sh(ns!, 'ip', 'neigh', 'del', ip, 'dev', dev!).status, 0, 'ARP entry deleted');
  t.equal(
    sh(ns!, 'bridge', 'fdb', 'del', mac!, 'dev', dev!, 'dst', dst!, 'self').status,
    0,
    'FDB entry deleted',
  );
  const marked = await until(
    `h1's lb show marking ${ip} unreachable`,
    () => ingress()?.backends.find((b) => b.address === ip && b.unreachableSince !== undefined),
    30_000,
  );
  t.comment(`detected ${Date.now() - brokenAt} ms after the entries were deleted`);
  t.equal(marked.weight, 0, 'out of rotation (weight 0)');
  t.match(mh.ok(h1, 'lb', 'show'), /unreachable since/, '`lb show` says so');
  const dbg = JSON.parse(mh.ok(h1, 'debug', 'overlay', '--json')) as {
    lbSelfCheck?: { unreachable: number; current: number };
  };
  t.ok((dbg.lbSelfCheck?.unreachable ?? 0) >= 1, '`debug overlay` counts it');

  // Every request through h1 (from h1 and from h3) answered, none by the unreachable task.
  const loops = [h1, h3].map((h) => clientLoop(h, [h1.addr], 60, 50, 60_000));
  const results = await Promise.all(loops);
  let sent = 0;
  let answered = 0;
  for (const [i, r] of results.entries()) {
    const s = r.sent.get(h1.addr) ?? 0;
    const n = r.answered.get(h1.addr) ?? 0;
    sent += s;
    answered += n;
    t.comment(
      `h${i === 0 ? 1 : 3} -> ${h1.addr}:8080: ${n}/${s} answered; lost: ${r.lost.slice(0, 3).join(', ')}`,
    );
  }
  t.equal(sent, 120, 'every request sent');
  t.equal(answered, sent, `every request through h1 answered (${answered}/${sent})`);
  t.same(
    results.flatMap((r) => [...r.answers.keys()]).filter((a) => a.includes(victim!.task ?? '?')),
    [],
    'none by the unreachable task',
  );

  // The agent's reconcile (30 s) restores the entries; the backend returns.
  await until(
    `${ip} back in rotation on h1`,
    () =>
      ingress()?.backends.find(
        (b) => b.address === ip && b.unreachableSince === undefined && b.weight > 0,
      ),
    75_000,
  );
  t.comment(`back ${Date.now() - brokenAt} ms after the deletion`);
  await until(
    `the task on the other node answering through h1 again`,
    () => {
      for (let i = 0; i < 9; i++) {
        const r = h1.exec('curl', ['-s', '-m', '2', `http://${h1.addr}:8080/`]);
        if (r.stdout.includes(victim!.task ?? '?')) return true;
      }
      return false;
    },
    30_000,
  );
  const after = JSON.parse(mh.ok(h1, 'debug', 'overlay', '--json')) as {
    lbSelfCheck?: { restored: number; current: number };
  };
  t.ok((after.lbSelfCheck?.restored ?? 0) >= 1, 'the restoration is counted');
  t.equal(after.lbSelfCheck?.current, 0, 'nothing out of rotation any more');
});
