// The load balancer's self-check planner (src/lb/reach.ts): a backend on another node whose
// overlay ARP/FDB entries are missing is unreachable (counted once, with its start time) until
// they are back; local backends are always reachable.
import t from 'tap';
import { planReach } from '../../src/lb/reach.js';

const b = [
  { ip: '10.0.0.3', node: 'n1' },
  { ip: '10.0.0.4', node: 'n2' },
  { ip: '10.0.0.5', node: 'n3' },
];

t.test('a remote backend without overlay entries is unreachable, once', async (t) => {
  const p = planReach(b, 'n1', new Set(['10.0.0.5']), new Map(), 1000);
  t.same([...p.unreachable], [['10.0.0.4', 1000]], 'n1 is local; n3 has its entries');
  t.same(p.lost, ['10.0.0.4']);
  const q = planReach(b, 'n1', new Set(['10.0.0.5']), p.unreachable, 3000);
  t.same([...q.unreachable], [['10.0.0.4', 1000]], 'keeps its start time');
  t.same(q.lost, [], 'not counted again');
});

t.test('entries back: reachable again, counted once', async (t) => {
  const p = planReach(b, 'n1', new Set(['10.0.0.4', '10.0.0.5']), new Map([['10.0.0.4', 5]]), 9);
  t.equal(p.unreachable.size, 0);
  t.same(p.back, ['10.0.0.4']);
});

t.test('a backend that is gone is forgotten; one without a node is taken as local', async (t) => {
  const p = planReach([{ ip: '10.0.0.9' }], 'n1', new Set(), new Map([['10.0.0.4', 5]]), 9);
  t.equal(p.unreachable.size, 0);
  t.same(p.back, [], 'not a backend any more: nothing to report');
});
