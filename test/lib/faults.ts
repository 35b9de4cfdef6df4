/**
 * Fault injection for tests on real processes in TestNet hosts (test/lib/testnet.ts), in the
 * manner of Jepsen's nemeses, and the client side of a linearizability test:
 *
 * - `NetFaults`: partitions between hosts, both ways or one way, as nftables drops inside the
 *   receiving host's namespace (a table of our own, `inet meshfault`, rewritten whole on every
 *   change and removed on heal and teardown); matched by underlay address (198.18.x.y).
 * - `ManagedProc`: a restartable process with kill -9, SIGSTOP and SIGCONT.
 * - `faultSchedule`: a seeded, bounded list of fault episodes (partition, one-way partition,
 *   kill -9, SIGSTOP, a crash of every node at once), each held for a while and then undone;
 *   `runSchedule` plays one against a cluster.
 * - `ClientPool`: concurrent clients doing random reads, writes and compare-and-sets on a few
 *   keys through a `KvClient` (the HTTP one talks to meshd's debug register on its unix socket),
 *   recording each operation's call and return times and result for
 *   test/lib/linearizability.ts. An operation whose outcome is unknown (time-out, reset, server
 *   error) is recorded without a return ("pending": it may have taken effect at any time after
 *   its call, or never); one that provably never reached a server (connection refused) is left
 *   out of the history.
 * - `lostWrites`: after healing, every acknowledged write must still be visible: the final read
 *   of each key must not return a value that was certainly replaced by an acknowledged write.
 *
 * Test library: may import node:*, test/lib/*, src/raft/random.ts.
 */

