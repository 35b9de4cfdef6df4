// Scripted scenarios for the SWIM core: one real core ("me") among scripted peers whose answers
// each test controls (ack, relay, nack, silence, TCP), on a fake clock. Covers the ack path,
// the indirect path with nacks, TCP fallback, Lifeguard scoring, suspicion → dead timing with
// and without confirmations, refutation, leave, rejoin, metadata, conflicts, reaping, push/pull
// and the piggyback queue limits.
import t from 'tap';
import { retransmitLimit } from '../../src/gossip/broadcast.js';
import { LAN_CONFIG, type SwimConfig } from '../../src/gossip/config.js';
import { decodeMessage } from '../../src/gossip/wire.js';
import {
  Swim,
  formatAddress,
  type OutPacket,
  type OutStream,
  type StreamMessage,
  type SwimEvent,
} from '../../src/gossip/swim.js';
import {
  MessageType,
  NodeState,
  OUR_VSN,
  type Alive,
  type Dead,
  type PacketMessage,
  type PushNodeState,
} from '../../src/gossip/wire.js';
import { SeededRandom } from '../../src/raft/random.js';

const ME = '198.18.0.1:7946';
const addrOf = (i: number): Uint8Array => new Uint8Array([198, 18, 0, i]);
const keyOf = (i: number): string => formatAddress(addrOf(i), 7946);

interface Sent {
  t: number;
  to: string;
  msgs: PacketMessage[];
  bytes: number;
}

/** One real core and `peers` scripted peers p2..p(n+1) at 198.18.0.2… */
class Solo {
  now = 0;
  core: Swim;
  sent: Sent[] = [];
  streams: OutStream[] = [];
  events: SwimEvent[] = [];
  /** Peers that answer nothing over UDP (direct or relayed). */
  readonly silent = new Set<string>();
  /** Peers that ignore our direct pings but answer relayed ones (a bad path from us). */
  readonly directLost = new Set<string>();
  /** Peers that relay without nacking. */
  readonly noNack = new Set<string>();
  /** Answer TCP pings. */
  tcpUp = false;
  /** All our UDP is lost both ways. */
  isolated = false;
  private later: { t: number; fn: () => void }[] = [];

  constructor(
    readonly peers: number,
    readonly cfg: SwimConfig = { ...LAN_CONFIG, pushPullInterval: 0 },
    seed = 1,
  ) {
    this.core = new Swim({
      name: 'me',
      addr: addrOf(1),
      port: 7946,
      config: cfg,
      rand: new SeededRandom(seed),
      now: 0,
    });
    if (peers > 0) {
      this.core.handleStream(0, keyOf(2), {
        type: MessageType.pushPull,
        body: { join: true, nodes: this.peerStates(1), userState: new Uint8Array(0) },
      });
    }
    this.pump();
  }

  peerStates(inc: number, state: NodeState = NodeState.alive): PushNodeState[] {
    const out: PushNodeState[] = [];
    for (let i = 2; i < this.peers + 2; i++) {
      out.push({
        name: `p${i}`,
        addr: addrOf(i),
        port: 7946,
        meta: new Uint8Array(0),
        incarnation: inc,
        state,
        vsn: Uint8Array.from(OUR_VSN),
      });
    }
    return out;
  }

  nameAt(key: string): string {
    const i = Number(key.split(':')[0]!.split('.')[3]);
    return `p${i}`;
  }

  /** Feeds a message to the core as if from peer `from` (name). */
  step(from: string, m: PacketMessage): void {
    this.core.step(this.now, keyOf(Number(from.slice(1))), m);
    this.pump();
  }

  private reply(to: string, m: PacketMessage): void {
    if (this.isolated) return;
    this.core.step(this.now, to, m);
  }

  pump(): void {
    for (let guard = 0; guard < 100 && this.core.hasReady(); guard++) {
      const r = this.core.ready();
      this.events.push(...r.events);
      for (const p of r.packets) this.onPacket(p);
      for (const s of r.streams) this.onStream(s);
    }
  }

  private onPacket(p: OutPacket): void {
    const bytes =
      p.parts.reduce((a, b) => a + b.length, 0) + (p.parts.length > 1 ? 2 + 2 * p.parts.length : 0);
    this.sent.push({ t: this.now, to: p.to, msgs: p.messages, bytes });
    if (this.isolated) return;
    const peer = this.nameAt(p.to);
    const first = p.messages[0]!;
    if (first.type === MessageType.ping) {
      if (this.silent.has(peer) || this.directLost.has(peer)) return;
      this.reply(p.to, {
        type: MessageType.ackResp,
        body: { seqNo: first.body.seqNo, payload: new Uint8Array([9]) },
      });
    } else if (first.type === MessageType.indirectPing) {
      const ind = first.body;
      const target = this.nameAt(formatAddress(ind.target, ind.port));
      if (this.silent.has(peer)) return;
      if (!this.silent.has(target)) {
        this.reply(p.to, {
          type: MessageType.ackResp,
          body: { seqNo: ind.seqNo, payload: new Uint8Array(0) },
        });
      } else if (ind.nack && !this.noNack.has(peer)) {
        this.at(this.now + this.cfg.probeTimeout, () =>
          this.reply(p.to, { type: MessageType.nackResp, body: { seqNo: ind.seqNo } }),
        );
      }
    }
  }

  private onStream(s: OutStream): void {
    this.streams.push(s);
    let reply: StreamMessage | null = null;
    if (s.message.type === MessageType.ping && this.tcpUp) {
      reply = {
        type: MessageType.ackResp,
        body: { seqNo: s.message.body.seqNo, payload: new Uint8Array(0) },
      };
    } else if (s.message.type === MessageType.pushPull) {
      reply = {
        type: MessageType.pushPull,
        body: { join: false, nodes: this.peerStates(1), userState: new Uint8Array(0) },
      };
    }
    this.at(this.now + 1, () =>
      this.core.streamDone(this.now, s.id, reply, reply || !s.reply ? '' : 'refused'),
    );
  }

