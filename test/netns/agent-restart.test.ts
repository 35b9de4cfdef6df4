// kill -9 of meshd on a node with running tasks, and its restart with the same data dir (what
// systemd's Restart=on-failure does): the kernel state outlives the process, so requests to and
// through that node keep being answered while it is down, and the new meshd adopts its tasks and
// kernel objects as they are: same task processes, same namespaces and devices, no neighbour or
// FDB entry twice, the same load-balancer rules, `service ps` unchanged, no request lost.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { until } from '../lib/meshd.js';
import {
  ECHO_SERVER,
  clientLoop,
  cluster,
  converged,
  duplicates,
  kernelState,
  tally,
} from '../lib/published.js';
import { netnsList } from '../../src/netlink/index.js';

if (process.getuid?.() !== 0) {
  t.plan(0, 'netns tests need root (they create network namespaces)');
  process.exit(0);
}

t.test('kill -9 and restart of meshd keeps the data path and adopts its tasks', async (t) => {
  // A node is found down after 2.5 heartbeat periods of silence, and its tasks are replaced: a
  // restart slower than that is a node failure (services.test.ts kills one). With 20 s the
  // restart has 50 s, margin for a meshd start on a loaded CI machine (seen: 14 s).
  const c = await cluster(t, '20s');
  const { mh, hosts } = c;
  const [h1, h2, h3] = hosts;
  mh.ok(h1, 'service', 'create', '--name', 'web', '--replicas', '3', '--network', 'app', '-p', '8080:80', '--', ...ECHO_SERVER); // prettier-ignore
  const rows = await until(
    '3 running tasks',
    () => c.running('web').length === 3 && c.running('web'),
    60_000,
  );
  t.same(new Set(rows.map((r) => r.node)), new Set(['h1', 'h2', 'h3']), 'one task per node');
  await converged(hosts, (s) => s.size === 3, 'reaching all 3 tasks');

  const prefix = mh.prefix(h2);
  const taskPids = () => {
    const m = new Map<string, string>();
    for (const ns of netnsList().filter((n) => n.startsWith(`${prefix}mesh-t-`)))
      m.set(ns, spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout.trim());
    return m;
  };
  const pidsBefore = taskPids();
  t.equal(pidsBefore.size, 1, 'h2 runs one task namespace');
  t.ok(
    [...pidsBefore.values()].every((p) => /^\d+/.test(p)),
    'with a process in it',
  );
  const before = hosts.map((h) => kernelState(h, mh.prefix(h)));
  t.same(duplicates(before[1]!), [], 'no neighbour or FDB entry twice on h2 before the kill');
  const psBefore = rows.map((r) => `${r.id} ${r.node} ${r.state}`).sort();

  // 150 rounds, each 3 requests (one per node) then 200 ms: ~45 s at least, spanning the kill,
  // the time meshd is down, its restart and its adoption.
  const addrs = hosts.map((h) => h.addr);
  const loops = hosts.map((h) => clientLoop(h, addrs, 150, 200));
  await new Promise((r) => setTimeout(r, 5_000));
  const killedAt = Date.now();
  const p2 = mh.procs.get(h2.index)!;
  p2.kill('SIGKILL');
  await until('meshd on h2 gone', () => p2.exitCode !== null || p2.signalCode !== null);
  // Down for 3 s (systemd's RestartSec is 100 ms; the longer gap shows the kernel carries on).
  await new Promise((r) => setTimeout(r, 3_000));
  t.same(taskPids(), pidsBefore, 'the task process outlives meshd');
  mh.start(h2, c.extra);
  await until('meshd on h2 answering again', () => mh.ready([h2]), 60_000);
  const backAt = Date.now();
  t.comment(`meshd on h2 back ${backAt - killedAt} ms after the kill`);
  // Adopted, reported running again (the worker's readopt) and the load balancer applied.
  await until(
    'h2 worker reconciled after the restart',
    () => {
      const st = JSON.parse(mh.ok(h2, 'debug', 'overlay', '--json')) as {
        worker?: { lbApplied?: number | null; version?: number | null };
      };
      return st.worker?.lbApplied != null && st.worker.lbApplied === st.worker.version;
    },
    30_000,
  );

  const results = await Promise.all(loops);
  t.ok(
    results.every((r) => r.endedAt - backAt > 2_000),
    'the client loops ran past the restart and the adoption (a loop too short shows nothing)',
  );
  const { sent, answered } = tally(t, results, hosts, killedAt, 'the kill');
  t.equal(sent, 3 * 3 * 150, 'every request of the loops was sent');
  t.equal(answered, sent, `every request answered over the kill and restart (${answered}/${sent})`);

  t.same(taskPids(), pidsBefore, 'the same task process runs in the same namespace');
  const psAfter = c
    .running('web')
    .map((r) => `${r.id} ${r.node} ${r.state}`)
    .sort();
  t.same(psAfter, psBefore, '`service ps` shows the same 3 tasks running');

  // Kernel objects adopted, not recreated, dropped or doubled, on every host.
  for (const [i, h] of hosts.entries()) {
    const now = kernelState(h, mh.prefix(h));
    const was = before[i]!;
    t.same(duplicates(now), [], `no neighbour or FDB entry twice on h${h.index}`);
    t.same(
      now.filter((l) => !was.includes(l)),
      [],
      `nothing new in the kernel on h${h.index} (no namespace, device, entry or rule recreated)`,
    );
    t.same(
      was.filter((l) => !now.includes(l)),
      [],
      `nothing gone from the kernel on h${h.index}`,
    );
  }
  for (const h of [h1, h2, h3]) for (const w of mh.warnings(h)) t.comment(`h${h.index} log: ${w}`);
});
