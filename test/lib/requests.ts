/**
 * Every request counted: the demo, the services scenario and the soak send HTTP requests
 * through published ports and VIPs, and each verdict after convergence is `answered/sent` per
 * (from host, to address) pair. A request that got no answer is a lost one, never ignored: a
 * load balancer that keeps one dead backend out of three answers two thirds of the time, and
 * counting only the answers hides it (the demo did, issue 13).
 *
 * Waits that poll until something converges may retry with `httpGet` alone; what they send is
 * not part of a verdict.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, fstatSync, openSync, readSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * A task's HTTP server on port 80 answering `<task name> <node name>` (meshd sets both in the
 * environment; node is there wherever meshd runs).
 */
export const NAMING_SERVER = [
  'node',
  '-e',
  "require('http').createServer((q,r)=>r.end(process.env.MESH_TASK_NAME+' '+process.env.MESH_NODE_NAME+'\\n')).listen(80)",
];

/** How long a client process (HttpClients) waits for an answer before counting it lost. */
export const CLIENT_DEADLINE_MS = 1_000;

/**
 * A client process: requests its URLs round robin until killed, each on a new connection, one
 * deadline for the whole exchange whatever events do or do not come; appends one line per
 * request to the file named first: start time (ms), URL, the answer's first word or `-` and why
 * (`timeout` or the socket error, e.g. ECONNREFUSED: nothing listened, ECONNRESET).
 */
const CLIENT = `
const http = require('http');
const fs = require('fs');
const [out, gap, ...urls] = process.argv.slice(1);
let i = 0;
const once = () => {
  const url = urls[i++ % urls.length];
  const start = Date.now();
  let done = false;
  const end = (answer, why) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    fs.appendFileSync(out, start + ' ' + url + ' ' + (answer || '-') + (answer ? '' : ' ' + why) + '\\n');
    setTimeout(once, Number(gap));
  };
  const timer = setTimeout(() => { req.destroy(); end('', 'timeout'); }, ${CLIENT_DEADLINE_MS});
  const req = http.get(url, { agent: false }, (res) => {
    let b = '';
    res.on('data', (d) => (b += d));
    res.on('end', () => end(b.trim().split(' ')[0]));
    res.on('error', (e) => end('', e.code || 'error'));
  });
  req.on('error', (e) => end('', e.code || 'error'));
};
once();
`;

/** One request of a client process: start time, `ip:port` it went to, answer (null: none). */
export interface ClientLine {
  at: number;
  from: string;
  to: string;
  answer: string | null;
  /** Why there was no answer: `timeout` (the deadline passed) or the socket's error code. */
  error?: string;
}

/**
 * Client processes that keep requesting while a harness changes the cluster. Their lines go to
 * files read by `read()`, not to pipes: a harness blocked in meshctl for seconds at a time read
 * pipe lines tens of seconds late.
 */
export class HttpClients {
  private readonly procs: ChildProcess[] = [];
  private readonly outputs: { from: string; file: string; offset: number; rest: string }[] = [];

  /** @param dir where the client files go (the caller removes it). */
  constructor(private readonly dir: string) {}

  /** A client in namespace `ns`, labelled `from`, `gapMs` between requests. */
  start(from: string, ns: string, urls: string[], gapMs = 0): ChildProcess {
    const file = join(this.dir, `client-${this.outputs.length}.log`);
    writeFileSync(file, '');
    const p = spawn(
      'ip',
      ['netns', 'exec', ns, process.execPath, '-e', CLIENT, file, String(gapMs), ...urls],
      { stdio: 'ignore' },
    );
    this.procs.push(p);
    this.outputs.push({ from, file, offset: 0, rest: '' });
    return p;
  }

