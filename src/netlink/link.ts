/**
 * Network links over rtnetlink: veth, bridge and vxlan creation, deletion, listing and the
 * settings Mesh changes (up/down, mtu, master, namespace, name, address).
 * Every function takes a NETLINK_ROUTE socket bound to the namespace to act in.
 * May import: ./nl, ./rt, ./socket, ./netns (types), util/.
 */
import { MeshError } from '../util/errors.js';
import type { Netns } from './netns.js';
import {
  Attrs,
  NLM_F_ACK,
  NLM_F_CREATE,
  NLM_F_DUMP,
  NLM_F_EXCL,
  NLM_F_REQUEST,
  NlWriter,
  type NlMsg,
} from './nl.js';
import {
  AF_INET,
  AF_UNSPEC,
  IFF_LOWER_UP,
  IFF_UP,
  IFLA_ADDRESS,
  IFLA_BR_MCAST_SNOOPING,
  IFLA_BR_STP_STATE,
  IFLA_IFALIAS,
  IFLA_IFNAME,
  IFLA_INFO_DATA,
  IFLA_INFO_KIND,
  IFLA_INFO_SLAVE_KIND,
  IFLA_LINK,
  IFLA_LINKINFO,
  IFLA_LINK_NETNSID,
  IFLA_MASTER,
  IFLA_MTU,
  IFLA_NET_NS_FD,
  IFLA_OPERSTATE,
  IFLA_TXQLEN,
  IFLA_VXLAN_AGEING,
  IFLA_VXLAN_GROUP,
  IFLA_VXLAN_ID,
  IFLA_VXLAN_L2MISS,
  IFLA_VXLAN_L3MISS,
  IFLA_VXLAN_LEARNING,
  IFLA_VXLAN_LINK,
  IFLA_VXLAN_LOCAL,
  IFLA_VXLAN_PORT,
  IFLA_VXLAN_PROXY,
  IFLA_VXLAN_TTL,
  IFLA_VXLAN_UDP_CSUM,
  OPERSTATES,
  RTM_DELLINK,
  RTM_GETLINK,
  RTM_NEWLINK,
  VETH_INFO_PEER,
  formatIp,
  formatMac,
  ifinfomsg,
  parseIp,
  parseMac,
} from './rt.js';
import { NetlinkError, isErrno, type NetlinkSocket, type OpDesc } from './socket.js';

/** Linux limit on interface names (IFNAMSIZ - 1). */
export const IFNAMSIZ_MAX = 15;
/** The IANA VXLAN port (RFC 7348); the kernel's own default is 8472. */
export const VXLAN_PORT = 4789;

/** A link as the kernel reports it. */
export interface Link {
  index: number;
  name: string;
  /** `veth`, `bridge`, `vxlan`, …; undefined for plain devices such as `lo`. */
  kind?: string;
  /** Kind of the master this link is enslaved to (`bridge`). */
  slaveKind?: string;
  mtu: number;
  /** IFF_* flags. */
  flags: number;
  /** Administratively up (IFF_UP). */
  up: boolean;
  /** Carrier present (IFF_LOWER_UP). */
  lowerUp: boolean;
  operstate: string;
  mac?: string;
  master?: number;
  /** IFLA_LINK: the peer's index for veth, the underlay for vxlan (in `linkNetnsId` if set). */
  parent?: number;
  linkNetnsId?: number;
  txqlen?: number;
  alias?: string;
  vxlan?: VxlanInfo;
}

export interface VxlanInfo {
  vni: number;
  port: number;
  local?: string;
  group?: string;
  /** Underlay device index. */
  dev?: number;
  learning: boolean;
  proxy: boolean;
  l2miss: boolean;
  l3miss: boolean;
  ttl: number;
  udpCsum: boolean;
  ageing?: number;
}

interface CommonSpec {
  name: string;
  mtu?: number;
  mac?: string;
  /** Master (bridge) by index or name. */
  master?: number | string;
  txqlen?: number;
  /** Bring the link up at creation. */
  up?: boolean;
  /** Create the link directly in this namespace (IFLA_NET_NS_FD). */
  netns?: Netns;
}

/** A veth pair; `up` applies to this end only, the peer starts down (as with iproute2). */
export interface VethSpec extends CommonSpec {
  kind: 'veth';
  peer: { name: string; mac?: string; mtu?: number; netns?: Netns };
}

export interface BridgeSpec extends CommonSpec {
  kind: 'bridge';
  /** Spanning tree; off by default (one bridge per network, no loops). */
  stp?: boolean;
  /** IGMP snooping. @default kernel default (on) */
  mcastSnooping?: boolean;
}

