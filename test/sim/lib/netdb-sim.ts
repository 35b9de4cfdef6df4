// The netdb discrete-event simulator (see test/sim/netdb-sim.test.ts for what it checks).
import { NetdbCore, type NetdbEvent } from '../../../src/netdb/core.js';
import type { NetdbConfig } from '../../../src/netdb/config.js';
import { EventHeap } from './event-heap.js';

export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 1;
  }
  next(): number {
    // mulberry32
    let z = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296;
  }
  intn(n: number): number {
    return n > 0 ? Math.floor(this.next() * n) : 0;
  }
}

export interface Node {
  name: string;
  core: NetdbCore;
  up: boolean;
  /** Timer token: a wake event whose token differs is stale. */
  token: number;
  wakeAt: number;
  /** Replay of the core's watcher events: net/table/key → value text + owner. */
  watched: Map<string, string>;
}

export const TABLE = 'endpoints';
const dec = new TextDecoder();
const enc = new TextEncoder();

export class Sim {
  readonly rng: Rng;
  now = 0;
  private seq = 0;
  private readonly q = new EventHeap();
  readonly nodes = new Map<string, Node>();
  /** Group per node while partitioned; nodes in different groups cannot talk. */
  group = new Map<string, number>();
  loss = 0;
  /** Who believes whom failed (observer → set of nodes). */
  private readonly believedFailed = new Map<string, Set<string>>();
  /** Ground truth: net → key → {value, owner}. */
  readonly truth = new Map<string, Map<string, { value: string; owner: string }>>();
  /** Participants per network (ground truth). */
  readonly members = new Map<string, Set<string>>();
  readonly cfg: Partial<NetdbConfig>;
  udpSent = 0;
  udpLost = 0;
  /**
   * Chance that a message is held up by a busy receiver (a real meshd's event loop creating
   * namespaces and links while a service starts), and for how long at most (ms). Delays are
   * per message, so join records, table events and bulk syncs arrive in any order.
   */
  slowChance = 0;
  slowMaxMs = 0;

  constructor(seed: number, n: number, cfg: Partial<NetdbConfig> = {}) {
    this.rng = new Rng(seed);
    this.cfg = cfg;
    for (let i = 0; i < n; i++) this.addNode(`n${i}`);
    for (const a of this.nodes.values()) {
      for (const b of this.nodes.values()) if (a !== b) a.core.nodeAlive(0, b.name);
      this.pump(a);
    }
  }

  addNode(name: string): Node {
    const core = new NetdbCore({
      name,
      rand: { intn: (k) => this.rng.intn(k) },
      now: this.now,
      config: this.cfg,
    });
    const node: Node = { name, core, up: true, token: 0, wakeAt: Infinity, watched: new Map() };
    this.nodes.set(name, node);
    this.believedFailed.set(name, new Set());
    return node;
  }

  at(time: number, fn: () => void): void {
    this.q.push({ at: time, seq: this.seq++, fn });
  }

  run(until: number, check?: () => boolean): boolean {
    for (let steps = 0; steps < 50_000_000; steps++) {
      const e = this.q.peek();
      if (!e || e.at > until) break;
      this.q.pop();
      this.now = e.at;
      e.fn();
      if (check?.()) return true;
    }
    this.now = Math.max(this.now, until);
    return false;
  }

  /** Runs until `check` holds (tested every 10 ms of simulated time) or `limit`. */
  runUntil(limit: number, check: () => boolean): number | null {
    const start = this.now;
    for (let t0 = this.now; t0 <= limit; t0 += 10) {
      this.run(t0);
      if (check()) return this.now - start;
    }
    return null;
  }

  canTalk(a: string, b: string): boolean {
    const na = this.nodes.get(a);
    const nb = this.nodes.get(b);
    if (!na?.up || !nb?.up) return false;
    return (this.group.get(a) ?? 0) === (this.group.get(b) ?? 0);
  }

