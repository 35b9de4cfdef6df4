// The manager tier under faults, on real processes (issue 4, "Proof"): 3 and 5 meshd managers,
// one per namespaced host, with unsynced writes held in memory (test/lib/meshd-lossy.ts, so a
// kill -9 loses what a power cut may lose), under concurrent clients doing reads, writes and
// compare-and-sets on meshd's debug register, while a seeded schedule partitions hosts (both
// ways and one way, nftables drops), kills managers with SIGKILL (one, a majority, or all at
// once), and pauses them with SIGSTOP/SIGCONT. Every history must be linearizable (checked
// with test/lib/linearizability.ts), no acknowledged write may be missing after healing, and
// no meshd may exit on its own.
//
// First, the fault injectors themselves: nftables partitions between hosts, both ways and one
// way, seen with UDP probes.
//
// Profiles: short by default (about 25 s of faults per cluster size); MESH_FAULTS=long for
// 5 minutes per size (run it with `npx tap --timeout=0 dist/test/netns/raft-faults.test.js`).
// MESH_FAULTS_SEED=N replays a schedule and client mix (timing still varies);
// MESH_FAULTS_KINDS=kill,crash-all limits the kinds of fault.
import t from 'tap';
import { spawnSync, type ChildProcess } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import {
  ClientPool,
  ManagedProc,
  NetFaults,
  faultSchedule,
  historyStats,
  httpJson,
  httpKv,
  lostWrites,
  missedKinds,
  runSchedule,
  type Cluster,
  type FaultKind,
} from '../lib/faults.js';
import { checkHistory, kvModel, type KvOp } from '../lib/linearizability.js';
import { MESHCTL, MESHD, MESHD_LOSSY } from '../lib/meshd.js';
import { TestNet, testnet, type TestHost } from '../lib/testnet.js';
import { requireRoot } from '../lib/require.js';

requireRoot('netns tests');

const long = process.env.MESH_FAULTS === 'long';
const seed0 = Number(process.env.MESH_FAULTS_SEED ?? '') || (Date.now() % 100_000) + 1;
/** MESH_FAULTS_KINDS=kill,crash-all: draw only these kinds of fault (debugging). */
const kinds = process.env.MESH_FAULTS_KINDS?.split(',') as FaultKind[] | undefined;
if (long) t.setTimeout(0);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * A UDP agent on `h` (port 9999): prints what it receives; `send(addr, msg)` sends from it.
 * One process per host for the whole test, so probes cost no process start.
 */
function udpAgent(h: TestHost): {
  ready: Promise<void>;
  send(to: string, msg: string): void;
  received(): string[];
  stop(): void;
} {
  const src =
    `const s = require('node:dgram').createSocket('udp4');` +
    `s.on('message', (m) => process.stdout.write(m.toString() + '\\n'));` +
    `s.bind(9999, ${JSON.stringify(h.addr)}, () => process.stdout.write('ready\\n'));` +
    `require('node:readline').createInterface({ input: process.stdin }).on('line', (l) => {` +
    `  const i = l.indexOf(' '); s.send(l.slice(i + 1), 9999, l.slice(0, i)); });` +
    `process.stdin.on('end', () => process.exit(0));`;
  const p: ChildProcess = h.spawn(process.execPath, ['-e', src], {
    stdio: ['pipe', 'pipe', 'ignore'],
  });
  let out = '';
  const ready = new Promise<void>((resolve) => {
    p.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('ready')) resolve();
    });
  });
  return {
    ready,
    send: (to, msg) => p.stdin!.write(`${to} ${msg}\n`),
    received: () => out.split('\n').filter((l) => l !== '' && l !== 'ready'),
    stop: () => p.kill('SIGKILL'),
  };
}