  at(t: number, fn: () => void): void {
    this.later.push({ t, fn });
    this.later.sort((a, b) => a.t - b.t);
  }

  advance(to: number): void {
    for (let guard = 0; guard < 1_000_000; guard++) {
      const l = this.later[0]?.t ?? Infinity;
      const d = this.core.nextDeadline();
      const next = Math.min(l, d);
      if (next > to) break;
      this.now = Math.max(this.now, next);
      if (l <= d) this.later.shift()!.fn();
      else this.core.tick(this.now);
      this.pump();
    }
    this.now = to;
  }

  state(name: string): NodeState | undefined {
    return this.core.member(name)?.state;
  }

  ofType<T extends SwimEvent['type']>(type: T): Extract<SwimEvent, { type: T }>[] {
    return this.events.filter((e) => e.type === type) as Extract<SwimEvent, { type: T }>[];
  }

  msgs(type: number): { t: number; to: string; m: PacketMessage }[] {
    const out: { t: number; to: string; m: PacketMessage }[] = [];
    for (const s of this.sent)
      for (const m of s.msgs) if (m.type === type) out.push({ t: s.t, to: s.to, m });
    return out;
  }

  /** Runs until the core has probed `name` and the probe is over (ack or failure). */
  probeOf(name: string, max = 60_000): number {
    const start = this.sent.length;
    const end = this.now + max;
    while (this.now < end) {
      this.advance(this.now + 100);
      const i = this.sent.findIndex(
        (s, j) =>
          j >= start && s.msgs[0]?.type === MessageType.ping && s.msgs[0].body.node === name,
      );
      if (i >= 0) {
        const sentAt = this.sent[i]!.t;
        this.advance(sentAt + this.core.cfg.probeInterval * (this.core.healthScore + 1));
        return sentAt;
      }
    }
    throw new Error(`no probe of ${name} within ${max} ms`);
  }
}

t.test('start: we are alive at incarnation 1 and announce it with our six version bytes', (t) => {
  const s = new Solo(0);
  const me = s.core.member('me')!;
  t.equal(me.state, NodeState.alive);
  t.equal(me.incarnation, 1);
  t.same([...me.vsn], [1, 5, 2, 2, 5, 4]);
  const q = s.core.queuedBroadcasts();
  t.equal(q.length, 1, 'our alive is queued');
  t.same(
    s.ofType('join').map((e) => e.node.name),
    ['me'],
  );
  t.throws(
    () =>
      new Swim({
        name: 'x',
        addr: addrOf(9),
        port: 1,
        config: LAN_CONFIG,
        rand: new SeededRandom(1),
        now: 0,
        vsn: [1, 5, 2, 0, 5, 0],
      }),
    /delegate version 0/,
  );
  t.throws(
    () =>
      new Swim({
        name: 'x',
        addr: addrOf(9),
        port: 1,
        config: LAN_CONFIG,
        rand: new SeededRandom(1),
        now: 0,
        vsn: [1, 5, 2],
      }),
    /needs exactly 6/,
  );
  t.end();
});

t.test('ack path: ping names the target and our address; the ack completes the probe', (t) => {
  const s = new Solo(4);
  t.equal(s.core.numAlive(), 5);
  const at = s.probeOf('p3');
  const ping = s.msgs(MessageType.ping).find((x) => x.t === at)!;
  t.match(ping.m.body, { node: 'p3', sourceNode: 'me', sourcePort: 7946 });
  t.equal(ping.to, keyOf(3));
  const done = s.ofType('pingComplete').find((e) => e.name === 'p3');
  t.ok(done, 'pingComplete for p3');
  t.same(done && [...done.payload], [9], 'ack payload handed to the ping delegate');
  t.equal(s.msgs(MessageType.indirectPing).length, 0, 'no indirect probes');
  t.equal(s.state('p3'), NodeState.alive);
  t.equal(s.core.healthScore, 0);
  t.end();
});

t.test('answering pings: ack to the source address; a ping for another name is dropped', (t) => {
  const s = new Solo(2);
  s.sent = [];
  s.step('p2', {
    type: MessageType.ping,
    body: { seqNo: 77, node: 'me', sourceAddr: addrOf(3), sourcePort: 7000, sourceNode: 'p3' },
  });
  const ack = s.msgs(MessageType.ackResp)[0]!;
  t.equal(ack.to, formatAddress(addrOf(3), 7000), 'to SourceAddr:SourcePort, not the sender');
  t.equal(ack.m.type === MessageType.ackResp && ack.m.body.seqNo, 77);
  s.step('p2', {
    type: MessageType.ping,
    body: {
      seqNo: 78,
      node: 'other',
      sourceAddr: new Uint8Array(0),
      sourcePort: 0,
      sourceNode: '',
    },
  });
  t.equal(s.msgs(MessageType.ackResp).length, 1);
  t.equal(s.core.counters.pingsForOtherNode, 1);
  s.step('p2', {
    type: MessageType.ping,
    body: { seqNo: 79, node: '', sourceAddr: new Uint8Array(0), sourcePort: 0, sourceNode: '' },
  });
  t.equal(
    s.msgs(MessageType.ackResp)[1]?.to,
    keyOf(2),
    'old pings without a source: reply to the sender',
  );
  t.end();
});

