/**
 * The deterministic SWIM core of our memberlist port (hashicorp/memberlist state.go, net.go;
 * SWIM, Das et al. 2002; Lifeguard, Dadgar et al. 2018).
 *
 * No clock, timers, randomness or sockets: the driver passes the time (ms) into every call, a
 * seeded random source at construction, and delivers packets and streams. Inputs: `tick(now)`
 * when `nextDeadline()` is due, `step(now, from, message)` for each message of a received
 * packet, `handleStream(now, from, message)` for an inbound stream request (returns the reply
 * to write back), `streamDone(now, id, reply)` when a stream the core asked for ends, and the
 * commands `join`, `leave`, `setMeta`, `broadcastUser`, `sendUser`. Outputs come from `ready()`:
 * packets to send (decoded messages and their encoded parts, piggybacked broadcasts included,
 * sized to fit udpBufferSize), stream requests, and events for delegates.
 *
 * May import the gossip wire modules (wire, compound), config, awareness, suspicion, broadcast
 * and util/errors. No node:* modules, no Date.now, setTimeout or Math.random.
 */

import { UsageError } from '../util/errors.js';
import { Awareness } from './awareness.js';
import { TransmitLimitedQueue, type Broadcast, type Taken } from './broadcast.js';
import { MAX_COMPOUND_PARTS } from './compound.js';
import { validateConfig, type SwimConfig } from './config.js';
import { Suspicion, suspicionTimeout } from './suspicion.js';
import {
  MessageType,
  NodeState,
  OUR_VSN,
  MetaMaxSize,
  compoundHeaderOverhead,
  compoundOverhead,
  encodeMessage,
  userMsgOverhead,
  vsnProblem,
  type AckResp,
  type Alive,
  type Dead,
  type ErrResp,
  type IndirectPing,
  type PacketMessage,
  type Ping,
  type PushNodeState,
  type PushPull,
  type Suspect,
} from './wire.js';

/** A transport address, `198.18.0.1:7946` or `[2001:db8::1]:7946`. */
export type Address = string;

/** Injected randomness: a uniform integer in [0, n). The daemon seeds it from crypto. */
export interface SwimRandom {
  intn(n: number): number;
}

/**
 * Synchronous hooks the core calls while handling an input. They must not block and, in the
 * simulator, must be deterministic. Everything else reaches the delegates as events.
 */
export interface SwimDelegate {
  /** User state appended to our push/pull (serf's LocalState). @default empty */
  localState?(join: boolean): Uint8Array;
  /** Payload for our acks (memberlist PingDelegate.AckPayload). @default empty */
  ackPayload?(): Uint8Array;
  /**
   * User broadcasts to piggyback (memberlist Delegate.GetBroadcasts): raw payloads, each of at
   * most `limit` bytes in total with `overhead` bytes counted per payload. A delegate with its
   * own TransmitLimitedQueue (as serf has) plugs in here; `broadcastUser` is the simple way.
   */
  getBroadcasts?(overhead: number, limit: number): Uint8Array[];
}

export interface SwimOptions {
  /** Unique member name. */
  name: string;
  /** Advertised IP, 4 or 16 bytes. */
  addr: Uint8Array;
  /** Advertised port (UDP and TCP). */
  port: number;
  /** Node metadata, at most 512 bytes. @default empty */
  meta?: Uint8Array;
  config: SwimConfig;
  rand: SwimRandom;
  /** The driver's clock (ms) at creation. */
  now: number;
  /** Version bytes to advertise. @default OUR_VSN = [1,5,2,2,5,4] */
  vsn?: readonly number[];
  delegate?: SwimDelegate;
  /**
   * Bytes the driver adds to each packet after the core packs it (label header, encryption);
   * subtracted from udpBufferSize. @default 0
   */
  packetOverhead?: number;
}

/** A message sent or received over a stream (TCP). */
export type StreamMessage =
  | { type: typeof MessageType.pushPull; body: PushPull }
  | { type: typeof MessageType.ping; body: Ping }
  | { type: typeof MessageType.ackResp; body: AckResp }
  | { type: typeof MessageType.user; body: Uint8Array }
  | { type: typeof MessageType.err; body: ErrResp };

/** One UDP packet: one message alone, or several as a compound (see compound.ts). */
export interface OutPacket {
  to: Address;
  /** The messages, first the primary one, then piggybacked broadcasts. */
  messages: PacketMessage[];
  /** Each message encoded (type byte + body), ready for makeCompound / sealMessages. */
  parts: Uint8Array[];
}

/**
 * A stream exchange the core wants: open a stream to `to`, write `message`, read one reply
 * (push/pull and ping expect one), then call `streamDone(now, id, reply | null, error)`. Give
 * up at `deadline` (driver clock, ms) and report it as an error.
 */
export interface OutStream {
  id: number;
  to: Address;
  message: StreamMessage;
  /** Read one reply before calling streamDone (false for a user message: write and close). */
  reply: boolean;
  deadline: number;
}

/** A member as the core sees it. Records returned by queries are live; events hold copies. */
export interface Member {
  readonly name: string;
  readonly addr: Uint8Array;
  readonly port: number;
  readonly meta: Uint8Array;
  readonly incarnation: number;
  readonly state: NodeState;
  /** Driver clock (ms) of the last state change. */
  readonly stateChange: number;
  /** pmin, pmax, pcur, dmin, dmax, dcur as advertised. */
  readonly vsn: Uint8Array;
}