t.test('nftables partitions between hosts: both ways, one way, heal', async (t) => {
  const net = testnet(t, { hosts: 3 });
  const faults = new NetFaults(net.hosts);
  t.teardown(() => faults.destroy());
  const ls = net.hosts.map((h) => udpAgent(h));
  t.teardown(() => ls.forEach((l) => l.stop()));
  await Promise.all(ls.map((l) => l.ready));
  const [h1, h2, h3] = net.hosts as [TestHost, TestHost, TestHost];
  const tStart = performance.now();
  let n = 0;
  /** Which of the directions in `pairs` deliver a datagram now. */
  const probe = async (pairs: Array<[number, number]>): Promise<string[]> => {
    const tag = `p${++n}`;
    for (const [a, b] of pairs) ls[a]!.send(net.hosts[b]!.addr, `${tag} ${a + 1}>${b + 1}`);
    await sleep(200);
    return ls
      .flatMap((l) => l.received())
      .filter((m) => m.startsWith(`${tag} `))
      .map((m) => m.slice(tag.length + 1))
      .sort();
  };
  const all: Array<[number, number]> = [
    [0, 1],
    [1, 0],
    [0, 2],
    [2, 0],
    [1, 2],
    [2, 1],
  ];
  t.same(await probe(all), ['1>2', '1>3', '2>1', '2>3', '3>1', '3>2'], 'all reach all');
  faults.partition(0, 1);
  t.same(await probe(all), ['1>3', '2>3', '3>1', '3>2'], '1 and 2 cut both ways');
  faults.heal();
  faults.partition(0, 1, { oneWay: true });
  t.same(await probe(all), ['1>3', '2>1', '2>3', '3>1', '3>2'], 'one way: 1 to 2 dropped');
  t.match(h2.run('nft', ['list', 'table', 'inet', 'meshfault']), /ip saddr 198\.18\.0\.1 drop/);
  t.not(h1.exec('nft', ['list', 'table', 'inet', 'meshfault']).status, 0, 'no table on 1');
  faults.heal();
  faults.isolate(2);
  t.same(await probe(all), ['1>2', '2>1'], '3 isolated');
  faults.heal();
  t.same(await probe(all), ['1>2', '1>3', '2>1', '2>3', '3>1', '3>2'], 'healed');
  for (const h of [h1, h2, h3]) {
    t.not(h.exec('nft', ['list', 'table', 'inet', 'meshfault']).status, 0, `${h.name}: no table`);
  }
  t.comment(
    `${faults.changes} nft changes, ${n} probes in ${Math.round(performance.now() - tStart)} ms`,
  );
});

interface RaftStatus {
  role?: string;
  leader?: number | string | null;
  term?: number;
}

/** A cluster of meshd managers on `hosts`, started and joined through meshctl. */
class Managers {
  readonly procs: ManagedProc[];
  readonly socks: string[];
  constructor(
    readonly hosts: TestHost[],
    readonly dir: string,
  ) {
    this.socks = hosts.map((_, i) => join(dir, `m${i + 1}.sock`));
    this.procs = hosts.map(
      (h, i) =>
        new ManagedProc(`m${i + 1}`, () => {
          const log = openSync(join(dir, `m${i + 1}.log`), 'a');
          try {
            return h.spawn(
              process.execPath,
              [
                MESHD_LOSSY,
                '--node-name',
                `m${i + 1}`,
                '--data-dir',
                join(dir, `m${i + 1}`),
                '--socket',
                this.socks[i]!,
                '--advertise-addr',
                h.addr,
                '--listen-addr',
                `${h.addr}:2377`,
              ],
              {
                stdio: ['ignore', log, log],
              },
            );
          } finally {
            closeSync(log);
          }
        }),
    );
  }