t.test(
  'relaying an indirect ping: ack forwarded with the requester seq, or a nack on timeout',
  (t) => {
    const s = new Solo(3);
    s.sent = [];
    s.step('p2', {
      type: MessageType.indirectPing,
      body: {
        seqNo: 500,
        target: addrOf(3),
        port: 7946,
        node: 'p3',
        nack: true,
        sourceAddr: addrOf(2),
        sourcePort: 7946,
        sourceNode: 'p2',
      },
    });
    const ping = s.msgs(MessageType.ping).at(-1)!;
    t.equal(ping.to, keyOf(3));
    t.match(ping.m.body, { node: 'p3', sourceNode: 'me' });
    const seq = ping.m.type === MessageType.ping ? ping.m.body.seqNo : -1;
    s.step('p3', { type: MessageType.ackResp, body: { seqNo: seq, payload: new Uint8Array(0) } });
    const fwd = s.msgs(MessageType.ackResp).at(-1)!;
    t.equal(fwd.to, keyOf(2));
    t.equal(fwd.m.type === MessageType.ackResp && fwd.m.body.seqNo, 500);
    s.advance(s.now + 1000);
    t.equal(s.msgs(MessageType.nackResp).length, 0, 'no nack after an ack');

    s.silent.add('p4');
    s.step('p2', {
      type: MessageType.indirectPing,
      body: {
        seqNo: 501,
        target: addrOf(4),
        port: 7946,
        node: 'p4',
        nack: true,
        sourceAddr: addrOf(2),
        sourcePort: 7946,
        sourceNode: 'p2',
      },
    });
    const t0 = s.now;
    s.advance(t0 + 499);
    t.equal(s.msgs(MessageType.nackResp).length, 0, 'not before probeTimeout');
    s.advance(t0 + 500);
    const nack = s.msgs(MessageType.nackResp)[0]!;
    t.equal(nack.to, keyOf(2));
    t.same(nack.m.body, { seqNo: 501 });
    s.step('p2', {
      type: MessageType.indirectPing,
      body: {
        seqNo: 502,
        target: addrOf(4),
        port: 7946,
        node: 'p4',
        nack: false,
        sourceAddr: addrOf(2),
        sourcePort: 7946,
        sourceNode: 'p2',
      },
    });
    s.advance(s.now + 2000);
    t.equal(s.msgs(MessageType.nackResp).length, 1, 'no nack unless asked (protocol < 4)');
    t.end();
  },
);

t.test('indirect path: direct ping lost, a relay reaches the target, no suspicion', (t) => {
  const s = new Solo(5);
  s.directLost.add('p4');
  const at = s.probeOf('p4');
  const inds = s.msgs(MessageType.indirectPing).filter((x) => x.t >= at);
  t.equal(inds.length, 3, 'indirectChecks = 3 relays');
  t.equal(inds[0]!.t, at + 500, 'after probeTimeout');
  const relays = new Set(inds.map((x) => x.to));
  t.equal(relays.size, 3, 'three distinct relays');
  t.notOk(relays.has(keyOf(4)) || relays.has(ME), 'neither the target nor ourselves');
  for (const x of inds) t.match(x.m.body, { node: 'p4', nack: true, sourceNode: 'me' });
  t.equal(s.state('p4'), NodeState.alive);
  t.equal(s.core.healthScore, 0);
  t.equal(
    s.ofType('pingComplete').filter((e) => e.name === 'p4').length,
    0,
    'no RTT from an indirect ack',
  );
  t.end();
});

t.test(
  'indirect path with nacks: target down, relays nack, we suspect it, our health holds',
  (t) => {
    const s = new Solo(5);
    s.silent.add('p4');
    s.probeOf('p4');
    t.equal(s.state('p4'), NodeState.suspect);
    const sus = s.ofType('state').find((e) => e.name === 'p4' && e.to === NodeState.suspect);
    t.ok(sus);
    t.equal(s.core.healthScore, 0, 'all 3 expected nacks arrived: the problem is not us');
    const q = s.core.queuedBroadcasts().find((b) => b.name === 'p4');
    t.ok(q, 'the suspicion is queued for gossip');
    t.ok(
      s.streams.some((x) => x.message.type === MessageType.ping && x.to === keyOf(4)),
      'TCP ping attempted',
    );
    t.equal(s.core.counters.probesFailed, 1);
    t.end();
  },
);

t.test('Lifeguard: missing nacks raise our score, which stretches the probe interval', (t) => {
  const s = new Solo(5);
  s.silent.add('p4');
  for (const p of ['p2', 'p3', 'p5', 'p6']) s.noNack.add(p);
  s.probeOf('p4');
  t.equal(s.ofType('health')[0]?.score, 3, '3 expected nacks, none arrived: score 0 → 3');
  // The next probe runs for probeInterval · 4 = 4 s; only then does the one after start.
  const pings = (): number[] =>
    s.sent.filter((x) => x.msgs[0]?.type === MessageType.ping).map((x) => x.t);
  const before = pings().length;
  s.silent.clear();
  s.advance(s.now + 20_000);
  const ts = pings().slice(before);
  t.ok(ts.length >= 4, `probes kept running (${ts.length})`);
  t.equal(s.core.healthScore, 0, 'successful probes bring the score back to 0');
  const gaps = ts.slice(1).map((x, i) => x - ts[i]!);
  t.ok(gaps.length > 0 && gaps.every((g) => g >= 1000), `gaps ${gaps.join(',')}`);
  t.end();
});

t.test('Lifeguard: an isolated node scales its probe time up to awarenessMaxMultiplier', (t) => {
  const s = new Solo(5);
  s.isolated = true;
  s.advance(60_000);
  t.equal(s.core.healthScore, 7);
  const pings = s.sent.filter((x) => x.msgs[0]?.type === MessageType.ping).map((x) => x.t);
  const last = pings.slice(-3);
  t.ok(last[2]! - last[1]! >= 8000, `probes 8 s apart at the cap (${last.join(',')})`);
  t.end();
});

t.test('TCP fallback: UDP lost both ways, the stream ping answers, no suspicion', (t) => {
  const s = new Solo(5);
  s.silent.add('p4');
  s.tcpUp = true;
  s.probeOf('p4');
  t.equal(s.state('p4'), NodeState.alive);
  t.same(
    s.ofType('tcpFallback').map((e) => e.name),
    ['p4'],
  );
  const off = new Solo(5, { ...LAN_CONFIG, pushPullInterval: 0, tcpPings: false });
  off.silent.add('p4');
  off.tcpUp = true;
  off.probeOf('p4');
  t.equal(off.streams.length, 0, 'tcpPings: false sends none');
  t.equal(off.state('p4'), NodeState.suspect);
  t.end();
});

