/**
 * IPv4 address management for overlay networks: CIDR arithmetic, the default pool (10.0.0.0/8 in
 * /24s, less 10.255.0.0/16 which every node's local gateway bridge uses), checks of user
 * `--subnet`/`--gateway`/`--ip-range`, serial address allocation and the VNI allocator.
 *
 * Pure: no clock, no randomness, no I/O. Addresses are handled as unsigned 32-bit numbers,
 * parsed strictly (four decimal parts, no shorthand); ipaddr.js recognises IPv6 for messages.
 * Errors are MeshErrors whose message is the detail only; callers prefix `<op> <object>: `.
 *
 * May import ipaddr.js and src/util/errors.ts.
 */

import ipaddr from 'ipaddr.js';
import { MeshError } from '../../util/errors.js';

/** Where subnets come from when a network is created without `--subnet` (DESIGN.md contracts). */
export const DEFAULT_POOL = '10.0.0.0/8';
/** Size of the subnets cut from the default pool. */
export const DEFAULT_SUBNET_PREFIX = 24;
/** Per-node local gateway bridge `mesh_gwbridge` (overlay-plan.md): never given to an overlay. */
export const GWBRIDGE_SUBNET = '10.255.0.0/16';
/** VNIs below 4096 are left to hand-made VXLANs, as Docker does (REFERENCE.md). */
export const VNI_MIN = 4096;
/** VXLAN network identifiers are 24 bits (RFC 7348 §5). */
export const VNI_MAX = 0xffffff;
/** Largest subnet accepted: a /8 is already 16 million addresses. */
export const MIN_PREFIX = 8;
/** Smallest subnet accepted: a /30 holds the gateway and one task. */
export const MAX_PREFIX = 30;

/** Blocks an overlay subnet may not touch: they mean something else to every host's stack. */
const SPECIAL: readonly (readonly [string, string])[] = [
  ['0.0.0.0/8', 'the "this network" block (RFC 1122)'],
  ['127.0.0.0/8', 'loopback'],
  ['169.254.0.0/16', 'link-local (RFC 3927)'],
  ['224.0.0.0/4', 'multicast'],
  ['240.0.0.0/4', 'reserved (RFC 1112) and broadcast'],
];

export interface Cidr {
  /** Network address as an unsigned 32-bit number. */
  readonly base: number;
  readonly prefix: number;
}

const usage = (m: string): MeshError => new MeshError('EUSAGE', m);

const DOTTED =
  /^(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})$/;

/**
 * `10.0.1.5` → 0x0a000105; throws EUSAGE naming `what` unless `s` is four decimal parts without
 * leading zeros (`010.0.0.1` means octal to inet_aton: refuse it rather than guess). This regular
 * expression accepts exactly what ipaddr.js's isValidFourPartDecimal accepts (checked by a test)
 * at a tenth of its cost, which matters when a network has thousands of tasks.
 */
export function parseIpv4(s: string, what = 'address'): number {
  const m = typeof s === 'string' ? DOTTED.exec(s) : null;
  if (m !== null) {
    const a = Number(m[1]);
    const b = Number(m[2]);
    const c = Number(m[3]);
    const d = Number(m[4]);
    if (a <= 255 && b <= 255 && c <= 255 && d <= 255)
      return ((a << 24) | (b << 16) | (c << 8) | d) >>> 0;
  }
  throw usage(
    typeof s === 'string' && ipaddr.IPv6.isValid(s)
      ? `${what} ${s}: IPv6 is not supported yet; give an IPv4 address`
      : `${what} ${String(s)}: not an IPv4 address (expected four decimal parts, e.g. 10.0.1.1)`,
  );
}

/** Whether `s` is an IPv4 address as parseIpv4 accepts it. */
export function isIpv4(s: string): boolean {
  const m = DOTTED.exec(s);
  return m !== null && m.slice(1).every((x) => Number(x) <= 255);
}

