/**
 * RaftTransport: carries raft messages between managers over mutually authenticated TLS on the
 * control port (2377). One outbound stream per peer (like etcd's stream transport), each
 * direction on its own connection; inbound frames arrive through the ControlServer
 * (src/manager/dispatch/server.ts), which authenticates the peer and calls `handleInbound`.
 *
 * Delivery is best-effort, as raft expects: a message that cannot be queued (peer down, queue
 * full) is dropped and reported with `onUnreachable`, and raft retries. A MsgSnap goes out as
 * chunk frames interleaved with ordinary batches (so heartbeats are not stuck behind a large
 * snapshot), and its fate is reported with `onSnapshotStatus`.
 *
 * Driver code: may import node:tls/node:net, src/raft (types, codec), src/util.
 */

import * as tls from 'node:tls';

import { MeshError } from '../util/errors.js';
import { createLogger, type Logger } from '../util/log.js';
import {
  batchHeaderBytes,
  decodeAck,
  decodeBatch,
  decodeSnapChunk,
  encodeBatchInto,
  encodeSnapChunkHeader,
  FRAME_HEADER_BYTES,
  FrameDecoder,
  FrameKind,
  messageBytes,
  putFrameHeader,
} from './codec.js';
import { MessageType, type Message } from './types.js';

/** PEM strings: this node's key and certificate, and the cluster CA certificate. */
export interface TlsCredentials {
  key: string;
  cert: string;
  ca: string;
}

/** Who is on the other end, from a certificate that verified against our CA. */
export interface PeerIdentity {
  /** Subject CN. */
  nodeId: string;
  /** Subject OU: 'manager' | 'worker'. */
  role: string;
  /** Subject O. */
  clusterId: string;
}

/** An authenticated manager on an inbound raft connection. */
export interface RaftPeer extends PeerIdentity {
  /** Raft id the peer announced in its HELLO. */
  raftId: number;
  /** Connection number, unique within the server (snapshot reassembly is per connection). */
  conn: number;
}

/** What the ControlServer hands inbound raft frames to (RaftTransport implements it). */
export interface RaftInbound {
  /** Throws MeshError('EWIRE') on a bad frame: the server then closes the connection. */
  handleInbound(kind: FrameKind, payload: Uint8Array, peer: RaftPeer): void;
  inboundClosed(peer: RaftPeer): void;
}

export interface HelloFrame {
  channel: 'raft' | 'rpc';
  from?: number;
  clusterId?: string;
}

/** Subject fields of a certificate as node:tls parses them (each may be a string or a list). */
function subjectField(cert: tls.PeerCertificate, f: 'CN' | 'OU' | 'O'): string | undefined {
  const subject = cert.subject as Record<string, unknown> | undefined;
  const v = subject?.[f];
  return typeof v === 'string' ? v : undefined;
}

/** Identity of a certificate's subject, or null when CN, OU or O is missing or repeated. */
export function identityOfCert(cert: tls.PeerCertificate): PeerIdentity | null {
  const nodeId = subjectField(cert, 'CN');
  const role = subjectField(cert, 'OU');
  const clusterId = subjectField(cert, 'O');
  if (nodeId === undefined || role === undefined || clusterId === undefined) return null;
  return { nodeId, role, clusterId };
}

/** The peer's identity if its certificate verified against our CA, else null. */
export function peerIdentity(sock: tls.TLSSocket): PeerIdentity | null {
  if (!sock.authorized) return null;
  const cert = sock.getPeerCertificate();
  if (cert === null || Object.keys(cert).length === 0) return null;
  return identityOfCert(cert);
}

export function encodeJsonFrame(kind: FrameKind, value: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(value));
  const b = Buffer.allocUnsafe(FRAME_HEADER_BYTES + body.length);
  putFrameHeader(b, 0, kind, body.length);
  body.copy(b, FRAME_HEADER_BYTES);
  return b;
}

