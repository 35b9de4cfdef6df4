/**
 * rtnetlink constants and fixed family headers (uapi linux/rtnetlink.h, if_link.h, if_addr.h,
 * neighbour.h), plus address helpers. Values are on the wire: do not renumber. Pure.
 * May import: ipaddr.js, ./nl, util/.
 */
import ipaddr from 'ipaddr.js';
import { MeshError } from '../util/errors.js';

export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_BRIDGE = 7;
export const AF_INET6 = 10;

export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_SETLINK = 19;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;
export const RTM_NEWROUTE = 24;
export const RTM_DELROUTE = 25;
export const RTM_GETROUTE = 26;
export const RTM_NEWNEIGH = 28;
export const RTM_DELNEIGH = 29;
export const RTM_GETNEIGH = 30;

// net/if.h
export const IFF_UP = 0x1;
export const IFF_LOOPBACK = 0x8;
export const IFF_LOWER_UP = 0x10000;

// IFLA_* (if_link.h)
export const IFLA_ADDRESS = 1;
export const IFLA_BROADCAST = 2;
export const IFLA_IFNAME = 3;
export const IFLA_MTU = 4;
export const IFLA_LINK = 5;
export const IFLA_MASTER = 10;
export const IFLA_TXQLEN = 13;
export const IFLA_OPERSTATE = 16;
export const IFLA_LINKINFO = 18;
export const IFLA_NET_NS_PID = 19;
export const IFLA_IFALIAS = 20;
export const IFLA_NET_NS_FD = 28;
export const IFLA_EXT_MASK = 29;
export const IFLA_LINK_NETNSID = 37;
export const IFLA_INFO_KIND = 1;
export const IFLA_INFO_DATA = 2;
export const IFLA_INFO_SLAVE_KIND = 4;
export const VETH_INFO_PEER = 1;

// IFLA_VXLAN_* (if_link.h)
export const IFLA_VXLAN_ID = 1;
export const IFLA_VXLAN_GROUP = 2;
export const IFLA_VXLAN_LINK = 3;
export const IFLA_VXLAN_LOCAL = 4;
export const IFLA_VXLAN_TTL = 5;
export const IFLA_VXLAN_TOS = 6;
export const IFLA_VXLAN_LEARNING = 7;
export const IFLA_VXLAN_AGEING = 8;
export const IFLA_VXLAN_LIMIT = 9;
export const IFLA_VXLAN_PORT_RANGE = 10;
export const IFLA_VXLAN_PROXY = 11;
export const IFLA_VXLAN_RSC = 12;
export const IFLA_VXLAN_L2MISS = 13;
export const IFLA_VXLAN_L3MISS = 14;
export const IFLA_VXLAN_PORT = 15;
export const IFLA_VXLAN_GROUP6 = 16;
export const IFLA_VXLAN_LOCAL6 = 17;
export const IFLA_VXLAN_UDP_CSUM = 18;

// IFLA_BR_* (if_link.h), the few we set.
export const IFLA_BR_FORWARD_DELAY = 1;
export const IFLA_BR_STP_STATE = 5;
export const IFLA_BR_VLAN_FILTERING = 7;
export const IFLA_BR_MCAST_SNOOPING = 23;

// operstate (RFC 2863), IF_OPER_*.
export const OPERSTATES = [
  'unknown',
  'notpresent',
  'down',
  'lowerlayerdown',
  'testing',
  'dormant',
  'up',
] as const;

// IFA_* (if_addr.h)
export const IFA_ADDRESS = 1;
export const IFA_LOCAL = 2;
export const IFA_LABEL = 3;
export const IFA_BROADCAST = 4;
export const IFA_FLAGS = 8;
export const IFA_F_NODAD = 0x02;
export const IFA_F_PERMANENT = 0x80;
export const IFA_F_NOPREFIXROUTE = 0x200;

// RTA_* and rtmsg values (rtnetlink.h)
export const RTA_DST = 1;
export const RTA_SRC = 2;
export const RTA_OIF = 4;
export const RTA_GATEWAY = 5;
export const RTA_PRIORITY = 6;
export const RTA_PREFSRC = 7;
export const RTA_TABLE = 15;
export const RT_TABLE_UNSPEC = 0;
export const RT_TABLE_MAIN = 254;
export const RT_TABLE_LOCAL = 255;
export const RTPROT_BOOT = 3;
export const RTPROT_STATIC = 4;
export const RT_SCOPE_UNIVERSE = 0;
export const RT_SCOPE_LINK = 253;
export const RT_SCOPE_HOST = 254;
export const RT_SCOPE_NOWHERE = 255;
export const RTN_UNICAST = 1;
export const RTN_LOCAL = 2;
export const RTN_BLACKHOLE = 6;
export const RTN_UNREACHABLE = 7;

// NDA_*, NUD_*, NTF_* (neighbour.h)
export const NDA_DST = 1;
export const NDA_LLADDR = 2;
export const NDA_VLAN = 5;
export const NDA_PORT = 6;
export const NDA_VNI = 7;
export const NDA_IFINDEX = 8;
export const NDA_MASTER = 9;
export const NUD_INCOMPLETE = 0x01;
export const NUD_REACHABLE = 0x02;
export const NUD_STALE = 0x04;
export const NUD_DELAY = 0x08;
export const NUD_PROBE = 0x10;
export const NUD_FAILED = 0x20;
export const NUD_NOARP = 0x40;
export const NUD_PERMANENT = 0x80;
export const NTF_SELF = 0x02;
export const NTF_MASTER = 0x04;
export const NTF_EXT_LEARNED = 0x10;

