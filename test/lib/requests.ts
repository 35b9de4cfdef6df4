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
import { spawnSync } from 'node:child_process';

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