  /** Every client's requests finished since the last call. */
  read(): ClientLine[] {
    const out: ClientLine[] = [];
    for (const o of this.outputs) {
      const fd = openSync(o.file, 'r');
      try {
        const size = fstatSync(fd).size;
        if (size <= o.offset) continue;
        const buf = Buffer.alloc(size - o.offset);
        readSync(fd, buf, 0, buf.length, o.offset);
        o.offset = size;
        const lines = (o.rest + buf.toString('utf8')).split('\n');
        o.rest = lines.pop() ?? '';
        for (const l of lines) {
          const [at, to, answer, error] = l.split(' ');
          if (at === undefined || to === undefined) continue;
          out.push({
            at: Number(at),
            from: o.from,
            to: to.replace(/^http:\/\//, '').replace(/\/$/, ''),
            answer: answer === '-' ? null : (answer ?? null),
            ...(answer === '-' && error ? { error } : {}),
          });
        }
      } finally {
        closeSync(fd);
      }
    }
    return out;
  }

  stop(): void {
    for (const p of this.procs) p.kill('SIGKILL');
  }
}

/**
 * One HTTP GET from inside network namespace `ns` on a new connection (curl, as a user would
 * type it; scripts/setup installs it): the body trimmed, or null for no answer in `timeoutMs`.
 */
export function httpGet(ns: string, url: string, timeoutMs = 2_000): string | null {
  const r = spawnSync(
    'ip',
    ['netns', 'exec', ns, 'curl', '-s', '-m', String(timeoutMs / 1000), url],
    { encoding: 'utf8', timeout: timeoutMs + 3_000 },
  );
  return r.status === 0 ? r.stdout.trim() : null;
}

/** answered/sent of one (from, to) pair, and who answered how often. */
export interface PairCount {
  from: string;
  to: string;
  sent: number;
  answered: number;
  /** Answer (as `name` made it: task or node name) → count. */
  by: Map<string, number>;
}

/** A client: a label for the reports (`h1`, `task web.1`) and the namespace it sends from. */
export interface Client {
  label: string;
  ns: string;
}

export class RequestCount {
  readonly pairs = new Map<string, PairCount>();

  /**
   * @param name what an answer is counted as (default the whole body), e.g. the task name
   *   that is its first word.
   */
  constructor(private readonly name: (body: string) => string = (b) => b) {}

  /** Count one request from `from` to `to` (`ip:port`) with its answer (null: none). */
  record(from: string, to: string, answer: string | null): void {
    const k = `${from}\u0000${to}`;
    let p = this.pairs.get(k);
    if (p === undefined) {
      p = { from, to, sent: 0, answered: 0, by: new Map() };
      this.pairs.set(k, p);
    }
    p.sent++;
    if (answer === null || answer === '') return;
    p.answered++;
    const n = this.name(answer);
    p.by.set(n, (p.by.get(n) ?? 0) + 1);
  }

  /**
   * `n` requests (each a new connection) from `from` to `http://${to}${path}`, counted; this
   * batch's answers by name and how many went unanswered.
   */
  send(from: Client, to: string, n: number, path = '/'): { by: Map<string, number>; lost: number } {
    const by = new Map<string, number>();
    let lost = 0;
    for (let i = 0; i < n; i++) {
      const a = httpGet(from.ns, `http://${to}${path}`);
      this.record(from.label, to, a);
      if (a === null || a === '') lost++;
      else by.set(this.name(a), (by.get(this.name(a)) ?? 0) + 1);
    }
    return { by, lost };
  }

  /** Every client sends `n` requests to every address; the count of this round alone. */
  round(froms: readonly Client[], tos: readonly string[], n: number, path = '/'): RequestCount {
    const r = new RequestCount(this.name);
    for (const f of froms) {
      for (const to of tos) {
        for (let i = 0; i < n; i++) {
          const a = httpGet(f.ns, `http://${to}${path}`);
          this.record(f.label, to, a);
          r.record(f.label, to, a);
        }
      }
    }
    return r;
  }

  get sent(): number {
    return [...this.pairs.values()].reduce((s, p) => s + p.sent, 0);
  }

  get answered(): number {
    return [...this.pairs.values()].reduce((s, p) => s + p.answered, 0);
  }

  get lost(): number {
    return this.sent - this.answered;
  }

  /** Answers by name over every pair whose address is `to` (all pairs without it). */
  answersTo(to?: string): Map<string, number> {
    const out = new Map<string, number>();
    for (const p of this.pairs.values()) {
      if (to !== undefined && p.to !== to) continue;
      for (const [k, v] of p.by) out.set(k, (out.get(k) ?? 0) + v);
    }
    return out;
  }

  /** One line per pair, e.g. `h1 → 198.18.0.2:8080  12/12 answered`; lost ones say so. */
  lines(): string[] {
    return [...this.pairs.values()].map(
      (p) =>
        `${p.from} → ${p.to}  ${p.answered}/${p.sent} answered${p.answered < p.sent ? `  (${p.sent - p.answered} LOST)` : ''}`,
    );
  }

  /** Pairs with a request that got no answer. */
  failed(): PairCount[] {
    return [...this.pairs.values()].filter((p) => p.answered < p.sent);
  }
}
