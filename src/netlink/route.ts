/**
 * Routes over rtnetlink: add/replace, delete, list, in any table.
 * May import: ./nl, ./rt, ./socket, ./link, util/.
 */
import { MeshError } from '../util/errors.js';
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
  RTA_DST,
  RTA_GATEWAY,
  RTA_OIF,
  RTA_PREFSRC,
  RTA_PRIORITY,
  RTA_TABLE,
  RTM_DELROUTE,
  RTM_GETROUTE,
  RTM_NEWROUTE,
  RTN_UNICAST,
  RTPROT_STATIC,
  RT_SCOPE_LINK,
  RT_SCOPE_NOWHERE,
  RT_SCOPE_UNIVERSE,
  RT_TABLE_MAIN,
  formatIp,
  parseCidr,
  parseIp,
  rtmsg,
} from './rt.js';
import { linkGet } from './link.js';
import { isErrno, type NetlinkSocket } from './socket.js';

export interface RouteSpec {
  /** Destination prefix, or `default`. */
  dst: string;
  /** Gateway address. */
  via?: string;
  /** Output device (name or index). */
  dev?: number | string;
  /** Preferred source address. */
  src?: string;
  /** Routing table id. @default 254 (main) */
  table?: number;
  /** RT_SCOPE_*. @default link scope without a gateway, universe with one */
  scope?: number;
  /** RTN_* type. @default 1 (unicast) */
  type?: number;
  /** Metric (RTA_PRIORITY). */
  metric?: number;
}

export interface Route {
  family: number;
  dst: string;
  via?: string;
  dev?: number;
  src?: string;
  table: number;
  scope: number;
  type: number;
  protocol: number;
  metric?: number;
}

function parseDst(
  s: string,
  family?: number,
): { family: number; bytes?: Buffer; prefixLen: number } {
  if (s === 'default') return { family: family ?? AF_INET, prefixLen: 0 };
  const p = parseCidr(s, 'route destination');
  return { family: p.family, bytes: p.bytes, prefixLen: p.prefixLen };
}

function routeMsg(type: number, flags: number, h: NetlinkSocket, r: RouteSpec): Buffer {
  const via = r.via === undefined ? undefined : parseIp(r.via, 'gateway');
  const dst = parseDst(r.dst, via?.family);
  if (via && via.family !== dst.family) {
    throw new MeshError('EUSAGE', `route ${r.dst}: gateway ${r.via} is of another address family`);
  }
  const table = r.table ?? RT_TABLE_MAIN;
  const w = new NlWriter(type, flags);
  w.raw(
    rtmsg({
      family: dst.family,
      dstLen: dst.prefixLen,
      table,
      protocol: type === RTM_DELROUTE ? 0 : RTPROT_STATIC,
      scope: r.scope ?? (via ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK),
      type: r.type ?? RTN_UNICAST,
    }),
  );
  if (dst.bytes) w.bytes(RTA_DST, dst.bytes);
  if (via) w.bytes(RTA_GATEWAY, via.bytes);
  if (r.dev !== undefined)
    w.u32(RTA_OIF, typeof r.dev === 'number' ? r.dev : linkGet(h, r.dev).index);
  if (r.src !== undefined) w.bytes(RTA_PREFSRC, parseIp(r.src, 'route source').bytes);
  if (r.metric !== undefined) w.u32(RTA_PRIORITY, r.metric);
  w.u32(RTA_TABLE, table);
  return w.finish();
}

function describe(r: RouteSpec): string {
  return `route ${r.dst}${r.via ? ` via ${r.via}` : ''}${r.dev !== undefined ? ` dev ${r.dev}` : ''}${r.table ? ` table ${r.table}` : ''}`;
}

/**
 * Add a route; with `replace`, overwrite an existing one (idempotent).
 * Equivalent to: `ip route add|replace DST [via GW] [dev DEV] [src IP] [table T] [scope S] [metric M]`.
 */
export function routeAdd(h: NetlinkSocket, r: RouteSpec, o: { replace?: boolean } = {}): void {
  const flags = NLM_F_REQUEST | NLM_F_CREATE | (o.replace ? NLM_F_REPLACE : NLM_F_EXCL);
  h.request(routeMsg(RTM_NEWROUTE, flags, h, r), {
    op: 'add',
    object: describe(r),
    hint: (e) =>
      e === 101 ? 'the gateway is not reachable on a directly connected subnet' : undefined,
  });
}

/** Equivalent to: `ip route del DST [via GW] [dev DEV] [table T]`. */
export function routeDel(h: NetlinkSocket, r: RouteSpec, o: { ifExists?: boolean } = {}): void {
  try {
    // Scope NOWHERE and type UNSPEC match any route with the given keys, as `ip route del` does.
    const spec = { ...r, scope: r.scope ?? RT_SCOPE_NOWHERE, type: r.type ?? 0 };
    h.request(routeMsg(RTM_DELROUTE, NLM_F_REQUEST, h, spec), { op: 'del', object: describe(r) });
  } catch (e) {
    if (o.ifExists && isErrno(e, 'ESRCH')) return;
    throw e;
  }
}

/**
 * Routes of one table (default main; 0 = all tables).
 * Equivalent to: `ip route show table T` (`ip -6 route` with family AF_INET6).
 */
export function routeList(
  h: NetlinkSocket,
  filter: { table?: number; family?: number } = {},
): Route[] {
  const family = filter.family ?? AF_INET;
  const table = filter.table ?? RT_TABLE_MAIN;
  const w = new NlWriter(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP);
  w.raw(rtmsg({ family, table: table < 256 ? table : 0 }));
  const out: Route[] = [];
  for (const m of h.dump(w.finish(), { op: 'list', object: 'routes' })) {
    if (m.type !== RTM_NEWROUTE) continue;
    const p = m.payload;
    const a = new Attrs(p, 12);
    const t = a.u32(RTA_TABLE) ?? p.readUInt8(4);
    if (table !== 0 && t !== table) continue;
    const fam = p.readUInt8(0);
    const dstLen = p.readUInt8(1);
    const dstRaw = a.get(RTA_DST);
    const route: Route = {
      family: fam,
      dst: dstRaw ? `${formatIp(dstRaw)}/${dstLen}` : dstLen === 0 ? 'default' : '?',
      table: t,
      scope: p.readUInt8(6),
      type: p.readUInt8(7),
      protocol: p.readUInt8(5),
    };
    const gw = a.get(RTA_GATEWAY);
    if (gw) route.via = formatIp(gw);
    const oif = a.u32(RTA_OIF);
    if (oif !== undefined) route.dev = oif;
    const src = a.get(RTA_PREFSRC);
    if (src) route.src = formatIp(src);
    const metric = a.u32(RTA_PRIORITY);
    if (metric !== undefined) route.metric = metric;
    out.push(route);
  }
  return out;
}