t.test('a suspect is probed with the accusation attached, so it can refute', (t) => {
  const s = new Solo(5);
  s.step('p2', { type: MessageType.suspect, body: { incarnation: 1, node: 'p5', from: 'p2' } });
  t.equal(s.state('p5'), NodeState.suspect);
  s.probeOf('p5');
  const pkt = s.sent.find(
    (x) => x.msgs[0]?.type === MessageType.ping && x.msgs[0].body.node === 'p5',
  )!;
  t.same(
    pkt.msgs.map((m) => m.type),
    [MessageType.ping, MessageType.suspect],
  );
  t.match(pkt.msgs[1]!.body, { node: 'p5', incarnation: 1, from: 'me' });
  t.end();
});

t.test('suspicion → dead: the maximum timeout with no confirmations', (t) => {
  const s = new Solo(5);
  s.step('p2', { type: MessageType.suspect, body: { incarnation: 1, node: 'p5', from: 'p2' } });
  const ts = s.now;
  // N = 6: k = suspicionMult − 2 = 2, min = 4·max(1, log10 6)·1 s = 4 s, max = 6·min = 24 s.
  s.advance(ts + 23_999);
  t.equal(s.state('p5'), NodeState.suspect, 'still suspect at 23.999 s');
  s.advance(ts + 24_000);
  t.equal(s.state('p5'), NodeState.dead, 'dead at 24 s');
  const leave = s.ofType('leave').find((e) => e.node.name === 'p5');
  t.ok(leave, 'NotifyLeave');
  t.ok(
    s.core.queuedBroadcasts().some((b) => b.name === 'p5'),
    'the dead message is queued',
  );
  t.end();
});

t.test('suspicion → dead: two independent confirmations bring it down to the minimum', (t) => {
  const s = new Solo(5);
  s.sent = [];
  s.step('p2', { type: MessageType.suspect, body: { incarnation: 1, node: 'p5', from: 'p2' } });
  const ts = s.now;
  s.advance(ts + 1000);
  s.step('p3', { type: MessageType.suspect, body: { incarnation: 1, node: 'p5', from: 'p3' } });
  s.step('p3', { type: MessageType.suspect, body: { incarnation: 1, node: 'p5', from: 'p3' } });
  s.step('p4', { type: MessageType.suspect, body: { incarnation: 1, node: 'p5', from: 'p4' } });
  s.advance(ts + 3999);
  t.equal(s.state('p5'), NodeState.suspect);
  s.advance(ts + 4000);
  t.equal(s.state('p5'), NodeState.dead, 'dead at min = 4 s');
  t.end();
});

t.test('suspicion: an alive with a higher incarnation clears it; an old one does not', (t) => {
  const s = new Solo(5);
  const alive = (inc: number): PacketMessage => ({
    type: MessageType.alive,
    body: {
      incarnation: inc,
      node: 'p5',
      addr: addrOf(5),
      port: 7946,
      meta: new Uint8Array(0),
      vsn: Uint8Array.from(OUR_VSN),
    },
  });
  s.step('p2', { type: MessageType.suspect, body: { incarnation: 1, node: 'p5', from: 'p2' } });
  s.step('p3', alive(1));
  t.equal(s.state('p5'), NodeState.suspect, 'same incarnation does not refute');
  s.step('p3', alive(2));
  t.equal(s.state('p5'), NodeState.alive);
  s.advance(s.now + 60_000);
  t.equal(s.state('p5'), NodeState.alive, 'the old timer is gone');
  s.step('p2', { type: MessageType.suspect, body: { incarnation: 1, node: 'p5', from: 'p2' } });
  t.equal(s.state('p5'), NodeState.alive, 'a suspicion below the incarnation is stale');
  t.end();
});

t.test('refutation: suspect or dead about us bumps our incarnation above the accusation', (t) => {
  const s = new Solo(3);
  s.step('p2', { type: MessageType.suspect, body: { incarnation: 1, node: 'me', from: 'p2' } });
  t.equal(s.core.localIncarnation, 2);
  t.equal(s.core.member('me')?.state, NodeState.alive, 'never suspect of ourselves');
  t.same(s.ofType('refute').at(-1), { type: 'refute', incarnation: 2, accused: 1 });
  t.equal(s.core.healthScore, 1, 'being accused counts against our health (Lifeguard)');
  s.step('p3', { type: MessageType.dead, body: { incarnation: 7, node: 'me', from: 'p3' } });
  t.equal(s.core.localIncarnation, 8, 'skips past the accused incarnation');
  t.equal(s.core.member('me')?.state, NodeState.alive);
  s.step('p3', {
    type: MessageType.alive,
    body: {
      incarnation: 8,
      node: 'me',
      addr: addrOf(1),
      port: 7946,
      meta: new Uint8Array([1]),
      vsn: Uint8Array.from(OUR_VSN),
    },
  });
  t.equal(s.core.localIncarnation, 9, 'an alive about us with other meta is refuted too');
  s.step('p3', {
    type: MessageType.alive,
    body: {
      incarnation: 9,
      node: 'me',
      addr: addrOf(1),
      port: 7946,
      meta: new Uint8Array(0),
      vsn: Uint8Array.from(OUR_VSN),
    },
  });
  t.equal(s.core.localIncarnation, 9, 'our own alive echoed back is fine');
  s.advance(s.now + 3000);
  const alives = s.msgs(MessageType.alive).filter((x) => (x.m.body as Alive).node === 'me');
  t.ok(alives.length > 0, 'refutation gossiped');
  t.ok(
    alives.every((x) => x.m.type === MessageType.alive && x.m.body.incarnation === 9),
    'only the latest (invalidation)',
  );
  t.end();
});

