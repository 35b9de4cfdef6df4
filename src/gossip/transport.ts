/**
 * The real network under the gossip driver: one UDP socket (`node:dgram`) and one TCP listener
 * (`node:net`) on the same address and port (memberlist's NetTransport, 7946 by default), an
 * outbound TCP dialer bound to the same address, and an incremental stream reader.
 *
 * Packets are best effort; streams are reliable and carry one request and at most one reply
 * (memberlist `net.go`: handleConn, sendAndReceiveState). Every socket this module opens is
 * tracked and closed by `close()`. This module knows bytes, not messages: framing and
 * decoding live in packet.ts/stream.ts, the protocol in swim.ts, the wiring in memberlist.ts.
 * May import node:dgram, node:net, node:events, ./msgpack.js (WireError), ../util/errors.js.
 */

import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import type { EventEmitter } from 'node:events';
import { createServer, connect, isIPv6, type Server, type Socket } from 'node:net';

import { MeshError } from '../util/errors.js';
import { WireError } from './msgpack.js';

export interface TransportOptions {
  /** Address to bind (UDP and TCP). Not 0.0.0.0: peers must see one stable source address. */
  bindAddr: string;
  /** Port for both UDP and TCP; 0 picks a free TCP port and binds UDP to the same. @default 7946 */
  port?: number;
  /** Open inbound connections allowed at once; more are refused by the kernel-side close. @default 1024 */
  maxConnections?: number;
}

export interface TransportHandlers {
  /** One received datagram. Must not throw (the transport counts a throw as a bad packet). */
  packet(from: string, buf: Uint8Array): void;
  /** One inbound TCP connection; the handler owns it (reads, replies, ends it). */
  stream(from: string, sock: Socket): void;
}

export interface TransportCounters {
  packetsIn: number;
  packetsOut: number;
  bytesIn: number;
  bytesOut: number;
  /** Sends that failed synchronously or in the send callback (unreachable, EPERM, …). */
  sendErrors: number;
  streamsIn: number;
  streamsOut: number;
  /** Handler throws: never fatal, always counted. */
  handlerErrors: number;
}