export type SwimEvent =
  /** A member became alive (new, or back from dead/left): memberlist NotifyJoin. */
  | { type: 'join'; node: Member }
  /** A member was declared dead or left: memberlist NotifyLeave. */
  | { type: 'leave'; node: Member }
  /** An alive member changed its metadata: memberlist NotifyUpdate. */
  | { type: 'update'; node: Member }
  /** Every state transition (for diagnostics); `from` is null for a member new to us. */
  | { type: 'state'; name: string; from: NodeState | null; to: NodeState; incarnation: number }
  /** A user message, over UDP or a stream: memberlist Delegate.NotifyMsg. */
  | { type: 'user'; from: Address; payload: Uint8Array }
  /** The user part of a peer's push/pull: memberlist Delegate.MergeRemoteState. */
  | { type: 'remoteState'; from: Address; join: boolean; state: Uint8Array }
  /** A member's name was claimed from another address: memberlist NotifyConflict. */
  | { type: 'conflict'; existing: Member; other: { name: string; addr: Uint8Array; port: number } }
  /** A direct probe was acked: memberlist PingDelegate.NotifyPingComplete. */
  | { type: 'pingComplete'; name: string; rttMs: number; payload: Uint8Array }
  /** We were accused (suspect/dead about us) and refuted with a higher incarnation. */
  | { type: 'refute'; incarnation: number; accused: number }
  /** A `join` finished: how many seeds answered a push/pull, and the errors of the others. */
  | { type: 'joinDone'; contacted: number; errors: string[] }
  /** Our leave broadcast was sent its full number of times, or no one was left to tell. */
  | { type: 'leaveDone' }
  /** UDP probes failed but a TCP ping succeeded: the network may block UDP. */
  | { type: 'tcpFallback'; name: string }
  /** Local health score changed (0 healthy .. awarenessMaxMultiplier − 1). */
  | { type: 'health'; score: number }
  /** A dead or left member was removed after gossipToTheDeadTime. */
  | { type: 'reaped'; name: string };

export interface Ready {
  packets: OutPacket[];
  streams: OutStream[];
  events: SwimEvent[];
}

/** Counters for diagnostics (`meshctl debug gossip`). */
export interface SwimCounters {
  probes: number;
  probesFailed: number;
  indirectProbes: number;
  pingsForOtherNode: number;
  acksUnmatched: number;
  aliveRejectedVsn: number;
  /** Alive messages with more than 512 bytes of meta (we could not relay them). */
  aliveRejectedMeta: number;
  conflicts: number;
  /** Messages dropped for an address that is neither 4 nor 16 bytes. */
  badAddresses: number;
  refutes: number;
  pushPulls: number;
  pushPullsFailed: number;
  /** Push/pulls whose versions memberlist's verifyProtocol would refuse (not merged). */
  pushPullsRefused: number;
  userDropped: number;
}

/** `a.b.c.d:port` or `[x:x:…]:port` (uncompressed hex groups). */
export function formatAddress(addr: Uint8Array, port: number): Address {
  if (addr.length === 4) return `${addr[0]}.${addr[1]}.${addr[2]}.${addr[3]}:${port}`;
  if (addr.length === 16) {
    const g: string[] = [];
    for (let i = 0; i < 16; i += 2)
      g.push((((addr[i] as number) << 8) | (addr[i + 1] as number)).toString(16));
    return `[${g.join(':')}]:${port}`;
  }
  throw new UsageError(`format address: ${addr.length}-byte address, want 4 or 16 bytes`);
}

/** Splits an {@link Address} into what dgram/net take: host without brackets, and port. */
export function parseAddress(a: Address): { host: string; port: number } {
  const i = a.lastIndexOf(':');
  const port = Number(a.slice(i + 1));
  let host = a.slice(0, i);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  if (i < 1 || !Number.isInteger(port) || port < 0 || port > 65535 || host === '') {
    throw new UsageError(`parse address ${JSON.stringify(a)}: want host:port or [v6]:port`);
  }
  return { host, port };
}

/** memberlist pushPullScale: the anti-entropy interval grows with log2(N) above 32 members. */
export function pushPullScale(interval: number, n: number): number {
  if (n <= 32) return interval;
  return (Math.ceil(Math.log2(n) - Math.log2(32)) + 1) * interval;
}

interface NodeRec {
  name: string;
  addr: Uint8Array;
  port: number;
  key: Address;
  meta: Uint8Array;
  incarnation: number;
  state: NodeState;
  stateChange: number;
  vsn: Uint8Array;
}

interface Probe {
  name: string;
  to: Address;
  addr: Uint8Array;
  port: number;
  pmax: number;
  incarnation: number;
  seq: number;
  ping: Ping;
  sent: number;
  /** End of the direct phase (probeTimeout, not scaled). */
  timeoutAt: number;
  /** End of the whole probe (probeInterval scaled by health). */
  deadline: number;
  indirect: boolean;
  expectedNacks: number;
  nacks: number;
  tcpOk: boolean;
}

/** We are relaying an indirect ping: an ack for our `seq` goes back as the requester's seq. */
interface Relay {
  replyTo: Address;
  origSeq: number;
  nack: boolean;
  deadline: number;
}

type Pending =
  | { kind: 'pushPull'; to: Address; join: JoinBatch | null }
  | { kind: 'ping'; seq: number }
  | { kind: 'user' };

interface JoinBatch {
  remaining: number;
  contacted: number;
  errors: string[];
}

const EMPTY = new Uint8Array(0);

export class Swim {
  readonly name: string;
  readonly cfg: Readonly<SwimConfig>;
  readonly counters: SwimCounters = {
    probes: 0,
    probesFailed: 0,
    indirectProbes: 0,
    pingsForOtherNode: 0,
    acksUnmatched: 0,
    aliveRejectedVsn: 0,
    aliveRejectedMeta: 0,
    conflicts: 0,
    badAddresses: 0,
    refutes: 0,
    pushPulls: 0,
    pushPullsFailed: 0,
    pushPullsRefused: 0,
    userDropped: 0,
  };

  private now: number;
  private readonly rand: SwimRandom;
  private readonly delegate: SwimDelegate;
  private readonly addr: Uint8Array;
  private readonly port: number;
  private readonly vsn: Uint8Array;
  private readonly packetOverhead: number;

  /** Probe order (memberlist m.nodes): shuffled at each wrap, new members at random slots. */
  private nodes: NodeRec[] = [];
  private readonly nodeMap = new Map<string, NodeRec>();
  private readonly suspicions = new Map<string, { s: Suspicion; since: number }>();
  private readonly relays = new Map<number, Relay>();
  private readonly pending = new Map<number, Pending>();
  private readonly awareness: Awareness;
  private readonly queue: TransmitLimitedQueue<PacketMessage>;
  private readonly userQueue: TransmitLimitedQueue<PacketMessage>;

