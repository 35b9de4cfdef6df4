// Interop with real memberlist peers: Debian's `serf agent` (memberlist 0.2) and our
// gossip-agent side by side in network namespaces. Every wait is bounded; the nets (and the
// processes in them) are destroyed however a test ends.
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import {
  allIn,
  newKey,
  serfKeys,
  serfMembers,
  startOurs,
  startSerf,
  stateMap,
  waitFor,
  type OurAgent,
} from '../lib/serf.js';
import { MeshHosts, until } from '../lib/meshd.js';
import { requireCommand, requireRoot } from '../lib/require.js';
import { testnet, type TestHost } from '../lib/testnet.js';

requireRoot('gossip interop tests');
requireCommand('serf', ['version'], 'serf (Debian package serf)');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Both views: serf's (through RPC in `serfHost`) and ours. */
function views(serfHost: TestHost, ours: OurAgent): string {
  const s = [...stateMap(serfMembers(serfHost))].map(([n, st]) => `${n}=${st}`).join(' ');
  const o = [...stateMap(ours.members())].map(([n, st]) => `${n}=${st}`).join(' ');
  return `serf(${serfHost.name.split('-').pop()}): ${s} | ours: ${o}`;
}

t.test('plaintext: join, failure detection both ways, serf healthy after', async (t) => {
  const net = testnet(t, { hosts: 5 });
  const [h1, h2, h3, h4, h5] = net.hosts as [TestHost, TestHost, TestHost, TestHost, TestHost];
  startSerf(h1, 's1');
  await waitFor(() => serfMembers(h1).length === 1, 5000);
  startSerf(h2, 's2', { join: h1.addr });
  t.ok(
    (await waitFor(() => allIn(serfMembers(h1), ['s1', 's2'], 'alive'), 10_000)) >= 0,
    'serf cluster of 2 formed',
  );

  // (1) our node joins through s1 (we are the push/pull client).
  const o3 = startOurs(h3, 'o3', { join: [`${h1.addr}:7946`] });
  const joinMs = await waitFor(
    () =>
      allIn(serfMembers(h1), ['s1', 's2', 'o3'], 'alive') &&
      allIn(serfMembers(h2), ['s1', 's2', 'o3'], 'alive') &&
      allIn(o3.members(), ['s1', 's2', 'o3'], 'alive'),
    15_000,
  );
  t.ok(joinMs >= 0, `our node and serf list each other alive (${joinMs} ms): ${views(h2, o3)}`);

  // A serf agent joins through our node (we are the push/pull server, serf the client).
  const all = ['s1', 's2', 's5', 'o3'];
  const s5 = startSerf(h5, 's5', { join: h3.addr });
  const viaMs = await waitFor(
    () =>
      allIn(serfMembers(h5), all, 'alive') &&
      allIn(serfMembers(h1), all, 'alive') &&
      allIn(o3.members(), all, 'alive'),
    15_000,
  );
  t.ok(viaMs >= 0, `a serf agent joins through our node and everyone converges (${viaMs} ms)`);
  t.notMatch(s5.log(), /Failed to join|push\/pull/i, 'no join or push/pull error in that agent');
  const closedMs = await waitFor(
    () => (o3.status()?.counters as { openStreams?: number }).openStreams === 0,
    5000,
  );
  t.ok(closedMs >= 0, 'the push/pull connection serf opened to us is closed afterwards');
  const serfView = serfMembers(h2).find((m) => m.name === 'o3') as unknown as {
    protocol?: { version: number };
  };
  t.equal(serfView.protocol?.version, 4, 'serf sees our delegate version 4');

  // (3) a serf agent is killed: we must declare it dead.
  s5.kill();
  const deadMs = await waitFor(() => stateMap(o3.members()).get('s5') === 'dead', 20_000);
  t.ok(deadMs >= 0, `killed serf agent declared dead by us (${deadMs} ms): ${views(h1, o3)}`);
  const serfDeadMs = await waitFor(() => stateMap(serfMembers(h1)).get('s5') === 'failed', 10_000);
  t.ok(serfDeadMs >= 0, `and failed by serf (s1, ${deadMs + serfDeadMs} ms after the kill)`);

  // (4) our node is killed: serf must mark it failed.
  o3.kill();
  const failedMs = await waitFor(
    () =>
      stateMap(serfMembers(h1)).get('o3') === 'failed' &&
      stateMap(serfMembers(h2)).get('o3') === 'failed',
    30_000,
  );
  t.ok(failedMs >= 0, `killed node of ours marked failed by both serf agents (${failedMs} ms)`);

  // (5) the serf cluster is healthy after our node died: the survivors see each other alive,
  // and a new serf agent joins (push/pull with state that still lists our failed node).
  t.ok(allIn(serfMembers(h1), ['s1', 's2'], 'alive'), 's1 sees s1, s2 alive');
  t.ok(allIn(serfMembers(h2), ['s1', 's2'], 'alive'), 's2 sees s1, s2 alive');
  const s4 = startSerf(h4, 's4', { join: h2.addr });
  const s4Ms = await waitFor(
    () =>
      allIn(serfMembers(h4), ['s1', 's2', 's4'], 'alive') &&
      allIn(serfMembers(h1), ['s1', 's2', 's4'], 'alive'),
    10_000,
  );
  t.ok(s4Ms >= 0, `a new serf agent joins the cluster afterwards (${s4Ms} ms)`);
  t.notMatch(s4.log(), /Failed to join|push\/pull/i, 'no join or push/pull error in the new agent');
  t.comment(
    `plaintext: join seen by all ${joinMs} ms; serf agent joining through us ${viaMs} ms; serf kill -> dead at ours ${deadMs} ms; ours kill -> failed at serf ${failedMs} ms; new serf agent ${s4Ms} ms`,
  );
});

