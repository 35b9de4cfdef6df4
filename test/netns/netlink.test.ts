// The netlink layer against the real kernel, in namespaces this test creates; every result is
// cross-checked with iproute2's JSON output (`ip -j`, `bridge -j`).
import t, { type Test } from 'tap';
import { existsSync } from 'node:fs';
import {
  NETLINK_GENERIC,
  NETLINK_ROUTE,
  NetlinkError,
  NetlinkSocket,
  addrAdd,
  addrDel,
  addrList,
  fdbAdd,
  fdbAddMany,
  fdbDel,
  fdbList,
  genlFamily,
  linkAdd,
  linkDel,
  linkFind,
  linkGet,
  linkList,
  linkSet,
  neighAdd,
  neighAddMany,
  neighDel,
  neighList,
  neighMsg,
  routeAdd,
  routeDel,
  routeList,
} from '../../src/netlink/index.js';
import { RTM_NEWNEIGH } from '../../src/netlink/rt.js';
import { testnet } from '../lib/testnet.js';
import { requireRoot } from '../lib/require.js';

requireRoot('netns tests');

const ipj = (host: { run(c: string, a?: readonly string[]): string }, ...args: string[]): any[] =>
  JSON.parse(
    host.run(args[0] === 'bridge' ? 'bridge' : 'ip', [
      '-j',
      ...args.slice(args[0] === 'bridge' ? 1 : 0),
    ]) || '[]',
  );

function expectErrno(t: Test, fn: () => unknown, name: string): void {
  try {
    fn();
    t.fail(`expected ${name}`);
  } catch (e) {
    t.equal((e as NetlinkError).errnoName, name, `fails with ${name}`);
  }
}

t.test('links: veth, bridge, vxlan with every option, as iproute2 sees them', async (t) => {
  const net = testnet(t, { hosts: 2 });
  const [a, b] = net.hosts as [
    NonNullable<(typeof net.hosts)[0]>,
    NonNullable<(typeof net.hosts)[0]>,
  ];
  const h = a.rt;

  linkAdd(h, { kind: 'bridge', name: 'br-test', up: true, mtu: 1450 });
  linkAdd(h, {
    kind: 'veth',
    name: 'vt0',
    peer: { name: 'vt0p', netns: b.ns },
    master: 'br-test',
    mac: '02:00:00:00:00:01',
    up: true,
  });
  linkAdd(h, {
    kind: 'vxlan',
    name: 'vx-001000',
    vni: 4096,
    port: 4790,
    local: a.addr,
    dev: 'eth0',
    learning: false,
    proxy: true,
    l2miss: true,
    l3miss: true,
    ttl: 64,
    udpCsum: true,
    mtu: 1450,
  });

  const vx = ipj(a, '-d', 'link', 'show', 'dev', 'vx-001000')[0];
  t.equal(vx.ifname, 'vx-001000');
  t.equal(vx.mtu, 1450);
  t.equal(vx.linkinfo.info_kind, 'vxlan');
  const d = vx.linkinfo.info_data;
  t.equal(d.id, 4096, 'vni');
  t.equal(d.port, 4790, 'dstport');
  t.equal(d.local, a.addr, 'local');
  t.equal(d.learning, false, 'nolearning');
  t.equal(d.proxy, true, 'proxy');
  t.equal(d.l2miss, true, 'l2miss');
  t.equal(d.l3miss, true, 'l3miss');
  t.equal(d.ttl, 64, 'ttl');
  t.equal(d.udp_csum, true, 'udpcsum');
  t.equal(d.link, 'eth0', 'underlay dev');

  const ours = linkGet(h, 'vx-001000');
  t.equal(ours.index, vx.ifindex);
  t.match(ours.vxlan, {
    vni: 4096,
    port: 4790,
    local: a.addr,
    learning: false,
    proxy: true,
    l2miss: true,
    l3miss: true,
    ttl: 64,
    udpCsum: true,
  });

  const vt = ipj(a, '-d', 'link', 'show', 'dev', 'vt0')[0];
  t.equal(vt.master, 'br-test', 'enslaved at creation');
  t.equal(vt.address, '02:00:00:00:00:01');
  t.ok(ipj(b, 'link', 'show', 'dev', 'vt0p')[0], 'peer created inside the other host');

  // Our list equals iproute2's, name for name and index for index.
  const theirs = ipj(a, 'link', 'show').map((l) => [l.ifindex, l.ifname, l.mtu]);
  const mine = linkList(h).map((l) => [l.index, l.name, l.mtu]);
  t.same(mine, theirs, 'linkList matches ip link show');

  // Changes: nomaster, mtu, down, rename, master again, move to another namespace.
  linkSet(h, 'vt0', { master: null, mtu: 1400 });
  let s = ipj(a, 'link', 'show', 'dev', 'vt0')[0];
  t.equal(s.master, undefined, 'nomaster');
  t.equal(s.mtu, 1400);
  linkSet(h, 'vt0', { up: false });
  linkSet(h, 'vt0', { name: 'vt0-renamed' });
  t.notOk(linkFind(h, 'vt0'), 'old name gone');
  linkSet(h, 'vt0-renamed', { master: 'br-test', up: true });
  s = ipj(a, 'link', 'show', 'dev', 'vt0-renamed')[0];
  t.equal(s.master, 'br-test');
  t.ok(s.flags.includes('UP'), 'up again');

  linkAdd(h, { kind: 'veth', name: 'mv0', peer: { name: 'mv1' } });
  linkSet(h, 'mv1', { netns: b.ns });
  t.notOk(linkFind(h, 'mv1'), 'moved out');
  t.ok(linkFind(b.rt, 'mv1'), 'moved in');

  linkDel(h, 'vx-001000');
  t.notOk(linkFind(h, 'vx-001000'));
  linkDel(h, 'vx-001000', { ifExists: true });
  t.pass('deleting a missing link with ifExists is quiet');
});