  private incarnation = 0;
  private seq = 0;
  private streamId = 0;
  private probeIndex = 0;
  private probe: Probe | null = null;
  private nextProbe: number;
  private nextGossip: number;
  private nextPushPull: number;
  private leaving = false;
  private stopped = false;

  private out: Ready = { packets: [], streams: [], events: [] };

  constructor(o: SwimOptions) {
    this.cfg = validateConfig(o.config);
    this.name = o.name;
    this.now = o.now;
    this.rand = o.rand;
    this.delegate = o.delegate ?? {};
    this.addr = o.addr;
    this.port = o.port;
    this.vsn = Uint8Array.from(o.vsn ?? OUR_VSN);
    const vp = vsnProblem(this.vsn);
    if (vp !== null) throw new UsageError(`create gossip core: version array ${vp}`);
    formatAddress(o.addr, o.port);
    checkMeta('create gossip core', o.meta ?? EMPTY);
    this.packetOverhead = o.packetOverhead ?? 0;
    this.awareness = new Awareness(this.cfg.awarenessMaxMultiplier);
    const numNodes = (): number => this.nodes.length;
    this.queue = new TransmitLimitedQueue(this.cfg.retransmitMult, numNodes, encodeMessage);
    this.userQueue = new TransmitLimitedQueue(this.cfg.retransmitMult, numNodes, encodeMessage);
    // memberlist staggers each ticker by a random fraction of its interval.
    this.nextProbe = o.now + this.rand.intn(this.cfg.probeInterval);
    this.nextGossip = o.now + this.rand.intn(this.cfg.gossipInterval);
    this.nextPushPull =
      this.cfg.pushPullInterval > 0 ? o.now + this.rand.intn(this.cfg.pushPullInterval) : Infinity;
    // setAlive: we start as an alive member of our own list, incarnation 1.
    this.aliveNode(
      {
        incarnation: this.nextIncarnation(),
        node: this.name,
        addr: o.addr,
        port: o.port,
        meta: o.meta ?? EMPTY,
        vsn: this.vsn,
      },
      true,
    );
  }

  // ---- outputs and queries ----

  /** Takes everything the core wants done since the last call. */
  ready(): Ready {
    const r = this.out;
    this.out = { packets: [], streams: [], events: [] };
    return r;
  }

  hasReady(): boolean {
    return this.out.packets.length + this.out.streams.length + this.out.events.length > 0;
  }

  /** The earliest driver time (ms) at which `tick` has work to do; Infinity after shutdown. */
  nextDeadline(): number {
    if (this.stopped) return Infinity;
    let d = Math.min(
      this.nextProbe,
      this.gossipIdle() ? Infinity : this.nextGossip,
      this.nextPushPull,
    );
    const p = this.probe;
    if (p) d = Math.min(d, p.indirect ? p.deadline : p.timeoutAt);
    for (const r of this.relays.values()) if (r.deadline < d) d = r.deadline;
    for (const { s } of this.suspicions.values()) if (s.deadline < d) d = s.deadline;
    return d;
  }

  /** Every member we know, in probe order (dead and left members until they are reaped). */
  members(): readonly Member[] {
    return this.nodes;
  }

  member(name: string): Member | undefined {
    return this.nodeMap.get(name);
  }

  /** Members in state alive (not suspect), ourselves included. */
  numAlive(): number {
    let n = 0;
    for (const x of this.nodes) if (x.state === NodeState.alive) n++;
    return n;
  }

  get healthScore(): number {
    return this.awareness.score;
  }

  /** Our own incarnation number. */
  get localIncarnation(): number {
    return this.incarnation;
  }

  /** Broadcasts waiting to be piggybacked (memberlist's and the user's). */
  queuedBroadcasts(): { name: string | null; transmits: number; bytes: number }[] {
    return [...this.queue.snapshot(), ...this.userQueue.snapshot()];
  }

  // ---- commands ----

  /**
   * Drops every queued broadcast (memberlist TransmitLimitedQueue.Reset). The simulator uses it
   * to start from an already converged cluster without replaying N² join broadcasts.
   */
  resetBroadcasts(): void {
    this.queue.reset();
    this.userQueue.reset();
  }

  /**
   * Joins through `seeds` (addresses): a push/pull with each, `join` flag set. Ends with a
   * `joinDone` event; a join that reached no seed should be retried by the driver.
   */
  join(now: number, seeds: readonly Address[]): void {
    this.advance(now);
    if (this.stopped) return;
    const batch: JoinBatch = { remaining: seeds.length, contacted: 0, errors: [] };
    if (seeds.length === 0) {
      this.emit({ type: 'joinDone', contacted: 0, errors: [] });
      return;
    }
    for (const to of seeds) this.startPushPull(to, batch);
  }

  /**
   * Announces our departure (a dead message about ourselves, which peers record as left). Ends
   * with a `leaveDone` event once the broadcast has been sent its full number of times; the
   * driver should wait for it (with its own time limit) before calling `shutdown`.
   */
  leave(now: number): void {
    this.advance(now);
    if (this.stopped || this.leaving) return;
    this.leaving = true;
    const me = this.nodeMap.get(this.name);
    if (!me) return;
    if (me.state !== NodeState.dead && me.state !== NodeState.left) {
      this.deadNode({ incarnation: me.incarnation, node: this.name, from: this.name });
    }
    const anyAlive = this.nodes.some(
      (n) => n.name !== this.name && n.state !== NodeState.dead && n.state !== NodeState.left,
    );
    if (!anyAlive) this.emit({ type: 'leaveDone' });
  }

  /** Stops the core: no more output, inputs are ignored. */
  shutdown(): void {
    this.stopped = true;
    this.probe = null;
  }

