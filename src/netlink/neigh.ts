/**
 * Neighbour (ARP/NDP) entries and bridge/VXLAN forwarding-database entries over rtnetlink.
 * The overlay programs both statically from the network tables: a permanent ARP entry for each
 * remote endpoint and an FDB entry mapping its MAC to the VTEP that hosts it (RFC 7348 §4:
 * no flooding, no learning).
 * May import: ./nl, ./rt, ./socket, ./link, util/.
 */
import {
  Attrs,
  NLM_F_APPEND,
  NLM_F_CREATE,
  NLM_F_DUMP,
  NLM_F_REPLACE,
  NLM_F_REQUEST,
  NlWriter,
} from './nl.js';
import {
  AF_BRIDGE,
  AF_INET,
  AF_INET6,
  AF_UNSPEC,
  NDA_DST,
  NDA_IFINDEX,
  NDA_LLADDR,
  NDA_MASTER,
  NDA_PORT,
  NDA_VNI,
  NTF_MASTER,
  NTF_SELF,
  NUD_NOARP,
  NUD_PERMANENT,
  RTM_DELNEIGH,
  RTM_GETNEIGH,
  RTM_NEWNEIGH,
  formatIp,
  formatMac,
  ndmsg,
  parseIp,
  parseMac,
} from './rt.js';
import { linkGet } from './link.js';
import { isErrno, type BatchItem, type NetlinkSocket } from './socket.js';

export interface Neigh {
  index: number;
  family: number;
  /** IP address (ARP/NDP) or, for FDB entries, the remote VTEP (NDA_DST) if any. */
  ip?: string;
  mac?: string;
  /** NUD_* state bits. */
  state: number;
  /** NTF_* flags. */
  flags: number;
  /** FDB only: the bridge this entry belongs to. */
  master?: number;
  vni?: number;
  port?: number;
}

export interface NeighSpec {
  /** Device (index or name). */
  dev: number | string;
  ip: string;
  mac: string;
  /** NUD_* state. @default NUD_PERMANENT */
  state?: number;
}

export interface FdbSpec {
  dev: number | string;
  mac: string;
  /** Remote VTEP address (VXLAN). */
  dst?: string;
  /** Program the device's own table (`self`, what VXLAN needs) rather than its master's. @default true */
  self?: boolean;
  vni?: number;
  port?: number;
  /**
   * Add another destination for the same MAC (`bridge fdb append`, e.g. for the all-zeros
   * MAC used as a flood list) instead of replacing the existing one.
   */
  append?: boolean;
}

function devIndex(h: NetlinkSocket, dev: number | string): number {
  return typeof dev === 'number' ? dev : linkGet(h, dev).index;
}

/** Encode an `ip neigh replace` (for batching). `index` is the resolved device index. */
export function neighMsg(type: number, index: number, s: Omit<NeighSpec, 'dev'>): Buffer {
  const ip = parseIp(s.ip, 'neighbour address');
  const flags =
    type === RTM_NEWNEIGH ? NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE : NLM_F_REQUEST;
  const w = new NlWriter(type, flags, 64);
  w.raw(ndmsg(ip.family, index, s.state ?? NUD_PERMANENT));
  w.bytes(NDA_DST, ip.bytes);
  if (type === RTM_NEWNEIGH) w.bytes(NDA_LLADDR, parseMac(s.mac));
  return w.finish();
}

/** Encode a `bridge fdb replace|append|del` (for batching). */
export function fdbMsg(type: number, index: number, s: Omit<FdbSpec, 'dev'>): Buffer {
  const self = s.self ?? true;
  let flags = NLM_F_REQUEST;
  if (type === RTM_NEWNEIGH) flags |= NLM_F_CREATE | (s.append ? NLM_F_APPEND : NLM_F_REPLACE);
  const w = new NlWriter(type, flags, 64);
  w.raw(ndmsg(AF_BRIDGE, index, NUD_PERMANENT | NUD_NOARP, self ? NTF_SELF : NTF_MASTER));
  w.bytes(NDA_LLADDR, parseMac(s.mac));
  if (s.dst !== undefined) w.bytes(NDA_DST, parseIp(s.dst, 'fdb destination').bytes);
  if (s.vni !== undefined) w.u32(NDA_VNI, s.vni);
  if (s.port !== undefined) w.be16(NDA_PORT, s.port);
  return w.finish();
}

/** Add or replace a neighbour entry (idempotent). Equivalent to: `ip neigh replace IP lladdr MAC dev DEV nud permanent`. */
export function neighAdd(h: NetlinkSocket, s: NeighSpec): void {
  h.request(neighMsg(RTM_NEWNEIGH, devIndex(h, s.dev), s), {
    op: 'add',
    object: `neigh ${s.ip} dev ${s.dev}`,
  });
}

/** Equivalent to: `ip neigh del IP dev DEV`. With `ifExists`, a missing entry is not an error. */
export function neighDel(
  h: NetlinkSocket,
  s: Omit<NeighSpec, 'mac'>,
  o: { ifExists?: boolean } = {},
): void {
  try {
    h.request(neighMsg(RTM_DELNEIGH, devIndex(h, s.dev), { ...s, mac: '00:00:00:00:00:00' }), {
      op: 'del',
      object: `neigh ${s.ip} dev ${s.dev}`,
    });
  } catch (e) {
    if (o.ifExists && isErrno(e, 'ENOENT')) return;
    throw e;
  }
}

