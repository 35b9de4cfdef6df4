/**
 * ControlServer: the manager's TLS listener on the control port (TCP 2377), and RpcClient, the
 * dialling side of its rpc channel.
 *
 * The listener asks for a client certificate but does not require one (a joining node has none
 * yet); each channel decides what it accepts. Every connection opens with a HELLO frame naming
 * its channel:
 *   - 'raft': only managers of our cluster (certificate verified against our CA, OU=manager,
 *     O=<clusterId>); one-way frames handed to a RaftInbound (the RaftTransport);
 *   - 'rpc' : JSON requests {id, method, params} answered by registered handlers with
 *     {id, result} or {id, error: {code, message}}; handlers see the verified identity or null.
 * Frames and kinds: src/raft/codec.ts. Before a peer is known, frames are held to small limits so
 * an unauthenticated client cannot make us buffer much.
 *
 * Driver code: may import node:tls, src/raft (codec, transport), src/util.
 */

import { X509Certificate } from 'node:crypto';
import type { AddressInfo, Socket } from 'node:net';
import * as tls from 'node:tls';

import { encodeAckFrame, FrameDecoder, FrameKind, type Frame } from '../../raft/codec.js';
import {
  decodeJson,
  encodeJsonFrame,
  managerIdentityCheck,
  peerIdentity,
  type HelloFrame,
  type PeerIdentity,
  type RaftInbound,
  type RaftPeer,
  type TlsCredentials,
} from '../../raft/transport.js';
import { MeshError, errorCode } from '../../util/errors.js';
import { createLogger, type Logger } from '../../util/log.js';

export type { PeerIdentity, TlsCredentials } from '../../raft/transport.js';

export type RpcHandler = (params: unknown, peer: PeerIdentity | null) => Promise<unknown>;

export interface ControlServerOptions extends TlsCredentials {
  /** Address to listen on. */
  host: string;
  /** @default 2377; 0 picks a free port (see `address()`). */
  port?: number;
  /** Our cluster: the raft channel admits only managers whose certificate says O=clusterId. */
  clusterId: string;
  /** Where raft frames go; may also be set later through `raft`. */
  raft?: RaftInbound;
  /** Largest frame (kind + payload) accepted from a verified peer. @default 64 MiB */
  maxFrameBytes?: number;
  /** Largest frame accepted from a peer without a verified certificate. @default 1 MiB */
  maxAnonFrameBytes?: number;
  /** A connection that sends no HELLO within this time is closed. @default 10,000 ms */
  helloTimeoutMs?: number;
  /** RPC requests running at once per connection before we stop reading it. @default 64 */
  maxInflightRpc?: number;
  /**
   * How often raft senders hear how many bytes arrived (an Ack frame, when the count moved, and
   * at least every 5 intervals). Senders redial a stream whose count stops moving. @default 200 ms
   */
  ackIntervalMs?: number;
  log?: Logger;
}

export interface RpcRequest {
  id: number;
  method: string;
  params?: unknown;
}

export type RpcReply =
  { id: number; result: unknown } | { id: number; error: { code: string; message: string } };

/** A HELLO never needs more; the limit applies until the channel (and peer) is known. */
const MAX_HELLO_BYTES = 4096;

function isHello(v: unknown): v is HelloFrame {
  if (typeof v !== 'object' || v === null) return false;
  const h = v as Record<string, unknown>;
  return (
    (h.channel === 'raft' || h.channel === 'rpc') &&
    (h.from === undefined || (Number.isSafeInteger(h.from) && (h.from as number) > 0)) &&
    (h.clusterId === undefined || typeof h.clusterId === 'string')
  );
}

interface Conn {
  id: number;
  sock: tls.TLSSocket;
  decoder: FrameDecoder;
  peer: PeerIdentity | null;
  channel: 'raft' | 'rpc' | undefined;
  raftPeer: RaftPeer | undefined;
  inflight: number;
  paused: boolean;
  closing: boolean;
  helloTimer: NodeJS.Timeout | undefined;
  /** Bytes received so far, and the count last acknowledged (raft channel). */
  rxBytes: number;
  ackedRx: number;
  ackedAt: number;
}

