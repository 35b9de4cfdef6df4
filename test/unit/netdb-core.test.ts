// The netdb core, scripted: a few cores wired by hand (every send delivered at once, no loss),
// checking the rules one by one: lamport order and ties, owner-only writes and their errors,
// entries that outrun their owner's network join, stale entries from before a network leave,
// hidden/restored entries of a failed node with the right watcher events, gossip packet sizes,
// idle wakeups, bad input.
import t from 'tap';
import { MeshError } from '../../src/util/errors.js';
import { NetdbCore, type NetdbEvent, type Send } from '../../src/netdb/core.js';
import { Kind, decodeMessage, encodeMessage } from '../../src/netdb/wire.js';

const enc = new TextEncoder();
const dec = new TextDecoder();

function rand(seed: number) {
  let s = seed;
  return {
    intn(n: number) {
      s = (s * 1103515245 + 12345) % 2147483648;
      return n > 0 ? s % n : 0;
    },
  };
}

class Net {
  now = 0;
  readonly cores = new Map<string, NetdbCore>();
  readonly events = new Map<string, NetdbEvent[]>();
  readonly sent: (Send & { from: string })[] = [];
  /** Drop everything sent to or from these nodes. */
  readonly cut = new Set<string>();

  constructor(names: string[], config = {}) {
    for (const [i, name] of names.entries()) {
      this.cores.set(name, new NetdbCore({ name, rand: rand(i + 1), now: 0, config }));
      this.events.set(name, []);
    }
    for (const a of this.cores.values()) for (const b of names) if (b !== a.name) a.nodeAlive(0, b);
    this.flush();
  }

  c(name: string): NetdbCore {
    return this.cores.get(name)!;
  }

  /** Delivers until nothing is left to send (bounded). */
  flush(): void {
    for (let round = 0; round < 1000; round++) {
      let any = false;
      for (const [name, core] of this.cores) {
        const r = core.ready();
        this.events.get(name)!.push(...r.events);
        for (const s of r.sends) {
          any = true;
          this.sent.push({ ...s, from: name });
          if (this.cut.has(name) || this.cut.has(s.to)) continue;
          this.cores.get(s.to)?.receive(this.now, s.payload);
        }
      }
      if (!any) return;
    }
    throw new Error('flush did not settle');
  }

  /** Advances time, ticking each core at its deadlines. */
  run(ms: number): void {
    const end = this.now + ms;
    for (let i = 0; i < 100_000; i++) {
      let next = end;
      for (const c of this.cores.values()) next = Math.min(next, c.nextDeadline());
      this.now = Math.max(this.now, next);
      for (const c of this.cores.values()) if (c.nextDeadline() <= this.now) c.tick(this.now);
      this.flush();
      if (this.now >= end) return;
    }
  }

  view(name: string, net: string, table = 't'): string[] {
    return this.c(name)
      .getEntries(table, net)
      .map((e) => `${e.key}=${dec.decode(e.value)}@${e.owner}`);
  }
}

t.test(
  'writes spread; later lamport times win; equal times go to the higher owner name',
  async (t) => {
    const n = new Net(['a', 'b', 'c']);
    for (const x of ['a', 'b', 'c']) n.c(x).joinNetwork(n.now, 'net');
    n.flush();
    n.c('a').createEntry(n.now, 't', 'net', 'k1', enc.encode('1'));
    n.run(2000);
    t.same(n.view('c', 'net'), ['k1=1@a'], 'create reached c');
    n.c('a').updateEntry(n.now, 't', 'net', 'k1', enc.encode('2'));
    n.run(2000);
    t.same(n.view('b', 'net'), ['k1=2@a'], 'update reached b');
    t.same(
      n.events.get('c')!.map((e) => `${e.type} ${dec.decode(e.value)}`),
      ['create 1', 'update 2'],
      'c watched create then update',
    );
    // b and c write the same key before hearing of each other's write: equal lamport times.
    const tb = n.c('b').clocks().table;
    t.equal(n.c('c').clocks().table, tb, 'b and c share a clock value');
    n.c('b').createEntry(n.now, 't', 'net', 'k2', enc.encode('from-b'));
    n.c('c').createEntry(n.now, 't', 'net', 'k2', enc.encode('from-c'));
    n.run(35_000);
    for (const x of ['a', 'b', 'c'])
      t.same(n.view(x, 'net'), ['k1=2@a', 'k2=from-c@c'], `${x}: tie goes to c`);
    t.equal(n.c('b').getEntry('t', 'net', 'k2')?.owner, 'c', "b's own write lost to c's");
  },
);

t.test('only the owner writes; errors name the fix', async (t) => {
  const n = new Net(['a', 'b']);
  const code = (fn: () => void) => {
    try {
      fn();
      return 'none';
    } catch (e) {
      return e instanceof MeshError ? e.code : String(e);
    }
  };
  t.equal(
    code(() => n.c('a').createEntry(0, 't', 'net', 'k', enc.encode('x'))),
    'ENOTFOUND',
    'not in network',
  );
  n.c('a').joinNetwork(0, 'net');
  n.c('b').joinNetwork(0, 'net');
  n.flush();
  n.c('a').createEntry(0, 't', 'net', 'k', enc.encode('x'));
  n.run(1000);
  t.equal(
    code(() => n.c('a').createEntry(0, 't', 'net', 'k', enc.encode('y'))),
    'ECONFLICT',
    'exists',
  );
  t.equal(
    code(() => n.c('b').updateEntry(0, 't', 'net', 'k', enc.encode('y'))),
    'ENOTFOUND',
    'not the owner',
  );
  t.equal(
    code(() => n.c('b').deleteEntry(0, 't', 'net', 'k')),
    'ENOTFOUND',
    'not the owner',
  );
  t.equal(
    code(() => n.c('a').createEntry(0, 't', 'net', 'big', new Uint8Array(20_000))),
    'EUSAGE',
    'too big',
  );
  t.equal(
    code(() => n.c('a').createEntry(0, '', 'net', 'k2', enc.encode('x'))),
    'EUSAGE',
    'empty table name',
  );
  n.c('a').deleteEntry(0, 't', 'net', 'k');
  n.c('a').createEntry(0, 't', 'net', 'k', enc.encode('again'));
  n.run(1000);
  t.same(n.view('b', 'net'), ['k=again@a'], 'a key can be created again after a delete');
});