/** struct ifinfomsg (16 bytes). */
export function ifinfomsg(family: number, index: number, flags = 0, change = 0): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt8(family, 0);
  b.writeInt32LE(index, 4);
  b.writeUInt32LE(flags >>> 0, 8);
  b.writeUInt32LE(change >>> 0, 12);
  return b;
}

/** struct ifaddrmsg (8 bytes). */
export function ifaddrmsg(
  family: number,
  prefixLen: number,
  flags: number,
  scope: number,
  index: number,
): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt8(family, 0);
  b.writeUInt8(prefixLen, 1);
  b.writeUInt8(flags & 0xff, 2);
  b.writeUInt8(scope, 3);
  b.writeUInt32LE(index, 4);
  return b;
}

/** struct rtmsg (12 bytes). */
export function rtmsg(r: {
  family: number;
  dstLen?: number;
  table?: number;
  protocol?: number;
  scope?: number;
  type?: number;
}): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(r.family, 0);
  b.writeUInt8(r.dstLen ?? 0, 1);
  b.writeUInt8((r.table ?? 0) < 256 ? (r.table ?? 0) : RT_TABLE_UNSPEC, 4);
  b.writeUInt8(r.protocol ?? 0, 5);
  b.writeUInt8(r.scope ?? 0, 6);
  b.writeUInt8(r.type ?? 0, 7);
  return b;
}

/** struct ndmsg (12 bytes). */
export function ndmsg(family: number, index: number, state = 0, flags = 0, type = 0): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(family, 0);
  b.writeInt32LE(index, 4);
  b.writeUInt16LE(state, 8);
  b.writeUInt8(flags, 10);
  b.writeUInt8(type, 11);
  return b;
}

/** A parsed IP address as bytes with its family. */
export interface IpBytes {
  family: typeof AF_INET | typeof AF_INET6;
  bytes: Buffer;
}

/**
 * Dotted-quad IPv4 to 4 bytes, or undefined if `s` is not exactly that (no leading zeros, no
 * inet_aton short forms). Hand-rolled because the overlay programs addresses by the ten
 * thousand (see bench/netlink) and ipaddr.js's general parser costs ~2 µs a call.
 */
function parseV4(s: string): Buffer | undefined {
  const out = Buffer.allocUnsafe(4);
  let part = 0;
  let n = 0;
  let digits = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || part === 3) return undefined;
      out[part++] = n;
      n = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && n === 0) return undefined; // leading zero
      n = n * 10 + (c - 48);
      if (n > 255 || ++digits > 3) return undefined;
    } else {
      return undefined;
    }
  }
  if (part !== 3 || digits === 0) return undefined;
  out[3] = n;
  return out;
}

/**
 * Parse an IPv4 (dotted quad only: inet_aton forms such as `10.0.0` are refused, users mean
 * them as typos) or IPv6 address; IPv4-mapped IPv6 becomes IPv4.
 */
export function parseIp(s: string, what = 'address'): IpBytes {
  const v4 = parseV4(s);
  if (v4) return { family: AF_INET, bytes: v4 };
  if (!s.includes(':') || !ipaddr.IPv6.isValid(s)) {
    throw new MeshError('EUSAGE', `parse ${what} ${JSON.stringify(s)}: not an IP address`);
  }
  const a = ipaddr.IPv6.parse(s);
  if (a.isIPv4MappedAddress())
    return { family: AF_INET, bytes: Buffer.from(a.toIPv4Address().toByteArray()) };
  return { family: AF_INET6, bytes: Buffer.from(a.toByteArray()) };
}

/** Parse `10.0.0.1/24`; a bare address gets the full-length prefix. */
export function parseCidr(s: string, what = 'prefix'): IpBytes & { prefixLen: number } {
  const slash = s.indexOf('/');
  const ip = parseIp(slash < 0 ? s : s.slice(0, slash), what);
  const max = ip.family === AF_INET ? 32 : 128;
  const len = slash < 0 ? max : Number(s.slice(slash + 1));
  if (
    !Number.isInteger(len) ||
    len < 0 ||
    len > max ||
    (slash >= 0 && !/^\d+$/.test(s.slice(slash + 1)))
  ) {
    throw new MeshError(
      'EUSAGE',
      `parse ${what} ${JSON.stringify(s)}: prefix length must be 0..${max}`,
    );
  }
  return { ...ip, prefixLen: len };
}

export function formatIp(b: Uint8Array): string {
  return ipaddr.fromByteArray(Array.from(b)).toString();
}

function hexVal(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  const l = c | 0x20; // ASCII lower-case
  return l >= 97 && l <= 102 ? l - 87 : -1;
}

/** `02:42:0a:00:00:05` to 6 bytes (hand-rolled for the same reason as parseV4). */
export function parseMac(s: string): Buffer {
  const out = Buffer.allocUnsafe(6);
  let ok = s.length === 17;
  for (let i = 0; ok && i < 6; i++) {
    const hi = hexVal(s.charCodeAt(i * 3));
    const lo = hexVal(s.charCodeAt(i * 3 + 1));
    if (hi < 0 || lo < 0 || (i < 5 && s.charCodeAt(i * 3 + 2) !== 58)) ok = false;
    else out[i] = (hi << 4) | lo;
  }
  if (!ok) {
    throw new MeshError(
      'EUSAGE',
      `parse mac ${JSON.stringify(s)}: want six hex octets like 02:42:0a:00:00:02`,
    );
  }
  return out;
}

export function formatMac(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(':');
}
