// ServiceLb (src/lb/mesh.ts) against the real kernel with the nftables backend: three namespaced
// hosts, an OverlayDriver per host, a service with one task per host on an app network and the
// ingress network, a client task per host. Tasks run a tiny TCP server that answers every line
// with its name, so clients see which backend took each connection. Checks: the VIP from every
// host reaches every backend, a published port answers on every host's underlay address and
// reaches every backend, a removed backend gets no new connection, a draining one keeps an open
// connection, a host-mode port answers only on its node.
import t from 'tap';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { netnsCreate, spawnInNetns, type Netns } from '../../src/netlink/index.js';
import { OverlayDriver, type Peer } from '../../src/overlay/index.js';
import { macFromIp } from '../../src/overlay/plan.js';
import { ServiceLb, INGRESS_TABLE } from '../../src/lb/mesh.js';
import type { NetworkInfo, ServiceEndpoint, ServiceEntry } from '../../src/api/services.js';
import { testnet, type TestHost } from '../lib/testnet.js';
import { requireRoot, requireCommand } from '../lib/require.js';

requireRoot('netns tests');
requireCommand('nft', ['--version'], 'nftables (Debian package nftables)');

const SERVER = `
const name = process.argv[1];
const handle = (s) => {
  s.on('error', () => {});
  let buf = '';
  s.on('data', (d) => {
    buf += d;
    while (buf.includes('\\n')) { buf = buf.slice(buf.indexOf('\\n') + 1); s.write(name + '\\n'); }
  });
};
const srv = require('node:net').createServer(handle);
srv.listen(8080, () => require('node:net').createServer(handle).listen(9090, () => {
  const u = require('node:dgram').createSocket('udp4');
  u.on('message', (m, r) => u.send(name + '\\n', r.port, r.address));
  u.bind(8080, () => console.log('ready'));
}));
`;

// N datagrams, each from a new socket (a new conntrack entry); prints counts like CLIENT.
const UDP_CLIENT = `
const [ip, port, n] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const dgram = require('node:dgram');
const counts = {};
function one() {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    const done = (k) => { clearTimeout(tm); s.close(); counts[k] = (counts[k] || 0) + 1; resolve(); };
    const tm = setTimeout(() => done('fail'), 1500);
    s.on('message', (m) => done(String(m).trim()));
    s.send('x', port, ip);
  });
}
(async () => { for (let i = 0; i < n; i++) await one(); console.log(JSON.stringify(counts)); })();
`;

// N sequential connections, one line each; prints {"name": count, "fail": count}.
const CLIENT = `
const [ip, port, n] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const net = require('node:net');
const counts = {};
function one() {
  return new Promise((resolve) => {
    const s = net.connect(port, ip);
    const done = (k) => { clearTimeout(tm); s.destroy(); counts[k] = (counts[k] || 0) + 1; resolve(); };
    const tm = setTimeout(() => done('fail'), 1500);
    s.on('error', () => done('fail'));
    let buf = '';
    s.on('data', (d) => { buf += d; if (buf.includes('\\n')) done(buf.trim()); });
    s.write('x\\n');
  });
}
(async () => { for (let i = 0; i < n; i++) await one(); console.log(JSON.stringify(counts)); })();
`;

// One connection kept open: a line on stdin sends a line; every answer is printed.
const HOLD = `
const s = require('node:net').connect(Number(process.argv[2]), process.argv[1]);
s.on('error', (e) => { console.log('error ' + e.message); process.exit(1); });
let buf = '';
s.on('data', (d) => { buf += d; while (buf.includes('\\n')) { console.log(buf.slice(0, buf.indexOf('\\n'))); buf = buf.slice(buf.indexOf('\\n') + 1); } });
s.on('connect', () => s.write('x\\n'));
process.stdin.on('data', () => s.write('x\\n'));
`;

const APP: NetworkInfo = {
  id: 'net-app',
  name: 'app',
  vni: 4200,
  subnets: [{ subnet: '10.0.42.0/24', gateway: '10.0.42.1' }],
  internal: false,
  encrypted: false,
  ingress: false,
};
const INGRESS: NetworkInfo = {
  id: 'net-ingress',
  name: 'ingress',
  vni: 4201,
  subnets: [{ subnet: '10.0.43.0/24', gateway: '10.0.43.1' }],
  internal: false,
  encrypted: false,
  ingress: true,
};
const VIP = '10.0.42.2';
const PUBLISHED = 30080;
const HOSTPORT = 31080;