t.test(
  'leave: dead about ourselves from ourselves; peers record left; leaveDone after the broadcast',
  (t) => {
    const s = new Solo(3);
    s.advance(2000);
    s.sent = [];
    s.core.leave(s.now);
    s.pump();
    t.equal(s.core.member('me')?.state, NodeState.left);
    t.equal(s.ofType('leaveDone').length, 0, 'not yet sent');
    s.advance(s.now + 5000);
    const deads = s.msgs(MessageType.dead).filter((x) => (x.m.body as Dead).node === 'me');
    t.equal(deads.length, retransmitLimit(4, 4), 'sent retransmitMult·ceil(log10(N+1)) times');
    t.match(deads[0]!.m.body, { node: 'me', from: 'me' });
    t.equal(s.ofType('leaveDone').length, 1);
    s.step('p2', {
      type: MessageType.alive,
      body: {
        incarnation: 50,
        node: 'me',
        addr: addrOf(1),
        port: 7946,
        meta: new Uint8Array(0),
        vsn: Uint8Array.from(OUR_VSN),
      },
    });
    t.equal(s.core.member('me')?.state, NodeState.left, 'no resurrection while leaving');
    const lone = new Solo(0);
    lone.core.leave(0);
    lone.pump();
    t.equal(lone.ofType('leaveDone').length, 1, 'nobody to tell: done at once');

    const peer = new Solo(3);
    peer.step('p3', { type: MessageType.dead, body: { incarnation: 1, node: 'p3', from: 'p3' } });
    t.equal(peer.state('p3'), NodeState.left, 'a peer that says it is dead has left');
    peer.step('p2', { type: MessageType.dead, body: { incarnation: 1, node: 'p4', from: 'p2' } });
    t.equal(peer.state('p4'), NodeState.dead, 'dead from someone else is a failure');
    t.end();
  },
);

t.test('rejoin: a restarted node finds itself left and refutes above that incarnation', (t) => {
  const s = new Solo(0);
  t.equal(s.core.localIncarnation, 1);
  s.core.join(s.now, [keyOf(2)]);
  s.pump();
  const req = s.streams.at(-1)!;
  t.equal(req.message.type, MessageType.pushPull);
  t.match(req.message.body, { join: true });
  const theirs: PushNodeState[] = [
    {
      name: 'p2',
      addr: addrOf(2),
      port: 7946,
      meta: new Uint8Array(0),
      incarnation: 3,
      state: NodeState.alive,
      vsn: Uint8Array.from(OUR_VSN),
    },
    {
      name: 'me',
      addr: addrOf(1),
      port: 7946,
      meta: new Uint8Array(0),
      incarnation: 5,
      state: NodeState.left,
      vsn: Uint8Array.from(OUR_VSN),
    },
  ];
  s.advance(s.now + 1);
  // The scripted stream reply was our generic one; feed the interesting one directly.
  s.core.streamDone(s.now, req.id + 100, null, 'unknown id is ignored');
  s.core.join(s.now, [keyOf(2)]);
  const r = s.core.ready();
  const id = r.streams[0]!.id;
  s.core.streamDone(s.now, id, {
    type: MessageType.pushPull,
    body: { join: false, nodes: theirs, userState: new Uint8Array([1, 2]) },
  });
  s.pump();
  t.equal(s.core.localIncarnation, 6, 'refuted to 6 > 5');
  t.equal(s.state('p2'), NodeState.alive);
  t.ok(s.ofType('joinDone').some((e) => e.contacted === 1));
  t.same(
    s.ofType('remoteState').map((e) => [e.from, [...e.state]]),
    [[keyOf(2), [1, 2]]],
    'user state for MergeRemoteState',
  );
  // A peer holding us dead with a higher incarnation takes a fresh alive from us above it.
  const alive = s.core.queuedBroadcasts().find((b) => b.name === 'me');
  t.ok(alive);
  t.end();
});

t.test('join: errors and unreachable seeds are reported', (t) => {
  const s = new Solo(0);
  s.core.join(0, [keyOf(7), keyOf(8)]);
  const r = s.core.ready();
  t.equal(r.streams.length, 2);
  s.core.streamDone(1, r.streams[0]!.id, null, 'connection refused');
  s.core.streamDone(2, r.streams[1]!.id, { type: MessageType.err, body: { error: 'bad' } });
  const done = s.core.ready().events.find((e) => e.type === 'joinDone');
  t.same(done, { type: 'joinDone', contacted: 0, errors: ['connection refused', 'bad'] });
  t.end();
});

t.test('push/pull server side: our state before merging theirs, then theirs merged', (t) => {
  const s = new Solo(1);
  const reply = s.core.handleStream(s.now, keyOf(9), {
    type: MessageType.pushPull,
    body: {
      join: true,
      nodes: [
        {
          name: 'p9',
          addr: addrOf(9),
          port: 7946,
          meta: new Uint8Array(0),
          incarnation: 1,
          state: NodeState.alive,
          vsn: Uint8Array.from(OUR_VSN),
        },
      ],
      userState: new Uint8Array(0),
    },
  });
  t.equal(reply?.type, MessageType.pushPull);
  const names =
    reply?.type === MessageType.pushPull ? reply.body.nodes.map((n) => n.name).sort() : [];
  t.same(names, ['me', 'p2'], 'p9 is not in the reply');
  t.equal(s.state('p9'), NodeState.alive, 'but merged afterwards');
  const remoteDead = s.core.handleStream(s.now, keyOf(9), {
    type: MessageType.pushPull,
    body: {
      join: false,
      nodes: [
        {
          name: 'p2',
          addr: addrOf(2),
          port: 7946,
          meta: new Uint8Array(0),
          incarnation: 1,
          state: NodeState.dead,
          vsn: Uint8Array.from(OUR_VSN),
        },
      ],
      userState: new Uint8Array(0),
    },
  });
  t.ok(remoteDead);
  t.equal(s.state('p2'), NodeState.suspect, "someone else's dead is only a suspicion here");
  const tcpPing = s.core.handleStream(s.now, keyOf(9), {
    type: MessageType.ping,
    body: { seqNo: 4, node: 'me', sourceAddr: new Uint8Array(0), sourcePort: 0, sourceNode: '' },
  });
  t.same(
    tcpPing,
    { type: MessageType.ackResp, body: { seqNo: 4, payload: new Uint8Array(0) } },
    'TCP ping answered',
  );
  t.end();
});

