// The embedded DNS's codec and answers: a query built byte by byte from RFC 1035 §4 parses;
// responses encode to the bytes the RFC prescribes; compression pointers are followed and loops
// refused; 200,000 seeded mutations of valid queries throw nothing but MeshError('EDNS'); the
// table answers services, aliases, tasks.<service>, task names, SRV and PTR within the task's
// networks only, with NXDOMAIN/NODATA/forward decided as docs/dns.md says.
import t from 'tap';
import { DnsTable } from '../../src/dns/resolver.js';
import {
  RCODE,
  TYPE,
  encodeResponse,
  ipToPtr,
  parseQuery,
  ptrToIp,
  readName,
} from '../../src/dns/wire.js';
import type { ServiceEntry } from '../../src/api/services.js';
import { MeshError } from '../../src/util/errors.js';

/** `web.app` A IN, id 0x1234, RD: header (12) + name (9) + type/class (4). */
const QUERY = Buffer.from([
  0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x77, 0x65, 0x62,
  0x03, 0x61, 0x70, 0x70, 0x00, 0x00, 0x01, 0x00, 0x01,
]);

t.test('a query built by hand parses', async (t) => {
  const q = parseQuery(QUERY);
  t.equal(q.id, 0x1234);
  t.equal(q.rd, true);
  t.equal(q.qr, false);
  t.equal(q.opcode, 0);
  t.same(q.questions, [{ name: 'web.app', type: TYPE.A, class: 1 }]);
  t.equal(q.ednsUdpSize, undefined);
  // Upper case is folded; an OPT record in the additional section gives the UDP size.
  const withOpt = Buffer.concat([
    Buffer.from(QUERY),
    Buffer.from([0x00, 0x00, 0x29, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
  ]);
  withOpt[11] = 1; // ARCOUNT
  withOpt[13] = 0x57; // 'W'
  const q2 = parseQuery(withOpt);
  t.equal(q2.questions[0]!.name, 'web.app', 'names are case-insensitive (lower-cased)');
  t.equal(q2.ednsUdpSize, 4096, 'EDNS0 UDP size from the OPT record');
});

t.test('responses encode as RFC 1035 lays them out', async (t) => {
  const q = parseQuery(QUERY);
  const r = encodeResponse(q, RCODE.NOERROR, [
    { name: 'web.app', type: TYPE.A, ttl: 5, data: { a: '10.0.1.2' } },
  ]);
  t.same(
    [...r],
    [
      0x12,
      0x34,
      0x85,
      0x80,
      0x00,
      0x01,
      0x00,
      0x01,
      0x00,
      0x00,
      0x00,
      0x00,
      ...[3, 0x77, 0x65, 0x62, 3, 0x61, 0x70, 0x70, 0, 0, 1, 0, 1],
      ...[3, 0x77, 0x65, 0x62, 3, 0x61, 0x70, 0x70, 0, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 1, 2],
    ],
    'QR AA RD RA, question echoed, one A record with TTL 5',
  );
  const srv = encodeResponse(q, RCODE.NOERROR, [
    {
      name: 'web',
      type: TYPE.SRV,
      ttl: 5,
      data: { srv: { priority: 0, weight: 0, port: 80, target: 'web.1.x' } },
    },
  ]);
  const back = readName(srv, 25 + 5 + 10 + 6);
  t.equal(back.name, 'web.1.x', 'SRV target written as a name');
  const nx = encodeResponse(q, RCODE.NXDOMAIN, []);
  t.equal(nx[3]! & 0xf, RCODE.NXDOMAIN, 'rcode in the low bits');
  // Too big for plain UDP: answers dropped, TC set.
  const many = Array.from({ length: 60 }, (_, i) => ({
    name: 'web.app',
    type: TYPE.A,
    ttl: 5,
    data: { a: `10.0.1.${i + 1}` },
  }));
  const tc = encodeResponse(q, RCODE.NOERROR, many, { aa: true, maxSize: 512 });
  t.ok(tc.length <= 512 && (tc.readUInt16BE(2) & 0x0200) !== 0, 'truncated with TC over UDP');
  t.equal(encodeResponse(q, 0, many, { aa: true }).readUInt16BE(6), 60, 'all 60 over TCP');
});

t.test('compression pointers: followed backwards, loops refused', async (t) => {
  // "app" at 12, then "web" + pointer to 12 at 17.
  const b = Buffer.from([
    ...Array(12).fill(0),
    3,
    0x61,
    0x70,
    0x70,
    0,
    3,
    0x77,
    0x65,
    0x62,
    0xc0,
    12,
  ]);
  t.same(readName(b, 17), { name: 'web.app', next: 23 });
  const loop = Buffer.from([...Array(12).fill(0), 0xc0, 12]);
  t.throws(() => readName(loop, 12), { code: 'EDNS' }, 'a pointer to itself');
  const fwd = Buffer.from([...Array(12).fill(0), 0xc0, 14, 0]);
  t.throws(() => readName(fwd, 12), { code: 'EDNS' }, 'a forward pointer');
  const long = Buffer.from([
    ...Array(12).fill(0),
    ...Array(5)
      .fill([63, ...Array(63).fill(0x61)])
      .flat(),
    0,
  ]);
  t.throws(() => readName(long, 12), { code: 'EDNS' }, 'a name over 255 octets');
  t.equal(ptrToIp('3.1.0.10.in-addr.arpa'), '10.0.1.3');
  t.equal(ipToPtr('10.0.1.3'), '3.1.0.10.in-addr.arpa');
  t.equal(ptrToIp('999.1.0.10.in-addr.arpa'), undefined);
});

t.test('fuzz: malformed queries throw MeshError only', async (t) => {
  let seed = 0x9e3779b9;
  const rnd = (n: number): number => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
  const bases = [
    QUERY,
    Buffer.from([...QUERY.subarray(0, 12), 0xc0, 0x0c, 0, 1, 0, 1]),
    Buffer.from([...QUERY, 0, 0, 0x29, 0x10, 0, 0, 0, 0, 0, 0, 0]),
  ];
  let ok = 0;
  let refused = 0;
  const N = 200_000;
  for (let i = 0; i < N; i++) {
    const base = bases[rnd(bases.length)]!;
    let b: Buffer;
    switch (rnd(4)) {
      case 0: // flip bytes
        b = Buffer.from(base);
        for (let k = rnd(4) + 1; k > 0; k--) b[rnd(b.length)] = rnd(256);
        break;
      case 1: // truncate
        b = base.subarray(0, rnd(base.length));
        break;
      case 2: // random bytes
        b = Buffer.from(Array.from({ length: rnd(80) }, () => rnd(256)));
        break;
      default: // counts inflated
        b = Buffer.from(base);
        b.writeUInt16BE(rnd(0x10000), 4 + 2 * rnd(4));
    }
    try {
      parseQuery(b);
      ok++;
    } catch (e) {
      if (!(e instanceof MeshError) || e.code !== 'EDNS') {
        t.fail(`input ${b.toString('hex')} threw ${String(e)}`);
        return;
      }
      refused++;
    }
  }
  t.equal(
    ok + refused,
    N,
    `${N} inputs: ${ok} parsed, ${refused} refused with EDNS, no other error`,
  );
});

const entry = (over: Partial<ServiceEntry> = {}): ServiceEntry => ({
  id: 's1',
  name: 'web',
  endpointMode: 'vip',
  vips: { n1: '10.0.1.2', n2: '10.0.2.2' },
  ports: [{ published: 8080, target: 80, protocol: 'tcp', mode: 'ingress' }],
  networks: [
    { networkId: 'n1', aliases: ['www'] },
    { networkId: 'n2', aliases: [] },
  ],
  endpoints: [
    {
      taskId: 't1',
      taskName: 'web.1.aaa',
      nodeId: 'x',
      nodeAddr: '198.18.0.1',
      addresses: { n1: '10.0.1.3', n2: '10.0.2.3' },
      state: 'active',
    },
    {
      taskId: 't2',
      taskName: 'web.2.bbb',
      nodeId: 'y',
      nodeAddr: '198.18.0.2',
      addresses: { n1: '10.0.1.4', n2: '10.0.2.4' },
      state: 'draining',
    },
  ],
  ...over,
});

t.test('answers from the service table, scoped to the task networks', async (t) => {
  const tb = new DnsTable();
  tb.update([
    entry(),
    entry({
      id: 's2',
      name: 'db',
      endpointMode: 'dnsrr',
      vips: {},
      networks: [{ networkId: 'n2', aliases: [] }],
    }),
  ]);
  const a = (name: string, nets: string[], type: number = TYPE.A) => {
    const r = tb.resolve(name, type, nets, 5);
    return r.kind === 'forward'
      ? 'forward'
      : `${r.rcode}:${r.answers.map((x) => ('a' in x.data ? x.data.a : 'ptr' in x.data ? x.data.ptr : `${x.data.srv.target}:${x.data.srv.port}`)).join(',')}`;
  };
  t.equal(a('web', ['n1']), '0:10.0.1.2', 'service → VIP on the shared network');
  t.equal(a('WEB.', ['n2']), '0:10.0.2.2', 'case-insensitive, trailing dot, other network');
  t.equal(a('www', ['n1']), '0:10.0.1.2', 'alias on n1');
  t.equal(a('www', ['n2']), '3:', 'alias exists only on n1: NXDOMAIN on n2');
  t.equal(
    a('tasks.web', ['n1']),
    '0:10.0.1.3',
    'tasks.<service>: active tasks only (draining left out)',
  );
  t.equal(a('web.1.aaa', ['n2']), '0:10.0.2.3', 'a task name');
  t.equal(
    a('web.2.bbb', ['n1']),
    'forward',
    'a draining task is not ours any more (multi-label: forwarded)',
  );
  t.equal(a('db', ['n2']), '0:10.0.2.3', 'dnsrr: task addresses instead of a VIP');
  t.equal(a('db', ['n1']), '3:', 'not on a shared network: NXDOMAIN');
  t.equal(a('web', ['n1'], TYPE.AAAA), '0:', 'our name, no AAAA: NODATA');
  t.equal(a('web', ['n1'], TYPE.SRV), '0:web.1.aaa:80', 'SRV per active task, target port');
  t.equal(a('nosuch', ['n1']), '3:', 'single-label unknown: NXDOMAIN');
  t.equal(a('tasks.nosuch', ['n1']), '3:', 'tasks.<unknown>: NXDOMAIN');
  t.equal(a('example.com', ['n1']), 'forward', 'other names are forwarded');
  t.equal(a(ipToPtr('10.0.1.2'), ['n1'], TYPE.PTR), '0:web', 'PTR of a VIP');
  t.equal(a(ipToPtr('10.0.1.3'), ['n1'], TYPE.PTR), '0:web.1.aaa', 'PTR of a task address');
  t.equal(a(ipToPtr('10.0.1.3'), ['n2'], TYPE.PTR), 'forward', 'PTR outside the task networks');
  tb.update([]);
  t.equal(a('web', ['n1']), '3:', 'after the service is gone: NXDOMAIN at once');
});
