/**
 * meshd's configuration: flags, defaults and validation. Every field says what it does and its
 * default; validateConfig() names the bad field and how to fix it.
 * May import: util/, node built-ins.
 */
import { parseArgs } from 'node:util';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { UsageError } from '../util/errors.js';
import { isLogLevel, type LogLevel } from '../util/log.js';

export interface DaemonConfig {
  /** Durable state (raft log, snapshots, certificates). @default /var/lib/mesh */
  dataDir: string;
  /** Address other nodes reach this one at (gossip, control, VXLAN). @default none: required to join or init */
  advertiseAddr: string | undefined;
  /** Manager control-plane listener (raft, dispatcher), `IP:PORT`. @default 0.0.0.0:2377 */
  listenAddr: { host: string; port: number };
  /** Gossip port, UDP and TCP. @default 7946 */
  gossipPort: number;
  /** VXLAN data-path port (UDP). @default 4789 */
  dataPathPort: number;
  /** API socket for meshctl; created mode 0600 (root only). @default /run/meshd/meshd.sock */
  socket: string;
  /** Lowest log level written. @default info (or MESH_LOG) */
  logLevel: LogLevel;
  /** This node's name in gossip; must be unique in the cluster. @default the host name */
  nodeName: string;
  /** Gossip seeds to join at start, `IP` or `IP:PORT` (PORT defaults to --gossip-port). @default none */
  join: string[];
  /**
   * File of base64 gossip keys (16/24/32 bytes), one per line, the first being the primary.
   * Until the managers hand out keys this is how an operator encrypts gossip. @default none
   */
  gossipKeyFile: string | undefined;
  /**
   * Quorum-loss recovery on a surviving manager: keep the local committed state and restart
   * the raft membership with this manager alone. @default false
   */
  forceNewCluster: boolean;
  /**
   * Prefix of the named network namespaces this meshd creates (overlay networks, tasks). Named
   * namespaces are machine-wide (/run/netns), so several meshd on one machine (tests, the demo)
   * each need their own; a real node keeps the default. @default ''
   */
  netnsPrefix: string;
  /**
   * Load-balancer backend for service VIPs and published ports: IPVS when the kernel has it
   * (`auto`), else nftables. @default auto
   */
  lbBackend: 'auto' | 'ipvs' | 'nftables';
  /** How VIPs and published ports pick a task. @default rr */
  lbScheduler: 'rr' | 'wrr' | 'lc' | 'sh' | 'mh';
  /**
   * Idle timeouts (seconds) of balanced connections: established TCP, TCP after FIN, UDP.
   * Swarm's fixed 900 s TCP idle timeout silently drops long-lived idle connections; here it is
   * a setting. @default the kernel's (IPVS 900/120/300; nftables conntrack's)
   */
  lbTimeouts: { tcp?: number; tcpFin?: number; udp?: number };
  /**
   * Resolvers the tasks' embedded DNS forwards names it does not own to, `IP[:PORT]`.
   * @default the nameservers of /etc/resolv.conf (loopback ones skipped)
   */
  dnsUpstreams: string[] | undefined;
  /**
   * Seconds between netdb's periodic bulk syncs (per network, all entries with one random
   * member): the last resort behind member syncs and digests (docs/netdb.md). Tests set it
   * long so that only the event paths can converge. @default 30 (networkdb's)
   */
  netdbBulkSyncSec: number;
}

export const DEFAULTS: Readonly<DaemonConfig> = Object.freeze({
  dataDir: '/var/lib/mesh',
  advertiseAddr: undefined,
  listenAddr: Object.freeze({ host: '0.0.0.0', port: 2377 }),
  gossipPort: 7946,
  dataPathPort: 4789,
  socket: '/run/meshd/meshd.sock',
  logLevel: 'info',
  nodeName: hostname(),
  join: Object.freeze([]) as unknown as string[],
  gossipKeyFile: undefined,
  forceNewCluster: false,
  netnsPrefix: '',
  lbBackend: 'auto',
  lbScheduler: 'rr',
  lbTimeouts: Object.freeze({}),
  dnsUpstreams: undefined,
  netdbBulkSyncSec: 30,
});

