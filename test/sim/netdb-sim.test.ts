// netdb cores (src/netdb/core.ts) in a discrete-event simulation: a fake clock (each core woken
// exactly at its nextDeadline()), a seeded fake network (per-packet loss on UDP, 0.5-2.5 ms
// one-way delay; the reliable path never loses but fails across partitions and to crashed
// nodes), and a fake failure detector (a crashed or cut-off node is reported failed to each
// observer 3-6 s later, alive again 0.2-1 s after it is back). The harness keeps the ground
// truth of every write and checks: every participant of a network converges to exactly the
// live entries of that network (and nobody else receives them), deletes converge, a failed
// node's entries are hidden then restored, tombstones and failed nodes are reaped, a restarted
// node's stale entries are cleaned, and every core's watcher events replay to what it reads.
// NETDB_SIM_TABLE=1 prints the convergence table of docs/netdb.md.
import t, { type Test } from 'tap';
import { NetdbCore, type NetdbEvent } from '../../src/netdb/core.js';
import type { NetdbConfig } from '../../src/netdb/config.js';

class Rng {
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

interface Ev {
  at: number;
  seq: number;
  fn: () => void;
}

class Heap {
  private a: Ev[] = [];
  get size(): number {
    return this.a.length;
  }
  push(e: Ev): void {
    const a = this.a;
    a.push(e);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (less(a[p]!, a[i]!)) break;
      [a[p], a[i]] = [a[i]!, a[p]!];
      i = p;
    }
  }
  peek(): Ev | undefined {
    return this.a[0];
  }
  pop(): Ev | undefined {
    const a = this.a;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && less(a[l]!, a[m]!)) m = l;
        if (r < a.length && less(a[r]!, a[m]!)) m = r;
        if (m === i) break;
        [a[m], a[i]] = [a[i]!, a[m]!];
        i = m;
      }
    }
    return top;
  }
}
const less = (x: Ev, y: Ev) => x.at < y.at || (x.at === y.at && x.seq < y.seq);

interface Node {
  name: string;
  core: NetdbCore;
  up: boolean;
  /** Timer token: a wake event whose token differs is stale. */
  token: number;
  wakeAt: number;
  /** Replay of the core's watcher events: net/table/key → value text + owner. */
  watched: Map<string, string>;
}

const TABLE = 'endpoints';
const dec = new TextDecoder();
const enc = new TextEncoder();

export class Sim {
  readonly rng: Rng;
  now = 0;
  private seq = 0;
  private readonly q = new Heap();
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
      const delay = s.reliable ? 1 + this.rng.next() * 4 : 0.5 + this.rng.next() * 2;
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

  sum(f: (c: ReturnType<NetdbCore['counters']>) => number): number {
    let s = 0;
    for (const n of this.nodes.values()) if (n.up) s += f(n.core.counters());
    return s;
  }
}

/** Writes: every node creates `perNode` entries in each of its networks at random times within 1 s. */
function writeBurst(sim: Sim, perNode: number, tag: string): void {
  for (const [net, m] of sim.members) {
    for (const name of [...m]) {
      for (let i = 0; i < perNode; i++) {
        sim.at(sim.now + sim.rng.next() * 1000, () => {
          if (!sim.nodes.get(name)!.up || !sim.members.get(net)!.has(name)) return;
          sim.write(name, net, `${name}-${tag}-${i}`, `v-${tag}-${i}`);
        });
      }
    }
  }
}

interface RunResult {
  createMs: number | null;
  changeMs: number | null;
  failOk: boolean;
  restoreMs: number | null;
  partitionHealMs: number | null;
  /** From the failure detector's last "alive again" report to convergence. */
  reportToRestoreMs: number | null;
  reportToHealMs: number | null;
  watchers: string | null;
  notInNetwork: number;
  bytesPerNode: number;
}

