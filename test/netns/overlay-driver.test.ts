// The VXLAN overlay driver against the real kernel: three namespaced hosts, one driver per host
// (bound to the host's namespace), tasks in their own namespaces. Every claim is checked with
// iproute2's JSON output (`ip -j`, `bridge -j`) inside the test's namespaces, and by ping.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import {
  netnsCreate,
  netnsDelete,
  netnsList,
  spawnInNetns,
  type Netns,
} from '../../src/netlink/index.js';
import { OverlayDriver, type NetworkSpec, type Peer } from '../../src/overlay/index.js';
import { macFromIp } from '../../src/overlay/plan.js';
import { testnet, type TestHost, type TestNet } from '../lib/testnet.js';
import { requireRoot } from '../lib/require.js';

requireRoot('netns tests');

/** `ip -n NS -j ARGS` (or `bridge`), parsed. */
function j(ns: string, tool: 'ip' | 'bridge', ...args: string[]): any[] {
  const r = spawnSync(tool, ['-n', ns, '-j', ...args], { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`${tool} -n ${ns} ${args.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout || '[]');
}

function sh(ns: string, cmd: string, ...args: string[]): { ok: boolean; out: string } {
  const r = spawnSync('ip', ['netns', 'exec', ns, cmd, ...args], {
    encoding: 'utf8',
    timeout: 10_000,
  });
  return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
}

const ping = (ns: string, ip: string, ...extra: string[]): boolean =>
  sh(ns, 'ping', '-c', '1', '-W', '1', ...extra, ip).ok;

interface Task {
  host: TestHost;
  name: string;
  ns: Netns;
  ip: string;
}

interface World {
  net: TestNet;
  drivers: OverlayDriver[];
  tasks: Task[];
}

const NET: NetworkSpec = {
  id: 'net-a',
  vni: 4096,
  subnets: [{ subnet: '10.0.1.0/24', gateway: '10.0.1.1' }],
  internal: false,
  encrypted: false,
};

function driverFor(host: TestHost): OverlayDriver {
  return new OverlayDriver({ vtep: host.addr, hostNetns: host.ns, netnsPrefix: `${host.name}-` });
}

function makeTask(host: TestHost, n: number, ip: string): Task {
  const name = `${host.name}-t${n}`;
  return { host, name, ns: netnsCreate(name), ip };
}

const peersOf = (tasks: Task[]): Peer[] =>
  tasks.map((x) => ({ ip: `${x.ip}/24`, mac: macFromIp(x.ip), vtep: x.host.addr }));

/** Three hosts (underlay MTU 9000), network NET on each, 4 tasks: two on h1, one on h2 and h3. */
async function world(t: Test): Promise<World> {
  const net = testnet(t, { hosts: 3, mtu: 9000 });
  const drivers = net.hosts.map(driverFor);
  const tasks: Task[] = [];
  t.teardown(() => {
    for (const d of drivers) d.close();
    for (const x of tasks) x.ns.close();
  });
  const [h1, h2, h3] = net.hosts as [TestHost, TestHost, TestHost];
  tasks.push(makeTask(h1, 1, '10.0.1.11'), makeTask(h1, 2, '10.0.1.12'));
  tasks.push(makeTask(h2, 1, '10.0.1.21'), makeTask(h3, 1, '10.0.1.31'));
  for (const d of drivers) await d.ensureNetwork(NET);
  for (const x of tasks) {
    await drivers[x.host.index - 1]!.attach(NET.vni, { taskNs: x.name, ip: `${x.ip}/24` });
  }
  for (const d of drivers) await d.setPeers(NET.vni, peersOf(tasks));
  return { net, drivers, tasks };
}

function allPairs(tasks: Task[]): { ok: number; failed: string[] } {
  let ok = 0;
  const failed: string[] = [];
  for (const a of tasks) {
    for (const b of tasks) {
      if (a === b) continue;
      if (ping(a.name, b.ip)) ok++;
      else failed.push(`${a.ip}->${b.ip}`);
    }
  }
  return { ok, failed };
}

const ovns = (h: TestHost, vni = NET.vni): string => `${h.name}-mesh-ov-${vni}`;
const selfFdb = (ns: string, dev: string): any[] =>
  j(ns, 'bridge', 'fdb', 'show', 'dev', dev).filter((e) => e.flags?.includes('self') && e.dst);
const staticFdb = (ns: string, dev: string): any[] =>
  j(ns, 'bridge', 'fdb', 'show', 'dev', dev).filter((e) => e.state === 'static');
const arp = (ns: string, dev: string): any[] => j(ns, 'ip', 'neigh', 'show', 'dev', dev);

t.test(
  'tasks on three hosts reach each other over the overlay; MTU from the underlay',
  async (t) => {
    const w = await world(t);
    const [h1, h2, h3] = w.net.hosts as [TestHost, TestHost, TestHost];

    const r = allPairs(w.tasks);
    t.same(r.failed, [], 'every task answers every other (12 paths, same host and across hosts)');
    t.equal(r.ok, 12);

    // The vxlan device as iproute2 sees it inside the network namespace.
    const vx = j(ovns(h1), 'ip', '-d', 'link', 'show', 'vx-4096')[0];
    const d = vx.linkinfo.info_data;
    t.equal(d.id, 4096, 'vni');
    t.equal(d.port, 4789, 'dstport');
    t.equal(d.local, h1.addr, 'local = vtep');
    t.equal(d.learning, false, 'nolearning');
    t.equal(d.proxy, true, 'ARP proxy');
    t.notOk(d.l2miss, 'no l2miss');
    t.notOk(d.l3miss, 'no l3miss');
    t.ok(vx.link_netnsid !== undefined, 'its socket lives in another namespace (the node)');
    t.equal(vx.master, 'br0');
    t.equal(vx.mtu, 8950, 'MTU = underlay 9000 - 50');
    t.equal(vx.linkinfo.info_slave_data.learning, false, 'bridge port: learning off');
    t.equal(vx.linkinfo.info_slave_data.flood, false, 'bridge port: unicast flood off');
    const ports = j(ovns(h1), 'ip', '-d', 'link', 'show', 'master', 'br0');
    t.equal(ports.length, 3, 'br0 ports: vx-4096 and two task veths');
    for (const p of ports) {
      const sd = p.linkinfo.info_slave_data;
      t.same([sd.learning, sd.flood], [false, false], `${p.ifname}: learning and flood off`);
    }
    const taskStatics = ports
      .filter((p: any) => p.ifname.startsWith('mesh-'))
      .flatMap((p: any) => staticFdb(ovns(h1), p.ifname).map((e) => e.mac))
      .sort();
    t.same(taskStatics, [macFromIp('10.0.1.11'), macFromIp('10.0.1.12')], 'task MACs are static');
    const br = j(ovns(h1), 'ip', '-d', 'addr', 'show', 'br0')[0];
    t.equal(br.mtu, 8950);
    t.same(
      br.addr_info
        .filter((a: any) => a.family === 'inet')
        .map((a: any) => `${a.local}/${a.prefixlen}`),
      ['10.0.1.1/24'],
      'gateway on br0',
    );
    const eth0 = j(w.tasks[0]!.name, 'ip', 'addr', 'show', 'eth0')[0];
    t.equal(eth0.mtu, 8950, 'task MTU = network MTU');
    t.equal(eth0.address, macFromIp('10.0.1.11'), 'MAC derived from the IP');

    // A full-size packet passes with DF set; one byte more does not (8950 - 28 = 8922).
    const [a, , , c] = w.tasks as [Task, Task, Task, Task];
    t.ok(ping(a.name, c.ip, '-M', 'do', '-s', '8922'), '8950-byte packet crosses with DF');
    t.notOk(ping(a.name, c.ip, '-M', 'do', '-s', '8923'), '8951 bytes do not fit');

    // Remote peers only: h1 holds h2's and h3's tasks, not its own.
    const macs = (xs: any[]): string[] => xs.map((e) => e.mac).sort();
    t.same(
      arp(ovns(h1), 'vx-4096')
        .map((e) => `${e.dst} ${e.lladdr} ${e.state.join(',')}`)
        .sort(),
      [
        `10.0.1.21 ${macFromIp('10.0.1.21')} PERMANENT`,
        `10.0.1.31 ${macFromIp('10.0.1.31')} PERMANENT`,
      ],
      'permanent ARP entries for remote tasks only',
    );
    t.same(
      selfFdb(ovns(h1), 'vx-4096')
        .map((e) => `${e.mac} ${e.dst}`)
        .sort(),
      [`${macFromIp('10.0.1.21')} ${h2.addr}`, `${macFromIp('10.0.1.31')} ${h3.addr}`],
      'FDB: remote MAC -> VTEP',
    );
    t.same(macs(staticFdb(ovns(h1), 'vx-4096')), [macFromIp('10.0.1.21'), macFromIp('10.0.1.31')]);
    t.same(
      j(ovns(h1), 'bridge', 'fdb', 'show', 'dev', 'vx-4096').filter(
        (e) => e.mac === '00:00:00:00:00:00',
      ),
      [],
      'no flood entry',
    );

    // Idempotent: the same calls again change nothing, and reconcile finds nothing to repair.
    for (const [i, drv] of w.drivers.entries()) {
      await drv.ensureNetwork(NET);
      const x = w.tasks.find((y) => y.host.index === i + 1)!;
      await drv.attach(NET.vni, { taskNs: x.name, ip: `${x.ip}/24` });
      const again = await drv.setPeers(NET.vni, peersOf(w.tasks));
      t.same([again.added, again.removed], [0, 0], `host ${i + 1}: setPeers twice adds nothing`);
      t.same(
        await drv.reconcile([NET.vni]),
        { repairs: 0, unknown: [] },
        `host ${i + 1}: no drift`,
      );
    }
    t.equal(arp(ovns(h1), 'vx-4096').length, 2, 'still exactly 2 ARP entries');
    t.equal(selfFdb(ovns(h1), 'vx-4096').length, 2, 'still exactly 2 FDB entries');

    // Encrypted networks fail closed (no ESP is programmed yet): refused, nothing made.
    const d1 = w.drivers[0]!;
    await t.rejects(d1.ensureNetwork({ ...NET, id: 'enc', vni: 4097, encrypted: true }), {
      code: 'EUNSUPPORTED',
      message:
        /network is encrypted and this node cannot program ESP .*refusing to carry it in cleartext/,
    });
    t.notOk(netnsList().includes(ovns(h1, 4097)), 'no namespace for the refused network');
    // An explicit mtu wins.
    t.same(await d1.ensureNetwork({ ...NET, id: 'small', vni: 4098, mtu: 1400 }), {
      ns: ovns(h1, 4098),
      mtu: 1400,
    });
    t.equal(j(ovns(h1, 4098), 'ip', 'link', 'show', 'vx-4098')[0].mtu, 1400);
  },
);

t.test('setPeers removes what is no longer wanted; removeNetwork leaves nothing', async (t) => {
  const w = await world(t);
  const [h1, h2, h3] = w.net.hosts as [TestHost, TestHost, TestHost];
  const gone = w.tasks[3]!; // on h3
  const rest = w.tasks.filter((x) => x !== gone);
  for (const drv of w.drivers.slice(0, 2)) {
    const r = await drv.setPeers(NET.vni, peersOf(rest));
    t.equal(r.removed, 3, 'ARP + FDB + bridge entry of the removed task');
  }
  for (const h of [h1, h2]) {
    t.notOk(
      arp(ovns(h), 'vx-4096').some((e) => e.dst === gone.ip),
      `${h.name}: ARP entry of ${gone.ip} gone`,
    );
    t.notOk(
      j(ovns(h), 'bridge', 'fdb', 'show', 'dev', 'vx-4096').some(
        (e) => e.mac === macFromIp(gone.ip),
      ),
      `${h.name}: FDB entries of ${gone.ip} gone`,
    );
  }
  t.notOk(ping(w.tasks[0]!.name, gone.ip), 'the removed peer is unreachable');
  t.ok(ping(w.tasks[0]!.name, w.tasks[2]!.ip), 'the others still are');

  for (const [i, drv] of w.drivers.entries()) {
    await drv.removeNetwork(NET.vni);
    await drv.removeNetwork(NET.vni); // idempotent
    const h = w.net.hosts[i]!;
    t.notOk(
      spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.includes(ovns(h)),
      `${h.name}: network namespace gone`,
    );
    t.same(
      j(h.name, 'ip', 'link')
        .map((l) => l.ifname)
        .sort(),
      ['eth0', 'lo'],
      `${h.name}: nothing of ours in the node's namespace`,
    );
  }
  for (const x of w.tasks) {
    t.same(
      j(x.name, 'ip', 'link').map((l) => l.ifname),
      ['lo'],
      `${x.name}: its eth0 went too`,
    );
  }
  t.same(w.drivers[0]!.networks(), []);
  void h3;
});

