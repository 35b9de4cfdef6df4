// IPAM: strict CIDR parsing, the default pool and its exhaustion, overlap checks naming the
// culprit, gateway and ip-range checks, serial allocation (wrap-around, skips, full subnet), VNIs.
import ipaddr from 'ipaddr.js';
import t from 'tap';
import { SeededRandom } from '../../src/raft/random.js';
import {
  allocateAddress,
  allocateSubnet,
  allocateVni,
  formatIpv4,
  isIpv4,
  parseCidr,
  parseIpv4,
  usableAddresses,
  validateGateway,
  validateIpRange,
  validateSubnet,
} from '../../src/manager/allocation/ipam.js';
import { MeshError } from '../../src/util/errors.js';

function code(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return e instanceof MeshError ? e.code : `not a MeshError: ${String(e)}`;
  }
  return 'no error';
}

t.test('parsing is strict and round-trips', async (t) => {
  t.equal(parseIpv4('10.0.1.5'), 0x0a000105);
  t.equal(formatIpv4(0xffffffff), '255.255.255.255');
  t.equal(formatIpv4(parseIpv4('192.168.0.254')), '192.168.0.254');
  for (const bad of ['10.1', '010.0.0.1', '10.0.0.256', '0xa.0.0.1', '', 'x', '10.0.0.1 ']) {
    t.equal(
      code(() => parseIpv4(bad)),
      'EUSAGE',
      bad,
    );
  }
  t.throws(() => parseIpv4('fd00::1'), /IPv6 is not supported yet/);
  t.same(parseCidr('10.0.1.0/24'), { base: 0x0a000100, prefix: 24 });
  t.same(parseCidr('0.0.0.0/0'), { base: 0, prefix: 0 });
  t.throws(() => parseCidr('10.0.1.5/24'), /did you mean 10\.0\.1\.0\/24\?/);
  for (const bad of ['10.0.1.0', '10.0.1.0/33', '10.0.1.0/024', '10.1/8', '10.0.1.0/24/1']) {
    t.equal(
      code(() => parseCidr(bad)),
      'EUSAGE',
      bad,
    );
  }
});