  pump(n: Node): void {
    if (!n.up) return;
    const r = n.core.ready();
    if (r.events.length > 0) this.dirty.add(n.name);
    for (const e of r.events) this.watch(n, e);
    for (const s of r.sends) {
      const from = n.name;
      if (!s.reliable) {
        this.udpSent++;
        if (this.rng.next() < this.loss) {
          this.udpLost++;
          continue;
        }
      }
      let delay = s.reliable ? 1 + this.rng.next() * 4 : 0.5 + this.rng.next() * 2;
      if (this.slowChance > 0 && this.rng.next() < this.slowChance)
        delay += this.rng.next() * this.slowMaxMs;
      const payload = s.payload;
      this.at(this.now + delay, () => {
        const to = this.nodes.get(s.to);
        if (!to || !this.canTalk(from, s.to)) return;
        to.core.receive(this.now, payload);
        this.pump(to);
      });
    }
    const d = n.core.nextDeadline();
    if (d < n.wakeAt || n.wakeAt <= this.now) {
      const token = ++n.token;
      n.wakeAt = d;
      if (Number.isFinite(d)) {
        this.at(Math.max(d, this.now), () => {
          if (n.token !== token || !n.up) return;
          n.wakeAt = Infinity;
          n.core.tick(this.now);
          this.pump(n);
        });
      }
    }
  }

  private watch(n: Node, e: NetdbEvent): void {
    const k = `${e.netId}/${e.table}/${e.key}`;
    if (e.type === 'delete') n.watched.delete(k);
    else n.watched.set(k, `${dec.decode(e.value)}@${e.owner}`);
  }

  // ---- scripted actions ----

  join(name: string, net: string): void {
    const n = this.nodes.get(name)!;
    n.core.joinNetwork(this.now, net);
    let m = this.members.get(net);
    if (!m) this.members.set(net, (m = new Set()));
    m.add(name);
    if (!this.truth.has(net)) this.truth.set(net, new Map());
    this.touchAll();
    this.pump(n);
  }

  leaveNet(name: string, net: string): void {
    const n = this.nodes.get(name)!;
    n.core.leaveNetwork(this.now, net);
    this.members.get(net)?.delete(name);
    const tr = this.truth.get(net)!;
    for (const [k, v] of tr) if (v.owner === name) tr.delete(k);
    this.touchAll();
    this.pump(n);
  }

  lastWrite = 0;
  /** Spread of the detector's "alive again" reports (after a fixed 200 ms). */
  aliveJitterMs = 800;
  /** When the failure detector last reported a node alive again. */
  lastAliveReport = 0;

  write(name: string, net: string, key: string, value: string | null): void {
    const n = this.nodes.get(name)!;
    this.lastWrite = this.now;
    const tr = this.truth.get(net)!;
    const cur = tr.get(key);
    if (value === null) n.core.deleteEntry(this.now, TABLE, net, key);
    else if (cur) n.core.updateEntry(this.now, TABLE, net, key, enc.encode(value));
    else n.core.createEntry(this.now, TABLE, net, key, enc.encode(value));
    if (value === null) tr.delete(key);
    else tr.set(key, { value, owner: name });
    this.touchAll();
    this.pump(n);
  }

  /** The failure detector: tells every live observer that can no longer reach `x`. */
  private detect(): void {
    this.touchAll();
    for (const obs of this.nodes.values()) {
      if (!obs.up) continue;
      for (const x of this.nodes.values()) {
        if (x === obs) continue;
        const failed = this.believedFailed.get(obs.name)!;
        const reachable = this.canTalk(obs.name, x.name);
        if (!reachable && !failed.has(x.name)) {
          failed.add(x.name);
          this.at(this.now + 3000 + this.rng.next() * 3000, () => {
            if (!obs.up || this.canTalk(obs.name, x.name) || !failed.has(x.name)) return;
            obs.core.nodeFailed(this.now, x.name);
            this.pump(obs);
          });
        } else if (reachable && failed.has(x.name)) {
          failed.delete(x.name);
          this.at(this.now + 200 + this.rng.next() * this.aliveJitterMs, () => {
            if (!obs.up || !this.canTalk(obs.name, x.name)) return;
            this.lastAliveReport = this.now;
            obs.core.nodeAlive(this.now, x.name);
            this.pump(obs);
          });
        }
      }
    }
  }

  crash(name: string): void {
    this.nodes.get(name)!.up = false;
    this.detect();
  }

  /** The same core comes back (it was unreachable, e.g. a frozen host): state kept. */
  revive(name: string): void {
    const n = this.nodes.get(name)!;
    n.up = true;
    n.wakeAt = Infinity;
    this.pump(n);
    this.detect();
  }

