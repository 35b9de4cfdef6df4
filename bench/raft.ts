/**
 * Raft, ours vs etcd, side by side in one run on the same machine: 3 meshd managers against 3
 * members of Debian's etcd 3.4 (default tuning, fsync on), each member in its own namespaced
 * host (ours 198.18.0.1–3, etcd 198.18.0.4–6), data dirs in tmp dirs on the same filesystem.
 * The load generator (bench/lib/load.ts) is a child process in a 7th host (198.18.0.7), the same
 * code for both sides; writers are spread round-robin over the 3 members, as etcd's
 * `benchmark put` spreads its connections over the endpoints (`--target leader` sends every
 * writer to the current leader instead, to show what forwarding from followers costs).
 *
 * Both clusters run for the whole bench and the measurements alternate between them (level by
 * level, failover by failover, who goes first alternating too), so load from other work on this
 * shared machine falls on both sides alike; the idle cluster only sends heartbeats meanwhile.
 *
 * - writes_per_s_W, p50_ms_W, p99_ms_W for W = 1, 64, 256 concurrent writers: each writer a
 *   closed loop of sequential puts of a 16-byte value to its own key; 1 s warm-up, then
 *   `--seconds` (5) of measurement; latency is per put, as the client sees it. The three levels
 *   run `--rounds` (3) times, alternating sides each time, and the samples are merged: writes/s
 *   over all rounds, percentiles over every put of every round (this machine is shared, and
 *   one 5 s window swings by ±30 % with the other work on it).
 * - failover_p50_ms, failover_p99_ms over `--failovers` (7) kills: puts go to a surviving
 *   member, a new one every 5 ms; t0 = `kill -9` of the leader, t1 = the first acknowledgement
 *   of a put started at or after t0. After each kill the killed member is restarted on its data
 *   dir and the cluster must be healthy again (one leader, a write through every member) before
 *   the next. With 7 kills p99 is the worst one.
 *
 * Ends with one JSON line {"bench":"raft","ours":{…},"peer":{…}} (peer = etcd). A side that
 * cannot run gives {"error": …} and the exit status is 1. `--only ours|etcd` runs one side;
 * `--etcd-client grpc` puts to etcd over its native gRPC API instead of the JSON gateway: the
 * gateway is an in-process proxy (JSON, then a gRPC call to itself) that costs etcd CPU; on
 * this machine etcd over gRPC did ≈ 1.5× the gateway's writes/s at 64 and ≈ 1.7× at 256
 * writers, with a lower p99 (2026-11-22). The default is the gateway (the brief's choice).
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { TestNet } from '../test/lib/testnet.js';
import { EtcdCluster, checkEtcd } from './lib/etcd.js';
import { LoadWorker, percentile, type BenchCluster } from './lib/load.js';
import { MeshCluster } from './lib/meshcluster.js';

const LEVELS = [1, 64, 256] as const;
const WARMUP_MS = 1000;

type Side = 'ours' | 'etcd';
type Result = Record<string, number> | { error: string } | null;

interface Run {
  side: Side;
  dir: string;
  cluster: BenchCluster;
  /** Per writer count: latencies of every round merged, and the writes and seconds summed. */
  levels: Map<number, { latencies: number[]; writes: number; seconds: number }>;
  failovers: number[];
  error?: string;
}

const note = (s: string): void => void process.stderr.write(`bench raft: ${s}\n`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** CPU time (user+system) of a process so far, ms (man 5 proc: utime, stime in clock ticks). */
function cpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * 10;
  } catch {
    return NaN;
  }
}

/** Last lines of each member's log, for a failed side (its tmp dir is removed afterwards). */
function tails(dir: string): string {
  let out = '';
  for (const f of readdirSync(dir)
    .filter((x) => x.endsWith('.log'))
    .sort()) {
    const lines = readFileSync(join(dir, f), 'utf8').trimEnd().split('\n').slice(-15);
    out += `--- ${f}\n${lines.join('\n')}\n`;
  }
  return out;
}

