/**
 * Seeded discrete-event simulator for the SWIM core: many cores in one process, a fake clock,
 * and a fake network with per-packet loss, random delay, partitions and crashed nodes. Streams
 * (TCP) are reliable but fail across partitions and to crashed nodes. With `wire: true` every
 * packet and stream goes through the real codecs (compound, CRC, msgpack) instead of being
 * passed as objects. Observes false positives and checks invariants. May import src/gossip and
 * src/raft/random.ts (the seeded generator).
 */

import { EventHeap } from './event-heap.js';
import { LAN_CONFIG, type SwimConfig } from '../../../src/gossip/config.js';
import { decodePacket, openStream, sealMessages, sealStream } from '../../../src/gossip/packet.js';
import { decodeStreamMessage, encodeStreamMessage } from '../../../src/gossip/stream.js';
import {
  Swim,
  type Address,
  type OutPacket,
  type OutStream,
  type StreamMessage,
  type SwimEvent,
} from '../../../src/gossip/swim.js';
import { MessageType, NodeState, type PacketMessage } from '../../../src/gossip/wire.js';
import { SeededRandom } from '../../../src/raft/random.js';

export interface SimOptions {
  seed: number;
  config?: SwimConfig;
  /** Probability that a packet is dropped. @default 0 */
  loss?: number;
  /** One-way delay range in ms. @default [0.5, 2.5] */
  delay?: [number, number];
  /** Encode and decode every packet and stream with the wire codecs. @default false */
  wire?: boolean;
}

export interface SimNode {
  name: string;
  addr: Address;
  core: Swim;
  up: boolean;
  /** Left gracefully (a dead message about itself is expected, not a false positive). */
  left: boolean;
  group: number;
  wakeAt: number;
  lastWake: number;
  sameWakes: number;
}

export interface FalsePositive {
  t: number;
  observer: string;
  subject: string;
}

export class SwimSim {
  now = 0;
  readonly cfg: SwimConfig;
  readonly nodes: SimNode[] = [];
  readonly byName = new Map<string, SimNode>();
  private readonly byAddr = new Map<Address, SimNode>();
  readonly rand: SeededRandom;
  loss: number;
  private readonly delay: [number, number];
  private readonly wire: boolean;
  private readonly heap = new EventHeap();
  private seq = 0;
  private nextId = 0;

  /** Live nodes declared dead by a live observer outside any partition. */
  readonly falsePositives: FalsePositive[] = [];
  /** Live nodes declared dead across a partition (expected while it lasts). */
  partitionDeaths = 0;
  /** Distinct suspicions (node, incarnation) raised about live nodes, refuted or not. */
  private readonly suspected = new Set<string>();
  get suspicionsOfLive(): number {
    return this.suspected.size;
  }
  packets = 0;
  /** UDP payload bytes sent: encoded messages plus compound framing (no IP/UDP headers). */
  bytes = 0;
  messages = 0;
  dropped = 0;
  streams = 0;
  partitioned = false;
  private partitionGraceUntil = -1;
  /** First broken invariant, if any. */
  violation: string | null = null;
  onEvent: ((n: SimNode, e: SwimEvent) => void) | null = null;

  constructor(o: SimOptions) {
    this.rand = new SeededRandom(o.seed);
    this.cfg = o.config ?? { ...LAN_CONFIG };
    this.loss = o.loss ?? 0;
    this.delay = o.delay ?? [0.5, 2.5];
    this.wire = o.wire ?? false;
  }

  /** Adds a node (not yet joined). Addresses 198.18.x.y:7946. */
  addNode(): SimNode {
    const i = this.nodes.length + 1;
    const addr = new Uint8Array([198, 18 + (i >> 16), (i >> 8) & 255, i & 255]);
    const name = `n${i}`;
    const core = new Swim({
      name,
      addr,
      port: 7946,
      config: this.cfg,
      rand: new SeededRandom(this.rand.intn(2 ** 31)),
      now: this.now,
    });
    const n: SimNode = {
      name,
      addr: `${addr.join('.')}:7946`,
      core,
      up: true,
      left: false,
      group: 0,
      wakeAt: Infinity,
      lastWake: -1,
      sameWakes: 0,
    };
    this.nodes.push(n);
    this.byName.set(name, n);
    this.byAddr.set(n.addr, n);
    this.flush(n);
    return n;
  }

