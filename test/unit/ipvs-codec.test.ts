// IPVS generic-netlink codecs, byte-exact, and the IPVS reconcile planner, with no kernel involved. The expected bytes were
// written by hand from include/uapi/linux/ip_vs.h and ip_vs_ctl.c's policies: nlmsghdr (16),
// genlmsghdr {cmd, version 1, 0, 0}, nested IPVS_CMD_ATTR_SERVICE/DEST (NLA_F_NESTED set),
// ports in network order inside an NLA_U16, struct ip_vs_flags {flags, mask}.
import t from 'tap';
import {
  decodeConfig,
  decodeStats,
  decodeDest,
  decodeService,
  delDestMsg,
  delServiceMsg,
  flushMsg,
  getDestsMsg,
  getServicesMsg,
  newDestMsg,
  newServiceMsg,
  setConfigMsg,
  setDestMsg,
  setServiceMsg,
} from '../../src/netlink/ipvs.js';
import {
  ipvsadmRestoreText,
  markRulesScript,
  planIpvs,
  wantedServices,
  wantedTimeouts,
  type IpvsCurrent,
} from '../../src/lb/ipvs.js';
import type { LbService } from '../../src/lb/types.js';
import { MeshError } from '../../src/util/errors.js';

const FAM = 0x22; // a dynamic genl family id, as the kernel would hand out
const hex = (s: string): string => s.replace(/\s+/g, '');
const bytes = (s: string): Buffer => Buffer.from(hex(s), 'hex');

t.test('NEW_SERVICE by fwmark: full entry (sched, flags+mask, timeout, netmask)', async (t) => {
  const m = newServiceMsg(FAM, { fwmark: 256, scheduler: 'rr' });
  t.equal(
    m.toString('hex'),
    hex(`
      4c000000 2200 0100 00000000 00000000
      01 01 0000
      3800 0180
        0600 0100 0200 0000
        0800 0500 00010000
        0700 0600 727200 00
        0c00 0700 00000000 ffffffff
        0800 0800 00000000
        0800 0900 ffffffff`),
  );
});

t.test('SET_SERVICE: scheduler and flags change; persistence timeout', async (t) => {
  const m = setServiceMsg(FAM, { fwmark: 0x1234, scheduler: 'wrr', flags: 1, timeout: 300 });
  t.equal(
    m.toString('hex'),
    hex(`
      4c000000 2200 0100 00000000 00000000
      02 01 0000
      3800 0180
        0600 0100 0200 0000
        0800 0500 34120000
        0800 0600 77727200
        0c00 0700 01000000 ffffffff
        0800 0800 2c010000
        0800 0900 ffffffff`),
  );
});

t.test('DEL_SERVICE by protocol/address/port: identity only, port big-endian', async (t) => {
  const m = delServiceMsg(FAM, { protocol: 'tcp', addr: '10.1.2.3', port: 8080 });
  t.equal(
    m.toString('hex'),
    hex(`
      38000000 2200 0100 00000000 00000000
      03 01 0000
      2400 0180
        0600 0100 0200 0000
        0600 0200 0600 0000
        0800 0300 0a010203
        0600 0400 1f90 0000`),
  );
  const u = delServiceMsg(FAM, { protocol: 'udp', addr: '10.1.2.3', port: 53 });
  t.equal(u.subarray(32, 40).toString('hex'), hex('0600 0200 1100 0000'), 'udp = 17');
});

t.test('NEW_DEST: masquerade, weight 1, no thresholds', async (t) => {
  const m = newDestMsg(FAM, { fwmark: 256 }, { addr: '10.0.0.2', port: 80 });
  t.equal(
    m.toString('hex'),
    hex(`
      5c000000 2200 0100 00000000 00000000
      05 01 0000
      1400 0180
        0600 0100 0200 0000
        0800 0500 00010000
      3400 0280
        0800 0100 0a000002
        0600 0200 0050 0000
        0800 0300 00000000
        0800 0400 01000000
        0800 0500 00000000
        0800 0600 00000000`),
  );
});

