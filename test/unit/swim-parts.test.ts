// The SWIM core's building blocks against memberlist's formulas: suspicion timeouts
// (suspicion.go / util.go), retransmit limits and the broadcast queue (queue.go), local health
// awareness (awareness.go), push/pull scaling, config presets and validation (config.go).
import t from 'tap';
import { Awareness } from '../../src/gossip/awareness.js';
import { retransmitLimit, TransmitLimitedQueue } from '../../src/gossip/broadcast.js';
import {
  LAN_CONFIG,
  LOCAL_CONFIG,
  validateConfig,
  WAN_CONFIG,
  type SwimConfig,
} from '../../src/gossip/config.js';
import { remainingSuspicionTime, Suspicion, suspicionTimeout } from '../../src/gossip/suspicion.js';
import { formatAddress, parseAddress, pushPullScale } from '../../src/gossip/swim.js';

t.test('suspicion timeout: mult · max(1, log10 N) · interval', (t) => {
  t.equal(suspicionTimeout(4, 0, 1000), 4000, 'N=0 counts as 1');
  t.equal(suspicionTimeout(4, 1, 1000), 4000);
  t.equal(suspicionTimeout(4, 10, 1000), 4000, 'log10(10) = 1');
  t.equal(suspicionTimeout(4, 100, 1000), 8000);
  t.equal(suspicionTimeout(4, 1000, 1000), 12000);
  t.equal(suspicionTimeout(4, 50, 1000), 6792, 'node scale truncated to thousandths: 1.698');
  t.equal(suspicionTimeout(6, 100, 5000), 60000, 'WAN');
  t.end();
});

t.test('remaining suspicion time decays with log(n+1)/log(k+1)', (t) => {
  // memberlist suspicion_test.go TestSuspicion_remainingSuspicionTime: min 2 s, max 30 s, k 3.
  const cases: [number, number, number][] = [
    [0, 0, 30000],
    [1, 2000, 14000],
    [2, 3000, 4810],
    [3, 4000, -2000],
    [4, 5000, -3000],
    [5, 10000, -8000],
  ];
  for (const [n, elapsed, want] of cases) {
    t.equal(remainingSuspicionTime(n, 3, elapsed, 2000, 30000), want, `n=${n} elapsed=${elapsed}`);
  }
  t.end();
});

t.test('Suspicion: starts at max, confirmations pull the deadline in, repeats do not', (t) => {
  const s = new Suspicion('a', 3, 2000, 30000, 1000);
  t.equal(s.deadline, 31000);
  t.notOk(s.confirm('a', 1500), 'the accuser does not confirm itself');
  t.ok(s.confirm('b', 3000));
  t.equal(s.deadline, 1000 + 16000, 'n=1: 16 s from start');
  t.notOk(s.confirm('b', 3500), 'a repeat does not count');
  t.ok(s.confirm('c', 4000));
  t.equal(s.deadline, 1000 + 7810, 'n=2: 7.81 s from start');
  t.ok(s.confirm('d', 5000));
  t.equal(s.deadline, 5000, 'overdue: due now');
  t.notOk(s.confirm('e', 5000), 'no more than k confirmations');
  const k0 = new Suspicion('a', 0, 2000, 30000, 0);
  t.equal(k0.deadline, 2000, 'k < 1: the minimum from the start');
  t.end();
});

t.test('retransmit limit: mult · ceil(log10(N+1))', (t) => {
  t.equal(retransmitLimit(4, 0), 0);
  t.equal(retransmitLimit(4, 1), 4);
  t.equal(retransmitLimit(4, 9), 4);
  t.equal(retransmitLimit(4, 10), 8);
  t.equal(retransmitLimit(4, 99), 8);
  t.equal(retransmitLimit(4, 100), 12);
  t.equal(retransmitLimit(4, 1000), 16);
  t.equal(retransmitLimit(2, 3), 2);
  t.end();
});

const enc = (v: string): Uint8Array => new TextEncoder().encode(v);