/** Parse a JSON payload; EWIRE when it is not JSON. */
export function decodeJson(payload: Uint8Array, what: string): unknown {
  try {
    return JSON.parse(Buffer.from(payload.buffer, payload.byteOffset, payload.length).toString());
  } catch {
    throw new MeshError('EWIRE', `decode ${what}: not JSON`);
  }
}

/**
 * A server-identity check for dialling managers by IP: the chain must already verify against
 * the pinned CA (rejectUnauthorized), and instead of a host name we require OU=manager and
 * O=<our cluster>.
 */
export function managerIdentityCheck(
  clusterId: string | undefined,
): (host: string, cert: tls.PeerCertificate) => Error | undefined {
  return (_host, cert) => {
    const id = identityOfCert(cert);
    if (id === null) return new Error('peer certificate lacks CN, OU or O');
    if (id.role !== 'manager')
      return new Error(`peer certificate is for a ${id.role}, not a manager`);
    if (clusterId !== undefined && id.clusterId !== clusterId) {
      return new Error(`peer certificate is for cluster ${id.clusterId}, not ${clusterId}`);
    }
    return undefined;
  };
}

/** Reuses one SecureContext while the credentials (compared by value) do not change. */
export class ContextCache {
  private last: TlsCredentials | undefined;
  private ctx: tls.SecureContext | undefined;

  get(c: TlsCredentials): tls.SecureContext {
    const l = this.last;
    if (
      this.ctx === undefined ||
      l === undefined ||
      l.key !== c.key ||
      l.cert !== c.cert ||
      l.ca !== c.ca
    ) {
      this.ctx = tls.createSecureContext({
        key: c.key,
        cert: c.cert,
        ca: c.ca,
        minVersion: 'TLSv1.3',
      });
      this.last = { key: c.key, cert: c.cert, ca: c.ca };
    }
    return this.ctx;
  }
}

export interface RaftTransportOptions {
  selfId: number;
  clusterId: string;
  /** Called at every dial, so renewed certificates are picked up by the next connection. */
  tls: () => TlsCredentials;
  /** Messages for this node, in arrival order per peer. Must not throw. */
  onMessages(msgs: Message[]): void;
  /** A message to `id` was dropped: peer down, queue full or unknown. Raft probes again. */
  onUnreachable(id: number): void;
  /** A MsgSnap to `id` was written to the socket in full (true) or failed (false). */
  onSnapshotStatus(id: number, ok: boolean): void;
  /** Messages queued per peer before drops. @default 4096 */
  maxQueueMessages?: number;
  /** Bytes queued per peer (our queue plus the socket's) before drops. @default 64 MiB */
  maxQueueBytes?: number;
  /** Largest frame sent or accepted (the ControlServer enforces its own). @default 64 MiB */
  maxFrameBytes?: number;
  /** Snapshot data per chunk frame. @default 1 MiB */
  chunkBytes?: number;
  /** Largest snapshot accepted from a peer. @default 1 GiB */
  maxSnapshotBytes?: number;
  /** First reconnect delay after a failure; doubles up to `backoffMaxMs`. @default 50 */
  backoffMinMs?: number;
  /** @default 500 (about one election timeout: a healed peer is back before raft gives up) */
  backoffMaxMs?: number;
  /** TCP connect plus TLS handshake. @default 2000 */
  dialTimeoutMs?: number;
  /**
   * A stream whose unacknowledged bytes have not moved for this long is closed and dialled
   * again: a frozen peer or a partition would otherwise hold it until TCP gives up (minutes),
   * and after the partition heals TCP's backed-off retransmissions would keep it stalled for
   * seconds more. @default 2000
   */
  stallMs?: number;
  log?: Logger;
}

export interface TransportStats {
  framesOut: number;
  bytesOut: number;
  messagesOut: number;
  dropped: number;
  framesIn: number;
  messagesIn: number;
  snapshotsOut: number;
  snapshotsIn: number;
  dials: number;
}