t.test('SET_DEST: direct routing, weight 0 (draining), thresholds', async (t) => {
  const m = setDestMsg(
    FAM,
    { fwmark: 300 },
    {
      addr: '10.0.0.3',
      port: 8080,
      forward: 'route',
      weight: 0,
      upperThreshold: 100,
      lowerThreshold: 10,
    },
  );
  t.equal(
    m.toString('hex'),
    hex(`
      5c000000 2200 0100 00000000 00000000
      06 01 0000
      1400 0180
        0600 0100 0200 0000
        0800 0500 2c010000
      3400 0280
        0800 0100 0a000003
        0600 0200 1f90 0000
        0800 0300 03000000
        0800 0400 00000000
        0800 0500 64000000
        0800 0600 0a000000`),
  );
});

t.test('DEL_DEST: identity only; an IPv6 destination states its family', async (t) => {
  const m = delDestMsg(FAM, { fwmark: 256 }, { addr: '2001:db8::1', port: 443 });
  t.equal(
    m.toString('hex'),
    hex(`
      50000000 2200 0100 00000000 00000000
      07 01 0000
      1400 0180
        0600 0100 0200 0000
        0800 0500 00010000
      2800 0280
        1400 0100 20010db8 00000000 00000000 00000001
        0600 0200 01bb 0000
        0600 0b00 0a00 0000`),
  );
});

t.test('dumps, config and flush', async (t) => {
  t.equal(
    getServicesMsg(FAM).toString('hex'),
    hex('14000000 2200 0103 00000000 00000000 04010000'),
    'GET_SERVICE with NLM_F_REQUEST|NLM_F_DUMP',
  );
  t.equal(
    getDestsMsg(FAM, { fwmark: 256 }).toString('hex'),
    hex(`
      28000000 2200 0103 00000000 00000000
      08 01 0000
      1400 0180 0600 0100 0200 0000 0800 0500 00010000`),
    'GET_DEST dump names its service',
  );
  t.equal(
    setConfigMsg(FAM, { tcp: 900, tcpFin: 120, udp: 300 }).toString('hex'),
    hex(`
      2c000000 2200 0100 00000000 00000000
      0c 01 0000
      0800 0400 84030000
      0800 0500 78000000
      0800 0600 2c010000`),
  );
  t.equal(
    setConfigMsg(FAM, { tcp: 60 }).toString('hex'),
    hex('1c000000 2200 0100 00000000 00000000 0c010000 0800 0400 3c000000'),
    'only the timeouts given are sent (the kernel keeps the others)',
  );
  t.equal(flushMsg(FAM).toString('hex'), hex('14000000 2200 0100 00000000 00000000 11010000'));
});

t.test('bad input is refused before anything is encoded', async (t) => {
  t.throws(() => newServiceMsg(FAM, { fwmark: 0 }), MeshError);
  t.throws(() => newServiceMsg(FAM, { fwmark: 256, scheduler: 'r r' }), MeshError);
  t.throws(() => newDestMsg(FAM, { fwmark: 256 }, { addr: '10.0.0.2', port: 70000 }), MeshError);
  t.throws(() => newDestMsg(FAM, { fwmark: 256 }, { addr: 'nope', port: 80 }), MeshError);
  t.throws(
    () => newDestMsg(FAM, { fwmark: 256 }, { addr: '10.0.0.2', port: 80, weight: -1 }),
    MeshError,
  );
  t.throws(
    () => delServiceMsg(FAM, { af: 'inet6', protocol: 'tcp', addr: '10.0.0.1', port: 80 }),
    MeshError,
    'service address family must match',
  );
});

// Answers shaped as ip_vs_genl_fill_service/fill_dest build them (6.1): 16-byte addresses,
// STATS (u32 counters, u64 bytes) and STATS64 (all u64), no NLA_F_NESTED on the nests.
t.test('decode a fwmark service answer, preferring STATS64', async (t) => {
  const payload = bytes(`
    01 01 0000
    ac00 0100
      0600 0100 0200 0000
      0800 0500 00010000
      0800 0600 77727200
      0c00 0700 00000000 ffffffff
      0800 0800 00000000
      0800 0900 ffffffff
      3400 0a00
        0800 0100 03000000
        0800 0200 0a000000
        0800 0300 09000000
        0c00 0400 e803000000000000
        0c00 0500 d007000000000000
      4000 0c00
        0c00 0100 0300000000000000
        0c00 0200 0a00000000000000
        0c00 0300 0900000000000000
        0c00 0400 e803000001000000
        0c00 0500 d007000000000000`);
  const s = decodeService(payload);
  t.same(s, {
    af: 'inet',
    fwmark: 256,
    scheduler: 'wrr',
    flags: 0,
    timeout: 0,
    netmask: 0xffffffff,
    stats: {
      conns: 3,
      inPkts: 10,
      outPkts: 9,
      inBytes: 0x1_0000_03e8, // only STATS64 holds more than 32 bits
      outBytes: 2000,
      cps: 0,
      inPps: 0,
      outPps: 0,
      inBps: 0,
      outBps: 0,
    },
  });
});