t.test('reconcile repairs drift and counts it', async (t) => {
  const w = await world(t);
  const [h1, h2] = w.net.hosts as [TestHost, TestHost];
  const d1 = w.drivers[0]!;
  const far = w.tasks[2]!; // on h2
  const mac = macFromIp(far.ip);
  // Delete one FDB entry and one ARP entry by hand.
  t.ok(sh(ovns(h1), 'bridge', 'fdb', 'del', mac, 'dev', 'vx-4096', 'dst', h2.addr, 'self').ok);
  t.ok(sh(ovns(h1), 'ip', 'neigh', 'del', far.ip, 'dev', 'vx-4096').ok);
  t.notOk(ping(w.tasks[0]!.name, far.ip), 'drift breaks the path');
  t.same(await d1.reconcile([NET.vni]), { repairs: 2, unknown: [] }, 'two repairs counted');
  t.same(
    selfFdb(ovns(h1), 'vx-4096')
      .filter((e) => e.mac === mac)
      .map((e) => e.dst),
    [h2.addr],
    'FDB entry back',
  );
  // The failed ping left the task's own neighbour entry for far.ip FAILED; the kernel retries
  // it after its 1 s retransmit time, so the first ping after the repair may still be lost.
  t.ok(
    ping(w.tasks[0]!.name, far.ip) ||
      ping(w.tasks[0]!.name, far.ip) ||
      ping(w.tasks[0]!.name, far.ip),
    'path restored',
  );
  // Worse drift: a task's veth deleted, bridge port flags flipped, gateway address removed.
  const veth = j(ovns(h1), 'ip', 'link').find((l) => l.ifname.startsWith('mesh-'))!.ifname;
  t.ok(sh(ovns(h1), 'ip', 'link', 'del', veth).ok);
  t.ok(sh(ovns(h1), 'bridge', 'link', 'set', 'dev', 'vx-4096', 'learning', 'on').ok);
  t.ok(sh(ovns(h1), 'ip', 'addr', 'flush', 'dev', 'br0').ok);
  const r = await d1.reconcile([NET.vni]);
  t.ok(r.repairs >= 3, `repairs counted (${r.repairs})`);
  t.same(await d1.reconcile([NET.vni]), { repairs: 0, unknown: [] }, 'then nothing left to do');
  t.same(allPairs(w.tasks).failed, [], 'all paths work again');
  // The underlay's MTU changes: the network follows (bridge, vxlan, veths, the tasks' eth0).
  h1.run('ip', ['link', 'set', 'eth0', 'mtu', '1500']);
  t.ok((await d1.reconcile([NET.vni])).repairs >= 4, 'MTU drift repaired');
  t.equal(j(ovns(h1), 'ip', 'link', 'show', 'vx-4096')[0].mtu, 1450, 'vxlan follows the underlay');
  t.equal(j(ovns(h1), 'ip', 'link', 'show', 'br0')[0].mtu, 1450, 'bridge too');
  t.equal(j(w.tasks[0]!.name, 'ip', 'link', 'show', 'eth0')[0].mtu, 1450, 'and the task');
  t.ok(ping(w.tasks[0]!.name, far.ip, '-M', 'do', '-s', '1422'), '1450-byte packet crosses');
  h1.run('ip', ['link', 'set', 'eth0', 'mtu', '9000']);
  t.ok((await d1.reconcile([NET.vni])).repairs >= 4, 'and back up');
  t.equal(j(ovns(h1), 'ip', 'link', 'show', 'br0')[0].mtu, 8950, 'bridge raised after its ports');
  // A network not desired any more is removed, and counts.
  t.same(await d1.reconcile([]), { repairs: 1, unknown: [] });
  t.notOk(spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.includes(ovns(h1)));
  t.same(await d1.reconcile([4096]), { repairs: 0, unknown: [4096] }, 'unknown networks reported');
});

