/**
 * The embedded DNS server of one task: UDP and TCP port 53 at 127.0.0.11 inside the task's
 * network namespace (what Docker's embedded DNS does), answering from the node's DnsTable and
 * forwarding names that are not the cluster's to upstream resolvers.
 *
 * The listening sockets are created while the main thread is switched into the task's
 * namespace (withNetns): a socket belongs to the namespace it was created in, whichever thread
 * uses it later. UDP binds 127.0.0.11 (a lookup function that answers synchronously makes
 * dgram create and bind the socket inside the switch); TCP listens on port 53 of every address
 * there (Node creates a listener synchronously only without a host) and serves only
 * connections made to 127.0.0.11. Forwarded queries leave from meshd's own namespace, so a
 * task needs no route to the resolvers and the resolvers see the node, as with any local
 * resolver.
 * May import: node built-ins, netlink/ (netns), util/, ./wire, ./resolver.
 */
import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { randomInt } from 'node:crypto';
import { netnsOpen, withNetns } from '../netlink/netns.js';
import { MeshError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import type { DnsTable } from './resolver.js';
import {
  RCODE,
  TYPE,
  UDP_MAX_PLAIN,
  encodeResponse,
  errorResponse,
  parseQuery,
  type Query,
  type Rr,
} from './wire.js';

const log = createLogger('dns');

export const DNS_ADDR = '127.0.0.11';
/** Answers from the live tables: short, so a client never holds an address for long. */
export const DEFAULT_TTL = 5;
const MAX_INFLIGHT = 256;
const MAX_TCP_CONNS = 64;
const TCP_IDLE_MS = 10_000;

export interface DnsServerOptions {
  /** The task's namespace (`/run/netns/NAME`). */
  netnsPath: string;
  /** Network ids the task is on: what it may resolve. */
  networks: string[];
  table: DnsTable;
  /** `IP` or `IP:PORT`. @default the nameservers of /etc/resolv.conf (loopback skipped) */
  upstreams?: string[];
  /** @default 5 s */
  ttl?: number;
  /** @default 2000 ms per upstream */
  forwardTimeoutMs?: number;
  /** UDP/TCP port (tests). @default 53 */
  port?: number;
}

export interface DnsCounters {
  queries: number;
  answered: number;
  nxdomain: number;
  forwarded: number;
  forwardFailures: number;
  malformed: number;
  truncated: number;
  tcpQueries: number;
}

/** The task's /etc/resolv.conf: only the embedded server. */
export function taskResolvConf(opts: { search?: string[] } = {}): string {
  const search = opts.search && opts.search.length > 0 ? `search ${opts.search.join(' ')}\n` : '';
  return `# written by meshd: the task's embedded DNS (services, tasks.<service>, forwarding)\nnameserver ${DNS_ADDR}\n${search}options ndots:0\n`;
}

/** Nameservers of a resolv.conf text, IPv4 and not loopback. */
export function upstreamsFromResolvConf(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (m && net.isIPv4(m[1]!) && !m[1]!.startsWith('127.')) out.push(m[1]!);
  }
  return out;
}

function hostPort(s: string): { host: string; port: number } {
  const [host, port] = s.split(':');
  return { host: host!, port: port ? Number(port) : 53 };
}

export class DnsServer {
  readonly counters: DnsCounters = {
    queries: 0,
    answered: 0,
    nxdomain: 0,
    forwarded: 0,
    forwardFailures: 0,
    malformed: 0,
    truncated: 0,
    tcpQueries: 0,
  };
  private inflight = 0;
  private closed = false;
  private readonly conns = new Set<net.Socket>();
  private readonly ttl: number;
  private readonly upstreams: { host: string; port: number }[];
  private readonly timeoutMs: number;

  private constructor(
    private readonly opts: DnsServerOptions,
    private readonly udp: dgram.Socket,
    private readonly tcp: net.Server,
  ) {
    this.ttl = opts.ttl ?? DEFAULT_TTL;
    this.timeoutMs = opts.forwardTimeoutMs ?? 2_000;
    let ups = opts.upstreams;
    if (ups === undefined) {
      try {
        ups = upstreamsFromResolvConf(readFileSync('/etc/resolv.conf', 'utf8'));
      } catch {
        ups = [];
      }
    }
    this.upstreams = ups.map(hostPort);
  }

