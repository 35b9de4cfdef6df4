// The soak's short profile (bench/soak.ts, docs/soak.md): one cycle of create → scale up/down →
// task kill → kill -9 and restart of a worker's meshd → drain/activate → update → rm on three
// namespaced hosts with real meshd, clients on every host requesting every node's published
// port and one inside a task requesting the VIP. Every request is counted: none may go
// unanswered outside a task kill's failure-detection window, no load balancer may keep a
// backend whose task is gone, every step converges.
import t from 'tap';
import { runSoak } from '../../bench/soak.js';

if (process.getuid?.() !== 0) {
  t.plan(0, 'netns tests need root (they create network namespaces)');
  process.exit(0);
}

t.test('soak: one cycle, every request answered outside failure detection', async (t) => {
  const r = await runSoak({ cycles: 1, hosts: 3, log: (l) => t.comment(l) });
  for (const l of r.pairs) t.comment(l);
  t.equal(r.cycles, 1, 'the cycle ran to its end');
  t.ok(r.requests > 500, `requests were sent and counted (${r.requests})`);
  t.equal(
    r.lost_outside_detection,
    0,
    `no request lost outside failure detection (${r.answered}/${r.requests} answered; by step ${JSON.stringify(r.lost_by_step)}; ${r.lost.slice(0, 5).join('; ')})`,
  );
  t.equal(r.stale_backends, 0, 'no load balancer kept a backend whose task is gone');
  t.same(r.unconverged, [], 'every step converged');
});