  /** New metadata, announced with a fresh incarnation (memberlist UpdateNode). */
  setMeta(now: number, meta: Uint8Array): void {
    this.advance(now);
    checkMeta('set gossip meta', meta);
    if (this.stopped) return;
    this.aliveNode(
      {
        incarnation: this.nextIncarnation(),
        node: this.name,
        addr: this.addr,
        port: this.port,
        meta,
        vsn: this.vsn,
      },
      true,
    );
  }

  /**
   * Queues a user broadcast, piggybacked like membership updates. A `name` makes it replace
   * a queued broadcast with the same name. Pass `now` so that it waits for the next gossip
   * tick of the grid, as it would in memberlist.
   */
  broadcastUser(payload: Uint8Array, name: string | null = null, now = this.now): void {
    this.advance(now);
    const msg: PacketMessage = { type: MessageType.user, body: payload };
    this.userQueue.queue({ name, value: msg });
  }

  /** Sends a user message to one member, best effort over UDP (memberlist SendBestEffort). */
  sendUser(now: number, to: string, payload: Uint8Array): boolean {
    this.advance(now);
    const n = this.nodeMap.get(to);
    if (this.stopped || !n) {
      this.counters.userDropped++;
      return false;
    }
    this.send(n.key, { type: MessageType.user, body: payload });
    return true;
  }

  /** Sends a user message to one member over a stream (memberlist SendReliable). */
  sendUserReliable(now: number, to: string, payload: Uint8Array): boolean {
    this.advance(now);
    const n = this.nodeMap.get(to);
    if (this.stopped || !n) {
      this.counters.userDropped++;
      return false;
    }
    const id = this.nextStreamId();
    this.pending.set(id, { kind: 'user' });
    this.out.streams.push({
      id,
      to: n.key,
      message: { type: MessageType.user, body: payload },
      reply: false,
      deadline: now + this.cfg.tcpTimeout,
    });
    return true;
  }

  // ---- inputs ----

  /** Advances time: probe phases, ack/nack timers, suspicion timeouts, periodic rounds. */
  tick(now: number): void {
    this.advance(now);
    if (this.stopped) return;
    for (const [seq, r] of this.relays) {
      if (r.deadline > now) continue;
      this.relays.delete(seq);
      if (r.nack) this.send(r.replyTo, { type: MessageType.nackResp, body: { seqNo: r.origSeq } });
    }
    const p = this.probe;
    if (p && !p.indirect && now >= p.timeoutAt) this.probeIndirect(p);
    if (this.probe && this.probe.indirect && now >= this.probe.deadline)
      this.probeFailed(this.probe);
    for (const [name, { s, since }] of this.suspicions) {
      if (s.deadline > now) continue;
      this.suspicions.delete(name);
      const n = this.nodeMap.get(name);
      if (n && n.state === NodeState.suspect && n.stateChange === since) {
        this.deadNode({ incarnation: n.incarnation, node: name, from: this.name });
      }
    }
    if (now >= this.nextProbe) {
      // Like Go's ticker, missed ticks are dropped while a (health-scaled) probe runs long.
      this.nextProbe = nextTick(this.nextProbe, now, this.cfg.probeInterval);
      if (!this.probe) this.runProbe();
    }
    if (now >= this.nextGossip) {
      this.nextGossip = nextTick(this.nextGossip, now, this.cfg.gossipInterval);
      this.gossip();
    }
    if (now >= this.nextPushPull) {
      this.nextPushPull = now + pushPullScale(this.cfg.pushPullInterval, this.nodes.length);
      this.periodicPushPull();
    }
  }

  /** Handles one message of a received packet (compound, compression, CRC, crypto removed). */
  step(now: number, from: Address, m: PacketMessage): void {
    this.advance(now);
    if (this.stopped) return;
    switch (m.type) {
      case MessageType.ping:
        return this.handlePing(from, m.body);
      case MessageType.indirectPing:
        return this.handleIndirectPing(from, m.body);
      case MessageType.ackResp:
        return this.handleAck(m.body);
      case MessageType.nackResp:
        if (this.probe && this.probe.seq === m.body.seqNo) this.probe.nacks++;
        return;
      case MessageType.suspect:
        return this.suspectNode(m.body);
      case MessageType.alive:
        return this.aliveNode(m.body, false);
      case MessageType.dead:
        return this.deadNode(m.body);
      case MessageType.user:
        return this.emit({ type: 'user', from, payload: m.body });
      case MessageType.err:
        return;
    }
  }

  /**
   * Handles an inbound stream request and returns the reply to write back (null: close the
   * stream without one). A push/pull is answered with our state as it was before merging
   * theirs, as memberlist does.
   */
  handleStream(now: number, from: Address, m: StreamMessage): StreamMessage | null {
    this.advance(now);
    if (this.stopped) return null;
    switch (m.type) {
      case MessageType.pushPull: {
        const reply: StreamMessage = {
          type: MessageType.pushPull,
          body: this.localState(m.body.join),
        };
        this.mergeRemote(from, m.body);
        return reply;
      }
      case MessageType.ping:
        if (m.body.node !== '' && m.body.node !== this.name) {
          this.counters.pingsForOtherNode++;
          return null;
        }
        return {
          type: MessageType.ackResp,
          body: { seqNo: m.body.seqNo, payload: this.ackPayload() },
        };
      case MessageType.user:
        this.emit({ type: 'user', from, payload: m.body });
        return null;
      default:
        return null;
    }
  }

  /** Outcome of a stream from `ready().streams`: the reply read, or null and an error. */
  streamDone(now: number, id: number, reply: StreamMessage | null, error = ''): void {
    this.advance(now);
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (this.stopped) return;
    if (p.kind === 'user') {
      if (error !== '') this.counters.userDropped++;
      return;
    }
    if (p.kind === 'ping') {
      const pr = this.probe;
      if (
        pr &&
        pr.seq === p.seq &&
        reply?.type === MessageType.ackResp &&
        reply.body.seqNo === p.seq
      ) {
        pr.tcpOk = true;
      }
      return;
    }
    let err = error;
    if (reply?.type === MessageType.pushPull)
      err = this.mergeRemote(p.to, reply.body, p.join !== null);
    else if (err === '')
      err = reply?.type === MessageType.err ? reply.body.error : 'no push/pull reply';
    if (err !== '') this.counters.pushPullsFailed++;
    const b = p.join;
    if (!b) return;
    if (err === '') b.contacted++;
    else b.errors.push(err);
    if (--b.remaining === 0)
      this.emit({ type: 'joinDone', contacted: b.contacted, errors: b.errors });
  }

