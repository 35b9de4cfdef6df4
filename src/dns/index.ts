/**
 * The embedded DNS: one server per task (127.0.0.11 in its namespace) answering from the node's
 * service table. May import: ./wire, ./resolver, ./server.
 */
export { DnsTable, type Resolution } from './resolver.js';
export {
  DNS_ADDR,
  DEFAULT_TTL,
  DnsServer,
  taskResolvConf,
  upstreamsFromResolvConf,
  type DnsCounters,
  type DnsServerOptions,
} from './server.js';
export { parseQuery, encodeResponse, readName, TYPE, RCODE, type Query, type Rr } from './wire.js';