t.test('encrypted (AES-256): join, then key rotation keeps everyone in', async (t) => {
  const net = testnet(t, { hosts: 4 });
  const [h1, h2, h3, h4] = net.hosts as [TestHost, TestHost, TestHost, TestHost];
  const k1 = newKey();
  const k2 = newKey();
  const s1 = startSerf(h1, 's1', { key: k1 });
  await waitFor(() => serfMembers(h1).length === 1, 5000);
  const all = ['s1', 's2', 'o3'];

  // (2) join with encryption: we join s1, then s2 joins through us (both push/pull roles).
  const o3 = startOurs(h3, 'o3', { key: k1, join: [`${h1.addr}:7946`] });
  t.ok(
    (await waitFor(() => allIn(serfMembers(h1), ['s1', 'o3'], 'alive'), 10_000)) >= 0,
    'we joined s1',
  );
  const s2 = startSerf(h2, 's2', { key: k1, join: h3.addr });
  const joinMs = await waitFor(
    () =>
      allIn(serfMembers(h1), all, 'alive') &&
      allIn(serfMembers(h2), all, 'alive') &&
      allIn(o3.members(), all, 'alive'),
    15_000,
  );
  t.ok(joinMs >= 0, `encrypted: s2 joined through us, all alive everywhere (${joinMs} ms)`);
  t.notMatch(s2.log(), /Failed to join|push\/pull/i, 'no join or push/pull error in s2');
  t.match(s1.log(), /Encrypted: true/, 'serf runs encrypted');
  const c0 = o3.status()?.counters as { badPackets: number } | undefined;
  t.equal(c0?.badPackets, 0, 'no packet failed to decrypt');

  // (6) rotation. Serf distributes keys with its own query protocol (serf user messages on
  // top of memberlist), which our node does not answer; so serf's command reports 2 of 3
  // nodes, and we rotate our node through its own keyring API at the same step.
  const notAlive: string[] = [];
  const watch = setInterval(() => {
    for (const [n, st] of stateMap(o3.members()))
      if (st !== 'alive') notAlive.push(`ours: ${n}=${st}`);
    for (const [n, st] of stateMap(serfMembers(h2)))
      if (st !== 'alive') notAlive.push(`s2: ${n}=${st}`);
  }, 500);
  t.teardown(() => clearInterval(watch));
  for (const op of ['install', 'use', 'remove'] as const) {
    const key = op === 'remove' ? k1 : k2;
    const r = serfKeys(h1, op, key);
    t.match(
      r.out,
      /2\/3 nodes reported success|Successfully/,
      `serf keys -${op}: ${r.out.replace(/\s*\n\s*/g, ' / ')}`,
    );
    const ours = await o3.command({ op, key });
    t.equal(ours.ok, true, `our keyring: ${op}`);
    // Longer than serf's suspicion timeout at N=3 (4 s) plus a probe round: a node that could
    // no longer decrypt would be suspected and declared failed in this window.
    await sleep(op === 'remove' ? 9000 : 3000);
  }
  clearInterval(watch);
  t.same(notAlive, [], 'nobody was ever seen suspect or failed during the rotation');
  t.ok(allIn(serfMembers(h1), all, 'alive'), 'after rotation: s1 sees everyone alive');
  t.ok(allIn(serfMembers(h2), all, 'alive'), 'after rotation: s2 sees everyone alive');
  t.ok(allIn(o3.members(), all, 'alive'), 'after rotation: we see everyone alive');
  t.notMatch(`${s1.log()}${s2.log()}`, /EventMemberFailed|Suspect o3/, 'serf never suspected us');
  const keys = o3.status()?.keys as { keys: string[] } | undefined;
  t.equal(keys?.keys.length, 1, 'our keyring holds only the new key');

  // The old key is really gone from the cluster: a node with only k1 cannot join.
  const o4 = startOurs(h4, 'o4', { key: k1, join: [`${h1.addr}:7946`] });
  const refused = await waitFor(() => /"ev":"joined","contacted":0/.test(o4.log()), 15_000);
  t.ok(refused >= 0, 'a node with only the removed key is refused');
  t.notOk(stateMap(serfMembers(h1)).has('o4'), 'and serf never lists it');
  o4.kill();

  // Graceful leaves both ways. serf's leave (SIGINT: leave intent + memberlist leave) is `left`
  // for us; ours is a memberlist leave only, which serf shows as failed, since serf's `left`
  // needs its own leave intent (a serf message we do not send).
  s2.proc.kill('SIGINT');
  const serfLeftMs = await waitFor(() => stateMap(o3.members()).get('s2') === 'left', 10_000);
  t.ok(serfLeftMs >= 0, `serf agent's graceful leave is 'left' at our node (${serfLeftMs} ms)`);
  o3.proc.stdin?.write('{"op":"leave"}\n');
  const oursLeftMs = await waitFor(() => {
    const st = stateMap(serfMembers(h1)).get('o3');
    return st !== undefined && st !== 'alive';
  }, 10_000);
  const shown = stateMap(serfMembers(h1)).get('o3');
  t.ok(oursLeftMs >= 0, `our graceful leave reaches serf in ${oursLeftMs} ms (shown as ${shown})`);
  await waitFor(() => o3.proc.exitCode !== null, 8000);
  t.match(o3.log(), /"ev":"left","complete":true/, 'our leave broadcast completed');
  t.comment(
    `encrypted: join seen by all ${joinMs} ms; rotation install/use/remove with 0 suspicions; serf leave -> left at ours ${serfLeftMs} ms; our leave -> ${shown} at serf ${oursLeftMs} ms`,
  );
});

