/**
 * The README's first command, for now: a demo of the netlink layer on namespaced test hosts.
 * Three hosts on an underlay bridge (198.18.0.0/24); on each, a VXLAN overlay (VNI 4096,
 * udp/4789) built the way Mesh's overlay driver will build it — bridge + vxlan with learning
 * off, ARP answered by the vxlan device from permanent neighbour entries, and static FDB entries
 * pointing each remote MAC at its VTEP — and a "task" namespace attached by a veth. Then
 * the tasks ping each other across hosts, the programmed state is shown with iproute2, and
 * everything is removed. (The full cluster demo replaces this when services exist.)
 */
import { execFileSync, spawnSync } from 'node:child_process';
import {
  NETLINK_ROUTE,
  NetlinkSocket,
  addrAdd,
  fdbAdd,
  linkAdd,
  linkSet,
  linkSetUp,
  neighAdd,
  netnsCreate,
  type Netns,
} from '../src/netlink/index.js';
import { TestNet } from '../test/lib/testnet.js';

const VNI = 4096;
const say = (s: string): boolean => process.stdout.write(`${s}\n`);
const taskIp = (i: number): string => `10.0.0.${i + 1}`;
const taskMac = (i: number): string => `02:42:0a:00:00:${(i + 1).toString(16).padStart(2, '0')}`;

function main(): number {
  if (process.getuid?.() !== 0) {
    process.stderr.write('demo: needs root (it creates network namespaces); run it as root\n');
    return 1;
  }
  const net = TestNet.create({ hosts: 3, prefix: `mesh-demo-${process.pid}` });
  const tasks: Array<{ ns: Netns; rt: NetlinkSocket; name: string }> = [];
  try {
    say(
      `== 3 hosts on an underlay bridge: ${net.hosts.map((h) => `${h.name} ${h.addr}`).join(', ')}`,
    );
    for (const host of net.hosts) {
      const h = host.rt;
      const i = host.index;
      // Overlay: bridge + vxlan, no learning, ARP proxy from the neighbour table.
      linkAdd(h, { kind: 'bridge', name: 'br-demo', mtu: 1450, up: true });
      linkAdd(h, {
        kind: 'vxlan',
        name: `vx-${VNI.toString(16).padStart(6, '0')}`,
        vni: VNI,
        local: host.addr,
        dev: 'eth0',
        learning: false,
        proxy: true,
        mtu: 1450,
        master: 'br-demo',
        up: true,
      });
      // A task: its own namespace, attached by a veth with a MAC derived from its IP.
      const name = `${net.prefix}-t${i}`;
      const ns = netnsCreate(name);
      const rt = NetlinkSocket.open(NETLINK_ROUTE, { netns: ns });
      linkSetUp(rt, 'lo');
      linkAdd(h, {
        kind: 'veth',
        name: `vt${i}`,
        mtu: 1450,
        master: 'br-demo',
        up: true,
        peer: { name: 'eth0', netns: ns, mtu: 1450, mac: taskMac(i) },
      });
      addrAdd(rt, 'eth0', `${taskIp(i)}/24`);
      linkSet(rt, 'eth0', { up: true });
      tasks.push({ ns, rt, name });
      say(
        `   ${host.name}: br-demo + vx-001000 (VNI ${VNI}, local ${host.addr}), task ${name} at ${taskIp(i)}`,
      );
    }
    // What the network tables will carry: for every remote task, ARP + FDB on each host.
    for (const host of net.hosts) {
      for (const peer of net.hosts) {
        if (peer === host) continue;
        neighAdd(host.rt, { dev: 'vx-001000', ip: taskIp(peer.index), mac: taskMac(peer.index) });
        fdbAdd(host.rt, { dev: 'vx-001000', mac: taskMac(peer.index), dst: peer.addr });
      }
    }
    say('== programmed on host 1 (read back with iproute2):');
    const h1 = net.hosts[0]!;
    say(h1.run('ip', ['-d', 'link', 'show', 'vx-001000']).trimEnd().replace(/^/gm, '   '));
    say(h1.run('ip', ['neigh', 'show', 'dev', 'vx-001000']).trimEnd().replace(/^/gm, '   '));
    say(h1.run('bridge', ['fdb', 'show', 'dev', 'vx-001000']).trimEnd().replace(/^/gm, '   '));
    say('== tasks reach each other across hosts over VXLAN:');
    let failures = 0;
    for (const from of net.hosts) {
      for (const to of net.hosts) {
        if (to === from) continue;
        const r = spawnSync(
          'ip',
          [
            'netns',
            'exec',
            `${net.prefix}-t${from.index}`,
            'ping',
            '-c',
            '1',
            '-W',
            '2',
            taskIp(to.index),
          ],
          { encoding: 'utf8' },
        );
        const rtt = /time=([\d.]+) ms/.exec(r.stdout)?.[1];
        say(
          `   task ${taskIp(from.index)} (host ${from.index}) -> ${taskIp(to.index)} (host ${to.index}): ${r.status === 0 ? `reply in ${rtt} ms` : 'NO REPLY'}`,
        );
        if (r.status !== 0) failures++;
      }
    }
    say(failures === 0 ? '== all 6 paths answered' : `== ${failures} of 6 paths failed`);
    return failures === 0 ? 0 : 1;
  } finally {
    for (const t of tasks) {
      t.rt.close();
      t.ns.close();
    }
    net.destroy();
    const left = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => l.startsWith(net.prefix));
    say(
      left.length === 0
        ? '== cleaned up: no namespace left behind'
        : `== left behind: ${left.join(', ')}`,
    );
  }
}

process.exitCode = main();