  // ---- failure detection (SWIM §3, §4.2; Lifeguard §3) ----

  private runProbe(): void {
    let numCheck = 0;
    while (numCheck <= this.nodes.length) {
      if (this.probeIndex >= this.nodes.length) {
        this.resetNodes();
        this.probeIndex = 0;
        numCheck++;
        continue;
      }
      const n = this.nodes[this.probeIndex++] as NodeRec;
      if (n.name === this.name || n.state === NodeState.dead || n.state === NodeState.left) {
        numCheck++;
        continue;
      }
      this.probeNode(n);
      return;
    }
  }

  private probeNode(n: NodeRec): void {
    this.counters.probes++;
    const seq = this.nextSeq();
    const ping: Ping = {
      seqNo: seq,
      node: n.name,
      sourceAddr: this.addr,
      sourcePort: this.port,
      sourceNode: this.name,
    };
    const pingMsg: PacketMessage = { type: MessageType.ping, body: ping };
    if (n.state === NodeState.alive) {
      this.send(n.key, pingMsg);
    } else {
      // A suspect gets the accusation along with the ping, so it can refute at once.
      const sus: PacketMessage = {
        type: MessageType.suspect,
        body: { incarnation: n.incarnation, node: n.name, from: this.name },
      };
      this.out.packets.push({
        to: n.key,
        messages: [pingMsg, sus],
        parts: [encodeMessage(pingMsg), encodeMessage(sus)],
      });
    }
    this.probe = {
      name: n.name,
      to: n.key,
      addr: n.addr,
      port: n.port,
      pmax: n.vsn[1] ?? 0,
      incarnation: n.incarnation,
      seq,
      ping,
      sent: this.now,
      timeoutAt: this.now + this.cfg.probeTimeout,
      deadline: this.now + this.awareness.scaleTimeout(this.cfg.probeInterval),
      indirect: false,
      expectedNacks: 0,
      nacks: 0,
      tcpOk: false,
    };
  }

  /** No direct ack within probeTimeout: ask k members, and try a TCP ping (SWIM §3.1). */
  private probeIndirect(p: Probe): void {
    p.indirect = true;
    this.counters.indirectProbes++;
    const peers = this.kRandomNodes(
      this.cfg.indirectChecks,
      (n) => n.name === this.name || n.name === p.name || n.state !== NodeState.alive,
    );
    for (const peer of peers) {
      // Only protocol >= 4 peers know to nack (Lifeguard §3.3).
      const nack = (peer.vsn[1] ?? 0) >= 4;
      if (nack) p.expectedNacks++;
      const ind: IndirectPing = {
        seqNo: p.seq,
        target: p.addr,
        port: p.port,
        node: p.name,
        nack,
        sourceAddr: this.addr,
        sourcePort: this.port,
        sourceNode: this.name,
      };
      this.send(peer.key, { type: MessageType.indirectPing, body: ind });
    }
    if (this.cfg.tcpPings && p.pmax >= 3) {
      const id = this.nextStreamId();
      this.pending.set(id, { kind: 'ping', seq: p.seq });
      this.out.streams.push({
        id,
        to: p.to,
        message: { type: MessageType.ping, body: p.ping },
        reply: true,
        deadline: p.deadline,
      });
    }
  }

  private probeFailed(p: Probe): void {
    this.probe = null;
    if (p.tcpOk) {
      this.emit({ type: 'tcpFallback', name: p.name });
      this.applyHealth(-1);
      return;
    }
    this.counters.probesFailed++;
    // Missing nacks mean our own network is the likelier culprit (Lifeguard §3.3): penalise
    // ourselves per missing nack; without nack-capable peers, a failed probe counts once.
    const delta = p.expectedNacks > 0 ? Math.max(0, p.expectedNacks - p.nacks) : 1;
    this.suspectNode({ incarnation: p.incarnation, node: p.name, from: this.name });
    this.applyHealth(delta);
  }

  private handleAck(ack: AckResp): void {
    const p = this.probe;
    if (p && p.seq === ack.seqNo) {
      this.probe = null;
      if (!p.indirect) {
        this.emit({
          type: 'pingComplete',
          name: p.name,
          rttMs: this.now - p.sent,
          payload: ack.payload,
        });
      }
      this.applyHealth(-1);
      return;
    }
    const r = this.relays.get(ack.seqNo);
    if (r) {
      this.relays.delete(ack.seqNo);
      this.send(r.replyTo, {
        type: MessageType.ackResp,
        body: { seqNo: r.origSeq, payload: EMPTY },
      });
      return;
    }
    this.counters.acksUnmatched++;
  }

  private handlePing(from: Address, p: Ping): void {
    if (p.node !== '' && p.node !== this.name) {
      this.counters.pingsForOtherNode++;
      return;
    }
    if (p.sourceAddr.length > 0 && !isIp(p.sourceAddr)) {
      this.counters.badAddresses++;
      return;
    }
    const to = p.sourceAddr.length > 0 ? formatAddress(p.sourceAddr, p.sourcePort) : from;
    this.send(to, {
      type: MessageType.ackResp,
      body: { seqNo: p.seqNo, payload: this.ackPayload() },
    });
  }

  private handleIndirectPing(from: Address, ind: IndirectPing): void {
    if (!isIp(ind.target) || (ind.sourceAddr.length > 0 && !isIp(ind.sourceAddr))) {
      this.counters.badAddresses++;
      return;
    }
    const seq = this.nextSeq();
    const replyTo =
      ind.sourceAddr.length > 0 ? formatAddress(ind.sourceAddr, ind.sourcePort) : from;
    this.relays.set(seq, {
      replyTo,
      origSeq: ind.seqNo,
      nack: ind.nack,
      deadline: this.now + this.cfg.probeTimeout,
    });
    const ping: Ping = {
      seqNo: seq,
      node: ind.node,
      sourceAddr: this.addr,
      sourcePort: this.port,
      sourceNode: this.name,
    };
    this.send(formatAddress(ind.target, ind.port), { type: MessageType.ping, body: ping });
  }