export interface ControlServerStats {
  connections: number;
  refused: number;
  rpcCalls: number;
  rpcErrors: number;
}

export class ControlServer {
  /** Receiver of raft frames; connections on the raft channel are refused while unset. */
  raft: RaftInbound | undefined;
  readonly stats: ControlServerStats = { connections: 0, refused: 0, rpcCalls: 0, rpcErrors: 0 };
  private readonly server: tls.Server;
  private readonly handlers = new Map<string, RpcHandler>();
  private readonly conns = new Set<Conn>();
  private readonly raw = new Set<Socket>();
  private readonly log: Logger;
  private readonly maxFrameBytes: number;
  private readonly maxAnonFrameBytes: number;
  private readonly helloTimeoutMs: number;
  private readonly maxInflightRpc: number;
  private readonly clusterId: string;
  private nextConn = 0;
  private readonly ackTimer: NodeJS.Timeout;
  private readonly ackIntervalMs: number;

  private constructor(opts: ControlServerOptions) {
    this.log = opts.log ?? createLogger('control');
    this.raft = opts.raft;
    this.clusterId = opts.clusterId;
    this.maxFrameBytes = opts.maxFrameBytes ?? 64 * 1024 * 1024;
    this.maxAnonFrameBytes = opts.maxAnonFrameBytes ?? 1024 * 1024;
    this.helloTimeoutMs = opts.helloTimeoutMs ?? 10_000;
    this.maxInflightRpc = opts.maxInflightRpc ?? 64;
    this.ackIntervalMs = opts.ackIntervalMs ?? 200;
    this.ackTimer = setInterval(() => this.sendAcks(), this.ackIntervalMs);
    this.ackTimer.unref();
    this.server = tls.createServer({
      key: opts.key,
      cert: opts.cert,
      ca: opts.ca,
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: 'TLSv1.3',
      handshakeTimeout: 10_000,
    });
    this.server.on('connection', (raw: Socket) => {
      // Tracked from TCP accept on, so close() does not wait on a half-done handshake.
      this.raw.add(raw);
      raw.once('close', () => this.raw.delete(raw));
    });
    this.server.on('secureConnection', (sock) => this.accept(sock));
    this.server.on('tlsClientError', (err, sock) => {
      this.log.debug('tls handshake failed', { remote: sock.remoteAddress, err });
    });
  }

