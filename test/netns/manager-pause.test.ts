// A manager that was itself paused (SIGSTOP here; a starved CPU or a suspended VM alike) must not
// mark every node down when it resumes: heartbeats that arrived meanwhile wait in its sockets.
// A paused worker is still marked down within the usual time, and ready again when it resumes.
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MeshHosts, until } from '../lib/meshd.js';
import { testnet, type TestHost } from '../lib/testnet.js';
import { requireRoot } from '../lib/require.js';

requireRoot('netns tests');

interface NodeRow {
  hostname: string;
  status: { state: string; message?: string };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('a paused manager does not mark nodes down; a paused worker is', async (t) => {
  const net = testnet(t, { hosts: 2 });
  const dir = mkdtempSync(join(tmpdir(), 'meshd-pause-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const mh = new MeshHosts(dir);
  t.teardown(() => {
    for (const p of mh.procs.values()) p.kill('SIGCONT');
    mh.killAll();
  });
  const [h1, h2] = net.hosts as [TestHost, TestHost];
  for (const h of net.hosts) mh.start(h);
  await until('API sockets', () => mh.ready(net.hosts), 60_000);
  mh.ok(h1, 'cluster', 'init');
  const token = mh.ok(h1, 'cluster', 'join-token', 'worker', '-q').trim();
  mh.ok(h2, 'cluster', 'join', '--token', token, h1.addr);
  const state = (name: string) =>
    (JSON.parse(mh.ok(h1, 'node', 'ls', '--json')) as NodeRow[]).find((n) => n.hostname === name)
      ?.status.state;
  await until('h2 ready', () => state('h2') === 'ready');
  // Heartbeats flowing for a while (the first ones after join are not what this is about).
  await sleep(3_000);

  const m = mh.procs.get(h1.index)!;
  m.kill('SIGSTOP');
  await sleep(8_000); // longer than the 5 s a silent node is given
  m.kill('SIGCONT');
  const seen = new Set<string>();
  const end = Date.now() + 5_000;
  while (Date.now() < end) {
    seen.add(state('h2') ?? 'missing');
    await sleep(200);
  }
  t.same([...seen], ['ready'], 'h2 stays ready after the manager paused 8 s');
  t.same(
    mh.warnings(h1).filter((l) => /marking it down/.test(l)),
    [],
    'the manager logged no node as down',
  );

  const w = mh.procs.get(h2.index)!;
  const pausedAt = Date.now();
  w.kill('SIGSTOP');
  await until('h2 down while paused', () => state('h2') === 'down', 15_000);
  t.pass(`a paused worker is marked down (${Date.now() - pausedAt} ms)`);
  w.kill('SIGCONT');
  await until('h2 ready again', () => state('h2') === 'ready', 15_000);
  t.pass('and ready again once it resumes');
});