t.test(
  'adopt keeps desired state of a crashed run with no duplicates, removes the rest',
  async (t) => {
    const w = await world(t);
    const [h1] = w.net.hosts as [TestHost];
    const old = w.drivers[0]!;
    await old.ensureNetwork({
      ...NET,
      id: 'stale',
      vni: 4099,
      subnets: [{ subnet: '10.0.9.0/24', gateway: '10.0.9.1' }],
    });
    // Leftovers a crash could leave, and things that are not ours and must survive.
    t.ok(
      h1.exec('ip', [
        'link',
        'add',
        'vx-5000',
        'type',
        'vxlan',
        'id',
        '5000',
        'dstport',
        '4789',
        'local',
        h1.addr,
      ]).status === 0,
    );
    t.ok(h1.exec('ip', ['link', 'add', 'other0', 'type', 'bridge']).status === 0);
    const foreign = netnsCreate(`${h1.name}-not-ours-ov-4099`);
    t.teardown(() => foreign.close());
    const before = {
      arp: arp(ovns(h1), 'vx-4096').length,
      fdb: j(ovns(h1), 'bridge', 'fdb', 'show', 'dev', 'vx-4096').length,
      links: j(ovns(h1), 'ip', 'link').length,
      peers: old.peers(NET.vni),
    };
    old.close(); // "kill -9": the kernel state stays, the driver's memory is gone

    const d = driverFor(h1);
    w.drivers[0] = d;
    t.same(await d.adopt([NET.vni]), { kept: [4096], removed: [4099, 5000] });
    const names = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
    t.notOk(names.includes(ovns(h1, 4099)), 'stale network namespace removed');
    t.ok(
      names.includes(`${h1.name}-not-ours-ov-4099`),
      'a namespace without our prefix is untouched',
    );
    const hostLinks = j(h1.name, 'ip', 'link')
      .map((l) => l.ifname)
      .sort();
    t.same(hostLinks, ['eth0', 'lo', 'other0'], 'stray vx-5000 gone, other0 untouched');
    t.same(before.peers, [
      { ip: '10.0.1.21', mac: macFromIp('10.0.1.21'), vtep: '198.18.0.2' },
      { ip: '10.0.1.31', mac: macFromIp('10.0.1.31'), vtep: '198.18.0.3' },
    ]);
    t.same(d.peers(NET.vni), before.peers, 'peers read back from the kernel');
    t.ok(ping(w.tasks[0]!.name, w.tasks[3]!.ip), 'traffic kept flowing');

    // The agent then replays its desired state: nothing is added twice.
    await d.ensureNetwork(NET);
    for (const x of w.tasks.filter((y) => y.host === h1)) {
      await d.attach(NET.vni, { taskNs: x.name, ip: `${x.ip}/24` });
    }
    const again = await d.setPeers(NET.vni, peersOf(w.tasks));
    t.same([again.added, again.removed], [0, 0], 'setPeers after adopt: nothing to do');
    t.same(await d.reconcile([NET.vni]), { repairs: 0, unknown: [] });
    t.equal(arp(ovns(h1), 'vx-4096').length, before.arp, 'ARP entries: zero duplicates');
    t.equal(
      j(ovns(h1), 'bridge', 'fdb', 'show', 'dev', 'vx-4096').length,
      before.fdb,
      'FDB: zero duplicates',
    );
    t.equal(j(ovns(h1), 'ip', 'link').length, before.links, 'links: zero duplicates');
    t.same(allPairs(w.tasks).failed, []);
  },
);