  /** Listen on host:port; rejects with EUSAGE when the address is not usable. */
  static async listen(opts: ControlServerOptions): Promise<ControlServer> {
    const s = new ControlServer(opts);
    const port = opts.port ?? 2377;
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        clearInterval(s.ackTimer);
        reject(
          new MeshError(
            'EUSAGE',
            `listen control ${opts.host}:${port}: ${err.code ?? err.message}` +
              (err.code === 'EADDRINUSE'
                ? ' (another meshd on this address? use --listen-addr)'
                : ''),
          ),
        );
      };
      s.server.once('error', onError);
      s.server.listen(port, opts.host, () => {
        s.server.off('error', onError);
        resolve();
      });
    });
    s.server.on('error', (err) => s.log.error('control listener error', { err }));
    return s;
  }

  address(): { host: string; port: number } {
    const a = this.server.address() as AddressInfo;
    return { host: a.address, port: a.port };
  }

  /** Renewed certificate or CA: used for every connection accepted from now on. */
  setCredentials(c: TlsCredentials): void {
    this.server.setSecureContext({
      key: c.key,
      cert: c.cert,
      ca: c.ca,
      minVersion: 'TLSv1.3',
    });
  }

  /** Handle rpc `method`; a second registration replaces the first. */
  register(method: string, handler: RpcHandler): void {
    this.handlers.set(method, handler);
  }

  private sendAcks(): void {
    const now = performance.now();
    for (const c of this.conns) {
      if (c.channel !== 'raft' || c.closing) continue;
      if (c.rxBytes === c.ackedRx && now - c.ackedAt < 5 * this.ackIntervalMs) continue;
      c.ackedRx = c.rxBytes;
      c.ackedAt = now;
      c.sock.write(encodeAckFrame(c.rxBytes));
    }
  }

  /** Stop listening and drop every connection. */
  async close(): Promise<void> {
    clearInterval(this.ackTimer);
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const c of this.conns) this.teardown(c);
    for (const raw of this.raw) raw.destroy();
    await closed;
  }

  private accept(sock: tls.TLSSocket): void {
    sock.setNoDelay(true);
    const c: Conn = {
      id: ++this.nextConn,
      sock,
      decoder: new FrameDecoder(MAX_HELLO_BYTES),
      peer: peerIdentity(sock),
      channel: undefined,
      raftPeer: undefined,
      inflight: 0,
      paused: false,
      closing: false,
      helloTimer: undefined,
      rxBytes: 0,
      ackedRx: 0,
      ackedAt: 0,
    };
    this.conns.add(c);
    this.stats.connections++;
    c.helloTimer = setTimeout(
      () => this.refuse(c, 'no HELLO in time', 'ETIMEDOUT'),
      this.helloTimeoutMs,
    );
    sock.on('data', (chunk: Buffer) => this.onData(c, chunk));
    sock.on('error', (err) => this.log.debug('control connection error', { conn: c.id, err }));
    sock.on('close', () => this.teardown(c));
  }

  private onData(c: Conn, chunk: Buffer): void {
    if (c.closing) return;
    c.rxBytes += chunk.length;
    c.decoder.push(chunk);
    try {
      for (let f = c.decoder.next(); f !== undefined && !c.closing; f = c.decoder.next()) {
        this.onFrame(c, f);
      }
    } catch (e) {
      // Anything but a MeshError is a bug in a handler: let it crash (see util/errors.ts).
      if (!(e instanceof MeshError)) throw e;
      this.refuse(c, e.message, e.code);
    }
  }

  private onFrame(c: Conn, f: Frame): void {
    if (c.channel === undefined) {
      if (f.kind !== FrameKind.Hello) throw new MeshError('EWIRE', 'first frame is not a HELLO');
      const hello = decodeJson(f.payload, 'hello');
      if (!isHello(hello)) throw new MeshError('EWIRE', 'malformed HELLO');
      clearTimeout(c.helloTimer);
      c.helloTimer = undefined;
      if (hello.channel === 'raft') this.openRaft(c, hello);
      else {
        c.channel = 'rpc';
        c.decoder.maxFrameBytes = c.peer !== null ? this.maxFrameBytes : this.maxAnonFrameBytes;
      }
      return;
    }
    if (c.channel === 'raft') {
      if (this.raft === undefined) throw new MeshError('EWIRE', 'raft transport stopped');
      this.raft.handleInbound(f.kind, f.payload, c.raftPeer!);
      return;
    }
    if (f.kind !== FrameKind.Rpc) throw new MeshError('EWIRE', `unexpected frame kind ${f.kind}`);
    this.onRequest(c, decodeJson(f.payload, 'rpc request'));
  }

  private openRaft(c: Conn, hello: HelloFrame): void {
    const p = c.peer;
    let why: string | undefined;
    if (p === null) {
      why = `raft channel refused: no certificate signed by our CA (${c.sock.authorizationError?.toString() ?? 'none sent'})`;
    } else if (p.role !== 'manager') {
      why = `raft channel refused: certificate of ${p.nodeId} is for a ${p.role}`;
    } else if (p.clusterId !== this.clusterId || (hello.clusterId ?? p.clusterId) !== p.clusterId) {
      why = `raft channel refused: ${p.nodeId} belongs to cluster ${p.clusterId}`;
    } else if (hello.from === undefined) {
      why = 'raft channel refused: HELLO without a raft id';
    } else if (this.raft === undefined) {
      why = 'raft channel refused: raft is not running here';
    }
    if (why !== undefined) {
      this.stats.refused++;
      throw new MeshError('EAUTH', why);
    }
    c.channel = 'raft';
    c.raftPeer = { ...p!, raftId: hello.from!, conn: c.id };
    c.decoder.maxFrameBytes = this.maxFrameBytes;
  }

  private onRequest(c: Conn, req: unknown): void {
    const r = req as Partial<RpcRequest> | null;
    if (
      typeof r !== 'object' ||
      r === null ||
      !Number.isSafeInteger(r.id) ||
      typeof r.method !== 'string'
    ) {
      throw new MeshError('EWIRE', 'malformed rpc request');
    }
    const id = r.id!;
    const method = r.method;
    this.stats.rpcCalls++;
    const handler = this.handlers.get(method);
    c.inflight++;
    if (c.inflight >= this.maxInflightRpc && !c.paused) {
      c.paused = true;
      c.sock.pause();
    }
    const run =
      handler === undefined
        ? Promise.reject(
            new MeshError('EUSAGE', `rpc ${method}: unknown method (manager of another version?)`),
          )
        : Promise.resolve().then(() => handler(r.params, c.peer));
    run.then(
      (result) => this.reply(c, { id, result: result === undefined ? null : result }),
      (err: unknown) => {
        this.stats.rpcErrors++;
        let code = 'EINTERNAL';
        let message = `rpc ${method}: internal error (see the manager's log)`;
        if (err instanceof MeshError) {
          code = err.code;
          message = err.message;
        } else {
          this.log.error('rpc handler failed', { method, err });
        }
        this.reply(c, { id, error: { code, message } });
      },
    );
  }

  private reply(c: Conn, rep: RpcReply): void {
    c.inflight--;
    if (c.paused && c.inflight < this.maxInflightRpc) {
      c.paused = false;
      c.sock.resume();
    }
    if (c.closing || c.sock.destroyed) return;
    let frame: Buffer;
    try {
      frame = encodeJsonFrame(FrameKind.Rpc, rep);
    } catch (err) {
      this.log.error('rpc reply not serialisable', { id: rep.id, err });
      frame = encodeJsonFrame(FrameKind.Rpc, {
        id: rep.id,
        error: { code: 'EINTERNAL', message: 'rpc reply not serialisable (see the manager log)' },
      });
    }
    c.sock.write(frame);
  }

  /** Say why in a Close frame, log it, and close the connection. */
  private refuse(c: Conn, why: string, code = 'EWIRE'): void {
    if (c.closing) return;
    this.log.warn('control connection closed', {
      conn: c.id,
      remote: c.sock.remoteAddress,
      node: c.peer?.nodeId,
      reason: why,
    });
    c.closing = true;
    if (!c.sock.destroyed) {
      c.sock.end(encodeJsonFrame(FrameKind.Close, { code, message: why }));
      // A peer that keeps sending (or never reads) must not hold the socket open.
      setTimeout(() => c.sock.destroy(), 1000).unref();
    }
    this.teardown(c);
  }

  private teardown(c: Conn): void {
    if (c.helloTimer !== undefined) clearTimeout(c.helloTimer);
    c.helloTimer = undefined;
    if (!this.conns.delete(c)) return;
    c.closing = true;
    if (c.raftPeer !== undefined) this.raft?.inboundClosed(c.raftPeer);
    if (!c.sock.writableEnded) c.sock.destroy();
  }
}

