// Only our gossip-agents, each in its own namespace: a join converges, a killed node is
// declared dead by all, a graceful leave is seen as left, garbage is counted and survived.
import t from 'tap';
import { fileURLToPath } from 'node:url';

import { allIn, startOurs, stateMap, waitFor, type OurAgent } from '../lib/serf.js';
import { testnet, type TestHost } from '../lib/testnet.js';
import { requireRoot } from '../lib/require.js';

requireRoot('gossip agent tests');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('five of our nodes: join, garbage, crash, leave, partition', async (t) => {
  const net = testnet(t, { hosts: 5 });
  const hosts = net.hosts;
  const h1 = hosts[0] as TestHost;
  const names = hosts.map((h) => `o${h.index}`);
  const extra = ['--reconnect-ms', '2000'];
  const agents: OurAgent[] = [startOurs(h1, 'o1', { extra })];
  await waitFor(() => agents[0]?.members().length === 1, 5000);
  // Each joins the previous one, so the cluster forms by gossip, not by a star; each starts
  // once its seed is in the cluster. (A node that joins a seed which has not joined anyone
  // yet learns only the seed; the seed's later broadcasts reach it with some probability and
  // push/pull repairs the rest after 30 s. memberlist behaves the same.)
  for (const h of hosts.slice(1)) {
    const prev = agents[agents.length - 1] as OurAgent;
    await waitFor(() => stateMap(prev.members()).get('o1') === 'alive', 10_000);
    agents.push(startOurs(h, `o${h.index}`, { join: [`198.18.0.${h.index - 1}:7946`], extra }));
  }
  const joinMs = await waitFor(
    () => agents.every((a) => allIn(a.members(), names, 'alive')),
    15_000,
  );
  const viewsOf = () =>
    agents
      .map(
        (a) => `${a.name}: ${[...stateMap(a.members())].map(([n, st]) => `${n}=${st}`).join(' ')}`,
      )
      .join('; ');
  t.ok(joinMs >= 0, `all 5 list all 5 alive (${joinMs} ms after the last start)`, {
    views: joinMs >= 0 ? '' : viewsOf(),
    logs: joinMs >= 0 ? '' : agents.map((a) => a.log().slice(0, 1500)).join('\n---\n'),
  });

  // Garbage at o1 from o5's host, then a ping stream a byte at a time.
  const lib = fileURLToPath(new URL('../lib/serf.js', import.meta.url));
  const r = hosts[4]?.exec(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import(${JSON.stringify(lib)}).then((m) => m.abuse('${h1.addr}', 7946, 'o1'))`,
    ],
    { timeoutMs: 30_000 },
  );
  const res = JSON.parse(r?.stdout.trim() || '{}') as { sent?: number; ack?: string };
  t.equal(res.sent, 2000, `2000 bad datagrams sent (${r?.stderr.trim() ?? ''})`);
  t.equal(res.ack, 'ack 42', 'a TCP ping written one byte at a time is answered');
  await sleep(1200); // the status file is rewritten every second
  const c = (agents[0]?.status()?.counters ?? {}) as Record<
    'badPackets' | 'badMessages' | 'badStreams' | 'packetsIn',
    number
  >;
  t.ok(
    c.badPackets > 0 && c.badPackets + c.badMessages >= 1000,
    `garbage counted: ${c.badPackets} packets and ${c.badMessages} parts dropped of ${c.packetsIn} received, ${c.badStreams} streams`,
  );
  t.ok(c.badStreams >= 15, 'garbage streams counted');
  t.equal(agents[0]?.proc.exitCode, null, 'o1 is still running');
  const idleMs = await waitFor(
    () => (agents[0]?.status()?.counters as { openStreams?: number }).openStreams === 0,
    5000,
  );
  t.ok(idleMs >= 0, `no connection left open at o1 afterwards (${idleMs} ms)`);
  t.ok(allIn(agents[1]?.members() ?? [], names, 'alive'), 'and everyone still sees everyone alive');

  // Per-stream deadline: a half-written request is closed at tcpTimeout (LOCAL preset: 1 s).
  const x = startOurs(hosts[4] as TestHost, 'x5', { port: 7947, extra: ['--preset', 'local'] });
  await waitFor(() => x.members().length === 1, 5000);
  const st = hosts[3]?.exec(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import(${JSON.stringify(lib)}).then((m) => m.stall('198.18.0.5', 7947, 8000))`,
    ],
    { timeoutMs: 15_000 },
  );
  const stalled = JSON.parse(st?.stdout.trim() || '{}') as { how?: string; ms?: number };
  t.equal(stalled.how, 'closed', `a stalled inbound stream is closed (after ${stalled.ms} ms)`);
  t.ok((stalled.ms ?? 0) >= 900 && (stalled.ms ?? 0) < 3000, 'at the 1 s stream deadline');
  x.kill();

  // Crash o5: the others must declare it dead.
  agents[4]?.kill();
  const rest = agents.slice(0, 4);
  const deadMs = await waitFor(
    () => rest.every((a) => stateMap(a.members()).get('o5') === 'dead'),
    20_000,
  );
  t.ok(deadMs >= 0, `killed o5 declared dead by all 4 (${deadMs} ms)`);

  // Graceful leave of o4: seen as left, not dead.
  const o4 = agents[3] as OurAgent;
  o4.proc.stdin?.write('{"op":"leave"}\n');
  const leftMs = await waitFor(
    () => agents.slice(0, 3).every((a) => stateMap(a.members()).get('o4') === 'left'),
    10_000,
  );
  t.ok(leftMs >= 0, `o4's leave seen as left by all 3 (${leftMs} ms)`);
  t.ok(
    (await waitFor(() => o4.proc.exitCode !== null, 8000)) >= 0 && o4.proc.exitCode === 0,
    'o4 exited 0 after leaving',
  );
  t.match(o4.log(), /"ev":"left","complete":true/, 'the leave broadcast completed');
  t.match(o4.log(), /"ev":"exit","open":\[\],"streams":0/, 'no socket or timer left open at exit');
  t.ok(
    agents.slice(0, 3).every((a) => allIn(a.members(), ['o1', 'o2', 'o3'], 'alive')),
    'the rest are alive',
  );

  // A partition outliving the suspicion timeout on both sides heals through the agents'
  // reconnect loop (a join towards a dead member), not by gossip alone (docs/gossip.md).
  const h3 = hosts[2] as TestHost;
  net.cut(h3);
  const splitMs = await waitFor(
    () =>
      stateMap(agents[0]?.members() ?? []).get('o3') === 'dead' &&
      stateMap(agents[1]?.members() ?? []).get('o3') === 'dead',
    25_000,
  );
  // o3 alone gets no confirmations, so its own suspicions run to the 24 s maximum; o1 and o2
  // confirm each other's and are faster.
  t.ok(splitMs >= 0, `cut off: o1 and o2 declare o3 dead (${splitMs} ms)`);
  const o3View = [...stateMap(agents[2]?.members() ?? [])].map(([n, st]) => `${n}=${st}`);
  t.comment(`o3's view while cut off: ${o3View.join(' ')}`);
  net.heal(h3);
  const healMs = await waitFor(
    () => agents.slice(0, 3).every((a) => allIn(a.members(), ['o1', 'o2', 'o3'], 'alive')),
    15_000,
  );
  t.ok(healMs >= 0, `healed: all three alive everywhere again (${healMs} ms)`);
  t.comment(
    `ours only: join ${joinMs} ms, crash -> dead everywhere ${deadMs} ms, leave -> left ${leftMs} ms, partition heal ${healMs} ms`,
  );
});
