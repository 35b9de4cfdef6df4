/**
 * IPVS (the kernel's layer-4 load balancer) over generic netlink, family "IPVS" version 1:
 * message encoders and decoders (pure) and a handle bound to one network namespace that sends
 * them. All IPVS state (services, destinations, timeouts) is per network namespace.
 *
 * Layout facts from include/uapi/linux/ip_vs.h and net/netfilter/ipvs/ip_vs_ctl.c:
 * - every request carries IPVS_CMD_ATTR_SERVICE (a nest) identifying the service, either by
 *   {AF, FWMARK} or by {AF, PROTOCOL, ADDR, PORT}; NEW/SET_SERVICE also need SCHED_NAME, FLAGS,
 *   TIMEOUT and NETMASK ("full entry"), or the kernel answers EINVAL;
 * - destination requests add IPVS_CMD_ATTR_DEST with ADDR and PORT, and for NEW/SET_DEST also
 *   FWD_METHOD, WEIGHT, U_THRESH and L_THRESH;
 * - ports (service and destination) are NLA_U16 attributes holding a *network-order* value;
 *   the IPv4 persistence netmask is likewise a big-endian mask in an NLA_U32;
 * - addresses are NLA_BINARY of up to 16 bytes (union nf_inet_addr): we send 4 or 16, the
 *   kernel answers with 16 (an IPv4 address in the first 4);
 * - a fwmark service matches TCP and UDP alike (the kernel records protocol TCP for it);
 * - GET_DEST is only a dump and needs the service attribute; FLUSH removes every service in
 *   the namespace (not only ours: callers that share a namespace must delete one by one);
 * - timeouts (SET/GET_CONFIG) are global to the namespace; 0 means "leave unchanged".
 * Constants keep kernel spelling and are on the wire: never renumber.
 * May import: ./genl, ./nl, ./rt, ./socket, ./netns, util/.
 */
import { MeshError } from '../util/errors.js';
import { genlAttrs, genlCmd, genlFamily, genlWriter, type GenlFamily } from './genl.js';
import type { Netns } from './netns.js';
import { Attrs, NETLINK_GENERIC, NLM_F_DUMP, NLM_F_REQUEST, type NlWriter } from './nl.js';
import { AF_INET, AF_INET6, formatIp, parseIp } from './rt.js';
import { NetlinkSocket, type BatchItem, type NetlinkError, type OpDesc } from './socket.js';

export const IPVS_GENL_NAME = 'IPVS';
export const IPVS_GENL_VERSION = 1;

// enum IPVS_CMD_* — on the wire.
export const IPVS_CMD_NEW_SERVICE = 1;
export const IPVS_CMD_SET_SERVICE = 2;
export const IPVS_CMD_DEL_SERVICE = 3;
export const IPVS_CMD_GET_SERVICE = 4;
export const IPVS_CMD_NEW_DEST = 5;
export const IPVS_CMD_SET_DEST = 6;
export const IPVS_CMD_DEL_DEST = 7;
export const IPVS_CMD_GET_DEST = 8;
export const IPVS_CMD_SET_CONFIG = 12;
export const IPVS_CMD_GET_CONFIG = 13;
export const IPVS_CMD_SET_INFO = 14;
export const IPVS_CMD_GET_INFO = 15;
export const IPVS_CMD_ZERO = 16;
export const IPVS_CMD_FLUSH = 17;

// enum IPVS_CMD_ATTR_* (first level).
export const IPVS_CMD_ATTR_SERVICE = 1;
export const IPVS_CMD_ATTR_DEST = 2;
export const IPVS_CMD_ATTR_DAEMON = 3;
export const IPVS_CMD_ATTR_TIMEOUT_TCP = 4;
export const IPVS_CMD_ATTR_TIMEOUT_TCP_FIN = 5;
export const IPVS_CMD_ATTR_TIMEOUT_UDP = 6;

// enum IPVS_SVC_ATTR_* (inside IPVS_CMD_ATTR_SERVICE).
export const IPVS_SVC_ATTR_AF = 1;
export const IPVS_SVC_ATTR_PROTOCOL = 2;
export const IPVS_SVC_ATTR_ADDR = 3;
export const IPVS_SVC_ATTR_PORT = 4;
export const IPVS_SVC_ATTR_FWMARK = 5;
export const IPVS_SVC_ATTR_SCHED_NAME = 6;
export const IPVS_SVC_ATTR_FLAGS = 7;
export const IPVS_SVC_ATTR_TIMEOUT = 8;
export const IPVS_SVC_ATTR_NETMASK = 9;
export const IPVS_SVC_ATTR_STATS = 10;
export const IPVS_SVC_ATTR_PE_NAME = 11;
export const IPVS_SVC_ATTR_STATS64 = 12;