/** Many neighbour adds in as few syscalls as possible; see NetlinkSocket.batch. */
export function neighAddMany(
  h: NetlinkSocket,
  dev: number | string,
  entries: ReadonlyArray<Omit<NeighSpec, 'dev'>>,
): void {
  const index = devIndex(h, dev);
  const items: BatchItem[] = entries.map((e) => ({
    msg: neighMsg(RTM_NEWNEIGH, index, e),
    desc: () => ({ op: 'add', object: `neigh ${e.ip} dev ${dev}` }),
  }));
  h.batchOrThrow(items);
}

function decodeNeigh(payload: Buffer): Neigh {
  const a = new Attrs(payload, 12);
  const n: Neigh = {
    family: payload.readUInt8(0),
    index: payload.readInt32LE(4),
    state: payload.readUInt16LE(8),
    flags: payload.readUInt8(10),
  };
  const dst = a.get(NDA_DST);
  if (dst) n.ip = formatIp(dst);
  const ll = a.get(NDA_LLADDR);
  if (ll && ll.length === 6) n.mac = formatMac(ll);
  const master = a.u32(NDA_MASTER);
  if (master !== undefined) n.master = master;
  const vni = a.u32(NDA_VNI);
  if (vni !== undefined) n.vni = vni;
  const port = a.be16(NDA_PORT);
  if (port !== undefined) n.port = port;
  return n;
}

function dumpNeigh(h: NetlinkSocket, family: number, index: number, what: string): Neigh[] {
  const w = new NlWriter(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP);
  // Strict dump checking wants a zeroed header and the device as NDA_IFINDEX; the kernel
  // then filters for us.
  w.raw(ndmsg(family, 0));
  if (index !== 0) w.u32(NDA_IFINDEX, index);
  return h
    .dump(w.finish(), { op: 'list', object: what })
    .filter((m) => m.type === RTM_NEWNEIGH)
    .map((m) => decodeNeigh(m.payload))
    .filter((n) => index === 0 || n.index === index);
}

/**
 * Neighbour entries, IPv4 and IPv6 unless `family` is given. Like iproute2, entries in state
 * NOARP only (multicast and the like, which the kernel makes itself) are left out unless `all`.
 * Equivalent to: `ip neigh show [dev DEV]` (`ip neigh show nud all` with `all`).
 */
export function neighList(
  h: NetlinkSocket,
  filter: { dev?: number | string; family?: number; all?: boolean } = {},
): Neigh[] {
  const index = filter.dev === undefined ? 0 : devIndex(h, filter.dev);
  return dumpNeigh(h, filter.family ?? AF_UNSPEC, index, 'neighbours').filter(
    (n) => (n.family === AF_INET || n.family === AF_INET6) && (filter.all || n.state !== NUD_NOARP),
  );
}

/** Add or replace an FDB entry. Equivalent to: `bridge fdb replace MAC dev DEV dst IP self permanent`. */
export function fdbAdd(h: NetlinkSocket, s: FdbSpec): void {
  h.request(fdbMsg(RTM_NEWNEIGH, devIndex(h, s.dev), s), {
    op: 'add',
    object: `fdb ${s.mac}${s.dst ? ` dst ${s.dst}` : ''} dev ${s.dev}`,
  });
}

/** Equivalent to: `bridge fdb del MAC dev DEV [dst IP] self`. With `ifExists`, a missing entry is not an error. */
export function fdbDel(h: NetlinkSocket, s: FdbSpec, o: { ifExists?: boolean } = {}): void {
  try {
    h.request(fdbMsg(RTM_DELNEIGH, devIndex(h, s.dev), s), {
      op: 'del',
      object: `fdb ${s.mac}${s.dst ? ` dst ${s.dst}` : ''} dev ${s.dev}`,
    });
  } catch (e) {
    if (o.ifExists && isErrno(e, 'ENOENT')) return;
    throw e;
  }
}

/** Many FDB adds in as few syscalls as possible. */
export function fdbAddMany(
  h: NetlinkSocket,
  dev: number | string,
  entries: ReadonlyArray<Omit<FdbSpec, 'dev'>>,
): void {
  const index = devIndex(h, dev);
  h.batchOrThrow(
    entries.map((e) => ({
      msg: fdbMsg(RTM_NEWNEIGH, index, e),
      desc: () => ({ op: 'add', object: `fdb ${e.mac}${e.dst ? ` dst ${e.dst}` : ''} dev ${dev}` }),
    })),
  );
}

/** Equivalent to: `bridge fdb show [dev DEV]`. */
export function fdbList(h: NetlinkSocket, filter: { dev?: number | string } = {}): Neigh[] {
  const index = filter.dev === undefined ? 0 : devIndex(h, filter.dev);
  return dumpNeigh(h, AF_BRIDGE, index, 'fdb entries');
}
