/**
 * The netlink layer's public surface: sockets bound to a namespace, and the object modules
 * (link, addr, route, neigh/fdb, genl) over them. See docs/netlink.md.
 */
export * from './socket.js';
export * from './netns.js';
export * from './link.js';
export * from './addr.js';
export * from './route.js';
export * from './neigh.js';
export * from './genl.js';
export {
  NETLINK_ROUTE,
  NETLINK_GENERIC,
  NETLINK_XFRM,
  NETLINK_NETFILTER,
  NlWriter,
  Attrs,
} from './nl.js';
export { parseIp, parseCidr, parseMac, formatIp, formatMac } from './rt.js';
