// The gossip driver's pure parts: the incremental stream reader (fed through a PassThrough,
// no sockets), the PRNG, key parsing and the agent's flags. The driver on real sockets is
// tested in namespaces (test/netns/gossip-*.test.ts).
import t from 'tap';
import { PassThrough } from 'node:stream';
import type { Socket } from 'node:net';

import { parseArgs } from '../../src/gossip/agent-main.js';
import { Keyring } from '../../src/gossip/keyring.js';
import { keyFromBase64, seededRandom } from '../../src/gossip/memberlist.js';
import { openStream, sealStream } from '../../src/gossip/packet.js';
import { decodeStreamMessage, encodeStreamMessage } from '../../src/gossip/stream.js';
import type { StreamMessage } from '../../src/gossip/swim.js';
import { readMessage } from '../../src/gossip/transport.js';
import { MessageType, OUR_VSN } from '../../src/gossip/wire.js';

const clock = () => performance.now();
const sock = () => new PassThrough() as unknown as Socket & PassThrough;

function pushPull(n: number): StreamMessage {
  return {
    type: MessageType.pushPull,
    body: {
      join: false,
      nodes: Array.from({ length: n }, (_, i) => ({
        name: `node-${i}`,
        addr: Uint8Array.from([198, 18, 0, i % 250]),
        port: 7946,
        meta: new Uint8Array(0),
        incarnation: i + 1,
        state: 0,
        vsn: Uint8Array.from(OUR_VSN),
      })),
      userState: Uint8Array.from([1, 2, 3]),
    },
  };
}

t.test('readMessage reassembles a stream delivered a few bytes at a time', async (t) => {
  const keyring = new Keyring(new Uint8Array(32).fill(7));
  for (const [what, o] of [
    ['plain, compressed', { compress: true }],
    ['plain', { compress: false }],
    ['encrypted', { compress: true, keyring }],
  ] as const) {
    const msg = pushPull(40);
    const bytes = sealStream(encodeStreamMessage(msg), o);
    const s = sock();
    const p = readMessage(
      s,
      (b) => {
        const r = openStream(b, { keyring: 'keyring' in o ? o.keyring : null });
        return decodeStreamMessage(r.type, r.body);
      },
      { deadline: clock() + 5000, clock, maxBytes: 1 << 20 },
    );
    for (let i = 0; i < bytes.length; i += 7) s.write(bytes.subarray(i, i + 7));
    const got = await p;
    t.equal(got.type, MessageType.pushPull, `${what}: one message`);
    if (got.type === MessageType.pushPull) {
      t.equal(got.body.nodes.length, 40, `${what}: all node states`);
      t.same([...got.body.userState], [1, 2, 3], `${what}: user state`);
    }
  }
});

t.test('readMessage refuses garbage, oversize, early close and stalls', async (t) => {
  const parse = (b: Uint8Array) => {
    const r = openStream(b);
    return decodeStreamMessage(r.type, r.body);
  };
  const opts = { deadline: clock() + 5000, clock, maxBytes: 4096 };

  let s = sock();
  let p = readMessage(s, parse, opts);
  s.write(Uint8Array.from([99, 1, 2, 3]));
  await t.rejects(p, { code: 'EWIRE' }, 'unknown message type: refused at once');

  s = sock();
  p = readMessage(s, parse, opts);
  const big = sealStream(encodeStreamMessage(pushPull(200)));
  s.write(big);
  await t.rejects(p, /longer than 4096 bytes/, 'oversized message refused');

  s = sock();
  p = readMessage(s, parse, opts);
  s.write(sealStream(encodeStreamMessage(pushPull(3))).subarray(0, 20));
  s.end();
  await t.rejects(p, /closed by peer after 20 bytes/, 'peer closing mid-message');

  s = sock();
  const t0 = clock();
  p = readMessage(s, parse, { deadline: clock() + 150, clock, maxBytes: 4096 });
  s.write(Uint8Array.from([MessageType.pushPull]));
  await t.rejects(p, /i\/o timeout/, 'stalled message ends at the deadline');
  t.ok(clock() - t0 >= 140, 'not before it');
});

t.test('seededRandom: reproducible with a seed, in range, roughly uniform', async (t) => {
  const seed = new Uint8Array(16).fill(3);
  const a = seededRandom(seed);
  const b = seededRandom(seed);
  const xs = Array.from({ length: 50 }, () => a.intn(1000));
  t.same(
    xs,
    Array.from({ length: 50 }, () => b.intn(1000)),
    'same seed, same sequence',
  );
  const r = seededRandom();
  const counts = new Array<number>(10).fill(0);
  for (let i = 0; i < 20_000; i++) {
    const v = r.intn(10);
    counts[v] = (counts[v] ?? 0) + 1;
  }
  t.ok(
    counts.every((c) => c > 1700 && c < 2300),
    `buckets near 2000: ${counts.join(' ')}`,
  );
  t.equal(r.intn(1), 0, 'intn(1) is 0');
  t.throws(() => seededRandom(new Uint8Array(8)), { code: 'EUSAGE' });
});

t.test('keys and agent flags', async (t) => {
  t.equal(keyFromBase64(Buffer.alloc(32, 1).toString('base64')).length, 32);
  t.equal(keyFromBase64(Buffer.alloc(16, 1).toString('base64')).length, 16);
  t.throws(() => keyFromBase64(Buffer.alloc(20).toString('base64')), /want 16, 24 or 32/);
  const a = parseArgs([
    '--name',
    'n1',
    '--bind',
    '198.18.0.1',
    '--join',
    '198.18.0.2:7000',
    '--key',
    Buffer.alloc(32, 2).toString('base64'),
  ]);
  t.equal(a.port, 7946, 'default port');
  t.same(a.join, ['198.18.0.2:7000']);
  t.equal(a.keys.length, 1);
  t.throws(() => parseArgs(['--name', 'x']), { code: 'EUSAGE' }, '--bind required');
  t.throws(() => parseArgs(['--name', 'x', '--bind', 'host:1']), /want IPv4/);
  t.throws(() => parseArgs(['--bogus', '1']), /unknown flag/);
});