  /**
   * A converged cluster of `count` nodes without replaying the join storm: every core takes an
   * alive message about every member (as gossip would deliver it), and its broadcast queue is
   * cleared as it goes, so 1000 nodes do not replay a million join broadcasts.
   */
  bootstrap(count: number): void {
    const fresh: SimNode[] = [];
    for (let i = 0; i < count; i++) fresh.push(this.addNode());
    const alives: PacketMessage[] = this.nodes.map((n) => {
      const m = n.core.member(n.name)!;
      return {
        type: MessageType.alive,
        body: {
          incarnation: m.incarnation,
          node: m.name,
          addr: m.addr,
          port: m.port,
          meta: m.meta,
          vsn: m.vsn,
        },
      };
    });
    for (const n of fresh) {
      for (let i = 0; i < alives.length; i++) {
        n.core.step(this.now, this.nodes[0]!.addr, alives[i]!);
        // Reset often, so queued broadcasts and events die young (cheap GC).
        if (i % 64 === 63) {
          n.core.resetBroadcasts();
          n.core.ready();
        }
      }
      n.core.resetBroadcasts();
      n.core.ready();
      this.flush(n);
    }
  }

  /** A crashed node comes back as a fresh process: same name and address, incarnation 1. */
  restart(old: SimNode): SimNode {
    const m = old.core.member(old.name)!;
    const core = new Swim({
      name: old.name,
      addr: m.addr,
      port: m.port,
      config: this.cfg,
      rand: new SeededRandom(this.rand.intn(2 ** 31)),
      now: this.now,
    });
    const n: SimNode = { ...old, core, up: true, left: false, wakeAt: Infinity, sameWakes: 0 };
    this.nodes[this.nodes.indexOf(old)] = n;
    this.byName.set(n.name, n);
    this.byAddr.set(n.addr, n);
    this.flush(n);
    return n;
  }

  join(n: SimNode, seed: SimNode): void {
    n.core.join(this.now, [seed.addr]);
    this.flush(n);
  }

  /** Crash: the node stops, its packets and streams are lost. */
  kill(n: SimNode): void {
    n.up = false;
    n.core.shutdown();
  }

  leave(n: SimNode): void {
    n.left = true;
    n.core.leave(this.now);
    this.flush(n);
  }

  /** Splits the cluster: nodes with different `group` cannot reach each other. */
  partition(groupOf: (n: SimNode, i: number) => number): void {
    this.nodes.forEach((n, i) => (n.group = groupOf(n, i)));
    this.partitioned = true;
  }

  /** Rejoins all groups. Deaths in the next `graceMs` still count as partition deaths. */
  heal(graceMs: number): void {
    for (const n of this.nodes) n.group = 0;
    this.partitioned = false;
    this.partitionGraceUntil = this.now + graceMs;
  }

  /** Checks invariants every `everyMs` on up to `sample` observers. */
  checkEvery(everyMs: number, sample = Infinity): void {
    const run = (): void => {
      this.checkInvariants(sample);
      this.at(this.now + everyMs, run);
    };
    this.at(this.now + everyMs, run);
  }

  live(): SimNode[] {
    return this.nodes.filter((n) => n.up && !n.left);
  }

  /** Runs events up to time `t` (inclusive). */
  runUntil(t: number): void {
    for (;;) {
      const e = this.heap.peek();
      if (!e || e.at > t) break;
      this.heap.pop();
      this.now = e.at;
      e.fn();
      if (this.violation) return;
    }
    this.now = t;
  }

