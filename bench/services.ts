/**
 * Services end to end on real meshd processes (3 namespaced hosts: h1 and h2 managers, h3 a
 * worker; nftables backend), a 3-replica HTTP service published on port 8080 whose answers name
 * the task:
 *
 * - scale_serving: R rounds of `meshctl service scale web 6 --detach` then back to 3. A client
 *   process in every host requests http://<own address>:8080/ back to back (a new connection
 *   each time, so every request is balanced afresh; test/lib/requests.ts) and records each
 *   request's start time and the task that answered, or none; every request of the rounds is
 *   counted (answered/sent per host, `scale_unanswered`). For each new replica and each node: the time from the scale command to its
 *   first answer there. p50/p99 over (replica, node) pairs of every round. A pair not seen
 *   within --timeout-ms counts as the timeout and is reported.
 * - node_kill_recovery: kill -9 of h3's meshd and every process in its namespaces (its
 *   tasks), t0 at the kill; done when the managers report 3 running replicas off h3 and the
 *   clients on h1 and h2 have each had answers from all 3 of them after t0.
 *
 * There is no peer to run beside it here (no Swarm on this machine): `"peer":{}`. For scale
 * Swarm documents nothing; its node failure detection alone takes 15 s (dispatcher heartbeat
 * 5 s × grace 3), ours marks a node down in 5 s.
 *
 * `npm run bench -- services [--rounds R] [--timeout-ms MS]`. Everything runs in namespaces
 * the bench creates and removes, also when it fails; a run takes 1–3 minutes.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MeshHosts, until } from '../test/lib/meshd.js';
import { HttpClients, NAMING_SERVER, RequestCount } from '../test/lib/requests.js';
import { TestNet, killNetnsProcs, type TestHost } from '../test/lib/testnet.js';

function arg(args: string[], name: string, def: number): number {
  const i = args.indexOf(name);
  if (i < 0) return def;
  const v = Number(args[i + 1]);
  if (!Number.isFinite(v) || v < 1) throw new Error(`bench services: ${name} wants a number ≥ 1`);
  return v;
}

const pct = (xs: number[], p: number): number => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

interface TaskRow {
  id: string;
  name: string;
  node: string;
  desired: string;
  state: string;
}

export async function main(args: string[]): Promise<void> {
  const rounds = arg(args, '--rounds', 5);
  const timeoutMs = arg(args, '--timeout-ms', 30_000);
  const net = TestNet.create({ hosts: 3 });
  const dir = mkdtempSync(join(tmpdir(), 'bench-svc-'));
  const mh = new MeshHosts(dir);
  const clients = new HttpClients(dir);
  try {
    const [h1, h2, h3] = net.hosts as [TestHost, TestHost, TestHost];
    const extra = ['--lb-backend', 'nftables', '--dns-upstream', '198.18.0.254'];
    for (const h of net.hosts) mh.start(h, extra);
    await until('API sockets', () => mh.ready(net.hosts));
    mh.ok(h1, 'cluster', 'init');
    const token = mh.ok(h1, 'cluster', 'join-token', 'manager', '-q').trim();
    mh.ok(h2, 'cluster', 'join', '--token', token, h1.addr);
    const wtoken = mh.ok(h1, 'cluster', 'join-token', 'worker', '-q').trim();
    mh.ok(h3, 'cluster', 'join', '--token', wtoken, h1.addr);
    mh.ok(h1, 'net', 'create', 'app');
    mh.ok(
      h1,
      'service',
      'create',
      '--name',
      'web',
      '--replicas',
      '3',
      '--network',
      'app',
      '-p',
      '8080:80',
      '--',
      ...NAMING_SERVER,
    );
    const ps = (): TaskRow[] =>
      JSON.parse(mh.ok(h1, 'service', 'ps', 'web', '--json')) as TaskRow[];
    const running = (): TaskRow[] => {
      try {
        return ps().filter((r) => r.desired === 'running' && r.state === 'running');
      } catch {
        return []; // a manager busy electing: ask again at the next poll
      }
    };
    await until('3 running', () => running().length === 3, 60_000);

    // First answer time per (task name, host index), reset per measurement.
    const firstSeen = new Map<string, number>();
    const lines = new Map<number, number>();
    let since = 0;
    // Every request of the scale rounds counted (the node kill loses some until it is found).
    const count = new RequestCount();
    let counting = false;
    for (const h of net.hosts) clients.start(`h${h.index}`, h.name, [`http://${h.addr}:8080/`]);
    const poll = (): void => {
      for (const l of clients.read()) {
        if (counting) count.record(l.from, l.to, l.answer);
        if (l.answer === null) continue;
        const hi = Number(l.from.slice(1));
        const k = `${l.answer}@${hi}`;
        // Requests sent before a measurement began must not count as firsts.
        if (l.at < since) continue;
        if (!firstSeen.has(k)) firstSeen.set(k, l.at);
        lines.set(hi, (lines.get(hi) ?? 0) + 1);
      }
    };
    await until('clients answered on every host', () => {
      poll();
      return net.hosts.every((h) => [...firstSeen.keys()].some((k) => k.endsWith(`@${h.index}`)));
    });
    counting = true;

    const samples: number[] = [];
    let timeouts = 0;
    for (let r = 0; r < rounds; r++) {
      const old = new Set(running().map((t) => t.name));
      firstSeen.clear();
      const t0 = Date.now();
      since = t0;
      mh.ok(h1, 'service', 'scale', 'web', '6', '--detach');
      const fresh = await until(
        '6 running',
        () => {
          const run = running();
          return run.length === 6 ? run.filter((t) => !old.has(t.name)) : null;
        },
        timeoutMs,
      ).catch(() => [] as TaskRow[]);
      const deadline = t0 + timeoutMs;
      await until(
        'new replicas answering on every node',
        () => {
          poll();
          return (
            fresh.every((t) => net.hosts.every((h) => firstSeen.has(`${t.name}@${h.index}`))) ||
            Date.now() > deadline
          );
        },
        timeoutMs + 1_000,
      );
      for (const t of fresh) {
        for (const h of net.hosts) {
          const seen = firstSeen.get(`${t.name}@${h.index}`);
          if (seen === undefined) timeouts++;
          samples.push(seen === undefined ? timeoutMs : seen - t0);
        }
      }
      if (fresh.length < 3) timeouts += (3 - fresh.length) * net.hosts.length;
      process.stderr.write(
        `round ${r + 1}: new replicas serving on every node after ${pct(samples.slice(-fresh.length * 3), 50)} ms (p50), ${Math.max(...samples.slice(-fresh.length * 3))} ms (max)\n`,
      );
      mh.ok(h1, 'service', 'scale', 'web', '3', '--detach');
      await until('back to 3', () => running().length === 3, timeoutMs);
    }
    poll();
    counting = false;
    for (const l of count.lines()) process.stderr.write(`scale rounds: ${l}\n`);

    // Node kill.
    firstSeen.clear();
    const killed = Date.now();
    since = killed;
    mh.procs.get(h3.index)?.kill('SIGKILL');
    for (const ns of spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.split('\n')) {
      const name = ns.split(' ')[0];
      if (name?.startsWith(mh.prefix(h3))) killNetnsProcs(`/run/netns/${name}`);
    }
    let recovery = NaN;
    await until(
      'full replica count answering after the kill',
      () => {
        poll();
        const run = running().filter((t) => t.node !== 'h3');
        if (run.length !== 3) return false;
        const ok = [h1, h2].every((h) =>
          run.every((t) => (firstSeen.get(`${t.name}@${h.index}`) ?? 0) >= killed),
        );
        if (ok) {
          recovery =
            Math.max(
              ...[h1, h2].flatMap((h) => run.map((t) => firstSeen.get(`${t.name}@${h.index}`)!)),
            ) - killed;
        }
        return ok;
      },
      90_000,
    ).catch((e: unknown) => {
      process.stderr.write(`node kill: ${(e as Error).message}\n`);
      process.stderr.write(
        `  running: ${running()
          .map((t) => `${t.name}@${t.node}`)
          .join(' ')}\n  answered since the kill: ${[...firstSeen]
          .filter(([, at]) => at >= killed)
          .map(([k]) => k)
          .join(' ')}\n  answers per client: ${JSON.stringify([...lines])}\n`,
      );
      process.stderr.write(mh.ctl(h1, 'lb', 'show', '--service', 'web').stdout);
      process.stderr.write(mh.ctl(h1, 'service', 'ps', 'web').stdout);
    });

    process.stderr.write(
      `scale: ${samples.length} (replica, node) pairs, ${timeouts} not served within ${timeoutMs} ms\n`,
    );
    process.stdout.write(
      JSON.stringify({
        bench: 'services',
        ours: {
          scale_serving_p50_ms: Math.round(pct(samples, 50)),
          scale_serving_p99_ms: Math.round(pct(samples, 99)),
          node_kill_recovery_ms: Math.round(recovery),
          scale_pairs: samples.length,
          scale_timeouts: timeouts,
          scale_requests: count.sent,
          scale_unanswered: count.lost,
        },
        peer: {},
      }) + '\n',
    );
  } finally {
    clients.stop();
    mh.killAll();
    net.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}
