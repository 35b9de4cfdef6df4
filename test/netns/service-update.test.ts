// `meshctl service update` and `service rollback` end to end, between real meshd on 3 namespaced
// hosts: a rolling update (parallelism 1, a health check) while clients on every host count every
// request to every host's published port — none may be lost — and at the end every replica serves
// the new spec (the answers echo its env); the rollback likewise back to the old spec. Then an
// update whose new tasks fail their health check: with --update-failure-action pause the update
// pauses, with rollback it rolls back, and the service keeps answering all along. Last, a rolling
// update without a health check whose new tasks are slow to listen loses no request either.
import t, { type Test } from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { until } from '../lib/meshd.js';
import {
  ECHO_SERVER,
  clientLoop,
  cluster,
  converged,
  tally,
  type Cluster,
  type LoopResult,
} from '../lib/published.js';

if (process.getuid?.() !== 0) {
  t.plan(0, 'netns tests need root (they create network namespaces)');
  process.exit(0);
}

let steps = 0;

interface Inspect {
  specVersion: number;
  updateStatus?: { state: string; message: string };
}

/**
 * Run `step` (a meshctl call, synchronous) while every host's client loop counts requests to every
 * host's port 8080; the loops are long enough to outlast it (checked). Fails on any lost request.
 */
async function counted(t: Test, c: Cluster, what: string, step: () => void): Promise<LoopResult[]> {
  const addrs = c.hosts.map((h) => h.addr);
  const stop = join(c.mh.dir, `stop-${++steps}`);
  // At most 900 rounds (one request per host, then 100 ms), 150 s; stopped 3 s after the step.
  const loops = c.hosts.map((h) => clientLoop(h, addrs, 900, 100, 150_000, stop));
  await new Promise((r) => setTimeout(r, 1_000));
  const t0 = Date.now();
  step();
  const doneAt = Date.now();
  t.comment(`${what}: ${doneAt - t0} ms`);
  await new Promise((r) => setTimeout(r, 3_000));
  writeFileSync(stop, '');
  const results = await Promise.all(loops);
  t.ok(
    results.every((r) => r.endedAt > doneAt),
    `${what}: the client loops ran until it was over (a shorter loop would show nothing)`,
  );
  const { sent, answered } = tally(t, results, c.hosts, t0, what);
  t.equal(answered, sent, `${what}: every request answered (${answered}/${sent})`);
  return results;
}

/** Answers' versions seen by the loops, e.g. {v1: 300, v2: 600}. */
const versions = (results: readonly LoopResult[]): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const r of results)
    for (const [a, n] of r.answers) out[a.split(' ')[0]!] = (out[a.split(' ')[0]!] ?? 0) + n;
  return out;
};

/** Every host's port reaches 3 distinct tasks, all answering `ver`. */
const allAt = (c: Cluster, ver: string) =>
  converged(
    c.hosts,
    (s) =>
      s.size === 3 &&
      [...s].every((a) => a.startsWith(`${ver} `)) &&
      new Set([...s].map((a) => a.split(' ')[1])).size === 3,
    `reaching 3 tasks all at ${ver}`,
    60_000,
  );