  /** Runs until `pred()` holds (checked every `stepMs`) or `maxMs` passes; returns the time or null. */
  runUntilTrue(pred: () => boolean, maxMs: number, stepMs = 10): number | null {
    const end = this.now + maxMs;
    while (this.now < end) {
      if (pred()) return this.now;
      this.runUntil(Math.min(this.now + stepMs, end));
      if (this.violation) return null;
    }
    return pred() ? this.now : null;
  }

  /** Does every live node (other than `subject`) hold `subject` in one of `states`? */
  allSee(subject: string, states: readonly NodeState[], missingOk = false): boolean {
    for (const n of this.nodes) {
      if (!n.up || n.left || n.name === subject) continue;
      const m = n.core.member(subject);
      if (!m) {
        if (missingOk) continue;
        return false;
      }
      if (!states.includes(m.state)) return false;
    }
    return true;
  }

  /** Every live node sees every live node alive. */
  converged(): boolean {
    const live = this.live();
    for (const o of live) {
      if (o.core.numAlive() !== live.length) return false;
      for (const s of live) if (o.core.member(s.name)?.state !== NodeState.alive) return false;
    }
    return true;
  }

  /**
   * Invariants: nobody holds an incarnation for a live node above that node's own; a live node
   * sees itself alive; the broadcast queue holds at most one entry per member; health is in
   * range. `sample` limits the observers checked (for large clusters).
   */
  checkInvariants(sample = Infinity): void {
    const maxScore = this.cfg.awarenessMaxMultiplier - 1;
    let checked = 0;
    for (const o of this.nodes) {
      if (!o.up) continue;
      if (checked++ >= sample) break;
      const me = o.core.member(o.name);
      if (!o.left && me?.state !== NodeState.alive) {
        this.fail(`${o.name} sees itself ${me?.state}`);
        return;
      }
      if (o.core.healthScore < 0 || o.core.healthScore > maxScore) {
        this.fail(`${o.name} health ${o.core.healthScore} outside 0..${maxScore}`);
        return;
      }
      const q = o.core.queuedBroadcasts().length;
      if (q > o.core.members().length) {
        this.fail(`${o.name} queues ${q} broadcasts for ${o.core.members().length} members`);
        return;
      }
      for (const m of o.core.members()) {
        const s = this.byName.get(m.name);
        if (s && s.up && m.incarnation > s.core.localIncarnation) {
          this.fail(
            `${o.name} holds ${m.name} at incarnation ${m.incarnation} > its own ${s.core.localIncarnation}`,
          );
          return;
        }
      }
    }
  }

  private fail(what: string): void {
    this.violation ??= `t=${this.now.toFixed(1)}: ${what}`;
  }

  private at(t: number, fn: () => void): void {
    this.heap.push({ at: t, seq: this.seq++, fn });
  }

  private delayMs(): number {
    const [a, b] = this.delay;
    return a + this.rand.next() * (b - a);
  }

  private reachable(a: SimNode, b: SimNode): boolean {
    return a.up && b.up && a.group === b.group;
  }

  /** Drains a core's output and schedules its next wake-up. */
  private flush(n: SimNode): void {
    if (!n.up) return;
    const r = n.core.ready();
    for (const p of r.packets) this.sendPacket(n, p);
    for (const s of r.streams) this.sendStream(n, s);
    for (const e of r.events) this.observe(n, e);
    const d = n.core.nextDeadline();
    if (d < n.wakeAt) {
      if (d < this.now) {
        this.fail(`${n.name} deadline ${d} is in the past`);
        return;
      }
      n.wakeAt = d;
      this.at(d, () => {
        if (n.wakeAt !== d || !n.up) return;
        n.wakeAt = Infinity;
        // A core whose deadline does not move after a tick would spin at one instant.
        if (d === n.lastWake && ++n.sameWakes > 1000) {
          this.fail(`${n.name} woken 1000 times at ${d} without progress`);
          return;
        }
        if (d !== n.lastWake) n.sameWakes = 0;
        n.lastWake = d;
        n.core.tick(this.now);
        this.flush(n);
      });
    }
  }