interface Task {
  host: TestHost;
  name: string;
  ns: Netns;
  app: string;
  ingress?: string;
  gw?: string;
}

const counts = (
  ns: Netns,
  ip: string,
  port: number,
  n: number,
  code = CLIENT,
): Promise<Record<string, number>> =>
  new Promise((resolve, reject) => {
    const c = spawnInNetns(ns, process.execPath, ['-e', code, ip, String(port), String(n)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    c.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    c.on('error', reject);
    c.on('close', () => {
      try {
        resolve(JSON.parse(out) as Record<string, number>);
      } catch {
        reject(new Error(`client in ${ip}:${port}: ${out}`));
      }
    });
  });

t.test('ServiceLb: VIPs, ingress routing mesh, host ports, scale down, draining', async (t) => {
  const t0 = Date.now();
  const net = testnet(t, { hosts: 3 });
  const hosts = net.hosts;
  const drivers = hosts.map(
    (h) => new OverlayDriver({ vtep: h.addr, hostNetns: h.ns, netnsPrefix: `${h.name}-` }),
  );
  const lbs: ServiceLb[] = [];
  const procs: ChildProcess[] = [];
  const tasks: Task[] = [];
  t.teardown(async () => {
    for (const p of procs) p.kill('SIGKILL');
    for (const lb of lbs) await lb.close().catch(() => undefined);
    for (const d of drivers) d.close();
    for (const x of tasks) x.ns.close();
  });

  const nets = [
    { ...APP, lbAddr: '' },
    { ...INGRESS, lbAddr: '' },
  ];
  const netsFor = (h: TestHost): NetworkInfo[] => [
    { ...APP, lbAddr: `10.0.42.${200 + h.index}/24` },
    { ...INGRESS, lbAddr: `10.0.43.${200 + h.index}/24` },
  ];
  void nets;

  // Backends: one per host on both networks (h1's also with gw0 for its host-mode port);
  // clients: one per host on the app network.
  for (const h of hosts) {
    const i = h.index;
    const be: Task = {
      host: h,
      name: `${h.name}-be`,
      ns: netnsCreate(`${h.name}-be`),
      app: `10.0.42.${10 + i}`,
      ingress: `10.0.43.${10 + i}`,
    };
    if (i === 1) be.gw = '10.255.0.11';
    tasks.push(be);
    tasks.push({
      host: h,
      name: `${h.name}-cl`,
      ns: netnsCreate(`${h.name}-cl`),
      app: `10.0.42.${50 + i}`,
    });
  }
  for (const d of drivers) {
    await d.ensureNetwork(APP);
    await d.ensureNetwork(INGRESS);
  }
  for (const x of tasks) {
    const d = drivers[x.host.index - 1]!;
    await d.attach(APP.vni, { taskNs: x.name, ip: `${x.app}/24`, ifname: 'eth0' });
    if (x.ingress)
      await d.attach(INGRESS.vni, { taskNs: x.name, ip: `${x.ingress}/24`, ifname: 'eth1' });
    if (x.gw) await d.attachGateway(x.name, `${x.gw}/16`);
  }
  const backends = tasks.filter((x) => x.ingress);
  const clients = tasks.filter((x) => !x.ingress);
  await Promise.all(
    backends.map(
      (x) =>
        new Promise<void>((resolve, reject) => {
          const p = spawnInNetns(x.ns, process.execPath, ['-e', SERVER, x.name], {
            stdio: ['ignore', 'pipe', 'inherit'],
          });
          procs.push(p);
          p.on('error', reject);
          createInterface({ input: p.stdout! }).once('line', () => resolve());
        }),
    ),
  );

  for (const [i, h] of hosts.entries())
    lbs.push(
      await ServiceLb.start({
        netnsPrefix: `${h.name}-`,
        backend: 'nftables',
        overlay: drivers[i]!,
        nodeId: `node-${h.index}`,
        vtep: h.addr,
        hostNetns: h.ns,
      }),
    );
  t.equal(lbs[0]!.backendName, 'nftables');

  const endpoint = (x: Task, state: ServiceEndpoint['state'] = 'active'): ServiceEndpoint => ({
    taskId: `id-${x.name}`,
    taskName: x.name,
    nodeId: `node-${x.host.index}`,
    nodeAddr: x.host.addr,
    addresses: { [APP.id]: x.app, [INGRESS.id]: x.ingress! },
    state,
  });
  const table = (eps: ServiceEndpoint[]): ServiceEntry[] => [
    {
      id: 'svc-web',
      name: 'web',
      endpointMode: 'vip',
      vips: { [APP.id]: VIP, [INGRESS.id]: '10.0.43.2' },
      ports: [{ published: PUBLISHED, target: 8080, protocol: 'tcp', mode: 'ingress' }],
      networks: [{ networkId: APP.id, aliases: [] }],
      endpoints: eps,
    },
  ];
  const h1be = backends[0]!;
  const hostTasks = [
    {
      taskId: `id-${h1be.name}`,
      taskName: h1be.name,
      gatewayIp: h1be.gw!,
      ports: [
        { published: HOSTPORT, target: 8080, protocol: 'tcp' as const, mode: 'host' as const },
      ],
    },
  ];
  const applyAll = async (eps: ServiceEndpoint[]): Promise<number> => {
    let n = 0;
    for (const [i, lb] of lbs.entries())
      n += (
        await lb.apply(table(eps), netsFor(hosts[i]!), new Set([APP.id]), i === 0 ? hostTasks : [])
      ).changes;
    return n;
  };
  const first = await applyAll(backends.map((x) => endpoint(x)));
  t.ok(first > 0, `first apply programs the kernel (${first} changes)`);
  t.equal(await applyAll(backends.map((x) => endpoint(x))), 0, 'second apply changes nothing');

  // Peers: every task and every LB namespace on every network, as the agent publishes them.
  const peers = (netId: string): Peer[] => {
    const out: Peer[] = [];
    for (const x of tasks) {
      const ip = netId === APP.id ? x.app : x.ingress;
      if (ip) out.push({ ip: `${ip}/24`, mac: macFromIp(ip), vtep: x.host.addr });
    }
    for (const [i, lb] of lbs.entries())
      for (const e of lb.lbEndpoints())
        if (e.networkId === netId) out.push({ ip: `${e.ip}/24`, mac: e.mac, vtep: hosts[i]!.addr });
    return out;
  };
  for (const d of drivers) {
    await d.setPeers(APP.vni, peers(APP.id));
    await d.setPeers(INGRESS.vni, peers(INGRESS.id));
  }
  // The LB's self-check took the remote backends out of rotation while they had no overlay
  // path (the apply came before the peers); as meshd does when peers change, check again.
  for (const lb of lbs) await lb.checkReach();
  t.same(
    lbs.map((l) => l.lbEndpoints().length),
    [2, 2, 2],
    'each node publishes an LB endpoint on the app and the ingress network',
  );

  const names = backends.map((x) => x.name).sort();
  const N = 12;
  // VIP from a client on every host: every backend answers, nothing fails.
  for (const c of clients) {
    const r = await counts(c.ns, VIP, 8080, N);
    t.same(
      Object.keys(r).sort(),
      names,
      `VIP from ${c.host.name}: all 3 backends (${JSON.stringify(r)})`,
    );
    t.equal(r['fail'], undefined);
    const u = await counts(c.ns, VIP, 8080, 9, UDP_CLIENT);
    t.same(Object.keys(u).sort(), names, `UDP VIP from ${c.host.name}: ${JSON.stringify(u)}`);
    // Port 0 = all ports: another port of the VIP reaches the tasks on that same port.
    const r2 = await counts(c.ns, VIP, 9090, 6);
    t.same(Object.keys(r2).sort(), names, `VIP:9090 from ${c.host.name}: ${JSON.stringify(r2)}`);
  }
  // Published port on every host's underlay address, from a host that is not it and from itself.
  for (const target of hosts) {
    for (const from of [hosts[target.index % 3]!, target]) {
      const r = await counts(from.ns, target.addr, PUBLISHED, N);
      t.same(
        Object.keys(r).sort(),
        names,
        `published ${target.addr}:${PUBLISHED} from ${from.name}: all backends (${JSON.stringify(r)})`,
      );
    }
  }
  // And on each host's loopback, from the host itself (`curl localhost:8080` on a node).
  for (const h of hosts) {
    const r = await counts(h.ns, '127.0.0.1', PUBLISHED, N);
    t.same(
      Object.keys(r).sort(),
      names,
      `published 127.0.0.1:${PUBLISHED} on ${h.name}: all backends (${JSON.stringify(r)})`,
    );
  }
  // Host-mode port: only on h1, only h1's task.
  const hp = await counts(hosts[1]!.ns, hosts[0]!.addr, HOSTPORT, 4);
  t.same(hp, { [h1be.name]: 4 }, "host-mode port on h1 reaches h1's task");
  const hp2 = await counts(hosts[0]!.ns, hosts[1]!.addr, HOSTPORT, 2);
  t.same(hp2, { fail: 2 }, 'host-mode port is not published on h2');

  // route_localnet is on for mesh_gwbridge (published ports on 127.0.0.1), yet a task there
  // cannot reach the node's loopback-only services (CVE-2020-8558 in kube-proxy): a root task
  // that routes 127.0.0.1 to its gateway gets nothing from a server on the node's 127.0.0.1.
  {
    const h1 = hosts[0]!;
    const secret = h1.spawn(process.execPath, [
      '-e',
      "require('node:net').createServer((s) => s.end('secret\\n')).listen(9999, '127.0.0.1', () => console.log('up'))",
    ]);
    await new Promise((r) => secret.stdout?.once('data', r));
    const evil = `${h1.name}-evil`;
    netnsCreate(evil).close();
    await drivers[0]!.attachGateway(evil, '10.255.0.12/16');
    const sh = (cmd: string) =>
      spawnSync('ip', ['netns', 'exec', evil, 'sh', '-c', cmd], {
        encoding: 'utf8',
        timeout: 10_000,
      });
    const setup = sh(
      [
        'ip rule add pref 100 lookup local',
        'ip rule del pref 0',
        'ip rule add pref 10 to 127.0.0.1 lookup 100',
        'ip route add 127.0.0.1/32 via 10.255.0.1 dev gw0 table 100',
        'sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.gw0.route_localnet=1',
      ].join(' && '),
    );
    t.equal(setup.status, 0, `the task routes 127.0.0.1 to its gateway ${setup.stderr}`);
    const probe = sh('curl -s -m 2 telnet://127.0.0.1:9999 </dev/null');
    t.not(probe.stdout.trim(), 'secret', "the node's 127.0.0.1:9999 is not reachable from a task");
    const direct = h1.exec('curl', ['-s', '-m', '2', 'telnet://127.0.0.1:9999'], { input: '' });
    t.equal(direct.stdout.trim(), 'secret', 'while it answers on the node itself');
    secret.kill();
  }

  // Reserved: nothing else can bind the published port on a host.
  const bind = spawnSync(
    'ip',
    [
      'netns',
      'exec',
      hosts[1]!.name,
      process.execPath,
      '-e',
      `require('node:net').createServer().listen(${PUBLISHED}).on('error', (e) => { console.log(e.code); process.exit(0) }).on('listening', () => { console.log('bound'); process.exit(0) })`,
    ],
    { encoding: 'utf8', timeout: 10_000 },
  );
  t.equal(bind.stdout.trim(), 'EADDRINUSE', 'published port reserved on the host');

  // show(): the VIP entry on h1 with 3 backends, the ingress entry, the host entry.
  const sh = await lbs[0]!.show();
  const vipTcp = sh.entries.find((e) => e.kind === 'vip' && e.protocol === 'tcp');
  t.equal(vipTcp?.vip, VIP);
  t.equal(vipTcp?.port, 0, 'VIP entry covers every port');
  t.equal(vipTcp?.programmed, true);
  t.same(vipTcp?.backends.map((b) => b.task).sort(), names);
  t.ok(
    (vipTcp?.backends ?? []).every((b) => (b.scheduledConns ?? 0) >= 1),
    'every backend was scheduled for connections from h1',
  );
  const ing = sh.entries.find((e) => e.kind === 'ingress');
  t.equal(ing?.port, PUBLISHED);
  t.equal(ing?.targetPort, 8080);
  t.same(
    sh.entries.filter((e) => e.kind === 'host').map((e) => e.port),
    [HOSTPORT],
  );
  t.same((await lbs[0]!.show({ service: 'nope' })).entries, [], 'filter by service');

  // Draining: hold a connection to whichever backend, drain that one, the connection still works.
  const hold = spawnInNetns(clients[1]!.ns, process.execPath, ['-e', HOLD, VIP, '8080'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  procs.push(hold);
  const lines = createInterface({ input: hold.stdout! });
  const nextLine = (): Promise<string> =>
    new Promise((resolve, reject) => {
      const tm = setTimeout(() => reject(new Error('no answer on the held connection')), 3000);
      lines.once('line', (l) => {
        clearTimeout(tm);
        resolve(l);
      });
    });
  const held = await nextLine();
  t.ok(names.includes(held), `held connection answered by ${held}`);
  const drained = backends.find((x) => x.name === held)!;
  await applyAll(backends.map((x) => endpoint(x, x === drained ? 'draining' : 'active')));
  for (const c of clients) {
    const r = await counts(c.ns, VIP, 8080, N);
    t.equal(
      r[held],
      undefined,
      `draining ${held}: no new connection from ${c.host.name} (${JSON.stringify(r)})`,
    );
    t.equal(r['fail'], undefined);
  }
  hold.stdin?.write('\n');
  t.equal(await nextLine(), held, 'the open connection to the draining backend still works');
  const shd = await lbs[1]!.show({ service: 'web' });
  const d = shd.entries
    .find((e) => e.kind === 'vip' && e.protocol === 'tcp')
    ?.backends.find((b) => b.task === held);
  t.equal(d?.state, 'draining');
  t.equal(d?.weight, 0);
  hold.kill('SIGKILL');

  // Scale down: remove h3's backend: no new connection reaches it, via the VIP or the ingress.
  const removed = backends[2]!;
  await applyAll(backends.filter((x) => x !== removed).map((x) => endpoint(x)));
  const left = names.filter((n) => n !== removed.name);
  for (const c of clients) {
    const r = await counts(c.ns, VIP, 8080, N);
    t.same(
      Object.keys(r).sort(),
      left,
      `after scale down, VIP from ${c.host.name}: ${JSON.stringify(r)}`,
    );
  }
  const ri = await counts(hosts[2]!.ns, hosts[1]!.addr, PUBLISHED, N);
  t.same(Object.keys(ri).sort(), left, `after scale down, ingress: ${JSON.stringify(ri)}`);

  // Drift: delete the host table and a VIP alias by hand; reconcile repairs both.
  hosts[0]!.run('nft', ['delete', 'table', 'ip', INGRESS_TABLE]);
  const lbNs = lbs[0]!.namespaces().find((n) => n.networkId === APP.id)!.name;
  spawnSync('ip', ['-n', lbNs, 'addr', 'del', `${VIP}/32`, 'dev', 'eth0']);
  const fixed = await lbs[0]!.reconcile();
  t.ok(fixed >= 2, `reconcile repaired ${fixed} drifts`);
  t.equal(await lbs[0]!.reconcile(), 0, 'a second reconcile finds nothing');
  t.equal((await lbs[0]!.show()).driftRepaired, fixed);
  // The LB namespace's interface deleted by hand: reconcile rebuilds the namespace.
  spawnSync('ip', ['-n', lbNs, 'link', 'del', 'eth0']);
  t.ok((await lbs[0]!.reconcile()) >= 1, 'reconcile rebuilds an LB namespace that lost eth0');
  const rr = await counts(clients[0]!.ns, VIP, 8080, 4);
  t.equal(rr['fail'], undefined, 'VIP works after the repair');

  // Service gone: LB namespaces, host table and reservations go.
  await Promise.all(lbs.map((lb, i) => lb.apply([], netsFor(hosts[i]!), new Set([APP.id]))));
  t.same(lbs[0]!.namespaces(), []);
  t.not(
    hosts[0]!.exec('nft', ['list', 'table', 'ip', INGRESS_TABLE]).status,
    0,
    'host table removed',
  );
  t.ok(Date.now() - t0 < 60_000, `took ${Date.now() - t0} ms`);
});
