/**
 * Kernel-side helpers for bench/overlay: iperf3 between two named namespaces, a VXLAN built by
 * hand with `ip`/`bridge` (the yardstick our overlay driver is compared with), and `ip -d link`
 * snapshots to say which device settings differ between the two.
 *
 * The hand-built VXLAN has the same shape as ours (DESIGN.md, docs/overlay.md): per host a
 * namespace holding a bridge and a vxlan device (created in the host's namespace, then moved,
 * so its UDP socket stays on the underlay), and a "task" namespace joined to the bridge by a
 * veth; static FDB (RFC 7348 §4.1 without multicast) and static ARP in the task. Everything
 * else is left at the kernel's and iproute2's defaults: what the kernel does out of the box.
 * Every namespace made here is named `<host namespace>-…`, so TestNet.destroy() removes it.
 * May import: node built-ins, test/lib/testnet.ts (types).
 */
import { spawn, spawnSync } from 'node:child_process';
import type { TestHost } from '../../test/lib/testnet.js';

/** Run `cmd args…`; throw with its stderr unless it exits 0. Returns stdout. */
export function run(cmd: string, args: readonly string[], timeoutMs = 10_000): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs });
  if (r.status !== 0)
    throw new Error(`${cmd} ${args.join(' ')}: exited ${r.status ?? r.signal}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** MAC derived from an IPv4 address, as our driver does (02:42 + the four bytes). */
export function macOf(ip: string): string {
  return ['02', '42', ...ip.split('.').map((b) => Number(b).toString(16).padStart(2, '0'))].join(
    ':',
  );
}

export interface HandVxlan {
  /** Per host: the task-side namespace, its address (no prefix) and the bridge namespace. */
  ends: { taskNs: string; ip: string; brNs: string }[];
}

/**
 * Build a VXLAN between `hosts` by hand: VNI `vni`, UDP `port`, addresses `<net>.<host index>`
 * in a /24, MTU `mtu` on every overlay device.
 */
export function buildHandVxlan(
  hosts: TestHost[],
  o: { vni: number; port: number; mtu: number; net: string },
): HandVxlan {
  const ends = hosts.map((h) => ({
    taskNs: `${h.name}-hand-t`,
    brNs: `${h.name}-hand-ov`,
    ip: `${o.net}.${h.index}`,
  }));
  const mtu = String(o.mtu);
  for (const [i, h] of hosts.entries()) {
    const { taskNs, brNs, ip } = ends[i]!;
    const vx = `vxh-${o.vni}`;
    run('ip', ['netns', 'add', brNs]);
    run('ip', ['netns', 'add', taskNs]);
    run('ip', ['-n', brNs, 'link', 'set', 'lo', 'up']);
    run('ip', ['-n', taskNs, 'link', 'set', 'lo', 'up']);
    run('ip', ['-n', brNs, 'link', 'add', 'br0', 'type', 'bridge']);
    // Made in the host's namespace (its UDP socket lives there), then moved.
    run('ip', [
      '-n',
      h.name,
      'link',
      'add',
      vx,
      'type',
      'vxlan',
      'id',
      String(o.vni),
      'local',
      h.addr,
      'dstport',
      String(o.port),
      'dev',
      'eth0',
      'nolearning',
    ]);
    run('ip', ['-n', h.name, 'link', 'set', vx, 'netns', brNs]);
    run('ip', ['-n', brNs, 'link', 'set', vx, 'master', 'br0', 'mtu', mtu, 'up']);
    run('ip', [
      '-n',
      brNs,
      'link',
      'add',
      'hv0',
      'mtu',
      mtu,
      'type',
      'veth',
      'peer',
      'name',
      'eth0',
      'netns',
      taskNs,
    ]);
    run('ip', ['-n', brNs, 'link', 'set', 'hv0', 'master', 'br0', 'up']);
    run('ip', ['-n', brNs, 'link', 'set', 'br0', 'mtu', mtu, 'up']);
    run('ip', ['-n', taskNs, 'link', 'set', 'eth0', 'address', macOf(ip), 'mtu', mtu, 'up']);
    run('ip', ['-n', taskNs, 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
  }
  for (const i of hosts.keys()) {
    const me = ends[i]!;
    for (const [j, other] of hosts.entries()) {
      if (i === j) continue;
      const peer = ends[j]!;
      const mac = macOf(peer.ip);
      run('ip', [
        '-n',
        me.taskNs,
        'neigh',
        'replace',
        peer.ip,
        'lladdr',
        mac,
        'dev',
        'eth0',
        'nud',
        'permanent',
      ]);
      run('bridge', [
        '-n',
        me.brNs,
        'fdb',
        'append',
        mac,
        'dev',
        `vxh-${o.vni}`,
        'dst',
        other.addr,
        'self',
        'permanent',
      ]);
      run('bridge', [
        '-n',
        me.brNs,
        'fdb',
        'replace',
        mac,
        'dev',
        `vxh-${o.vni}`,
        'master',
        'static',
      ]);
    }
  }
  return { ends };
}

/** Wait for a child to exit, at most `ms`; resolves its exit code (null if killed or late). */
function exited(
  p: ReturnType<typeof spawn>,
  ms: number,
): Promise<{ code: number | null; late: boolean }> {
  if (p.exitCode !== null || p.signalCode !== null)
    return Promise.resolve({ code: p.exitCode, late: false });
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      p.kill('SIGKILL');
      resolve({ code: null, late: true });
    }, ms);
    p.once('exit', (code) => {
      clearTimeout(t);
      resolve({ code, late: false });
    });
  });
}

/**
 * iperf3 TCP from namespace `from` to a one-off server in namespace `to` bound to `ip`;
 * returns Gb/s received (the server's count) and Gbit moved per CPU-second of both ends. Both ends run under `ip netns exec`, at `nice`
 * (negative: ahead of other work on a shared machine).
 */
export async function iperf(
  from: string,
  to: string,
  ip: string,
  seconds: number,
  streams: number,
  nice = 0,
): Promise<{ gbps: number; gbitPerCpuS: number }> {
  const pre = nice ? ['nice', '-n', String(nice)] : [];
  const startServer = () =>
    spawn('ip', ['netns', 'exec', to, ...pre, 'iperf3', '-s', '-1', '-B', ip], {
      stdio: 'ignore',
    });
  let server = startServer();
  try {
    // The server listens within milliseconds; the client retries while it is refused, and
    // once more after any other failure (a loaded machine sometimes drops the control channel).
    let last = '';
    let others = 0;
    for (let attempt = 0; attempt < 30 && others < 2; attempt++) {
      const client = spawn(
        'ip',
        [
          'netns',
          'exec',
          from,
          ...pre,
          'iperf3',
          '-c',
          ip,
          '-t',
          String(seconds),
          '-P',
          String(streams),
          '-J',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let out = '';
      client.stdout.on('data', (c: Buffer) => (out += c.toString()));
      const r = await exited(client, (seconds + 15) * 1000);
      let j: {
        error?: string;
        end?: {
          sum_received?: { bits_per_second?: number };
          cpu_utilization_percent?: { host_total?: number; remote_total?: number };
        };
      } = {};
      try {
        j = JSON.parse(out) as typeof j;
      } catch {
        // not JSON: reported below
      }
      const bps = j.end?.sum_received?.bits_per_second;
      if (r.code === 0 && typeof bps === 'number' && bps > 0) {
        // CPU of both iperf3 processes (user + system, which includes most of the stack's
        // softirq work done on their behalf), in CPU-seconds per second of test.
        const cpu = j.end?.cpu_utilization_percent;
        const cpuS = ((cpu?.host_total ?? NaN) + (cpu?.remote_total ?? NaN)) / 100;
        return { gbps: bps / 1e9, gbitPerCpuS: bps / 1e9 / cpuS };
      }
      last = r.late ? 'client timed out' : (j.error ?? out.slice(0, 300));
      if (r.late) break;
      if (!/refused/i.test(last)) {
        others++;
        // The one-off server may have ended with the failed test: start another.
        if (server.exitCode !== null || server.signalCode !== null) server = startServer();
      }
      await new Promise((res) => setTimeout(res, 100));
    }
    throw new Error(`iperf3 ${from} -> ${to} (${ip}): ${last}`);
  } finally {
    if (server.exitCode === null && server.signalCode === null) server.kill('SIGKILL');
  }
}

/**
 * `ip -d -j link show dev IFNAME` in namespace `ns`, or undefined when absent; with the device's
 * offload features (`ethtool -k`, as `offload.<feature>`) when ethtool is installed.
 */
export function linkDetails(ns: string, ifname: string): Record<string, unknown> | undefined {
  const r = spawnSync('ip', ['-n', ns, '-d', '-j', 'link', 'show', 'dev', ifname], {
    encoding: 'utf8',
  });
  if (r.status !== 0) return undefined;
  const link = (JSON.parse(r.stdout) as Record<string, unknown>[])[0];
  const k = spawnSync('ip', ['netns', 'exec', ns, 'ethtool', '-k', ifname], { encoding: 'utf8' });
  if (link && k.status === 0) {
    const offload: Record<string, string> = {};
    for (const m of k.stdout.matchAll(/^\s*([a-z0-9-]+): (on|off)( \[fixed\])?/gm))
      offload[m[1]!] = m[2]! + (m[3] ? ' (fixed)' : '');
    link.offload = offload;
  }
  return link;
}

/** Attributes that are names, counters or addresses: expected to differ, not settings. */
const IDENTITY = new Set([
  'ifindex',
  'ifname',
  'link',
  'link_index',
  'link_netnsid',
  'address',
  'broadcast',
  'alias',
  'master',
  'operstate',
  'id',
  'local',
  'port',
  'bridge_id',
  'root_id',
  'designated_root',
  'designated_bridge',
  'designated_port',
  'no',
  'hold_timer',
  'message_age_timer',
  'forward_delay_timer',
  'gc_timer',
  'hello_timer',
  'tcn_timer',
  'topology_change_timer',
  'group_addr',
  'mcast_querier',
  'vlan_filtering',
  'parentbus',
  'parentdev',
]);

function flatten(v: unknown, key: string, out: Map<string, string>): void {
  if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
    for (const [k, x] of Object.entries(v as Record<string, unknown>))
      flatten(x, key ? `${key}.${k}` : k, out);
    return;
  }
  const leaf = key.slice(key.lastIndexOf('.') + 1);
  if (!IDENTITY.has(leaf)) out.set(key, JSON.stringify(v));
}

/** The settings that differ between two `ip -d -j link` records, as `key: ours ≠ theirs`. */
export function diffLinks(
  ours: Record<string, unknown> | undefined,
  theirs: Record<string, unknown> | undefined,
): string[] {
  if (!ours || !theirs) return [`missing: ${ours ? 'hand-built' : 'ours'}`];
  const a = new Map<string, string>();
  const b = new Map<string, string>();
  flatten(ours, '', a);
  flatten(theirs, '', b);
  const out: string[] = [];
  for (const k of [...new Set([...a.keys(), ...b.keys()])].sort()) {
    if (a.get(k) !== b.get(k)) out.push(`${k}: ${a.get(k) ?? '-'} ≠ ${b.get(k) ?? '-'}`);
  }
  return out;
}