import type { ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import { performance } from 'node:perf_hooks';
import { SeededRandom } from '../../src/raft/random.js';
import type { KvOp } from './linearizability.js';
import type { TestHost } from './testnet.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// --- network faults ---

/** The nftables table every fault rule lives in (one per host namespace). */
export const FAULT_TABLE = 'meshfault';

export class NetFaults {
  private readonly hosts: TestHost[];
  /** Blocked directions, `from>to` by host position (0-based). */
  private readonly blocked = new Set<string>();
  /** nft invocations made (for reports). */
  changes = 0;

  constructor(hosts: TestHost[]) {
    this.hosts = hosts;
  }

  /** Drop traffic between `a` and `b` (from `a` to `b` only when `oneWay`). */
  partition(a: number, b: number, opts: { oneWay?: boolean } = {}): void {
    this.blocked.add(`${a}>${b}`);
    if (opts.oneWay !== true) this.blocked.add(`${b}>${a}`);
    this.render(opts.oneWay === true ? [b] : [a, b]);
  }

  /** Drop traffic from every host of `from` to every host of `to`, and back unless `oneWay`. */
  split(from: readonly number[], to: readonly number[], opts: { oneWay?: boolean } = {}): void {
    for (const a of from) {
      for (const b of to) {
        if (a === b) continue;
        this.blocked.add(`${a}>${b}`);
        if (opts.oneWay !== true) this.blocked.add(`${b}>${a}`);
      }
    }
    this.render([...from, ...to]);
  }

  /** Cut host `a` off from every other host, both ways. */
  isolate(a: number): void {
    const others = this.hosts.map((_, i) => i).filter((i) => i !== a);
    this.split([a], others);
  }

  /** Undo every partition (or only those between `a` and `b`). */
  heal(a?: number, b?: number): void {
    if (a === undefined || b === undefined) {
      this.blocked.clear();
      this.render(this.hosts.map((_, i) => i));
      return;
    }
    this.blocked.delete(`${a}>${b}`);
    this.blocked.delete(`${b}>${a}`);
    this.render([a, b]);
  }

  /** Blocked directions as [from, to] host positions. */
  current(): Array<[number, number]> {
    return [...this.blocked].map((s) => s.split('>').map(Number) as [number, number]);
  }

  /** Whether traffic from `a` reaches `b` as far as our rules go. */
  reaches(a: number, b: number): boolean {
    return !this.blocked.has(`${a}>${b}`);
  }

  /** Remove our table from every host (teardown; safe on hosts already gone). */
  destroy(): void {
    this.blocked.clear();
    for (const h of this.hosts) {
      h.exec('nft', ['-f', '-'], {
        input: `table inet ${FAULT_TABLE}\ndelete table inet ${FAULT_TABLE}\n`,
        timeoutMs: 5_000,
      });
    }
  }

  /**
   * Rewrite the table of each host in `which` from `blocked`: one atomic nft transaction per
   * host. Drops are made where packets arrive (input hook), so a one-way partition a→b loses
   * a's packets at b while b's still reach a.
   */
  private render(which: readonly number[]): void {
    for (const i of new Set(which)) {
      const h = this.hosts[i];
      if (h === undefined) throw new Error(`faults: no host at position ${i}`);
      const from = this.hosts.filter((_, j) => this.blocked.has(`${j}>${i}`)).map((x) => x.addr);
      let script = `table inet ${FAULT_TABLE}\ndelete table inet ${FAULT_TABLE}\n`;
      if (from.length > 0) {
        script +=
          `table inet ${FAULT_TABLE} {\n  chain input {\n` +
          `    type filter hook input priority -150; policy accept;\n` +
          `    ip saddr { ${from.join(', ')} } drop\n  }\n}\n`;
      }
      h.run('nft', ['-f', '-'], { input: script, timeoutMs: 5_000 });
      this.changes++;
    }
  }
}

// --- processes ---

/** A process that can be killed, paused and started again with the same command. */
export class ManagedProc {
  readonly name: string;
  private readonly spawnFn: () => ChildProcess;
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  private paused = false;
  /** Exits not caused by us (a crash): name and code/signal, for the report. */
  readonly unexpectedExits: string[] = [];
  private expectExit = false;
  starts = 0;

  /** `spawn` starts the process (e.g. `host.spawn(…)`; `ip netns exec` execs it, same pid). */
  constructor(name: string, spawn: () => ChildProcess) {
    this.name = name;
    this.spawnFn = spawn;
  }

  get running(): boolean {
    return this.child !== null;
  }

  get stopped(): boolean {
    return this.paused;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  start(): void {
    if (this.child !== null) throw new Error(`faults: ${this.name} already running`);
    const child = this.spawnFn();
    this.child = child;
    this.paused = false;
    this.expectExit = false;
    this.starts++;
    this.exited = new Promise<void>((resolve) => {
      child.on('exit', (code, signal) => {
        if (!this.expectExit) this.unexpectedExits.push(`${this.name}: ${signal ?? code}`);
        if (this.child === child) {
          this.child = null;
          this.paused = false;
        }
        resolve();
      });
    });
  }

  /** SIGKILL and wait for the exit (a stopped process dies too). */
  async kill9(): Promise<void> {
    const c = this.child;
    if (c === null) return;
    this.expectExit = true;
    c.kill('SIGKILL');
    await this.exited;
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async terminate(graceMs = 3_000): Promise<void> {
    const c = this.child;
    if (c === null) return;
    this.expectExit = true;
    if (this.paused) c.kill('SIGCONT');
    c.kill('SIGTERM');
    const done = await Promise.race([
      this.exited.then(() => true),
      sleep(graceMs).then(() => false),
    ]);
    if (!done) await this.kill9();
  }

  stop(): void {
    if (this.child === null || this.paused) return;
    this.child.kill('SIGSTOP');
    this.paused = true;
  }

  cont(): void {
    if (this.child === null || !this.paused) return;
    this.child.kill('SIGCONT');
    this.paused = false;
  }
}

// --- schedules ---

export type FaultKind = 'partition' | 'oneway' | 'kill' | 'stop' | 'crash-all';

export interface FaultEvent {
  kind: FaultKind;
  /** Start, in ms from the start of the run. */
  at: number;
  /** How long the fault lasts before it is undone. */
  holdMs: number;
  /**
   * The affected side (host positions): partitioned from the rest (`partition`), whose
   * packets to the rest are dropped (`oneway`; the rest's to them when `reverse`), killed or
   * stopped. `crash-all`: every node.
   */
  nodes: number[];
  /** Put the current leader into `nodes` when it is known at run time. */
  leader: boolean;
  reverse: boolean;
}

export interface ScheduleOptions {
  seed: number;
  /** Cluster size. */
  nodes: number;
  /** No episode starts past this (ms). */
  durationMs: number;
  /** At most this many episodes. */
  maxFaults: number;
  /** @default 300 */
  minHoldMs?: number;
  /** @default 2_500 */
  maxHoldMs?: number;
  /** Quiet time after each episode, [gapMs, 2 gapMs). @default 700 */
  gapMs?: number;
  /** Kinds to draw from. @default all */
  kinds?: readonly FaultKind[];
}

/**
 * A seeded sequence of fault episodes; deterministic per options. Each kind appears at least
 * once when there are at least as many episodes as kinds.
 */
export function faultSchedule(o: ScheduleOptions): FaultEvent[] {
  const r = new SeededRandom(o.seed);
  const kinds = o.kinds ?? ['partition', 'oneway', 'kill', 'stop', 'crash-all'];
  const minHold = o.minHoldMs ?? 300;
  const maxHold = o.maxHoldMs ?? 2_500;
  const gap = o.gapMs ?? 700;
  const out: FaultEvent[] = [];
  let at = gap;
  const pick = (k: number): number[] => {
    const all = Array.from({ length: o.nodes }, (_, i) => i);
    for (let i = all.length - 1; i > 0; i--) {
      const j = r.intn(i + 1);
      [all[i], all[j]] = [all[j]!, all[i]!];
    }
    return all.slice(0, k).sort((a, b) => a - b);
  };
  const minority = Math.floor((o.nodes - 1) / 2);
  const slots: { at: number; holdMs: number }[] = [];
  for (let n = 0; n < o.maxFaults; n++) {
    const holdMs = minHold + r.intn(Math.max(1, maxHold - minHold));
    if (at + holdMs > o.durationMs) break;
    slots.push({ at, holdMs });
    at += holdMs + gap + r.intn(gap);
  }
  // crash-all is the costliest episode (every node restarts): a quarter of its share.
  const draw = (): FaultKind => {
    const k = kinds[r.intn(kinds.length)]!;
    return k === 'crash-all' && r.intn(4) !== 0 ? kinds[r.intn(kinds.length)]! : k;
  };
  const seq = slots.map(draw);
  // Every kind at least once when there is room: a missing kind takes the slot of one drawn
  // more than once.
  for (const k of kinds) {
    if (seq.includes(k)) continue;
    const dup = seq.flatMap((x, i) => (seq.indexOf(x) !== seq.lastIndexOf(x) ? [i] : []));
    if (dup.length === 0) break;
    seq[dup[r.intn(dup.length)]!] = k;
  }
  for (let n = 0; n < slots.length; n++) {
    const kind = seq[n]!;
    let size: number;
    switch (kind) {
      case 'partition':
      case 'oneway':
        size = 1 + r.intn(o.nodes - 1);
        break;
      case 'kill':
      case 'stop':
        // Mostly a minority (the cluster stays available); sometimes a majority (it must not
        // answer, then recover).
        size = r.intn(5) === 0 ? minority + 1 : 1 + r.intn(Math.max(1, minority));
        break;
      case 'crash-all':
        size = o.nodes;
        break;
    }
    out.push({
      kind,
      ...slots[n]!,
      nodes: pick(size),
      leader: kind !== 'crash-all' && r.intn(2) === 0,
      reverse: kind === 'oneway' && r.intn(2) === 0,
    });
  }
  return out;
}

export function describeEvent(e: FaultEvent): string {
  const who = `[${e.nodes.map((i) => i + 1).join(',')}]`;
  const what =
    e.kind === 'oneway' ? (e.reverse ? `rest -> ${who} dropped` : `${who} -> rest dropped`) : who;
  return `${Math.round(e.at)} ms ${e.kind} ${what} for ${e.holdMs} ms`;
}

/** What `runSchedule` needs of the network (NetFaults, or a fake in unit tests). */
export interface Partitioner {
  split(from: readonly number[], to: readonly number[], opts?: { oneWay?: boolean }): void;
  heal(): void;
}

export interface Cluster {
  net: Partitioner;
  procs: ManagedProc[];
  /** Position of the current leader, if one is known (asked of running nodes). */
  leader(): Promise<number | undefined>;
  /** Called after a killed node is started again (e.g. wait for its socket). */
  restarted?(i: number): Promise<void>;
  log?(line: string): void;
}

export interface ScheduleStats {
  episodes: number;
  byKind: Record<FaultKind, number>;
  /** Episodes whose target set included the leader at the time. */
  leaderHits: number;
  kills: number;
  stops: number;
  partitions: number;
  /** Episodes skipped because the run fell behind its plan. */
  skipped: number;
  /** Why the run stopped early (e.g. a process did not come back); the history still counts. */
  error?: string;
}

/**
 * Play `events` against the cluster, each at its time from now, undoing each after its hold.
 * Restarts can make the run fall behind its plan; an episode that would then end past
 * `maxMs` (default: the planned end) is skipped, unless it is the last one of a kind not yet
 * played (see missedKinds). Stops early (undoing the current fault) when
 * `signal` aborts or an injection or restart fails (then `error` says why; it never throws).
 * Leaves the network healed and every process started and continued.
 */
export async function runSchedule(
  events: readonly FaultEvent[],
  c: Cluster,
  signal?: AbortSignal,
  maxMs?: number,
): Promise<ScheduleStats> {
  const st: ScheduleStats = {
    episodes: 0,
    byKind: { partition: 0, oneway: 0, kill: 0, stop: 0, 'crash-all': 0 },
    leaderHits: 0,
    kills: 0,
    stops: 0,
    partitions: 0,
    skipped: 0,
  };
  const t0 = performance.now();
  const wait = async (until: number): Promise<void> => {
    for (let i = 0; i < 100_000 && signal?.aborted !== true; i++) {
      const left = until - (performance.now() - t0);
      if (left <= 0) return;
      await sleep(Math.min(left, 50));
    }
  };
  const n = c.procs.length;
  try {
    const last = events[events.length - 1];
    const budget = maxMs ?? (last === undefined ? 0 : last.at + last.holdMs);
    for (const [idx, e] of events.entries()) {
      await wait(e.at);
      if (signal?.aborted === true) break;
      const now = performance.now() - t0;
      // The last chance for a kind not played yet is taken even late: a run must exercise
      // every kind it scheduled (raft-faults asserts it), and one hold past the budget is
      // bounded.
      const lastChance =
        st.byKind[e.kind] === 0 && !events.slice(idx + 1).some((x) => x.kind === e.kind);
      if (now > e.at + 100 && now + e.holdMs > budget && !lastChance) {
        st.skipped++;
        continue;
      }
      let nodes = [...e.nodes];
      if (e.leader) {
        const l = await c.leader();
        if (l !== undefined && !nodes.includes(l)) nodes[0] = l;
      }
      nodes = [...new Set(nodes)].sort((a, b) => a - b);
      const l = await c.leader();
      if (l !== undefined && nodes.includes(l)) st.leaderHits++;
      const rest = Array.from({ length: n }, (_, i) => i).filter((i) => !nodes.includes(i));
      c.log?.(`fault: ${describeEvent({ ...e, nodes })} (leader ${l === undefined ? '?' : l + 1})`);
      st.episodes++;
      st.byKind[e.kind]++;
      switch (e.kind) {
        case 'partition':
          c.net.split(nodes, rest);
          st.partitions++;
          break;
        case 'oneway':
          if (e.reverse) c.net.split(rest, nodes, { oneWay: true });
          else c.net.split(nodes, rest, { oneWay: true });
          st.partitions++;
          break;
        case 'kill':
        case 'crash-all':
          for (const i of nodes) await c.procs[i]!.kill9();
          st.kills += nodes.length;
          break;
        case 'stop':
          for (const i of nodes) c.procs[i]!.stop();
          st.stops += nodes.length;
          break;
      }
      await wait(e.at + e.holdMs);
      await undo(c);
    }
  } catch (e) {
    st.error = e instanceof Error ? e.message : String(e);
  }
  try {
    await undo(c);
  } catch (e) {
    st.error ??= e instanceof Error ? e.message : String(e);
  }
  return st;
}

/** Kinds that `events` schedules but the run did not play (skipped or stopped early), sorted. */
export function missedKinds(events: readonly FaultEvent[], st: ScheduleStats): FaultKind[] {
  return [...new Set(events.map((e) => e.kind))].filter((k) => st.byKind[k] === 0).sort();
}

/** Heal the network, continue stopped processes and start killed ones (all at once). */
async function undo(c: Cluster): Promise<void> {
  c.net.heal();
  for (const p of c.procs) p.cont();
  const started: number[] = [];
  for (let i = 0; i < c.procs.length; i++) {
    if (!c.procs[i]!.running) {
      c.procs[i]!.start();
      started.push(i);
    }
  }
  if (c.restarted !== undefined) await Promise.all(started.map((i) => c.restarted!(i)));
}

// --- clients ---

/** The request provably never reached a server: the operation had no effect. */
export class NotSentError extends Error {}

/** The debug register of one node. Errors other than NotSentError mean "outcome unknown". */
export interface KvClient {
  put(key: string, value: string): Promise<void>;
  /** Compare-and-set: `prev` null means the key must be absent. Whether it swapped. */
  cas(key: string, prev: string | null, value: string): Promise<boolean>;
  get(key: string): Promise<string | null>;
}

/** One HTTP request over a unix socket: status and parsed JSON body. */
export function httpJson(
  socketPath: string,
  method: 'GET' | 'POST',
  path: string,
  body: unknown,
  timeoutMs: number,
): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    // A fresh connection per request: a refused connect then proves the request was not sent
    // (a kept-alive socket to a killed server fails ambiguously).
    const req = request(
      {
        socketPath,
        method,
        path,
        agent: false,
        headers:
          data === undefined
            ? {}
            : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('end', () => {
          clearTimeout(timer);
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown;
          try {
            parsed = text === '' ? null : JSON.parse(text);
          } catch {
            parsed = text;
          }
          resolve({ status: res.statusCode ?? 0, body: parsed });
        });
        res.on('error', (e) => {
          clearTimeout(timer);
          reject(e);
        });
      },
    );
    const timer = setTimeout(() => {
      req.destroy(new Error(`${method} ${path}: no answer in ${timeoutMs} ms`));
    }, timeoutMs);
    req.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (e.code === 'ECONNREFUSED' || e.code === 'ENOENT') reject(new NotSentError(e.message));
      else reject(e);
    });
    req.end(data);
  });
}