t.test('periodic push/pull with a random alive member', (t) => {
  const s = new Solo(3, { ...LAN_CONFIG });
  s.advance(31_000);
  const pp = s.streams.filter((x) => x.message.type === MessageType.pushPull);
  t.ok(pp.length >= 1, 'one within the first interval (random stagger)');
  t.match(pp[0]!.message.body, { join: false });
  t.ok(pp[0]!.deadline <= 31_000 + LAN_CONFIG.tcpTimeout, 'with a tcpTimeout deadline');
  t.end();
});

t.test('metadata: setMeta announces a new incarnation; a peer with new meta is an update', (t) => {
  const s = new Solo(2);
  s.core.setMeta(s.now, new Uint8Array([7, 7]));
  s.pump();
  t.equal(s.core.localIncarnation, 2);
  t.same([...s.core.member('me')!.meta], [7, 7]);
  t.ok(s.ofType('update').some((e) => e.node.name === 'me'));
  s.step('p2', {
    type: MessageType.alive,
    body: {
      incarnation: 2,
      node: 'p2',
      addr: addrOf(2),
      port: 7946,
      meta: new Uint8Array([1]),
      vsn: Uint8Array.from(OUR_VSN),
    },
  });
  const up = s.ofType('update').find((e) => e.node.name === 'p2');
  t.same(up && [...up.node.meta], [1]);
  t.end();
});

t.test('conflicts, bad version arrays and unknown nodes', (t) => {
  const s = new Solo(2);
  s.step('p3', {
    type: MessageType.alive,
    body: {
      incarnation: 9,
      node: 'p2',
      addr: addrOf(99),
      port: 7946,
      meta: new Uint8Array(0),
      vsn: Uint8Array.from(OUR_VSN),
    },
  });
  t.equal(s.ofType('conflict').length, 1, 'same name from another address while alive');
  t.equal(s.core.member('p2')?.incarnation, 1, 'the existing entry wins');
  s.step('p3', {
    type: MessageType.alive,
    body: {
      incarnation: 1,
      node: 'px',
      addr: addrOf(50),
      port: 7946,
      meta: new Uint8Array(0),
      vsn: new Uint8Array([1, 5, 2, 0, 5, 0]),
    },
  });
  s.step('p3', {
    type: MessageType.alive,
    body: {
      incarnation: 1,
      node: 'py',
      addr: addrOf(51),
      port: 7946,
      meta: new Uint8Array(0),
      vsn: new Uint8Array([1, 5, 2]),
    },
  });
  t.equal(s.core.member('px'), undefined, 'delegate version 0 is never relayed');
  t.equal(s.core.member('py'), undefined, 'nor a short array');
  t.equal(s.core.counters.aliveRejectedVsn, 2);
  s.step('p3', { type: MessageType.suspect, body: { incarnation: 1, node: 'nobody', from: 'p3' } });
  s.step('p3', { type: MessageType.dead, body: { incarnation: 1, node: 'nobody', from: 'p3' } });
  t.equal(s.core.member('nobody'), undefined, 'suspect/dead about unknown nodes ignored');
  // A left member may come back from a new address.
  s.step('p2', { type: MessageType.dead, body: { incarnation: 1, node: 'p2', from: 'p2' } });
  s.step('p3', {
    type: MessageType.alive,
    body: {
      incarnation: 2,
      node: 'p2',
      addr: addrOf(99),
      port: 7946,
      meta: new Uint8Array(0),
      vsn: Uint8Array.from(OUR_VSN),
    },
  });
  t.equal(s.core.member('p2')?.state, NodeState.alive);
  t.same([...s.core.member('p2')!.addr], [...addrOf(99)], 'address updated');
  t.end();
});

t.test('reaping: dead members are gossiped to for gossipToTheDeadTime, then removed', (t) => {
  const s = new Solo(5);
  s.advance(1000);
  s.step('p2', { type: MessageType.dead, body: { incarnation: 1, node: 'p6', from: 'p2' } });
  const td = s.now;
  t.equal(s.state('p6'), NodeState.dead);
  s.core.broadcastUser(new Uint8Array([1]));
  // Keep the queue busy so gossip rounds happen.
  for (let i = 1; i < 40; i++) s.at(td + i * 1000, () => s.core.broadcastUser(new Uint8Array([i])));
  s.advance(td + 29_000);
  const toDead = s.sent.filter((x) => x.t > td && x.to === keyOf(6));
  t.ok(toDead.length > 0, `gossip reached the dead node (${toDead.length} packets)`);
  t.ok(
    toDead.every((x) => x.msgs[0]?.type !== MessageType.ping),
    'but it is not probed',
  );
  s.advance(td + 45_000);
  t.equal(s.core.member('p6'), undefined, 'reaped');
  t.ok(s.ofType('reaped').some((e) => e.name === 'p6'));
  const late = s.sent.filter((x) => x.t > td + 31_000 && x.to === keyOf(6));
  t.equal(late.length, 0, 'nothing sent to it after gossipToTheDeadTime');
  t.end();
});

t.test(
  'piggyback: packets stay within udpBufferSize; each broadcast goes out the limit times',
  (t) => {
    const s = new Solo(9);
    s.advance(5000);
    s.sent = [];
    const payloads: Uint8Array[] = [];
    for (let i = 0; i < 20; i++) {
      const p = new Uint8Array(200).fill(i);
      payloads.push(p);
      s.core.broadcastUser(p);
    }
    s.advance(s.now + 10_000);
    const limit = retransmitLimit(4, 10);
    for (let i = 0; i < 20; i++) {
      const n = s
        .msgs(MessageType.user)
        .filter((x) => x.m.type === MessageType.user && x.m.body[0] === i).length;
      if (n !== limit) t.fail(`user broadcast ${i} sent ${n} times, want ${limit}`);
    }
    t.pass(`all 20 sent exactly ${limit} times`);
    const biggest = Math.max(...s.sent.map((x) => x.bytes));
    t.ok(biggest <= 1400, `largest packet ${biggest} bytes <= 1400`);
    t.ok(
      s.sent.some((x) => x.msgs.length > 2 && x.msgs[0]!.type !== MessageType.user),
      'piggybacked on pings/acks too',
    );
    t.equal(s.core.queuedBroadcasts().length, 0, 'queue drained');
    t.end();
  },
);