t.test('egress through mesh_gwbridge with masquerade', async (t) => {
  const w = await world(t);
  const [h1, h2] = w.net.hosts as [TestHost, TestHost];
  const d1 = w.drivers[0]!;
  const task = w.tasks[0]!;
  t.notOk(ping(task.name, h2.addr), 'no way out before the gateway');
  t.same(await d1.attachGateway(task.name, '10.255.0.2/16'), {
    ifname: 'gw0',
    veth: (await d1.attachGateway(task.name, '10.255.0.2/16')).veth,
  });
  // h2 has no route to 10.255.0.0/16: a reply can only come back if h1 masqueraded.
  t.ok(ping(task.name, h2.addr), 'task reaches another host underlay address');
  t.match(
    h1.run('nft', ['list', 'table', 'ip', 'mesh-nat']),
    /ip saddr 10\.255\.0\.0\/16 oifname "eth0" masquerade/,
  );
  t.equal(h1.run('cat', ['/proc/sys/net/ipv4/ip_forward']).trim(), '1');
  const route = j(task.name, 'ip', 'route', 'show', 'default')[0];
  t.same([route.gateway, route.dev], ['10.255.0.1', 'gw0']);
  // Drift on the gateway is repaired too.
  h1.run('nft', ['delete', 'table', 'ip', 'mesh-nat']);
  t.same(await d1.reconcile([NET.vni]), { repairs: 1, unknown: [] });
  t.ok(ping(task.name, h2.addr));
  await d1.detachGateway(task.name);
  t.same(
    j(task.name, 'ip', 'link')
      .map((l) => l.ifname)
      .sort(),
    ['eth0', 'lo'],
  ); // A task that ended (its namespace name gone) is dropped by reconcile, not an error.
  const ended = w.tasks[1]!;
  await d1.attachGateway(ended.name, '10.255.0.3/16');
  netnsDelete(ended.name);
  t.same(await d1.reconcile([NET.vni]), { repairs: 0, unknown: [] }, 'ended task forgotten');
});