function errorText(r: { status: number; body: unknown }): string {
  const b = r.body as { error?: { message?: string } | string } | null;
  const m = typeof b?.error === 'string' ? b.error : (b?.error?.message ?? JSON.stringify(r.body));
  return `http ${r.status}: ${m}`;
}

/** The `KvClient` of a meshd manager: `/v1/debug/kv` on its API socket. */
export function httpKv(socketPath: string, timeoutMs = 2_000): KvClient {
  const post = async (body: unknown): Promise<{ ok?: unknown }> => {
    const r = await httpJson(socketPath, 'POST', '/v1/debug/kv', body, timeoutMs);
    if (r.status !== 200) throw new Error(errorText(r));
    return r.body ?? {};
  };
  return {
    async put(key, value) {
      const b = await post({ key, value });
      if (b.ok !== true) throw new Error(`put ${key}: unexpected answer ${JSON.stringify(b)}`);
    },
    async cas(key, prev, value) {
      const r = await httpJson(socketPath, 'POST', '/v1/debug/kv', { key, value, prev }, timeoutMs);
      // meshd answers a swap whose expectation failed at apply time (a committed, definite
      // outcome) with 409 ECONFLICT; any other error leaves the outcome unknown.
      const code = (r.body as { error?: { code?: unknown } } | null)?.error?.code;
      if (r.status === 409 && code === 'ECONFLICT') return false;
      if (r.status !== 200) throw new Error(errorText(r));
      const b = (r.body ?? {}) as { ok?: unknown };
      if (typeof b.ok !== 'boolean') {
        throw new Error(`cas ${key}: unexpected answer ${JSON.stringify(b)}`);
      }
      return b.ok;
    },
    async get(key) {
      const r = await httpJson(
        socketPath,
        'GET',
        `/v1/debug/kv?key=${encodeURIComponent(key)}`,
        undefined,
        timeoutMs,
      );
      if (r.status !== 200) throw new Error(errorText(r));
      const v = (r.body as { value?: unknown } | null)?.value;
      if (v !== null && typeof v !== 'string') {
        throw new Error(`get ${key}: unexpected answer ${JSON.stringify(r.body)}`);
      }
      return v;
    },
  };
}