  private sendPacket(from: SimNode, p: OutPacket): void {
    this.packets++;
    this.messages += p.messages.length;
    for (const b of p.parts) this.bytes += b.length;
    if (p.parts.length > 1) this.bytes += 2 + 2 * p.parts.length;
    const to = this.byAddr.get(p.to);
    if (!to || this.rand.next() < this.loss) {
      this.dropped++;
      return;
    }
    let msgs: PacketMessage[] = p.messages;
    if (this.wire) {
      const decoded = decodePacket(sealMessages(p.parts, { crc: true }));
      if (decoded.errors.length > 0 || decoded.messages.length !== p.messages.length) {
        this.fail(`wire round trip of a packet from ${from.name} lost messages`);
        return;
      }
      msgs = decoded.messages;
    }
    this.at(this.now + this.delayMs(), () => {
      if (!this.reachable(from, to)) {
        this.dropped++;
        return;
      }
      for (const m of msgs) to.core.step(this.now, from.addr, m);
      this.flush(to);
    });
  }

  private roundTrip(m: StreamMessage): StreamMessage {
    if (!this.wire) return m;
    const o = openStream(sealStream(encodeStreamMessage(m)));
    return decodeStreamMessage(o.type, o.body);
  }

  private sendStream(from: SimNode, s: OutStream): void {
    this.streams++;
    this.nextId++;
    const to = this.byAddr.get(s.to);
    const fail = (t: number, why: string): void =>
      this.at(t, () => {
        if (!from.up) return;
        from.core.streamDone(this.now, s.id, null, why);
        this.flush(from);
      });
    const t1 = this.now + this.delayMs();
    if (!to) return fail(t1, 'no route to host');
    this.at(t1, () => {
      if (from.group !== to.group) return fail(Math.max(this.now, s.deadline), 'i/o timeout');
      if (!to.up) return fail(this.now + this.delayMs(), 'connection refused');
      const reply = to.core.handleStream(this.now, from.addr, this.roundTrip(s.message));
      this.flush(to);
      const t2 = this.now + this.delayMs();
      if (t2 > s.deadline) return fail(s.deadline, 'i/o timeout');
      const back = reply === null ? null : this.roundTrip(reply);
      this.at(t2, () => {
        if (!from.up) return;
        from.core.streamDone(this.now, s.id, back, back === null && s.reply ? 'EOF' : '');
        this.flush(from);
      });
    });
  }

  private observe(n: SimNode, e: SwimEvent): void {
    if (e.type === 'state' && n.up && !n.left) {
      const subject = this.byName.get(e.name);
      if (subject && subject.up && !subject.left && subject !== n) {
        if (e.to === NodeState.suspect) this.suspected.add(`${e.name}/${e.incarnation}`);
        if (e.to === NodeState.dead) {
          if (this.partitioned || this.now <= this.partitionGraceUntil) this.partitionDeaths++;
          else this.falsePositives.push({ t: this.now, observer: n.name, subject: e.name });
        }
      }
    }
    this.onEvent?.(n, e);
  }
}

export interface ScenarioOptions extends SimOptions {
  n: number;
  /** Form the cluster by real joins (each node joins an earlier one) instead of bootstrap(). */
  fromScratch?: boolean;
  /** Also partition the cluster in two for `partitionMs`, heal, and require reconvergence. */
  partitionMs?: number;
  /** Observers checked per invariant pass. @default all */
  sample?: number;
}

export interface ScenarioResult {
  seed: number;
  n: number;
  loss: number;
  /** Time for a from-scratch cluster to converge (every node sees every node alive). */
  formMs: number | null;
  /** Time for a new node's join to reach every node (and for it to see all of them). */
  joinMs: number | null;
  /** Time from a crash until every live node holds the crashed node dead (or reaped). */
  deadMs: number | null;
  /** Time after healing a partition until the cluster is converged again. */
  healMs: number | null;
  /** The cluster reconverged after the partition without a join across it. */
  selfHealed: boolean;
  falsePositives: FalsePositive[];
  suspicionsOfLive: number;
  partitionDeaths: number;
  packets: number;
  /** Packets and bytes sent per live node per second over the last 10 s (steady state). */
  steadyPackets: number;
  steadyBytes: number;
  simMs: number;
  violation: string | null;
}

