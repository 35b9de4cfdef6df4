// vm-timeout: 240
// (a whole run: 99 s in the VM under host load 10–20; a normal run takes at most half of it)
// Runs inside the Debian kernel VM (scripts/vm/suite): the IPVS load-balancer backend
// (src/lb/ipvs.ts over src/netlink/ipvs.ts) against the real kernel, checked with ipvsadm,
// an independent client of the same tables. Fails (never skips) inside the VM.
//  1. a fwmark service with 3 masquerade destinations: ipvsadm -Ln matches read(); a second
//     apply changes nothing; drift made by hand is repaired and counted; draining shows as
//     weight 0; unhealthy is removed; scheduler and timeouts follow; flush() and apply() leave
//     other services (a low-mark and an address service made with ipvsadm) alone;
//  2. real traffic: client namespace -> marked VIP in a load-balancer namespace -> 3 backend
//     namespaces with tiny TCP servers: every backend answers, and the per-destination
//     connection and traffic counters of read() equal `ipvsadm -Ln --stats --exact`.
import t from 'tap';
import type { Test } from 'tap';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { IpvsBackend, benchIpvsProgram } from '../../src/lb/ipvs.js';
import type { LbService } from '../../src/lb/types.js';
import { Ipvs } from '../../src/netlink/ipvs.js';
import { netnsOpen, spawnInNetns, withNetns, type Netns } from '../../src/netlink/netns.js';
import { requireVm } from '../lib/require.js';

requireVm('ipvs.test');

function run(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, {
    encoding: 'utf8',
    stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    ...(input === undefined ? {} : { input }),
  });
}