/** `host:port`, with brackets for IPv6 (what swim.ts parseAddress takes back). */
export function joinHostPort(host: string, port: number): string {
  return isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Largest datagram we accept; memberlist reads into a 65536-byte buffer. */
export const MAX_DATAGRAM = 65536;

/** Resolves on 'listening'; rejects with the bind error. */
function listening(e: EventEmitter): Promise<void> {
  return new Promise((resolve, reject) => {
    e.once('listening', () => resolve());
    e.once('error', (err: Error) => reject(err));
  });
}

export class Transport {
  readonly bindAddr: string;
  readonly port: number;
  readonly counters: TransportCounters = {
    packetsIn: 0,
    packetsOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    sendErrors: 0,
    streamsIn: 0,
    streamsOut: 0,
    handlerErrors: 0,
  };
  private readonly udp: UdpSocket;
  private readonly tcp: Server;
  private readonly sockets = new Set<Socket>();
  private closed = false;

  private constructor(bindAddr: string, port: number, udp: UdpSocket, tcp: Server) {
    this.bindAddr = bindAddr;
    this.port = port;
    this.udp = udp;
    this.tcp = tcp;
  }

  /**
   * Binds TCP first (so port 0 can pick a free port), then UDP on the same port. Throws a
   * MeshError `EGOSSIP` naming the address when either bind fails.
   */
  static async listen(opts: TransportOptions, h: TransportHandlers): Promise<Transport> {
    const port = opts.port ?? 7946;
    const addr = opts.bindAddr;
    if (addr === '0.0.0.0' || addr === '::') {
      throw new MeshError(
        'EUSAGE',
        `bind gossip ${joinHostPort(addr, port)}: give a concrete address (peers reply to the source address)`,
      );
    }
    const tcp = createServer({ noDelay: true });
    // A flood of idle connections must not exhaust file descriptors; each one also ends at
    // its read deadline (tcpTimeout).
    tcp.maxConnections = opts.maxConnections ?? 1024;
    const bindErr = (what: string, e: unknown) =>
      new MeshError(
        'EGOSSIP',
        `bind gossip ${what} ${joinHostPort(addr, port)}: ${(e as Error).message}`,
        { cause: e },
      );
    try {
      tcp.listen({ host: addr, port, exclusive: true });
      await listening(tcp);
    } catch (e) {
      tcp.close();
      throw bindErr('tcp', e);
    }
    const a = tcp.address();
    const realPort = typeof a === 'object' && a ? a.port : port;
    const udp = createSocket({ type: isIPv6(addr) ? 'udp6' : 'udp4' });
    try {
      udp.bind({ address: addr, port: realPort, exclusive: true });
      await listening(udp);
    } catch (e) {
      udp.close();
      tcp.close();
      throw bindErr('udp', e);
    }
    const t = new Transport(addr, realPort, udp, tcp);
    udp.on('message', (msg: Buffer, r: RemoteInfo) => {
      t.counters.packetsIn++;
      t.counters.bytesIn += msg.length;
      try {
        h.packet(joinHostPort(r.address, r.port), msg);
      } catch {
        t.counters.handlerErrors++;
      }
    });
    // A UDP socket error (e.g. ICMP-driven) must not kill the daemon.
    udp.on('error', () => t.counters.sendErrors++);
    tcp.on('connection', (sock: Socket) => {
      if (t.closed) {
        sock.destroy();
        return;
      }
      t.counters.streamsIn++;
      t.track(sock);
      try {
        h.stream(joinHostPort(sock.remoteAddress ?? '', sock.remotePort ?? 0), sock);
      } catch {
        t.counters.handlerErrors++;
        sock.destroy();
      }
    });
    tcp.on('error', () => t.counters.handlerErrors++);
    return t;
  }

  private track(sock: Socket): void {
    this.sockets.add(sock);
    sock.on('error', () => undefined);
    sock.on('close', () => this.sockets.delete(sock));
  }

  /** Best-effort datagram. Errors are counted, never thrown. */
  send(host: string, port: number, buf: Uint8Array): void {
    if (this.closed) return;
    this.counters.packetsOut++;
    this.counters.bytesOut += buf.length;
    try {
      this.udp.send(buf, port, host, (err) => {
        if (err) this.counters.sendErrors++;
      });
    } catch {
      this.counters.sendErrors++;
    }
  }

  /** Opens a TCP connection from our bind address. Errors arrive as the socket's 'error'. */
  dial(host: string, port: number): Socket {
    if (this.closed)
      throw new MeshError('EGOSSIP', `dial ${joinHostPort(host, port)}: transport closed`);
    this.counters.streamsOut++;
    const sock = connect({ host, port, localAddress: this.bindAddr, noDelay: true });
    this.track(sock);
    return sock;
  }

  /** Open connections (inbound and outbound), for diagnostics and tests. */
  get openStreams(): number {
    return this.sockets.size;
  }

  /** Closes the listener, the UDP socket and every open connection. Safe to call twice. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await Promise.all([
      new Promise<void>((res) => this.tcp.close(() => res())),
      new Promise<void>((res) => {
        try {
          this.udp.close(() => res());
        } catch {
          res();
        }
      }),
    ]);
  }
}

export interface ReadOptions {
  /** Absolute deadline on `clock()`. */
  deadline: number;
  clock: () => number;
  /** Refuse a message longer than this many bytes. */
  maxBytes: number;
}

/**
 * Reads one message from a stream: bytes are appended and `parse` retried until it returns,
 * throws something other than a truncated WireError, the peer closes, `maxBytes` is exceeded
 * or the deadline passes. The socket is paused (not closed) when the message is complete, so a
 * caller can still write a reply; bytes after the message are ignored (one request per
 * connection, as memberlist).
 */
export function readMessage<T>(
  sock: Socket,
  parse: (buf: Uint8Array) => T,
  o: ReadOptions,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    let finished = false;
    const finish = (err: Error | null, v?: T) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('error', onError);
      sock.off('close', onEnd);
      sock.pause();
      if (err) reject(err);
      else resolve(v as T);
    };
    const timer = setTimeout(
      () => finish(new MeshError('EGOSSIP', 'read gossip stream: i/o timeout')),
      Math.max(0, o.deadline - o.clock()),
    );
    const onData = (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      if (buf.length > o.maxBytes) {
        finish(new WireError(`read gossip stream: message longer than ${o.maxBytes} bytes`));
        return;
      }
      try {
        finish(null, parse(buf));
      } catch (e) {
        if (e instanceof WireError && e.truncated) return;
        finish(e instanceof Error ? e : new Error(String(e)));
      }
    };
    const onEnd = () =>
      finish(
        new WireError(
          buf.length === 0
            ? 'read gossip stream: closed by peer before a message'
            : `read gossip stream: closed by peer after ${buf.length} bytes of an incomplete message`,
        ),
      );
    const onError = (e: Error) => finish(e);
    sock.on('data', onData);
    sock.on('end', onEnd);
    sock.on('close', onEnd);
    sock.on('error', onError);
    sock.resume();
  });
}