t.test(
  'meshd itself with serf, encrypted: both sides alive, kill -9 detected both ways',
  async (t) => {
    const net = testnet(t, { hosts: 3 });
    const [h1, h2, h3] = net.hosts as [TestHost, TestHost, TestHost];
    const dir = mkdtempSync(join(tmpdir(), 'meshd-serf-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const key = newKey();
    const keyFile = join(dir, 'gossip.key');
    writeFileSync(keyFile, `${key}\n`, { mode: 0o600 });
    const mh = new MeshHosts(dir);
    t.teardown(() => mh.killAll());
    /** meshd's member states from `meshctl debug gossip --json` ([] while its API is not up). */
    const meshdView = (): Map<string, string> => {
      const r = mh.ctl(h3, 'debug', 'gossip', '--json');
      if (r.status !== 0) return new Map();
      return stateMap(
        (JSON.parse(r.stdout) as { members: { name: string; state: string }[] }).members,
      );
    };
    const show = () =>
      `serf(s1): ${[...stateMap(serfMembers(h1))].map(([n, st]) => `${n}=${st}`).join(' ')} | meshd: ${[...meshdView()].map(([n, st]) => `${n}=${st}`).join(' ')}`;

    // meshd joins s1 (meshd is the push/pull client), then s2 joins through meshd (its server).
    const s1 = startSerf(h1, 's1', { key });
    await until('s1 up', () => serfMembers(h1).length === 1, 10_000);
    mh.start(h3, ['--join', h1.addr, '--gossip-key-file', keyFile]);
    await until('meshd API on h3', () => mh.ready([h3]), 30_000);
    const s2 = startSerf(h2, 's2', { key, join: h3.addr });
    const all = ['s1', 's2', 'h3'];
    const joinMs = await waitFor(
      () =>
        allIn(serfMembers(h1), all, 'alive') &&
        allIn(serfMembers(h2), all, 'alive') &&
        all.every((n) => meshdView().get(n) === 'alive'),
      20_000,
    );
    t.ok(
      joinMs >= 0,
      `serf members and meshctl debug gossip list everyone alive (${joinMs} ms): ${show()}`,
    );
    t.match(s1.log(), /Encrypted: true/, 'serf runs encrypted');
    t.notMatch(
      `${s1.log()}${s2.log()}`,
      /\[ERR\]|Failed to join|push\/pull|decrypt/i,
      'no join, push/pull or decryption error at serf',
    );
    const st = JSON.parse(mh.ok(h3, 'debug', 'gossip', '--json')) as {
      keys: { keys: string[] } | null;
      counters: { badPackets: number };
    };
    t.equal(st.keys?.keys.length, 1, 'meshd gossips encrypted with the one key of its key file');
    t.equal(st.counters.badPackets, 0, 'meshd dropped no packet (none failed to decrypt)');

    // kill -9 of a serf agent: meshd declares it dead.
    const killedSerf = Date.now();
    s2.kill();
    const deadMs = await waitFor(() => meshdView().get('s2') === 'dead', 30_000);
    t.ok(
      deadMs >= 0,
      `meshd declares the killed serf agent dead (${Date.now() - killedSerf} ms): ${show()}`,
    );
    const serfMs = await waitFor(() => stateMap(serfMembers(h1)).get('s2') === 'failed', 30_000);
    t.ok(serfMs >= 0, `and s1 shows it failed (${Date.now() - killedSerf} ms after the kill)`);
    const serfDetectMs = Date.now() - killedSerf;

    // kill -9 of meshd: serf marks it failed.
    const killedMeshd = Date.now();
    mh.procs.get(h3.index)?.kill('SIGKILL');
    const failedMs = await waitFor(() => stateMap(serfMembers(h1)).get('h3') === 'failed', 30_000);
    t.ok(
      failedMs >= 0,
      `serf shows the killed meshd failed (${Date.now() - killedMeshd} ms): ${show()}`,
    );
    t.ok(allIn(serfMembers(h1), ['s1'], 'alive'), 's1 itself is still alive');
    t.comment(
      `meshd+serf encrypted: join seen by all ${joinMs} ms; serf kill -9 -> dead at meshd ${deadMs} ms, failed at s1 ${serfDetectMs} ms; meshd kill -9 -> failed at serf ${failedMs} ms`,
    );
  },
);
