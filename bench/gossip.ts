/**
 * Gossip, ours vs serf (hashicorp/memberlist inside), side by side in one run, on namespaced
 * hosts (198.18.0.0/24), LAN defaults on both sides, for N = 10 and N = 30 (or `-- N…`):
 *
 * - join_converge_ms: N−1 nodes formed; the N-th joins; time until every node has seen it.
 * - detect_dead_ms: one node is `kill -9`ed; time until every survivor has declared it dead.
 * - cpu_ms_per_node_s: CPU (user+sys from /proc) per node per second over a 10 s idle window
 *   that starts 8 s after the cluster formed (steady state, not start-up).
 * - bytes_per_node_s: bytes sent on each host's eth0 per node per second over the same window.
 * - wakeups_per_node_s: voluntary context switches (summed over all threads, from /proc) per
 *   node per second over the same window: how often a node blocks and is woken, which is what
 *   an idle node.js process pays for per event-loop turn.
 *
 * Both sides are timed the same way, from their own event logs with wall-clock stamps: our
 * meshd logs `member join`/`member leave` lines, serf runs an event handler that stamps
 * `member-join`/`member-failed` into a file. Ours runs as real meshd processes (node.js), so its
 * CPU figure includes the runtime. Ends with one JSON line per N, the last one the summary:
 * {"bench":"gossip","n":…,"ours":{…},"peer":{…}}.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TestNet, type TestHost } from '../test/lib/testnet.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const meshd = `${root}dist/src/daemon/main.js`;
const IDLE_MS = 10_000;
const SETTLE_MS = 8_000;
const CLK_TCK = 100;

interface Side {
  start(h: TestHost, name: string, seed: string | undefined): ChildProcess;
  /** Wall-clock ms at which `observer` saw `subject` reach `kind`, from its log; undefined if not yet. */
  seen(observer: string, subject: string, kind: 'join' | 'dead'): number | undefined;
}

function ours(dir: string): Side {
  return {
    start(h, name, seed) {
      const args = [
        meshd,
        '--node-name',
        name,
        '--advertise-addr',
        h.addr,
        '--data-dir',
        join(dir, name),
        '--socket',
        join(dir, `${name}.sock`),
      ];
      if (seed) args.push('--join', seed);
      return h.spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    },
    seen(observer, subject, kind) {
      const f = join(dir, `${observer}.log`);
      if (!existsSync(f)) return undefined;
      const want = kind === 'join' ? 'member join' : 'member leave';
      for (const line of readFileSync(f, 'utf8').split('\n')) {
        if (line.includes(`msg="${want}" member=${subject}`))
          return Date.parse(/ts=(\S+)/.exec(line)![1]!);
      }
      return undefined;
    },
  };
}

function serf(dir: string): Side {
  const handler = join(dir, 'handler.sh');
  // serf passes the event in SERF_EVENT and the members on stdin, one per line (name first).
  writeFileSync(
    handler,
    `#!/bin/sh\nts=$(date +%s%3N)\nwhile read -r name rest; do echo "$ts $SERF_EVENT $name" >> "$LOG"; done\n`,
  );
  chmodSync(handler, 0o755);
  return {
    start(h, name, seed) {
      const args = [
        'agent',
        '-node',
        name,
        '-bind',
        `${h.addr}:7946`,
        '-rpc-addr',
        '127.0.0.1:7373',
        '-log-level',
        'warn',
        '-event-handler',
        `member-join,member-failed=${handler}`,
      ];
      if (seed) args.push('-join', `${seed}:7946`);
      return h.spawn('env', [`LOG=${join(dir, `${name}.log`)}`, 'serf', ...args], {
        stdio: 'ignore',
      });
    },
    seen(observer, subject, kind) {
      const f = join(dir, `${observer}.log`);
      if (!existsSync(f)) return undefined;
      const want = kind === 'join' ? 'member-join' : 'member-failed';
      for (const line of readFileSync(f, 'utf8').split('\n')) {
        const [ts, ev, who] = line.split(' ');
        if (ev === want && who === subject) return Number(ts);
      }
      return undefined;
    },
  };
}

function cpuTicks(pid: number): number {
  // Fields after the command name: utime is field 14, stime 15 (1-based, man 5 proc).
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

function wakeups(pid: number): number {
  let sum = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const m = /voluntary_ctxt_switches:\s+(\d+)/.exec(
        readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8'),
      );
      sum += Number(m?.[1] ?? 0);
    } catch {
      // the thread exited between readdir and read
    }
  }
  return sum;
}

function txBytes(h: TestHost): number {
  const j = JSON.parse(h.run('ip', ['-j', '-s', 'link', 'show', 'eth0'])) as Array<{
    stats64: { tx: { bytes: number } };
  }>;
  return j[0]!.stats64.tx.bytes;
}

