// Network namespaces and the test-host helper, against the real kernel.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readlinkSync } from 'node:fs';
import {
  NETLINK_ROUTE,
  NetlinkSocket,
  linkList,
  netnsCreate,
  netnsDelete,
  netnsList,
  netnsOpen,
  spawnInNetns,
  withNetns,
} from '../../src/netlink/index.js';
import { sweepStale, testnet } from '../lib/testnet.js';
import { requireRoot } from '../lib/require.js';

requireRoot('netns tests');

t.test('create, list, open, delete like ip netns', async (t) => {
  const name = `mt-${process.pid}-0-ns`;
  const ns = netnsCreate(name);
  t.teardown(() => netnsDelete(name, { ifExists: true }));
  t.ok(netnsList().includes(name), 'we list it');
  t.ok(
    execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).includes(name),
    'ip netns lists it',
  );
  t.throws(() => netnsCreate(name), { code: 'ENETNS', message: /file exists/ });
  const again = netnsOpen(name);
  const h = NetlinkSocket.open(NETLINK_ROUTE, { netns: again });
  t.same(
    linkList(h).map((l) => l.name),
    ['lo'],
    'a fresh namespace has only lo',
  );
  t.equal(linkList(h)[0]?.up, false, 'and lo is down, as with ip netns add');
  h.close();
  again.close();
  ns.close();
  netnsDelete(name);
  t.notOk(existsSync(`/run/netns/${name}`));
  t.throws(() => netnsOpen(name), { code: 'ENETNS', message: /no such namespace/ });
  t.throws(() => netnsOpen('../etc'), { code: 'EUSAGE' });
});

t.test('withNetns runs synchronous work only, and always returns home', async (t) => {
  const net = testnet(t, { hosts: 1 });
  const ns = net.hosts[0]!.ns;
  // The main thread's own namespace, read in-process (a child would only show its own).
  const before = readlinkSync('/proc/thread-self/ns/net');
  t.throws(() => withNetns(ns, () => Promise.resolve(1)), /only synchronous work/);
  t.throws(() =>
    withNetns(ns, () => {
      throw new Error('boom');
    }),
  );
  const inside = withNetns(ns, () => NetlinkSocket.open(NETLINK_ROUTE));
  t.same(
    linkList(inside)
      .map((l) => l.name)
      .sort(),
    ['eth0', 'lo'],
  );
  inside.close();
  t.not(readlinkSync(`/proc/thread-self/fd/${ns.fd}`), before, 'the host is another namespace');
  t.equal(readlinkSync('/proc/thread-self/ns/net'), before, 'main thread back home');
});

t.test('spawnInNetns starts the child inside the namespace', async (t) => {
  const net = testnet(t, { hosts: 1 });
  const child = spawnInNetns(net.hosts[0]!.ns, 'ip', ['-j', 'link', 'show'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  await once(child, 'exit');
  t.same((JSON.parse(out) as Array<{ ifname: string }>).map((l) => l.ifname).sort(), [
    'eth0',
    'lo',
  ]);
});

t.test('open a namespace by pid and by path', async (t) => {
  const net = testnet(t, { hosts: 1 });
  const host = net.hosts[0]!;
  const sleeper = host.spawn('sleep', ['30'], { stdio: 'ignore' });
  // Wait (bounded) until `ip netns exec` has switched the child into the host's namespace.
  const want = readlinkSync(`/proc/thread-self/fd/${host.ns.fd}`);
  for (let i = 0; i < 100 && readlinkSync(`/proc/${sleeper.pid}/ns/net`) !== want; i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  for (const ref of [{ pid: sleeper.pid! }, { path: `/run/netns/${host.name}` }]) {
    const ns = netnsOpen(ref);
    const h = NetlinkSocket.open(NETLINK_ROUTE, { netns: ns });
    t.same(
      linkList(h)
        .map((l) => l.name)
        .sort(),
      ['eth0', 'lo'],
      `${JSON.stringify(ref)} is the host's namespace`,
    );
    h.close();
    ns.close();
  }
  t.throws(() => netnsOpen({ pid: 0x7ffffff0 }), { code: 'ENETNS' });
});

t.test('test hosts reach each other on the underlay, and nothing else', async (t) => {
  const net = testnet(t, { hosts: 3 });
  const [h1, , h3] = net.hosts;
  t.equal(h1!.exec('ping', ['-c', '1', '-W', '2', h3!.addr]).status, 0, 'h1 pings h3');
  t.same(h1!.run('ip', ['-j', 'route']).includes('default'), false, 'no default route: no way out');
  net.cut(h3!);
  t.not(h1!.exec('ping', ['-c', '1', '-W', '1', h3!.addr]).status, 0, 'cut host unreachable');
  net.heal(h3!);
  t.equal(h1!.exec('ping', ['-c', '1', '-W', '2', h3!.addr]).status, 0, 'healed');
  const h4 = net.addHost();
  t.equal(h4.exec('ping', ['-c', '1', '-W', '2', h1!.addr]).status, 0, 'an added host joins');
});

t.test(
  'destroy kills processes inside and removes every namespace; stale nets are swept',
  async (t) => {
    const net = testnet(t, { hosts: 2 });
    const sleeper = net.hosts[0]!.spawn('sleep', ['60'], { stdio: 'ignore' });
    const prefix = net.prefix;
    net.destroy();
    await once(sleeper, 'exit');
    t.same(
      netnsList().filter((n) => n.startsWith(`${prefix}-`)),
      [],
      'all gone',
    );

    // A namespace named for a test process that no longer exists is swept by the next run.
    let dead = 4_000_000;
    while (existsSync(`/proc/${dead}`)) dead++;
    const stale = `mt-${dead}-1-h1`;
    netnsCreate(stale).close();
    t.ok(sweepStale() >= 1);
    t.notOk(netnsList().includes(stale), 'stale namespace swept');
  },
);