interface OutSnap {
  msg: Message;
  seq: number;
  off: number;
  done: boolean;
}

type LinkState = 'connecting' | 'up' | 'backoff' | 'closed';

/** Rough bytes a message takes in the queue, for the per-peer byte bound. */
function roughSize(m: Message): number {
  let s = 64;
  for (const e of m.entries) s += 16 + e.data.length;
  return s;
}

class Link {
  state: LinkState = 'connecting';
  sock: tls.TLSSocket | undefined;
  queue: Message[] = [];
  queuedBytes = 0;
  flushScheduled = false;
  dropReported = false;
  backoffMs = 0;
  timer: NodeJS.Timeout | undefined;
  /** Snapshots not yet fully written, first one in progress. */
  snaps: OutSnap[] = [];
  /** Snapshots whose last chunk was handed to the socket, awaiting its write callback. */
  sentSnaps: OutSnap[] = [];
  snapSeq = 0;
  failures = 0;
  /** Bytes written to the current connection, bytes the peer acknowledged, and when the
   * acknowledged count last moved (or everything was acknowledged). */
  sent = 0;
  acked = 0;
  progressAt = 0;

  constructor(
    readonly id: number,
    readonly addr: string,
    readonly host: string,
    readonly port: number,
  ) {}
}

interface Reassembly {
  seq: number;
  total: number;
  got: number;
  msg: Message;
  parts: Uint8Array[];
}

function parseAddr(addr: string): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(addr);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port > 0 && port < 65536)) {
    throw new MeshError('EUSAGE', `raft peer address ${JSON.stringify(addr)}: want IP:PORT`);
  }
  return { host: m[1]!, port };
}

function isLocal(t: MessageType): boolean {
  return (
    t === MessageType.Hup ||
    t === MessageType.Beat ||
    t === MessageType.Unreachable ||
    t === MessageType.SnapStatus ||
    t === MessageType.CheckQuorum
  );
}

export class RaftTransport implements RaftInbound {
  private readonly links = new Map<number, Link>();
  private readonly reasm = new Map<number, Reassembly>();
  private readonly ctx = new ContextCache();
  private readonly log: Logger;
  private readonly maxQueueMessages: number;
  private readonly maxQueueBytes: number;
  private readonly maxFrameBytes: number;
  private readonly chunkBytes: number;
  private readonly maxSnapshotBytes: number;
  private readonly backoffMinMs: number;
  private readonly backoffMaxMs: number;
  private readonly dialTimeoutMs: number;
  private readonly stallMs: number;
  private readonly stallTimer: NodeJS.Timeout;
  private readonly checkIdentity: ReturnType<typeof managerIdentityCheck>;
  private closed = false;
  readonly stats: TransportStats = {
    framesOut: 0,
    bytesOut: 0,
    messagesOut: 0,
    dropped: 0,
    framesIn: 0,
    messagesIn: 0,
    snapshotsOut: 0,
    snapshotsIn: 0,
    dials: 0,
  };

  constructor(private readonly opts: RaftTransportOptions) {
    this.log = opts.log ?? createLogger('raft-transport');
    this.maxQueueMessages = opts.maxQueueMessages ?? 4096;
    this.maxQueueBytes = opts.maxQueueBytes ?? 64 * 1024 * 1024;
    this.maxFrameBytes = opts.maxFrameBytes ?? 64 * 1024 * 1024;
    this.chunkBytes = opts.chunkBytes ?? 1024 * 1024;
    this.maxSnapshotBytes = opts.maxSnapshotBytes ?? 1024 * 1024 * 1024;
    this.backoffMinMs = opts.backoffMinMs ?? 50;
    this.backoffMaxMs = opts.backoffMaxMs ?? 500;
    this.dialTimeoutMs = opts.dialTimeoutMs ?? 2000;
    this.stallMs = opts.stallMs ?? 2000;
    this.checkIdentity = managerIdentityCheck(opts.clusterId);
    if (this.chunkBytes + 1024 > this.maxFrameBytes) {
      throw new MeshError('EUSAGE', 'raft transport: chunkBytes must be below maxFrameBytes');
    }
    this.stallTimer = setInterval(() => this.checkStalls(), Math.min(250, this.stallMs / 4));
    this.stallTimer.unref();
  }