// ---- client ----

export interface RpcClientOptions {
  host: string;
  /** @default 2377 */
  port?: number;
  /** Our key and certificate, when we have them (a joining node does not). */
  key?: string;
  cert?: string;
  /** The cluster CA; without it `checkServer` must decide whether to trust the server. */
  ca?: string;
  /**
   * Called once the handshake is done with the server's chain (DER, leaf first, root last);
   * throw to refuse. A joiner pins the CA here by comparing the root's digest with its token's.
   */
  checkServer?: (chain: Buffer[]) => void;
  /** Connect plus handshake. @default 10,000 ms */
  timeoutMs?: number;
  /** Largest reply accepted. @default 64 MiB */
  maxFrameBytes?: number;
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: unknown): void;
  timer: NodeJS.Timeout;
  method: string;
}

/**
 * Without a CA to verify against, check the chain's own signatures: each certificate issued and
 * signed by the next, the last one self-signed, all within their validity. A digest pin on the
 * root means nothing without this (anyone can send the public CA certificate after a leaf of
 * their own). Returns why not, or undefined.
 */
export function chainProblem(chain: Buffer[], now: Date): string | undefined {
  if (chain.length < 2) return 'server sent no CA certificate with its own';
  let certs: X509Certificate[];
  try {
    certs = chain.map((der) => new X509Certificate(der));
  } catch {
    return 'server certificate chain does not parse';
  }
  for (let i = 0; i < certs.length; i++) {
    const c = certs[i]!;
    const issuer = certs[i + 1] ?? c;
    if (!c.checkIssued(issuer) || !c.verify(issuer.publicKey)) {
      return `certificate ${i} of the server chain is not signed by the next`;
    }
    if (now < new Date(c.validFrom) || now > new Date(c.validTo)) {
      return `certificate ${i} of the server chain is not valid now (${c.validFrom} to ${c.validTo})`;
    }
  }
  if (!certs[certs.length - 1]!.ca) return 'root of the server chain is not a CA';
  return undefined;
}