  static async start(opts: DnsServerOptions): Promise<DnsServer> {
    const port = opts.port ?? 53;
    const ns = netnsOpen({ path: opts.netnsPath });
    let udp: dgram.Socket;
    let tcp: net.Server;
    try {
      [udp, tcp] = withNetns(ns, () => {
        const u = dgram.createSocket({
          type: 'udp4',
          // Synchronous: dgram then creates and binds the socket before withNetns returns.
          lookup: (addr: string, o: unknown, cb?: unknown) => {
            const done = (typeof o === 'function' ? o : cb) as (
              e: Error | null,
              a: string,
              f: number,
            ) => void;
            done(null, addr, 4);
          },
        });
        u.bind({ address: DNS_ADDR, port, exclusive: true });
        const t = net.createServer();
        t.listen({ port, exclusive: true });
        return [u, t] as const;
      });
    } catch (e) {
      throw new MeshError(
        'EDNS',
        `start DNS server in ${opts.netnsPath}: ${(e as Error).message}; is something else on port ${port} there?`,
        { cause: e },
      );
    } finally {
      ns.close();
    }
    const s = new DnsServer(opts, udp, tcp);
    await Promise.all([
      new Promise<void>((resolve, reject) => {
        // The bind ran synchronously; 'listening' may already have been emitted.
        try {
          udp.address();
          resolve();
        } catch {
          udp.once('listening', resolve);
          udp.once('error', reject);
        }
      }),
      new Promise<void>((resolve, reject) => {
        if (tcp.listening) resolve();
        else {
          tcp.once('listening', resolve);
          tcp.once('error', reject);
        }
      }),
    ]).catch((e: unknown) => {
      udp.close();
      tcp.close();
      throw new MeshError('EDNS', `start DNS server in ${opts.netnsPath}: ${(e as Error).message}`);
    });
    udp.on('error', (e) => log.warn('dns udp error', { err: e }));
    udp.on('message', (msg, rinfo) => void s.onUdp(msg, rinfo));
    tcp.on('connection', (c) => s.onTcp(c));
    tcp.on('error', (e) => log.warn('dns tcp error', { err: e }));
    return s;
  }

  private async onUdp(msg: Buffer, rinfo: dgram.RemoteInfo): Promise<void> {
    const out = await this.handle(msg, false);
    if (out && !this.closed) this.udp.send(out, rinfo.port, rinfo.address);
  }

