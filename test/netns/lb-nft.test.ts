// The nftables load-balancer backend against the real kernel: a client, a load-balancer host
// and three backends, each a namespace of the test's own net. Backends run a tiny TCP server
// that answers every line with its name, so the client sees which backend took a connection.
// Traffic claims are checked with real connections, kernel claims with `nft` and conntrack.
import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { NFT_TABLE, NftBackend, normalizeServices } from '../../src/lb/nft.js';
import type { LbService } from '../../src/lb/types.js';
import { testnet, type TestHost } from '../lib/testnet.js';
import { requireRoot, requireCommand } from '../lib/require.js';

requireRoot('netns tests');
requireCommand('nft', ['--version'], 'nftables (Debian package nftables)');

const SERVER = `
const name = process.argv[1];
require('node:net').createServer((s) => {
  s.on('error', () => {});
  let buf = '';
  s.on('data', (d) => {
    buf += d;
    while (buf.includes('\\n')) { buf = buf.slice(buf.indexOf('\\n') + 1); s.write(name + '\\n'); }
  });
}).listen(8080, () => {
  const u = require('node:dgram').createSocket('udp4');
  u.on('message', (m, r) => u.send(name + '\\n', r.port, r.address));
  u.bind(8080, () => console.log('ready'));
});
`;

// N sequential connections, one line each; prints {"name": count, "fail": count}.
const CLIENT = `
const [ip, port, n] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const net = require('node:net');
const counts = {};
function one() {
  return new Promise((resolve) => {
    const s = net.connect(port, ip);
    const done = (k) => { clearTimeout(tm); s.destroy(); counts[k] = (counts[k] || 0) + 1; resolve(); };
    const tm = setTimeout(() => done('fail'), 2000);
    s.on('error', () => done('fail'));
    let buf = '';
    s.on('data', (d) => { buf += d; if (buf.includes('\\n')) done(buf.trim()); });
    s.write('x\\n');
  });
}
(async () => { for (let i = 0; i < n; i++) await one(); console.log(JSON.stringify(counts)); })();
`;

// N datagrams, each from a new socket (a new conntrack entry); prints counts like CLIENT.
const UDP_CLIENT = `
const [ip, port, n] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const dgram = require('node:dgram');
const counts = {};
function one() {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    const done = (k) => { clearTimeout(tm); s.close(); counts[k] = (counts[k] || 0) + 1; resolve(); };
    const tm = setTimeout(() => done('fail'), 2000);
    s.on('message', (m) => done(String(m).trim()));
    s.send('x\\n', port, ip);
  });
}
(async () => { for (let i = 0; i < n; i++) await one(); console.log(JSON.stringify(counts)); })();
`;

// One connection kept open; every stdin line is sent, every reply line printed.
const PERSISTENT = `
const s = require('node:net').connect(Number(process.argv[2]), process.argv[1]);
s.on('error', (e) => { console.log('error ' + e.message); });
s.pipe(process.stdout);
process.stdin.on('data', (d) => s.write(d));
`;

function requests(client: TestHost, ip: string, port: number, n = 60): Record<string, number> {
  const out = client.run('node', ['-e', CLIENT, ip, String(port), String(n)], {
    timeoutMs: 30_000,
  });
  return JSON.parse(out) as Record<string, number>;
}

function nft(host: TestHost, ...args: string[]): { ok: boolean; out: string } {
  const r = host.exec('nft', args);
  return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
}

/** Wait (bounded) for a line on a child's stdout. */
function nextLine(child: ChildProcess, ms = 5000): Promise<string> {
  const rl = createInterface({ input: child.stdout! });
  return new Promise((resolve, reject) => {
    const tm = setTimeout(() => {
      rl.close();
      reject(new Error('no line in time'));
    }, ms);
    rl.once('line', (l) => {
      clearTimeout(tm);
      rl.close();
      resolve(l);
    });
  });
}