  /** A new process under the same name: empty state, fresh clocks. */
  restartFresh(name: string, nets: string[]): void {
    const old = this.nodes.get(name)!;
    old.up = false;
    old.token++;
    const n = this.addNode(name);
    this.touchAll();
    for (const b of this.nodes.values()) if (b !== n && b.up) n.core.nodeAlive(this.now, b.name);
    for (const [net, tr] of this.truth) {
      for (const [k, v] of tr) if (v.owner === name) tr.delete(k);
      this.members.get(net)?.delete(name);
    }
    for (const net of nets) this.join(name, net);
    this.pump(n);
    this.detect();
  }

  partition(groups: string[][]): void {
    this.group = new Map();
    groups.forEach((g, i) => g.forEach((n) => this.group.set(n, i)));
    this.detect();
  }

  heal(): void {
    this.group = new Map();
    this.detect();
  }

  /** Live entries whose owner is up and reachable from `obs` (what obs should show). */
  expected(obs: string, net: string): string[] {
    const out: string[] = [];
    for (const [k, v] of this.truth.get(net) ?? []) {
      if (v.owner !== obs && !this.canTalk(obs, v.owner)) continue;
      out.push(`${k}=${v.value}@${v.owner}`);
    }
    return out.sort();
  }

  shown(obs: string, net: string): string[] {
    return this.nodes
      .get(obs)!
      .core.getEntries(TABLE, net)
      .map((e) => `${e.key}=${dec.decode(e.value)}@${e.owner}`)
      .sort();
  }

  /** Nodes whose view may have changed since their last check (their result is cached). */
  private readonly dirty = new Set<string>();
  private readonly nodeOk = new Map<string, boolean>();

  touchAll(): void {
    for (const n of this.nodes.keys()) this.dirty.add(n);
  }

  private nodeConverged(n: Node, ignoreFailedOwners: boolean): boolean {
    for (const [net, m] of this.members) {
      const got = this.shown(n.name, net);
      if (!m.has(n.name)) {
        if (got.length > 0) return false;
        continue;
      }
      const want = ignoreFailedOwners ? this.allTruth(net) : this.expected(n.name, net);
      if (got.length !== want.length || got.some((g, i) => g !== want[i])) return false;
    }
    return true;
  }

  /** Every live participant shows exactly the expected entries; non-participants show none. */
  converged(ignoreFailedOwners = false): boolean {
    if (ignoreFailedOwners) {
      for (const n of this.nodes.values()) if (n.up && !this.nodeConverged(n, true)) return false;
      return true;
    }
    for (const name of this.dirty) {
      const n = this.nodes.get(name)!;
      this.nodeOk.set(name, !n.up || this.nodeConverged(n, false));
    }
    this.dirty.clear();
    for (const ok of this.nodeOk.values()) if (!ok) return false;
    return true;
  }

  allTruth(net: string): string[] {
    return [...(this.truth.get(net) ?? [])].map(([k, v]) => `${k}=${v.value}@${v.owner}`).sort();
  }

  /** Watcher replay equals reads on every live node. */
  watchersAgree(): string | null {
    for (const n of this.nodes.values()) {
      if (!n.up) continue;
      const reads = new Map<string, string>();
      for (const net of n.core.networks()) {
        for (const e of n.core.getEntries(TABLE, net))
          reads.set(`${net}/${TABLE}/${e.key}`, `${dec.decode(e.value)}@${e.owner}`);
      }
      if (reads.size !== n.watched.size)
        return `${n.name}: ${reads.size} read, ${n.watched.size} watched`;
      for (const [k, v] of reads)
        if (n.watched.get(k) !== v) return `${n.name}: ${k} read ${v}, watched ${n.watched.get(k)}`;
    }
    return null;
  }

  /** Who shows what, against the truth, with each core's drop counters (failure reports). */
  dump(): string {
    const out: string[] = [];
    for (const [net] of this.members) {
      out.push(`${net} want: ${this.allTruth(net).join(' ')}`);
      for (const [name, n] of this.nodes) {
        if (!n.up) continue;
        out.push(
          `  ${name} shows: ${this.shown(name, net).join(' ')}; peers ${n.core.peers(net).join(',')}`,
        );
      }
    }
    for (const [name, n] of this.nodes) {
      const c = n.core.counters();
      const { entries, tombstones, hidden, ...rest } = c;
      void entries;
      void tombstones;
      void hidden;
      out.push(`  ${name}: ${JSON.stringify(rest)}`);
    }
    return out.join('\n');
  }