/** Run one step for a side; a failure marks the side failed and stops it being measured. */
async function step(run: Run, what: string, fn: () => Promise<void>): Promise<void> {
  if (run.error !== undefined) return;
  try {
    await fn();
  } catch (e) {
    run.error = `${what}: ${(e as Error).message}`;
    note(`${run.side}: ${run.error}`);
    process.stderr.write(tails(run.dir));
    await run.cluster.stop().catch(() => undefined);
  }
}

async function level(
  run: Run,
  worker: LoadWorker,
  w: number,
  opts: { seconds: number; toLeader: boolean },
): Promise<void> {
  const c = run.cluster;
  const seconds = opts.seconds;
  const pids = c.targets.map((_, i) => c.pid(i));
  const cpu0 = pids.map(cpuMs);
  const targets = opts.toLeader ? [c.targets[await c.leader()]!] : c.targets;
  const r = await worker.level(targets, w, WARMUP_MS, seconds * 1000);
  const memberCpu = pids.reduce((a, p, i) => a + cpuMs(p) - cpu0[i]!, 0);
  const wall = WARMUP_MS + seconds * 1000;
  note(
    `${run.side}: ${w} writers: ${r.writes_per_s} writes/s, p50 ${r.p50_ms} ms, p99 ${r.p99_ms} ms; ` +
      `cpu: members ${(memberCpu / wall).toFixed(2)} cores, client ${(r.clientCpuMs / wall).toFixed(2)}` +
      (r.errors ? `; ${r.errors} errors, first: ${r.firstError ?? ''}` : ''),
  );
  if (r.writes === 0) throw new Error(`no write acknowledged (${r.firstError ?? 'no error'})`);
  const acc = run.levels.get(w) ?? { latencies: [], writes: 0, seconds: 0 };
  acc.latencies.push(...r.latencies);
  acc.writes += r.writes;
  acc.seconds += r.seconds;
  run.levels.set(w, acc);
}

/** The JSON keys of one side from its merged rounds. */
function summary(run: Run): Record<string, number> {
  const out: Record<string, number> = {};
  for (const w of LEVELS) {
    const l = run.levels.get(w)!;
    const lat = [...l.latencies].sort((a, b) => a - b);
    out[`writes_per_s_${w}`] = Math.round(l.writes / l.seconds);
    out[`p50_ms_${w}`] = percentile(lat, 0.5);
    out[`p99_ms_${w}`] = percentile(lat, 0.99);
  }
  const t = [...run.failovers].sort((a, b) => a - b);
  out.failover_p50_ms = Math.round(percentile(t, 0.5));
  out.failover_p99_ms = Math.round(percentile(t, 0.99));
  return out;
}

async function failover(run: Run, worker: LoadWorker, k: number, of: number): Promise<void> {
  const c = run.cluster;
  await c.waitHealthy(60_000);
  await sleep(1000); // let the leader settle (heartbeats, leases) before killing it
  const leader = await c.leader();
  const survivor = leader === 0 ? 1 : 0;
  const f = await worker.failover(c.targets[survivor]!, c.pid(leader));
  note(
    `${run.side}: failover ${k + 1}/${of}: killed m${leader + 1}, next write after ${f.failover_ms} ms (${f.failedPuts} puts failed meanwhile)`,
  );
  run.failovers.push(f.failover_ms);
  await c.restart(leader);
  await c.waitHealthy(60_000);
}