  /** Add a peer or move it to a new address (the old connection is dropped). */
  setPeer(id: number, addr: string): void {
    if (this.closed) return;
    const cur = this.links.get(id);
    if (cur !== undefined && cur.addr === addr) return;
    const { host, port } = parseAddr(addr);
    if (cur !== undefined) this.shut(cur);
    const link = new Link(id, addr, host, port);
    this.links.set(id, link);
    this.dial(link);
  }

  removePeer(id: number): void {
    const link = this.links.get(id);
    if (link === undefined) return;
    this.links.delete(id);
    this.shut(link);
  }

  peers(): Map<number, string> {
    return new Map([...this.links].map(([id, l]) => [id, l.addr]));
  }

  /** True when the stream to `id` is connected (for status output and tests). */
  isConnected(id: number): boolean {
    return this.links.get(id)?.state === 'up';
  }

  /** Queue `msgs` (any mix of recipients); they leave in one frame per peer per event-loop turn. */
  send(msgs: readonly Message[]): void {
    if (this.closed) return;
    for (const m of msgs) {
      const link = this.links.get(m.to);
      if (link === undefined) {
        this.stats.dropped++;
        if (m.type === MessageType.Snap) this.opts.onSnapshotStatus(m.to, false);
        if (m.to !== this.opts.selfId) this.opts.onUnreachable(m.to);
        continue;
      }
      const size = roughSize(m);
      const backlog = link.queuedBytes + (link.sock?.writableLength ?? 0) + size;
      if (
        link.state === 'backoff' ||
        link.state === 'closed' ||
        link.queue.length >= this.maxQueueMessages ||
        backlog > this.maxQueueBytes
      ) {
        this.drop(link, m);
        continue;
      }
      link.queue.push(m);
      link.queuedBytes += size;
      if (!link.flushScheduled && link.state === 'up') {
        link.flushScheduled = true;
        setImmediate(() => this.flush(link));
      }
    }
  }

  private drop(link: Link, m: Message): void {
    this.stats.dropped++;
    if (m.type === MessageType.Snap) this.opts.onSnapshotStatus(link.id, false);
    if (!link.dropReported) {
      link.dropReported = true;
      this.opts.onUnreachable(link.id);
      // One report per peer per event-loop turn is enough for raft (it only switches the
      // peer's progress to probing); more would flood the driver during an outage.
      setImmediate(() => (link.dropReported = false));
    }
  }

  private flush(link: Link): void {
    link.flushScheduled = false;
    const sock = link.sock;
    if (link.state !== 'up' || sock === undefined || link.queue.length === 0) return;
    const q = link.queue;
    link.queue = [];
    link.queuedBytes = 0;
    sock.cork();
    // Consecutive ordinary messages share one frame (split only at the frame limit); a MsgSnap
    // leaves the batch and goes out as chunks, after the messages queued before it.
    let start = 0;
    let body = 0;
    for (let i = 0; i < q.length; i++) {
      const m = q[i]!;
      if (m.type === MessageType.Snap) {
        if (i > start) this.writeBatch(link, sock, q, start, i, body);
        start = i + 1;
        body = 0;
        if (m.snapshot === undefined) {
          this.log.error('MsgSnap without a snapshot dropped', { to: link.id });
          this.opts.onSnapshotStatus(link.id, false);
          continue;
        }
        link.snaps.push({ msg: m, seq: ++link.snapSeq, off: 0, done: false });
        continue;
      }
      const size = messageBytes(m);
      if (size + 16 > this.maxFrameBytes) {
        if (i > start) this.writeBatch(link, sock, q, start, i, body);
        start = i + 1;
        body = 0;
        this.log.error('raft message larger than the frame limit dropped', {
          to: link.id,
          bytes: size,
          limit: this.maxFrameBytes,
        });
        this.drop(link, m);
        continue;
      }
      if (body + size + 16 > this.maxFrameBytes) {
        this.writeBatch(link, sock, q, start, i, body);
        start = i;
        body = 0;
      }
      body += size;
    }
    if (q.length > start) this.writeBatch(link, sock, q, start, q.length, body);
    this.pumpSnaps(link, sock);
    sock.uncork();
  }

