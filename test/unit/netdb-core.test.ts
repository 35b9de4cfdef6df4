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
    t.ok(
      udp.some((s) => decodeMessage(s.payload).kind === Kind.gossip),
      'UDP carries gossip',
    );
    // Quiet now: no gossip rounds, only one digest per network per second from each node.
    n.run(30_000);
    n.sent.length = 0;
    const repairs = () => ['a', 'b', 'c', 'd'].map((x) => n.c(x).counters().digestRepairs);
    const before = repairs();
    n.run(10_000);
    const kinds = n.sent.filter((s) => !s.reliable).map((s) => decodeMessage(s.payload).kind);
    t.ok(
      kinds.every((k) => k === Kind.digest),
      'idle: only digests on UDP',
    );
    t.ok(kinds.length <= 4 * 11, `idle: ${kinds.length} digests from 4 nodes in 10 s`);
    t.same(repairs(), before, 'equal tables: no digest repair');
  },
);

t.test(
  'events for a network we are not in yet are held, applied on join, expired after holdMs',
  async (t) => {
    const n = new Net(['a', 'b'], { holdMs: 5000, maxHeldEvents: 3 });
    n.c('a').joinNetwork(n.now, 'net');
    n.c('a').createEntry(n.now, 't', 'net', 'k1', enc.encode('1'));
    n.c('a').createEntry(n.now, 't', 'net', 'k1b', enc.encode('1'));
    // b has not joined: a's gossip reaches it anyway (a gossips to whom it believes is in).
    const gossip = (key: string) =>
      encodeMessage({
        kind: Kind.gossip,
        from: 'a',
        netId: 'net',
        events: [
          {
            table: 't',
            key,
            owner: 'a',
            ltime: 1,
            joinLtime: 1,
            deleting: false,
            reapMs: 0,
            value: enc.encode('1'),
          },
        ],
      });
    const b = n.c('b');
    b.receive(n.now, gossip('k1'));
    b.receive(n.now, gossip('k1'));
    t.equal(b.counters().held, 1, 'held once (a retransmission is a duplicate)');
    t.same(n.view('b', 'net'), [], 'not shown while b is outside');
    b.joinNetwork(n.now, 'net');
    t.same(n.view('b', 'net'), ['k1=1@a'], 'applied on join, before any sync');
    t.equal(b.counters().heldApplied, 1, 'counted as applied');
    b.leaveNetwork(n.now, 'net');
    for (const k of ['x1', 'x2', 'x3', 'x4']) b.receive(n.now, gossip(k));
    t.equal(b.counters().notInNetwork, 1, 'beyond maxHeldEvents: dropped and counted');
    n.run(6000);
    t.equal(b.counters().heldExpired, 3, 'expired after holdMs');
  },
);

t.test(
  'a joiner exchanges tables with every member; members push theirs to a newcomer they learn of',
  async (t) => {
    const n = new Net(['a', 'b', 'c', 'd'], { bulkSyncIntervalMs: 600_000 });
    // a, b and c each write in a network that nobody else is known to be in yet.
    n.cut.add('a');
    n.cut.add('b');
    n.cut.add('c');
    for (const x of ['a', 'b', 'c']) {
      n.c(x).joinNetwork(n.now, 'net');
      n.c(x).createEntry(n.now, 't', 'net', `${x}1`, enc.encode('1'));
    }
    n.run(2000);
    n.cut.clear();
    n.c('d').joinNetwork(n.now, 'net');
    n.run(3000);
    for (const x of ['a', 'b', 'c', 'd'])
      t.same(n.view(x, 'net'), ['a1=1@a', 'b1=1@b', 'c1=1@c'], `${x} holds every entry`);
    const syncs = ['a', 'b', 'c', 'd'].reduce((k, x) => k + n.c(x).counters().memberSyncs, 0);
    t.ok(syncs >= 3, `by member syncs (${syncs})`);
  },
);

t.test('bad input is counted, never thrown', async (t) => {
  const n = new Net(['a']);
  n.c('a').receive(0, Uint8Array.from([9, 9, 9]));
  n.c('a').receive(0, new Uint8Array(0));
  t.equal(n.c('a').counters().badMessages, 2);
});
