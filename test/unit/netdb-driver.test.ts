// netdb over real gossip: three Memberlists on 127.0.0.1 (UDP+TCP, port 0) with a NetworkDB
// each. Entries, updates and deletes reach exactly the nodes in their network; other user
// messages on the same channel are left alone; a graceful leave deletes the node's entries.
import t from 'tap';
import { LOCAL_CONFIG } from '../../src/gossip/config.js';
import { Memberlist } from '../../src/gossip/memberlist.js';
import { NetworkDB, NETDB_MSG_TYPE } from '../../src/netdb/netdb.js';
import type { NetdbEvent } from '../../src/netdb/core.js';

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Waits for `cond`; on a timeout the error says what was awaited and, if given, the state. */
async function until(
  what: string,
  cond: () => boolean,
  ms = 20_000,
  state?: () => string,
): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}${state ? `: ${state()}` : ''}`);
}

/** Each node's member list (`name=state`), for a timeout message. */
const memberViews = (ms: Memberlist[]) =>
  ms
    .map(
      (m) =>
        `${m.name} sees ${m
          .members()
          .map((x) => `${x.name}=${x.state}`)
          .join(',')}`,
    )
    .join('; ');

const view = (db: NetworkDB, net: string) =>
  db.getEntries('endpoints', net).map((e) => `${e.key}=${dec.decode(e.value)}@${e.owner}`);

t.test('three gossip nodes on loopback exchange entries', async (t) => {
  const mk = (name: string) =>
    Memberlist.create({
      name,
      bindAddr: '127.0.0.1',
      port: 0,
      // Failure detection within a few seconds (for c's death at the end), yet tolerant of a
      // test process that a loaded machine stalls for a few hundred ms. A CI dry run once timed
      // out waiting for the three to agree with 300/200 ms probes; what each saw was not
      // recorded then (it is printed now), so stalls causing false suspicion are only the guess.
      config: { ...LOCAL_CONFIG, probeInterval: 500, probeTimeout: 500, suspicionMult: 3 },
    });
  const [a, b, c] = await Promise.all([mk('a'), mk('b'), mk('c')]);
  const cfg = { gossipIntervalMs: 50 };
  // a attaches before anyone joins (learns members from events), b and c after (from members()).
  const dbs: NetworkDB[] = [];
  // Whatever failed, the nodes are shut down (their timers would keep the process alive).
  t.teardown(async () => {
    for (const db of dbs) db.close();
    await Promise.all([a.shutdown(), b.shutdown(), c.shutdown()]);
  });
  const dbA = NetworkDB.attach(a, { config: cfg });
  dbs.push(dbA);
  t.ok((await b.join([a.address])).contacted === 1, 'b joined');
  t.ok((await c.join([a.address])).contacted === 1, 'c joined');
  await until(
    '3 members everywhere',
    () => [a, b, c].every((m) => m.members().filter((x) => x.state === 'alive').length === 3),
    20_000,
    () => memberViews([a, b, c]),
  );
  const dbB = NetworkDB.attach(b, { config: cfg });
  const dbC = NetworkDB.attach(c, { config: cfg });
  dbs.push(dbB, dbC);
  const seenC: NetdbEvent[] = [];
  dbC.watch('endpoints', (e) => seenC.push(e));

  for (const db of [dbA, dbB, dbC]) db.joinNetwork('net1');
  dbA.joinNetwork('net2');
  dbB.joinNetwork('net2');
  dbA.createEntry('endpoints', 'net1', 'ep-a', enc.encode('{"ip":"10.0.1.2"}'));
  dbB.createEntry('endpoints', 'net1', 'ep-b', enc.encode('{"ip":"10.0.1.3"}'));
  dbA.createEntry('endpoints', 'net2', 'ep-a2', enc.encode('x'));
  // Another user of the channel: a message with a different first byte.
  t.not(NETDB_MSG_TYPE, 1);
  a.sendUser('c', Uint8Array.from([1, 2, 3]));

  const want1 = ['ep-a={"ip":"10.0.1.2"}@a', 'ep-b={"ip":"10.0.1.3"}@b'];
  await until('net1 entries everywhere', () =>
    [dbA, dbB, dbC].every((db) => JSON.stringify(view(db, 'net1')) === JSON.stringify(want1)),
  );
  await until('net2 entry on b', () => view(dbB, 'net2').length === 1);
  t.same(view(dbC, 'net2'), [], 'c is not in net2 and holds none of it');
  await until('net2 peers known everywhere', () =>
    [dbA, dbB, dbC].every((db) => db.peers('net2').join() === 'a,b'),
  );
  t.pass('c knows who is in net2 without being in it');
  await until('net1 peers known everywhere', () =>
    [dbA, dbB, dbC].every((db) => db.peers('net1').join() === 'a,b,c'),
  );
  t.pass('net1 peers: a, b, c');

  dbA.updateEntry('endpoints', 'net1', 'ep-a', enc.encode('v2'));
  dbB.deleteEntry('endpoints', 'net1', 'ep-b');
  await until('update and delete everywhere', () =>
    [dbA, dbB, dbC].every((db) => view(db, 'net1').join() === 'ep-a=v2@a'),
  );
  const order = seenC.map((e) => `${e.type} ${e.key}`);
  t.equal(order.filter((x) => x.endsWith(' ep-b'))[0], 'create ep-b', 'c saw ep-b created first');
  t.ok(order.indexOf('update ep-a') > order.indexOf('create ep-a'), 'then ep-a updated');
  t.ok(
    seenC.some((e) => e.type === 'delete' && e.key === 'ep-b'),
    'c watched the delete',
  );
  t.equal(dbC.counters().badMessages, 0, 'the foreign user message was not taken for ours');
  t.ok(dbC.counters().messagesReceived > 0, 'c received netdb messages');
  const bulk = [dbA, dbB, dbC].reduce((n, db) => n + db.counters().bulkSyncsReceived, 0);
  t.ok(bulk > 0, `bulk syncs went over the reliable path (${bulk} received)`);
  t.equal(
    dbA.counters().sendsRefused + dbA.counters().coreErrors,
    0,
    'no refused sends or core errors',
  );

  // b leaves the cluster gracefully: its entries (ep-b2) disappear from a and c.
  dbB.createEntry('endpoints', 'net1', 'ep-b2', enc.encode('y'));
  await until('ep-b2 on c', () => view(dbC, 'net1').length === 2);
  await b.leave(2000);
  await until('b entries deleted on a and c', () =>
    [dbA, dbC].every((db) => view(db, 'net1').join() === 'ep-a=v2@a'),
  );
  t.ok(dbA.counters().tombstones >= 1, 'as tombstones');
  t.same(dbA.peers('net1'), ['a', 'c'], 'b no longer a peer');

  // c dies without a word: once gossip declares it dead, a hides (does not delete) its entry.
  dbC.createEntry('endpoints', 'net1', 'ep-c', enc.encode('z'));
  await until('ep-c on a', () => view(dbA, 'net1').length === 2);
  const tombs = dbA.counters().tombstones;
  dbC.close();
  await c.shutdown();
  await until(
    'c declared dead and its entry hidden on a',
    () => dbA.counters().hidden === 1,
    30_000,
    () => memberViews([a]),
  );
  t.same(view(dbA, 'net1'), ['ep-a=v2@a'], 'readers no longer see ep-c');
  t.same(dbA.peers('net1'), ['a'], 'c no longer a peer');
  t.equal(dbA.counters().tombstones, tombs, 'hidden, not deleted (no new tombstone)');
});