t.test('queue: each broadcast is sent exactly the limit times, then finishes', (t) => {
  let n = 9;
  const q = new TransmitLimitedQueue<string>(2, () => n, enc);
  const finished: [string, boolean][] = [];
  q.queue({ name: null, value: 'hello', finished: (s) => finished.push(['hello', s]) });
  let sends = 0;
  for (let i = 0; i < 10; i++) sends += q.getBroadcasts(2, 1400).length;
  t.equal(sends, 2, 'limit 2·ceil(log10 10) = 2');
  t.same(finished, [['hello', true]]);
  t.equal(q.length, 0);
  n = 10;
  q.queue({ name: null, value: 'x' });
  sends = 0;
  for (let i = 0; i < 10; i++) sends += q.getBroadcasts(2, 1400).length;
  t.equal(sends, 4, 'the limit follows the member count');
  t.end();
});

t.test('queue: a named broadcast replaces the queued one with the same name', (t) => {
  const q = new TransmitLimitedQueue<string>(4, () => 10, enc);
  const finished: [string, boolean][] = [];
  const add = (name: string, value: string): void =>
    q.queue({ name, value, finished: (s) => finished.push([value, s]) });
  add('node-a', 'suspect a 1');
  add('node-b', 'alive b 1 with meta');
  add('node-a', 'alive a 2');
  t.equal(q.length, 2);
  t.same(finished, [['suspect a 1', false]], 'the old one finishes unsent');
  t.same(
    q.getBroadcasts(2, 1400).map((b) => b.value),
    ['alive b 1 with meta', 'alive a 2'],
    'larger first within the same transmit count',
  );
  q.queue({ name: null, value: 'anon' });
  q.queue({ name: null, value: 'anon' });
  t.equal(q.length, 4, 'unnamed broadcasts never invalidate');
  t.end();
});

t.test('queue: least-sent first, packing respects the byte limit and overhead', (t) => {
  const q = new TransmitLimitedQueue<string>(4, () => 10, enc);
  q.queue({ name: null, value: 'a'.repeat(100) });
  q.getBroadcasts(2, 1400);
  q.queue({ name: null, value: 'b'.repeat(100) });
  q.queue({ name: null, value: 'c'.repeat(100) });
  const first = q.getBroadcasts(2, 1400).map((b) => b.value[0]);
  t.same(first, ['c', 'b', 'a'], 'fresh ones (newest first) before the already-sent one');
  const q2 = new TransmitLimitedQueue<string>(4, () => 10, enc);
  q2.queue({ name: null, value: 'x'.repeat(300) });
  q2.queue({ name: null, value: 'y'.repeat(50) });
  q2.queue({ name: null, value: 'z'.repeat(50) });
  const got = q2.getBroadcasts(2, 110);
  t.same(
    got.map((b) => b.bytes.length),
    [50, 50],
    'a message too large for the space left is skipped, smaller ones still fit',
  );
  t.ok(got.reduce((a, b) => a + 2 + b.bytes.length, 0) <= 110);
  t.same(q2.getBroadcasts(2, 40), [], 'nothing fits');
  t.equal(q2.snapshot()[0]?.transmits, 0, 'the skipped one was not counted');
  t.end();
});

t.test('queue: reset finishes everything unsent', (t) => {
  const q = new TransmitLimitedQueue<string>(4, () => 10, enc);
  let unsent = 0;
  for (let i = 0; i < 3; i++)
    q.queue({ name: `n${i}`, value: 'v', finished: (s) => void (unsent += s ? 0 : 1) });
  q.reset();
  t.equal(q.length, 0);
  t.equal(unsent, 3);
  t.same(q.getBroadcasts(2, 1400), []);
  t.end();
});

t.test('awareness: clamps to [0, max−1] and scales timeouts by score+1', (t) => {
  const a = new Awareness(8);
  t.equal(a.scaleTimeout(1000), 1000);
  t.notOk(a.applyDelta(-1), 'already at 0');
  t.ok(a.applyDelta(3));
  t.equal(a.scaleTimeout(1000), 4000);
  a.applyDelta(100);
  t.equal(a.score, 7);
  t.equal(a.scaleTimeout(1000), 8000, 'probe interval backs off to 8 s (LAN)');
  a.applyDelta(-100);
  t.equal(a.score, 0);
  const off = new Awareness(1);
  off.applyDelta(5);
  t.equal(off.score, 0, 'max 1 disables it');
  t.end();
});

