// Random message storms into one SWIM core: packets and streams with random types, names,
// incarnations, sequence numbers, addresses, version arrays and meta sizes, interleaved with
// ticks and stream completions. The core must never throw, must stay alive at an incarnation
// above every accusation it saw about itself, and must keep its output within limits.
import t from 'tap';
import { LAN_CONFIG } from '../../src/gossip/config.js';
import { Swim, type StreamMessage } from '../../src/gossip/swim.js';
import {
  MessageType,
  NodeState,
  type PacketMessage,
  type PushNodeState,
} from '../../src/gossip/wire.js';
import { SeededRandom } from '../../src/raft/random.js';

const names = ['me', 'a', 'b', 'c', 'd', 'e', ''];

function storm(seed: number, steps: number): { maxAccused: number; core: Swim } {
  const r = new SeededRandom(seed);
  const pick = <T>(xs: readonly T[]): T => xs[r.intn(xs.length)]!;
  const bytes = (n: number): Uint8Array => {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = r.intn(256);
    return b;
  };
  const addr = (): Uint8Array =>
    pick([new Uint8Array([198, 18, 0, 1 + r.intn(6)]), new Uint8Array(16), bytes(r.intn(6))]);
  const vsn = (): Uint8Array =>
    pick([
      Uint8Array.from([1, 5, 2, 2, 5, 4]),
      Uint8Array.from([1, 5, 2, 2, 5, 5]),
      bytes(r.intn(8)),
    ]);
  const inc = (): number => pick([0, 1, 2, r.intn(100), r.intn(1000)]);
  const core = new Swim({
    name: 'me',
    addr: new Uint8Array([198, 18, 0, 1]),
    port: 7946,
    config: LAN_CONFIG,
    rand: new SeededRandom(seed + 1),
    now: 0,
  });
  let now = 0;
  let maxAccused = 0;
  const pending: number[] = [];
  const state = (): PushNodeState => ({
    name: pick(names),
    addr: addr(),
    port: r.intn(65536),
    meta: bytes(pick([0, 3, 512, 600])),
    incarnation: inc(),
    state: r.intn(5),
    vsn: vsn(),
  });
  for (let i = 0; i < steps; i++) {
    now += r.intn(300);
    const from = `198.18.0.${1 + r.intn(6)}:7946`;
    const k = r.intn(12);
    let m: PacketMessage | null = null;
    switch (k) {
      case 0:
        m = {
          type: MessageType.ping,
          body: {
            seqNo: r.intn(50),
            node: pick(names),
            sourceAddr: addr(),
            sourcePort: r.intn(65536),
            sourceNode: pick(names),
          },
        };
        break;
      case 1:
        m = {
          type: MessageType.indirectPing,
          body: {
            seqNo: r.intn(50),
            target: addr(),
            port: r.intn(65536),
            node: pick(names),
            nack: r.intn(2) === 1,
            sourceAddr: addr(),
            sourcePort: r.intn(65536),
            sourceNode: pick(names),
          },
        };
        break;
      case 2:
        m = { type: MessageType.ackResp, body: { seqNo: r.intn(50), payload: bytes(r.intn(4)) } };
        break;
      case 3:
        m = { type: MessageType.nackResp, body: { seqNo: r.intn(50) } };
        break;
      case 4:
        m = {
          type: MessageType.suspect,
          body: { incarnation: inc(), node: pick(names), from: pick(names) },
        };
        break;
      case 5:
        m = {
          type: MessageType.dead,
          body: { incarnation: inc(), node: pick(names), from: pick(names) },
        };
        break;
      case 6: {
        const s = state();
        m = {
          type: MessageType.alive,
          body: {
            incarnation: s.incarnation,
            node: s.name,
            addr: s.addr,
            port: s.port,
            meta: s.meta,
            vsn: s.vsn,
          },
        };
        break;
      }
      case 7:
        m = { type: MessageType.user, body: bytes(r.intn(40)) };
        break;
      case 8: {
        const nodes: PushNodeState[] = [];
        for (let j = r.intn(6); j > 0; j--) nodes.push(state());
        const sm: StreamMessage = pick<StreamMessage>([
          {
            type: MessageType.pushPull,
            body: { join: r.intn(2) === 1, nodes, userState: bytes(r.intn(5)) },
          },
          {
            type: MessageType.ping,
            body: {
              seqNo: r.intn(9),
              node: pick(names),
              sourceAddr: addr(),
              sourcePort: 1,
              sourceNode: '',
            },
          },
          { type: MessageType.user, body: bytes(3) },
          { type: MessageType.ackResp, body: { seqNo: 1, payload: bytes(1) } },
        ]);
        const refused = core.counters.pushPullsRefused;
        core.handleStream(now, from, sm);
        if (sm.type === MessageType.pushPull && core.counters.pushPullsRefused === refused) {
          for (const x of nodes) {
            if (x.name === 'me' && x.state >= NodeState.suspect && x.state <= NodeState.left) {
              maxAccused = Math.max(maxAccused, x.incarnation);
            }
          }
        }
        break;
      }
      case 9: {
        const id = pending.splice(r.intn(pending.length + 1), 1)[0];
        if (id !== undefined) {
          const nodes: PushNodeState[] = [];
          for (let j = r.intn(4); j > 0; j--) nodes.push(state());
          core.streamDone(
            now,
            id,
            pick<StreamMessage | null>([
              null,
              { type: MessageType.pushPull, body: { join: false, nodes, userState: bytes(2) } },
              { type: MessageType.ackResp, body: { seqNo: r.intn(50), payload: bytes(1) } },
              { type: MessageType.err, body: { error: 'x' } },
            ]),
            pick(['', 'refused']),
          );
        }
        break;
      }
      case 10:
        core.join(now, [from]);
        break;
      default:
        core.tick(now);
    }
    if (m) {
      if ((m.type === MessageType.suspect || m.type === MessageType.dead) && m.body.node === 'me') {
        maxAccused = Math.max(maxAccused, m.body.incarnation);
      }
      core.step(now, from, m);
    }
    if (core.nextDeadline() <= now) core.tick(now);
    const out = core.ready();
    for (const s of out.streams) pending.push(s.id);
    for (const p of out.packets) {
      const size =
        p.parts.reduce((a, b) => a + b.length, 0) +
        (p.parts.length > 1 ? 2 + 2 * p.parts.length : 0);
      if (size > 1400) throw new Error(`packet of ${size} bytes`);
    }
  }
  return { maxAccused, core };
}