t.test(
  'multi-subnet networks route on-link; attach with a gateway sets the default route',
  async (t) => {
    const net = testnet(t, { hosts: 2 });
    const [h1, h2] = net.hosts as [TestHost, TestHost];
    const drivers = net.hosts.map(driverFor);
    const x1 = makeTask(h1, 1, '10.0.2.5');
    const x2 = makeTask(h2, 1, '10.0.3.5');
    t.teardown(() => {
      for (const d of drivers) d.close();
      x1.ns.close();
      x2.ns.close();
    });
    const spec: NetworkSpec = {
      ...NET,
      id: 'two',
      vni: 4100,
      subnets: [
        { subnet: '10.0.2.0/24', gateway: '10.0.2.1' },
        { subnet: '10.0.3.0/24', gateway: '10.0.3.1' },
      ],
    };
    for (const d of drivers)
      t.same(await d.ensureNetwork(spec), { ns: d.netnsName(4100), mtu: 1450 });
    await drivers[0]!.attach(4100, { taskNs: x1.name, ip: '10.0.2.5/24', gateway: '10.0.2.1' });
    await drivers[1]!.attach(4100, { taskNs: x2.name, ip: '10.0.3.5/24' });
    const peers = [
      { ip: '10.0.2.5/24', mac: macFromIp('10.0.2.5'), vtep: h1.addr },
      { ip: '10.0.3.5/24', mac: macFromIp('10.0.3.5'), vtep: h2.addr },
    ];
    for (const d of drivers) await d.setPeers(4100, peers);
    t.ok(ping(x1.name, x2.ip), 'across subnets and hosts');
    t.ok(ping(x2.name, x1.ip), 'and back');
    const routes = j(x1.name, 'ip', 'route')
      .map((r) => `${r.dst} ${r.gateway ?? '-'} ${r.dev}`)
      .sort();
    t.same(routes, ['10.0.2.0/24 - eth0', '10.0.3.0/24 - eth0', 'default 10.0.2.1 eth0']);
    t.ok(ping(x1.name, '10.0.2.1'), 'the local gateway address answers');
    await t.rejects(
      drivers[0]!.attach(4100, { taskNs: x1.name, ifname: 'eth1', ip: '10.0.9.5/24' }),
      { code: 'EUSAGE', message: /not in a subnet of network two/ },
      'an address outside the network is refused with the reason',
    );
    await t.rejects(drivers[0]!.setPeers(4999, []), {
      code: 'ENOTFOUND',
      message:
        /set peers of network vni 4999: network vni 4999 is not set up on this node; call ensureNetwork/,
    });
  },
);