/**
 * One run: form (or bootstrap) a cluster of n, join one more node, crash one, optionally
 * partition and heal, then run on to count false positives. Every phase has a time limit.
 */
export function runScenario(o: ScenarioOptions): ScenarioResult {
  const sim = new SwimSim(o);
  const res: ScenarioResult = {
    seed: o.seed,
    n: o.n,
    loss: o.loss ?? 0,
    formMs: null,
    joinMs: null,
    deadMs: null,
    healMs: null,
    selfHealed: false,
    falsePositives: sim.falsePositives,
    suspicionsOfLive: 0,
    partitionDeaths: 0,
    packets: 0,
    steadyPackets: 0,
    steadyBytes: 0,
    simMs: 0,
    violation: null,
  };
  const done = (): ScenarioResult => {
    res.suspicionsOfLive = sim.suspicionsOfLive;
    res.partitionDeaths = sim.partitionDeaths;
    res.packets = sim.packets;
    res.simMs = sim.now;
    res.violation = sim.violation;
    return res;
  };
  sim.checkEvery(500, o.sample);
  if (o.fromScratch) {
    const first = sim.addNode();
    for (let i = 1; i < o.n; i++) {
      sim.runUntil(sim.now + 10);
      const n = sim.addNode();
      sim.join(n, i < 3 ? first : sim.nodes[sim.rand.intn(i)]!);
    }
    const t0 = sim.now;
    const t = sim.runUntilTrue(() => sim.converged(), 60_000, 10);
    if (t === null) return done();
    res.formMs = t - t0;
  } else {
    sim.bootstrap(o.n);
  }
  sim.runUntil(sim.now + 3000);

  const live = sim.live();
  const seed = live[sim.rand.intn(live.length)]!;
  const x = sim.addNode();
  sim.join(x, seed);
  const tj = sim.now;
  const j = sim.runUntilTrue(
    () => sim.allSee(x.name, [NodeState.alive]) && x.core.numAlive() === sim.live().length,
    60_000,
    5,
  );
  if (j === null) return done();
  res.joinMs = j - tj;
  sim.runUntil(sim.now + 2000);

  const victims = sim.live().filter((n) => n !== x);
  const y = victims[sim.rand.intn(victims.length)]!;
  sim.kill(y);
  const tk = sim.now;
  const d = sim.runUntilTrue(() => sim.allSee(y.name, [NodeState.dead], true), 180_000, 5);
  if (d === null) return done();
  res.deadMs = d - tk;

  if (o.partitionMs) {
    sim.runUntil(sim.now + 2000);
    sim.partition((_n, i) => i % 2);
    sim.runUntil(sim.now + o.partitionMs);
    sim.heal(120_000);
    const th = sim.now;
    // memberlist alone does not heal a partition once both sides have declared each other dead
    // and their queues are empty; serf's reconnect (and our agent's) joins across. Emulate it.
    let h = sim.runUntilTrue(() => sim.converged(), 5000, 10);
    res.selfHealed = h !== null;
    if (h === null) {
      const side = (k: number): SimNode => sim.live().find((n) => sim.nodes.indexOf(n) % 2 === k)!;
      sim.join(side(0), side(1));
      h = sim.runUntilTrue(() => sim.converged(), 60_000, 10);
    }
    if (h === null) return done();
    res.healMs = h - th;
  }
  const p0 = sim.packets;
  const b0 = sim.bytes;
  sim.runUntil(sim.now + 10_000);
  const perNodeSecond = sim.live().length * 10;
  res.steadyPackets = (sim.packets - p0) / perNodeSecond;
  res.steadyBytes = (sim.bytes - b0) / perNodeSecond;
  return done();
}
