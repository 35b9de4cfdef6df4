/**
 * Load generator for bench/raft: closed-loop writers and a failover probe, run as a child
 * process inside a client namespace (the members' underlay addresses are reachable only from
 * inside the test net; unix sockets are files and reachable from anywhere). The parent drives
 * it over the IPC channel with LoadWorker; the same code drives both sides, so both are
 * measured by the same client, the same way.
 *
 * - level: W writers, writer i a closed loop of sequential puts of a small value to its own key
 *   `bench/w<i>`, writers spread round-robin over the targets (as etcd's `benchmark put` spreads
 *   its connections over the endpoints). After a warm-up, writes completed inside the measuring
 *   window count toward writes/s and the latency percentiles.
 * - failover: puts to one surviving member, a new one every `intervalMs` (each with its own
 *   deadline, so a request stuck on the dead leader does not hide the recovery); t0 is taken
 *   right before this process sends SIGKILL to the leader, t1 is the first acknowledgement of a
 *   put started at or after t0. Killing from here keeps t0 and t1 on one clock.
 * - request: one HTTP request (status queries, health checks) on behalf of the parent.
 *
 * May import: node built-ins, src/netlink (to fork inside a namespace), bench/lib/etcd.ts and
 * bench/lib/meshcluster.ts (the put shapes of each API).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { Agent, request as httpRequest } from 'node:http';
import type { ClientHttp2Session } from 'node:http2';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { withNetns, type Netns } from '../../src/netlink/index.js';
import { etcdGrpcPut, etcdGrpcSession, etcdPut } from './etcd.js';
import { meshPut } from './meshcluster.js';

/**
 * One member's client endpoint: etcd's client port (puts on the JSON gateway, or with `grpc`
 * on etcd's native gRPC API over HTTP/2; other requests always on the gateway), or meshd's API
 * unix socket.
 */
export type Target =
  { api: 'etcd'; host: string; port: number; grpc?: boolean } | { api: 'mesh'; socketPath: string };

/** A 3-member cluster under test, as bench/raft drives it (etcd.ts, meshcluster.ts). */
export interface BenchCluster {
  readonly side: string;
  /** Client endpoints, one per member, in member order. */
  readonly targets: Target[];
  /** Start every member and wait until the cluster takes writes. */
  start(): Promise<void>;
  /** Index of the member that is leader now. */
  leader(): Promise<number>;
  /** Process id of member i (the process `kill -9` hits). */
  pid(i: number): number;
  /** Start member i again on its data dir once its process has died. */
  restart(i: number): Promise<void>;
  /** Every member up, one leader agreed, a write through each member acknowledged. */
  waitHealthy(limitMs: number): Promise<void>;
  stop(): Promise<void>;
}

export interface HttpReply {
  status: number;
  body: string;
}

export interface LevelResult {
  writers: number;
  writes: number;
  seconds: number;
  writes_per_s: number;
  p50_ms: number;
  p99_ms: number;
  errors: number;
  firstError?: string;
  /** CPU the load generator itself used over the whole level, ms (user+system). */
  clientCpuMs: number;
  /** Every measured latency, ms to 0.01, ascending (to merge rounds). */
  latencies: number[];
}

export interface FailoverResult {
  failover_ms: number;
  /** Puts that failed or timed out between the kill and the first acknowledged one. */
  failedPuts: number;
}

type Op =
  | {
      op: 'request';
      target: Target;
      method: string;
      path: string;
      body?: unknown;
      timeoutMs: number;
    }
  | { op: 'level'; targets: Target[]; writers: number; warmupMs: number; measureMs: number }
  | {
      op: 'failover';
      target: Target;
      pid: number;
      intervalMs: number;
      putTimeoutMs: number;
      limitMs: number;
    };

type Msg = Op & { id: number };
type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: string };

/** A put as an HTTP request: the API's path and JSON body. */
interface PutShape {
  path: string;
  body: unknown;
  /** Throws unless the reply acknowledges the write. */
  check(reply: HttpReply): void;
}

function putShape(t: Target, key: string, value: string): PutShape {
  return t.api === 'etcd' ? etcdPut(key, value) : meshPut(key, value);
}

const agents = new Map<string, Agent>();