t.test(
  'rolling update and rollback lose no request; failing health pauses or rolls back',
  async (t) => {
    const c = await cluster(t, '2s');
    const { mh, hosts } = c;
    const h1 = hosts[0];
    const inspect = () => JSON.parse(mh.ok(h1, 'service', 'inspect', 'web', '--json')) as Inspect;
    // Healthy while it answers with a version (v1, v2); `bad` answers, but is unhealthy.
    const health = ['--health-cmd', 'curl -sf -m 1 http://127.0.0.1/ | grep -q "^v"', '--health-interval', '500ms', '--health-retries', '2']; // prettier-ignore
    const policy = ['--update-parallelism', '1', '--update-delay', '1s', '--update-monitor', '2s'];
    mh.ok(h1, 'service', 'create', '--name', 'web', '--replicas', '3', '--network', 'app', '-p', '8080:80', '-e', 'VER=v1', ...health, ...policy, '--', ...ECHO_SERVER); // prettier-ignore
    await until('3 running', () => c.running('web').length === 3, 60_000);
    await allAt(c, 'v1');

    // Rolling update to v2.
    const up = await counted(t, c, 'service update VER=v2', () =>
      mh.ok(h1, 'service', 'update', '-e', 'VER=v2', '--timeout', '120s', 'web'),
    );
    t.comment(`answers during the update: ${JSON.stringify(versions(up))}`);
    t.equal(inspect().updateStatus?.state, 'completed', 'the update completed');
    await allAt(c, 'v2');
    t.pass('every replica serves v2 from every host');

    // Rollback to v1.
    const back = await counted(t, c, 'service rollback', () =>
      mh.ok(h1, 'service', 'rollback', '--timeout', '120s', 'web'),
    );
    t.comment(`answers during the rollback: ${JSON.stringify(versions(back))}`);
    t.equal(inspect().updateStatus?.state, 'rollback_completed', 'the rollback completed');
    await allAt(c, 'v1');
    t.pass('every replica serves v1 again from every host');

    // An update whose new tasks fail their health check, failure action pause.
    const paused = await counted(t, c, 'failing update (pause)', () => {
      const r = mh.ctl(h1, 'service', 'update', '-e', 'VER=bad', '--update-failure-action', 'pause', '--timeout', '120s', 'web'); // prettier-ignore
      t.equal(
        r.status,
        1,
        `update reports the pause (exit 1): ${r.stderr.trim().split('\n').at(-1)}`,
      );
    });
    t.equal(inspect().updateStatus?.state, 'paused', 'the update paused');
    t.notOk(versions(paused)['bad'], 'no answer came from an unhealthy task');
    // Back to v1 by hand (rollback of the paused update).
    mh.ok(h1, 'service', 'rollback', '--timeout', '120s', 'web');
    await allAt(c, 'v1');

    // The same with failure action rollback: the managers roll back on their own.
    const rolled = await counted(t, c, 'failing update (rollback)', () => {
      mh.ctl(h1, 'service', 'update', '-e', 'VER=bad', '--update-failure-action', 'rollback', '--timeout', '120s', 'web'); // prettier-ignore
    });
    await until(
      'the failed update rolled back',
      () => inspect().updateStatus?.state === 'rollback_completed',
      60_000,
    );
    t.notOk(versions(rolled)['bad'], 'no answer came from an unhealthy task');
    await allAt(c, 'v1');
    t.pass('after the automatic rollback every replica serves v1');
  },
);

// Without a health check a new task enters the load balancers once it runs; the agent reports it
// running only when it listens on its published target port. Tasks that take 1.5 s to listen
// (a slow start, made certain here) would otherwise be balanced to and refuse connections: every
// node's clients lost requests at each new task of the update.
const SLOW_SERVER = ['node', '-e', `setTimeout(()=>${ECHO_SERVER[2]},1500)`];

t.test('a rolling update without a health check waits for new tasks to listen', async (t) => {
  const c = await cluster(t, '2s');
  const { mh, hosts } = c;
  const h1 = hosts[0];
  const policy = ['--update-parallelism', '1', '--update-delay', '1s'];
  mh.ok(h1, 'service', 'create', '--name', 'web', '--replicas', '3', '--network', 'app', '-p', '8080:80', '-e', 'VER=v1', ...policy, '--', ...SLOW_SERVER); // prettier-ignore
  await until('3 running', () => c.running('web').length === 3, 60_000);
  await allAt(c, 'v1');
  const up = await counted(t, c, 'service update VER=v2 (tasks listen 1.5 s after start)', () =>
    mh.ok(h1, 'service', 'update', '-e', 'VER=v2', '--timeout', '120s', 'web'),
  );
  t.comment(`answers during the update: ${JSON.stringify(versions(up))}`);
  await allAt(c, 'v2');
  t.pass('every replica serves v2 from every host');
});
