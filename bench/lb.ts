/**
 * The load balancer (issue 7), ours vs the kernel tools and vs no load balancer, in one run:
 *
 * - program_ms: 1,000 services × 10 backends (--services, --backends) programmed by our
 *   NftBackend.apply() into an empty namespace (after a warm-up apply, as a running meshd would
 *   be warm) vs `nft -f` of the very ruleset text NftBackend generates for that state
 *   (bench/lib/lb-nft.ts). Target: ours/peer ≤ 1.0.
 * - with --vm, the same with IpvsBackend vs `ipvsadm --restore` inside the kernel VM (one boot,
 *   bench/lib/lb-ipvs.ts), reported as ipvs_program_ms / ipvsadm_restore_ms; the guest is
 *   emulated, so only their ratio means something.
 * - vip_req_per_s vs direct_req_per_s: namespaces client, lb and three backends (198.18.0.0/24
 *   underlay; the lb and backends also share 10.0.1.0/24), a VIP 10.0.9.10:80 in the lb's
 *   NftBackend balanced (rr) over the backends' :8080, each backend a small node HTTP server. A
 *   node load generator in the client (bench/lib/lb-http.ts: a new TCP connection per request,
 *   --concurrency 32, each measurement --seconds 5 or --requests 20,000, whichever comes first,
 *   after a 500 ms warm-up) runs against the VIP, then against one backend directly (the
 *   client reaches 10.0.1.0/24 on-link, no load balancer on the way). Sides alternate over
 *   --rounds (default 2, order VIP, direct, direct, VIP) so drift of the shared machine's load
 *   hits both alike; rates are summed over rounds, percentiles over all requests. Target:
 *   vip/direct ≥ 0.9. The VIP run must be answered by all three backends without errors, or the
 *   bench fails.
 *
 * `npm run bench -- lb [--vm] [--services N] [--backends M] [--seconds S] [--requests R]
 * [--concurrency C] [--rounds K] [--vm-timeout SEC]`. Ends with one JSON line
 * {"bench":"lb","backend":"nftables","ours":{"program_ms","vip_req_per_s",…},
 *  "peer":{"program_ms","direct_req_per_s",…},…}. Everything runs in namespaces the bench
 * creates and removes, also on failure or SIGINT/SIGTERM; without --vm a run takes well under
 * 2 minutes.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { NftBackend } from '../src/lb/nft.js';
import type { LbService } from '../src/lb/types.js';
import { TestNet, type TestHost } from '../test/lib/testnet.js';
import { benchLbNft } from './lib/lb-nft.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const HTTP = `${root}dist/bench/lib/lb-http.js`;
const IPVS = `${root}dist/bench/lib/lb-ipvs.js`;
const VM_RUN = `${root}scripts/vm/run`;
const VIP = '10.0.9.10';
const WARMUP_MS = 500;

interface Opts {
  vm: boolean;
  services: number;
  backends: number;
  seconds: number;
  requests: number;
  concurrency: number;
  rounds: number;
  vmTimeout: number;
}

function parseArgs(args: string[]): Opts {
  const num = (name: string, def: number, min: number): number => {
    const i = args.indexOf(name);
    if (i < 0) return def;
    const v = Number(args[i + 1]);
    if (!Number.isFinite(v) || v < min)
      throw new Error(`bench lb: ${name} wants a number ≥ ${min}`);
    return v;
  };
  const known = new Set([
    '--vm',
    '--services',
    '--backends',
    '--seconds',
    '--requests',
    '--concurrency',
    '--rounds',
    '--vm-timeout',
  ]);
  for (const a of args)
    if (a.startsWith('--') && !known.has(a)) throw new Error(`bench lb: unknown option ${a}`);
  return {
    vm: args.includes('--vm'),
    services: num('--services', 1000, 1),
    backends: num('--backends', 10, 1),
    seconds: num('--seconds', 5, 0.5),
    requests: num('--requests', 20_000, 100),
    concurrency: num('--concurrency', 32, 1),
    rounds: num('--rounds', 2, 1),
    vmTimeout: num('--vm-timeout', 600, 60),
  };
}

const log = (s: string): void => void process.stdout.write(`lb: ${s}\n`);

/** Output of a child process, bounded in time (SIGKILL at the limit). */
function collect(
  child: ChildProcess,
  limitMs: number,
  what: string,
): Promise<{ stdout: string; stderr: string; code: number | null }> {
  return new Promise((resolve, reject) => {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`bench lb: ${what} did not finish within ${limitMs} ms`));
    }, limitMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        code,
      });
    });
  });
}