async function waitAll(
  side: Side,
  observers: string[],
  subject: string,
  kind: 'join' | 'dead',
  limitMs: number,
): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    const times = observers.map((o) => side.seen(o, subject, kind));
    if (times.every((x) => x !== undefined)) return Math.max(...times);
    if (Date.now() - t0 > limitMs)
      throw new Error(`${subject} not seen ${kind} by all of ${observers.length} in ${limitMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function measure(kind: 'ours' | 'serf', n: number) {
  const net = TestNet.create({ hosts: n, prefix: `mesh-bg-${process.pid}` });
  const dir = mkdtempSync(join(tmpdir(), `mesh-bench-gossip-${kind}-`));
  try {
    const side = kind === 'ours' ? ours(dir) : serf(dir);
    const names = net.hosts.map((h) => `n${h.index}`);
    const procs: ChildProcess[] = [];
    const seed = net.hosts[0]!.addr;
    // Ours logs to stderr: keep each node's log in a file.
    const startNode = (i: number): void => {
      const p = side.start(net.hosts[i]!, names[i]!, i === 0 ? undefined : seed);
      if (kind === 'ours') {
        let buf = '';
        p.stderr!.on('data', (c: Buffer) => {
          buf += c.toString();
          writeFileSync(join(dir, `${names[i]!}.log`), buf);
        });
      }
      procs[i] = p;
    };
    startNode(0);
    await new Promise((r) => setTimeout(r, 1500)); // the seed is up before others join it
    for (let i = 1; i < n - 1; i++) startNode(i);
    const last = names[n - 1]!;
    const formed = names.slice(0, n - 1);
    for (const s of formed.slice(1))
      await waitAll(
        side,
        formed.filter((o) => o !== s),
        s,
        'join',
        60_000,
      );

    // Join: the N-th node starts; measured from when its own log shows it joined someone (so
    // process start-up, which differs between node.js and Go, is not counted) to the last
    // node that saw it.
    startNode(n - 1);
    const lastSeen = await waitAll(side, formed, last, 'join', 60_000);
    const firstJoin = await waitAll(side, [last], names[0]!, 'join', 60_000);
    const join_converge_ms = Math.max(0, lastSeen - firstJoin);

    // Idle cost over a window with everyone up, after a settle time so that start-up work
    // (node.js compiles and optimizes for its first seconds; Go does not) is not counted.
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const cpu0 = procs.map((p) => cpuTicks(p.pid!));
    const wk0 = procs.map((p) => wakeups(p.pid!));
    const tx0 = net.hosts.map(txBytes);
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, IDLE_MS));
    const secs = (Date.now() - t0) / 1000;
    const cpu1 = procs.map((p) => cpuTicks(p.pid!));
    const wk1 = procs.map((p) => wakeups(p.pid!));
    const tx1 = net.hosts.map(txBytes);
    const cpuMs = cpu1.reduce((a, v, i) => a + (v - cpu0[i]!), 0) * (1000 / CLK_TCK);
    const bytes = tx1.reduce((a, v, i) => a + (v - tx0[i]!), 0);
    const wk = wk1.reduce((a, v, i) => a + (v - wk0[i]!), 0);

    // Dead: kill -9 a node in the middle; every survivor must declare it dead.
    const victim = Math.floor(n / 2);
    const killedAt = Date.now();
    procs[victim]!.kill('SIGKILL');
    const survivors = names.filter((_, i) => i !== victim);
    const deadAt = await waitAll(side, survivors, names[victim]!, 'dead', 60_000);
    return {
      join_converge_ms,
      detect_dead_ms: deadAt - killedAt,
      cpu_ms_per_node_s: +(cpuMs / n / secs).toFixed(2),
      bytes_per_node_s: Math.round(bytes / n / secs),
      wakeups_per_node_s: +(wk / n / secs).toFixed(1),
    };
  } finally {
    net.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function main(args: string[]): Promise<void> {
  if (process.getuid?.() !== 0)
    throw new Error('bench gossip: run as root (it creates network namespaces)');
  if (spawnSync('serf', ['version']).status !== 0)
    throw new Error('bench gossip: Debian serf not installed (apt-get install serf)');
  const ns = args.length ? args.map(Number) : [10, 30];
  for (const n of ns) {
    const o = await measure('ours', n);
    const p = await measure('serf', n);
    process.stdout.write(
      `gossip N=${n}:  ours ${JSON.stringify(o)}\n             serf ${JSON.stringify(p)}\n`,
    );
    process.stdout.write(JSON.stringify({ bench: 'gossip', n, ours: o, peer: p }) + '\n');
  }
}