/** A fresh named namespace with lo up, opened; deleted in teardown. */
function freshNetns(t: Test, what: string): { name: string; ns: Netns } {
  const name = `mvm-${process.pid}-${what}`;
  run('ip', ['netns', 'add', name]);
  // A fresh namespace has lo down; IPVS refuses masquerade destinations until it is up.
  run('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  const ns = netnsOpen(name);
  t.teardown(() => {
    ns.close();
    try {
      run('ip', ['netns', 'del', name]);
    } catch {
      // already gone
    }
  });
  return { name, ns };
}

const ipvsadm = (ns: string, args: string[]): string =>
  run('ip', ['netns', 'exec', ns, 'ipvsadm', ...args]);

interface AdmDest {
  addr: string;
  port: number;
  forward: string;
  weight: number;
  active: number;
  inact: number;
}

/** `ipvsadm -Ln` parsed: fwmark services (mark -> scheduler, dests) and other service lines. */
function parseList(out: string): {
  fwm: Map<number, { sched: string; dests: AdmDest[] }>;
  other: string[];
} {
  const fwm = new Map<number, { sched: string; dests: AdmDest[] }>();
  const other: string[] = [];
  let cur: AdmDest[] | undefined;
  for (const line of out.split('\n')) {
    const s = /^FWM\s+(\d+)\s+(\S+)/.exec(line);
    if (s) {
      cur = [];
      fwm.set(Number(s[1]), { sched: s[2]!, dests: cur });
      continue;
    }
    if (/^(TCP|UDP|SCTP)\s/.test(line)) {
      other.push(line.trim().replace(/\s+/g, ' '));
      cur = undefined;
      continue;
    }
    const d = /^\s+->\s+([\d.]+):(\d+)\s+(\w+)\s+(\d+)\s+(\d+)\s+(\d+)/.exec(line);
    if (d && cur) {
      cur.push({
        addr: d[1]!,
        port: Number(d[2]),
        forward: d[3]!,
        weight: Number(d[4]),
        active: Number(d[5]),
        inact: Number(d[6]),
      });
    }
  }
  return { fwm, other };
}

/** `ipvsadm -Ln --stats --exact`: per destination of mark `fwmark`, conns/packets/bytes. */
function parseStats(
  out: string,
  fwmark: number,
): Map<string, { conns: number; packets: number; bytes: number }> {
  const m = new Map<string, { conns: number; packets: number; bytes: number }>();
  let inside = false;
  for (const line of out.split('\n')) {
    const s = /^(FWM|TCP|UDP)\s+(\S+)/.exec(line);
    if (s) {
      inside = s[1] === 'FWM' && Number(s[2]) === fwmark;
      continue;
    }
    const d = /^\s+->\s+([\d.]+:\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/.exec(line);
    if (d && inside) {
      m.set(d[1]!, {
        conns: Number(d[2]),
        packets: Number(d[3]) + Number(d[4]),
        bytes: Number(d[5]) + Number(d[6]),
      });
    }
  }
  return m;
}

const backendIps = ['10.77.11.2', '10.77.12.2', '10.77.13.2'];

function service(fwmark: number): LbService {
  return {
    key: `vip:net1:svc${fwmark}`,
    fwmark,
    protocol: 'tcp',
    vip: '10.77.100.1',
    port: 80,
    targetPort: 8080,
    scheduler: 'rr',
    backends: backendIps.map((ip, i) => ({
      ip,
      port: 8080,
      weight: 1,
      state: 'active' as const,
      task: `svc.${i + 1}`,
      node: 'n1',
    })),
  };
}

// ipvsadm and ip run emulated (TCG): the whole file needs more than tap's default 30 s.
t.setTimeout(280_000);

t.before(() => {
  run('modprobe', ['ip_vs']);
});

t.test('reconcile against ipvsadm: program, idempotence, drift, drain, flush', async (t) => {
  const { name, ns } = freshNetns(t, 'lbprog');
  const lb = new IpvsBackend({ netns: ns });
  t.teardown(() => lb.close());

  const svc = service(256);
  t.same(await lb.apply([svc]), { changes: 7 }, 'one service + 3 destinations + 3 sysctls');
  t.equal(
    run('ip', [
      'netns',
      'exec',
      name,
      'sysctl',
      '-n',
      'net.ipv4.vs.conntrack',
      'net.ipv4.vs.expire_nodest_conn',
      'net.ipv4.vs.expire_quiescent_template',
    ]),
    '1\n1\n1\n',
    'the IPVS sysctls are set inside the namespace',
  );
  t.equal(
    run('sysctl', ['-n', 'net.ipv4.vs.expire_nodest_conn']),
    '0\n',
    "and not in the VM's own",
  );
  t.same(await lb.apply([svc]), { changes: 0 }, 'second apply: nothing to do');

  const adm = parseList(ipvsadm(name, ['-Ln']));
  const read = await lb.read();
  t.equal(read.length, 1);
  const r = read[0]!;
  t.match(read[0], { key: svc.key, fwmark: 256, vip: '10.77.100.1', port: 80, scheduler: 'rr' });
  const a = adm.fwm.get(256);
  t.ok(a, 'ipvsadm shows FWM 256');
  t.equal(a?.sched, r.scheduler, 'same scheduler');
  const norm = (
    xs: Array<{ addr: string; port: number; weight: number; active: number; inact: number }>,
  ) => xs.map((x) => `${x.addr}:${x.port} w${x.weight} a${x.active} i${x.inact}`).sort();
  t.same(
    norm(
      r.backends.map((b) => ({
        addr: b.ip,
        port: b.port,
        weight: b.weight,
        active: b.activeConns ?? -1,
        inact: b.inactiveConns ?? -1,
      })),
    ),
    norm(a?.dests ?? []),
    'read() destinations equal ipvsadm -Ln',
  );
  t.same(
    (a?.dests ?? []).map((d) => d.forward),
    ['Masq', 'Masq', 'Masq'],
    'masquerade forwarding',
  );
  t.same(r.backends.map((b) => b.task).sort(), ['svc.1', 'svc.2', 'svc.3'], 'task names carried');

  // Drift made by hand is repaired and counted.
  ipvsadm(name, ['-d', '-f', '256', '-r', '10.77.12.2:8080']);
  t.equal(parseList(ipvsadm(name, ['-Ln'])).fwm.get(256)?.dests.length, 2, 'removed by hand');
  t.same(await lb.apply([svc]), { changes: 1 }, 'the missing destination is re-added');
  t.equal(parseList(ipvsadm(name, ['-Ln'])).fwm.get(256)?.dests.length, 3);
  ipvsadm(name, ['-e', '-f', '256', '-r', '10.77.11.2:8080', '-m', '-w', '7']);
  ipvsadm(name, ['-a', '-f', '256', '-r', '10.77.14.2:8080', '-m']);
  t.same(await lb.apply([svc]), { changes: 2 }, 'a changed weight and an extra destination');

  // Draining = weight 0, visible to ipvsadm; unhealthy = removed.
  svc.backends[1]!.state = 'draining';
  t.same(await lb.apply([svc]), { changes: 1 });
  const drained = parseList(ipvsadm(name, ['-Ln']))
    .fwm.get(256)
    ?.dests.find((d) => d.addr === '10.77.12.2');
  t.equal(drained?.weight, 0, 'ipvsadm shows weight 0');
  t.match(
    (await lb.read())[0]?.backends.find((b) => b.ip === '10.77.12.2'),
    { weight: 0, state: 'draining' },
  );
  svc.backends[2]!.state = 'unhealthy';
  t.same(await lb.apply([svc]), { changes: 1 });
  t.same(
    parseList(ipvsadm(name, ['-Ln']))
      .fwm.get(256)
      ?.dests.map((d) => d.addr)
      .sort(),
    ['10.77.11.2', '10.77.12.2'],
    'unhealthy backend not programmed',
  );

  // Scheduler and (namespace-wide) timeouts.
  svc.scheduler = 'wrr';
  svc.timeouts = { tcp: 600, udp: 60 };
  t.same(await lb.apply([svc]), { changes: 2 }, 'SET_SERVICE + SET_CONFIG');
  t.match(parseList(ipvsadm(name, ['-Ln'])).fwm.get(256), { sched: 'wrr' });
  t.match(ipvsadm(name, ['-L', '--timeout']), /Timeout \(tcp tcpfin udp\): 600 120 60/);
  t.same(await lb.apply([svc]), { changes: 0 });

  // Other services are not ours: apply() and flush() leave them alone.
  ipvsadm(name, ['-A', '-f', '7', '-s', 'rr']);
  ipvsadm(name, ['-a', '-f', '7', '-r', '10.77.50.2:80', '-m']);
  ipvsadm(name, ['-A', '-t', '10.77.100.9:80', '-s', 'lc']);
  t.same(await lb.apply([svc]), { changes: 0 }, 'foreign services are not drift');
  const svc2 = service(257);
  t.same(await lb.apply([svc, svc2]), { changes: 4 }, 'a second service');
  t.same(await lb.apply([svc2]), { changes: 1 }, 'the first one removed');
  t.same([...parseList(ipvsadm(name, ['-Ln'])).fwm.keys()].sort(), [257, 7], 'fwmark 7 kept');
  await lb.flush();
  const after = parseList(ipvsadm(name, ['-Ln']));
  t.same([...after.fwm.keys()], [7], 'flush removed ours, kept FWM 7');
  t.equal(after.fwm.get(7)?.dests.length, 1, 'with its destination');
  t.same(after.other, ['TCP 10.77.100.9:80 lc'], 'and the address service');
  t.same(await lb.read(), [], 'nothing of ours left');
});

t.test('errors carry advice', async (t) => {
  const { ns } = freshNetns(t, 'lberr');
  const h = Ipvs.open({ netns: ns });
  t.teardown(() => h.close());
  t.throws(() => h.delService({ fwmark: 999 }), /del ipvs service fwmark 999: .*no such service/);
  h.newService({ fwmark: 300 });
  t.throws(() => h.newService({ fwmark: 300 }), /already exists/);
  t.throws(
    () => h.newService({ fwmark: 301, scheduler: 'nosuch' }),
    /scheduler module not available/,
  );
  // A namespace whose lo never came up refuses masquerade destinations (EINVAL); the error says
  // what to do. (Bringing lo up and then down again does not reproduce it.)
  const downName = `mvm-${process.pid}-lbdown`;
  run('ip', ['netns', 'add', downName]);
  const down = netnsOpen(downName);
  t.teardown(() => {
    down.close();
    run('ip', ['netns', 'del', downName]);
  });
  const h2 = Ipvs.open({ netns: down });
  t.teardown(() => h2.close());
  h2.newService({ fwmark: 300 });
  t.throws(
    () => h2.newDest({ fwmark: 300 }, { addr: '10.0.0.2', port: 80 }),
    /add ipvs destination 10\.0\.0\.2:80 of service fwmark 300: .*bring lo up first/,
    'lo never up: the refusal says what to do',
  );
  run('ip', ['-n', downName, 'link', 'set', 'lo', 'up']);
  h2.newDest({ fwmark: 300 }, { addr: '10.0.0.2', port: 80 });
  t.equal(h2.dests({ fwmark: 300 }).length, 1, 'accepted once lo is up');
});

t.test('real traffic: client -> marked VIP -> 3 backend namespaces', async (t) => {
  const lbn = freshNetns(t, 'lb');
  const cl = freshNetns(t, 'cl');
  run('ip', ['netns', 'exec', lbn.name, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
  run('ip', ['-n', lbn.name, 'addr', 'add', '10.77.100.1/32', 'dev', 'lo']);
  run('ip', [
    'link',
    'add',
    'mvc0',
    'netns',
    cl.name,
    'type',
    'veth',
    'peer',
    'mvl0',
    'netns',
    lbn.name,
  ]);
  run('ip', ['-n', cl.name, 'addr', 'add', '10.77.1.2/24', 'dev', 'mvc0']);
  run('ip', ['-n', lbn.name, 'addr', 'add', '10.77.1.1/24', 'dev', 'mvl0']);
  run('ip', ['-n', cl.name, 'link', 'set', 'mvc0', 'up']);
  run('ip', ['-n', lbn.name, 'link', 'set', 'mvl0', 'up']);
  run('ip', ['-n', cl.name, 'route', 'add', '10.77.100.0/24', 'via', '10.77.1.1']);

  const servers: net.Server[] = [];
  t.teardown(() => servers.forEach((s) => s.close()));
  for (let i = 1; i <= 3; i++) {
    const b = freshNetns(t, `be${i}`);
    run('ip', [
      'link',
      'add',
      'mve0',
      'netns',
      b.name,
      'type',
      'veth',
      'peer',
      `mvl${i}`,
      'netns',
      lbn.name,
    ]);
    run('ip', ['-n', b.name, 'addr', 'add', `10.77.1${i}.2/24`, 'dev', 'mve0']);
    run('ip', ['-n', lbn.name, 'addr', 'add', `10.77.1${i}.1/24`, 'dev', `mvl${i}`]);
    run('ip', ['-n', b.name, 'link', 'set', 'mve0', 'up']);
    run('ip', ['-n', lbn.name, 'link', 'set', `mvl${i}`, 'up']);
    run('ip', ['-n', b.name, 'route', 'add', 'default', 'via', `10.77.1${i}.1`]);
    // listen() without a host binds synchronously, so the socket is created inside the namespace.
    const srv = withNetns(b.ns, () =>
      net.createServer((s) => s.end(`backend-${i}\n`)).listen(8080),
    );
    servers.push(srv);
  }
  await Promise.all(
    servers.map((s) =>
      s.listening ? Promise.resolve() : new Promise<void>((r) => s.once('listening', () => r())),
    ),
  );

  const lb = new IpvsBackend({ netns: lbn.ns, markRules: true });
  t.teardown(() => lb.close());
  const svc = service(256);
  t.same(
    await lb.apply([svc]),
    { changes: 8 },
    '1 service + 3 destinations + 3 sysctls + the marking table',
  );
  t.match(
    run('ip', ['netns', 'exec', lbn.name, 'nft', 'list', 'table', 'ip', 'mesh-lb-mark']),
    /ip daddr 10\.77\.100\.1 tcp dport 80 meta mark set 0x00000100/,
  );
  t.same(await lb.apply([svc]), { changes: 0 }, 'unchanged marks are not rewritten');

  // Client: 9 sequential connections from its own namespace, one reply line each.
  const client = `
    const net = require('node:net');
    (async () => {
      for (let i = 0; i < 9; i++) {
        const line = await new Promise((res, rej) => {
          const s = net.connect({ host: '10.77.100.1', port: 80 });
          let d = '';
          s.setTimeout(10000, () => { s.destroy(); rej(new Error('timeout')); });
          s.on('data', (b) => (d += b));
          s.on('end', () => res(d.trim()));
          s.on('error', rej);
        });
        console.log(line);
      }
    })().catch((e) => { console.error(String(e)); process.exit(1); });`;
  const out = await new Promise<string>((resolve, reject) => {
    const c = spawnInNetns(cl.ns, process.execPath, ['-e', client], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let o = '';
    let e = '';
    const timer = setTimeout(() => c.kill('SIGKILL'), 120_000);
    c.stdout?.on('data', (b: Buffer) => (o += b.toString()));
    c.stderr?.on('data', (b: Buffer) => (e += b.toString()));
    c.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(o);
      else reject(new Error(`client exit ${code}: ${e}`));
    });
  });
  const answers = out.trim().split('\n');
  t.equal(answers.length, 9, 'every connection answered');
  t.same(
    [...new Set(answers)].sort(),
    ['backend-1', 'backend-2', 'backend-3'],
    'every backend answered',
  );
  const counts = new Map<string, number>();
  for (const a of answers) counts.set(a, (counts.get(a) ?? 0) + 1);
  t.same([...counts.values()], [3, 3, 3], 'rr: 3 connections each');

  // IPVS refreshes its counters every 2 s (the rate estimator): let them settle, then compare.
  await sleep(4500);
  const read = (await lb.read())[0];
  const stats = parseStats(ipvsadm(lbn.name, ['-Ln', '--stats', '--exact']), 256);
  const list = parseList(ipvsadm(lbn.name, ['-Ln'])).fwm.get(256);
  t.equal(stats.size, 3, 'ipvsadm shows 3 destinations with stats');
  for (const b of read?.backends ?? []) {
    const s = stats.get(`${b.ip}:${b.port}`);
    const l = list?.dests.find((d) => d.addr === b.ip);
    t.ok(s && s.conns === 3, `${b.ip}: 3 connections scheduled`);
    t.ok((b.packets ?? 0) > 0, `${b.ip}: packets counted`);
    t.same(
      { packets: b.packets, bytes: b.bytes, active: b.activeConns, inact: b.inactiveConns },
      { packets: s?.packets, bytes: s?.bytes, active: l?.active, inact: l?.inact },
      `${b.ip}: read() counters equal ipvsadm's`,
    );
  }
  t.comment(`ipvsadm -Ln --stats --exact:\n${ipvsadm(lbn.name, ['-Ln', '--stats', '--exact'])}`);
  await lb.flush();
  t.throws(
    () => run('ip', ['netns', 'exec', lbn.name, 'nft', 'list', 'table', 'ip', 'mesh-lb-mark']),
    'flush removed the marking table',
  );
});

const benchN = Number(process.env.MESH_IPVS_BENCH_N ?? 100);
t.test(`bench: ${benchN} services x 10 backends, ours vs ipvsadm --restore`, async (t) => {
  const a = freshNetns(t, 'bench');
  const b = freshNetns(t, 'benchpeer');
  const n = benchN;
  const r = await benchIpvsProgram({ netns: a.ns, peerNetns: b.ns, services: n, backends: 10 });
  t.comment(`bench ${JSON.stringify(r)}`);
  const count = (ns: string): number =>
    ipvsadm(ns, ['-Ln'])
      .split('\n')
      .filter((l) => /->\s+10\./.test(l)).length;
  t.equal(count(a.name), n * 10, 'ours programmed every destination');
  t.equal(count(b.name), n * 10, 'ipvsadm --restore programmed the same');
});