t.test('errors name the object and the errno', async (t) => {
  const net = testnet(t, { hosts: 1 });
  const h = net.hosts[0]!.rt;
  linkAdd(h, { kind: 'bridge', name: 'br0' });
  const e = t.throws(() => linkAdd(h, { kind: 'bridge', name: 'br0' })) as unknown as NetlinkError;
  t.ok(e instanceof NetlinkError);
  t.equal(e.errnoName, 'EEXIST');
  t.equal(e.code, 'ENETLINK');
  t.match(e.message, /^add bridge br0: file exists; a link named br0 exists/);
  const g = t.throws(() => linkGet(h, 'nope0')) as unknown as NetlinkError;
  t.equal(g.errnoName, 'ENODEV');
  t.match(g.message, /^get link nope0: no such device/);
  t.throws(() => linkAdd(h, { kind: 'bridge', name: 'a-name-far-too-long' }), { code: 'EUSAGE' });
  t.throws(() => linkAdd(h, { kind: 'vxlan', name: 'vx0', vni: 1 << 24 }), { code: 'EUSAGE' });
  // The kernel's own extended-ACK text reaches the user.
  const v = t.throws(() => linkSet(h, 'eth0', { mtu: 70000 })) as unknown as NetlinkError;
  t.equal(v.errnoName, 'EINVAL');
  t.match(v.kernelMessage, /mtu/i, 'extended ack text decoded');
  t.match(v.message, /^set link eth0: invalid argument \(kernel: .*mtu/i);
});

t.test('addresses v4 and v6', async (t) => {
  const net = testnet(t, { hosts: 1 });
  const host = net.hosts[0]!;
  const h = host.rt;
  linkAdd(h, { kind: 'bridge', name: 'br1', up: true });
  addrAdd(h, 'br1', '10.1.2.1/24');
  addrAdd(h, 'br1', '10.1.3.1/32', { label: 'br1:vip' });
  addrAdd(h, 'br1', 'fd00:1::1/64');
  const theirs = ipj(host, 'addr', 'show', 'dev', 'br1')[0]
    .addr_info.map((x: any) => `${x.local}/${x.prefixlen}`)
    .sort();
  const mine = addrList(h, { dev: 'br1' })
    .filter((x) => !x.address.startsWith('fe80'))
    .map((x) => x.cidr)
    .sort();
  t.same(
    mine,
    theirs.filter((x: string) => !x.startsWith('fe80')),
  );
  t.same(mine, ['10.1.2.1/24', '10.1.3.1/32', 'fd00:1::1/64']);
  t.equal(addrList(h, { dev: 'br1' }).find((x) => x.address === '10.1.3.1')?.label, 'br1:vip');
  expectErrno(t, () => addrAdd(h, 'br1', '10.1.2.1/24'), 'EEXIST');
  addrAdd(h, 'br1', '10.1.2.1/24', { replace: true });
  addrDel(h, 'br1', '10.1.2.1/24');
  addrDel(h, 'br1', '10.1.2.1/24', { ifExists: true });
  t.notOk(addrList(h, { dev: 'br1' }).some((x) => x.address === '10.1.2.1'));
});

t.test('routes in a table, with via and dev', async (t) => {
  const net = testnet(t, { hosts: 1 });
  const host = net.hosts[0]!;
  const h = host.rt;
  routeAdd(h, { dst: '10.20.0.0/16', via: '198.18.0.254', table: 100 });
  routeAdd(h, { dst: '10.21.0.0/16', dev: 'eth0', table: 100, metric: 10 });
  routeAdd(h, { dst: 'default', via: '198.18.0.254', table: 100 });
  routeAdd(h, { dst: '10.20.0.0/16', via: '198.18.0.253', table: 100 }, { replace: true });
  const theirs = ipj(host, 'route', 'show', 'table', '100');
  t.equal(theirs.length, 3);
  const mine = routeList(h, { table: 100 });
  t.same(
    mine.map((r) => `${r.dst} ${r.via ?? '-'} ${r.metric ?? 0}`).sort(),
    theirs
      .map((r) => `${r.dst === 'default' ? 'default' : r.dst} ${r.gateway ?? '-'} ${r.metric ?? 0}`)
      .sort(),
  );
  t.equal(
    mine.find((r) => r.dst === '10.20.0.0/16')?.via,
    '198.18.0.253',
    'replace changed the gateway',
  );
  expectErrno(
    t,
    () => routeAdd(h, { dst: '10.20.0.0/16', via: '198.18.0.1', table: 100 }),
    'EEXIST',
  );
  routeDel(h, { dst: '10.21.0.0/16', table: 100 });
  routeDel(h, { dst: '10.21.0.0/16', table: 100 }, { ifExists: true });
  t.equal(ipj(host, 'route', 'show', 'table', '100').length, 2);
});

t.test('neighbours and fdb entries on a vxlan device', async (t) => {
  const net = testnet(t, { hosts: 1 });
  const host = net.hosts[0]!;
  const h = host.rt;
  linkAdd(h, {
    kind: 'vxlan',
    name: 'vx-002000',
    vni: 8192,
    local: host.addr,
    dev: 'eth0',
    up: true,
  });
  neighAdd(h, { dev: 'vx-002000', ip: '10.3.0.5', mac: '02:42:0a:03:00:05' });
  neighAdd(h, { dev: 'vx-002000', ip: '10.3.0.5', mac: '02:42:0a:03:00:06' }); // replace: idempotent
  fdbAdd(h, { dev: 'vx-002000', mac: '02:42:0a:03:00:06', dst: '198.18.0.9' });
  fdbAdd(h, { dev: 'vx-002000', mac: '00:00:00:00:00:00', dst: '198.18.0.7', append: true });
  fdbAdd(h, { dev: 'vx-002000', mac: '00:00:00:00:00:00', dst: '198.18.0.8', append: true });

  const n = ipj(host, 'neigh', 'show', 'dev', 'vx-002000');
  t.same(
    n.map((x) => [x.dst, x.lladdr, x.state]),
    [['10.3.0.5', '02:42:0a:03:00:06', ['PERMANENT']]],
  );
  t.same(
    neighList(h, { dev: 'vx-002000' }).map((x) => [x.ip, x.mac]),
    [['10.3.0.5', '02:42:0a:03:00:06']],
  );

  const theirs = ipj(host, 'bridge', 'fdb', 'show', 'dev', 'vx-002000')
    .filter((x) => x.dst)
    .map((x) => `${x.mac} ${x.dst}`)
    .sort();
  const mine = fdbList(h, { dev: 'vx-002000' })
    .filter((x) => x.ip)
    .map((x) => `${x.mac} ${x.ip}`)
    .sort();
  t.same(mine, theirs);
  t.same(mine, [
    '00:00:00:00:00:00 198.18.0.7',
    '00:00:00:00:00:00 198.18.0.8',
    '02:42:0a:03:00:06 198.18.0.9',
  ]);

  fdbDel(h, { dev: 'vx-002000', mac: '02:42:0a:03:00:06', dst: '198.18.0.9' });
  fdbDel(h, { dev: 'vx-002000', mac: '02:42:0a:03:00:06', dst: '198.18.0.9' }, { ifExists: true });
  neighDel(h, { dev: 'vx-002000', ip: '10.3.0.5' });
  neighDel(h, { dev: 'vx-002000', ip: '10.3.0.5' }, { ifExists: true });
  t.equal(ipj(host, 'neigh', 'show', 'dev', 'vx-002000').length, 0);
  t.equal(
    ipj(host, 'bridge', 'fdb', 'show', 'dev', 'vx-002000').filter(
      (x) => x.mac === '02:42:0a:03:00:06',
    ).length,
    0,
  );
});

t.test('batches: thousands of requests, per-item errors, multi-part dumps', async (t) => {
  const net = testnet(t, { hosts: 1 });
  const host = net.hosts[0]!;
  const h = host.rt;
  linkAdd(h, {
    kind: 'vxlan',
    name: 'vx-003000',
    vni: 12288,
    local: host.addr,
    dev: 'eth0',
    up: true,
  });
  const N = 3000;
  const entries = Array.from({ length: N }, (_, i) => ({
    ip: `10.4.${i >> 8}.${i & 255}`,
    mac: `02:42:0a:04:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`,
  }));
  neighAddMany(h, 'vx-003000', entries);
  fdbAddMany(
    h,
    'vx-003000',
    entries.map((e, i) => ({ mac: e.mac, dst: `198.18.1.${i % 250}` })),
  );
  // Dumps of this size span many datagrams (NLM_F_MULTI).
  t.equal(neighList(h, { dev: 'vx-003000' }).length, N, 'our neigh dump');
  t.equal(ipj(host, 'neigh', 'show', 'dev', 'vx-003000').length, N, 'ip neigh agrees');
  t.equal(fdbList(h, { dev: 'vx-003000' }).filter((x) => x.ip).length, N, 'our fdb dump');

  // One bad item in the middle fails alone; the kernel carries on with the rest.
  const idx = linkGet(h, 'vx-003000').index;
  const items = Array.from({ length: 500 }, (_, i) => ({
    msg: neighMsg(RTM_NEWNEIGH, i === 250 ? 99999 : idx, {
      ip: `10.5.${i >> 8}.${i & 255}`,
      mac: '02:00:00:00:00:01',
    }),
    desc: { op: 'add', object: `neigh #${i}` },
  }));
  const res = h.batch(items);
  t.equal(res.filter((r) => r !== null).length, 1, 'exactly one failure');
  t.equal(res[250]?.errnoName, 'ENODEV', 'at the bad index');
  t.match(res[250]?.message ?? '', /^add neigh #250: no such device/);
  t.equal(neighList(h, { dev: 'vx-003000' }).length, N + 499);
});

t.test('a receive queue overrun is reported, not silently lost', async (t) => {
  const net = testnet(t, { hosts: 1 });
  const host = net.hosts[0]!;
  linkAdd(host.rt, { kind: 'vxlan', name: 'vx-004000', vni: 16384, dev: 'eth0', up: true });
  const idx = linkGet(host.rt, 'vx-004000').index;
  // A tiny receive buffer cannot hold the ACKs of a 64 KiB datagram of requests.
  const small = NetlinkSocket.open(NETLINK_ROUTE, { netns: host.ns, rcvbuf: 1024 });
  t.teardown(() => small.close());
  const items = Array.from({ length: 1500 }, (_, i) => ({
    msg: neighMsg(RTM_NEWNEIGH, idx, { ip: `10.6.${i >> 8}.${i & 255}`, mac: '02:00:00:00:00:02' }),
    desc: { op: 'add', object: 'neigh batch' },
  }));
  const e = t.throws(() => small.batch(items)) as unknown as NetlinkError;
  t.equal(e.errnoName, 'ENOBUFS');
  t.match(e.message, /answers were lost; retry with a smaller batch/);
  // The default socket handles the same batch.
  t.same(
    host.rt.batch(items).filter((r) => r !== null),
    [],
  );
});

t.test('generic netlink family lookup', async (t) => {
  const g = NetlinkSocket.open(NETLINK_GENERIC);
  t.teardown(() => g.close());
  const ctrl = genlFamily(g, 'nlctrl');
  t.equal(ctrl.id, 0x10);
  t.ok(
    ctrl.ops.some((o) => o.cmd === 3),
    'GETFAMILY listed',
  );
  if (existsSync('/proc/net/ip_vs')) {
    t.equal(genlFamily(g, 'IPVS').version, 1);
  } else {
    // This host kernel has no IPVS: the lookup is our runtime probe and must say so clearly.
    const e = t.throws(() =>
      genlFamily(g, 'IPVS', 'load ip_vs or use --lb-backend nftables'),
    ) as unknown as NetlinkError;
    t.equal(e.errnoName, 'ENOENT');
    t.match(
      e.message,
      /^resolve generic netlink family IPVS: no such file or directory; load ip_vs/,
    );
  }
});

t.test('a socket stays in the namespace it was created in', async (t) => {
  const net = testnet(t, { hosts: 1 });
  const inside = NetlinkSocket.open(NETLINK_ROUTE, { netns: net.hosts[0]!.ns });
  const outside = NetlinkSocket.open(NETLINK_ROUTE);
  t.teardown(() => {
    inside.close();
    outside.close();
  });
  t.same(
    linkList(inside)
      .map((l) => l.name)
      .sort(),
    ['eth0', 'lo'],
  );
  // A link made through the inside socket exists inside the host and nowhere else.
  const name = `mtp${process.pid % 100000}`;
  linkAdd(inside, { kind: 'bridge', name });
  t.ok(linkFind(inside, name), 'visible inside');
  t.notOk(linkFind(outside, name), 'not in our own namespace');
  t.equal(net.hosts[0]!.exec('ip', ['link', 'show', name]).status, 0, 'ip sees it inside the host');
});