t.test('decode an address/port service and a destination', async (t) => {
  const svc = decodeService(
    bytes(`
      01 01 0000
      3800 0100
        0600 0100 0200 0000
        0600 0200 1100 0000
        1400 0300 0a000001 00000000 00000000 00000000
        0600 0400 0035 0000
        0700 0600 7272 00 00`),
  );
  t.match(svc, { af: 'inet', protocol: 'udp', addr: '10.0.0.1', port: 53, scheduler: 'rr' });
  t.notOk('fwmark' in svc);

  const d = decodeDest(
    bytes(`
      05 01 0000
      6000 0200
        1400 0100 0a000002 00000000 00000000 00000000
        0600 0200 0050 0000
        0800 0300 00000000
        0800 0400 00000000
        0800 0500 00000000
        0800 0600 00000000
        0800 0700 02000000
        0800 0800 05000000
        0800 0900 00000000
        0600 0b00 0200 0000`),
  );
  t.same(d, {
    addr: '10.0.0.2',
    port: 80,
    af: 'inet',
    forward: 'masq',
    weight: 0,
    upperThreshold: 0,
    lowerThreshold: 0,
    activeConns: 2,
    inactiveConns: 5,
    persistConns: 0,
    stats: {
      conns: 0,
      inPkts: 0,
      outPkts: 0,
      inBytes: 0,
      outBytes: 0,
      cps: 0,
      inPps: 0,
      outPps: 0,
      inBps: 0,
      outBps: 0,
    },
  });
  t.same(
    decodeConfig(bytes('0d01 0000 0800 0400 84030000 0800 0500 78000000 0800 0600 2c010000')),
    { tcp: 900, tcpFin: 120, udp: 300 },
  );
  t.throws(() => decodeService(bytes('01010000')), MeshError, 'no service nest');
});

// The reconcile planner of src/lb/ipvs.ts: pure, so its diff is checked here without a kernel.
const stats0 = decodeStats(undefined);
function current(
  fwmark: number,
  sched: string,
  dests: Array<[string, number, number]>,
  flags = 2,
): IpvsCurrent {
  return {
    svc: {
      af: 'inet',
      fwmark,
      scheduler: sched,
      flags,
      timeout: 0,
      netmask: 0xffffffff,
      stats: stats0,
    },
    dests: dests.map(([addr, port, weight]) => ({
      addr,
      port,
      af: 'inet' as const,
      forward: 'masq' as const,
      weight,
      upperThreshold: 0,
      lowerThreshold: 0,
      activeConns: 0,
      inactiveConns: 0,
      persistConns: 0,
      stats: stats0,
    })),
  };
}
function lbService(
  fwmark: number,
  backends: Array<[string, LbService['backends'][number]['state']]>,
): LbService {
  return {
    key: `vip:n:${fwmark}`,
    fwmark,
    protocol: 'tcp',
    vip: '10.9.0.1',
    port: 80,
    targetPort: 8080,
    scheduler: 'rr',
    backends: backends.map(([ip, state]) => ({ ip, port: 8080, weight: 2, state })),
  };
}
const range = { min: 256, max: 0xffffffff };
const kinds = (ops: Array<{ kind: string }>): string[] => ops.map((o) => o.kind);

t.test('planner: empty kernel -> service first, then its destinations', async (t) => {
  const want = wantedServices(
    [
      lbService(256, [
        ['10.1.0.1', 'active'],
        ['10.1.0.2', 'draining'],
        ['10.1.0.3', 'unhealthy'],
      ]),
    ],
    range,
  );
  const ops = planIpvs(want, [], 'masq', { want: {} });
  t.same(kinds(ops), ['newService', 'newDest', 'newDest']);
  t.match(ops[0], { svc: { af: 'inet', fwmark: 256, scheduler: 'rr', flags: 0, timeout: 0 } });
  t.match(ops[1], { dest: { addr: '10.1.0.1', port: 8080, weight: 2, forward: 'masq' } });
  t.match(ops[2], { dest: { addr: '10.1.0.2', weight: 0 } }, 'draining = weight 0');
});

