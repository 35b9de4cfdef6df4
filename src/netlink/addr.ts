/**
 * Interface addresses (IPv4 and IPv6) over rtnetlink: add, delete, list.
 * May import: ./nl, ./rt, ./socket, ./link, util/.
 */
import {
  Attrs,
  NLM_F_CREATE,
  NLM_F_DUMP,
  NLM_F_EXCL,
  NLM_F_REPLACE,
  NLM_F_REQUEST,
  NlWriter,
} from './nl.js';
import {
  AF_INET,
  AF_UNSPEC,
  IFA_ADDRESS,
  IFA_BROADCAST,
  IFA_F_NODAD,
  IFA_F_NOPREFIXROUTE,
  IFA_FLAGS,
  IFA_LABEL,
  IFA_LOCAL,
  RTM_DELADDR,
  RTM_GETADDR,
  RTM_NEWADDR,
  RT_SCOPE_UNIVERSE,
  formatIp,
  ifaddrmsg,
  parseCidr,
} from './rt.js';
import { linkGet } from './link.js';
import { isErrno, type NetlinkSocket } from './socket.js';

export interface Addr {
  /** Interface index. */
  index: number;
  family: number;
  /** The local address (IFA_LOCAL, or IFA_ADDRESS for IPv6). */
  address: string;
  prefixLen: number;
  /** `10.0.0.1/24`. */
  cidr: string;
  scope: number;
  flags: number;
  label?: string;
}

export interface AddrOptions {
  /** RT_SCOPE_*: 0 global (default), 253 link, 254 host. */
  scope?: number;
  /** IFA_LABEL (IPv4 only), e.g. `br0:vip`. */
  label?: string;
  /** Do not add the prefix route (IFA_F_NOPREFIXROUTE). */
  noPrefixRoute?: boolean;
  /** Skip IPv6 duplicate address detection (what we want on namespaced overlays). @default true for IPv6 */
  noDad?: boolean;
  /** Replace an existing address instead of failing with EEXIST. */
  replace?: boolean;
}

function addrMsg(
  type: number,
  flags: number,
  h: NetlinkSocket,
  dev: number | string,
  cidr: string,
  o: AddrOptions,
): Buffer {
  const p = parseCidr(cidr, 'address');
  const index = typeof dev === 'number' ? dev : linkGet(h, dev).index;
  let f = 0;
  if (o.noPrefixRoute) f |= IFA_F_NOPREFIXROUTE;
  if (p.family !== AF_INET && (o.noDad ?? true)) f |= IFA_F_NODAD;
  const w = new NlWriter(type, flags);
  w.raw(ifaddrmsg(p.family, p.prefixLen, f, o.scope ?? RT_SCOPE_UNIVERSE, index));
  w.bytes(IFA_LOCAL, p.bytes);
  w.bytes(IFA_ADDRESS, p.bytes);
  if (p.family === AF_INET && p.prefixLen < 31) {
    // Broadcast = address with host bits set, as `ip addr add … brd +` does.
    const b = Buffer.from(p.bytes);
    const v =
      (b.readUInt32BE(0) | (p.prefixLen === 0 ? 0xffffffff : 0xffffffff >>> p.prefixLen)) >>> 0;
    b.writeUInt32BE(v, 0);
    w.bytes(IFA_BROADCAST, b);
  }
  if (o.label !== undefined) w.str(IFA_LABEL, o.label);
  if (f > 0xff) w.u32(IFA_FLAGS, f);
  return w.finish();
}

/** Equivalent to: `ip addr add CIDR dev DEV [scope S] [label L] [noprefixroute] [nodad]`. */
export function addrAdd(
  h: NetlinkSocket,
  dev: number | string,
  cidr: string,
  o: AddrOptions = {},
): void {
  const flags = NLM_F_REQUEST | NLM_F_CREATE | (o.replace ? NLM_F_REPLACE : NLM_F_EXCL);
  h.request(addrMsg(RTM_NEWADDR, flags, h, dev, cidr, o), {
    op: 'add',
    object: `address ${cidr} dev ${dev}`,
    hint: (e) => (e === 17 ? 'the address is already on that device' : undefined),
  });
}

/** Equivalent to: `ip addr del CIDR dev DEV`. With `ifExists`, a missing address is not an error. */
export function addrDel(
  h: NetlinkSocket,
  dev: number | string,
  cidr: string,
  o: { ifExists?: boolean } = {},
): void {
  try {
    h.request(addrMsg(RTM_DELADDR, NLM_F_REQUEST, h, dev, cidr, {}), {
      op: 'del',
      object: `address ${cidr} dev ${dev}`,
    });
  } catch (e) {
    if (o.ifExists && isErrno(e, 'EADDRNOTAVAIL')) return;
    throw e;
  }
}

/** Equivalent to: `ip addr show [dev DEV]` (family: AF_INET/AF_INET6, default both). */
export function addrList(
  h: NetlinkSocket,
  filter: { dev?: number | string; family?: number } = {},
): Addr[] {
  const index =
    filter.dev === undefined
      ? 0
      : typeof filter.dev === 'number'
        ? filter.dev
        : linkGet(h, filter.dev).index;
  const w = new NlWriter(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP);
  // With strict checking on, the kernel filters by ifa_index itself.
  w.raw(ifaddrmsg(filter.family ?? AF_UNSPEC, 0, 0, 0, index));
  const out: Addr[] = [];
  for (const m of h.dump(w.finish(), { op: 'list', object: 'addresses' })) {
    if (m.type !== RTM_NEWADDR) continue;
    const p = m.payload;
    const a = new Attrs(p, 8);
    const idx = p.readUInt32LE(4);
    if (index !== 0 && idx !== index) continue;
    const raw = a.get(IFA_LOCAL) ?? a.get(IFA_ADDRESS);
    if (!raw) continue;
    const address = formatIp(raw);
    const prefixLen = p.readUInt8(1);
    const addr: Addr = {
      index: idx,
      family: p.readUInt8(0),
      address,
      prefixLen,
      cidr: `${address}/${prefixLen}`,
      scope: p.readUInt8(3),
      flags: a.u32(IFA_FLAGS) ?? p.readUInt8(2),
    };
    const label = a.str(IFA_LABEL);
    if (label !== undefined) addr.label = label;
    out.push(addr);
  }
  return out;
}