// enum IPVS_DEST_ATTR_* (inside IPVS_CMD_ATTR_DEST).
export const IPVS_DEST_ATTR_ADDR = 1;
export const IPVS_DEST_ATTR_PORT = 2;
export const IPVS_DEST_ATTR_FWD_METHOD = 3;
export const IPVS_DEST_ATTR_WEIGHT = 4;
export const IPVS_DEST_ATTR_U_THRESH = 5;
export const IPVS_DEST_ATTR_L_THRESH = 6;
export const IPVS_DEST_ATTR_ACTIVE_CONNS = 7;
export const IPVS_DEST_ATTR_INACT_CONNS = 8;
export const IPVS_DEST_ATTR_PERSIST_CONNS = 9;
export const IPVS_DEST_ATTR_STATS = 10;
export const IPVS_DEST_ATTR_ADDR_FAMILY = 11;
export const IPVS_DEST_ATTR_STATS64 = 12;
export const IPVS_DEST_ATTR_TUN_TYPE = 13;
export const IPVS_DEST_ATTR_TUN_PORT = 14;
export const IPVS_DEST_ATTR_TUN_FLAGS = 15;

// enum IPVS_STATS_ATTR_* (inside *_ATTR_STATS and *_ATTR_STATS64).
export const IPVS_STATS_ATTR_CONNS = 1;
export const IPVS_STATS_ATTR_INPKTS = 2;
export const IPVS_STATS_ATTR_OUTPKTS = 3;
export const IPVS_STATS_ATTR_INBYTES = 4;
export const IPVS_STATS_ATTR_OUTBYTES = 5;
export const IPVS_STATS_ATTR_CPS = 6;
export const IPVS_STATS_ATTR_INPPS = 7;
export const IPVS_STATS_ATTR_OUTPPS = 8;
export const IPVS_STATS_ATTR_INBPS = 9;
export const IPVS_STATS_ATTR_OUTBPS = 10;

// enum IPVS_INFO_ATTR_* (GET_INFO answer).
export const IPVS_INFO_ATTR_VERSION = 1;
export const IPVS_INFO_ATTR_CONN_TAB_SIZE = 2;

// Forwarding methods (IP_VS_CONN_F_FWD_MASK values).
export const IP_VS_CONN_F_MASQ = 0;
export const IP_VS_CONN_F_LOCALNODE = 1;
export const IP_VS_CONN_F_TUNNEL = 2;
export const IP_VS_CONN_F_DROUTE = 3;

// Service flags (IP_VS_SVC_F_*).
export const IP_VS_SVC_F_PERSISTENT = 0x0001;
/** Set by the kernel on every service it has hashed (i.e. every live one); not a user flag. */
export const IP_VS_SVC_F_HASHED = 0x0002;
export const IP_VS_SVC_F_ONEPACKET = 0x0004;
export const IP_VS_SVC_F_SCHED1 = 0x0008;
export const IP_VS_SVC_F_SCHED2 = 0x0010;
export const IP_VS_SVC_F_SCHED3 = 0x0020;

const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;
const IPPROTO_SCTP = 132;

export type IpvsProtocol = 'tcp' | 'udp' | 'sctp';
export type IpvsForward = 'masq' | 'local' | 'tunnel' | 'route';

const FWD_CODE: Record<IpvsForward, number> = {
  masq: IP_VS_CONN_F_MASQ,
  local: IP_VS_CONN_F_LOCALNODE,
  tunnel: IP_VS_CONN_F_TUNNEL,
  route: IP_VS_CONN_F_DROUTE,
};
const FWD_NAME: readonly IpvsForward[] = ['masq', 'local', 'tunnel', 'route'];
const PROTO_CODE: Record<IpvsProtocol, number> = {
  tcp: IPPROTO_TCP,
  udp: IPPROTO_UDP,
  sctp: IPPROTO_SCTP,
};

/** Which service: by firewall mark, or by virtual address, port and protocol. */
export type IpvsServiceId =
  | { af?: 'inet' | 'inet6'; fwmark: number }
  | { af?: 'inet' | 'inet6'; protocol: IpvsProtocol; addr: string; port: number };

/** A virtual service as programmed (ipvsadm -A/-E options). */
export type IpvsService = IpvsServiceId & {
  /** Scheduler module name without `ip_vs_` (rr, wrr, lc, wlc, sh, mh, …). @default 'rr' */
  scheduler?: string;
  /** IP_VS_SVC_F_* bits. @default 0 */
  flags?: number;
  /** Persistence timeout in seconds (ipvsadm -p); 0 = not persistent. @default 0 */
  timeout?: number;
  /** Persistence netmask: IPv4 dotted mask as a number (0xffffffff = /32) or IPv6 prefix length. @default /32 or 128 */
  netmask?: number;
};