/** The server's chain as DER buffers, leaf first, root last (as far as the server sent it). */
function chainOf(sock: tls.TLSSocket): Buffer[] {
  const out: Buffer[] = [];
  let cert: tls.DetailedPeerCertificate | undefined = sock.getPeerCertificate(true);
  for (let i = 0; i < 16 && cert !== undefined && cert.raw !== undefined; i++) {
    out.push(cert.raw);
    const next: tls.DetailedPeerCertificate | undefined = cert.issuerCertificate;
    if (
      next === undefined ||
      next === cert ||
      next.raw === undefined ||
      next.raw.equals(cert.raw)
    ) {
      break;
    }
    cert = next;
  }
  return out;
}

export class RpcClient {
  private readonly pending = new Map<number, Pending>();
  private readonly decoder: FrameDecoder;
  private nextId = 0;
  private chain: Buffer[] = [];
  private closeReason: string | undefined;
  private done = false;

  private constructor(
    private readonly sock: tls.TLSSocket,
    private readonly where: string,
    maxFrameBytes: number,
  ) {
    this.decoder = new FrameDecoder(maxFrameBytes);
  }

  static connect(opts: RpcClientOptions): Promise<RpcClient> {
    const port = opts.port ?? 2377;
    const where = `${opts.host}:${port}`;
    if (opts.ca === undefined && opts.checkServer === undefined) {
      return Promise.reject(
        new MeshError('EUSAGE', `rpc connect ${where}: need the cluster CA or a checkServer pin`),
      );
    }
    const timeoutMs = opts.timeoutMs ?? 10_000;
    return new Promise<RpcClient>((resolve, reject) => {
      let sock: tls.TLSSocket;
      try {
        sock = tls.connect({
          host: opts.host,
          port,
          ...(opts.key !== undefined ? { key: opts.key } : {}),
          ...(opts.cert !== undefined ? { cert: opts.cert } : {}),
          ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
          rejectUnauthorized: opts.ca !== undefined,
          checkServerIdentity: managerIdentityCheck(undefined),
          minVersion: 'TLSv1.3',
        });
      } catch (e) {
        const msg = e instanceof Error ? e.message : String(e);
        reject(new MeshError('EUSAGE', `rpc connect ${where}: bad key or certificate: ${msg}`));
        return;
      }
      const client = new RpcClient(sock, where, opts.maxFrameBytes ?? 64 * 1024 * 1024);
      let settled = false;
      const fail = (e: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        sock.destroy();
        reject(e);
      };
      const timer = setTimeout(
        () =>
          fail(new MeshError('ETIMEDOUT', `rpc connect ${where}: no answer in ${timeoutMs} ms`)),
        timeoutMs,
      );
      sock.once('secureConnect', () => {
        if (settled) return;
        client.chain = chainOf(sock);
        try {
          if (opts.ca === undefined) {
            const why = chainProblem(client.chain, new Date());
            if (why !== undefined) throw new Error(why);
          }
          opts.checkServer?.(client.chain);
        } catch (e) {
          const msg = e instanceof Error ? e.message : String(e);
          fail(new MeshError('EAUTH', `rpc connect ${where}: ${msg}`));
          return;
        }
        settled = true;
        clearTimeout(timer);
        sock.setNoDelay(true);
        const hello: HelloFrame = { channel: 'rpc' };
        sock.write(encodeJsonFrame(FrameKind.Hello, hello));
        resolve(client);
      });
      sock.on('error', (err: NodeJS.ErrnoException) => {
        client.closeReason ??= err.code ?? err.message;
        fail(
          new MeshError(
            err.code === 'ECONNREFUSED' ? 'ECONN' : 'EAUTH',
            `rpc connect ${where}: ${err.message}` +
              (err.code === 'ECONNREFUSED' ? ' (is a manager listening there?)' : ''),
          ),
        );
      });
      sock.on('data', (chunk: Buffer) => client.onData(chunk));
      sock.on('close', () => {
        fail(new MeshError('ECONN', `rpc connect ${where}: connection closed`));
        client.onClose();
      });
    });
  }

