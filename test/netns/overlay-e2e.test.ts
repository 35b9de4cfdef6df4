// Overlay networks end to end between real meshd processes on namespaced hosts: a cluster
// (one manager, workers), `net create --attachable`, tasks on every host reaching each other
// over VXLAN; a host added later joins and is reachable; a removed task disappears from every
// peer's FDB/ARP; kill -9 of an agent leaves traffic flowing and the restarted agent adopts its
// state with no duplicates; stale state from a crashed run is removed; `net rm` is refused while
// in use and afterwards leaves no kernel object behind.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { netnsCreate, netnsList } from '../../src/netlink/index.js';
import { MeshHosts, until } from '../lib/meshd.js';
import { testnet, type TestHost } from '../lib/testnet.js';
import { requireRoot } from '../lib/require.js';

requireRoot('netns tests');

interface TaskView {
  id: string;
  name: string;
  state: string;
  netns: string;
  networks: { network: string; address: string }[];
}

t.test('overlay networks between namespaced hosts', async (t) => {
  const net = testnet(t, { hosts: 3 });
  const dir = mkdtempSync(join(tmpdir(), 'meshd-overlay-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const mh = new MeshHosts(dir);
  t.teardown(() => mh.killAll());
  const procs = mh.procs;
  const prefix = (h: TestHost) => mh.prefix(h);
  const start = (h: TestHost) => mh.start(h);
  const ctl = (h: TestHost, ...args: string[]) => mh.ctl(h, ...args);
  const ok = (h: TestHost, ...args: string[]) => mh.ok(h, ...args);
  const ps = (h: TestHost) => JSON.parse(ok(h, 'ps', '--json')) as TaskView[];
  const ping = (h: TestHost, task: TaskView, ip: string) =>
    spawnSync('ip', ['netns', 'exec', task.netns, 'ping', '-c1', '-W1', ip], { encoding: 'utf8' })
      .status === 0;
  const addrOf = (task: TaskView) => task.networks[0]!.address.split('/')[0]!;
  /** Neighbour and FDB entries on the network's vxlan device in a host's overlay namespace. */
  const kernelPeers = (h: TestHost, vni: number) => {
    const ns = `${prefix(h)}mesh-ov-${vni}`;
    const neigh = JSON.parse(
      spawnSync('ip', ['-n', ns, '-j', 'neigh', 'show', 'dev', `vx-${vni}`], { encoding: 'utf8' })
        .stdout || '[]',
    ) as { dst: string }[];
    const fdb = JSON.parse(
      spawnSync('bridge', ['-n', ns, '-j', 'fdb', 'show', 'dev', `vx-${vni}`], {
        encoding: 'utf8',
      }).stdout || '[]',
    ) as { mac: string; dst?: string }[];
    return { ips: neigh.map((n) => n.dst).sort(), fdb: fdb.filter((f) => f.dst) };
  };
  const ourNamespaces = (h: TestHost) =>
    netnsList().filter((n) => n.startsWith(prefix(h)) && n !== h.name);

  const [h1, h2, h3] = net.hosts as [TestHost, TestHost, TestHost];
  // A crashed earlier run left an overlay namespace behind on h2: it must go when the agent starts.
  netnsCreate(`${prefix(h2)}mesh-ov-9999`).close();
  for (const h of net.hosts) start(h);
  await until('API sockets', () => mh.ready(net.hosts));
  ok(h1, 'cluster', 'init');
  const token = ok(h1, 'cluster', 'join-token', 'worker', '-q').trim();
  ok(h2, 'cluster', 'join', '--token', token, h1.addr);
  ok(h3, 'cluster', 'join', '--token', token, h1.addr);
  // Fail closed: a network asked to be encrypted is refused (exit 2, saying why), never made.
  const enc = ctl(h1, 'net', 'create', '--opt', 'encrypted', 'secure');
  t.ok(
    enc.status === 2 && /--opt encrypted is not available yet/.test(enc.stderr),
    `net create --opt encrypted refused with exit 2 (${enc.status}: ${enc.stderr.trim()})`,
  );
  t.not(ctl(h1, 'net', 'inspect', 'secure').status, 0, 'no network "secure" was created');
  ok(h1, 'net', 'create', '--attachable', 'web');
  const vni = (JSON.parse(ok(h1, 'net', 'inspect', 'web', '--json')) as { vni: number }).vni;
  t.equal(vni, 4097, 'VNIs count from 4096 (the ingress network has it)');

  for (const h of net.hosts)
    ok(h, 'run', '-d', '--name', `t${h.index}`, '--network', 'web', '--', 'sleep', '300');
  const tasks = new Map(net.hosts.map((h) => [h.index, ps(h)[0]!] as const));
  t.same(
    [...tasks.values()].map(addrOf).sort(),
    ['10.0.1.2', '10.0.1.3', '10.0.1.4'],
    'addresses come serially from the network subnet',
  );
  t.notOk(
    netnsList().includes(`${prefix(h2)}mesh-ov-9999`),
    'the stale overlay namespace of a crashed run was removed',
  );
  const allPairs = async (hosts: TestHost[], what: string) => {
    const t0 = Date.now();
    for (const a of hosts) {
      const ta = ps(a)[0]!;
      for (const b of hosts) {
        if (a === b) continue;
        const ip = addrOf(ps(b)[0]!);
        await until(`${a.name} task reaching ${ip}`, () => ping(a, ta, ip), 15_000);
      }
    }
    t.pass(`${what} (${Date.now() - t0} ms)`);
  };
  await allPairs(net.hosts, 'tasks on every host reach each other over the overlay');
  t.equal(
    kernelPeers(h1, vni).fdb.length,
    2,
    'h1 holds exactly one static FDB entry per remote task',
  );

  // A host added later joins and is reachable.
  const h4 = net.addHost();
  start(h4);
  await until('h4 API', () => ctl(h4, 'version').status === 0);
  ok(h4, 'cluster', 'join', '--token', token, h1.addr);
  ok(h4, 'run', '-d', '--name', 't4', '--network', 'web', '--', 'sleep', '300');
  await allPairs([h1, h4], 'a host added later reaches and is reached');

  // A removed task disappears from every peer's FDB and ARP.
  const gone = addrOf(tasks.get(3)!);
  ok(h3, 'rm', 't3');
  await until('t3 gone from every peer', () =>
    [h1, h2, h4].every((h) => !kernelPeers(h, vni).ips.includes(gone)),
  );
  t.pass('a removed task is gone from every peer');

  // kill -9 of h2's meshd: traffic keeps flowing; the restarted agent adopts, no duplicates.
  const before = { ns: ourNamespaces(h2).sort(), peers: kernelPeers(h2, vni) };
  procs.get(2)!.kill('SIGKILL');
  await until('h2 meshd gone', () => procs.get(2)!.exitCode !== null || procs.get(2)!.signalCode);
  t.ok(ping(h2, tasks.get(2)!, addrOf(tasks.get(1)!)), 'traffic flows with the agent dead');
  start(h2);
  await until('h2 API again', () => ctl(h2, 'version').status === 0);
  await until('h2 agent adopted its task', () => ps(h2)[0]?.state === 'running');
  t.ok(ping(h2, tasks.get(2)!, addrOf(tasks.get(1)!)), 'traffic flows after the restart');
  t.same(ourNamespaces(h2).sort(), before.ns, 'the same namespaces, none added or lost');
  const after = kernelPeers(h2, vni);
  t.same(after.ips, before.peers.ips, 'the same ARP entries');
  t.equal(after.fdb.length, before.peers.fdb.length, 'no duplicate FDB entries');

  // net rm: refused while in use; afterwards nothing of the network is left in any kernel.
  const busy = ctl(h1, 'net', 'rm', 'web');
  t.match(busy.stderr, /in use by \d tasks .*remove them first/, 'net rm names its users');
  for (const h of [h1, h2, h4]) ok(h, 'rm', `t${h.index}`);
  ok(h1, 'net', 'rm', 'web');
  for (const h of [h1, h2, h3, h4]) {
    t.same(ourNamespaces(h), [], `no namespace of ours left on ${h.name}`);
    const links = JSON.parse(h.run('ip', ['-j', 'link'])) as { ifname: string }[];
    t.notOk(
      links.some((l) => l.ifname.startsWith('vx-') || l.ifname.startsWith('mesh-')),
      `no vxlan or veth left in ${h.name}'s namespace`,
    );
  }
});