t.test('20 storms of 5,000 random inputs: no throw, still alive above every accusation', (t) => {
  const seen = { refutes: 0, refused: 0, badAddresses: 0, badVsn: 0, probesFailed: 0, accused: 0 };
  for (let seed = 1; seed <= 20; seed++) {
    let res: { maxAccused: number; core: Swim } | undefined;
    t.doesNotThrow(() => {
      res = storm(seed, 5000);
    }, `seed ${seed}`);
    if (!res) continue;
    const me = res.core.member('me');
    t.equal(me?.state, NodeState.alive, `seed ${seed}: alive`);
    t.ok(
      res.core.localIncarnation > res.maxAccused,
      `seed ${seed}: incarnation ${res.core.localIncarnation} > accused ${res.maxAccused}`,
    );
    t.ok(res.core.members().length <= 7, 'members bounded by distinct names');
    t.ok(res.core.queuedBroadcasts().length <= 7, 'one queued broadcast per member');
    const c = res.core.counters;
    seen.refutes += c.refutes;
    seen.refused += c.pushPullsRefused;
    seen.badAddresses += c.badAddresses;
    seen.badVsn += c.aliveRejectedVsn;
    seen.probesFailed += c.probesFailed;
    seen.accused = Math.max(seen.accused, res.maxAccused);
  }
  t.ok(
    Object.values(seen).every((v) => v > 0),
    `the storms reached every path: ${JSON.stringify(seen)}`,
  );
  t.end();
});