t.test(
  'nftables backend: VIP and ingress balancing, drain, remove, drift, read, flush',
  async (t) => {
    const net = testnet(t, { hosts: 5 });
    const [client, lbHost, ...backs] = net.hosts as [TestHost, TestHost, ...TestHost[]];
    // 10.0.1.0/24 beside the underlay: the LB and the backends share it.
    lbHost.run('ip', ['addr', 'add', '10.0.1.2/24', 'dev', 'eth0']);
    lbHost.run('sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
    lbHost.run('sysctl', ['-qw', 'net.ipv4.conf.all.send_redirects=0']);
    lbHost.run('sysctl', ['-qw', 'net.ipv4.conf.eth0.send_redirects=0']);
    client.run('ip', ['route', 'add', '10.0.9.0/24', 'via', lbHost.addr]);
    const names: string[] = [];
    for (const [i, b] of backs.entries()) {
      const name = `b${i + 1}`;
      names.push(name);
      b.run('ip', ['addr', 'add', `10.0.1.${10 + i}/24`, 'dev', 'eth0']);
      const srv = b.spawn('node', ['-e', SERVER, name], { stdio: ['ignore', 'pipe', 'inherit'] });
      t.equal(await nextLine(srv), 'ready', `${name} listens`);
    }
    const ipOf = (name: string) => `10.0.1.${10 + names.indexOf(name)}`;

    // A table that is not ours: it must survive everything below.
    lbHost.run('nft', ['-f', '-'], {
      input: 'table ip other { chain c { type filter hook input priority 10; policy accept; }\n}\n',
    });

    const lb = new NftBackend({ netns: lbHost.ns });
    t.ok(await lb.timeoutsSupported(), 'this kernel has conntrack timeout objects');
    const vip: LbService = {
      key: 'vip:net1:web',
      fwmark: 256,
      protocol: 'tcp',
      vip: '10.0.9.10',
      port: 80,
      targetPort: 8080,
      scheduler: 'rr',
      timeouts: { tcp: 77, tcpFin: 9 },
      backends: names.map((n) => ({
        ip: ipOf(n),
        port: 8080,
        weight: 1,
        state: 'active' as const,
        task: `web.${n}`,
        node: `node-${n}`,
      })),
    };
    const ingress: LbService = {
      key: 'ingress:8081/tcp',
      fwmark: 257,
      protocol: 'tcp',
      port: 8081,
      targetPort: 8080,
      scheduler: 'wrr',
      backends: names.map((n) => ({
        ip: ipOf(n),
        port: 8080,
        weight: 2,
        state: 'active' as const,
      })),
    };

    const first = await lb.apply([vip]);
    t.ok(first.changes > 0, `first apply programs the table (${first.changes} changes)`);
    t.equal((await lb.apply([vip])).changes, 0, 'the same state again: 0 changes');
    t.type(lb.generation(), 'number', 'the nftables generation is readable');
    lb.forget();
    t.equal((await lb.apply([vip])).changes, 0, 'and 0 when compared with a fresh listing');

    const all = requests(client, '10.0.9.10', 80);
    t.notOk(all['fail'], 'every request to the VIP is answered');
    t.same(
      Object.keys(all).sort(),
      names,
      `every backend answers over 60 requests: ${JSON.stringify(all)}`,
    );

    // read() gives back what was asked for (normalized), with stats on top.
    const strip = (s: Awaited<ReturnType<typeof lb.read>>) =>
      s.map((x) => ({
        ...x,
        backends: x.backends.map(
          ({ activeConns: _a, inactiveConns: _i, scheduledConns: _s, ...b }) => b,
        ),
      }));
    t.same(
      strip(await lb.read()),
      normalizeServices([vip]),
      'read() round-trips the desired state',
    );
    const sched = (await lb.read())[0]?.backends.map((b) => b.scheduledConns);
    t.same(
      sched,
      [20, 20, 20],
      'rr is round robin: the per-backend counters say 20 new connections each',
    );

    // A connection held open across the changes below.
    const held = client.spawn('node', ['-e', PERSISTENT, '10.0.9.10', '80'], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    held.stdin!.write('x\n');
    const heldBy = await nextLine(held);
    t.ok(names.includes(heldBy), `a held connection is answered by ${heldBy}`);

    // Conntrack: the mark is on the connection and the service's idle timeout applies.
    const ct = lbHost.run('cat', ['/proc/net/nf_conntrack']);
    const line = ct.split('\n').find((l) => l.includes('dport=80 ') && l.includes('ESTABLISHED'));
    t.ok(line, 'the held connection is in conntrack');
    t.match(line ?? '', /\bmark=256\b/, 'its conntrack entry carries the service fwmark');
    const timeout = Number(/^\S+\s+\d+\s+\S+\s+\d+\s+(\d+)/.exec(line ?? '')?.[1]);
    t.ok(timeout > 0 && timeout <= 77, `its idle timeout is the service's 77 s (left: ${timeout})`);
    const rd = await lb.read();
    t.equal(
      rd[0]?.backends.find((b) => b.ip === ipOf(heldBy))?.activeConns,
      1,
      'read() counts the held connection as active on its backend',
    );

    // Drain the held connection's backend: no new connections, the held one continues.
    const drained: LbService = {
      ...vip,
      backends: vip.backends.map((b) =>
        b.ip === ipOf(heldBy) ? { ...b, weight: 0, state: 'draining' as const } : b,
      ),
    };
    t.ok((await lb.apply([drained])).changes > 0, 'draining is a change');
    const afterDrain = requests(client, '10.0.9.10', 80);
    t.notOk(afterDrain['fail'], 'all requests answered while draining');
    t.notOk(
      afterDrain[heldBy],
      `the draining backend gets no new connection: ${JSON.stringify(afterDrain)}`,
    );
    t.equal(Object.keys(afterDrain).length, 2, 'the two others share them');
    held.stdin!.write('x\n');
    t.equal(await nextLine(held), heldBy, 'the held connection still reaches the draining backend');
    const dr = (await lb.read())[0]?.backends.find((b) => b.ip === ipOf(heldBy));
    t.match(dr, { state: 'draining', weight: 0 }, 'read() shows it draining with weight 0');

    // Remove it: still no new connections; conntrack keeps the held one.
    const removed: LbService = {
      ...vip,
      backends: vip.backends.filter((b) => b.ip !== ipOf(heldBy)),
    };
    t.ok((await lb.apply([removed])).changes > 0, 'removing a backend is a change');
    const afterRemove = requests(client, '10.0.9.10', 80);
    t.notOk(afterRemove['fail'], 'all requests answered after the removal');
    t.notOk(afterRemove[heldBy], 'the removed backend gets no new connection');
    held.stdin!.write('x\n');
    t.equal(
      await nextLine(held),
      heldBy,
      'the held connection continues (conntrack keeps its NAT)',
    );
    held.kill('SIGKILL');
    t.notOk(
      nft(lbHost, 'list', 'ruleset').out.includes(ipOf(heldBy)),
      'nothing in the ruleset names the removed backend',
    );

    // Ingress: a published port with no VIP, on the LB host's own address.
    t.ok((await lb.apply([vip, ingress])).changes > 0, 'adding an ingress port is a change');
    const viaIngress = requests(client, lbHost.addr, 8081);
    t.notOk(viaIngress['fail'], 'every request to the published port is answered');
    t.same(
      Object.keys(viaIngress).sort(),
      names,
      `by every backend: ${JSON.stringify(viaIngress)}`,
    );
    t.same(
      strip(await lb.read()),
      normalizeServices([vip, ingress]),
      'read() round-trips VIP and ingress services',
    );

    // Source hashing: one client address always lands on the same backend.
    const sticky: LbService = {
      ...vip,
      key: 'vip:net1:sticky',
      fwmark: 258,
      vip: '10.0.9.11',
      scheduler: 'sh',
    };
    t.ok((await lb.apply([vip, ingress, sticky])).changes > 0, 'adding an sh service is a change');
    const sh = requests(client, '10.0.9.11', 80, 20);
    t.equal(Object.keys(sh).length, 1, `sh sends one client to one backend: ${JSON.stringify(sh)}`);
    t.notOk(sh['fail'], 'and answers every request');
    t.ok((await lb.apply([vip, ingress])).changes > 0, 'removing it is a change');
    // UDP: a VIP balanced per flow.
    const dns: LbService = {
      ...vip,
      key: 'vip:net1:udp',
      fwmark: 259,
      protocol: 'udp',
      vip: '10.0.9.12',
      timeouts: { udp: 33 },
    };
    t.ok((await lb.apply([vip, ingress, dns])).changes > 0, 'adding a udp service is a change');
    const udp = JSON.parse(
      client.run('node', ['-e', UDP_CLIENT, '10.0.9.12', '80', '30'], { timeoutMs: 30_000 }),
    ) as Record<string, number>;
    t.same(udp, { b1: 10, b2: 10, b3: 10 }, 'udp flows go round robin to every backend');
    const udpCt = lbHost
      .run('cat', ['/proc/net/nf_conntrack'])
      .split('\n')
      .find((l) => l.includes('udp') && l.includes('mark=259'));
    const udpLeft = Number(/^\S+\s+\d+\s+\S+\s+\d+\s+(\d+)/.exec(udpCt ?? '')?.[1]);
    t.ok(
      udpLeft > 0 && udpLeft <= 33,
      `a udp flow has the service's 33 s timeout (left: ${udpLeft})`,
    );
    t.same(
      strip(await lb.read()),
      normalizeServices([vip, ingress, dns]),
      'read() round-trips the udp service and its timeout',
    );
    t.ok((await lb.apply([vip, ingress])).changes > 0, 'removing it is a change');
    lb.forget();
    t.equal(
      (await lb.apply([vip, ingress])).changes,
      0,
      'incremental applies left exactly the desired table (a fresh listing agrees)',
    );

    // Drift: rules and elements deleted by hand are noticed and repaired.
    const listing = nft(lbHost, '-a', 'list', 'table', 'ip', NFT_TABLE).out;
    const masq = /masquerade comment "mesh-lb:masq" # handle (\d+)/.exec(listing)?.[1];
    const beChain = new RegExp(
      `chain (be-[0-9a-f]+-${ipOf(names[0]!).replace(/\./g, '\\.')}-8080)`,
    ).exec(listing)?.[1];
    t.ok(masq && beChain, 'found a rule and a chain to break');
    lbHost.run('nft', ['delete', 'rule', 'ip', NFT_TABLE, 'postrouting', 'handle', masq!]);
    lbHost.run('nft', ['flush', 'chain', 'ip', NFT_TABLE, beChain!]);
    lbHost.run('nft', ['delete', 'element', 'ip', NFT_TABLE, 'ingress', '{ tcp . 8081 }']);
    const repaired = await lb.apply([vip, ingress]);
    t.equal(repaired.changes, 3, 'apply sees the 3 hand-made changes and repairs them');
    t.equal((await lb.apply([vip, ingress])).changes, 0, 'and then holds still');
    const healed = requests(client, '10.0.9.10', 80, 30);
    t.same(Object.keys(healed).sort(), names, 'the VIP works again with all backends');
    t.notOk(requests(client, lbHost.addr, 8081, 6)['fail'], 'and so does the published port');

    // flush: nothing of ours left, the other table untouched.
    await lb.flush();
    await lb.flush();
    t.notOk(
      nft(lbHost, 'list', 'table', 'ip', NFT_TABLE).ok,
      'flush removes our table (twice is fine)',
    );
    const rest = nft(lbHost, 'list', 'ruleset').out;
    t.match(rest, /table ip other/, 'the other table is still there');
    t.notMatch(rest, /mesh-lb/, 'nothing named mesh-lb remains');
    t.same(await lb.read(), [], 'read() after flush: nothing');
    t.equal(requests(client, '10.0.9.10', 80, 1)['fail'], 1, 'the VIP no longer answers');
  },
);
