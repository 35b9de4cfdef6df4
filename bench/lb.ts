/**
 * The load balancer (issue 7), ours vs the kernel tools and vs no load balancer, in one run:
 *
 * - program_ms: 1,000 services × 10 backends (--services, --backends) programmed by our
 *   NftBackend.apply() into an empty namespace (after a warm-up apply, as a running meshd would
 *   be warm) vs `nft -f` of the very ruleset text NftBackend generates for that state
 *   (bench/lib/lb-nft.ts), --program-rounds times (default 3; medians reported, the per-round
 *   figures too). Target: ours/peer ≤ 1.0.
 * - with --vm, the same with IpvsBackend vs `ipvsadm --restore` inside the kernel VM (one boot,
 *   bench/lib/lb-ipvs.ts), reported as ipvs_program_ms / ipvsadm_restore_ms; the guest is
 *   emulated, so only their ratio means something.
 * - vip_req_per_s vs direct_req_per_s: namespaces client, lb and three backends (198.18.0.0/24
 *   underlay; the lb and backends also share 10.0.1.0/24), a VIP 10.0.9.10:80 in the lb's
 *   NftBackend balanced (rr) over the backends' :8080, each backend a small node HTTP server. A
 *   node load generator in the client (bench/lib/lb-http.ts: a new TCP connection per request,
 *   --concurrency 32, each measurement --seconds 2 or --requests 20,000, whichever comes first,
 *   after a 500 ms warm-up) runs against the VIP and against one backend directly (the client
 *   reaches 10.0.1.0/24 on-link, no load balancer on the way). For information also: directly
 *   over all three backends in turn (direct_all: the same three server processes as behind the
 *   VIP) and through the lb namespace as a plain router to a second address of backend 1
 *   (routed: the VIP's hops, replies back through the lb too, but no DNAT or masquerade), so
 *   VIP/direct_all and VIP/routed tell the extra hop's cost from the load balancer's own.
 *   Sides alternate over --rounds (default 6; odd rounds VIP, direct, direct_all, routed, even
 *   rounds the reverse): on this shared 2-core machine single runs vary 2-3x with other work,
 *   and many short alternating rounds hit all sides alike. Rates are summed over rounds,
 *   percentiles taken over all requests; req_ratio_paired is the median of the per-round
 *   ratios, the steadier figure. busy_pct is the share of the whole machine's CPU that was busy
 *   during each run (near 100: the rate measures CPU cost per request, everything included).
 *   Target: vip/direct ≥ 0.9. The VIP must be answered by all three backends, and no side may
 *   have more than 1% errors, or the bench fails.
 *
 * `npm run bench -- lb [--vm] [--services N] [--backends M] [--seconds S] [--requests R]
 * [--concurrency C] [--rounds K] [--program-rounds P] [--vm-timeout SEC]`. Ends with one JSON line
 * {"bench":"lb","backend":"nftables","ours":{"program_ms","vip_req_per_s",…},
 *  "peer":{"program_ms","direct_req_per_s",…},…}. Everything runs in namespaces the bench
 * creates and removes, also on failure or SIGINT/SIGTERM; without --vm a run takes about
 * 1.5 minutes (the VM adds about 2).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { NftBackend } from '../src/lb/nft.js';
import { collectChild } from '../src/util/exec.js';
import type { LbService } from '../src/lb/types.js';
import { TestNet, type TestHost } from '../test/lib/testnet.js';
import { benchLbNft, type LbNftResult } from './lib/lb-nft.js';

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
  programRounds: number;
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
    '--program-rounds',
    '--vm-timeout',
  ]);
  for (const a of args)
    if (a.startsWith('--') && !known.has(a)) throw new Error(`bench lb: unknown option ${a}`);
  return {
    vm: args.includes('--vm'),
    services: num('--services', 1000, 1),
    backends: num('--backends', 10, 1),
    seconds: num('--seconds', 2, 0.5),
    requests: num('--requests', 20_000, 100),
    concurrency: num('--concurrency', 32, 1),
    rounds: num('--rounds', 6, 1),
    programRounds: num('--program-rounds', 3, 1),
    vmTimeout: num('--vm-timeout', 600, 60),
  };
}

const log = (s: string): void => void process.stdout.write(`lb: ${s}\n`);

/** Output of a child process, bounded in time (SIGKILL at the limit). */
async function collect(
  child: ChildProcess,
  limitMs: number,
  what: string,
): Promise<{ stdout: string; stderr: string; code: number | null }> {
  const r = await collectChild(child, { timeoutMs: limitMs });
  if (r.timedOut) throw new Error(`bench lb: ${what} did not finish within ${limitMs} ms`);
  return r;
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

type SideName = 'vip' | 'direct' | 'direct_all' | 'routed';
const SIDES: readonly SideName[] = ['vip', 'direct', 'direct_all', 'routed'];
/** b1's second address, reached through the lb namespace as a plain router (no DNAT). */
const ROUTED = '10.0.2.10';

/** Busy and total jiffies of the whole machine (/proc/stat, all CPUs; man 5 proc). */
function cpuTimes(): { busy: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8')
    .split('\n')[0]!
    .trim()
    .split(/\s+/)
    .slice(1)
    .map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), total };
}