/** A destination (real server) as programmed (ipvsadm -a/-e options). */
export interface IpvsDest {
  addr: string;
  port: number;
  /** @default 'masq' (ipvsadm -m); 'route' is direct routing (-g), 'tunnel' is IPIP (-i). */
  forward?: IpvsForward;
  /** 0 = quiesced: no new connections, existing ones continue. @default 1 */
  weight?: number;
  /** Upper connection threshold; 0 = none. @default 0 */
  upperThreshold?: number;
  /** Lower connection threshold; 0 = none. @default 0 */
  lowerThreshold?: number;
}

/** Counters since the service/destination was added (ipvsadm -Ln --stats --exact). */
export interface IpvsStats {
  conns: number;
  inPkts: number;
  outPkts: number;
  inBytes: number;
  outBytes: number;
  /** Rates estimated by the kernel every 2 s (ipvsadm --rate). */
  cps: number;
  inPps: number;
  outPps: number;
  inBps: number;
  outBps: number;
}

/** A service as the kernel reports it. */
export type IpvsServiceInfo = IpvsServiceId & {
  af: 'inet' | 'inet6';
  scheduler: string;
  flags: number;
  timeout: number;
  netmask: number;
  peName?: string;
  stats: IpvsStats;
};

/** A destination as the kernel reports it. */
export interface IpvsDestInfo {
  addr: string;
  port: number;
  af: 'inet' | 'inet6';
  forward: IpvsForward;
  weight: number;
  upperThreshold: number;
  lowerThreshold: number;
  activeConns: number;
  inactiveConns: number;
  persistConns: number;
  stats: IpvsStats;
}

/** Connection idle timeouts in seconds (ipvsadm --set tcp tcpfin udp); global per namespace. */
export interface IpvsTimeouts {
  tcp: number;
  tcpFin: number;
  udp: number;
}

const afCode = (af: 'inet' | 'inet6' | undefined): number => (af === 'inet6' ? AF_INET6 : AF_INET);
const afName = (n: number): 'inet' | 'inet6' => (n === AF_INET6 ? 'inet6' : 'inet');

function ipBytes(addr: string, af: number, what: string): Buffer {
  const ip = parseIp(addr, what);
  if (ip.family !== af) {
    throw new MeshError(
      'EUSAGE',
      `parse ${what} ${addr}: address family does not match the service (${afName(af)})`,
    );
  }
  return Buffer.from(ip.bytes);
}

function checkPort(port: number, what: string): void {
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new MeshError('EUSAGE', `check ${what} ${port}: a port is an integer 0-65535`);
  }
}

/** `fwmark 256` or `tcp 10.0.0.1:80`, for messages (ipvsadm spelling). */
export function describeService(id: IpvsServiceId): string {
  if ('fwmark' in id) return `ipvs service fwmark ${id.fwmark}`;
  const host = id.af === 'inet6' ? `[${id.addr}]` : id.addr;
  return `ipvs service ${id.protocol} ${host}:${id.port}`;
}

function describeDest(id: IpvsServiceId, d: { addr: string; port: number }): string {
  const host = d.addr.includes(':') ? `[${d.addr}]` : d.addr;
  return `ipvs destination ${host}:${d.port} of ${describeService(id).slice('ipvs '.length)}`;
}

/** Write the identifying service attributes (AF first, then FWMARK or PROTOCOL/ADDR/PORT). */
function putServiceId(w: NlWriter, id: IpvsServiceId): void {
  const af = afCode(id.af);
  w.u16(IPVS_SVC_ATTR_AF, af);
  if ('fwmark' in id) {
    if (!Number.isInteger(id.fwmark) || id.fwmark < 1 || id.fwmark > 0xffffffff) {
      throw new MeshError('EUSAGE', `check fwmark ${id.fwmark}: want an integer 1-4294967295`);
    }
    w.u32(IPVS_SVC_ATTR_FWMARK, id.fwmark);
  } else {
    checkPort(id.port, 'service port');
    w.u16(IPVS_SVC_ATTR_PROTOCOL, PROTO_CODE[id.protocol]);
    w.bytes(IPVS_SVC_ATTR_ADDR, ipBytes(id.addr, af, 'service address'));
    w.be16(IPVS_SVC_ATTR_PORT, id.port);
  }
}

/**
 * Write IPVS_CMD_ATTR_SERVICE: identity only, or (full) with scheduler, flags, persistence
 * timeout and netmask, which NEW/SET_SERVICE require.
 */