/** Resolves on the child's first stdout line `ready`; rejects if it exits or takes too long. */
function ready(child: ChildProcess, what: string, limitMs = 10_000): Promise<void> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`bench lb: ${what} not ready`)), limitMs);
    child.stdout?.on('data', (b: Buffer) => {
      buf += b.toString();
      if (buf.includes('ready\n')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`bench lb: ${what} exited ${code} before it was ready`));
    });
  });
}

interface LoadResult {
  ok: number;
  errors: number;
  window_ms: number;
  req_per_s: number;
  p50_ms: number;
  p99_ms: number;
  by: Record<string, number>;
  first_error?: string;
  lat_ms: number[];
}

async function loadRun(client: TestHost, o: Opts, host: string, port: number): Promise<LoadResult> {
  const child = client.spawn(
    process.execPath,
    [
      HTTP,
      'load',
      host,
      String(port),
      String(o.seconds),
      String(o.requests),
      String(o.concurrency),
      String(WARMUP_MS),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const r = await collect(child, o.seconds * 1000 + WARMUP_MS + 20_000, `load ${host}:${port}`);
  const line = r.stdout.trim().split('\n').pop() ?? '';
  if (r.code !== 0 || !line.startsWith('{'))
    throw new Error(`bench lb: load ${host}:${port} exited ${r.code}: ${r.stderr.slice(0, 500)}`);
  return JSON.parse(line) as LoadResult;
}

const pct = (sorted: number[], p: number): number =>
  sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]! : NaN;
const r2 = (x: number): number => Math.round(x * 100) / 100;

interface Side {
  req_per_s: number;
  p50_ms: number;
  p99_ms: number;
  requests: number;
  errors: number;
  rounds_req_per_s: number[];
  by: Record<string, number>;
}

function summarize(rs: LoadResult[]): Side {
  const lat = rs.flatMap((r) => r.lat_ms).sort((a, b) => a - b);
  const ok = rs.reduce((s, r) => s + r.ok, 0);
  const ms = rs.reduce((s, r) => s + r.window_ms, 0);
  const by: Record<string, number> = {};
  for (const r of rs) for (const [k, v] of Object.entries(r.by)) by[k] = (by[k] ?? 0) + v;
  return {
    req_per_s: ms > 0 ? Math.round((ok * 1000) / ms) : 0,
    p50_ms: r2(pct(lat, 0.5)),
    p99_ms: r2(pct(lat, 0.99)),
    requests: ok,
    errors: rs.reduce((s, r) => s + r.errors, 0),
    rounds_req_per_s: rs.map((r) => r.req_per_s),
    by,
  };
}

/** Client → VIP (via the lb) and client → one backend directly, alternating over rounds. */
async function traffic(o: Opts): Promise<{ vip: Side; direct: Side }> {
  const net = TestNet.create({ hosts: 5 });
  try {
    const [client, lbHost, ...backs] = net.hosts as [TestHost, TestHost, ...TestHost[]];
    lbHost.run('ip', ['addr', 'add', '10.0.1.2/24', 'dev', 'eth0']);
    lbHost.run('sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
    // The lb forwards out of the interface it received on: no ICMP redirects to the client.
    lbHost.run('sysctl', ['-qw', 'net.ipv4.conf.all.send_redirects=0']);
    lbHost.run('sysctl', ['-qw', 'net.ipv4.conf.eth0.send_redirects=0']);
    client.run('ip', ['route', 'add', `${VIP}/32`, 'via', lbHost.addr]);
    // Direct: the tasks' subnet on-link, no lb in between.
    client.run('ip', ['route', 'add', '10.0.1.0/24', 'dev', 'eth0']);
    // Tens of thousands of short connections: the whole port range, and TIME_WAIT ports reused
    // (the client closes second, so the server side holds TIME_WAIT, but be safe).
    client.run('sysctl', ['-qw', 'net.ipv4.ip_local_port_range=1024 65000']);
    client.run('sysctl', ['-qw', 'net.ipv4.tcp_tw_reuse=1']);
    const ips: string[] = [];
    for (const [i, b] of backs.entries()) {
      const ip = `10.0.1.${10 + i}`;
      ips.push(ip);
      b.run('ip', ['addr', 'add', `${ip}/24`, 'dev', 'eth0']);
      // Replies to the client's underlay address go straight back on the direct path.
      const srv = b.spawn(process.execPath, [HTTP, 'server', `b${i + 1}`, '8080'], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      await ready(srv, `server b${i + 1}`);
    }
    const lb = new NftBackend({ netns: lbHost.ns });
    const svc: LbService = {
      key: 'vip:bench:web',
      fwmark: 256,
      protocol: 'tcp',
      vip: VIP,
      port: 80,
      targetPort: 8080,
      scheduler: 'rr',
      backends: ips.map((ip, i) => ({
        ip,
        port: 8080,
        weight: 1,
        state: 'active' as const,
        task: `web.${i + 1}`,
      })),
    };
    await lb.apply([svc]);

    const vip: LoadResult[] = [];
    const direct: LoadResult[] = [];
    for (let r = 0; r < o.rounds; r++) {
      const order = r % 2 === 0 ? ['vip', 'direct'] : ['direct', 'vip'];
      for (const side of order) {
        const res =
          side === 'vip'
            ? await loadRun(client, o, VIP, 80)
            : await loadRun(client, o, ips[0]!, 8080);
        (side === 'vip' ? vip : direct).push(res);
        log(
          `round ${r + 1} ${side}: ${res.req_per_s} req/s, ${res.ok} ok, ${res.errors} errors, ` +
            `p50 ${res.p50_ms} ms, p99 ${res.p99_ms} ms, by ${JSON.stringify(res.by)}` +
            (res.first_error ? ` (first error: ${res.first_error})` : ''),
        );
      }
    }
    const v = summarize(vip);
    const d = summarize(direct);
    for (const [name, s] of [
      ['vip', v],
      ['direct', d],
    ] as const) {
      if (s.requests === 0 || s.errors > s.requests / 100)
        throw new Error(`bench lb: ${name}: ${s.errors} errors in ${s.requests} requests`);
    }
    const missing = ['b1', 'b2', 'b3'].filter((n) => !v.by[n]);
    if (missing.length)
      throw new Error(
        `bench lb: the VIP never reached ${missing.join(', ')}: ${JSON.stringify(v.by)}`,
      );
    return { vip: v, direct: d };
  } finally {
    net.destroy();
  }
}

interface VmResult {
  program_ms: number;
  peer_program_ms: number;
  noop_ms: number;
  add_one_ms: number;
  dests_ours: number;
  dests_peer: number;
}

let vmChild: ChildProcess | undefined;

/** One VM boot running bench/lib/lb-ipvs.js; its last stdout line is the result. */
async function ipvsInVm(o: Opts): Promise<VmResult> {
  vmChild = spawn(
    VM_RUN,
    [
      '--timeout',
      String(o.vmTimeout),
      '--cwd',
      root,
      '--',
      process.execPath,
      IPVS,
      String(o.services),
      String(o.backends),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  try {
    const r = await collect(vmChild, (o.vmTimeout + 60) * 1000, 'the kernel VM');
    const line = r.stdout.trim().split('\n').pop() ?? '';
    if (r.code !== 0 || !line.startsWith('{'))
      throw new Error(
        `bench lb: scripts/vm/run exited ${r.code}: ${r.stderr.trim().split('\n').slice(-8).join('; ')}`,
      );
    const v = JSON.parse(line) as VmResult;
    const want = o.services * o.backends;
    if (v.dests_ours !== want || v.dests_peer !== want)
      throw new Error(
        `bench lb: ipvs destinations ours ${v.dests_ours}, ipvsadm ${v.dests_peer}, expected ${want}`,
      );
    return v;
  } finally {
    vmChild = undefined;
  }
}

export async function main(args: string[]): Promise<void> {
  const o = parseArgs(args);
  if (process.getuid?.() !== 0) throw new Error('bench lb: needs root (it creates namespaces)');
  if (spawnSync('nft', ['--version']).status !== 0)
    throw new Error('bench lb: nft (nftables) is not installed');
  // TestNet's exit hook removes live nets; make signals go through process exit too.
  const onSignal = (sig: NodeJS.Signals): void => {
    vmChild?.kill('SIGTERM');
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const t0 = Date.now();

  log(`programming ${o.services} services × ${o.backends} backends: NftBackend vs nft -f`);
  const prog = await benchLbNft({ services: o.services, backends: o.backends });
  log(
    `program: ours ${prog.ours_ms} ms, nft -f ${prog.nft_ms} ms (ratio ${r2(prog.ours_ms / prog.nft_ms)}); ` +
      `noop ${prog.noop_ms} ms (full ${prog.noop_full_ms}), add one ${prog.add_one_ms} ms ` +
      `(full ${prog.add_one_full_ms}), ruleset ${prog.rules_bytes} bytes`,
  );

  log(
    `traffic: ${o.rounds} rounds, each side ${o.seconds} s or ${o.requests} requests, ` +
      `concurrency ${o.concurrency}, a new connection per request`,
  );
  const tr = await traffic(o);
  const ratio = r2(tr.vip.req_per_s / tr.direct.req_per_s);
  log(
    `traffic: VIP ${tr.vip.req_per_s} req/s (p50 ${tr.vip.p50_ms}, p99 ${tr.vip.p99_ms} ms), ` +
      `direct ${tr.direct.req_per_s} req/s (p50 ${tr.direct.p50_ms}, p99 ${tr.direct.p99_ms} ms), ` +
      `ratio ${ratio}`,
  );

  let vm: VmResult | undefined;
  if (o.vm) {
    log(`ipvs in the kernel VM: ${o.services} × ${o.backends}, IpvsBackend vs ipvsadm --restore`);
    vm = await ipvsInVm(o);
    log(
      `ipvs (emulated, ratio only): ours ${vm.program_ms} ms, ipvsadm --restore ` +
        `${vm.peer_program_ms} ms (ratio ${r2(vm.program_ms / vm.peer_program_ms)})`,
    );
  }
  log(`total ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  const res = {
    bench: 'lb',
    backend: 'nftables',
    services: o.services,
    backends: o.backends,
    ours: {
      program_ms: prog.ours_ms,
      vip_req_per_s: tr.vip.req_per_s,
      vip_p50_ms: tr.vip.p50_ms,
      vip_p99_ms: tr.vip.p99_ms,
      vip_rounds_req_per_s: tr.vip.rounds_req_per_s,
      vip_by_backend: tr.vip.by,
      noop_ms: prog.noop_ms,
      noop_full_ms: prog.noop_full_ms,
      add_one_ms: prog.add_one_ms,
      add_one_full_ms: prog.add_one_full_ms,
      ...(vm ? { ipvs_program_ms: vm.program_ms } : {}),
    },
    peer: {
      program_ms: prog.nft_ms,
      direct_req_per_s: tr.direct.req_per_s,
      direct_p50_ms: tr.direct.p50_ms,
      direct_p99_ms: tr.direct.p99_ms,
      direct_rounds_req_per_s: tr.direct.rounds_req_per_s,
      ...(vm ? { ipvsadm_restore_ms: vm.peer_program_ms } : {}),
    },
    program_ratio: r2(prog.ours_ms / prog.nft_ms),
    req_ratio: ratio,
    ...(vm ? { ipvs_program_ratio: r2(vm.program_ms / vm.peer_program_ms) } : {}),
  };
  process.stdout.write(JSON.stringify(res) + '\n');
}