export function formatIpv4(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/**
 * Strict CIDR: the address must be the network address (`10.0.1.5/24` is refused with the
 * intended `10.0.1.0/24` suggested), so a stored subnet always has one spelling.
 */
export function parseCidr(s: string, what = 'subnet'): Cidr {
  const parts = typeof s === 'string' ? s.split('/') : [];
  const p = parts[1];
  if (parts.length !== 2 || p === undefined || !/^(?:[0-9]|[12][0-9]|3[0-2])$/.test(p)) {
    const v6 = typeof s === 'string' && s.includes(':');
    throw usage(
      v6
        ? `${what} ${s}: IPv6 is not supported yet; give an IPv4 CIDR`
        : `${what} ${String(s)}: not an IPv4 CIDR (expected ADDRESS/PREFIX, e.g. 10.0.1.0/24)`,
    );
  }
  const prefix = Number(p);
  const addr = parseIpv4(parts[0]!, what);
  const base = (addr & maskOf(prefix)) >>> 0;
  if (base !== addr) {
    throw usage(
      `${what} ${s}: ${parts[0]} is not the network address of a /${prefix}; did you mean ${formatIpv4(base)}/${prefix}?`,
    );
  }
  return { base, prefix };
}

export function formatCidr(c: Cidr): string {
  return `${formatIpv4(c.base)}/${c.prefix}`;
}

/** Last address of the block (its broadcast address). */
export function cidrLast(c: Cidr): number {
  return (c.base | ~maskOf(c.prefix)) >>> 0;
}

export function cidrSize(c: Cidr): number {
  return 2 ** (32 - c.prefix);
}

export function cidrHas(c: Cidr, ip: number): boolean {
  return ip >= c.base && ip <= cidrLast(c);
}

/** Whether `inner` lies entirely inside `outer`. */
export function cidrContains(outer: Cidr, inner: Cidr): boolean {
  return inner.base >= outer.base && cidrLast(inner) <= cidrLast(outer);
}

export function cidrOverlaps(a: Cidr, b: Cidr): boolean {
  return a.base <= cidrLast(b) && b.base <= cidrLast(a);
}

const POOL = parseCidr(DEFAULT_POOL);
const GWBRIDGE = parseCidr(GWBRIDGE_SUBNET);

/**
 * The lowest /24 of the default pool that overlaps none of `used` (any CIDRs, inside the pool or
 * not) nor the gateway bridge's block. Sweeps the sorted blocks once: O(n log n), whatever the
 * pool's size. Throws EEXHAUSTED when none is left.
 */
export function allocateSubnet(used: readonly string[]): string {
  const blocks = [...used.map((u) => parseCidr(u)), GWBRIDGE]
    .map((c) => [c.base, cidrLast(c)] as const)
    .sort((a, b) => a[0] - b[0]);
  const step = cidrSize({ base: 0, prefix: DEFAULT_SUBNET_PREFIX });
  const poolEnd = cidrLast(POOL);
  let cand = POOL.base;
  for (const [start, end] of blocks) {
    if (cand + step - 1 < start) break;
    if (end >= cand) cand = Math.ceil((end + 1) / step) * step;
    if (cand > poolEnd) break;
  }
  if (cand + step - 1 > poolEnd) {
    throw new MeshError(
      'EEXHAUSTED',
      `the default pool ${DEFAULT_POOL} has no free /${DEFAULT_SUBNET_PREFIX} left (${used.length} subnets in use, ${GWBRIDGE_SUBNET} is reserved for the local gateway bridge); remove a network, or give --subnet outside the pool`,
    );
  }
  return formatCidr({ base: cand, prefix: DEFAULT_SUBNET_PREFIX });
}

/** A subnet held by an existing network, for overlap messages. */
export interface SubnetOwner {
  readonly subnet: string;
  /** Name of the network holding it. */
  readonly network: string;
}

/**
 * Check a user `--subnet`: strict CIDR, /8 to /30, clear of special-purpose blocks, of the
 * gateway bridge's 10.255.0.0/16 and of every subnet in `others` (saying which one overlaps).
 */
export function validateSubnet(subnet: string, others: readonly SubnetOwner[]): Cidr {
  const c = parseCidr(subnet, 'subnet');
  if (c.prefix < MIN_PREFIX || c.prefix > MAX_PREFIX) {
    throw usage(
      `subnet ${subnet}: the prefix must be /${MIN_PREFIX} to /${MAX_PREFIX} (a /${MAX_PREFIX} holds the gateway and one task)`,
    );
  }
  for (const [block, what] of SPECIAL) {
    if (cidrOverlaps(c, parseCidr(block))) {
      throw usage(`subnet ${subnet}: overlaps ${block}, ${what}; pick another --subnet`);
    }
  }
  if (cidrOverlaps(c, GWBRIDGE)) {
    throw usage(
      `subnet ${subnet}: overlaps ${GWBRIDGE_SUBNET}, reserved for the nodes' local gateway bridge (mesh_gwbridge); pick another --subnet`,
    );
  }
  for (const o of others) {
    if (cidrOverlaps(c, parseCidr(o.subnet))) {
      throw new MeshError(
        'ECONFLICT',
        `subnet ${subnet}: overlaps ${o.subnet} of network ${o.network}; pick another --subnet`,
      );
    }
  }
  return c;
}

/** `--gateway`: inside the subnet, neither its network nor its broadcast address; default .1. */
export function validateGateway(subnet: string, gateway?: string): string {
  const c = parseCidr(subnet);
  if (gateway === undefined || gateway === '') return formatIpv4(c.base + 1);
  const g = parseIpv4(gateway, 'gateway');
  if (!cidrHas(c, g)) throw usage(`gateway ${gateway}: not inside subnet ${subnet}`);
  if (g === c.base || g === cidrLast(c)) {
    throw usage(
      `gateway ${gateway}: the ${g === c.base ? 'network' : 'broadcast'} address of ${subnet} cannot be a gateway; pick an address between them`,
    );
  }
  return formatIpv4(g);
}

/** `--ip-range`: a CIDR inside the subnet with at least one address for tasks. */
export function validateIpRange(subnet: string, ipRange: string, gateway: string): string {
  const c = parseCidr(subnet);
  const r = parseCidr(ipRange, 'ip range');
  if (!cidrContains(c, r)) throw usage(`ip range ${ipRange}: not inside subnet ${subnet}`);
  if (capacity(c, r, parseIpv4(gateway, 'gateway')) === 0) {
    throw usage(
      `ip range ${ipRange}: holds no address for tasks in ${subnet} (network, broadcast and gateway ${gateway} excluded); give a larger range`,
    );
  }
  return ipRange;
}

/** Addresses of `range` (inside `subnet`) a task may get: all but network, broadcast, gateway. */
function capacity(subnet: Cidr, range: Cidr, gateway: number): number {
  let n = cidrSize(range);
  for (const x of new Set([subnet.base, cidrLast(subnet), gateway])) if (cidrHas(range, x)) n--;
  return n;
}

/** How many task addresses `subnet` (or its `ipRange`) offers. */
export function usableAddresses(
  subnet: string,
  ipRange: string | undefined,
  gateway: string,
): number {
  const c = parseCidr(subnet);
  return capacity(c, ipRange === undefined ? c : parseCidr(ipRange), parseIpv4(gateway));
}

/**
 * Serial allocation: the first address after `last` (wrapping to the start of the range) that is
 * not the subnet's network or broadcast address, not the gateway and not in `inUse`. Serial rather
 * than lowest-free, so a freed address is handed out again as late as possible: peers' ARP/FDB
 * entries and DNS answers for the old holder have time to go. Addresses come from `ipRange` when
 * given, else the whole subnet. Throws EEXHAUSTED when every address is taken; the loop is
 * bounded by the number of addresses taken, never by the subnet's size.
 */
export function allocateAddress(
  subnet: string,
  ipRange: string | undefined,
  gateway: string,
  inUse: ReadonlySet<string>,
  last?: string,
): string {
  const c = parseCidr(subnet);
  const r = ipRange === undefined ? c : parseCidr(ipRange, 'ip range');
  const gw = parseIpv4(gateway, 'gateway');
  const lo = r.base;
  const hi = cidrLast(r);
  const blocked = new Set<number>([c.base, cidrLast(c), gw]);
  let taken = 0;
  for (const a of inUse) {
    const n = parseIpv4(a);
    if (n >= lo && n <= hi && !blocked.has(n)) {
      blocked.add(n);
      taken++;
    }
  }
  const free = capacity(c, r, gw) - taken;
  if (free <= 0) {
    const where = ipRange === undefined ? subnet : `range ${ipRange} of ${subnet}`;
    const gwIn = gw >= lo && gw <= hi ? 1 : 0;
    throw new MeshError('EEXHAUSTED', `no free address in ${where} (${taken + gwIn} in use)`);
  }
  const l = last === undefined ? undefined : parseIpv4(last);
  let cand = l !== undefined && l >= lo && l < hi ? l + 1 : lo;
  // At most `blocked.size` candidates are refused before a free one: the bound is a guard.
  for (let i = 0; i <= blocked.size; i++) {
    if (!blocked.has(cand)) return formatIpv4(cand);
    cand = cand >= hi ? lo : cand + 1;
  }
  throw new Error('invariant violated: allocateAddress found no free address it had counted');
}

/**
 * Lowest VNI in [min, max] not in `used`. Reuses a freed VNI at once (the brief's choice); the
 * agent names kernel objects by VNI, so it must finish removing a network before reusing the VNI.
 */
export function allocateVni(used: Iterable<number>, min = VNI_MIN, max = VNI_MAX): number {
  const sorted = [...new Set(used)].filter((v) => v >= min && v <= max).sort((a, b) => a - b);
  let cand = min;
  for (const v of sorted) {
    if (v > cand) break;
    if (v === cand) cand++;
  }
  if (cand > max) {
    throw new MeshError(
      'EEXHAUSTED',
      `no free VNI in ${min}-${max} (${sorted.length} networks hold one); remove a network`,
    );
  }
  return cand;
}