  sum(f: (c: ReturnType<NetdbCore['counters']>) => number): number {
    let s = 0;
    for (const n of this.nodes.values()) if (n.up) s += f(n.core.counters());
    return s;
  }
}

/**
 * What a service create does on real nodes, which the test above does not model: each node
 * joins the networks when its first task lands there (spread over ~1.5 s, not 50 ms), writes
 * its load-balancer and task endpoints at once, and messages are held up by busy receivers,
 * so join records, table events and bulk syncs arrive in any order, some before the receiver
 * has joined itself. Then service rm (entries deleted, networks left) and again. The periodic
 * bulk sync is 10 min, far beyond the check, so only the event paths can converge.
 */
export function joinRace(
  seed: number,
  n: number,
  loss: number,
  cycles = 3,
  cfg: Partial<NetdbConfig> = {},
): { times: (number | null)[]; sim: Sim; dumps: string[] } {
  const sim = new Sim(seed, n, { bulkSyncIntervalMs: 600_000, ...cfg });
  sim.loss = loss;
  sim.slowChance = 0.15;
  sim.slowMaxMs = 400;
  const names = [...sim.nodes.keys()];
  const times: (number | null)[] = [];
  const dumps: string[] = [];
  sim.run(1000);
  for (let c = 0; c < cycles; c++) {
    const start = sim.now;
    for (const name of names) {
      sim.at(start + sim.rng.next() * 1500, () => {
        for (const net of ['ingress', 'app']) sim.join(name, net);
        sim.write(name, 'ingress', `${name}-lb`, `c${c}`);
        const k = 1 + sim.rng.intn(2);
        for (let i = 0; i < k; i++) {
          sim.at(sim.now + sim.rng.next() * 300, () => {
            sim.write(name, 'ingress', `${name}-t${i}`, `c${c}`);
            sim.write(name, 'app', `${name}-t${i}`, `c${c}`);
          });
        }
      });
    }
    sim.run(start + 1900);
    const ms = sim.runUntil(sim.now + 20_000, () => sim.converged());
    times.push(ms === null ? null : Math.round(sim.now - sim.lastWrite));
    if (ms === null) dumps.push(`cycle ${c}\n${sim.dump()}`);
    // service rm: each node withdraws its endpoints and leaves, spread over a second.
    const rm = sim.now;
    for (const name of names) {
      sim.at(rm + sim.rng.next() * 1000, () => {
        for (const net of ['ingress', 'app']) {
          for (const [k, v] of [...sim.truth.get(net)!])
            if (v.owner === name) sim.write(name, net, k, null);
          sim.leaveNet(name, net);
        }
      });
    }
    sim.run(rm + 1100);
    sim.runUntil(sim.now + 20_000, () => sim.converged());
  }
  return { times, sim, dumps };
}

/**
 * Steady state: N nodes long in one network, then each writes a few entries at 30 % UDP loss.
 * A write whose every gossip transmission is lost is repaired only by a digest mismatch (or
 * the periodic bulk sync, set here to 10 min). Returns ms from the last write to convergence.
 */
export function lossyWrites(
  seed: number,
  n: number,
  cfg: Partial<NetdbConfig> = {},
): { ms: number | null; sim: Sim } {
  const sim = new Sim(seed, n, { bulkSyncIntervalMs: 600_000, ...cfg });
  for (const name of sim.nodes.keys()) sim.join(name, 'app');
  sim.run(3000);
  sim.loss = 0.3;
  for (const name of sim.nodes.keys()) {
    for (let i = 0; i < 4; i++)
      sim.at(sim.now + sim.rng.next() * 2000, () => sim.write(name, 'app', `${name}-${i}`, 'x'));
  }
  sim.run(sim.now + 2001);
  const ms = sim.runUntil(sim.now + 20_000, () => sim.converged());
  return { ms: ms === null ? null : Math.round(sim.now - sim.lastWrite), sim };
}