t.test('planner: a matching kernel (HASHED flag set by the kernel) needs nothing', async (t) => {
  const want = wantedServices(
    [
      lbService(256, [
        ['10.1.0.1', 'active'],
        ['10.1.0.2', 'draining'],
      ]),
    ],
    range,
  );
  const cur = [
    current(256, 'rr', [
      ['10.1.0.1', 8080, 2],
      ['10.1.0.2', 8080, 0],
    ]),
  ];
  t.same(planIpvs(want, cur, 'masq', { want: {} }), []);
});

t.test('planner: drift in every direction, in a kernel-valid order', async (t) => {
  const want = wantedServices(
    [
      {
        ...lbService(256, [
          ['10.1.0.1', 'active'],
          ['10.1.0.2', 'active'],
        ]),
        scheduler: 'wrr',
      },
      lbService(300, [['10.2.0.1', 'active']]),
    ],
    range,
  );
  const cur = [
    current(256, 'rr', [
      ['10.1.0.1', 8080, 5],
      ['10.1.0.9', 8080, 1],
    ]),
    current(257, 'rr', [['10.3.0.1', 8080, 1]]),
  ];
  const ops = planIpvs(want, cur, 'masq', {
    want: { tcp: 600 },
    have: { tcp: 900, tcpFin: 120, udp: 300 },
  });
  t.same(kinds(ops), [
    'setConfig',
    'delService',
    'delDest',
    'newService',
    'setService',
    'setDest',
    'newDest',
    'newDest',
  ]);
  t.match(ops[0], { timeouts: { tcp: 600 } });
  t.notOk('udp' in (ops[0] as { timeouts: object }).timeouts, 'only the changed timeout');
  t.match(ops[1], { svc: { fwmark: 257 } });
  t.match(ops[2], { svc: { fwmark: 256 }, dest: { addr: '10.1.0.9' } });
  t.match(ops[3], { svc: { fwmark: 300 } });
  t.match(ops[4], { svc: { fwmark: 256, scheduler: 'wrr' } });
  t.match(ops[5], { dest: { addr: '10.1.0.1', weight: 2 } });
  t.same(
    new Set(ops.slice(6).map((o) => (o as { dest: { addr: string } }).dest.addr)),
    new Set(['10.1.0.2', '10.2.0.1']),
  );
});

t.test('planner input checks and namespace-wide timeouts', async (t) => {
  t.throws(() => wantedServices([lbService(255, [])], range), /outside our range/);
  t.throws(() => wantedServices([lbService(256, []), lbService(256, [])], range), /used twice/);
  t.throws(
    () => wantedServices([{ ...lbService(256, []), scheduler: 'wlc' as 'rr' }], range),
    /unknown scheduler/,
  );
  t.throws(
    () =>
      wantedServices(
        [
          lbService(256, [
            ['10.0.0.1', 'active'],
            ['10.0.0.1', 'active'],
          ]),
        ],
        range,
      ),
    /listed twice/,
  );
  t.throws(
    () =>
      wantedServices(
        [
          lbService(256, [
            ['10.0.0.1', 'active'],
            ['fd00::1', 'active'],
          ]),
        ],
        range,
      ),
    /mix IPv4 and IPv6/,
  );
  t.same(
    wantedTimeouts([
      { ...lbService(256, []), timeouts: { tcp: 300 } },
      { ...lbService(257, []), timeouts: { tcp: 600, udp: 30 } },
      lbService(258, []),
    ]),
    { tcp: 600, udp: 30 },
    'the largest requested value per kind',
  );
  t.match(
    markRulesScript([
      { fwmark: 256, protocol: 'tcp', vip: '10.9.0.1', port: 80 },
      { fwmark: 0x1ff, protocol: 'udp', port: 30001 },
    ]),
    /ip daddr 10\.9\.0\.1 tcp dport 80 meta mark set 0x100\n {4}fib daddr type local udp dport 30001 meta mark set 0x1ff/,
  );
  t.equal(
    ipvsadmRestoreText([
      lbService(256, [
        ['10.1.0.1', 'active'],
        ['10.1.0.2', 'draining'],
        ['10.1.0.3', 'unhealthy'],
      ]),
    ]),
    '-A -f 256 -s rr\n-a -f 256 -r 10.1.0.1:8080 -m -w 2\n-a -f 256 -r 10.1.0.2:8080 -m -w 0\n',
  );
});