export interface PoolOptions {
  seed: number;
  /** One client per node; each operation goes to a random one. */
  nodes: KvClient[];
  /** Concurrent client loops. */
  clients: number;
  keys: readonly string[];
  /** Pause between a client's operations, [0, thinkMs). @default 10 */
  thinkMs?: number;
  /** Mix of operations, summing to at most 1; the rest are reads. @default 0.3 / 0.3 */
  putShare?: number;
  casShare?: number;
}

export interface PoolStats {
  invoked: number;
  ok: number;
  /** Outcome unknown (recorded as pending). */
  unknown: number;
  /** Never sent (left out of the history). */
  notSent: number;
  /** Reads that failed (a failed read observes nothing; left out). */
  failedReads: number;
  casSwapped: number;
  casFailed: number;
  /** A few distinct error messages with counts, for the report. */
  errors: Map<string, number>;
}

/**
 * Concurrent clients on a few keys, recording a history. `run(untilMs)` drives them until the
 * time or an abort; `history` then holds every operation (times in ms from `performance`).
 */
export class ClientPool {
  readonly history: KvOp[] = [];
  readonly stats: PoolStats = {
    invoked: 0,
    ok: 0,
    unknown: 0,
    notSent: 0,
    failedReads: 0,
    casSwapped: 0,
    casFailed: 0,
    errors: new Map(),
  };
  private readonly o: PoolOptions;
  private readonly r: SeededRandom;
  private seq = 0;