  private applyHealth(delta: number): void {
    if (this.awareness.applyDelta(delta))
      this.emit({ type: 'health', score: this.awareness.score });
  }

  private ackPayload(): Uint8Array {
    return this.delegate.ackPayload?.() ?? EMPTY;
  }

  // ---- membership (memberlist state.go) ----

  private aliveNode(a: Alive, bootstrap: boolean): void {
    if (this.leaving && a.node === this.name) return;
    if (vsnProblem(a.vsn) !== null) {
      // memberlist would store it, but relaying such an array crashes or poisons serf peers.
      this.counters.aliveRejectedVsn++;
      return;
    }
    if (a.meta.length > MetaMaxSize) {
      this.counters.aliveRejectedMeta++;
      return;
    }
    if (!isIp(a.addr)) {
      this.counters.badAddresses++;
      return;
    }
    let n = this.nodeMap.get(a.node);
    let updatesNode = false;
    let fromState: NodeState | null = null;
    if (!n) {
      n = {
        name: a.node,
        addr: a.addr,
        port: a.port,
        key: formatAddress(a.addr, a.port),
        meta: a.meta,
        incarnation: 0,
        state: NodeState.dead,
        stateChange: this.now,
        vsn: a.vsn,
      };
      this.nodeMap.set(a.node, n);
      // A random slot, so new members are not all probed last.
      const len = this.nodes.length;
      const off = len > 0 ? this.rand.intn(len) : 0;
      this.nodes.push(n);
      const tmp = this.nodes[off] as NodeRec;
      this.nodes[off] = n;
      this.nodes[len] = tmp;
    } else {
      fromState = n.state;
      if (!bytesEqual(n.addr, a.addr) || n.port !== a.port) {
        const canReclaim =
          this.cfg.deadNodeReclaimTime > 0 &&
          this.now - n.stateChange > this.cfg.deadNodeReclaimTime;
        if (n.state === NodeState.left || (n.state === NodeState.dead && canReclaim)) {
          updatesNode = true;
        } else {
          this.counters.conflicts++;
          this.emit({
            type: 'conflict',
            existing: view(n),
            other: { name: a.node, addr: a.addr, port: a.port },
          });
          return;
        }
      }
    }
    const isLocal = a.node === this.name;
    if (a.incarnation <= n.incarnation && !isLocal && !updatesNode) return;
    if (a.incarnation < n.incarnation && isLocal) return;
    this.suspicions.delete(a.node);
    const oldState = n.state;
    const oldMeta = n.meta;
    if (!bootstrap && isLocal) {
      if (
        a.incarnation === n.incarnation &&
        bytesEqual(a.meta, n.meta) &&
        bytesEqual(a.vsn, n.vsn)
      ) {
        return;
      }
      this.refute(n, a.incarnation);
    } else {
      this.broadcast(a.node, { type: MessageType.alive, body: a });
      n.vsn = a.vsn;
      n.incarnation = a.incarnation;
      n.meta = a.meta;
      if (updatesNode) {
        n.addr = a.addr;
        n.port = a.port;
        n.key = formatAddress(a.addr, a.port);
      }
      if (n.state !== NodeState.alive) {
        n.state = NodeState.alive;
        n.stateChange = this.now;
        this.emit({
          type: 'state',
          name: n.name,
          from: fromState,
          to: NodeState.alive,
          incarnation: n.incarnation,
        });
      }
    }
    if (oldState === NodeState.dead || oldState === NodeState.left) {
      this.emit({ type: 'join', node: view(n) });
    } else if (!bytesEqual(oldMeta, n.meta)) {
      this.emit({ type: 'update', node: view(n) });
    }
  }

  private suspectNode(s: Suspect): void {
    const n = this.nodeMap.get(s.node);
    if (!n || s.incarnation < n.incarnation) return;
    const timer = this.suspicions.get(s.node);
    if (timer) {
      // A confirmation from a new accuser shortens the timeout; pass it on (Lifeguard §3.2).
      if (timer.s.confirm(s.from, this.now))
        this.broadcast(s.node, { type: MessageType.suspect, body: s });
      return;
    }
    if (n.state !== NodeState.alive) return;
    if (n.name === this.name) {
      this.refute(n, s.incarnation);
      return;
    }
    this.broadcast(s.node, { type: MessageType.suspect, body: s });
    n.incarnation = s.incarnation;
    n.state = NodeState.suspect;
    n.stateChange = this.now;
    this.emit({
      type: 'state',
      name: n.name,
      from: NodeState.alive,
      to: NodeState.suspect,
      incarnation: n.incarnation,
    });
    const size = this.nodes.length;
    let k = this.cfg.suspicionMult - 2;
    // Too few members to expect k independent confirmations: go straight to the minimum.
    if (size - 2 < k) k = 0;
    const min = suspicionTimeout(this.cfg.suspicionMult, size, this.cfg.probeInterval);
    const max = this.cfg.suspicionMaxTimeoutMult * min;
    this.suspicions.set(s.node, {
      s: new Suspicion(s.from, k, min, max, this.now),
      since: this.now,
    });
  }

  private deadNode(d: Dead): void {
    const n = this.nodeMap.get(d.node);
    if (!n || d.incarnation < n.incarnation) return;
    this.suspicions.delete(d.node);
    if (n.state === NodeState.dead || n.state === NodeState.left) return;
    if (n.name === this.name) {
      if (!this.leaving) {
        this.refute(n, d.incarnation);
        return;
      }
      this.broadcast(d.node, { type: MessageType.dead, body: d }, () =>
        this.emit({ type: 'leaveDone' }),
      );
    } else {
      this.broadcast(d.node, { type: MessageType.dead, body: d });
    }
    const from = n.state;
    n.incarnation = d.incarnation;
    // A dead message from the node itself is a graceful leave.
    n.state = d.node === d.from ? NodeState.left : NodeState.dead;
    n.stateChange = this.now;
    this.emit({ type: 'state', name: n.name, from, to: n.state, incarnation: n.incarnation });
    this.emit({ type: 'leave', node: view(n) });
  }