/** The main scenario; returns times (simulated ms) and checks for one seed. */
function scenario(
  seed: number,
  n: number,
  loss: number,
  extras = true,
  aliveJitterMs = 800,
): RunResult {
  const sim = new Sim(seed, n);
  sim.aliveJitterMs = aliveJitterMs;
  sim.loss = loss;
  const names = [...sim.nodes.keys()];
  // Everyone in "a"; about half in "b"; join times spread over 500 ms.
  for (const name of names) {
    sim.at(sim.rng.next() * 500, () => sim.join(name, 'a'));
    if (sim.rng.next() < 0.5 || name === 'n0' || name === 'n1')
      sim.at(sim.rng.next() * 500, () => sim.join(name, 'b'));
  }
  sim.run(600);
  writeBurst(sim, 2, 'c');
  sim.run(sim.now + 1000);
  const c0 = sim.runUntil(sim.now + 60_000, () => sim.converged());
  // From the last write (the burst spreads writes over a second).
  const createMs = c0 === null ? null : Math.round(sim.now - sim.lastWrite);
  // Updates and deletes of random entries by their owners.
  for (const [net, tr] of sim.truth) {
    const keys = [...tr.keys()];
    for (let i = 0; i < Math.max(2, keys.length / 4); i++) {
      const k = keys[sim.rng.intn(keys.length)]!;
      const cur = tr.get(k);
      if (!cur) continue;
      sim.write(cur.owner, net, k, sim.rng.next() < 0.5 ? null : `u${i}`);
    }
  }
  const changeMs = sim.runUntil(sim.now + 60_000, () => sim.converged());
  const r: RunResult = {
    createMs,
    changeMs,
    failOk: true,
    restoreMs: null,
    partitionHealMs: null,
    reportToRestoreMs: null,
    reportToHealMs: null,
    watchers: sim.watchersAgree(),
    notInNetwork: 0,
    bytesPerNode: sim.sum((c) => c.bytesSent) / n,
  };
  if (extras) {
    // A node fails: its entries are hidden everywhere (not deleted), then restored.
    const x = names[1 + sim.rng.intn(n - 1)]!;
    sim.crash(x);
    sim.runUntil(sim.now + 20_000, () => sim.converged());
    r.failOk = sim.converged() && sim.sum((c) => c.hidden) > 0;
    sim.revive(x);
    r.restoreMs = sim.runUntil(
      sim.now + 60_000,
      () => sim.converged() && sim.sum((c) => c.hidden) === 0,
    );
    r.reportToRestoreMs = r.restoreMs === null ? null : Math.round(sim.now - sim.lastAliveReport);
    // A partition in two with writes on both sides, then heal.
    const half = names.slice(0, Math.floor(n / 2));
    sim.partition([half, names.slice(Math.floor(n / 2))]);
    sim.run(sim.now + 8000);
    writeBurst(sim, 1, 'p');
    sim.run(sim.now + 3000);
    sim.heal();
    r.partitionHealMs = sim.runUntil(
      sim.now + 90_000,
      () => sim.converged() && sim.sum((c) => c.hidden) === 0,
    );
    r.reportToHealMs =
      r.partitionHealMs === null ? null : Math.round(sim.now - sim.lastAliveReport);
    r.watchers ??= sim.watchersAgree();
  }
  r.notInNetwork = sim.sum((c) => c.notInNetwork);
  if (process.env.NETDB_SIM_DEBUG) {
    const keys = [
      'messagesSent',
      'bulkSyncsSent',
      'stateSyncsSent',
      'eventsApplied',
      'duplicates',
      'staleDropped',
      'bytesSent',
    ] as const;
    console.error(n, sim.now, keys.map((k) => `${k}=${sim.sum((c) => c[k])}`).join(' '));
  }
  return r;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

t.test(
  'entries, updates and deletes converge to exactly the participants (N = 3..20, loss 0-10 %)',
  async (t) => {
    let runs = 0;
    for (let seed = 1; seed <= 24; seed++) {
      const n = 3 + (seed % 6) * 3;
      const loss = [0, 0.05, 0.1][seed % 3]!;
      const r = scenario(seed, n, loss);
      const what = `seed ${seed} N=${n} loss ${loss * 100}%`;
      if (r.createMs === null) t.fail(`${what}: creates did not converge`);
      if (r.changeMs === null) t.fail(`${what}: updates/deletes did not converge`);
      if (!r.failOk) t.fail(`${what}: failed node's entries not hidden`);
      if (r.restoreMs === null) t.fail(`${what}: failed node's entries not restored`);
      if (r.partitionHealMs === null) t.fail(`${what}: partition did not heal`);
      // The detector reports returns within 1 s; the resync adds 300 ms and a round trip.
      else if (r.partitionHealMs > 1500) t.fail(`${what}: heal took ${r.partitionHealMs} ms`);
      if (r.restoreMs !== null && r.restoreMs > 1100)
        t.fail(`${what}: restore took ${r.restoreMs} ms`);
      if (r.watchers) t.fail(`${what}: watchers disagree with reads: ${r.watchers}`);
      if (r.notInNetwork !== 0)
        t.fail(`${what}: ${r.notInNetwork} table events reached non-participants`);
      runs++;
    }
    t.equal(runs, 24, 'all runs checked');
  },
);

t.test('N = 50 converges at 10 % loss, failure and partition included', async (t) => {
  const r = scenario(7, 50, 0.1);
  t.ok(
    r.createMs !== null && r.changeMs !== null,
    `creates ${r.createMs} ms, changes ${r.changeMs} ms`,
  );
  t.ok(r.failOk, 'failed node hidden');
  t.ok(r.restoreMs !== null, `restored in ${r.restoreMs} ms`);
  t.ok(
    r.partitionHealMs !== null && r.partitionHealMs <= 1500,
    `partition healed in ${r.partitionHealMs} ms (detector reports within 1 s)`,
  );
  t.equal(r.watchers, null, 'watchers agree with reads');
  t.equal(r.notInNetwork, 0, 'no table event reached a non-participant');
});

/** Diagnostics on demand, registered only when `env` is set: not tests, and a skip would count. */
function diagnostic(name: string, env: string, fn: (t: Test) => Promise<void>): void {
  if (process.env[env]) t.test(name, fn);
}

diagnostic('per-seed times', 'NETDB_SIM_DEBUG', async (t) => {
  for (let seed = 1; seed <= 6; seed++) t.comment(JSON.stringify(scenario(seed, 10, 0.05)));
  t.pass();
});

t.test('same seed, same run (determinism)', async (t) => {
  const a = scenario(99, 10, 0.05);
  const b = scenario(99, 10, 0.05);
  t.same(a, b);
});

t.test('tombstones and failed nodes are reaped', async (t) => {
  const sim = new Sim(5, 6, { reapEntryMs: 20_000, reapNodeMs: 60_000 });
  for (const n of sim.nodes.keys()) sim.join(n, 'a');
  sim.run(1000);
  for (const n of sim.nodes.keys()) {
    sim.write(n, 'a', `${n}-1`, 'x');
    sim.write(n, 'a', `${n}-2`, 'y');
  }
  t.ok(sim.runUntil(sim.now + 10_000, () => sim.converged()) !== null, 'converged');
  for (const n of sim.nodes.keys()) sim.write(n, 'a', `${n}-1`, null);
  t.ok(sim.runUntil(sim.now + 10_000, () => sim.converged()) !== null, 'deletes converged');
  t.equal(
    sim.sum((c) => c.tombstones),
    36,
    'every node holds the 6 tombstones',
  );
  sim.run(sim.now + 25_000);
  t.equal(
    sim.sum((c) => c.tombstones),
    0,
    'tombstones reaped after reapEntryMs',
  );
  t.ok(sim.converged(), 'still converged (no resurrection)');
  sim.crash('n5');
  sim.run(sim.now + 10_000);
  t.equal(
    sim.sum((c) => c.hidden),
    5,
    "n5's entry hidden on the 5 others",
  );
  t.ok(sim.converged(), 'readers do not see it');
  sim.run(sim.now + 65_000);
  t.equal(
    sim.sum((c) => c.hidden),
    0,
    'hidden entries reaped after reapNodeMs',
  );
  t.equal(
    sim.sum((c) => c.reapedEntries),
    5,
    'counted as reaped',
  );
  for (const n of ['n0', 'n1', 'n2', 'n3', 'n4'])
    t.notOk(sim.nodes.get(n)!.core.peers('a').includes('n5'), `${n}: n5 no longer a peer`);
  sim.run(sim.now + 40_000);
  t.ok(sim.converged(), 'no resurrection by bulk syncs after reaping');
  t.equal(sim.watchersAgree(), null, 'watchers agree');
});

t.test(
  'graceful leave deletes the node entries; network leave deletes them in that network',
  async (t) => {
    const sim = new Sim(11, 8);
    for (const n of sim.nodes.keys()) {
      sim.join(n, 'a');
      sim.join(n, 'b');
    }
    sim.run(1000);
    for (const n of sim.nodes.keys()) {
      sim.write(n, 'a', `${n}-a`, '1');
      sim.write(n, 'b', `${n}-b`, '1');
    }
    t.ok(sim.runUntil(sim.now + 10_000, () => sim.converged()) !== null, 'converged');
    // n3 leaves network b only.
    sim.leaveNet('n3', 'b');
    t.ok(sim.runUntil(sim.now + 10_000, () => sim.converged()) !== null, 'n3 entries gone from b');
    t.same(sim.shown('n3', 'b'), [], 'n3 holds nothing of b');
    for (const n of sim.nodes.keys())
      t.notOk(sim.nodes.get(n)!.core.peers('b').includes('n3'), `${n}: n3 not a peer of b`);
    // n4 leaves the cluster gracefully.
    const x = sim.nodes.get('n4')!;
    x.up = false;
    for (const o of sim.nodes.values()) {
      if (!o.up) continue;
      o.core.nodeLeft(sim.now, 'n4');
      sim.pump(o);
    }
    for (const net of ['a', 'b']) {
      sim.members.get(net)!.delete('n4');
      sim.truth.get(net)!.delete(`n4-${net}`);
    }
    sim.touchAll();
    t.ok(sim.converged(), 'n4 entries deleted at once');
    t.equal(
      sim.sum((c) => c.hidden),
      0,
      'deleted, not hidden',
    );
    t.ok(sim.sum((c) => c.tombstones) >= 14, 'as tombstones');
    t.equal(sim.watchersAgree(), null, 'watchers agree');
  },
);

t.test('a node restarted with empty state: its old entries are deleted everywhere', async (t) => {
  const sim = new Sim(21, 6);
  for (const n of sim.nodes.keys()) sim.join(n, 'a');
  sim.run(1000);
  for (const n of sim.nodes.keys())
    for (let i = 0; i < 3; i++) sim.write(n, 'a', `${n}-${i}`, 'old');
  t.ok(sim.runUntil(sim.now + 10_000, () => sim.converged()) !== null, 'converged');
  sim.restartFresh('n2', ['a']);
  // Same key as before plus a new one, written right after the restart (fresh clock at 1).
  sim.write('n2', 'a', 'n2-0', 'new');
  sim.write('n2', 'a', 'n2-9', 'new');
  const ms = sim.runUntil(sim.now + 60_000, () => sim.converged(true));
  t.ok(ms !== null, `old entries gone and new ones everywhere after ${ms} ms`);
  if (ms === null) {
    t.comment(`want ${sim.allTruth('a').join(' ')}`);
    for (const n of sim.nodes.keys()) t.comment(`${n}: ${sim.shown(n, 'a').join(' ')}`);
    for (const n of sim.nodes.values())
      t.comment(
        `${n.name}: ${JSON.stringify(n.core.counters())} ${JSON.stringify(n.core.clocks())} ${n.core.peers('a').join()}`,
      );
  }
  t.ok(sim.nodes.get('n2')!.core.counters().ownerCorrections > 0, 'by owner corrections');
  t.equal(sim.watchersAgree(), null, 'watchers agree');
});

diagnostic('convergence table', 'NETDB_SIM_TABLE', async (t) => {
  const rows: string[] = [];
  for (const n of [10, 50]) {
    for (const loss of [0, 0.05, 0.1]) {
      const c: number[] = [];
      const u: number[] = [];
      const h: number[] = [];
      const b: number[] = [];
      const rs: number[] = [];
      const hc: number[] = [];
      const hq: number[] = [];
      for (let seed = 1; seed <= 10; seed++) {
        const r = scenario(1000 + seed, n, loss);
        // Every observer told at the same instant: what netdb itself adds to a heal.
        const q = scenario(1000 + seed, n, loss, true, 0);
        if (q.reportToHealMs !== null) hq.push(q.reportToHealMs);
        if (r.createMs !== null) c.push(r.createMs);
        if (r.changeMs !== null) u.push(r.changeMs);
        if (r.reportToHealMs !== null) h.push(r.reportToHealMs);
        if (r.partitionHealMs !== null) hc.push(r.partitionHealMs);
        if (r.reportToRestoreMs !== null) rs.push(r.reportToRestoreMs);
        b.push(Math.round(r.bytesPerNode / 1024));
      }
      const f = (xs: number[]) => `${median(xs)} (${Math.min(...xs)}–${Math.max(...xs)})`;
      rows.push(
        `| ${n} | ${loss * 100} % | ${f(c)} | ${f(u)} | ${f(rs)} | ${f(hc)} | ${f(h)} | ${f(hq)} | ${f(b)} | ${c.length}/${u.length}/${rs.length}/${h.length}/${hq.length} |`,
      );
    }
  }
  t.comment('\n' + rows.join('\n'));
  t.pass();
});

t.test(
  'joins and writes at the same instant (first task on a network) converge without the periodic bulk sync (N = 2..5, loss 0-10 %)',
  async (t) => {
    const times: number[] = [];
    const slow: string[] = [];
    for (let seed = 1; seed <= 1000; seed++) {
      const n = 2 + (seed % 4);
      const sim = new Sim(seed, n);
      sim.loss = (seed % 5) * 0.025;
      for (const name of sim.nodes.keys()) {
        sim.at(sim.rng.next() * 50, () => {
          sim.join(name, 'ingress');
          sim.write(name, 'ingress', `${name}-ep`, 'x');
        });
      }
      sim.run(60);
      const ms = sim.runUntil(sim.now + 60_000, () => sim.converged());
      if (ms === null || ms > 3_000) slow.push(`seed ${seed} N=${n} loss ${sim.loss}: ${ms} ms`);
      if (ms !== null) times.push(ms);
    }
    times.sort((a, b) => a - b);
    t.comment(
      `converged: median ${times[times.length >> 1]} ms, p99 ${times[Math.floor(times.length * 0.99)]} ms, max ${times[times.length - 1]} ms`,
    );
    t.same(slow, [], 'every run converges within 3 s');
  },
);