t.test('push/pull interval scales with log2(N) above 32 members', (t) => {
  t.equal(pushPullScale(30000, 1), 30000);
  t.equal(pushPullScale(30000, 32), 30000);
  t.equal(pushPullScale(30000, 33), 60000);
  t.equal(pushPullScale(30000, 64), 60000);
  t.equal(pushPullScale(30000, 65), 90000);
  t.equal(pushPullScale(30000, 1000), 180000);
  t.end();
});

t.test('addresses', (t) => {
  t.equal(formatAddress(new Uint8Array([198, 18, 0, 1]), 7946), '198.18.0.1:7946');
  const v6 = new Uint8Array(16);
  v6[0] = 0x20;
  v6[1] = 0x01;
  v6[15] = 1;
  t.equal(formatAddress(v6, 7946), '[2001:0:0:0:0:0:0:1]:7946');
  t.throws(() => formatAddress(new Uint8Array(5), 1), /5-byte address/);
  t.same(parseAddress('198.18.0.1:7946'), { host: '198.18.0.1', port: 7946 });
  t.same(parseAddress('[2001:0:0:0:0:0:0:1]:7946'), { host: '2001:0:0:0:0:0:0:1', port: 7946 });
  t.throws(() => parseAddress('nohost'), /want host:port/);
  t.throws(() => parseAddress('1.2.3.4:99999'), /want host:port/);
  t.end();
});

t.test('config presets carry memberlist values and are frozen', (t) => {
  t.ok(Object.isFrozen(LAN_CONFIG) && Object.isFrozen(WAN_CONFIG) && Object.isFrozen(LOCAL_CONFIG));
  t.match(LAN_CONFIG, {
    probeInterval: 1000,
    probeTimeout: 500,
    indirectChecks: 3,
    suspicionMult: 4,
    suspicionMaxTimeoutMult: 6,
    gossipInterval: 200,
    gossipNodes: 3,
    gossipToTheDeadTime: 30000,
    pushPullInterval: 30000,
    retransmitMult: 4,
    awarenessMaxMultiplier: 8,
    deadNodeReclaimTime: 0,
    tcpTimeout: 10000,
    udpBufferSize: 1400,
  });
  t.match(WAN_CONFIG, {
    probeInterval: 5000,
    probeTimeout: 3000,
    suspicionMult: 6,
    gossipInterval: 500,
    gossipNodes: 4,
    gossipToTheDeadTime: 60000,
    pushPullInterval: 60000,
    tcpTimeout: 30000,
    indirectChecks: 3,
  });
  t.match(LOCAL_CONFIG, {
    probeInterval: 1000,
    probeTimeout: 200,
    indirectChecks: 1,
    retransmitMult: 2,
    suspicionMult: 3,
    gossipInterval: 100,
    gossipToTheDeadTime: 15000,
    pushPullInterval: 15000,
    tcpTimeout: 1000,
  });
  t.throws(() => {
    (LAN_CONFIG as SwimConfig).probeInterval = 1;
  });
  for (const c of [LAN_CONFIG, WAN_CONFIG, LOCAL_CONFIG]) t.doesNotThrow(() => validateConfig(c));
  t.end();
});

t.test('validateConfig names the bad field', (t) => {
  const bad = (patch: Partial<Record<keyof SwimConfig, unknown>>, re: RegExp): void => {
    t.throws(
      () => validateConfig({ ...LAN_CONFIG, ...patch } as SwimConfig),
      re,
      JSON.stringify(patch),
    );
  };
  bad({ probeInterval: 0 }, /probeInterval is 0/);
  bad({ gossipNodes: 1.5 }, /gossipNodes is 1.5, want an integer/);
  bad({ suspicionMult: NaN }, /suspicionMult is NaN/);
  bad({ udpBufferSize: 10 }, /udpBufferSize is 10/);
  bad({ tcpPings: 'yes' }, /tcpPings/);
  bad({ probeTimeout: 2000 }, /probeTimeout \(2000 ms\) exceeds probeInterval/);
  bad({ retransmitMult: undefined }, /retransmitMult is undefined/);
  t.match(
    (() => {
      try {
        validateConfig({ ...LAN_CONFIG, awarenessMaxMultiplier: 0 });
      } catch (e) {
        return e;
      }
    })(),
    { code: 'EUSAGE' },
  );
  t.end();
});