  /** Answers an accusation with an incarnation above it (SWIM §4.2). */
  private refute(me: NodeRec, accused: number): void {
    let inc = this.nextIncarnation();
    if (accused >= inc) inc = this.skipIncarnation(accused - inc + 1);
    me.incarnation = inc;
    this.counters.refutes++;
    this.applyHealth(1);
    this.emit({ type: 'refute', incarnation: inc, accused });
    this.broadcast(me.name, {
      type: MessageType.alive,
      body: {
        incarnation: inc,
        node: me.name,
        addr: me.addr,
        port: me.port,
        meta: me.meta,
        vsn: me.vsn,
      },
    });
  }

  /** Removes members dead for longer than gossipToTheDeadTime, then reshuffles the probe list. */
  private resetNodes(): void {
    const keep: NodeRec[] = [];
    for (const n of this.nodes) {
      const gone =
        (n.state === NodeState.dead || n.state === NodeState.left) &&
        this.now - n.stateChange > this.cfg.gossipToTheDeadTime;
      if (!gone) {
        keep.push(n);
        continue;
      }
      this.nodeMap.delete(n.name);
      this.suspicions.delete(n.name);
      this.emit({ type: 'reaped', name: n.name });
    }
    this.nodes = keep;
    this.shuffle(this.nodes);
  }

  // ---- anti-entropy and join (push/pull over a stream) ----

  private startPushPull(to: Address, join: JoinBatch | null): void {
    this.counters.pushPulls++;
    const id = this.nextStreamId();
    this.pending.set(id, { kind: 'pushPull', to, join });
    this.out.streams.push({
      id,
      to,
      message: { type: MessageType.pushPull, body: this.localState(join !== null) },
      reply: true,
      deadline: this.now + this.cfg.tcpTimeout,
    });
  }

  private periodicPushPull(): void {
    const peer = this.kRandomNodes(
      1,
      (n) => n.name === this.name || n.state !== NodeState.alive,
    )[0];
    if (peer) this.startPushPull(peer.key, null);
  }

  private localState(join: boolean): PushPull {
    const nodes: PushNodeState[] = this.nodes.map((n) => ({
      name: n.name,
      addr: n.addr,
      port: n.port,
      meta: n.meta,
      incarnation: n.incarnation,
      state: n.state,
      vsn: n.vsn,
    }));
    return { join, nodes, userState: this.delegate.localState?.(join) ?? EMPTY };
  }

  /**
   * memberlist verifyProtocol: every node, ours and theirs (any state), must speak a current
   * protocol and delegate version inside the range all alive nodes understand. Returns the
   * reason the remote state is refused, or null.
   */
  private verifyProtocol(remote: readonly PushNodeState[]): string | null {
    let maxPMin = 0;
    let minPMax = 255;
    let maxDMin = 0;
    let minDMax = 255;
    const widen = (v: Uint8Array): void => {
      maxPMin = Math.max(maxPMin, v[0] as number);
      minPMax = Math.min(minPMax, v[1] as number);
      maxDMin = Math.max(maxDMin, v[3] as number);
      minDMax = Math.min(minDMax, v[4] as number);
    };
    for (const r of remote) if (r.state === NodeState.alive && r.vsn.length >= 5) widen(r.vsn);
    for (const n of this.nodes) if (n.state === NodeState.alive) widen(n.vsn);
    const check = (name: string, v: Uint8Array): string | null => {
      const pcur = v.length >= 6 ? (v[2] as number) : 0;
      const dcur = v.length >= 6 ? (v[5] as number) : 0;
      if (pcur < maxPMin || pcur > minPMax) {
        return `node ${name} protocol version ${pcur} is outside ${maxPMin}..${minPMax}`;
      }
      if (dcur < maxDMin || dcur > minDMax) {
        return `node ${name} delegate version ${dcur} is outside ${maxDMin}..${minDMax}`;
      }
      return null;
    };
    for (const r of remote) {
      const e = check(r.name, r.vsn);
      if (e !== null) return e;
    }
    for (const n of this.nodes) {
      const e = check(n.name, n.vsn);
      if (e !== null) return e;
    }
    return null;
  }

  /** Merges a push/pull; returns why it was refused, or '' when merged. */
  private mergeRemote(from: Address, r: PushPull, join = r.join): string {
    const bad = this.verifyProtocol(r.nodes);
    if (bad !== null) {
      this.counters.pushPullsRefused++;
      return `merge remote state: ${bad}`;
    }
    for (const s of r.nodes) {
      switch (s.state) {
        case NodeState.alive:
          this.aliveNode(
            {
              incarnation: s.incarnation,
              node: s.name,
              addr: s.addr,
              port: s.port,
              meta: s.meta,
              vsn: s.vsn,
            },
            false,
          );
          break;
        case NodeState.left:
          this.deadNode({ incarnation: s.incarnation, node: s.name, from: s.name });
          break;
        case NodeState.dead:
        case NodeState.suspect:
          // Someone else's verdict of dead is only a suspicion to us: we run our own timer.
          this.suspectNode({ incarnation: s.incarnation, node: s.name, from: this.name });
          break;
      }
    }
    if (r.userState.length > 0) {
      this.emit({ type: 'remoteState', from, join, state: r.userState });
    }
    return '';
  }

  // ---- dissemination (SWIM §4.1) ----

  private broadcast(name: string, msg: PacketMessage, finished?: (sent: boolean) => void): void {
    const b: Broadcast<PacketMessage> = { name, value: msg };
    if (finished) b.finished = finished;
    this.queue.queue(b);
  }

