/**
 * What test/netns/agent-restart.test.ts and service-update.test.ts share: a 3-host cluster of
 * real meshd (one manager, two workers) with an overlay `app`, bounded client loops that count
 * every request to every host's published port, and a read-back of the kernel objects a host's
 * meshd made (to compare before and after).
 */
import type { Test } from 'tap';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { testnet, type TestHost } from './testnet.js';
import { MeshHosts, until } from './meshd.js';
import type { TaskRow } from './services-scenario.js';
import { netnsList } from '../../src/netlink/index.js';

export interface Cluster {
  hosts: [TestHost, TestHost, TestHost];
  mh: MeshHosts;
  /** meshd's extra flags (a restart passes them again). */
  extra: string[];
  ps(service: string): TaskRow[];
  running(service: string): TaskRow[];
}

/** Three hosts, meshd on each (nftables), h1 manager, h2/h3 workers, network `app`. */
export async function cluster(t: Test, heartbeat: string): Promise<Cluster> {
  const net = testnet(t, { hosts: 3 });
  const dir = mkdtempSync(join(tmpdir(), 'meshd-pub-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const mh = new MeshHosts(dir);
  t.teardown(() => mh.killAll());
  // Unknown names would go upstream: an address of the test net that nobody answers.
  const extra = ['--lb-backend', 'nftables', '--dns-upstream', '198.18.0.254'];
  const hosts = net.hosts as [TestHost, TestHost, TestHost];
  const [h1, h2, h3] = hosts;
  for (const h of hosts) mh.start(h, extra);
  await until('API sockets', () => mh.ready(hosts), 60_000);
  mh.ok(h1, 'cluster', 'init', '--dispatcher-heartbeat', heartbeat);
  const token = mh.ok(h1, 'cluster', 'join-token', 'worker', '-q').trim();
  mh.ok(h2, 'cluster', 'join', '--token', token, h1.addr);
  mh.ok(h3, 'cluster', 'join', '--token', token, h1.addr);
  mh.ok(h1, 'net', 'create', 'app');
  const ps = (s: string) => JSON.parse(mh.ok(h1, 'service', 'ps', s, '--json')) as TaskRow[];
  return {
    hosts,
    mh,
    extra,
    ps,
    running: (s) => ps(s).filter((r) => r.desired === 'running' && r.state === 'running'),
  };
}

/** One request from inside `from` to port 8080 of `addr`: the answer's text, or undefined. */
export function get(from: TestHost, addr: string): string | undefined {
  const r = from.exec('curl', ['-s', '-m', '2', `http://${addr}:8080/`]);
  return r.status === 0 && r.stdout !== '' ? r.stdout.trim() : undefined;
}

/**
 * Wait (bounded) until from every host, port 8080 of every host answers 9 requests in a row, and
 * `ok` accepts the set of answers (e.g. every replica seen).
 */
export async function converged(
  hosts: readonly TestHost[],
  ok: (answers: Set<string>) => boolean,
  what: string,
  ms = 30_000,
): Promise<void> {
  for (const from of hosts)
    for (const to of hosts)
      await until(
        `h${from.index} -> ${to.addr}:8080 ${what}`,
        () => {
          const seen = new Set<string>();
          for (let i = 0; i < 9; i++) {
            const a = get(from, to.addr);
            if (a === undefined) return false;
            seen.add(a);
          }
          return ok(seen);
        },
        ms,
      );
}

export interface LoopResult {
  /** Requests sent and answered per target address. */
  sent: Map<string, number>;
  answered: Map<string, number>;
  /** Answers by text (e.g. which version answered). */
  answers: Map<string, number>;
  /** `lost <target> <ms since the epoch>` lines. */
  lost: string[];
  /** When the loop ended (ms since the epoch). */
  endedAt: number;
}

/**
 * A bounded client loop inside host `from`: `rounds` rounds, each one request to port 8080 of
 * every target, then a pause of `paceMs`, for at most `maxMs`. Nothing is retried: each request
 * is answered or lost.
 */
export function clientLoop(
  from: TestHost,
  targets: readonly string[],
  rounds: number,
  paceMs: number,
  /** Also stop after this long (a loop whose requests time out would run for rounds × 2 s). */
  maxMs = 180_000,
  /** Also stop once this file exists (the caller's step is over). */
  stopFile = '/nonexistent',
): Promise<LoopResult> {
  const script = [
    'i=0',
    `end=$(( $(date +%s) + ${Math.ceil(maxMs / 1000)} ))`,
    `while [ $i -lt ${rounds} ] && [ $(date +%s) -lt $end ] && [ ! -e ${stopFile} ]; do`,
    `  for a in ${targets.join(' ')}; do`,
    '    if out=$(curl -s -m 2 http://$a:8080/) && [ -n "$out" ]; then echo "ok $a $out"; else echo "lost $a $(date +%s%3N)"; fi',
    '  done',
    `  sleep ${paceMs / 1000}`,
    '  i=$((i+1))',
    'done',
  ].join('\n');
  const p: ChildProcess = from.spawn('sh', ['-c', script], { stdio: ['ignore', 'pipe', 'ignore'] });
  let text = '';
  p.stdout!.setEncoding('utf8');
  p.stdout!.on('data', (d: string) => (text += d));
  return new Promise((resolve) => {
    p.on('exit', () => {
      const r: LoopResult = {
        sent: new Map(),
        answered: new Map(),
        answers: new Map(),
        lost: [],
        endedAt: Date.now(),
      };
      for (const line of text.split('\n')) {
        const [kind, target, ...rest] = line.split(' ');
        if (!target) continue;
        r.sent.set(target, (r.sent.get(target) ?? 0) + 1);
        if (kind === 'ok') {
          r.answered.set(target, (r.answered.get(target) ?? 0) + 1);
          const a = rest.join(' ');
          r.answers.set(a, (r.answers.get(a) ?? 0) + 1);
        } else r.lost.push(line);
      }
      resolve(r);
    });
  });
}

/**
 * Report loops' counts as comments (per from → to pair, answered/sent, and the first lost
 * requests relative to `t0`); returns the totals.
 */
export function tally(
  t: Test,
  results: readonly LoopResult[],
  hosts: readonly TestHost[],
  t0: number,
  t0what: string,
): { sent: number; answered: number } {
  let sent = 0;
  let answered = 0;
  for (const [i, r] of results.entries()) {
    for (const h of hosts) {
      const s = r.sent.get(h.addr) ?? 0;
      const n = r.answered.get(h.addr) ?? 0;
      sent += s;
      answered += n;
      t.comment(`h${hosts[i]!.index} -> ${h.addr}:8080: ${n}/${s} answered`);
    }
    for (const l of r.lost.slice(0, 5))
      t.comment(`h${hosts[i]!.index} ${l} (${Number(l.split(' ')[2]) - t0} ms after ${t0what})`);
  }
  return { sent, answered };
}

function inNs(ns: string, cmd: string[]): string {
  const r = spawnSync('ip', ['netns', 'exec', ns, ...cmd], { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`${cmd.join(' ')} in ${ns}: ${r.stderr}`);
  return r.stdout;
}

/**
 * What the kernel holds for host `h` and the namespaces its meshd made (names starting with
 * `prefix`), as sorted lines that stay the same while nothing is reprogrammed: namespace inodes,
 * links (index, name, master), permanent neighbours and FDB entries (each as often as the kernel
 * has it), nftables rules without counters.
 */
export function kernelState(h: TestHost, prefix: string): string[] {
  const out: string[] = [];
  for (const ns of [h.name, ...netnsList().filter((n) => n.startsWith(prefix))]) {
    out.push(`${ns} inode ${statSync(`/run/netns/${ns}`).ino}`);
    for (const l of inNs(ns, ['ip', '-o', 'link', 'show']).split('\n')) {
      const m = /^(\d+): (\S+?):/.exec(l);
      if (m) out.push(`${ns} link ${m[1]} ${m[2]} ${/master (\S+)/.exec(l)?.[1] ?? ''}`);
    }
    for (const l of inNs(ns, ['ip', 'neigh', 'show', 'nud', 'permanent']).split('\n'))
      if (l.trim()) out.push(`${ns} neigh ${l.trim()}`);
    for (const l of inNs(ns, ['bridge', 'fdb', 'show']).split('\n'))
      if (/ dst /.test(l) || / permanent/.test(l)) out.push(`${ns} fdb ${l.trim()}`);
    for (const l of inNs(ns, ['nft', 'list', 'ruleset']).split('\n')) {
      const s = l.replace(/counter packets \d+ bytes \d+/g, 'counter').trim();
      if (s) out.push(`${ns} nft ${s}`);
    }
  }
  return out.sort();
}

/** Neighbour or FDB lines that occur more than once (an entry programmed twice). */
export function duplicates(lines: readonly string[]): string[] {
  const seen = new Set<string>();
  const dup = new Set<string>();
  for (const l of lines) {
    if (!/ (neigh|fdb) /.test(l)) continue;
    if (seen.has(l)) dup.add(l);
    seen.add(l);
  }
  return [...dup];
}

/** An HTTP server answering `<VER> <task name> <node name>` (VER from its environment). */
export const ECHO_SERVER = [
  'node',
  '-e',
  "require('http').createServer((q,r)=>r.end((process.env.VER||'-')+' '+process.env.MESH_TASK_NAME+' '+process.env.MESH_NODE_NAME+'\\n')).listen(80)",
];