t.test('a real agent process killed with -9: traffic flows on, the next one adopts', async (t) => {
  const w = await world(t);
  const h1 = w.net.hosts[0]!;
  const before = {
    arp: arp(ovns(h1), 'vx-4096').length,
    fdb: j(ovns(h1), 'bridge', 'fdb', 'show', 'dev', 'vx-4096').length,
    links: j(ovns(h1), 'ip', 'link').length,
  };
  w.drivers[0]!.close();
  // The agent runs in the node's namespace with the driver's defaults (no hostNetns), as
  // meshd does. It is started with setns on the network namespace only (spawnInNetns), not
  // `ip netns exec`, whose private mount namespace would hide the namespaces it creates.
  const dist = new URL('../../', import.meta.url).href;
  const mine = w.tasks.filter((x) => x.host === h1);
  const script = `
    import { OverlayDriver } from '${dist}src/overlay/index.js';
    const [spec, tasks, peers, vtep, prefix] = JSON.parse(process.argv[1]);
    const d = new OverlayDriver({ vtep, netnsPrefix: prefix });
    const adopted = await d.adopt([spec.vni]);
    await d.ensureNetwork(spec);
    for (const x of tasks) await d.attach(spec.vni, x);
    const r = await d.setPeers(spec.vni, peers);
    const rec = await d.reconcile([spec.vni]);
    process.stdout.write(JSON.stringify({ adopted, added: r.added, removed: r.removed, repairs: rec.repairs }) + '\\n');
    setInterval(() => {}, 1000);
  `;
  const input = JSON.stringify([
    NET,
    mine.map((x) => ({ taskNs: x.name, ip: `${x.ip}/24` })),
    peersOf(w.tasks),
    h1.addr,
    `${h1.name}-`,
  ]);
  const child = spawnInNetns(
    h1.ns,
    process.execPath,
    ['--input-type=module', '-e', script, input],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  let err = '';
  child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  for (let i = 0; i < 200 && !out.includes('\n') && child.exitCode === null; i++) {
    await new Promise((r) => setTimeout(r, 25));
  }
  t.equal(err, '', 'agent ran without errors');
  const report = JSON.parse(out.trim()) as Record<string, unknown>;
  t.same(
    report,
    { adopted: { kept: [4096], removed: [] }, added: 0, removed: 0, repairs: 0 },
    'the agent adopted the state and had nothing to add',
  );
  child.kill('SIGKILL');
  await exited;
  t.equal(child.signalCode, 'SIGKILL');
  t.same(allPairs(w.tasks).failed, [], 'traffic flows with the agent dead');

  const d = driverFor(h1);
  w.drivers[0] = d;
  t.same(await d.adopt([NET.vni]), { kept: [4096], removed: [] });
  await d.ensureNetwork(NET);
  for (const x of mine) await d.attach(NET.vni, { taskNs: x.name, ip: `${x.ip}/24` });
  t.same(await d.setPeers(NET.vni, peersOf(w.tasks)), { added: 0, removed: 0, conflicts: [] });
  t.same(await d.reconcile([NET.vni]), { repairs: 0, unknown: [] });
  t.same(
    {
      arp: arp(ovns(h1), 'vx-4096').length,
      fdb: j(ovns(h1), 'bridge', 'fdb', 'show', 'dev', 'vx-4096').length,
      links: j(ovns(h1), 'ip', 'link').length,
    },
    before,
    'zero duplicates after two restarts',
  );
});