t.test('invalidation: several updates about one node queue as one broadcast', (t) => {
  const s = new Solo(3);
  s.core.resetBroadcasts();
  const alive = (inc: number): PacketMessage => ({
    type: MessageType.alive,
    body: {
      incarnation: inc,
      node: 'p3',
      addr: addrOf(3),
      port: 7946,
      meta: new Uint8Array(0),
      vsn: Uint8Array.from(OUR_VSN),
    },
  });
  s.step('p2', alive(2));
  s.step('p2', { type: MessageType.suspect, body: { incarnation: 2, node: 'p3', from: 'p2' } });
  s.step('p2', alive(3));
  const q = s.core.queuedBroadcasts();
  t.same(
    q.map((b) => b.name),
    ['p3'],
  );
  s.advance(s.now + 3000);
  const about = s
    .msgs(MessageType.alive)
    .concat(s.msgs(MessageType.suspect))
    .filter((x) => x.m.type !== MessageType.ping && (x.m.body as { node: string }).node === 'p3');
  t.ok(
    about.length > 0 &&
      about.every((x) => x.m.type === MessageType.alive && x.m.body.incarnation === 3),
    'only alive 3 goes out',
  );
  t.end();
});

t.test('encoded parts match the messages and decode back (what the driver sends)', (t) => {
  const s = new Solo(4);
  s.core.broadcastUser(new Uint8Array([5, 6]));
  const seen: OutPacket[] = [];
  const orig = s.core.ready.bind(s.core);
  s.core.ready = () => {
    const r = orig();
    seen.push(...r.packets);
    return r;
  };
  s.advance(5000);
  t.ok(seen.length > 5);
  for (const p of seen) {
    t.equal(p.parts.length, p.messages.length);
    t.same(
      p.parts.map((b) => decodeMessage(b)),
      p.messages,
    );
  }
  t.end();
});

t.test('user messages: UDP and stream deliveries become events; sendUser to a member', (t) => {
  const s = new Solo(2);
  s.step('p2', { type: MessageType.user, body: new Uint8Array([1]) });
  s.core.handleStream(s.now, keyOf(2), { type: MessageType.user, body: new Uint8Array([2]) });
  s.pump();
  t.same(
    s.ofType('user').map((e) => [e.from, [...e.payload]]),
    [
      [keyOf(2), [1]],
      [keyOf(2), [2]],
    ],
  );
  s.sent = [];
  t.ok(s.core.sendUser(s.now, 'p3', new Uint8Array([3])));
  s.pump();
  t.equal(s.sent[0]?.to, keyOf(3));
  t.notOk(s.core.sendUser(s.now, 'nobody', new Uint8Array([3])));
  t.end();
});

t.test('determinism and shutdown', (t) => {
  const run = (): string => {
    const s = new Solo(6, { ...LAN_CONFIG }, 42);
    s.silent.add('p3');
    s.advance(40_000);
    return JSON.stringify(s.sent.map((x) => [x.t, x.to, x.msgs.map((m) => m.type)]));
  };
  t.equal(run(), run(), 'same seed, same packets at the same times');
  const s = new Solo(2);
  s.core.shutdown();
  t.equal(s.core.nextDeadline(), Infinity);
  s.core.tick(99_999);
  s.step('p2', {
    type: MessageType.ping,
    body: { seqNo: 1, node: 'me', sourceAddr: new Uint8Array(0), sourcePort: 0, sourceNode: '' },
  });
  t.notOk(s.core.hasReady(), 'silent after shutdown');
  t.end();
});

t.test('push/pull refused when versions are incompatible (memberlist verifyProtocol)', (t) => {
  const node = (name: string, i: number, vsn: number[]): PushNodeState => ({
    name,
    addr: addrOf(i),
    port: 7946,
    meta: new Uint8Array(0),
    incarnation: 1,
    state: NodeState.alive,
    vsn: Uint8Array.from(vsn),
  });
  const s = new Solo(1);
  s.core.join(s.now, [keyOf(9)]);
  const r = s.core.ready();
  s.core.streamDone(s.now, r.streams[0]!.id, {
    type: MessageType.pushPull,
    body: {
      join: false,
      nodes: [node('new', 9, [3, 5, 3, 2, 5, 4])],
      userState: new Uint8Array(0),
    },
  });
  const done = s.core.ready().events.find((e) => e.type === 'joinDone');
  t.match(done, { contacted: 0, errors: [/node (me|p2) protocol version 2 is outside 3\.\.5/] });
  t.equal(s.core.member('new'), undefined, 'nothing merged');
  s.core.handleStream(s.now, keyOf(9), {
    type: MessageType.pushPull,
    body: { join: true, nodes: [node('old', 8, [1, 5, 2, 1, 5, 1])], userState: new Uint8Array(0) },
  });
  t.equal(s.core.member('old'), undefined, 'delegate version below everyone else’s minimum');
  t.equal(s.core.counters.pushPullsRefused, 2);
  s.core.handleStream(s.now, keyOf(9), {
    type: MessageType.pushPull,
    body: {
      join: true,
      nodes: [node('serf', 7, [1, 5, 2, 2, 5, 5])],
      userState: new Uint8Array(0),
    },
  });
  t.equal(s.core.member('serf')?.state, NodeState.alive, 'serf 0.9.4 versions are fine');
  t.end();
});