  private onTcp(c: net.Socket): void {
    // The listener is dual-stack (bound to ::), so IPv4 shows as ::ffff:a.b.c.d.
    const local = (c.localAddress ?? '').replace(/^::ffff:/, '');
    if (local !== DNS_ADDR || this.conns.size >= MAX_TCP_CONNS || this.closed) {
      c.destroy();
      return;
    }
    this.conns.add(c);
    c.setTimeout(TCP_IDLE_MS, () => c.destroy());
    c.on('close', () => this.conns.delete(c));
    c.on('error', () => c.destroy());
    let buf = Buffer.alloc(0);
    c.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length > 70_000) {
        c.destroy();
        return;
      }
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) break;
        const msg = buf.subarray(2, 2 + len);
        buf = buf.subarray(2 + len);
        this.counters.tcpQueries++;
        void this.handle(Buffer.from(msg), true).then((out) => {
          if (!out || c.destroyed) return;
          const len2 = Buffer.alloc(2);
          len2.writeUInt16BE(out.length);
          c.write(Buffer.concat([len2, out]));
        });
      }
    });
  }

  /** One query in, one response out (undefined: drop, e.g. a response sent to us). */
  async handle(msg: Buffer, tcp: boolean): Promise<Buffer | undefined> {
    this.counters.queries++;
    let q: Query;
    try {
      q = parseQuery(msg);
    } catch {
      this.counters.malformed++;
      return msg.length >= 2 ? errorResponse(msg.readUInt16BE(0), RCODE.FORMERR) : undefined;
    }
    if (q.qr) return undefined;
    const question = q.questions[0];
    if (q.opcode !== 0 || q.questions.length !== 1 || !question) {
      return errorResponse(q.id, q.opcode !== 0 ? RCODE.NOTIMP : RCODE.FORMERR, q);
    }
    const r = this.opts.table.resolve(question.name, question.type, this.opts.networks, this.ttl);
    if (r.kind === 'answer') {
      this.counters.answered++;
      if (r.rcode === RCODE.NXDOMAIN) this.counters.nxdomain++;
      const additional: Rr[] = [];
      if (question.type === TYPE.SRV) {
        for (const a of r.answers) {
          if (!('srv' in a.data)) continue;
          for (const ip of this.opts.table.addresses(a.data.srv.target, this.opts.networks)) {
            additional.push({
              name: a.data.srv.target,
              type: TYPE.A,
              ttl: this.ttl,
              data: { a: ip },
            });
          }
        }
      }
      const out = encodeResponse(q, r.rcode, r.answers, {
        aa: true,
        additional,
        ...(tcp ? {} : { maxSize: Math.min(q.ednsUdpSize ?? UDP_MAX_PLAIN, 4096) }),
      });
      if (!tcp && out.length >= 4 && (out.readUInt16BE(2) & 0x0200) !== 0)
        this.counters.truncated++;
      return out;
    }
    return this.forward(q, msg, tcp);
  }

  private async forward(q: Query, msg: Buffer, tcp: boolean): Promise<Buffer> {
    if (this.upstreams.length === 0 || this.inflight >= MAX_INFLIGHT) {
      this.counters.forwardFailures++;
      return errorResponse(q.id, RCODE.SERVFAIL, q);
    }
    this.inflight++;
    this.counters.forwarded++;
    try {
      for (const up of this.upstreams) {
        try {
          let reply = tcp ? await this.tcpAsk(up, msg) : await this.udpAsk(up, msg);
          // Truncated over UDP: ask again over TCP and give the client what fits it.
          if (!tcp && reply.length >= 4 && (reply.readUInt16BE(2) & 0x0200) !== 0) {
            const full = await this.tcpAsk(up, msg).catch(() => undefined);
            const limit = Math.min(q.ednsUdpSize ?? UDP_MAX_PLAIN, 4096);
            if (full && full.length <= limit) reply = full;
          }
          return reply;
        } catch {
          // next upstream
        }
      }
      this.counters.forwardFailures++;
      return errorResponse(q.id, RCODE.SERVFAIL, q);
    } finally {
      this.inflight--;
    }
  }

  /** One exchange with an upstream over UDP from meshd's namespace, with our own query id. */
  private udpAsk(up: { host: string; port: number }, msg: Buffer): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const id = randomInt(0, 0x10000);
      const out = Buffer.from(msg);
      const orig = out.readUInt16BE(0);
      out.writeUInt16BE(id, 0);
      const s = dgram.createSocket('udp4');
      const timer = setTimeout(() => {
        s.close();
        reject(new MeshError('ETIMEDOUT', `dns forward to ${up.host}: no answer`));
      }, this.timeoutMs);
      s.on('error', (e) => {
        clearTimeout(timer);
        s.close();
        reject(e);
      });
      s.on('message', (m, r) => {
        // Only the upstream's answer to our id (RFC 5452: ignore anything else).
        if (r.address !== up.host || m.length < 12 || m.readUInt16BE(0) !== id) return;
        clearTimeout(timer);
        s.close();
        const reply = Buffer.from(m);
        reply.writeUInt16BE(orig, 0);
        resolve(reply);
      });
      s.send(out, up.port, up.host);
    });
  }

  private tcpAsk(up: { host: string; port: number }, msg: Buffer): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const c = net.connect({ host: up.host, port: up.port });
      const timer = setTimeout(() => {
        c.destroy();
        reject(new MeshError('ETIMEDOUT', `dns forward to ${up.host} over tcp: no answer`));
      }, this.timeoutMs);
      let buf = Buffer.alloc(0);
      c.on('connect', () => {
        const len = Buffer.alloc(2);
        len.writeUInt16BE(msg.length);
        c.write(Buffer.concat([len, msg]));
      });
      c.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          clearTimeout(timer);
          c.destroy();
          resolve(buf.subarray(2, 2 + buf.readUInt16BE(0)));
        }
      });
      c.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const c of this.conns) c.destroy();
    await Promise.all([
      new Promise<void>((r) => this.udp.close(() => r())),
      new Promise<void>((r) => this.tcp.close(() => r())),
    ]);
  }
}