  /** Ours first, then the delegate's, then the core-held user queue (memberlist getBroadcasts). */
  private getBroadcasts(overhead: number, limit: number): Taken<PacketMessage>[] {
    const out = this.queue.getBroadcasts(overhead, limit);
    const d = this.delegate;
    if (this.userQueue.length === 0 && !d.getBroadcasts) return out;
    let used = 0;
    for (const b of out) used += overhead + b.bytes.length;
    if (d.getBroadcasts && limit - used > overhead + userMsgOverhead) {
      for (const payload of d.getBroadcasts(overhead + userMsgOverhead, limit - used)) {
        const msg: PacketMessage = { type: MessageType.user, body: payload };
        const bytes = encodeMessage(msg);
        if (used + overhead + bytes.length > limit) break;
        used += overhead + bytes.length;
        out.push({ value: msg, bytes });
      }
    }
    if (this.userQueue.length > 0 && limit - used > overhead) {
      out.push(...this.userQueue.getBroadcasts(overhead, limit - used));
    }
    return out;
  }

  /** Sends `msg` with as many queued broadcasts as fit (memberlist sendMsg). */
  private send(to: Address, msg: PacketMessage): void {
    const bytes = encodeMessage(msg);
    const avail =
      this.cfg.udpBufferSize - bytes.length - compoundHeaderOverhead - this.packetOverhead;
    const busy = this.queue.length + this.userQueue.length > 0 || !!this.delegate.getBroadcasts;
    const extra = busy ? this.getBroadcasts(compoundOverhead, avail) : [];
    const messages = [msg];
    const parts = [bytes];
    // A compound holds 255 parts; tiny broadcasts beyond that lose this one transmission.
    for (const b of extra.slice(0, MAX_COMPOUND_PARTS - 1)) {
      messages.push(b.value);
      parts.push(b.bytes);
    }
    this.out.packets.push({ to, messages, parts });
  }

  private gossip(): void {
    if (this.queue.length + this.userQueue.length === 0 && !this.delegate.getBroadcasts) return;
    const targets = this.kRandomNodes(this.cfg.gossipNodes, (n) => {
      if (n.name === this.name) return true;
      if (n.state === NodeState.alive || n.state === NodeState.suspect) return false;
      // Keep telling the recently dead, so a wrongly accused node hears it and refutes.
      if (n.state === NodeState.dead)
        return this.now - n.stateChange > this.cfg.gossipToTheDeadTime;
      return true;
    });
    const avail = this.cfg.udpBufferSize - compoundHeaderOverhead - this.packetOverhead;
    for (const t of targets) {
      const bs = this.getBroadcasts(compoundOverhead, avail);
      if (bs.length === 0) return;
      for (let i = 0; i < bs.length; i += MAX_COMPOUND_PARTS) {
        const chunk = bs.slice(i, i + MAX_COMPOUND_PARTS);
        this.out.packets.push({
          to: t.key,
          messages: chunk.map((b) => b.value),
          parts: chunk.map((b) => b.bytes),
        });
      }
    }
  }

  // ---- helpers ----

  /**
   * A gossip tick with nothing to send does nothing (memberlist gossip() returns when
   * getBroadcasts is empty), so while our queues are empty nextDeadline() leaves the gossip
   * grid out and the driver sleeps through those ticks. A delegate with its own broadcasts
   * can fill up unseen, so it keeps every tick.
   */
  private gossipIdle(): boolean {
    return this.queue.length + this.userQueue.length === 0 && !this.delegate.getBroadcasts;
  }

  /**
   * Moves the clock to `now` at the start of an input. Queues only change inside inputs, so if
   * they are empty now they were empty at every gossip tick slept through since the last one:
   * those ticks are skipped on their grid, and whatever this input queues goes out at the
   * next tick of the same grid, not at once.
   */
  private advance(now: number): void {
    this.now = now;
    if (this.nextGossip <= now && this.gossipIdle())
      this.nextGossip = nextTick(this.nextGossip, now, this.cfg.gossipInterval);
  }

  private emit(e: SwimEvent): void {
    this.out.events.push(e);
  }

  private nextIncarnation(): number {
    this.incarnation = (this.incarnation + 1) >>> 0;
    return this.incarnation;
  }

  private skipIncarnation(offset: number): number {
    this.incarnation = (this.incarnation + offset) >>> 0;
    return this.incarnation;
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0;
    return this.seq;
  }

  private nextStreamId(): number {
    return ++this.streamId;
  }

  private shuffle<T>(a: T[]): void {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.rand.intn(i + 1);
      const t = a[i] as T;
      a[i] = a[j] as T;
      a[j] = t;
    }
  }

  /** Up to k distinct members not excluded (memberlist kRandomNodes). */
  private kRandomNodes(k: number, exclude: (n: NodeRec) => boolean): NodeRec[] {
    const n = this.nodes.length;
    const out: NodeRec[] = [];
    if (k <= 0) return out;
    if (n < k * 3) {
      const copy = this.nodes.slice();
      this.shuffle(copy);
      for (const x of copy) {
        if (out.length >= k) break;
        if (!exclude(x)) out.push(x);
      }
      return out;
    }
    for (let i = 0; i < 3 * n && out.length < k; i++) {
      const x = this.nodes[this.rand.intn(n)] as NodeRec;
      if (exclude(x) || out.includes(x)) continue;
      out.push(x);
    }
    return out;
  }
}

function view(n: NodeRec): Member {
  return {
    name: n.name,
    addr: n.addr,
    port: n.port,
    meta: n.meta,
    incarnation: n.incarnation,
    state: n.state,
    stateChange: n.stateChange,
    vsn: n.vsn,
  };
}

/** The first tick of the series `due + k·interval` after `now` (due <= now). */
function nextTick(due: number, now: number, interval: number): number {
  return due + (Math.floor((now - due) / interval) + 1) * interval;
}

function isIp(addr: Uint8Array): boolean {
  return addr.length === 4 || addr.length === 16;
}

function checkMeta(op: string, meta: Uint8Array): void {
  if (meta.length > MetaMaxSize) {
    throw new UsageError(`${op}: meta is ${meta.length} bytes, memberlist allows ${MetaMaxSize}`);
  }
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