export function putService(w: NlWriter, svc: IpvsService, full: boolean): void {
  w.nest(IPVS_CMD_ATTR_SERVICE, () => {
    putServiceId(w, svc);
    if (!full) return;
    const sched = svc.scheduler ?? 'rr';
    if (!/^[a-z0-9_]{1,15}$/.test(sched)) {
      throw new MeshError(
        'EUSAGE',
        `check scheduler ${JSON.stringify(sched)}: not a scheduler name`,
      );
    }
    w.str(IPVS_SVC_ATTR_SCHED_NAME, sched);
    // struct ip_vs_flags { u32 flags; u32 mask }: we always state every bit.
    const flags = Buffer.alloc(8);
    flags.writeUInt32LE((svc.flags ?? 0) >>> 0, 0);
    flags.writeUInt32LE(0xffffffff, 4);
    w.bytes(IPVS_SVC_ATTR_FLAGS, flags);
    w.u32(IPVS_SVC_ATTR_TIMEOUT, svc.timeout ?? 0);
    const v6 = svc.af === 'inet6';
    w.u32(IPVS_SVC_ATTR_NETMASK, svc.netmask ?? (v6 ? 128 : 0xffffffff));
  });
}

/** Write IPVS_CMD_ATTR_DEST: identity only, or (full) with method, weight and thresholds. */
export function putDest(
  w: NlWriter,
  svcAf: 'inet' | 'inet6' | undefined,
  d: IpvsDest,
  full: boolean,
): void {
  checkPort(d.port, 'destination port');
  const ip = parseIp(d.addr, 'destination address');
  w.nest(IPVS_CMD_ATTR_DEST, () => {
    w.bytes(IPVS_DEST_ATTR_ADDR, Buffer.from(ip.bytes));
    w.be16(IPVS_DEST_ATTR_PORT, d.port);
    if (full) {
      const weight = d.weight ?? 1;
      if (!Number.isInteger(weight) || weight < 0 || weight > 0x7fffffff) {
        throw new MeshError('EUSAGE', `check weight ${weight}: want an integer 0-2147483647`);
      }
      w.u32(IPVS_DEST_ATTR_FWD_METHOD, FWD_CODE[d.forward ?? 'masq']);
      w.u32(IPVS_DEST_ATTR_WEIGHT, weight);
      w.u32(IPVS_DEST_ATTR_U_THRESH, d.upperThreshold ?? 0);
      w.u32(IPVS_DEST_ATTR_L_THRESH, d.lowerThreshold ?? 0);
    }
    // Sent only when it differs from the service's: kernels before 4.1 do not know it.
    if (ip.family !== afCode(svcAf)) w.u16(IPVS_DEST_ATTR_ADDR_FAMILY, ip.family);
  });
}

/** A finished IPVS request. */
function msg(
  familyId: number,
  cmd: number,
  fill?: (w: NlWriter) => void,
  flags = NLM_F_REQUEST,
): Buffer {
  const w = genlWriter(familyId, cmd, IPVS_GENL_VERSION, flags);
  fill?.(w);
  return w.finish();
}

// ---- Encoders: one per command, pure (the family id comes from a resolved family). ----

/** Equivalent to: `ipvsadm -A -f MARK -s SCHED` (or `-t|-u ADDR:PORT`). */
export const newServiceMsg = (fam: number, s: IpvsService): Buffer =>
  msg(fam, IPVS_CMD_NEW_SERVICE, (w) => putService(w, s, true));
/** Equivalent to: `ipvsadm -E -f MARK -s SCHED`. */
export const setServiceMsg = (fam: number, s: IpvsService): Buffer =>
  msg(fam, IPVS_CMD_SET_SERVICE, (w) => putService(w, s, true));
/** Equivalent to: `ipvsadm -D -f MARK`. */
export const delServiceMsg = (fam: number, id: IpvsServiceId): Buffer =>
  msg(fam, IPVS_CMD_DEL_SERVICE, (w) => putService(w, id, false));
/** Equivalent to: `ipvsadm -a -f MARK -r ADDR:PORT -m -w W`. */
export const newDestMsg = (fam: number, id: IpvsServiceId, d: IpvsDest): Buffer =>
  msg(fam, IPVS_CMD_NEW_DEST, (w) => {
    putService(w, id, false);
    putDest(w, id.af, d, true);
  });
/** Equivalent to: `ipvsadm -e -f MARK -r ADDR:PORT -m -w W`. */
export const setDestMsg = (fam: number, id: IpvsServiceId, d: IpvsDest): Buffer =>
  msg(fam, IPVS_CMD_SET_DEST, (w) => {
    putService(w, id, false);
    putDest(w, id.af, d, true);
  });
/** Equivalent to: `ipvsadm -d -f MARK -r ADDR:PORT`. */
export const delDestMsg = (
  fam: number,
  id: IpvsServiceId,
  d: { addr: string; port: number },
): Buffer =>
  msg(fam, IPVS_CMD_DEL_DEST, (w) => {
    putService(w, id, false);
    putDest(w, id.af, d, false);
  });