  meshctl(i: number, args: string[]): string {
    const r = spawnSync(process.execPath, [MESHCTL, '--host', this.socks[i]!, ...args], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    if (r.status !== 0) {
      throw new Error(
        `meshctl ${args.join(' ')} on m${i + 1}: exited ${r.status ?? r.signal}: ` +
          `${(r.stderr || r.stdout).trim()}`,
      );
    }
    return r.stdout.trim();
  }

  async waitUp(i: number, limitMs: number): Promise<void> {
    const end = performance.now() + limitMs;
    while (performance.now() < end) {
      if (existsSync(this.socks[i]!)) {
        try {
          const r = await httpJson(this.socks[i]!, 'GET', '/v1/health', undefined, 1_000);
          if (r.status === 200) return;
        } catch {
          // not listening yet
        }
      }
      await sleep(100);
    }
    throw new Error(`m${i + 1}: API socket not up in ${limitMs} ms`);
  }

  async status(i: number): Promise<RaftStatus | undefined> {
    const p = this.procs[i]!;
    if (!p.running || p.stopped) return undefined;
    try {
      const r = await httpJson(this.socks[i]!, 'GET', '/v1/raft/status', undefined, 500);
      return r.status === 200 ? (r.body as RaftStatus) : undefined;
    } catch {
      return undefined;
    }
  }

  /** Position of the member that says it leads with the highest term. */
  async leader(): Promise<number | undefined> {
    const st = await Promise.all(this.procs.map((_, i) => this.status(i)));
    let best: number | undefined;
    for (let i = 0; i < st.length; i++) {
      const s = st[i];
      if (s?.role !== 'leader') continue;
      if (best === undefined || (s.term ?? 0) > (st[best]!.term ?? 0)) best = i;
    }
    return best;
  }

  async start(): Promise<void> {
    for (const p of this.procs) p.start();
    for (let i = 0; i < this.procs.length; i++) await this.waitUp(i, 20_000);
    this.meshctl(0, ['cluster', 'init', '--advertise-addr', this.hosts[0]!.addr]);
    const token = this.meshctl(0, ['cluster', 'join-token', 'manager'])
      .split(/\s+/)
      .find((w) => w.startsWith('MESHTKN-'));
    if (token === undefined) throw new Error('cluster join-token manager: no token printed');
    for (let i = 1; i < this.procs.length; i++) {
      this.meshctl(i, ['cluster', 'join', '--token', token, `${this.hosts[0]!.addr}:2377`]);
    }
  }

  /** Every member answers and agrees on one leader, within `limitMs`. */
  async settled(limitMs: number): Promise<number> {
    const t0 = performance.now();
    let why = '';
    while (performance.now() - t0 < limitMs) {
      const st = await Promise.all(this.procs.map((_, i) => this.status(i)));
      const leaders = new Set(st.map((s) => String(s?.leader ?? '')));
      if (st.some((s) => s === undefined)) why = 'a member does not answer';
      else if (leaders.size !== 1 || leaders.has('') || leaders.has('0')) {
        why = `leaders: ${[...leaders].join(', ')}`;
      } else if (st.filter((s) => s!.role === 'leader').length !== 1) why = 'no single leader';
      else return performance.now() - t0;
      await sleep(100);
    }
    throw new Error(`cluster not settled in ${limitMs} ms: ${why}`);
  }

  logTail(lines = 30): string {
    return this.procs
      .map((_, i) => {
        const f = join(this.dir, `m${i + 1}.log`);
        const text = existsSync(f) ? readFileSync(f, 'utf8') : '';
        return `--- m${i + 1}.log\n${text.split('\n').slice(-lines).join('\n')}`;
      })
      .join('\n');
  }
}

/**
 * Why the cluster tests cannot run (meshd without the manager API), or null. Probed on a
 * throwaway meshd in a namespace of its own.
 */
async function managerApiMissing(): Promise<string | null> {
  const net = TestNet.create({ hosts: 1 });
  const dir = mkdtempSync(join(tmpdir(), 'mesh-faults-probe-'));
  const sock = join(dir, 'probe.sock');
  const h = net.hosts[0]!;
  const p = h.spawn(process.execPath, [MESHD, '--data-dir', join(dir, 'd'), '--socket', sock], {
    stdio: 'ignore',
  });
  try {
    for (let i = 0; i < 100; i++) {
      try {
        const r = await httpJson(sock, 'GET', '/v1/raft/status', undefined, 1_000);
        return r.status === 404 ? 'meshd has no manager API (/v1/raft/status) yet' : null;
      } catch {
        await sleep(100);
      }
    }
    return 'a probe meshd did not answer on its API socket in 10 s';
  } finally {
    p.kill('SIGKILL');
    net.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

// A meshd without the manager API cannot run this file: that is a failure, not a skip.
const missing = await managerApiMissing();
if (missing !== null)
  throw new Error(
    `raft-faults: ${missing}; build the tree (npm run build) and check dist/src/daemon/main.js starts: node dist/src/daemon/main.js --help`,
  );

for (const size of [3, 5]) {
  t.test(
    `${size} managers under partitions, kill -9, SIGSTOP and lost unsynced writes`,
    async (t) => {
      const seed = seed0 + size;
      const net = testnet(t, { hosts: size });
      const dir = mkdtempSync(join(tmpdir(), `mesh-faults-${size}-`));
      const faults = new NetFaults(net.hosts);
      const m = new Managers(net.hosts, dir);
      const log: string[] = [];
      const recorded: { history: KvOp[] } = { history: [] };
      t.teardown(async () => {
        faults.destroy();
        for (const p of m.procs) await p.kill9();
        // Kept when anything failed, with the schedule played and the logs' tails.
        if (t.passing()) rmSync(dir, { recursive: true, force: true });
        else {
          writeFileSync(join(dir, 'history.json'), JSON.stringify(recorded.history));
          console.error(`raft-faults: data dirs, logs and history.json kept in ${dir}`);
          console.error(`schedule played:\n${log.join('\n')}\n${m.logTail()}`);
        }
      });
      const t0 = performance.now();
      await m.start();
      const settleMs = await m.settled(30_000);
      const setupMs = performance.now() - t0;

      const faultMs = long ? 300_000 : 25_000;
      const schedule = faultSchedule({
        seed,
        nodes: size,
        durationMs: faultMs,
        maxFaults: long ? 400 : 30,
        minHoldMs: 300,
        maxHoldMs: long ? 5_000 : 2_500,
        gapMs: 700,
        ...(kinds === undefined ? {} : { kinds }),
      });
      const pool = new ClientPool({
        seed,
        nodes: m.socks.map((s) => httpKv(s, 2_000)),
        clients: size === 3 ? 6 : 8,
        // The search is per key and its cost grows with the pending operations on one key: a
        // long run spreads them over more keys (a 5-manager long run on 4 keys, ~530
        // pending, took 343 s to check).
        keys: Array.from({ length: long ? 8 : 4 }, (_, i) => `k${i + 1}`),
        thinkMs: 10,
      });
      recorded.history = pool.history;
      const cluster: Cluster = {
        net: faults,
        procs: m.procs,
        leader: () => m.leader(),
        restarted: (i) => m.waitUp(i, 20_000),
        log: (l) => log.push(l),
      };
      // Clients run through the whole schedule (restarts can stretch it) and a quiet second
      // after it.
      const stopClients = new AbortController();
      const clients = pool.run(faultMs * 3, stopClients.signal);
      // Restarts are slow on a loaded machine: the run may overrun its plan by half before
      // episodes are skipped.
      const stats = await runSchedule(schedule, cluster, undefined, faultMs * 1.5);
      await sleep(1_000);
      stopClients.abort();
      await clients;
      const runMs = performance.now() - t0 - setupMs;

      // After healing the cluster must answer again; whether or not it does, the history
      // recorded so far is checked.
      let healMs = NaN;
      let finals = new Map<string, string | null>();
      let stuck: string | null = null;
      try {
        healMs = await m.settled(30_000);
        finals = await pool.finalReads(
          m.procs.map((_, i) => i),
          20_000,
        );
      } catch (e) {
        stuck = (e as Error).message;
      }
      const h = historyStats(pool.history);
      // Pending operations make the search costly (each may apply anywhere after its call or
      // never); a long run's history of ~15,000 operations with ~500 pending needs more than
      // the default 5 million steps.
      const check = checkHistory(kvModel, pool.history, {
        maxSteps: long ? 500_000_000 : 50_000_000,
        timeoutMs: long ? 600_000 : 30_000,
      });
      const lost = lostWrites(pool.history, finals);
      const crashed = m.procs.flatMap((p) => p.unexpectedExits);

      t.comment(`seed ${seed} (MESH_FAULTS_SEED=${seed0} replays it)`);
      t.comment(
        `setup ${Math.round(setupMs)} ms (settled ${Math.round(settleMs)} ms), faults+clients ` +
          `${Math.round(runMs)} ms, healed and settled in ${Math.round(healMs)} ms`,
      );
      t.comment(
        `faults: ${stats.episodes} episodes ${JSON.stringify(stats.byKind)}, ${stats.kills} ` +
          `kill -9, ${stats.stops} SIGSTOP, leader hit ${stats.leaderHits} times, ` +
          `${stats.skipped} skipped (behind plan), ` +
          `${faults.changes} nft changes`,
      );
      t.comment(
        `history: ${h.ops} ops (${h.reads} reads, ${h.writes} writes, ${h.cas} cas; ` +
          `${h.pending} unknown outcome), ${pool.stats.notSent} not sent, ` +
          `${pool.stats.failedReads} failed reads, cas ${pool.stats.casSwapped} swapped / ` +
          `${pool.stats.casFailed} refused; checked in ${Math.round(check.ms)} ms`,
      );
      const errs = [...pool.stats.errors].sort((a, b) => b[1] - a[1]).slice(0, 5);
      for (const [e, n] of errs) t.comment(`  ${n} x ${e}`);

      t.equal(check.result, 'ok', 'the history is linearizable');
      if (check.result === 'illegal') t.comment(check.explanation);
      if (check.result === 'unknown') t.comment(check.reason);
      t.equal(stats.error, undefined, 'every fault was injected and undone');
      t.equal(stuck, null, 'after healing, every manager answers reads');
      t.same(lost, [], 'no acknowledged write lost');
      t.same(crashed, [], 'no meshd exited on its own');
      // Liveness floors kept low: on a machine shared with other work restarts take seconds
      // and few episodes fit; what must hold under any load is checked above.
      t.ok(h.ops - h.pending >= 100, 'the cluster made progress between faults');
      t.ok(stats.episodes >= 3, `faults were injected (${stats.episodes} episodes)`);
      t.same(
        [...new Set(schedule.map((e) => e.kind))].sort(),
        [...(kinds ?? ['partition', 'oneway', 'kill', 'stop', 'crash-all'])].sort(),
        'the schedule holds every kind of fault asked for',
      );
      t.same(
        missedKinds(schedule, stats),
        [],
        `every fault kind scheduled happened at least once (${JSON.stringify(stats.byKind)})`,
      );
      if (kinds === undefined) t.ok(stats.kills > 0, 'managers were killed');
    },
  );
}