export interface VxlanSpec extends CommonSpec {
  kind: 'vxlan';
  /** VXLAN network identifier, 1..16777215. */
  vni: number;
  /** UDP destination port. @default 4789 */
  port?: number;
  /** Local VTEP address (source of encapsulated packets). */
  local?: string;
  /** Multicast group or remote VTEP; Mesh uses static FDB entries instead. */
  group?: string;
  /** Underlay device (index or name) for the UDP socket. */
  dev?: number | string;
  /** Learn remote MACs from traffic. Mesh programs FDB statically. @default false */
  learning?: boolean;
  /** Answer ARP from the neighbour table (ARP proxy). @default false */
  proxy?: boolean;
  /** Report FDB misses to user space. @default false */
  l2miss?: boolean;
  /** Report neighbour misses to user space. @default false */
  l3miss?: boolean;
  /** Outer TTL, 0 = inherit. @default 0 */
  ttl?: number;
  /** UDP checksum on outer IPv4 packets. @default false (the kernel's default) */
  udpCsum?: boolean;
}

export type LinkSpec = VethSpec | BridgeSpec | VxlanSpec;

/** Check a name against the kernel's rules before asking it (clearer error than EINVAL). */
export function checkIfname(name: string): void {
  if (
    name.length === 0 ||
    name.length > IFNAMSIZ_MAX ||
    /[\s/:]/.test(name) ||
    name === '.' ||
    name === '..'
  ) {
    throw new MeshError(
      'EUSAGE',
      `link name ${JSON.stringify(name)}: must be 1..${IFNAMSIZ_MAX} characters without spaces, '/' or ':'`,
    );
  }
}

function resolveIndex(h: NetlinkSocket, ref: number | string): number {
  return typeof ref === 'number' ? ref : linkGet(h, ref).index;
}

function writeCommon(w: NlWriter, h: NetlinkSocket, s: CommonSpec): void {
  w.str(IFLA_IFNAME, s.name);
  if (s.mtu !== undefined) w.u32(IFLA_MTU, s.mtu);
  if (s.mac !== undefined) w.bytes(IFLA_ADDRESS, parseMac(s.mac));
  if (s.txqlen !== undefined) w.u32(IFLA_TXQLEN, s.txqlen);
  if (s.master !== undefined) w.u32(IFLA_MASTER, resolveIndex(h, s.master));
  if (s.netns !== undefined) w.s32(IFLA_NET_NS_FD, s.netns.fd);
}

function addHint(spec: LinkSpec) {
  return (errno: number): string | undefined => {
    if (errno === 17)
      return `a link named ${spec.name} exists; delete it (\`ip link del ${spec.name}\`) or pick another name`;
    if (spec.kind === 'vxlan' && errno === 98) {
      return `another VXLAN already uses udp/${spec.port ?? VXLAN_PORT} with VNI ${spec.vni} or the port is taken`;
    }
    return undefined;
  };
}

