/**
 * Raft, ours vs etcd, side by side in one run on the same machine: 3 meshd managers against 3
 * members of Debian's etcd 3.4 (default tuning, fsync on), each member in its own namespaced
 * host (198.18.0.1–3), data dirs in one tmp dir on the same filesystem. The load generator
 * (bench/lib/load.ts) is a child process in a 4th host (198.18.0.4), the same code for both
 * sides; writers are spread round-robin over the 3 members, as etcd's `benchmark put` spreads
 * its connections over the endpoints.
 *
 * - writes_per_s_W, p50_ms_W, p99_ms_W for W = 1, 64, 256 concurrent writers: each writer a
 *   closed loop of sequential puts of a 16-byte value to its own key; 1 s warm-up, then
 *   `--seconds` (5) of measurement; latency is per put, as the client sees it.
 * - failover_p50_ms, failover_p99_ms over `--failovers` (7) rounds: puts go to a surviving
 *   member, a new one every 5 ms; t0 = `kill -9` of the leader, t1 = the first acknowledgement
 *   of a put started at or after t0. After each round the killed member is restarted on its data
 *   dir and the cluster must be healthy again (one leader, a write through every member) before
 *   the next. With 7 rounds p99 is the worst round.
 *
 * Ends with one JSON line {"bench":"raft","ours":{…},"peer":{…}} (peer = etcd). A side that
 * cannot run gives {"error": …} and the exit status is 1. `--only ours|etcd` runs one side.
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { TestNet } from '../test/lib/testnet.js';
import { EtcdCluster, checkEtcd } from './lib/etcd.js';
import { LoadWorker, percentile, type BenchCluster, type LevelResult } from './lib/load.js';
import { MeshCluster } from './lib/meshcluster.js';

const LEVELS = [1, 64, 256] as const;
const WARMUP_MS = 1000;

type Side = 'ours' | 'etcd';
type Result = Record<string, number> | { error: string } | null;

const note = (s: string): void => void process.stderr.write(`bench raft: ${s}\n`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Last lines of each member's log, for a failed run (the tmp dir is removed afterwards). */
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

async function measure(
  side: Side,
  opts: { seconds: number; failovers: number },
): Promise<Record<string, number>> {
  const net = TestNet.create({ hosts: 4 });
  const dir = mkdtempSync(join(tmpdir(), `mesh-bench-raft-${side}-`));
  const worker = LoadWorker.start(net.hosts[3]!.ns);
  const members = net.hosts.slice(0, 3);
  const cluster: BenchCluster =
    side === 'ours' ? new MeshCluster(members, dir, worker) : new EtcdCluster(members, dir, worker);
  try {
    note(`${side}: starting 3 members`);
    await cluster.start();
    const out: Record<string, number> = {};
    for (const w of LEVELS) {
      const r: LevelResult = await worker.level(cluster.targets, w, WARMUP_MS, opts.seconds * 1000);
      note(
        `${side}: ${w} writers: ${r.writes_per_s} writes/s, p50 ${r.p50_ms} ms, p99 ${r.p99_ms} ms` +
          (r.errors ? ` (${r.errors} errors, first: ${r.firstError ?? ''})` : ''),
      );
      if (r.writes === 0) throw new Error(`${w} writers: no write acknowledged (${r.firstError})`);
      out[`writes_per_s_${w}`] = r.writes_per_s;
      out[`p50_ms_${w}`] = r.p50_ms;
      out[`p99_ms_${w}`] = r.p99_ms;
    }
    const times: number[] = [];
    for (let k = 0; k < opts.failovers; k++) {
      await cluster.waitHealthy(60_000);
      await sleep(1000); // let the new leader settle (heartbeats, leases) before killing it
      const leader = await cluster.leader();
      const survivor = leader === 0 ? 1 : 0;
      const f = await worker.failover(cluster.targets[survivor]!, cluster.pid(leader));
      note(
        `${side}: failover ${k + 1}/${opts.failovers}: killed m${leader + 1}, next write after ${f.failover_ms} ms (${f.failedPuts} puts failed meanwhile)`,
      );
      times.push(f.failover_ms);
      await cluster.restart(leader);
      await cluster.waitHealthy(60_000);
    }
    times.sort((a, b) => a - b);
    out.failover_p50_ms = Math.round(percentile(times, 0.5));
    out.failover_p99_ms = Math.round(percentile(times, 0.99));
    return out;
  } catch (e) {
    process.stderr.write(tails(dir));
    throw e;
  } finally {
    await cluster.stop().catch(() => undefined);
    worker.close();
    net.destroy();
    rmSync(dir, { recursive: true, force: true });
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
      failovers: { type: 'string', default: '7' },
    },
  });
  const only = values.only;
  if (only !== undefined && only !== 'ours' && only !== 'etcd')
    throw new Error(`bench raft: --only ${JSON.stringify(only)}: want ours or etcd`);
  const seconds = Number(values.seconds);
  const failovers = Number(values.failovers);
  if (!(seconds > 0 && seconds <= 600)) throw new Error('bench raft: --seconds: want 1..600');
  if (!(Number.isInteger(failovers) && failovers >= 1 && failovers <= 100))
    throw new Error('bench raft: --failovers: want an integer 1..100');

  const run = async (side: Side): Promise<Result> => {
    if (only !== undefined && only !== side) return null;
    try {
      if (side === 'etcd') note(`etcd ${checkEtcd()}`);
      return await measure(side, { seconds, failovers });
    } catch (e) {
      note(`${side}: ${(e as Error).message}`);
      process.exitCode = 1;
      return { error: (e as Error).message };
    }
  };
  const ours = await run('ours');
  const peer = await run('etcd');
  const row = (name: string, r: Result): string =>
    `${name.padEnd(5)} ${r === null ? 'skipped' : JSON.stringify(r)}\n`;
  process.stdout.write(`raft:  ${row('ours', ours)}       ${row('etcd', peer)}`);
  process.stdout.write(JSON.stringify({ bench: 'raft', ours, peer }) + '\n');
}