/** Equivalent to: `ipvsadm -Ln` (the service part). A dump. */
export const getServicesMsg = (fam: number): Buffer =>
  msg(fam, IPVS_CMD_GET_SERVICE, undefined, NLM_F_REQUEST | NLM_F_DUMP);
/** Equivalent to: `ipvsadm -Ln -f MARK` (the destination part). A dump. */
export const getDestsMsg = (fam: number, id: IpvsServiceId): Buffer =>
  msg(fam, IPVS_CMD_GET_DEST, (w) => putService(w, id, false), NLM_F_REQUEST | NLM_F_DUMP);
/** Equivalent to: `ipvsadm --set TCP TCPFIN UDP` (0 leaves a value unchanged). */
export const setConfigMsg = (fam: number, t: Partial<IpvsTimeouts>): Buffer =>
  msg(fam, IPVS_CMD_SET_CONFIG, (w) => {
    if (t.tcp !== undefined) w.u32(IPVS_CMD_ATTR_TIMEOUT_TCP, t.tcp);
    if (t.tcpFin !== undefined) w.u32(IPVS_CMD_ATTR_TIMEOUT_TCP_FIN, t.tcpFin);
    if (t.udp !== undefined) w.u32(IPVS_CMD_ATTR_TIMEOUT_UDP, t.udp);
  });
/** Equivalent to: `ipvsadm -L --timeout`. */
export const getConfigMsg = (fam: number): Buffer => msg(fam, IPVS_CMD_GET_CONFIG);
/** Equivalent to: `ipvsadm -v` (version and connection table size). */
export const getInfoMsg = (fam: number): Buffer => msg(fam, IPVS_CMD_GET_INFO);
/** Equivalent to: `ipvsadm -C`: removes every service of the namespace, ours or not. */
export const flushMsg = (fam: number): Buffer => msg(fam, IPVS_CMD_FLUSH);
/** Equivalent to: `ipvsadm -Z [-f MARK]`. */
export const zeroMsg = (fam: number, id?: IpvsServiceId): Buffer =>
  msg(fam, IPVS_CMD_ZERO, id ? (w) => putService(w, id, false) : undefined);

// ---- Decoders. ----

/** An integer attribute the kernel sends as u32 or u64 (STATS vs STATS64). */
function num(a: Attrs, type: number): number {
  const v = a.get(type);
  if (v === undefined) return 0;
  if (v.length >= 8) return Number(v.readBigUInt64LE(0));
  if (v.length >= 4) return v.readUInt32LE(0);
  return 0;
}

export function decodeStats(a: Attrs | undefined): IpvsStats {
  const s = a ?? new Attrs(Buffer.alloc(0));
  return {
    conns: num(s, IPVS_STATS_ATTR_CONNS),
    inPkts: num(s, IPVS_STATS_ATTR_INPKTS),
    outPkts: num(s, IPVS_STATS_ATTR_OUTPKTS),
    inBytes: num(s, IPVS_STATS_ATTR_INBYTES),
    outBytes: num(s, IPVS_STATS_ATTR_OUTBYTES),
    cps: num(s, IPVS_STATS_ATTR_CPS),
    inPps: num(s, IPVS_STATS_ATTR_INPPS),
    outPps: num(s, IPVS_STATS_ATTR_OUTPPS),
    inBps: num(s, IPVS_STATS_ATTR_INBPS),
    outBps: num(s, IPVS_STATS_ATTR_OUTBPS),
  };
}

function addrOf(raw: Buffer | undefined, af: number): string {
  if (!raw) return '';
  return formatIp(af === AF_INET6 ? raw.subarray(0, 16) : raw.subarray(0, 4));
}

const protoName = (p: number): IpvsProtocol =>
  p === IPPROTO_UDP ? 'udp' : p === IPPROTO_SCTP ? 'sctp' : 'tcp';

