// The overlay's pure planner and naming rules (no kernel, no root): what setPeers and
// reconcile will ask the kernel to add and remove.
import t from 'tap';
import {
  desiredPeers,
  macFromIp,
  natRuleset,
  natRulesetPresent,
  overlayMtu,
  planPeers,
  planSize,
  vethName,
  type KernelPeers,
  type Peer,
} from '../../src/overlay/plan.js';

const OWN = '198.18.0.1';
const p = (ip: string, vtep: string, mac = macFromIp(ip)): Peer => ({ ip, mac, vtep });
const empty: KernelPeers = { neigh: [], fdb: [], bridge: [] };

t.test('names and numbers', async (t) => {
  t.equal(macFromIp('10.0.1.5/24'), '02:42:0a:00:01:05');
  t.equal(macFromIp('10.255.254.253'), '02:42:0a:ff:fe:fd');
  t.match(vethName('4096|mesh-t-abc|eth0'), /^mesh-[0-9a-f]{8}$/);
  t.equal(vethName('a'), vethName('a'), 'deterministic');
  t.not(vethName('4096|x|eth0'), vethName('4096|x|eth1'));
  t.ok(vethName('4096|mesh-t-abc|eth0').length <= 15, 'fits IFNAMSIZ');
  t.equal(overlayMtu(1500, false), 1450);
  t.equal(overlayMtu(1500, true), 1424);
  t.equal(overlayMtu(9000, false), 8950);
  t.equal(overlayMtu(9000, true, 1400), 1400, 'explicit mtu wins');
});

t.test('a fresh network gets three entries per remote peer, none for local ones', async (t) => {
  const plan = planPeers(
    [p('10.0.1.2/24', OWN), p('10.0.1.3/24', '198.18.0.2'), p('10.0.1.4/24', '198.18.0.3')],
    OWN,
    empty,
  );
  t.same(plan.neighAdd, [
    { ip: '10.0.1.3', mac: macFromIp('10.0.1.3') },
    { ip: '10.0.1.4', mac: macFromIp('10.0.1.4') },
  ]);
  t.same(plan.fdbAdd, [
    { mac: macFromIp('10.0.1.3'), dst: '198.18.0.2' },
    { mac: macFromIp('10.0.1.4'), dst: '198.18.0.3' },
  ]);
  t.same(plan.bridgeAdd, [macFromIp('10.0.1.3'), macFromIp('10.0.1.4')]);
  t.equal(planSize(plan), 6);
  t.same(plan.conflicts, []);
});

t.test('converged state plans nothing; drift and stale entries are fixed', async (t) => {
  const peers = [p('10.0.1.3', '198.18.0.2'), p('10.0.1.4', '198.18.0.3')];
  const kernel: KernelPeers = {
    neigh: [
      { ip: '10.0.1.3', mac: macFromIp('10.0.1.3').toUpperCase() },
      { ip: '10.0.1.4', mac: macFromIp('10.0.1.4') },
    ],
    fdb: [
      { mac: macFromIp('10.0.1.3'), dst: '198.18.0.2' },
      { mac: macFromIp('10.0.1.4'), dst: '198.18.0.3' },
    ],
    bridge: [macFromIp('10.0.1.3'), macFromIp('10.0.1.4')],
  };
  t.equal(planSize(planPeers(peers, OWN, kernel)), 0, 'nothing to do (MAC case ignored)');

  const drift: KernelPeers = {
    neigh: [
      { ip: '10.0.1.3', mac: macFromIp('10.0.1.3') },
      { ip: '10.0.1.9', mac: macFromIp('10.0.1.9') },
    ],
    fdb: [
      { mac: macFromIp('10.0.1.3'), dst: '198.18.0.7' }, // moved task: wrong VTEP
      { mac: macFromIp('10.0.1.4'), dst: '198.18.0.3' },
      { mac: macFromIp('10.0.1.4'), dst: '198.18.0.5' }, // an appended extra destination
      { mac: '00:00:00:00:00:00', dst: '198.18.0.2' }, // a flood entry: never ours
    ],
    bridge: [macFromIp('10.0.1.4'), macFromIp('10.0.1.9')],
  };
  const plan = planPeers(peers, OWN, drift);
  t.same(plan.neighAdd, [{ ip: '10.0.1.4', mac: macFromIp('10.0.1.4') }]);
  t.same(plan.neighDel, ['10.0.1.9']);
  t.same(plan.fdbAdd, [
    { mac: macFromIp('10.0.1.3'), dst: '198.18.0.2' },
    { mac: macFromIp('10.0.1.4'), dst: '198.18.0.3' },
  ]);
  t.same(plan.fdbDel, [
    { mac: macFromIp('10.0.1.3'), dst: '198.18.0.7' },
    { mac: macFromIp('10.0.1.4'), dst: '198.18.0.5' },
    { mac: '00:00:00:00:00:00', dst: '198.18.0.2' },
  ]);
  t.same(plan.bridgeAdd, [macFromIp('10.0.1.3')]);
  t.same(plan.bridgeDel, [macFromIp('10.0.1.9')]);
});

t.test(
  'duplicates collapse (reference counting); conflicts resolve to the later entry',
  async (t) => {
    const a = p('10.0.1.3/24', '198.18.0.2');
    const { keep, conflicts } = desiredPeers([a, { ...a }, { ...a, ip: '10.0.1.3' }], OWN);
    t.same(
      keep,
      [{ ip: '10.0.1.3', mac: a.mac, vtep: '198.18.0.2' }],
      'one entry for three mentions',
    );
    t.same(conflicts, []);

    const moved = desiredPeers([a, { ...a, vtep: '198.18.0.3' }], OWN);
    t.same(
      moved.keep.map((x) => x.vtep),
      ['198.18.0.3'],
      'later claim of the same IP wins',
    );
    t.equal(moved.conflicts.length, 1);

    const sameMac = desiredPeers(
      [
        p('10.0.1.3', '198.18.0.2', '02:42:00:00:00:01'),
        p('10.0.1.4', '198.18.0.3', '02:42:00:00:00:01'),
      ],
      OWN,
    );
    t.same(
      sameMac.keep.map((x) => x.ip),
      ['10.0.1.4'],
      'one MAC cannot sit behind two VTEPs',
    );
    t.equal(sameMac.conflicts.length, 1);

    // Removing one of two mentions of a shared entry keeps it.
    const k: KernelPeers = {
      neigh: [{ ip: '10.0.1.3', mac: a.mac }],
      fdb: [{ mac: a.mac, dst: '198.18.0.2' }],
      bridge: [a.mac],
    };
    t.equal(planSize(planPeers([a], OWN, k)), 0);
    t.equal(planSize(planPeers([], OWN, k)), 3, 'the last reference gone: all three entries go');
  },
);

t.test('nat ruleset is one idempotent transaction on our table only', async (t) => {
  const rs = natRuleset('10.255.0.0/16', 'eth0');
  t.match(rs, /^table ip mesh-nat \{\}\ndelete table ip mesh-nat\n/);
  t.match(rs, /ip saddr 10\.255\.0\.0\/16 oifname "eth0" masquerade/);
  t.notMatch(rs, /flush ruleset/);
  t.ok(natRulesetPresent(rs, '10.255.0.0/16', 'eth0'));
  t.notOk(natRulesetPresent(rs, '10.255.0.0/16', 'eth1'));
});
