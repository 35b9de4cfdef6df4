// The netdb wire codec: round trips of every kind, size limits, and 100,000 fuzzed inputs
// (random bytes, and mutations of valid messages): decode throws nothing but a WireError.
import t from 'tap';
import { WireError } from '../../src/gossip/msgpack.js';
import {
  Kind,
  MAX_VALUE_BYTES,
  decodeMessage,
  encodeMessage,
  type Message,
  type TableEvent,
} from '../../src/netdb/wire.js';

class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 1;
  }
  intn(n: number): number {
    let z = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return Math.floor((((z ^ (z >>> 14)) >>> 0) / 4294967296) * n);
  }
}

function tev(r: Rng): TableEvent {
  const deleting = r.intn(3) === 0;
  return {
    table: ['overlay_peers', 'endpoints', 'ü'][r.intn(3)]!,
    key: `k${r.intn(1e6)}`,
    owner: `node-${r.intn(50)}`,
    ltime: r.intn(2) ? r.intn(200) : 2 ** 52 + r.intn(1000),
    joinLtime: r.intn(100),
    deleting,
    reapMs: deleting ? r.intn(1_800_000) : 0,
    value: deleting
      ? new Uint8Array(0)
      : Uint8Array.from({ length: r.intn(60) }, () => r.intn(256)),
  };
}

function message(r: Rng): Message {
  const from = `node-${r.intn(9)}`;
  const nev = () => {
    const leaving = r.intn(2) === 1;
    return {
      node: `n${r.intn(9)}`,
      netId: `net${r.intn(4)}`,
      ltime: r.intn(1e9),
      leaving,
      reapMs: leaving ? r.intn(1e6) : 0,
    };
  };
  switch (r.intn(5)) {
    case 4:
      return {
        kind: Kind.digest,
        from,
        netId: `net${r.intn(4)}`,
        joinLtime: r.intn(1e9),
        count: r.intn(1e6),
        hash: r.intn(2 ** 32),
      };
    case 0:
      return {
        kind: Kind.gossip,
        from,
        netId: 'net',
        events: Array.from({ length: r.intn(5) }, () => tev(r)),
      };
    case 1:
      return {
        kind: Kind.bulk,
        from,
        netId: 'net',
        reply: r.intn(2) === 1,
        ltime: r.intn(1e6),
        events: Array.from({ length: r.intn(5) }, () => tev(r)),
      };
    case 2:
      return { kind: Kind.netEvents, from, events: Array.from({ length: r.intn(4) }, nev) };
    default:
      return {
        kind: Kind.netState,
        from,
        reply: r.intn(2) === 1,
        ltime: r.intn(1e6),
        events: Array.from({ length: r.intn(4) }, nev),
      };
  }
}

t.test('round trips', async (t) => {
  const r = new Rng(1);
  const bad: number[] = [];
  for (let i = 0; i < 2000; i++) {
    const m = message(r);
    if (JSON.stringify(decodeMessage(encodeMessage(m))) !== JSON.stringify(m)) bad.push(i);
  }
  t.same(bad, [], '2000 random messages of every kind decode to what was encoded');
  t.equal(
    encodeMessage({ kind: Kind.netEvents, from: 'a', events: [] }).length,
    5,
    'compact header',
  );
});

t.test('limits and versions', async (t) => {
  const big: Message = {
    kind: Kind.gossip,
    from: 'a',
    netId: 'n',
    events: [
      {
        table: 't',
        key: 'k',
        owner: 'a',
        ltime: 1,
        joinLtime: 1,
        deleting: false,
        reapMs: 0,
        value: new Uint8Array(MAX_VALUE_BYTES + 1),
      },
    ],
  };
  t.throws(() => encodeMessage(big), WireError, 'oversized value refused on encode');
  const ok = encodeMessage({ kind: Kind.netEvents, from: 'a', events: [] });
  const v2 = Uint8Array.from(ok);
  v2[0] = 2;
  t.throws(() => decodeMessage(v2), /version 2/, 'unknown version refused');
  const k9 = Uint8Array.from(ok);
  k9[1] = 9;
  t.throws(() => decodeMessage(k9), /unknown kind 9/, 'unknown kind refused');
  // A count claiming a billion events in a few bytes: refused before allocating.
  const huge = Uint8Array.from([1, Kind.netEvents, 1, 0x61, 0x80, 0x94, 0xeb, 0xdc, 0x03]);
  t.throws(() => decodeMessage(huge), /cannot fit/, 'count bounded by the bytes left');
  t.throws(() => decodeMessage(new Uint8Array(0)), WireError, 'empty input');
  t.throws(() => decodeMessage(Uint8Array.from([...ok, 0])), /trailing/, 'trailing bytes');
});

t.test('fuzz: 100,000 inputs, decode throws only WireError', async (t) => {
  const r = new Rng(42);
  const valid = Array.from({ length: 200 }, () => encodeMessage(message(r)));
  let decoded = 0;
  let refused = 0;
  const other: string[] = [];
  for (let i = 0; i < 100_000; i++) {
    let b: Uint8Array;
    if (i % 4 === 0) {
      b = Uint8Array.from({ length: r.intn(64) }, () => r.intn(256));
      if (b.length > 1) b[0] = 1;
    } else {
      b = Uint8Array.from(valid[r.intn(valid.length)]!);
      const muts = 1 + r.intn(4);
      for (let k = 0; k < muts && b.length > 0; k++) {
        switch (r.intn(4)) {
          case 0:
            b[r.intn(b.length)] = r.intn(256);
            break;
          case 1:
            b = b.subarray(0, r.intn(b.length));
            break;
          case 2: {
            const j = r.intn(b.length);
            b[j] = (b[j] ?? 0) ^ (1 << r.intn(8));
            break;
          }
          default:
            b = Uint8Array.from([...b, ...Array.from({ length: r.intn(8) }, () => r.intn(256))]);
        }
      }
    }
    try {
      const m = decodeMessage(b);
      decoded++;
      // Whatever decodes re-encodes to a message that decodes to the same value.
      if (i % 16 === 0 && JSON.stringify(decodeMessage(encodeMessage(m))) !== JSON.stringify(m)) {
        other.push(`input ${i}: re-encoding changed the message`);
      }
    } catch (e) {
      if (e instanceof WireError) refused++;
      else if (other.length < 5) other.push(`input ${i}: ${String(e)}`);
    }
  }
  t.same(other, [], 'no other exception');
  t.equal(decoded + refused, 100_000, `${decoded} decoded, ${refused} refused`);
  t.ok(decoded > 1000 && refused > 1000, 'both outcomes exercised');
});