const busyPct = (a: { busy: number; total: number }, b: { busy: number; total: number }): number =>
  Math.round(((b.busy - a.busy) * 100) / Math.max(1, b.total - a.total));

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
  /** Share of the whole machine's CPU time that was busy during the run (all processes). */
  busy_pct?: number;
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
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

interface Side {
  req_per_s: number;
  p50_ms: number;
  p99_ms: number;
  requests: number;
  errors: number;
  rounds_req_per_s: number[];
  rounds_busy_pct: number[];
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
    rounds_busy_pct: rs.map((r) => r.busy_pct ?? NaN),
    by,
  };
}

/** Client → VIP (via the lb) and client → one backend directly, alternating over rounds. */
async function traffic(o: Opts): Promise<Record<SideName, Side>> {
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
    // Routed: the client reaches b1's second address through the lb namespace, both ways (b1
    // answers from it via the lb by a source rule), the same hops as the VIP without DNAT and
    // masquerade; the lb's conntrack still sees it, as it does once our nat table exists.
    const b1 = backs[0]!;
    b1.run('ip', ['addr', 'add', `${ROUTED}/32`, 'dev', 'eth0']);
    b1.run('ip', ['rule', 'add', 'from', ROUTED, 'table', '100']);
    b1.run('ip', ['route', 'add', 'default', 'via', '10.0.1.2', 'table', '100']);
    lbHost.run('ip', ['route', 'add', `${ROUTED}/32`, 'via', ips[0]!]);
    client.run('ip', ['route', 'add', `${ROUTED}/32`, 'via', lbHost.addr]);
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

    const runs: Record<SideName, LoadResult[]> = {
      vip: [],
      direct: [],
      direct_all: [],
      routed: [],
    };
    const target: Record<SideName, [string, number]> = {
      vip: [VIP, 80],
      direct: [ips[0]!, 8080],
      direct_all: [ips.join(','), 8080],
      routed: [ROUTED, 8080],
    };
    for (let r = 0; r < o.rounds; r++) {
      const order = r % 2 === 0 ? SIDES : [...SIDES].reverse();
      for (const side of order) {
        const c0 = cpuTimes();
        const res = await loadRun(client, o, ...target[side]);
        res.busy_pct = busyPct(c0, cpuTimes());
        runs[side].push(res);
        log(
          `round ${r + 1} ${side}: ${res.req_per_s} req/s, ${res.ok} ok, ${res.errors} errors, ` +
            `p50 ${res.p50_ms} ms, p99 ${res.p99_ms} ms, host cpu busy ${res.busy_pct}%, ` +
            `by ${JSON.stringify(res.by)}` +
            (res.first_error ? ` (first error: ${res.first_error})` : ''),
        );
      }
    }
    const v = summarize(runs.vip);
    const d = summarize(runs.direct);
    const da = summarize(runs.direct_all);
    const ro = summarize(runs.routed);
    for (const [name, s] of [
      ['vip', v],
      ['direct', d],
      ['direct_all', da],
      ['routed', ro],
    ] as const) {
      if (s.requests === 0 || s.errors > s.requests / 100)
        throw new Error(`bench lb: ${name}: ${s.errors} errors in ${s.requests} requests`);
    }
    const missing = ['b1', 'b2', 'b3'].filter((n) => !v.by[n]);
    if (missing.length)
      throw new Error(
        `bench lb: the VIP never reached ${missing.join(', ')}: ${JSON.stringify(v.by)}`,
      );
    return { vip: v, direct: d, direct_all: da, routed: ro };
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
  const progs: LbNftResult[] = [];
  for (let i = 0; i < o.programRounds; i++) {
    const p = await benchLbNft({ services: o.services, backends: o.backends });
    progs.push(p);
    log(
      `program round ${i + 1}: ours ${p.ours_ms} ms, nft -f ${p.nft_ms} ms ` +
        `(ratio ${r2(p.ours_ms / p.nft_ms)}); noop ${p.noop_ms} ms (full ${p.noop_full_ms}), ` +
        `add one ${p.add_one_ms} ms (full ${p.add_one_full_ms}), ruleset ${p.rules_bytes} bytes`,
    );
  }
  const med = (k: keyof LbNftResult): number => Math.round(median(progs.map((p) => p[k])));
  const prog = {
    ours_ms: med('ours_ms'),
    nft_ms: med('nft_ms'),
    noop_ms: med('noop_ms'),
    noop_full_ms: med('noop_full_ms'),
    add_one_ms: med('add_one_ms'),
    add_one_full_ms: med('add_one_full_ms'),
  };
  const progRatio = r2(median(progs.map((p) => p.ours_ms / p.nft_ms)));
  log(
    `program (medians of ${progs.length}): ours ${prog.ours_ms} ms, nft -f ${prog.nft_ms} ms, ` +
      `ratio ${r2(prog.ours_ms / prog.nft_ms)} (median of rounds ${progRatio})`,
  );

  log(
    `traffic: ${o.rounds} rounds, each side ${o.seconds} s or ${o.requests} requests, ` +
      `concurrency ${o.concurrency}, a new connection per request`,
  );
  const tr = await traffic(o);
  const ratio = r2(tr.vip.req_per_s / tr.direct.req_per_s);
  const ratioAll = r2(tr.vip.req_per_s / tr.direct_all.req_per_s);
  const ratioRouted = r2(tr.vip.req_per_s / tr.routed.req_per_s);
  const paired = (other: Side): number =>
    r2(median(tr.vip.rounds_req_per_s.map((v, i) => v / (other.rounds_req_per_s[i] ?? NaN))));
  log(
    `traffic: VIP ${tr.vip.req_per_s} req/s (p50 ${tr.vip.p50_ms}, p99 ${tr.vip.p99_ms} ms), ` +
      `direct ${tr.direct.req_per_s} req/s (p50 ${tr.direct.p50_ms}, p99 ${tr.direct.p99_ms} ms), ` +
      `ratio ${ratio} (median of rounds ${paired(tr.direct)}); direct over all 3 backends ${tr.direct_all.req_per_s} req/s ` +
      `(p50 ${tr.direct_all.p50_ms}, p99 ${tr.direct_all.p99_ms} ms), VIP/that ${ratioAll}; ` +
      `routed through the lb without DNAT ${tr.routed.req_per_s} req/s (p50 ` +
      `${tr.routed.p50_ms}, p99 ${tr.routed.p99_ms} ms), VIP/that ${ratioRouted}`,
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
      program_rounds_ms: progs.map((p) => p.ours_ms),
      vip_req_per_s: tr.vip.req_per_s,
      vip_p50_ms: tr.vip.p50_ms,
      vip_p99_ms: tr.vip.p99_ms,
      vip_rounds_req_per_s: tr.vip.rounds_req_per_s,
      vip_rounds_busy_pct: tr.vip.rounds_busy_pct,
      vip_by_backend: tr.vip.by,
      noop_ms: prog.noop_ms,
      noop_full_ms: prog.noop_full_ms,
      add_one_ms: prog.add_one_ms,
      add_one_full_ms: prog.add_one_full_ms,
      ...(vm ? { ipvs_program_ms: vm.program_ms } : {}),
    },
    peer: {
      program_ms: prog.nft_ms,
      program_rounds_ms: progs.map((p) => p.nft_ms),
      direct_req_per_s: tr.direct.req_per_s,
      direct_p50_ms: tr.direct.p50_ms,
      direct_p99_ms: tr.direct.p99_ms,
      direct_rounds_req_per_s: tr.direct.rounds_req_per_s,
      direct_rounds_busy_pct: tr.direct.rounds_busy_pct,
      direct_all_req_per_s: tr.direct_all.req_per_s,
      direct_all_p50_ms: tr.direct_all.p50_ms,
      direct_all_p99_ms: tr.direct_all.p99_ms,
      direct_all_rounds_req_per_s: tr.direct_all.rounds_req_per_s,
      direct_all_rounds_busy_pct: tr.direct_all.rounds_busy_pct,
      routed_req_per_s: tr.routed.req_per_s,
      routed_p50_ms: tr.routed.p50_ms,
      routed_p99_ms: tr.routed.p99_ms,
      routed_rounds_req_per_s: tr.routed.rounds_req_per_s,
      routed_rounds_busy_pct: tr.routed.rounds_busy_pct,
      ...(vm ? { ipvsadm_restore_ms: vm.peer_program_ms } : {}),
    },
    program_ratio: r2(prog.ours_ms / prog.nft_ms),
    program_ratio_paired: progRatio,
    req_ratio: ratio,
    req_ratio_vs_all: ratioAll,
    req_ratio_vs_routed: ratioRouted,
    req_ratio_paired: paired(tr.direct),
    req_ratio_vs_all_paired: paired(tr.direct_all),
    req_ratio_vs_routed_paired: paired(tr.routed),
    ...(vm ? { ipvs_program_ratio: r2(vm.program_ms / vm.peer_program_ms) } : {}),
  };
  process.stdout.write(JSON.stringify(res) + '\n');
}