/** Decode the IPVS_CMD_ATTR_SERVICE nest of a service message (genl payload); without `withStats` the counters are left 0 (cheaper). */
export function decodeService(payload: Buffer, withStats = true): IpvsServiceInfo {
  const s = genlAttrs(payload).nested(IPVS_CMD_ATTR_SERVICE);
  if (!s) throw new MeshError('ENLDECODE', 'decode ipvs service: no IPVS_CMD_ATTR_SERVICE');
  const afn = s.u16(IPVS_SVC_ATTR_AF) ?? AF_INET;
  const af = afName(afn);
  const flags = s.get(IPVS_SVC_ATTR_FLAGS);
  const common = {
    af,
    scheduler: s.str(IPVS_SVC_ATTR_SCHED_NAME) ?? '',
    flags: flags && flags.length >= 4 ? flags.readUInt32LE(0) : 0,
    timeout: s.u32(IPVS_SVC_ATTR_TIMEOUT) ?? 0,
    netmask: s.u32(IPVS_SVC_ATTR_NETMASK) ?? 0,
    stats: withStats
      ? decodeStats(s.nested(IPVS_SVC_ATTR_STATS64) ?? s.nested(IPVS_SVC_ATTR_STATS))
      : decodeStats(undefined),
  };
  const pe = s.str(IPVS_SVC_ATTR_PE_NAME);
  const fwmark = s.u32(IPVS_SVC_ATTR_FWMARK);
  const out: IpvsServiceInfo =
    fwmark !== undefined && fwmark !== 0
      ? { ...common, fwmark }
      : {
          ...common,
          protocol: protoName(s.u16(IPVS_SVC_ATTR_PROTOCOL) ?? IPPROTO_TCP),
          addr: addrOf(s.get(IPVS_SVC_ATTR_ADDR), afn),
          port: s.be16(IPVS_SVC_ATTR_PORT) ?? 0,
        };
  if (pe) out.peName = pe;
  return out;
}

/** Decode the IPVS_CMD_ATTR_DEST nest of a destination message; `svcAf` when the kernel omits ADDR_FAMILY. */
export function decodeDest(
  payload: Buffer,
  svcAf: 'inet' | 'inet6' = 'inet',
  withStats = true,
): IpvsDestInfo {
  const d = genlAttrs(payload).nested(IPVS_CMD_ATTR_DEST);
  if (!d) throw new MeshError('ENLDECODE', 'decode ipvs destination: no IPVS_CMD_ATTR_DEST');
  const afn = d.u16(IPVS_DEST_ATTR_ADDR_FAMILY) ?? afCode(svcAf);
  return {
    addr: addrOf(d.get(IPVS_DEST_ATTR_ADDR), afn),
    port: d.be16(IPVS_DEST_ATTR_PORT) ?? 0,
    af: afName(afn),
    forward: FWD_NAME[(d.u32(IPVS_DEST_ATTR_FWD_METHOD) ?? 0) & 7] ?? 'masq',
    weight: d.s32(IPVS_DEST_ATTR_WEIGHT) ?? 0,
    upperThreshold: d.u32(IPVS_DEST_ATTR_U_THRESH) ?? 0,
    lowerThreshold: d.u32(IPVS_DEST_ATTR_L_THRESH) ?? 0,
    activeConns: d.u32(IPVS_DEST_ATTR_ACTIVE_CONNS) ?? 0,
    inactiveConns: d.u32(IPVS_DEST_ATTR_INACT_CONNS) ?? 0,
    persistConns: d.u32(IPVS_DEST_ATTR_PERSIST_CONNS) ?? 0,
    stats: withStats
      ? decodeStats(d.nested(IPVS_DEST_ATTR_STATS64) ?? d.nested(IPVS_DEST_ATTR_STATS))
      : decodeStats(undefined),
  };
}

export function decodeConfig(payload: Buffer): IpvsTimeouts {
  const a = genlAttrs(payload);
  return {
    tcp: a.u32(IPVS_CMD_ATTR_TIMEOUT_TCP) ?? 0,
    tcpFin: a.u32(IPVS_CMD_ATTR_TIMEOUT_TCP_FIN) ?? 0,
    udp: a.u32(IPVS_CMD_ATTR_TIMEOUT_UDP) ?? 0,
  };
}

// ---- Errors: the kernel's errno plus what usually causes it for IPVS. ----

function ipvsHint(kind: 'service' | 'dest' | 'config', op: string) {
  return (errno: number): string | undefined => {
    switch (errno) {
      case 2: // ENOENT
        if (op === 'add' && kind === 'service')
          return 'scheduler module not available (modprobe ip_vs_<scheduler>)';
        return kind === 'dest' ? 'no such destination' : undefined;
      case 3: // ESRCH
        return 'no such service (list them with `ipvsadm -Ln`)';
      case 17: // EEXIST
        return kind === 'dest'
          ? 'the destination already exists; use set to change it'
          : 'the service already exists; use set to change it';
      case 22: // EINVAL
        return kind === 'dest'
          ? 'refused destination: check the address is unicast (in a fresh namespace bring lo up first: ip link set lo up); mixed address families need tunnel forwarding'
          : 'refused by the kernel: check the attributes (full service entry, address family)';
      case 97: // EAFNOSUPPORT
        return 'the kernel was built without IPv6 IPVS support';
      default:
        return undefined;
    }
  };
}

