// The peer-hold planner (src/agent/peer-hold.ts): a node whose endpoints all vanish from a
// network's peer table (its meshd found dead, or our own tables empty after a restart) keeps them
// programmed until the tables list it again or the hold expires; a single endpoint removed by its
// node goes at once.
import t from 'tap';
import { planPeerHold, type Held } from '../../src/agent/peer-hold.js';

const a1 = { ip: '10.0.1.5', mac: '02:00:0a:00:01:05', vtep: '198.18.0.1' };
const a2 = { ip: '10.0.1.6', mac: '02:00:0a:00:01:06', vtep: '198.18.0.1' };
const b1 = { ip: '10.0.1.7', mac: '02:00:0a:00:01:07', vtep: '198.18.0.3' };
const none = new Map<string, Held>();

t.test('one endpoint removed by its node goes at once', async (t) => {
  const p = planPeerHold([a1, b1], { programmed: [a1, a2, b1], held: none }, 1000, 60_000);
  t.same(p.peers, [a1, b1]);
  t.same(p.newlyHeld, []);
  t.equal(p.nextExpiry, undefined);
});

t.test('a node vanishing as a whole is held, then released when listed again', async (t) => {
  const p = planPeerHold([b1], { programmed: [a1, a2, b1], held: none }, 1000, 60_000);
  t.same(p.peers, [b1, a1, a2], 'node .1 endpoints stay programmed');
  t.same(p.newlyHeld, ['198.18.0.1']);
  t.equal(p.nextExpiry, 61_000);
  // Still absent 30 s later: held, with its original start.
  const q = planPeerHold([b1], { programmed: p.peers, held: p.held }, 31_000, 60_000);
  t.same(q.peers, [b1, a1, a2]);
  t.same(q.newlyHeld, [], 'not held anew');
  t.equal(q.nextExpiry, 61_000);
  // Back with one endpoint only (a2 removed meanwhile): the tables rule for that node.
  const r = planPeerHold([a1, b1], { programmed: q.peers, held: q.held }, 32_000, 60_000);
  t.same(r.peers, [a1, b1]);
  t.same(r.released, ['198.18.0.1']);
  t.equal(r.held.size, 0);
});

t.test('a node whose last endpoints were deleted (its tasks removed) is not held', async (t) => {
  // overlay-e2e: the only task of h3 removed must leave every peer at once, not after holdMs.
  const p = planPeerHold(
    [b1],
    { programmed: [a1, a2, b1], held: none },
    1000,
    60_000,
    new Set(['198.18.0.1']),
  );
  t.same(p.peers, [b1]);
  t.same(p.newlyHeld, []);
  t.equal(p.held.size, 0);
});

t.test('a hold expires after holdMs', async (t) => {
  const p = planPeerHold([], { programmed: [a1], held: none }, 0, 60_000);
  t.same(p.peers, [a1]);
  const q = planPeerHold([], { programmed: p.peers, held: p.held }, 60_000, 60_000);
  t.same(q.peers, []);
  t.same(q.expired, ['198.18.0.1']);
  t.equal(q.nextExpiry, undefined);
});

t.test('after a restart (empty tables) everything the kernel held stays', async (t) => {
  const p = planPeerHold([], { programmed: [a1, a2, b1], held: none }, 5, 60_000);
  t.same(p.peers, [a1, a2, b1]);
  t.same(p.newlyHeld.sort(), ['198.18.0.1', '198.18.0.3']);
});

t.test('an address or MAC the tables give to another endpoint is theirs', async (t) => {
  const moved = { ip: '10.0.1.5/24', mac: '02:00:0a:00:01:99', vtep: '198.18.0.3' };
  const p = planPeerHold([moved], { programmed: [a1, a2], held: none }, 0, 60_000);
  t.same(p.peers, [moved, a2], 'held a1 dropped: 10.0.1.5 is now the tables');
  t.same(p.newlyHeld, ['198.18.0.1'], 'node .1 is held (a2 stays)');
});