t.test(
  'an entry that outruns its owner join is kept; one from before a later leave is refused',
  async (t) => {
    const n = new Net(['a', 'b']);
    n.c('b').joinNetwork(0, 'net');
    n.flush();
    const ev = {
      table: 't',
      key: 'k',
      owner: 'z',
      ltime: 5,
      joinLtime: 3,
      deleting: false,
      reapMs: 0,
      value: enc.encode('v'),
    };
    n.c('b').receive(
      0,
      encodeMessage({ kind: Kind.gossip, from: 'z', netId: 'net', events: [ev] }),
    );
    t.same(n.view('b', 'net'), ['k=v@z'], 'accepted before any join event of z');
    n.c('b').nodeAlive(0, 'z');
    t.same(n.c('b').peers('net'), ['b', 'z'], 'z learned as a peer from the entry');
    // z leaves the network at ltime 4: its entries go, and a late copy of the old one is refused.
    n.c('b').receive(
      0,
      encodeMessage({
        kind: Kind.netEvents,
        from: 'z',
        events: [{ node: 'z', netId: 'net', ltime: 4, leaving: true, reapMs: 60_000 }],
      }),
    );
    t.same(n.view('b', 'net'), [], 'deleted on leave');
    n.c('b').receive(
      0,
      encodeMessage({ kind: Kind.gossip, from: 'y', netId: 'net', events: [{ ...ev, ltime: 9 }] }),
    );
    t.same(n.view('b', 'net'), [], 'a stale entry from before the leave is refused');
    t.ok(n.c('b').counters().staleDropped >= 1, 'counted');
    // z rejoins (join ltime 6) and writes: accepted.
    n.c('b').receive(
      0,
      encodeMessage({
        kind: Kind.gossip,
        from: 'z',
        netId: 'net',
        events: [{ ...ev, ltime: 10, joinLtime: 6, value: enc.encode('w') }],
      }),
    );
    t.same(n.view('b', 'net'), ['k=w@z'], 'accepted after a rejoin');
  },
);

t.test(
  'a failed node: entries hidden (delete events), restored on return (create events)',
  async (t) => {
    const n = new Net(['a', 'b']);
    n.c('a').joinNetwork(0, 'net');
    n.c('b').joinNetwork(0, 'net');
    n.flush();
    n.c('a').createEntry(0, 't', 'net', 'k', enc.encode('v'));
    n.run(1000);
    n.events.set('b', []);
    n.c('b').nodeFailed(n.now, 'a');
    n.flush();
    t.same(n.view('b', 'net'), [], 'hidden');
    t.same(n.c('b').peers('net'), ['b'], 'not a peer while failed');
    t.match(n.c('b').counters(), { hidden: 1, entries: 0, tombstones: 0 });
    n.c('b').nodeAlive(n.now, 'a');
    n.flush();
    t.same(n.view('b', 'net'), ['k=v@a'], 'restored');
    t.same(
      n.events.get('b')!.map((e) => e.type),
      ['delete', 'create'],
      'watchers saw delete then create',
    );
  },
);

t.test(
  'gossip packets stay within maxPacketBytes; idle cores do not wake for gossip',
  async (t) => {
    const n = new Net(['a', 'b', 'c', 'd']);
    for (const x of ['a', 'b', 'c', 'd']) n.c(x).joinNetwork(0, 'net');
    n.flush();
    n.run(40_000);
    for (let i = 0; i < 200; i++)
      n.c('a').createEntry(n.now, 't', 'net', `key-${i}`, enc.encode('x'.repeat(40)));
    n.sent.length = 0;
    n.run(20_000);
    const udp = n.sent.filter((s) => !s.reliable);
    t.ok(udp.length > 0, 'gossip sent');
    t.ok(
      udp.every((s) => s.payload.length <= 1200),
      `largest UDP payload ${Math.max(...udp.map((s) => s.payload.length))} bytes`,
    );
    t.equal(n.view('d', 'net').length, 200, 'all 200 entries reached d');
    // Quiet now: the next deadline is a bulk sync or push/pull, not the 200 ms gossip grid.
    n.run(30_000);
    const c = n.c('a');
    t.ok(c.nextDeadline() - n.now > 200, `idle deadline ${c.nextDeadline() - n.now} ms away`);
    const m = decodeMessage(udp[0]!.payload);
    t.equal(m.kind, Kind.gossip, 'UDP carries gossip');
  },
);

t.test('bad input is counted, never thrown', async (t) => {
  const n = new Net(['a']);
  n.c('a').receive(0, Uint8Array.from([9, 9, 9]));
  n.c('a').receive(0, new Uint8Array(0));
  t.equal(n.c('a').counters().badMessages, 2);
});