const svcDesc = (op: string, id: IpvsServiceId): OpDesc => ({
  op,
  object: describeService(id),
  hint: ipvsHint('service', op),
});
const destDesc = (op: string, id: IpvsServiceId, d: { addr: string; port: number }): OpDesc => ({
  op,
  object: describeDest(id, d),
  hint: ipvsHint('dest', op),
});

/** One IPVS change for Ipvs.batch(), built by the ops below. */
export type IpvsOp =
  | { kind: 'newService'; svc: IpvsService }
  | { kind: 'setService'; svc: IpvsService }
  | { kind: 'delService'; svc: IpvsServiceId }
  | { kind: 'newDest'; svc: IpvsServiceId; dest: IpvsDest }
  | { kind: 'setDest'; svc: IpvsServiceId; dest: IpvsDest }
  | { kind: 'delDest'; svc: IpvsServiceId; dest: { addr: string; port: number } }
  | { kind: 'setConfig'; timeouts: Partial<IpvsTimeouts> };

/** Encode one op as a batch item (the description is built only if it fails). */
export function encodeOp(fam: number, op: IpvsOp): BatchItem {
  switch (op.kind) {
    case 'newService':
      return { msg: newServiceMsg(fam, op.svc), desc: () => svcDesc('add', op.svc) };
    case 'setService':
      return { msg: setServiceMsg(fam, op.svc), desc: () => svcDesc('set', op.svc) };
    case 'delService':
      return { msg: delServiceMsg(fam, op.svc), desc: () => svcDesc('del', op.svc) };
    case 'newDest':
      return {
        msg: newDestMsg(fam, op.svc, op.dest),
        desc: () => destDesc('add', op.svc, op.dest),
      };
    case 'setDest':
      return {
        msg: setDestMsg(fam, op.svc, op.dest),
        desc: () => destDesc('set', op.svc, op.dest),
      };
    case 'delDest':
      return {
        msg: delDestMsg(fam, op.svc, op.dest),
        desc: () => destDesc('del', op.svc, op.dest),
      };
    case 'setConfig':
      return {
        msg: setConfigMsg(fam, op.timeouts),
        desc: { op: 'set', object: 'ipvs timeouts', hint: ipvsHint('config', 'set') },
      };
  }
}

export interface IpvsOptions {
  /** Namespace whose IPVS tables to program (IPVS state is per namespace). Default: ours. */
  netns?: Netns;
  /** Answer timeout, ms (a scheduler module autoload can take a moment). @default 5000 */
  timeoutMs?: number;
}

/**
 * A handle on the IPVS tables of one network namespace: a generic-netlink socket created in
 * it and the resolved IPVS family. Close it when done.
 */
export class Ipvs {
  readonly family: GenlFamily;
  private readonly sock: NetlinkSocket;

  private constructor(sock: NetlinkSocket, family: GenlFamily) {
    this.sock = sock;
    this.family = family;
  }

  /**
   * Open a handle. Throws NetlinkError ENOENT ("IPVS module not loaded") when the kernel has
   * no IPVS family: that is the runtime probe for IPVS support.
   */
  static open(opts: IpvsOptions = {}): Ipvs {
    const sock = NetlinkSocket.open(NETLINK_GENERIC, {
      ...(opts.netns ? { netns: opts.netns } : {}),
      timeoutMs: opts.timeoutMs ?? 5000,
    });
    try {
      const fam = genlFamily(
        sock,
        IPVS_GENL_NAME,
        'IPVS module not loaded: modprobe ip_vs (this kernel may lack IPVS; use the nftables backend)',
      );
      return new Ipvs(sock, fam);
    } catch (e) {
      sock.close();
      throw e;
    }
  }

  close(): void {
    this.sock.close();
  }

  private get id(): number {
    return this.family.id;
  }

  /** Equivalent to: `ipvsadm -A -f MARK -s SCHED [-p TIMEOUT]`. */
  newService(s: IpvsService): void {
    this.sock.request(newServiceMsg(this.id, s), svcDesc('add', s));
  }
  /** Equivalent to: `ipvsadm -E -f MARK -s SCHED`. */
  setService(s: IpvsService): void {
    this.sock.request(setServiceMsg(this.id, s), svcDesc('set', s));
  }
  /** Equivalent to: `ipvsadm -D -f MARK` (its destinations go with it). */
  delService(id: IpvsServiceId): void {
    this.sock.request(delServiceMsg(this.id, id), svcDesc('del', id));
  }
  /** Equivalent to: `ipvsadm -a -f MARK -r ADDR:PORT -m -w WEIGHT`. */
  newDest(id: IpvsServiceId, d: IpvsDest): void {
    this.sock.request(newDestMsg(this.id, id, d), destDesc('add', id, d));
  }
  /** Equivalent to: `ipvsadm -e -f MARK -r ADDR:PORT -m -w WEIGHT`. */
  setDest(id: IpvsServiceId, d: IpvsDest): void {
    this.sock.request(setDestMsg(this.id, id, d), destDesc('set', id, d));
  }
  /** Equivalent to: `ipvsadm -d -f MARK -r ADDR:PORT`. */
  delDest(id: IpvsServiceId, d: { addr: string; port: number }): void {
    this.sock.request(delDestMsg(this.id, id, d), destDesc('del', id, d));
  }