  constructor(o: PoolOptions) {
    this.o = o;
    this.r = new SeededRandom(o.seed);
  }

  async run(durationMs: number, signal?: AbortSignal): Promise<void> {
    const end = performance.now() + durationMs;
    const loops: Promise<void>[] = [];
    for (let c = 0; c < this.o.clients; c++) loops.push(this.loop(c, end, signal));
    await Promise.all(loops);
  }

  /** One operation by `client` on `key` through node `node` (also used for final reads). */
  async op(
    client: number,
    node: number,
    kind: 'put' | 'cas' | 'get',
    key: string,
    prev: string | null = null,
  ): Promise<KvOp | null> {
    const kv = this.o.nodes[node]!;
    const value = `c${client}.${++this.seq}`;
    const input: KvOp['input'] =
      kind === 'put'
        ? { op: 'put', key, value }
        : kind === 'cas'
          ? { op: 'cas', key, expect: prev, value }
          : { op: 'get', key };
    this.stats.invoked++;
    const call = performance.now();
    try {
      let output: KvOp['output'];
      if (kind === 'put') await kv.put(key, value);
      else if (kind === 'cas') {
        output = await kv.cas(key, prev, value);
        if (output) this.stats.casSwapped++;
        else this.stats.casFailed++;
      } else output = await kv.get(key);
      const op: KvOp = { client, call, ret: performance.now(), input, output };
      this.history.push(op);
      this.stats.ok++;
      return op;
    } catch (e) {
      const msg = (e instanceof Error ? e.message : String(e)).replace(/\d+/g, 'N').slice(0, 120);
      this.stats.errors.set(msg, (this.stats.errors.get(msg) ?? 0) + 1);
      if (e instanceof NotSentError) {
        this.stats.notSent++;
        return null;
      }
      if (kind === 'get') {
        this.stats.failedReads++;
        return null;
      }
      this.stats.unknown++;
      const op: KvOp = { client, call, input };
      this.history.push(op);
      return op;
    }
  }