export const USAGE = `meshd — the Mesh networking daemon (one per node, runs as root)

Usage: meshd [options]

Options:
  --data-dir DIR          durable state (default ${DEFAULTS.dataDir})
  --advertise-addr IP     address other nodes reach this one at
  --listen-addr IP:PORT   manager control-plane listener (default 0.0.0.0:2377)
  --gossip-port PORT      gossip, UDP and TCP (default 7946)
  --data-path-port PORT   VXLAN, UDP (default 4789)
  --socket PATH           API socket for meshctl (default ${DEFAULTS.socket})
  --log-level LEVEL       debug|info|warn|error (default info, or MESH_LOG)
  --node-name NAME        name in gossip, unique in the cluster (default the host name)
  --join IP[:PORT]        gossip seed to join at start (repeatable)
  --gossip-key-file FILE  base64 gossip keys, one per line, first is primary
  --netns-prefix PREFIX   prefix for the namespaces this meshd creates (several meshd on one
                          machine each need their own; default none)
  --lb-backend KIND       auto|ipvs|nftables: how service VIPs and published ports are
                          balanced (default auto: IPVS when the kernel has it)
  --lb-scheduler S        rr|wrr|lc|sh|mh: how a VIP or published port picks a task
                          (default rr)
  --lb-timeout-tcp SEC, --lb-timeout-tcpfin SEC, --lb-timeout-udp SEC
                          idle timeouts of balanced connections (default the kernel's)
  --dns-upstream IP[:PORT]
                          resolver the tasks' DNS forwards other names to (repeatable;
                          default the nameservers in /etc/resolv.conf)
  --netdb-bulk-sync SEC   seconds between netdb's periodic bulk syncs, 1..86400 (default 30);
                          digests repair gaps within seconds, this is the last resort
  --force-new-cluster     quorum lost for good: restart as the only manager, keeping the
                          committed state (join the other managers again afterwards)
  --version               print the version
  --help                  print this help

meshd runs in the foreground and stops cleanly on SIGTERM or SIGINT (leaving gossip
gracefully). It serves the API socket; with --advertise-addr it also runs the gossip agent
(memberlist-compatible, UDP+TCP --gossip-port). Once the node is in a cluster
(meshctl cluster init|join) it runs tasks, overlays, the load balancer and the tasks' DNS;
managers also keep the replicated store (see docs/daemon.md).
`;

function port(field: string, v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < 1 || n > 65535)
    throw new UsageError(`${field} ${JSON.stringify(v)}: want a port 1..65535`);
  return n;
}

/** Parse meshd's command line. Throws UsageError (exit 2) on anything wrong. */
export function parseDaemonArgs(
  argv: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): DaemonConfig | 'help' | 'version' {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        'data-dir': { type: 'string' },
        'advertise-addr': { type: 'string' },
        'listen-addr': { type: 'string' },
        'gossip-port': { type: 'string' },
        'data-path-port': { type: 'string' },
        socket: { type: 'string' },
        'log-level': { type: 'string' },
        'node-name': { type: 'string' },
        join: { type: 'string', multiple: true },
        'gossip-key-file': { type: 'string' },
        'force-new-cluster': { type: 'boolean' },
        'netns-prefix': { type: 'string' },
        'lb-backend': { type: 'string' },
        'lb-scheduler': { type: 'string' },
        'lb-timeout-tcp': { type: 'string' },
        'lb-timeout-tcpfin': { type: 'string' },
        'lb-timeout-udp': { type: 'string' },
        'dns-upstream': { type: 'string', multiple: true },
        'netdb-bulk-sync': { type: 'string' },
        version: { type: 'boolean', short: 'v' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (e) {
    throw new UsageError((e as Error).message.replace(/^./, (c) => c.toLowerCase()));
  }
  const o = parsed.values;
  if (o.help) return 'help';
  if (o.version) return 'version';
  const cfg: DaemonConfig = { ...DEFAULTS, listenAddr: { ...DEFAULTS.listenAddr }, join: [] };
  if (o['data-dir'] !== undefined) cfg.dataDir = o['data-dir'];
  if (o['advertise-addr'] !== undefined) cfg.advertiseAddr = o['advertise-addr'];
  if (o['listen-addr'] !== undefined) {
    const m = /^(.*):(\d+)$/.exec(o['listen-addr']);
    if (!m)
      throw new UsageError(
        `--listen-addr ${JSON.stringify(o['listen-addr'])}: want IP:PORT, e.g. 0.0.0.0:2377`,
      );
    cfg.listenAddr = {
      host: m[1]!.replace(/^\[(.*)\]$/, '$1'),
      port: port('--listen-addr', m[2]!),
    };
  }
  if (o['gossip-port'] !== undefined) cfg.gossipPort = port('--gossip-port', o['gossip-port']);
  if (o['data-path-port'] !== undefined)
    cfg.dataPathPort = port('--data-path-port', o['data-path-port']);
  if (o.socket !== undefined) cfg.socket = o.socket;
  if (o['node-name'] !== undefined) cfg.nodeName = o['node-name'];
  if (o.join !== undefined) cfg.join = o.join;
  if (o['gossip-key-file'] !== undefined) cfg.gossipKeyFile = o['gossip-key-file'];
  if (o['force-new-cluster']) cfg.forceNewCluster = true;
  if (o['netns-prefix'] !== undefined) cfg.netnsPrefix = o['netns-prefix'];
  if (o['lb-backend'] !== undefined) {
    const b = o['lb-backend'];
    if (b !== 'auto' && b !== 'ipvs' && b !== 'nftables') {
      throw new UsageError(`--lb-backend ${JSON.stringify(b)}: want auto, ipvs or nftables`);
    }
    cfg.lbBackend = b;
  }
  if (o['lb-scheduler'] !== undefined) {
    const v = o['lb-scheduler'];
    if (v !== 'rr' && v !== 'wrr' && v !== 'lc' && v !== 'sh' && v !== 'mh') {
      throw new UsageError(`--lb-scheduler ${JSON.stringify(v)}: want rr, wrr, lc, sh or mh`);
    }
    cfg.lbScheduler = v;
  }
  cfg.lbTimeouts = {};
  for (const [flag, key] of [
    ['lb-timeout-tcp', 'tcp'],
    ['lb-timeout-tcpfin', 'tcpFin'],
    ['lb-timeout-udp', 'udp'],
  ] as const) {
    const v = o[flag];
    if (v === undefined) continue;
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < 1 || n > 86_400) {
      throw new UsageError(`--${flag} ${JSON.stringify(v)}: want whole seconds 1..86400`);
    }
    cfg.lbTimeouts[key] = n;
  }
  if (o['dns-upstream'] !== undefined) {
    for (const u of o['dns-upstream']) {
      const m = /^([^:]+)(?::(\d+))?$/.exec(u);
      if (!m || isIP(m[1]!) !== 4 || (m[2] !== undefined && (+m[2] < 1 || +m[2] > 65535))) {
        throw new UsageError(`--dns-upstream ${JSON.stringify(u)}: want IPv4[:PORT]`);
      }
    }
    cfg.dnsUpstreams = o['dns-upstream'];
  }
  const bulk = o['netdb-bulk-sync'];
  if (bulk !== undefined) {
    const n = Number(bulk);
    if (!/^\d+$/.test(bulk) || n < 1 || n > 86_400) {
      throw new UsageError(
        `--netdb-bulk-sync ${JSON.stringify(bulk)}: want whole seconds 1..86400 (default 30)`,
      );
    }
    cfg.netdbBulkSyncSec = n;
  }
  const level = o['log-level'] ?? env.MESH_LOG;
  if (level !== undefined) {
    if (!isLogLevel(level))
      throw new UsageError(`--log-level ${JSON.stringify(level)}: want debug, info, warn or error`);
    cfg.logLevel = level;
  }
  validateConfig(cfg);
  return cfg;
}