  /**
   * Every service of the namespace, with statistics unless `stats: false` (a reconcile does not
   * need them and decodes faster without). Equivalent to: `ipvsadm -Ln --stats`.
   */
  services(opts: { stats?: boolean } = {}): IpvsServiceInfo[] {
    const parts = this.sock.dump(getServicesMsg(this.id), {
      op: 'dump',
      object: 'ipvs services',
    });
    return parts
      .filter((m) => genlCmd(m.payload) === IPVS_CMD_NEW_SERVICE)
      .map((m) => decodeService(m.payload, opts.stats ?? true));
  }

  /** One service, or undefined if absent. Equivalent to: `ipvsadm -Ln -f MARK`. */
  service(id: IpvsServiceId): IpvsServiceInfo | undefined {
    try {
      const r = this.sock.request(
        msg(this.id, IPVS_CMD_GET_SERVICE, (w) => putService(w, id, false)),
        svcDesc('get', id),
      );
      const m = r.find((x) => genlCmd(x.payload) === IPVS_CMD_NEW_SERVICE);
      return m ? decodeService(m.payload) : undefined;
    } catch (e) {
      if ((e as NetlinkError).errnoName === 'ESRCH') return undefined;
      throw e;
    }
  }

  /** Destinations of one service with connection counts, and statistics unless `stats: false`. */
  dests(id: IpvsServiceId, opts: { stats?: boolean } = {}): IpvsDestInfo[] {
    const parts = this.sock.dump(getDestsMsg(this.id, id), {
      op: 'dump',
      object: `destinations of ${describeService(id)}`,
    });
    return parts
      .filter((m) => genlCmd(m.payload) === IPVS_CMD_NEW_DEST)
      .map((m) => decodeDest(m.payload, id.af ?? 'inet', opts.stats ?? true));
  }

  /** Equivalent to: `ipvsadm -L --timeout`. */
  getConfig(): IpvsTimeouts {
    const r = this.sock.request(getConfigMsg(this.id), { op: 'get', object: 'ipvs timeouts' });
    const m = r[0];
    if (!m) throw new MeshError('ENLDECODE', 'get ipvs timeouts: no answer message');
    return decodeConfig(m.payload);
  }

  /** Equivalent to: `ipvsadm --set TCP TCPFIN UDP`. Global to the namespace; 0 = unchanged. */
  setConfig(t: Partial<IpvsTimeouts>): void {
    this.sock.request(setConfigMsg(this.id, t), {
      op: 'set',
      object: 'ipvs timeouts',
      hint: ipvsHint('config', 'set'),
    });
  }

  /** IPVS version (e.g. 0x010201 = 1.2.1) and connection table size. Equivalent to: `ipvsadm -v`. */
  info(): { version: number; connTabSize: number } {
    const r = this.sock.request(getInfoMsg(this.id), { op: 'get', object: 'ipvs info' });
    const a = r[0] ? genlAttrs(r[0].payload) : undefined;
    return {
      version: a?.u32(IPVS_INFO_ATTR_VERSION) ?? 0,
      connTabSize: a?.u32(IPVS_INFO_ATTR_CONN_TAB_SIZE) ?? 0,
    };
  }

  /** Equivalent to: `ipvsadm -C`. Removes every service of the namespace, not only ours. */
  flush(): void {
    this.sock.request(flushMsg(this.id), { op: 'flush', object: 'ipvs services' });
  }

  /** Equivalent to: `ipvsadm -Z [-f MARK]`. */
  zero(id?: IpvsServiceId): void {
    this.sock.request(zeroMsg(this.id, id), { op: 'zero', object: 'ipvs counters' });
  }

  /**
   * Many changes with as few system calls as possible (packed datagrams, see
   * NetlinkSocket.batch). Not atomic: IPVS has no transactions; the kernel applies each message
   * in order and a failure does not stop the rest. Returns one entry per op: null or the error.
   */
  batch(ops: readonly IpvsOp[]): Array<NetlinkError | null> {
    return this.sock.batch(ops.map((op) => encodeOp(this.id, op)));
  }

  /** Like batch(), but throws the first error after every op has been tried. */
  batchOrThrow(ops: readonly IpvsOp[]): void {
    const err = this.batch(ops).find((r) => r !== null);
    if (err) throw err;
  }
}