  /** One frame holding q[start, end), whose messages take `msgBytes` together. */
  private writeBatch(
    link: Link,
    sock: tls.TLSSocket,
    q: Message[],
    start: number,
    end: number,
    msgBytes: number,
  ): void {
    const body = batchHeaderBytes(end - start) + msgBytes;
    const buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES + body);
    putFrameHeader(buf, 0, FrameKind.RaftBatch, body);
    encodeBatchInto(q, buf, FRAME_HEADER_BYTES, start, end);
    sock.write(buf);
    link.sent += buf.length;
    this.stats.framesOut++;
    this.stats.bytesOut += buf.length;
    this.stats.messagesOut += end - start;
  }

  /** Write snapshot chunks while the socket holds less than two chunks; 'drain' resumes. */
  private pumpSnaps(link: Link, sock: tls.TLSSocket): void {
    while (link.snaps.length > 0 && sock.writableLength < 2 * this.chunkBytes) {
      const s = link.snaps[0]!;
      const data = s.msg.snapshot!.data;
      const n = Math.min(this.chunkBytes, data.length - s.off);
      const head = encodeSnapChunkHeader(
        s.seq,
        data.length,
        s.off,
        s.off === 0 ? s.msg : undefined,
      );
      const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + head.length);
      putFrameHeader(frame, 0, FrameKind.SnapChunk, head.length + n);
      frame.set(head, FRAME_HEADER_BYTES);
      const piece = data.subarray(s.off, s.off + n);
      s.off += n;
      this.stats.framesOut++;
      this.stats.bytesOut += frame.length + n;
      link.sent += frame.length + n;
      if (s.off < data.length) {
        sock.write(frame);
        sock.write(piece);
        continue;
      }
      link.snaps.shift();
      link.sentSnaps.push(s);
      this.stats.snapshotsOut++;
      const done = (err?: Error | null): void => {
        const i = link.sentSnaps.indexOf(s);
        if (i >= 0) link.sentSnaps.splice(i, 1);
        if (s.done || this.closed || link.state === 'closed') return;
        s.done = true;
        this.opts.onSnapshotStatus(link.id, !err);
      };
      if (n > 0) {
        sock.write(frame);
        sock.write(piece, done);
      } else {
        sock.write(frame, done);
      }
    }
  }

  private dial(link: Link): void {
    if (this.closed || link.state === 'closed') return;
    link.state = 'connecting';
    link.timer = undefined;
    this.stats.dials++;
    let secureContext: tls.SecureContext;
    try {
      secureContext = this.ctx.get(this.opts.tls());
    } catch (e) {
      this.log.error('raft dial: no usable credentials', { peer: link.id, err: e });
      this.onDown(link, undefined);
      return;
    }
    const sock = tls.connect({
      host: link.host,
      port: link.port,
      secureContext,
      checkServerIdentity: this.checkIdentity,
      minVersion: 'TLSv1.3',
    });
    link.sock = sock;
    sock.setTimeout(this.dialTimeoutMs, () => {
      sock.destroy(new Error(`no TLS handshake within ${this.dialTimeoutMs} ms`));
    });
    const decoder = new FrameDecoder(64 * 1024);
    sock.on('secureConnect', () => {
      if (link.sock !== sock || link.state === 'closed') return;
      sock.setTimeout(0);
      sock.setNoDelay(true);
      if (link.failures > 0) {
        this.log.info('raft peer reconnected', { peer: link.id, addr: link.addr });
      }
      link.failures = 0;
      link.backoffMs = 0;
      link.state = 'up';
      const hello: HelloFrame = {
        channel: 'raft',
        from: this.opts.selfId,
        clusterId: this.opts.clusterId,
      };
      const helloFrame = encodeJsonFrame(FrameKind.Hello, hello);
      sock.write(helloFrame);
      link.sent = helloFrame.length;
      link.acked = 0;
      link.progressAt = performance.now();
      if (link.queue.length > 0) this.flush(link);
    });
    sock.on('data', (chunk: Buffer) => {
      // The server sends Ack frames on this channel, and a Close frame to say why it refused us.
      try {
        decoder.push(chunk);
        for (let f = decoder.next(); f !== undefined; f = decoder.next()) {
          if (f.kind === FrameKind.Ack) {
            const n = decodeAck(f.payload);
            if (n > link.acked && link.sock === sock) {
              link.acked = n;
              link.progressAt = performance.now();
            }
          } else if (f.kind === FrameKind.Close) {
            const why = decodeJson(f.payload, 'close frame') as { message?: unknown };
            this.log.warn('raft peer closed our stream', {
              peer: link.id,
              reason: typeof why?.message === 'string' ? why.message : 'unknown',
            });
          }
        }
      } catch {
        sock.destroy();
      }
    });
    sock.on('drain', () => {
      if (link.sock === sock && link.state === 'up') this.pumpSnaps(link, sock);
    });
    sock.on('error', (err) => {
      if (link.failures === 0 && link.state !== 'closed') {
        this.log.warn('raft peer unreachable', { peer: link.id, addr: link.addr, err });
      }
    });
    sock.on('close', () => {
      if (link.sock === sock) this.onDown(link, sock);
    });
  }

  /** The stream to `link` failed or closed: drop what is queued, report, retry later. */
  private onDown(link: Link, sock: tls.TLSSocket | undefined): void {
    if (sock !== undefined && link.sock !== sock) return;
    link.sock = undefined;
    const wasUp = link.state === 'up';
    if (link.state === 'closed') return;
    link.failures++;
    link.state = 'backoff';
    link.flushScheduled = false;
    const lost = link.queue;
    link.queue = [];
    link.queuedBytes = 0;
    this.failSnaps(link);
    for (const m of lost) {
      if (m.type === MessageType.Snap) this.opts.onSnapshotStatus(link.id, false);
    }
    this.stats.dropped += lost.length;
    if (wasUp || lost.length > 0) {
      if (wasUp) this.log.warn('raft stream lost', { peer: link.id, addr: link.addr });
      this.opts.onUnreachable(link.id);
    }
    link.backoffMs = Math.min(
      this.backoffMaxMs,
      link.backoffMs === 0 ? this.backoffMinMs : link.backoffMs * 2,
    );
    link.timer = setTimeout(() => this.dial(link), link.backoffMs);
  }

  /** Close streams whose unacknowledged bytes stopped moving; the close handler redials. */
  private checkStalls(): void {
    const now = performance.now();
    for (const link of this.links.values()) {
      if (link.state !== 'up' || link.sock === undefined) continue;
      if (link.acked >= link.sent) {
        link.progressAt = now;
        continue;
      }
      if (now - link.progressAt < this.stallMs) continue;
      this.log.warn('raft stream stalled, dialling again', {
        peer: link.id,
        addr: link.addr,
        unacked: link.sent - link.acked,
        ms: Math.round(now - link.progressAt),
      });
      link.sock.destroy();
    }
  }

  private failSnaps(link: Link): void {
    for (const s of link.snaps) {
      if (!s.done) {
        s.done = true;
        if (!this.closed) this.opts.onSnapshotStatus(link.id, false);
      }
    }
    link.snaps = [];
    // A last chunk whose write callback has not run yet (the socket died first) failed too.
    for (const s of link.sentSnaps) {
      if (!s.done) {
        s.done = true;
        if (!this.closed) this.opts.onSnapshotStatus(link.id, false);
      }
    }
    link.sentSnaps = [];
  }

  private shut(link: Link): void {
    link.state = 'closed';
    if (link.timer !== undefined) clearTimeout(link.timer);
    link.timer = undefined;
    const sock = link.sock;
    link.sock = undefined;
    sock?.destroy();
    link.queue = [];
    link.queuedBytes = 0;
    link.snaps = [];
    link.sentSnaps = [];
  }

  // ---- inbound ----

  handleInbound(kind: FrameKind, payload: Uint8Array, peer: RaftPeer): void {
    if (this.closed) return;
    this.stats.framesIn++;
    if (kind === FrameKind.RaftBatch) {
      const msgs = decodeBatch(payload);
      this.deliver(msgs, peer);
      return;
    }
    if (kind !== FrameKind.SnapChunk) {
      throw new MeshError(
        'EWIRE',
        `raft stream from ${peer.raftId}: unexpected frame kind ${kind}`,
      );
    }
    const c = decodeSnapChunk(payload);
    let r = this.reasm.get(peer.conn);
    if (c.offset === 0) {
      if (r !== undefined) {
        this.log.warn('snapshot transfer abandoned by the sender', { peer: peer.raftId });
      }
      if (c.total > this.maxSnapshotBytes) {
        throw new MeshError(
          'EWIRE',
          `raft snapshot from ${peer.raftId}: ${c.total} bytes exceeds the limit of ${this.maxSnapshotBytes}`,
        );
      }
      r = { seq: c.seq, total: c.total, got: 0, msg: c.msg!, parts: [] };
      this.reasm.set(peer.conn, r);
    } else if (r === undefined || r.seq !== c.seq || r.total !== c.total || r.got !== c.offset) {
      throw new MeshError(
        'EWIRE',
        `raft snapshot from ${peer.raftId}: chunk ${c.seq}@${c.offset} out of sequence`,
      );
    }
    if (c.data.length === 0 && r.got < r.total) {
      throw new MeshError('EWIRE', `raft snapshot from ${peer.raftId}: empty chunk`);
    }
    if (c.data.length > 0) r.parts.push(c.data);
    r.got += c.data.length;
    if (r.got < r.total) return;
    this.reasm.delete(peer.conn);
    const data = new Uint8Array(r.total);
    let o = 0;
    for (const p of r.parts) {
      data.set(p, o);
      o += p.length;
    }
    r.msg.snapshot!.data = data;
    this.stats.snapshotsIn++;
    this.deliver([r.msg], peer);
  }

  inboundClosed(peer: RaftPeer): void {
    this.reasm.delete(peer.conn);
  }

  /** Deliver what is addressed to us from the peer that authenticated; drop anything else. */
  private deliver(msgs: Message[], peer: RaftPeer): void {
    let ok = true;
    for (const m of msgs) {
      if (m.to !== this.opts.selfId || m.from !== peer.raftId || isLocal(m.type)) ok = false;
    }
    if (!ok) {
      const bad = msgs.filter(
        (m) => m.to !== this.opts.selfId || m.from !== peer.raftId || isLocal(m.type),
      );
      this.log.warn('raft messages with a wrong sender, recipient or type dropped', {
        peer: peer.raftId,
        node: peer.nodeId,
        count: bad.length,
        first: `${bad[0]!.type} ${bad[0]!.from}->${bad[0]!.to}`,
      });
      msgs = msgs.filter(
        (m) => m.to === this.opts.selfId && m.from === peer.raftId && !isLocal(m.type),
      );
    }
    if (msgs.length === 0) return;
    this.stats.messagesIn += msgs.length;
    this.opts.onMessages(msgs);
  }

  /** Close every stream; no callback runs afterwards. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.stallTimer);
    for (const link of this.links.values()) this.shut(link);
    this.links.clear();
    this.reasm.clear();
  }
}