/** Check a whole configuration; the error names the field and the fix. */
export function validateConfig(c: DaemonConfig): void {
  if (!c.dataDir.startsWith('/'))
    throw new UsageError(`--data-dir ${JSON.stringify(c.dataDir)}: must be an absolute path`);
  if (!c.socket.startsWith('/'))
    throw new UsageError(`--socket ${JSON.stringify(c.socket)}: must be an absolute path`);
  if (c.advertiseAddr !== undefined && isIP(c.advertiseAddr) === 0) {
    throw new UsageError(
      `--advertise-addr ${JSON.stringify(c.advertiseAddr)}: want an IP address this node is reachable at`,
    );
  }
  if (isIP(c.listenAddr.host) === 0) {
    throw new UsageError(
      `--listen-addr host ${JSON.stringify(c.listenAddr.host)}: want an IP address (0.0.0.0 for all)`,
    );
  }
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(c.nodeName)) {
    throw new UsageError(
      `--node-name ${JSON.stringify(c.nodeName)}: use 1..63 letters, digits, '.', '_' or '-'`,
    );
  }
  for (const j of c.join) {
    const m = /^([^:]+)(?::(\d+))?$/.exec(j);
    if (
      !m ||
      isIP(m[1]!) !== 4 ||
      (m[2] !== undefined && (Number(m[2]) < 1 || Number(m[2]) > 65535))
    ) {
      throw new UsageError(`--join ${JSON.stringify(j)}: want IPv4[:PORT] of a node to join`);
    }
  }
  if (c.join.length > 0 && c.advertiseAddr === undefined) {
    throw new UsageError(
      '--join needs --advertise-addr: the address gossip binds to and others reach this node at',
    );
  }
  if (!/^[A-Za-z0-9_.-]{0,24}$/.test(c.netnsPrefix)) {
    throw new UsageError(
      `--netns-prefix ${JSON.stringify(c.netnsPrefix)}: use at most 24 letters, digits, '.', '_' or '-'`,
    );
  }
  if (c.gossipPort === c.listenAddr.port) {
    throw new UsageError(
      `--gossip-port ${c.gossipPort}: clashes with --listen-addr's port; pick another`,
    );
  }
}