t.test('user messages over a stream, and a delegate that supplies broadcasts', (t) => {
  const s = new Solo(3);
  t.ok(s.core.sendUserReliable(s.now, 'p2', new Uint8Array([4, 2])));
  s.pump();
  const st = s.streams.at(-1)!;
  t.match(st, { to: keyOf(2), reply: false, message: { type: MessageType.user } });
  s.advance(s.now + 5);
  t.equal(s.core.counters.userDropped, 0);
  t.notOk(s.core.sendUserReliable(s.now, 'nobody', new Uint8Array([1])));

  const calls: [number, number][] = [];
  let left = 3;
  const d = new Swim({
    name: 'me',
    addr: addrOf(1),
    port: 7946,
    config: { ...LAN_CONFIG, pushPullInterval: 0 },
    rand: new SeededRandom(3),
    now: 0,
    delegate: {
      getBroadcasts: (overhead, limit) => {
        calls.push([overhead, limit]);
        return left-- > 0 ? [new Uint8Array(100).fill(left)] : [];
      },
    },
  });
  d.handleStream(0, keyOf(2), {
    type: MessageType.pushPull,
    body: { join: false, nodes: new Solo(3).peerStates(1), userState: new Uint8Array(0) },
  });
  d.resetBroadcasts();
  d.ready();
  let users = 0;
  for (let now = 0; now <= 2000; now = Math.max(now + 1, d.nextDeadline())) {
    d.tick(now);
    for (const p of d.ready().packets) {
      users += p.messages.filter((m) => m.type === MessageType.user).length;
      const size = p.parts.reduce((a, b) => a + b.length, 0) + 2 + 2 * p.parts.length;
      if (size > 1400) t.fail(`packet of ${size} bytes`);
    }
  }
  t.equal(users, 3, 'each payload the delegate handed over was sent');
  t.ok(
    calls.length > 0 && calls.every(([o, l]) => o === 3 && l <= 1398),
    'overhead includes the user type byte',
  );
  t.end();
});

t.test('meta is limited to 512 bytes, ours and relayed', (t) => {
  const s = new Solo(1);
  t.throws(() => s.core.setMeta(s.now, new Uint8Array(513)), /meta is 513 bytes/);
  t.doesNotThrow(() => s.core.setMeta(s.now, new Uint8Array(512)));
  s.step('p2', {
    type: MessageType.alive,
    body: {
      incarnation: 1,
      node: 'big',
      addr: addrOf(60),
      port: 7946,
      meta: new Uint8Array(600),
      vsn: Uint8Array.from(OUR_VSN),
    },
  });
  t.equal(s.core.member('big'), undefined);
  t.equal(s.core.counters.aliveRejectedMeta, 1);
  s.advance(s.now + 3000);
  t.pass('gossip with a 512-byte meta encodes');
  t.end();
});

t.test('a driver that stalls for a day: missed rounds are dropped, not replayed', (t) => {
  const s = new Solo(3);
  s.advance(5000);
  const sent = s.sent.length;
  const day = 86_400_000;
  const start = performance.now();
  s.core.tick(s.now + day);
  s.now += day;
  s.pump();
  t.ok(performance.now() - start < 100, 'constant work');
  t.ok(s.sent.length - sent <= 6, `one round's worth of packets (${s.sent.length - sent})`);
  const next = s.core.nextDeadline();
  t.ok(next > s.now && next <= s.now + 1000, 'next deadline within one interval');
  t.end();
});

t.test('malformed addresses in messages are dropped, never thrown', (t) => {
  const s = new Solo(2);
  const bad = new Uint8Array(5);
  t.doesNotThrow(() => {
    s.step('p2', {
      type: MessageType.ping,
      body: { seqNo: 1, node: 'me', sourceAddr: bad, sourcePort: 1, sourceNode: 'x' },
    });
    s.step('p2', {
      type: MessageType.indirectPing,
      body: {
        seqNo: 2,
        target: bad,
        port: 1,
        node: 'p3',
        nack: true,
        sourceAddr: new Uint8Array(0),
        sourcePort: 0,
        sourceNode: '',
      },
    });
    s.step('p2', {
      type: MessageType.alive,
      body: {
        incarnation: 1,
        node: 'odd',
        addr: bad,
        port: 1,
        meta: new Uint8Array(0),
        vsn: Uint8Array.from(OUR_VSN),
      },
    });
  });
  t.equal(s.core.counters.badAddresses, 3);
  t.equal(s.core.member('odd'), undefined);
  t.end();
});

t.test('idle gossip ticks: no wakeups while the queues are empty; the grid is kept', (t) => {
  const s = new Solo(5);
  const control: number[] = [MessageType.ping, MessageType.ackResp, MessageType.indirectPing];
  const gossipTimes = (from: number, to: number): number[] =>
    s.sent
      .filter((x) => x.t >= from && x.t < to && !control.includes(x.msgs[0]!.type))
      .map((x) => x.t);
  s.advance(10_000);
  const early = gossipTimes(0, 10_000);
  t.ok(early.length > 0, `join broadcasts gossiped (${early.length} packets)`);
  const phase = early[0]! % LAN_CONFIG.gossipInterval;
  t.ok(
    early.every((x) => x % LAN_CONFIG.gossipInterval === phase),
    'gossip packets on one grid',
  );
  t.equal(s.core.queuedBroadcasts().length, 0, 'queue drained');

  const ticks: number[] = [];
  const tick = s.core.tick.bind(s.core);
  s.core.tick = (now: number) => {
    ticks.push(now);
    tick(now);
  };
  s.advance(20_000);
  // One probe a second (acks come back at once here); 5 gossip ticks a second would be 50 more.
  t.ok(ticks.length <= 11, `${ticks.length} ticks in 10 idle seconds`);
  t.same(gossipTimes(10_000, 20_000), [], 'nothing gossiped while idle');

  s.at(20_037, () => s.core.broadcastUser(new Uint8Array([7]), null, s.now));
  s.advance(25_000);
  const late = gossipTimes(20_000, 25_000);
  const first = 20_037 + ((((phase - 20_037) % 200) + 200) % 200);
  t.equal(late[0], first, 'a broadcast queued between ticks waits for the next tick of the grid');
  t.ok(
    late.every((x) => x % LAN_CONFIG.gossipInterval === phase),
    'and later rounds stay on it',
  );
  t.end();
});
