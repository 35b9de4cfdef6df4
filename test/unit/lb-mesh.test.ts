// Port 0 (= every port of a VIP, DNAT keeps the destination port) in the nftables and IPVS
// planners, the host's published-port table, and `meshctl lb show`'s text; no kernel involved.
import t from 'tap';
import { markRulesScript, wantedServices, ipvsadmRestoreText } from '../../src/lb/ipvs.js';
import { diff, normalizeServices, planServices, planView, renderTable } from '../../src/lb/nft.js';
import { INGRESS_GW, ingressTableScript } from '../../src/lb/mesh.js';
import { formatLbShow } from '../../src/cli/lb.js';
import type { LbService } from '../../src/lb/types.js';

const allPorts = (over: Partial<LbService> = {}): LbService => ({
  key: 'vip:net:svc/tcp',
  fwmark: 300,
  protocol: 'tcp',
  vip: '10.0.42.2',
  port: 0,
  targetPort: 0,
  scheduler: 'rr',
  backends: [
    { ip: '10.0.42.11', port: 0, weight: 1, state: 'active', task: 'web.1' },
    { ip: '10.0.42.12', port: 0, weight: 1, state: 'draining', task: 'web.2' },
  ],
  ...over,
});

t.test('nft: a port-0 VIP goes in the vips map and DNATs to the address only', async (t) => {
  const norm = normalizeServices([allPorts()]);
  const plan = planServices(norm);
  const text = renderTable(plan);
  t.match(text, /ip daddr \. meta l4proto vmap @vips/, 'skeleton matches VIP and protocol');
  t.match(text, /map vips \{ type ipv4_addr \. inet_proto : verdict; \}/);
  t.match(text, /add element ip mesh-lb vips \{ 10\.0\.42\.2 \. tcp : goto svc-/);
  t.notMatch(text, /add element ip mesh-lb services/, 'not in the per-port map');
  t.match(text, /dnat to 10\.0\.42\.11 comment/, 'no port: the packet keeps its own');
  t.notMatch(text, /dnat to 10\.0\.42\.11:/);
  t.equal(diff(plan, planView(plan)).changes, 0, 'a plan equals its own kernel view');

  // A specific port and all ports of the same VIP coexist (the specific one is matched first).
  const both = normalizeServices([
    allPorts(),
    { ...allPorts({ key: 'k2', fwmark: 301, port: 80, targetPort: 8080 }), backends: [] },
  ]);
  t.equal(both.length, 2);
});

t.test('nft: port 0 is refused where it means nothing', async (t) => {
  t.throws(
    () => normalizeServices([allPorts({ vip: undefined as unknown as string })]),
    {
      code: 'EUSAGE',
    },
    'ingress (no VIP) needs a port',
  );
  const { vip: _v, ...noVip } = allPorts();
  void _v;
  t.throws(() => normalizeServices([noVip]), /all ports, VIP services only/);
  t.throws(() => normalizeServices([allPorts({ targetPort: 80 })]), { code: 'EUSAGE' });
  t.throws(
    () =>
      normalizeServices([
        allPorts({ backends: [{ ip: '10.0.42.11', port: 80, weight: 1, state: 'active' }] }),
      ]),
    /is not IPv4 address:port/,
    'all-ports backends have port 0',
  );
});

t.test('ipvs: port-0 services mark by protocol only, destinations keep port 0', async (t) => {
  t.equal(
    markRulesScript([{ fwmark: 300, protocol: 'tcp', vip: '10.0.42.2', port: 0 }]).match(
      /ip daddr 10\.0\.42\.2 meta l4proto tcp meta mark set 0x12c/g,
    )?.length,
    2,
    'prerouting and output',
  );
  const w = wantedServices([allPorts()], { min: 256, max: 0xffffffff }).get(300);
  t.same(
    [...(w?.dests.values() ?? [])],
    [
      { addr: '10.0.42.11', port: 0, weight: 1 },
      { addr: '10.0.42.12', port: 0, weight: 0 },
    ],
  );
  t.match(ipvsadmRestoreText([allPorts()]), /-a -f 300 -r 10\.0\.42\.11:0 -m -w 1/);
});

t.test('host table: ingress ports to the ingress namespace, host ports to the task', async (t) => {
  const s = ingressTableScript(
    [{ published: 30080, target: 8080, protocol: 'tcp', mode: 'ingress' }],
    [
      {
        gatewayIp: '10.255.0.11',
        port: { published: 31080, target: 80, protocol: 'udp', mode: 'host' },
      },
    ],
  );
  t.match(
    s,
    /^table ip mesh-ingress\ndelete table ip mesh-ingress\n/,
    'replaces the table atomically',
  );
  t.match(
    s,
    /chain prerouting \{\n.*\n {4}fib daddr type local ip daddr != 127\.0\.0\.0\/8 tcp dport 30080 dnat to /,
    'from the network: local addresses but loopback',
  );
  t.match(
    s,
    /chain output \{\n.*\n {4}fib daddr type local tcp dport 30080 dnat to /,
    'from the node itself: loopback too',
  );
  t.match(
    s,
    /oifname "mesh_gwbridge" ip saddr 127\.0\.0\.0\/8 masquerade/,
    'loopback-sourced packets leave masqueraded',
  );
  t.match(
    s,
    /type filter hook prerouting priority -150;.*\n {4}iifname "mesh_gwbridge" ip daddr 127\.0\.0\.0\/8 drop/,
    "tasks cannot reach the node's loopback through the gateway bridge",
  );
  t.match(s, new RegExp(`dnat to ${INGRESS_GW}:30080`));
  t.match(s, /udp dport 31080 dnat to 10\.255\.0\.11:80/);
});

t.test('lb show text', async (t) => {
  const text = formatLbShow(
    {
      node: 'n1',
      backend: 'nftables',
      lastApply: 1000,
      lastReconcile: 5000,
      driftRepaired: 2,
      entries: [
        {
          kind: 'vip',
          service: 'web',
          serviceId: 'abc',
          network: 'app',
          networkId: 'net',
          namespace: 'mesh-lb-4200',
          vip: '10.0.42.2',
          protocol: 'tcp',
          port: 0,
          targetPort: 0,
          fwmark: 256,
          scheduler: 'rr',
          programmed: true,
          backends: [
            {
              task: 'web.1',
              node: 'n2',
              address: '10.0.42.11',
              port: 0,
              weight: 0,
              state: 'draining',
              activeConns: 3,
              inactiveConns: 1,
            },
          ],
        },
        {
          kind: 'ingress',
          service: 'web',
          serviceId: 'abc',
          namespace: 'mesh-ingress',
          protocol: 'tcp',
          port: 30080,
          targetPort: 8080,
          programmed: false,
          backends: [],
        },
      ],
    },
    10_000,
  );
  t.match(
    text,
    /backend nftables {2}last apply 9s ago {2}last reconcile 5s ago {2}drift repaired 2/,
  );
  t.match(
    text,
    /10\.0\.42\.2:\*\/tcp same port {2}service web {2}network app {2}mark 256 {2}scheduler rr/,
  );
  t.match(text, /web\.1 +n2 +10\.0\.42\.11 +0 +draining +3 +1/);
  t.match(
    text,
    /:30080\/tcp \(ingress\) -> 8080 {2}service web {2}NOT PROGRAMMED\n {2}\(no backends\)/,
  );
});
