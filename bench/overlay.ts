/**
 * The overlay data path on two namespaced hosts (underlay MTU 1500):
 *
 * - reachable: time from `attach` of a new task on host A to its first ping reply from a task
 *   on host B, over 100 attachments (p50/p99). Includes the driver work on both hosts (attach
 *   on A, setPeers on B as the peers table would deliver it) and the ping process; excludes
 *   the peers table's gossip, which belongs to netdb. `ping_only_ms` is the median of the same
 *   ping to a task already reachable: the measuring tool's own cost.
 * - throughput: iperf3 TCP, task on A → task on B over our overlay (task veth, br0, vx-<vni>),
 *   against a VXLAN built by hand with `ip`/`bridge` between the same two host namespaces
 *   (vxlan devices carrying the addresses themselves, static FDB/ARP, MTU 1450: what the
 *   kernel's VXLAN can do) and the bare underlay veths. Sides alternate, medians of rounds.
 *
 * `npm run bench -- overlay [--rounds N] [--seconds S] [--streams P] [--attachments N]`
 */
import { spawnSync } from 'node:child_process';
import { netnsCreate, netnsDelete, withNetns, type Netns } from '../src/netlink/index.js';
import { OverlayDriver, type Peer } from '../src/overlay/index.js';
import { macFromIp } from '../src/overlay/plan.js';
import { TestNet, type TestHost } from '../test/lib/testnet.js';

const VNI = 4096;
const NET = {
  id: 'bench',
  vni: VNI,
  subnets: [{ subnet: '10.0.0.0/16', gateway: '10.0.0.1' }],
  internal: true,
  encrypted: false,
};

function arg(args: string[], name: string, def: number): number {
  const i = args.indexOf(name);
  if (i < 0) return def;
  const v = Number(args[i + 1]);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`bench overlay: ${name} wants a number`);
  return v;
}

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};
const round = (x: number, d = 2): number => +x.toFixed(d);

/** First reply within 3 s, probing every 10 ms (root may go below ping's 200 ms floor). */
function pingOnce(ns: Netns, ip: string): boolean {
  const r = withNetns(ns, () =>
    spawnSync('ping', ['-n', '-q', '-c', '1', '-w', '3', '-i', '0.01', ip], { timeout: 5000 }),
  );
  return r.status === 0;
}

function sh(host: TestHost, line: string): void {
  const [cmd, ...args] = line.split(' ');
  host.run(cmd!, args);
}

/** iperf3 client in `from` to a one-off server in `to` (namespace names); Gb/s received. */
function iperf(from: string, to: string, ip: string, seconds: number, streams: number): number {
  const server = spawnSync('ip', ['netns', 'exec', to, 'iperf3', '-s', '-1', '-D', '-B', ip], {
    encoding: 'utf8',
  });
  if (server.status !== 0) throw new Error(`iperf3 server in ${to}: ${server.stderr}`);
  let out = '';
  for (let attempt = 0; attempt < 20; attempt++) {
    const r = spawnSync(
      'ip',
      [
        'netns',
        'exec',
        from,
        'iperf3',
        '-c',
        ip,
        '-t',
        String(seconds),
        '-P',
        String(streams),
        '-J',
      ],
      { encoding: 'utf8', timeout: (seconds + 20) * 1000 },
    );
    out = r.stdout;
    if (r.status === 0) {
      const j = JSON.parse(out) as { end: { sum_received: { bits_per_second: number } } };
      return j.end.sum_received.bits_per_second / 1e9;
    }
    // The daemonised server may not listen yet.
    spawnSync('sleep', ['0.1']);
  }
  throw new Error(`iperf3 ${from} -> ${to} ${ip}: ${out.slice(0, 400)}`);
}