async function measure(
  sides: Side[],
  opts: { seconds: number; rounds: number; failovers: number; grpc: boolean; toLeader: boolean },
): Promise<Run[]> {
  const net = TestNet.create({ hosts: 3 * sides.length + 1 });
  const worker = LoadWorker.start(net.hosts[net.hosts.length - 1]!.ns);
  const runs: Run[] = [];
  try {
    sides.forEach((side, n) => {
      const dir = mkdtempSync(join(tmpdir(), `mesh-bench-raft-${side}-`));
      const hosts = net.hosts.slice(3 * n, 3 * n + 3);
      const cluster =
        side === 'ours'
          ? new MeshCluster(hosts, dir, worker)
          : new EtcdCluster(hosts, dir, worker, opts.grpc);
      runs.push({ side, dir, cluster, levels: new Map(), failovers: [] });
    });
    for (const r of runs) {
      note(`${r.side}: starting 3 members`);
      await step(r, 'start', () => r.cluster.start());
    }
    // Alternate who goes first, so neither side always runs right after the other's heaviest step.
    const order = (k: number): Run[] => (k % 2 === 0 ? runs : [...runs].reverse());
    for (let round = 0; round < opts.rounds; round++)
      for (const [k, w] of LEVELS.entries())
        for (const r of order(round + k))
          await step(r, `${w} writers`, () => level(r, worker, w, opts));
    for (let k = 0; k < opts.failovers; k++)
      for (const r of order(k))
        await step(r, `failover ${k + 1}`, () => failover(r, worker, k, opts.failovers));
    return runs;
  } finally {
    await Promise.all(runs.map((r) => r.cluster.stop().catch(() => undefined)));
    worker.close();
    net.destroy();
    for (const r of runs) rmSync(r.dir, { recursive: true, force: true });
  }
}

export async function main(args: string[]): Promise<void> {
  if (process.getuid?.() !== 0)
    throw new Error('bench raft: run as root (it creates network namespaces)');
  const { values } = parseArgs({
    args,
    options: {
      only: { type: 'string' },
      seconds: { type: 'string', default: '5' },
      rounds: { type: 'string', default: '3' },
      failovers: { type: 'string', default: '7' },
      'etcd-client': { type: 'string', default: 'gateway' },
      target: { type: 'string', default: 'all' },
    },
  });
  const only = values.only;
  if (only !== undefined && only !== 'ours' && only !== 'etcd')
    throw new Error(`bench raft: --only ${JSON.stringify(only)}: want ours or etcd`);
  const client = values['etcd-client'];
  if (client !== 'gateway' && client !== 'grpc')
    throw new Error(`bench raft: --etcd-client ${JSON.stringify(client)}: want gateway or grpc`);
  if (values.target !== 'all' && values.target !== 'leader')
    throw new Error(`bench raft: --target ${JSON.stringify(values.target)}: want all or leader`);
  const seconds = Number(values.seconds);
  const failovers = Number(values.failovers);
  if (!(seconds > 0 && seconds <= 600)) throw new Error('bench raft: --seconds: want 1..600');
  const rounds = Number(values.rounds);
  if (!(Number.isInteger(rounds) && rounds >= 1 && rounds <= 20))
    throw new Error('bench raft: --rounds: want an integer 1..20');
  if (!(Number.isInteger(failovers) && failovers >= 1 && failovers <= 100))
    throw new Error('bench raft: --failovers: want an integer 1..100');

  // Ctrl-C: exit through the exit hooks, which destroy the test net and what runs inside it.
  process.once('SIGINT', () => process.exit(130));
  const sides: Side[] = only ? [only] : ['ours', 'etcd'];
  if (sides.includes('etcd')) note(`etcd ${checkEtcd()}, client: ${client}`);
  const runs = await measure(sides, {
    seconds,
    rounds,
    failovers,
    grpc: client === 'grpc',
    toLeader: values.target === 'leader',
  });
  const result = (side: Side): Result => {
    const r = runs.find((x) => x.side === side);
    if (!r) return null;
    if (r.error !== undefined) {
      process.exitCode = 1;
      return { error: r.error };
    }
    return summary(r);
  };
  const ours = result('ours');
  const peer = result('etcd');
  const row = (r: Result): string => (r === null ? 'skipped' : JSON.stringify(r));
  process.stdout.write(`raft:  ours ${row(ours)}\n       etcd ${row(peer)}\n`);
  process.stdout.write(JSON.stringify({ bench: 'raft', ours, peer }) + '\n');
}