  /** The server's certificate chain (DER, leaf first, root last). */
  peerCertificateChain(): Buffer[] {
    return this.chain;
  }

  /** Resolve with the handler's result or reject with MeshError(code, message) from the server. */
  call(method: string, params?: unknown, timeoutMs = 10_000): Promise<unknown> {
    if (this.done) {
      return Promise.reject(
        new MeshError('ECONN', `rpc ${method} ${this.where}: connection closed`),
      );
    }
    const id = ++this.nextId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(
          new MeshError('ETIMEDOUT', `rpc ${method} ${this.where}: no reply in ${timeoutMs} ms`),
        );
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer, method });
      const req: RpcRequest = { id, method, params };
      this.sock.write(encodeJsonFrame(FrameKind.Rpc, req));
    });
  }

  close(): void {
    this.sock.destroy();
    this.onClose();
  }

  private onData(chunk: Buffer): void {
    try {
      this.decoder.push(chunk);
      for (let f = this.decoder.next(); f !== undefined; f = this.decoder.next()) {
        if (f.kind === FrameKind.Close) {
          const why = decodeJson(f.payload, 'close frame') as { message?: unknown } | null;
          if (typeof why?.message === 'string') this.closeReason = why.message;
          continue;
        }
        if (f.kind !== FrameKind.Rpc) throw new MeshError('EWIRE', `unexpected frame ${f.kind}`);
        const rep = decodeJson(f.payload, 'rpc reply') as Partial<{
          id: number;
          result: unknown;
          error: { code?: unknown; message?: unknown };
        }> | null;
        const p = typeof rep?.id === 'number' ? this.pending.get(rep.id) : undefined;
        if (p === undefined || rep === null) continue;
        this.pending.delete(rep.id!);
        clearTimeout(p.timer);
        if (rep.error !== undefined) {
          const code = errorCode(rep.error.code, 'EINTERNAL');
          const message =
            typeof rep.error.message === 'string' ? rep.error.message : `rpc ${p.method}: failed`;
          p.reject(new MeshError(code, message));
        } else {
          p.resolve(rep.result);
        }
      }
    } catch (e) {
      this.closeReason = e instanceof Error ? e.message : String(e);
      this.sock.destroy();
    }
  }

  private onClose(): void {
    if (this.done) return;
    this.done = true;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(
        new MeshError(
          'ECONN',
          `rpc ${p.method} ${this.where}: connection closed` +
            (this.closeReason !== undefined ? ` (${this.closeReason})` : ''),
        ),
      );
    }
    this.pending.clear();
  }
}