/** Encode an RTM_NEWLINK that creates `spec` (for batching); see linkAdd. */
export function linkAddMsg(h: NetlinkSocket, spec: LinkSpec): Buffer {
  checkIfname(spec.name);
  const w = new NlWriter(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
  w.raw(ifinfomsg(AF_UNSPEC, 0, spec.up ? IFF_UP : 0, spec.up ? IFF_UP : 0));
  writeCommon(w, h, spec);
  w.nest(IFLA_LINKINFO, (li) => {
    li.str(IFLA_INFO_KIND, spec.kind);
    switch (spec.kind) {
      case 'veth':
        checkIfname(spec.peer.name);
        li.nest(IFLA_INFO_DATA, (d) =>
          d.nest(VETH_INFO_PEER, (p) => {
            // The peer is a whole ifinfomsg plus attributes, nested. It is never created up:
            // the kernel configures the peer before the first end exists, and opening a veth
            // without its other end fails with ENOTCONN. Bring it up afterwards.
            p.raw(ifinfomsg(AF_UNSPEC, 0));
            p.str(IFLA_IFNAME, spec.peer.name);
            if (spec.peer.mac !== undefined) p.bytes(IFLA_ADDRESS, parseMac(spec.peer.mac));
            if (spec.peer.mtu !== undefined) p.u32(IFLA_MTU, spec.peer.mtu);
            if (spec.peer.netns !== undefined) p.s32(IFLA_NET_NS_FD, spec.peer.netns.fd);
          }),
        );
        break;
      case 'bridge':
        li.nest(IFLA_INFO_DATA, (d) => {
          d.u32(IFLA_BR_STP_STATE, spec.stp ? 1 : 0);
          if (spec.mcastSnooping !== undefined)
            d.u8(IFLA_BR_MCAST_SNOOPING, spec.mcastSnooping ? 1 : 0);
        });
        break;
      case 'vxlan': {
        if (!Number.isInteger(spec.vni) || spec.vni < 1 || spec.vni > 0xffffff) {
          throw new MeshError(
            'EUSAGE',
            `add vxlan ${spec.name}: VNI ${spec.vni} out of range 1..16777215`,
          );
        }
        const dev = spec.dev === undefined ? undefined : resolveIndex(h, spec.dev);
        li.nest(IFLA_INFO_DATA, (d) => {
          d.u32(IFLA_VXLAN_ID, spec.vni);
          d.be16(IFLA_VXLAN_PORT, spec.port ?? VXLAN_PORT);
          if (spec.local !== undefined) {
            const ip = parseIp(spec.local, 'vxlan local');
            if (ip.family !== AF_INET)
              throw new MeshError(
                'EUSAGE',
                `add vxlan ${spec.name}: only IPv4 VTEPs are supported`,
              );
            d.bytes(IFLA_VXLAN_LOCAL, ip.bytes);
          }
          if (spec.group !== undefined)
            d.bytes(IFLA_VXLAN_GROUP, parseIp(spec.group, 'vxlan group').bytes);
          if (dev !== undefined) d.u32(IFLA_VXLAN_LINK, dev);
          d.u8(IFLA_VXLAN_LEARNING, spec.learning ? 1 : 0);
          d.u8(IFLA_VXLAN_PROXY, spec.proxy ? 1 : 0);
          d.u8(IFLA_VXLAN_L2MISS, spec.l2miss ? 1 : 0);
          d.u8(IFLA_VXLAN_L3MISS, spec.l3miss ? 1 : 0);
          d.u8(IFLA_VXLAN_TTL, spec.ttl ?? 0);
          d.u8(IFLA_VXLAN_UDP_CSUM, spec.udpCsum ? 1 : 0);
        });
        break;
      }
    }
  });
  return w.finish();
}

/**
 * Create a link. Fails with EEXIST if the name is taken.
 * Equivalent to: `ip link add NAME type veth peer name PEER`, `ip link add NAME type bridge`,
 * `ip link add NAME type vxlan id VNI dstport 4789 local IP dev DEV nolearning`.
 */
export function linkAdd(h: NetlinkSocket, spec: LinkSpec): void {
  h.request(linkAddMsg(h, spec), {
    op: 'add',
    object: `${spec.kind} ${spec.name}`,
    hint: addHint(spec),
  });
}

function decodeLink(m: NlMsg): Link {
  const p = m.payload;
  const index = p.readInt32LE(4);
  const flags = p.readUInt32LE(8);
  const a = new Attrs(p, 16);
  const link: Link = {
    index,
    name: a.str(IFLA_IFNAME) ?? `if${index}`,
    mtu: a.u32(IFLA_MTU) ?? 0,
    flags,
    up: (flags & IFF_UP) !== 0,
    lowerUp: (flags & IFF_LOWER_UP) !== 0,
    operstate: OPERSTATES[a.u8(IFLA_OPERSTATE) ?? 0] ?? 'unknown',
  };
  const mac = a.get(IFLA_ADDRESS);
  if (mac && mac.length === 6) link.mac = formatMac(mac);
  const master = a.u32(IFLA_MASTER);
  if (master !== undefined) link.master = master;
  const parent = a.u32(IFLA_LINK);
  if (parent !== undefined && parent !== index) link.parent = parent;
  const nsid = a.s32(IFLA_LINK_NETNSID);
  if (nsid !== undefined) link.linkNetnsId = nsid;
  const txq = a.u32(IFLA_TXQLEN);
  if (txq !== undefined) link.txqlen = txq;
  const alias = a.str(IFLA_IFALIAS);
  if (alias) link.alias = alias;
  const info = a.nested(IFLA_LINKINFO);
  if (info) {
    const kind = info.str(IFLA_INFO_KIND);
    if (kind) link.kind = kind;
    const sk = info.str(IFLA_INFO_SLAVE_KIND);
    if (sk) link.slaveKind = sk;
    const data = info.nested(IFLA_INFO_DATA);
    if (kind === 'vxlan' && data) {
      const vx: VxlanInfo = {
        vni: data.u32(IFLA_VXLAN_ID) ?? 0,
        port: data.be16(IFLA_VXLAN_PORT) ?? 0,
        learning: data.u8(IFLA_VXLAN_LEARNING) === 1,
        proxy: data.u8(IFLA_VXLAN_PROXY) === 1,
        l2miss: data.u8(IFLA_VXLAN_L2MISS) === 1,
        l3miss: data.u8(IFLA_VXLAN_L3MISS) === 1,
        ttl: data.u8(IFLA_VXLAN_TTL) ?? 0,
        udpCsum: data.u8(IFLA_VXLAN_UDP_CSUM) === 1,
      };
      const local = data.get(IFLA_VXLAN_LOCAL);
      if (local) vx.local = formatIp(local);
      const group = data.get(IFLA_VXLAN_GROUP);
      if (group && group.readUInt32BE(0) !== 0) vx.group = formatIp(group);
      const dev = data.u32(IFLA_VXLAN_LINK);
      if (dev) vx.dev = dev;
      const ageing = data.u32(IFLA_VXLAN_AGEING);
      if (ageing !== undefined) vx.ageing = ageing;
      link.vxlan = vx;
    }
  }
  return link;
}

/** All links in the socket's namespace. Equivalent to: `ip -d link show`. */
export function linkList(h: NetlinkSocket): Link[] {
  const w = new NlWriter(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP);
  w.raw(ifinfomsg(AF_UNSPEC, 0));
  return h
    .dump(w.finish(), { op: 'list', object: 'links' })
    .filter((m) => m.type === RTM_NEWLINK)
    .map(decodeLink);
}

/** A link message addressing one link by index or by name (RTM_GETLINK, RTM_DELLINK). */
function linkRefMsg(type: number, flags: number, ref: number | string): Buffer {
  const w = new NlWriter(type, flags);
  if (typeof ref === 'number') {
    w.raw(ifinfomsg(AF_UNSPEC, ref));
  } else {
    checkIfname(ref);
    w.raw(ifinfomsg(AF_UNSPEC, 0));
    w.str(IFLA_IFNAME, ref);
  }
  return w.finish();
}

/** One link by name or index; throws NetlinkError ENODEV if absent. Equivalent to: `ip -d link show NAME`. */
export function linkGet(h: NetlinkSocket, ref: number | string): Link {
  const what = typeof ref === 'number' ? `index ${ref}` : ref;
  const replies = h.request(linkRefMsg(RTM_GETLINK, NLM_F_REQUEST, ref), {
    op: 'get',
    object: `link ${what}`,
  });
  const m = replies.find((r) => r.type === RTM_NEWLINK);
  if (!m) throw new NetlinkError({ op: 'get', object: `link ${what}` }, 19);
  return decodeLink(m);
}

/** Like linkGet, but undefined when the link does not exist. */
export function linkFind(h: NetlinkSocket, ref: number | string): Link | undefined {
  try {
    return linkGet(h, ref);
  } catch (e) {
    if (isErrno(e, 'ENODEV')) return undefined;
    throw e;
  }
}

/**
 * Delete a link (for veth, the peer goes too). With `ifExists`, a missing link is not an error.
 * Equivalent to: `ip link del NAME`.
 */
export function linkDel(
  h: NetlinkSocket,
  ref: number | string,
  opts: { ifExists?: boolean } = {},
): void {
  try {
    h.request(linkRefMsg(RTM_DELLINK, NLM_F_REQUEST, ref), { op: 'del', object: `link ${ref}` });
  } catch (e) {
    if (opts.ifExists && isErrno(e, 'ENODEV')) return;
    throw e;
  }
}

export interface LinkChanges {
  up?: boolean;
  mtu?: number;
  /** New master by index or name; null releases the link from its master (`nomaster`). */
  master?: number | string | null;
  /** Move the link into this namespace. */
  netns?: Netns;
  /** Rename (the link must be down). */
  name?: string;
  mac?: string;
  alias?: string;
}

/**
 * Change a link's settings in one request.
 * Equivalent to: `ip link set NAME up|down mtu N master BR|nomaster netns NS name NEW address MAC`.
 */
export function linkSet(h: NetlinkSocket, ref: number | string, c: LinkChanges): void {
  const index = resolveIndex(h, ref);
  const w = new NlWriter(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK);
  w.raw(ifinfomsg(AF_UNSPEC, index, c.up ? IFF_UP : 0, c.up === undefined ? 0 : IFF_UP));
  if (c.name !== undefined) {
    checkIfname(c.name);
    w.str(IFLA_IFNAME, c.name);
  }
  if (c.mtu !== undefined) w.u32(IFLA_MTU, c.mtu);
  if (c.mac !== undefined) w.bytes(IFLA_ADDRESS, parseMac(c.mac));
  if (c.master !== undefined) w.u32(IFLA_MASTER, c.master === null ? 0 : resolveIndex(h, c.master));
  if (c.netns !== undefined) w.s32(IFLA_NET_NS_FD, c.netns.fd);
  if (c.alias !== undefined) w.str(IFLA_IFALIAS, c.alias);
  const desc: OpDesc = {
    op: 'set',
    object: `link ${ref}`,
    hint: (errno) =>
      errno === 16 && c.name !== undefined ? 'take the link down before renaming it' : undefined,
  };
  h.request(w.finish(), desc);
}

/** Equivalent to: `ip link set NAME up`. */
export function linkSetUp(h: NetlinkSocket, ref: number | string): void {
  linkSet(h, ref, { up: true });
}

/** Equivalent to: `ip link set NAME down`. */
export function linkSetDown(h: NetlinkSocket, ref: number | string): void {
  linkSet(h, ref, { up: false });
}