  private async loop(client: number, end: number, signal?: AbortSignal): Promise<void> {
    const think = this.o.thinkMs ?? 10;
    const putShare = this.o.putShare ?? 0.3;
    const casShare = this.o.casShare ?? 0.3;
    // The value this client last saw per key: a compare-and-set expects it, so some succeed.
    const seen = new Map<string, string | null>();
    for (let i = 0; i < 10_000_000; i++) {
      if (performance.now() >= end || signal?.aborted === true) return;
      const key = this.o.keys[this.r.intn(this.o.keys.length)]!;
      const node = this.r.intn(this.o.nodes.length);
      const x = this.r.next();
      const kind = x < putShare ? 'put' : x < putShare + casShare ? 'cas' : 'get';
      const op = await this.op(client, node, kind, key, seen.get(key) ?? null);
      if (op?.ret !== undefined) {
        if (op.input.op === 'put') seen.set(key, op.input.value);
        else if (op.input.op === 'get') seen.set(key, op.output as string | null);
        else if (op.input.op === 'cas' && op.output === true) seen.set(key, op.input.value);
      } else if (op !== null) {
        // Unknown outcome: back off a little (the node is probably down or cut off).
        await sleep(50 + this.r.intn(100));
      } else await sleep(50);
      if (think > 0) await sleep(this.r.intn(think));
    }
  }