t.test(
  'the IPv4 parser accepts exactly what ipaddr.js isValidFourPartDecimal accepts',
  async (t) => {
    const rnd = new SeededRandom(7);
    const alphabet = [
      '0',
      '1',
      '2',
      '5',
      '9',
      '.',
      '00',
      '25',
      '255',
      '256',
      '300',
      'x',
      ':',
      ' ',
      '-',
    ];
    let agreed = 0;
    let valid = 0;
    for (let i = 0; i < 20_000; i++) {
      let s = '';
      const n = 1 + rnd.intn(12);
      for (let j = 0; j < n; j++) s += alphabet[rnd.intn(alphabet.length)];
      if (rnd.intn(2) === 0)
        s = `${rnd.intn(300)}.${rnd.intn(300)}.${rnd.intn(300)}.${rnd.intn(300)}`;
      const theirs = ipaddr.IPv4.isValidFourPartDecimal(s);
      if (isIpv4(s) !== theirs)
        t.fail(`disagree on ${JSON.stringify(s)}: ipaddr.js says ${theirs}`);
      else agreed++;
      if (theirs) {
        valid++;
        const b = ipaddr.IPv4.parse(s).toByteArray();
        if (parseIpv4(s) !== ((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0) {
          t.fail(`value differs for ${s}`);
        }
      } else if (code(() => parseIpv4(s)) !== 'EUSAGE') t.fail(`accepted ${s}`);
    }
    t.equal(agreed, 20_000);
    t.ok(valid > 3000, `${valid} valid addresses among them`);
  },
);

t.test('allocateSubnet: lowest free /24 of 10/8, around what is used', async (t) => {
  t.equal(allocateSubnet([]), '10.0.0.0/24');
  t.equal(allocateSubnet(['10.0.0.0/24']), '10.0.1.0/24');
  t.equal(allocateSubnet(['10.0.0.0/24', '10.0.2.0/24']), '10.0.1.0/24', 'fills a gap');
  t.equal(allocateSubnet(['10.0.0.0/16']), '10.1.0.0/24', 'skips a larger block');
  t.equal(allocateSubnet(['10.0.0.128/25']), '10.0.1.0/24', 'a smaller block spoils its /24');
  t.equal(allocateSubnet(['10.0.1.0/24', '10.0.0.0/23']), '10.0.2.0/24', 'unsorted, nested');
  t.equal(allocateSubnet(['192.168.0.0/16', '172.16.0.0/12']), '10.0.0.0/24', 'outside the pool');
  t.equal(allocateSubnet(['10.0.0.0/9', '10.128.0.0/10']), '10.192.0.0/24');
  t.equal(
    allocateSubnet(['10.0.0.0/9', '10.128.0.0/10', '10.192.0.0/11', '10.224.0.0/12']),
    '10.240.0.0/24',
  );
});

t.test(
  'allocateSubnet never hands out 10.255.0.0/16 and says when the pool is exhausted',
  async (t) => {
    const cover = [
      '10.0.0.0/9',
      '10.128.0.0/10',
      '10.192.0.0/11',
      '10.224.0.0/12',
      '10.240.0.0/13',
      '10.248.0.0/14',
      '10.252.0.0/15',
    ];
    t.equal(allocateSubnet(cover), '10.254.0.0/24');
    t.equal(allocateSubnet([...cover, '10.254.0.0/17']), '10.254.128.0/24');
    const last = allocateSubnet([
      ...cover,
      '10.254.0.0/17',
      '10.254.128.0/18',
      '10.254.192.0/19',
      '10.254.224.0/20',
      '10.254.240.0/21',
      '10.254.248.0/22',
      '10.254.252.0/23',
      '10.254.254.0/24',
    ]);
    t.equal(last, '10.254.255.0/24', 'the last /24 before the reserved block');
    try {
      allocateSubnet([...cover, '10.254.0.0/16']);
      t.fail('no error');
    } catch (e) {
      t.equal((e as MeshError).code, 'EEXHAUSTED');
      t.match(
        (e as Error).message,
        /default pool 10\.0\.0\.0\/8 has no free \/24 left \(8 subnets in use, 10\.255\.0\.0\/16 is reserved/,
      );
    }
    // Every one of the 65,280 /24s, one by one, in a shuffled order: the free one is found.
    const all: string[] = [];
    for (let i = 0; i < 255 * 256; i++) all.push(`10.${i >> 8}.${i & 255}.0/24`);
    const keep = all[40_000]!;
    const rest = all.filter((s) => s !== keep).reverse();
    t.equal(allocateSubnet(rest), keep);
    t.equal(
      code(() => allocateSubnet(all)),
      'EEXHAUSTED',
    );
  },
);

t.test('validateSubnet names what overlaps', async (t) => {
  const others = [
    { subnet: '10.0.0.0/24', network: 'ingress' },
    { subnet: '10.1.0.0/16', network: 'api' },
  ];
  t.same(validateSubnet('10.2.0.0/16', others), { base: 0x0a020000, prefix: 16 });
  t.throws(
    () => validateSubnet('10.1.7.0/24', others),
    /subnet 10\.1\.7\.0\/24: overlaps 10\.1\.0\.0\/16 of network api; pick another --subnet/,
  );
  t.throws(
    () => validateSubnet('10.0.0.0/9', others),
    /overlaps 10\.0\.0\.0\/24 of network ingress/,
  );
  t.equal(
    code(() => validateSubnet('10.0.0.0/24', others)),
    'ECONFLICT',
  );
  t.throws(
    () => validateSubnet('10.255.3.0/24', []),
    /overlaps 10\.255\.0\.0\/16, reserved for the nodes' local gateway bridge/,
  );
  t.throws(() => validateSubnet('10.254.0.0/15', []), /10\.255\.0\.0\/16, reserved/);
  t.throws(
    () => validateSubnet('10.0.0.0/8', []),
    /10\.255\.0\.0\/16, reserved/,
    'a supernet of the reserved block too',
  );
  t.throws(() => validateSubnet('127.1.0.0/16', []), /loopback/);
  t.throws(() => validateSubnet('224.1.0.0/16', []), /multicast/);
  t.throws(() => validateSubnet('10.0.0.0/31', []), /prefix must be \/8 to \/30/);
  t.throws(() => validateSubnet('64.0.0.0/7', []), /prefix must be \/8 to \/30/);
  t.same(validateSubnet('192.168.7.0/30', others), { base: 0xc0a80700, prefix: 30 });
});

t.test('gateway and ip range', async (t) => {
  t.equal(validateGateway('10.0.1.0/24'), '10.0.1.1', 'default: first usable');
  t.equal(validateGateway('10.0.1.0/24', '10.0.1.254'), '10.0.1.254');
  t.throws(() => validateGateway('10.0.1.0/24', '10.0.2.1'), /not inside subnet 10\.0\.1\.0\/24/);
  t.throws(() => validateGateway('10.0.1.0/24', '10.0.1.0'), /the network address/);
  t.throws(() => validateGateway('10.0.1.0/24', '10.0.1.255'), /the broadcast address/);
  t.equal(validateIpRange('10.0.1.0/24', '10.0.1.128/25', '10.0.1.1'), '10.0.1.128/25');
  t.throws(() => validateIpRange('10.0.1.0/24', '10.0.0.0/23', '10.0.1.1'), /not inside subnet/);
  t.throws(() => validateIpRange('10.0.1.0/24', '10.0.1.1/32', '10.0.1.1'), /holds no address/);
  t.throws(() => validateIpRange('10.0.1.0/24', '10.0.1.0/31', '10.0.1.1'), /holds no address/);
  t.equal(usableAddresses('10.0.1.0/24', undefined, '10.0.1.1'), 253);
  t.equal(usableAddresses('10.0.1.0/24', '10.0.1.0/25', '10.0.1.1'), 126);
  t.equal(usableAddresses('10.0.1.0/24', '10.0.1.128/25', '10.0.1.1'), 127);
  t.equal(usableAddresses('10.0.1.0/30', undefined, '10.0.1.1'), 1);
});

t.test('serial allocation: after last, wrapping, skipping gateway, ends and in-use', async (t) => {
  const s = '10.0.1.0/24';
  const none = new Set<string>();
  t.equal(allocateAddress(s, undefined, '10.0.1.1', none), '10.0.1.2', 'first after the gateway');
  t.equal(allocateAddress(s, undefined, '10.0.1.1', none, '10.0.1.2'), '10.0.1.3');
  t.equal(
    allocateAddress(s, undefined, '10.0.1.1', none, '10.0.1.3'),
    '10.0.1.4',
    'a freed .2 is not reused before the end is reached',
  );
  t.equal(allocateAddress(s, undefined, '10.0.1.1', none, '10.0.1.254'), '10.0.1.2', 'wraps');
  t.equal(
    allocateAddress(s, undefined, '10.0.1.1', new Set(['10.0.1.2', '10.0.1.3']), '10.0.1.253'),
    '10.0.1.254',
  );
  t.equal(
    allocateAddress(
      s,
      undefined,
      '10.0.1.1',
      new Set(['10.0.1.254', '10.0.1.2', '10.0.1.3']),
      '10.0.1.200',
    ),
    '10.0.1.201',
  );
  t.equal(
    allocateAddress(
      s,
      undefined,
      '10.0.1.1',
      new Set(['10.0.1.254', '10.0.1.2', '10.0.1.3']),
      '10.0.1.253',
    ),
    '10.0.1.4',
    'wrap skips .255, .0, gateway .1 and in-use .254 .2 .3',
  );
  t.equal(
    allocateAddress(s, undefined, '10.0.1.254', none, '10.0.1.253'),
    '10.0.1.1',
    'gateway at the top',
  );
  t.equal(
    allocateAddress(s, undefined, '10.0.1.1', none, '192.168.0.9'),
    '10.0.1.2',
    'foreign last',
  );
  // ip range: only addresses inside it, wrapping inside it.
  t.equal(allocateAddress(s, '10.0.1.128/25', '10.0.1.1', none), '10.0.1.128');
  t.equal(allocateAddress(s, '10.0.1.128/25', '10.0.1.1', none, '10.0.1.254'), '10.0.1.128');
  t.equal(allocateAddress(s, '10.0.1.0/25', '10.0.1.1', none, '10.0.1.127'), '10.0.1.2');
  t.equal(
    allocateAddress(s, '10.0.1.64/26', '10.0.1.1', new Set(['10.0.1.65']), '10.0.1.127'),
    '10.0.1.64',
  );
});

t.test('serial allocation walks the whole subnet once before reusing anything', async (t) => {
  const s = '10.0.1.0/24';
  const used = new Set<string>();
  let last: string | undefined;
  for (let i = 0; i < 253; i++) {
    const a = allocateAddress(s, undefined, '10.0.1.1', used, last);
    if (used.has(a)) t.fail(`${a} handed out twice`);
    used.add(a);
    last = a;
  }
  t.equal(used.size, 253, 'every usable address once');
  t.notOk(used.has('10.0.1.0') || used.has('10.0.1.1') || used.has('10.0.1.255'));
  try {
    allocateAddress(s, undefined, '10.0.1.1', used, last);
    t.fail('no error');
  } catch (e) {
    t.equal((e as MeshError).code, 'EEXHAUSTED');
    t.equal((e as Error).message, 'no free address in 10.0.1.0/24 (254 in use)');
  }
  used.delete('10.0.1.77');
  t.equal(allocateAddress(s, undefined, '10.0.1.1', used, last), '10.0.1.77', 'the one freed');
  try {
    allocateAddress(s, '10.0.1.0/30', '10.0.1.1', new Set(['10.0.1.2', '10.0.1.3']));
    t.fail('no error');
  } catch (e) {
    t.equal(
      (e as Error).message,
      'no free address in range 10.0.1.0/30 of 10.0.1.0/24 (3 in use)',
      'the gateway counts',
    );
  }
});

t.test(
  'a /8 with 50,000 addresses in use allocates at once (bounded by what is taken)',
  async (t) => {
    const used = new Set<string>();
    for (let i = 2; i < 50_000; i++) used.add(formatIpv4(0x0a000000 + i));
    const t0 = process.hrtime.bigint();
    t.equal(
      allocateAddress('10.0.0.0/8', undefined, '10.0.0.1', used),
      formatIpv4(0x0a000000 + 50_000),
    );
    t.equal(
      allocateAddress('10.0.0.0/8', undefined, '10.0.0.1', used, '10.255.255.254'),
      formatIpv4(0x0a000000 + 50_000),
      'wraps past the in-use run',
    );
    t.ok(Number(process.hrtime.bigint() - t0) / 1e6 < 2000, 'fast');
  },
);

t.test('allocateVni: lowest free from 4096, gaps filled, exhaustion', async (t) => {
  t.equal(allocateVni([]), 4096);
  t.equal(allocateVni([4096, 4097, 4099]), 4098, 'gap');
  t.equal(allocateVni([4099, 4096, 4097, 4098]), 4100, 'unsorted');
  t.equal(allocateVni([0, 1, 4095, 4097]), 4096, 'values below the range ignored');
  t.equal(allocateVni([4096, 4096, 4097]), 4098, 'duplicates tolerated');
  t.equal(allocateVni([10, 11], 10, 12), 12);
  t.equal(
    code(() => allocateVni([10, 11, 12], 10, 12)),
    'EEXHAUSTED',
  );
  t.throws(() => allocateVni([10, 11, 12], 10, 12), /no free VNI in 10-12 \(3 networks hold one\)/);
  t.equal(allocateVni([0xfffffe], 0xfffffe), 0xffffff, 'the top VNI is 2^24-1');
  t.equal(
    code(() => allocateVni([0xfffffe, 0xffffff], 0xfffffe)),
    'EEXHAUSTED',
  );
});