function agentFor(t: Target): Agent {
  const k = t.api === 'etcd' ? `${t.host}:${t.port}` : t.socketPath;
  let a = agents.get(k);
  if (!a) {
    a = new Agent({ keepAlive: true, maxSockets: Infinity, maxFreeSockets: 1024 });
    agents.set(k, a);
  }
  return a;
}

function request(
  t: Target,
  method: string,
  path: string,
  body: unknown,
  timeoutMs: number,
): Promise<HttpReply> {
  const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const where = t.api === 'etcd' ? { host: t.host, port: t.port } : { socketPath: t.socketPath };
    const req = httpRequest(
      {
        ...where,
        method,
        path,
        agent: agentFor(t),
        headers: data ? { 'content-type': 'application/json', 'content-length': data.length } : {},
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() });
        });
        res.on('error', (e) => {
          clearTimeout(timer);
          reject(e);
        });
      },
    );
    const timer = setTimeout(
      () => req.destroy(new Error(`${method} ${path}: no reply in ${timeoutMs} ms`)),
      timeoutMs,
    );
    req.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    req.end(data);
  });
}

const sessions = new Map<string, ClientHttp2Session>();

function sessionFor(host: string, port: number): ClientHttp2Session {
  const k = `${host}:${port}`;
  let s = sessions.get(k);
  if (!s || s.closed || s.destroyed) {
    s = etcdGrpcSession(host, port);
    sessions.set(k, s);
  }
  return s;
}

async function put(t: Target, key: string, value: string, timeoutMs: number): Promise<void> {
  if (t.api === 'etcd' && t.grpc)
    return etcdGrpcPut(sessionFor(t.host, t.port), key, value, timeoutMs);
  const s = putShape(t, key, value);
  s.check(await request(t, 'POST', s.path, s.body, timeoutMs));
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[i]!;
}

const round2 = (x: number): number => Math.round(x * 100) / 100;

/** 16-byte value, different each time so that no layer can skip a write as unchanged. */
function value(n: number): string {
  return `v${n.toString(36).padStart(15, '0')}`;
}