export async function main(args: string[]): Promise<void> {
  const rounds = arg(args, '--rounds', 3);
  const seconds = arg(args, '--seconds', 3);
  const streams = arg(args, '--streams', 1);
  const attachments = arg(args, '--attachments', 100);
  const net = TestNet.create({ hosts: 2 });
  const drivers: OverlayDriver[] = [];
  const made: string[] = [];
  try {
    const [a, b] = net.hosts as [TestHost, TestHost];
    for (const h of net.hosts) {
      drivers.push(new OverlayDriver({ vtep: h.addr, hostNetns: h.ns, netnsPrefix: `${h.name}-` }));
    }
    const [da, db] = drivers as [OverlayDriver, OverlayDriver];
    await da.ensureNetwork(NET);
    await db.ensureNetwork(NET);

    // Long-lived tasks: one on each host.
    const task = (h: TestHost, n: string, ip: string): { name: string; ns: Netns; ip: string } => {
      const name = `${h.name}-${n}`;
      made.push(name);
      return { name, ns: netnsCreate(name), ip };
    };
    const ta = task(a, 'ta', '10.0.0.10');
    const tb = task(b, 'tb', '10.0.0.20');
    await da.attach(VNI, { taskNs: ta.name, ip: `${ta.ip}/16` });
    await db.attach(VNI, { taskNs: tb.name, ip: `${tb.ip}/16` });
    const peer = (ip: string, h: TestHost): Peer => ({ ip, mac: macFromIp(ip), vtep: h.addr });
    const base = [peer(ta.ip, a), peer(tb.ip, b)];
    await da.setPeers(VNI, base);
    await db.setPeers(VNI, base);
    if (!pingOnce(ta.ns, tb.ip))
      throw new Error('bench overlay: the long-lived tasks do not reach each other');

    // Reachability after attachment.
    const reach: number[] = [];
    const attachMs: number[] = [];
    const pingOnly: number[] = [];
    let failures = 0;
    for (let i = 0; i < attachments; i++) {
      const ip = `10.0.${1 + Math.floor(i / 200)}.${1 + (i % 200)}`;
      const name = `${a.name}-n${i}`;
      const ns = netnsCreate(name);
      try {
        const t0 = performance.now();
        await da.attach(VNI, { taskNs: name, ip: `${ip}/16` });
        const t1 = performance.now();
        await db.setPeers(VNI, [...base, peer(ip, a)]);
        const ok = pingOnce(ns, tb.ip);
        const t2 = performance.now();
        if (ok) {
          reach.push(t2 - t0);
          attachMs.push(t1 - t0);
        } else failures++;
        const t3 = performance.now();
        pingOnce(ns, tb.ip);
        pingOnly.push(performance.now() - t3);
        await da.detach(VNI, { taskNs: name });
        await db.setPeers(VNI, base);
      } finally {
        ns.close();
        netnsDelete(name, { ifExists: true });
      }
    }

    // Hand-built kernel VXLAN between the same host namespaces (VNI 5000, same port).
    const hand = (h: TestHost, me: string, other: TestHost, otherIp: string): void => {
      sh(h, `ip link add vxp type vxlan id 5000 local ${h.addr} dstport 4789 dev eth0 nolearning`);
      sh(h, `ip link set vxp address ${macFromIp(me)} mtu 1450 up`);
      sh(h, `ip addr add ${me}/24 dev vxp`);
      sh(h, `ip neigh replace ${otherIp} lladdr ${macFromIp(otherIp)} dev vxp nud permanent`);
      sh(h, `bridge fdb replace ${macFromIp(otherIp)} dev vxp dst ${other.addr} self permanent`);
    };
    hand(a, '10.9.0.1', b, '10.9.0.2');
    hand(b, '10.9.0.2', a, '10.9.0.1');
    if (!a.exec('ping', ['-c', '1', '-W', '2', '10.9.0.2']).stdout.includes('1 received')) {
      throw new Error('bench overlay: the hand-built VXLAN does not work');
    }

    const tp = { ours: [] as number[], hand: [] as number[], underlay: [] as number[] };
    for (let r = 0; r < rounds; r++) {
      tp.ours.push(iperf(ta.name, tb.name, tb.ip, seconds, streams));
      tp.hand.push(iperf(a.name, b.name, '10.9.0.2', seconds, streams));
      tp.underlay.push(iperf(a.name, b.name, b.addr, seconds, streams));
    }
    const med = (xs: number[]): number => pct(xs, 50);
    const res = {
      bench: 'overlay',
      attachments,
      streams,
      ours: {
        reachable_p50_ms: round(pct(reach, 50)),
        reachable_p99_ms: round(pct(reach, 99)),
        attach_p50_ms: round(pct(attachMs, 50)),
        attach_p99_ms: round(pct(attachMs, 99)),
        ping_only_ms: round(pct(pingOnly, 50)),
        unreachable: failures,
        throughput_gbps: round(med(tp.ours)),
      },
      peer: { throughput_gbps: round(med(tp.hand)), underlay_gbps: round(med(tp.underlay)) },
      ratio: round(med(tp.ours) / med(tp.hand), 3),
    };
    process.stdout.write(
      `overlay: 2 hosts, ${attachments} attachments, iperf3 ${streams} stream(s) ${seconds} s x ${rounds}\n` +
        `  attach on A -> first reply from B: p50 ${res.ours.reachable_p50_ms} ms, p99 ${res.ours.reachable_p99_ms} ms` +
        ` (attach p50 ${res.ours.attach_p50_ms} ms p99 ${res.ours.attach_p99_ms} ms, the ping itself ${res.ours.ping_only_ms} ms, ${failures} unreachable)\n` +
        `  throughput: ours ${res.ours.throughput_gbps} Gb/s, hand-built VXLAN ${res.peer.throughput_gbps} Gb/s,` +
        ` bare underlay ${res.peer.underlay_gbps} Gb/s; ours/hand-built ${res.ratio} (target >= 0.95)\n`,
    );
    process.stdout.write(JSON.stringify(res) + '\n');
  } finally {
    for (const d of drivers) d.close();
    for (const n of made) netnsDelete(n, { ifExists: true });
    net.destroy();
  }
}