  /**
   * After healing: read every key through every node in `nodes` (positions), retrying each
   * until it answers, within `limitMs` overall; the reads join the history. Returns the value
   * per key, or throws naming what did not answer.
   */
  async finalReads(nodes: readonly number[], limitMs: number): Promise<Map<string, string | null>> {
    const end = performance.now() + limitMs;
    const out = new Map<string, string | null>();
    for (const key of this.o.keys) {
      for (const node of nodes) {
        let op: KvOp | null = null;
        for (let i = 0; i < 1_000 && performance.now() < end; i++) {
          op = await this.op(-1, node, 'get', key);
          if (op?.ret !== undefined) break;
          await sleep(100);
        }
        if (op?.ret === undefined) {
          throw new Error(
            `final read of ${key} through node ${node + 1}: no answer in ${limitMs} ms`,
          );
        }
        out.set(key, op.output as string | null);
      }
    }
    return out;
  }
}

/**
 * Acknowledged writes missing at the end: for each key, given the final value `finals`
 * read after healing, an acknowledged write W (put, or successful compare-and-set) is lost
 * when the write of the final value returned before W was called (or the final value is
 * absent): W must follow it in every linearization, so some later write must be visible
 * instead (values are unique per write). Returns one line per lost write.
 */
export function lostWrites(history: readonly KvOp[], finals: Map<string, string | null>): string[] {
  const lost: string[] = [];
  for (const [key, value] of finals) {
    const writes = history.filter(
      (o) =>
        o.input.key === key &&
        (o.input.op === 'put' ||
          (o.input.op === 'cas' && (o.ret === undefined || o.output === true))),
    );
    const writer = writes.find((o) => o.input.op !== 'get' && o.input.value === value);
    if (value !== null && writer === undefined) {
      lost.push(`${key}: final value ${JSON.stringify(value)} was never written`);
      continue;
    }
    const before = writer === undefined ? -Infinity : (writer.ret ?? Infinity);
    for (const w of writes) {
      if (w.ret === undefined || w === writer || w.input.op === 'get') continue;
      if (before < w.call) {
        lost.push(
          `${key}: acknowledged write ${JSON.stringify(w.input.value)} [${w.call.toFixed(1)}, ` +
            `${w.ret.toFixed(1)}] lost: final value ${JSON.stringify(value)} was written by ` +
            (writer === undefined
              ? 'nobody'
              : `an operation that returned at ${before.toFixed(1)}`),
        );
      }
    }
  }
  return lost;
}

/** Summary of a history for reports. */
export function historyStats(h: readonly KvOp[]): {
  ops: number;
  pending: number;
  reads: number;
  writes: number;
  cas: number;
} {
  let pending = 0;
  let reads = 0;
  let writes = 0;
  let cas = 0;
  for (const o of h) {
    if (o.ret === undefined) pending++;
    if (o.input.op === 'get') reads++;
    else if (o.input.op === 'put') writes++;
    else cas++;
  }
  return { ops: h.length, pending, reads, writes, cas };
}