async function level(
  targets: Target[],
  writers: number,
  warmupMs: number,
  measureMs: number,
): Promise<LevelResult> {
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  const from = start + warmupMs;
  const to = from + measureMs;
  const lat: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  // A write slower than this is a failure for a benchmark level; it also bounds each loop.
  const putTimeoutMs = 10_000;
  const loop = async (w: number): Promise<void> => {
    const t = targets[w % targets.length]!;
    const key = `bench/w${w}`;
    for (let n = 0; performance.now() < to; n++) {
      const t0 = performance.now();
      try {
        await put(t, key, value(n), putTimeoutMs);
      } catch (e) {
        errors++;
        firstError ??= (e as Error).message;
        // Do not spin on a member that refuses: a failing loop would dominate the CPU.
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      const t1 = performance.now();
      if (t1 >= from && t1 <= to) lat.push(t1 - t0);
    }
  };
  await Promise.all(Array.from({ length: writers }, (_, w) => loop(w)));
  const cpu = process.cpuUsage(cpu0);
  lat.sort((a, b) => a - b);
  const seconds = measureMs / 1000;
  const r: LevelResult = {
    writers,
    writes: lat.length,
    seconds,
    writes_per_s: Math.round(lat.length / seconds),
    p50_ms: round2(percentile(lat, 0.5)),
    p99_ms: round2(percentile(lat, 0.99)),
    errors,
    clientCpuMs: Math.round((cpu.user + cpu.system) / 1000),
    latencies: lat.map(round2),
  };
  if (firstError !== undefined) r.firstError = firstError;
  return r;
}

async function failover(
  target: Target,
  pid: number,
  intervalMs: number,
  putTimeoutMs: number,
  limitMs: number,
): Promise<FailoverResult> {
  const maxInFlight = 1000;
  let inFlight = 0;
  let n = 0;
  let killedAt = Infinity; // until the kill
  let ackedAt: number | undefined;
  let preKillAcks = 0;
  let failedPuts = 0;
  let lastError = '';
  const fire = (): void => {
    if (inFlight >= maxInFlight) return;
    const started = performance.now();
    const afterKill = started >= killedAt;
    inFlight++;
    put(target, 'bench/failover', value(n++), putTimeoutMs).then(
      () => {
        inFlight--;
        if (!afterKill) preKillAcks++;
        else if (ackedAt === undefined) ackedAt = performance.now();
      },
      (e: Error) => {
        inFlight--;
        lastError = e.message;
        if (afterKill) failedPuts++;
      },
    );
  };
  const tick = (): Promise<void> =>
    new Promise((r) => {
      fire();
      setTimeout(r, intervalMs);
    });
  // Warm the connections and check the target takes writes before anything is killed.
  const warmUntil = performance.now() + 300;
  while (performance.now() < warmUntil) await tick();
  if (preKillAcks === 0)
    throw new Error(`failover: no put acknowledged before the kill (${lastError || 'no reply'})`);
  killedAt = performance.now();
  process.kill(pid, 'SIGKILL');
  while (ackedAt === undefined) {
    if (performance.now() - killedAt > limitMs)
      throw new Error(
        `failover: no put acknowledged within ${limitMs} ms of the kill (${failedPuts} failed; last error: ${lastError || 'none'})`,
      );
    await tick();
  }
  return { failover_ms: round2(ackedAt - killedAt), failedPuts };
}

async function handle(m: Op): Promise<unknown> {
  switch (m.op) {
    case 'request':
      return request(m.target, m.method, m.path, m.body, m.timeoutMs);
    case 'level':
      return level(m.targets, m.writers, m.warmupMs, m.measureMs);
    case 'failover':
      return failover(m.target, m.pid, m.intervalMs, m.putTimeoutMs, m.limitMs);
  }
}

/** Parent side: the load generator child running inside `ns`. */
export class LoadWorker {
  private next = 1;
  private readonly pending = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: Error) => void }
  >();

  private constructor(private readonly child: ChildProcess) {
    child.on('message', (r: Reply) => {
      const p = this.pending.get(r.id);
      if (!p) return;
      this.pending.delete(r.id);
      if (r.ok) p.resolve(r.result);
      else p.reject(new Error(r.error));
    });
    child.on('exit', (code, sig) => {
      for (const p of this.pending.values())
        p.reject(new Error(`load worker exited (${code ?? sig}) with requests pending`));
      this.pending.clear();
    });
  }

  /** Fork the worker with the calling thread switched into `ns`, so the child starts there. */
  static start(ns: Netns): LoadWorker {
    const file = fileURLToPath(import.meta.url);
    const child = withNetns(ns, () =>
      fork(file, ['--load-worker'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }),
    );
    return new LoadWorker(child);
  }

  private call<T>(op: Op): Promise<T> {
    const id = this.next++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.child.send({ ...op, id } satisfies Msg);
    });
  }

  request(
    target: Target,
    method: string,
    path: string,
    body?: unknown,
    timeoutMs = 2000,
  ): Promise<HttpReply> {
    return this.call({ op: 'request', target, method, path, body, timeoutMs });
  }

  level(
    targets: Target[],
    writers: number,
    warmupMs: number,
    measureMs: number,
  ): Promise<LevelResult> {
    return this.call({ op: 'level', targets, writers, warmupMs, measureMs });
  }

  failover(
    target: Target,
    pid: number,
    opts: { intervalMs?: number; putTimeoutMs?: number; limitMs?: number } = {},
  ): Promise<FailoverResult> {
    return this.call({
      op: 'failover',
      target,
      pid,
      intervalMs: opts.intervalMs ?? 5,
      putTimeoutMs: opts.putTimeoutMs ?? 10_000,
      limitMs: opts.limitMs ?? 20_000,
    });
  }

  close(): void {
    this.child.kill('SIGKILL');
  }
}

if (process.argv.includes('--load-worker') && process.send) {
  process.on('message', (m: Msg) => {
    handle(m).then(
      (result) => process.send!({ id: m.id, ok: true, result } satisfies Reply),
      (e: Error) => process.send!({ id: m.id, ok: false, error: e.message } satisfies Reply),
    );
  });
  // The parent going away (its IPC channel closing) ends the worker: nothing may be left behind.
  process.on('disconnect', () => process.exit(0));
}
