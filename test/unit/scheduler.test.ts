// The spread scheduler: only ready + active nodes meeting the constraints; fewest tasks of the
// service, then fewest tasks; nodes with recent failures of the service pushed back; host-port
// conflicts filtered; constraint syntax; deterministic ties.
import t, { type Test } from 'tap';

function throwsWith(t: Test, f: () => unknown, ok: (e: unknown) => boolean, msg?: string): void {
  try {
    f();
    t.fail(`no error${msg ? ` (${msg})` : ''}`);
  } catch (e) {
    t.ok(ok(e), `${msg ?? 'error'}: ${(e as Error).message}`);
  }
}

import type { Node } from '../../src/api/objects.js';
import {
  FAILURE_WINDOW_MS,
  MAX_RECENT_FAILURES,
  addFailure,
  addLoad,
  matchesConstraints,
  parseConstraint,
  pickNode,
  type NodeLoad,
} from '../../src/manager/orchestration/scheduler.js';
import { MeshError } from '../../src/util/errors.js';

const node = (id: string, over: Partial<Node> = {}): Node => ({
  id,
  hostname: `host-${id}`,
  role: 'worker',
  addr: '198.18.0.1',
  availability: 'active',
  labels: {},
  status: { state: 'ready' },
  certificate: { notAfter: 1, serial: '01' },
  version: 1,
  createdIndex: 1,
  ...over,
});
const req = (over = {}) => ({ serviceId: 's', constraints: [], hostPorts: [], ...over });
const pick = (nodes: Node[], load: Map<string, NodeLoad>, r = req(), now = 0) => {
  const got = pickNode(nodes, load, r, now);
  return 'node' in got ? got.node.id : got.error;
};

t.test('spread by service, then by total', async (t) => {
  const nodes = [node('a'), node('b'), node('c')];
  const load = new Map<string, NodeLoad>();
  addLoad(load, 'a', 'other', []);
  addLoad(load, 'a', 'other', []);
  addLoad(load, 'b', 'other', []);
  const got = Array.from({ length: 6 }, () => pick(nodes, load));
  t.same(got, ['c', 'b', 'a', 'c', 'b', 'a'], 'fewest of the service, then fewest overall');
});

t.test('only ready, active nodes; constraints', async (t) => {
  const nodes = [
    node('a', { status: { state: 'down' } }),
    node('b', { availability: 'drain' }),
    node('c', { availability: 'pause' }),
    node('d', { status: { state: 'unknown' } }),
    node('e', { labels: { zone: 'x' }, role: 'manager' }),
    node('f', { labels: { zone: 'y' } }),
  ];
  const load = new Map<string, NodeLoad>();
  t.equal(pick(nodes, load, req({ constraints: ['node.labels.zone==x'] })), 'e');
  t.equal(pick(nodes, load, req({ constraints: ['node.labels.zone!=x'] })), 'f');
  t.equal(pick(nodes, load, req({ constraints: ['node.role==manager'] })), 'e');
  t.equal(pick(nodes, load, req({ constraints: ['node.hostname==host-f'] })), 'f');
  t.equal(pick(nodes, load, req({ constraints: ['node.id==f', 'node.role==worker'] })), 'f');
  t.match(
    pick(nodes, load, req({ constraints: ['node.labels.zone==z'] })),
    /no ready, active node satisfies the constraints node.labels.zone==z/,
  );
  t.match(pick(nodes.slice(0, 4), load), /^no ready, active node$/);
  t.ok(matchesConstraints(node('x', { labels: { k: 'a b' } }), ['node.labels.k == a b']));
});

t.test('bad constraints are usage errors', async (t) => {
  for (const bad of ['zone==x', 'node.labels.k=x', 'node.foo==x', 'node.role==', '']) {
    throwsWith(
      t,
      () => parseConstraint(bad),
      (e: unknown) => e instanceof MeshError && e.code === 'EUSAGE',
      bad,
    );
  }
});

t.test('host ports filter nodes; recent failures push back', async (t) => {
  const nodes = [node('a'), node('b')];
  const load = new Map<string, NodeLoad>();
  const hp = [{ published: 8080, target: 80, protocol: 'tcp' as const, mode: 'host' as const }];
  t.equal(pick(nodes, load, req({ hostPorts: hp })), 'a');
  t.equal(pick(nodes, load, req({ hostPorts: hp })), 'b');
  t.match(
    pick(nodes, load, req({ hostPorts: hp })),
    /host port 8080\/tcp is taken on all 2 eligible nodes/,
  );
  t.equal(
    pick(nodes, load, req({ hostPorts: [{ ...hp[0]!, protocol: 'udp' as const }] })),
    'a',
    'udp is another port',
  );

  const l2 = new Map<string, NodeLoad>();
  addFailure(l2, 'a', 's', 1000);
  t.equal(pick(nodes, l2, req(), 2000), 'a', 'one failure does not push a node back');
  addFailure(l2, 'a', 's', 1100);
  addFailure(l2, 'a', 's', 1200);
  t.equal(pick(nodes, l2, req(), 2000), 'b', `${MAX_RECENT_FAILURES} failures do`);
  t.equal(pick(nodes, l2, req(), 2000), 'b', 'even with more tasks of the service there');
  t.equal(pick(nodes, l2, req({ serviceId: 'other' }), 2000), 'a', 'other services unaffected');
  t.equal(pick(nodes, l2, req(), 1000 + FAILURE_WINDOW_MS), 'a', 'old failures forgotten');
});
