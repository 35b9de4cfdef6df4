/**
 * A netlink socket bound to one network namespace, with synchronous request/ACK, dumps and
 * batches of many requests per system call.
 *
 * Why synchronous: the kernel handles rtnetlink, XFRM and generic-netlink requests inside
 * sendmsg(), so the answer is already queued when send() returns and a non-blocking recv()
 * picks it up; dumps continue inside each recv(). A request costs tens of microseconds and
 * never waits on the network, so blocking the event loop for it is cheaper than a round trip
 * through a worker. If an answer is not there yet (a slow module autoload), we poll() for it
 * with a bounded timeout and fail with a clear error rather than hang.
 * May import: ./libc, ./nl, ./netns, util/.
 */
import { MeshError } from '../util/errors.js';
import {
  Errno,
  MSG_DONTWAIT,
  MSG_TRUNC,
  SOL_SOCKET,
  SO_RCVBUF,
  SO_RCVBUFFORCE,
  SO_SNDBUF,
  SO_SNDBUFFORCE,
  SOL_NETLINK,
  close,
  errnoName,
  errnoText,
  netlinkBind,
  netlinkSocket,
  pollIn,
  recv,
  send,
  trySetsockoptInt,
} from './libc.js';
import { withNetns, type Netns } from './netns.js';
import {
  NETLINK_CAP_ACK,
  NETLINK_EXT_ACK,
  NETLINK_GET_STRICT_CHK,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSG_NOOP,
  NLMSG_OVERRUN,
  NLM_F_ACK,
  NLM_F_DUMP_INTR,
  NLM_F_MULTI,
  parseAck,
  parseDone,
  parseMsgs,
  stampMsg,
  type NlMsg,
} from './nl.js';

/** What a request does, for error messages: `add vxlan vx-001000`. */
export interface OpDesc {
  /** Verb: add, del, set, get, dump, resolve … */
  op: string;
  /** Object, kind first: `vxlan vx-001000`, `neigh 10.0.0.2 dev br0`. */
  object: string;
  /** Extra advice for a given errno, when the caller knows the likely cause. */
  hint?: (errno: number) => string | undefined;
}

/** Generic advice per errno, used when the caller gives none. */
function defaultHint(errno: number): string | undefined {
  switch (errnoName(errno)) {
    case 'EPERM':
    case 'EACCES':
      return 'meshd needs root or CAP_NET_ADMIN';
    case 'EEXIST':
      return 'it already exists; delete it first or pick another name';
    case 'ENODEV':
      return 'no such device; check the name with `ip link`';
    case 'EOPNOTSUPP':
      return 'the kernel does not support this; is the module loaded?';
    default:
      return undefined;
  }
}

/** A request the kernel refused: errno plus the object it was about. */
export class NetlinkError extends MeshError {
  /** Positive errno (e.g. 17 for EEXIST). */
  readonly errno: number;
  /** errno's name (`EEXIST`), what callers should match on. */
  readonly errnoName: string;
  /** The kernel's extended-ACK message, if any. */
  readonly kernelMessage: string | undefined;

  constructor(desc: OpDesc, errno: number, kernelMessage?: string) {
    const hint = desc.hint?.(errno) ?? defaultHint(errno);
    const kmsg = kernelMessage ? ` (kernel: ${kernelMessage})` : '';
    super(
      'ENETLINK',
      `${desc.op} ${desc.object}: ${errnoText(errno)}${kmsg}${hint ? `; ${hint}` : ''}`,
    );
    this.errno = errno;
    this.errnoName = errnoName(errno);
    this.kernelMessage = kernelMessage;
  }
}

/** True if `e` is a NetlinkError with the given errno name (`'EEXIST'`). */
export function isErrno(e: unknown, name: string): e is NetlinkError {
  return e instanceof NetlinkError && e.errnoName === name;
}

export interface SocketOptions {
  /** Namespace to create the socket in (it stays there). Default: the caller's. */
  netns?: Netns;
  /** Receive buffer, bytes. Larger buffers let bigger batches run per syscall. @default 4 MiB */
  rcvbuf?: number;
  /** How long to wait for an answer the kernel has not queued yet, ms. @default 5000 */
  timeoutMs?: number;
}

/** One request of a batch: an encoded message (from NlWriter.finish) and its description. */
export interface BatchItem {
  msg: Buffer;
  /** A description, or a function making one: only failed items need it, so large batches pass a function. */
  desc: OpDesc | (() => OpDesc);
}

const descOf = (d: OpDesc | (() => OpDesc)): OpDesc => (typeof d === 'function' ? d() : d);

/** Largest datagram we send at once; well under the (raised) socket send buffer. */
const BATCH_BYTES = 64 * 1024;
/** Receive buffer; dump parts are capped by the kernel at ~32 KiB, single replies are small. */
const RECV_BYTES = 256 * 1024;
/** A dump interrupted by concurrent changes (NLM_F_DUMP_INTR) is restarted this many times. */
const DUMP_RETRIES = 5;

export class NetlinkSocket {
  readonly fd: number;
  /** Our port id, assigned by the kernel at bind. */
  readonly pid: number;
  private seq: number;
  private readonly rbuf = Buffer.alloc(RECV_BYTES);
  private readonly timeoutMs: number;
  private closed = false;

  private constructor(
    fd: number,
    readonly protocol: number,
    timeoutMs: number,
  ) {
    this.fd = fd;
    this.pid = netlinkBind(fd);
    this.timeoutMs = timeoutMs;
    // Start from a time-derived value so a stale reply to an earlier socket that reused this
    // fd can never match; uniqueness per socket is what matters, not unpredictability.
    this.seq = (Date.now() & 0x3fffffff) >>> 0;
  }

  /**
   * Open a netlink socket for `protocol` (NETLINK_ROUTE, NETLINK_GENERIC, …), created inside
   * `opts.netns` if given. Extended ACKs, capped ACKs and strict dump checking are enabled
   * where the kernel supports them.
   */
  static open(protocol: number, opts: SocketOptions = {}): NetlinkSocket {
    const fd = opts.netns
      ? withNetns(opts.netns, () => netlinkSocket(protocol))
      : netlinkSocket(protocol);
    try {
      const rcv = opts.rcvbuf ?? 4 * 1024 * 1024;
      // FORCE variants ignore rmem_max/wmem_max but need CAP_NET_ADMIN; fall back quietly.
      if (!trySetsockoptInt(fd, SOL_SOCKET, SO_RCVBUFFORCE, rcv)) {
        trySetsockoptInt(fd, SOL_SOCKET, SO_RCVBUF, rcv);
      }
      if (!trySetsockoptInt(fd, SOL_SOCKET, SO_SNDBUFFORCE, 4 * BATCH_BYTES)) {
        trySetsockoptInt(fd, SOL_SOCKET, SO_SNDBUF, 4 * BATCH_BYTES);
      }
      trySetsockoptInt(fd, SOL_NETLINK, NETLINK_EXT_ACK, 1);
      trySetsockoptInt(fd, SOL_NETLINK, NETLINK_CAP_ACK, 1);
      trySetsockoptInt(fd, SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1);
      return new NetlinkSocket(fd, protocol, opts.timeoutMs ?? 5000);
    } catch (e) {
      close(fd);
      throw e;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    close(this.fd);
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0 || 1;
    return this.seq;
  }

  /**
   * Receive one datagram (waiting up to the timeout) and split it into messages. With `keep`,
   * the messages are copied out of the shared receive buffer so they survive the next receive.
   */
  private receive(desc: OpDesc, keep: boolean): NlMsg[] {
    for (;;) {
      const n = recv(this.fd, this.rbuf, MSG_DONTWAIT | MSG_TRUNC);
      if (n === -(Errno.EAGAIN ?? 11)) {
        if (!pollIn(this.fd, this.timeoutMs)) {
          throw new MeshError(
            'ETIMEDOUT',
            `${desc.op} ${desc.object}: no answer from the kernel in ${this.timeoutMs} ms`,
          );
        }
        continue;
      }
      if (n === -(Errno.ENOBUFS ?? 105)) {
        // The socket's receive queue overflowed: some answers were dropped by the kernel.
        throw new NetlinkError(
          {
            ...desc,
            hint: () =>
              'netlink receive buffer overrun, answers were lost; retry with a smaller batch',
          },
          Errno.ENOBUFS ?? 105,
        );
      }
      if (n > this.rbuf.length) {
        throw new MeshError(
          'ENLDECODE',
          `${desc.op} ${desc.object}: kernel answer of ${n} bytes exceeds the ${this.rbuf.length}-byte buffer`,
        );
      }
      const view = this.rbuf.subarray(0, n);
      return parseMsgs(keep ? Buffer.from(view) : view);
    }
  }

  /**
   * Send one request that expects only an ACK (or an error) and return any non-ACK replies
   * that came with the same sequence number (e.g. with NLM_F_ECHO, or a genl GET answer).
   */
  request(msg: Buffer, desc: OpDesc): NlMsg[] {
    const seq = this.nextSeq();
    const flags = msg.readUInt16LE(6);
    msg.writeUInt16LE(flags | NLM_F_ACK, 6);
    stampMsg(msg, seq, this.pid);
    send(this.fd, msg);
    const replies: NlMsg[] = [];
    for (;;) {
      for (const m of this.receive(desc, true)) {
        if (m.seq !== seq) continue; // a late answer to an abandoned request
        if (m.type === NLMSG_ERROR) {
          const ack = parseAck(m);
          if (ack.errno !== 0) throw new NetlinkError(desc, ack.errno, ack.message);
          return replies;
        }
        if (m.type === NLMSG_DONE || m.type === NLMSG_NOOP || m.type === NLMSG_OVERRUN) continue;
        replies.push(m);
      }
    }
  }

  /**
   * Send a dump request (NLM_F_DUMP set by the caller) and collect every part. A dump the
   * kernel flags as interrupted by concurrent changes is restarted, up to DUMP_RETRIES times.
   */
  dump(msg: Buffer, desc: OpDesc): NlMsg[] {
    for (let attempt = 0; ; attempt++) {
      const seq = this.nextSeq();
      stampMsg(msg, seq, this.pid);
      send(this.fd, msg);
      const parts: NlMsg[] = [];
      let interrupted = false;
      let done = false;
      while (!done) {
        for (const m of this.receive(desc, true)) {
          if (m.seq !== seq) continue;
          if (m.flags & NLM_F_DUMP_INTR) interrupted = true;
          if (m.type === NLMSG_DONE) {
            const d = parseDone(m);
            if (d.errno !== 0) throw new NetlinkError(desc, d.errno, d.message);
            done = true;
            break;
          }
          if (m.type === NLMSG_ERROR) {
            const ack = parseAck(m);
            if (ack.errno !== 0) throw new NetlinkError(desc, ack.errno, ack.message);
            done = true; // an ACK ends a dump only when the request asked for one
            break;
          }
          if (m.type === NLMSG_NOOP) continue;
          parts.push(m);
          if (!(m.flags & NLM_F_MULTI)) done = true; // a single-part answer
        }
      }
      if (!interrupted) return parts;
      if (attempt + 1 >= DUMP_RETRIES) {
        throw new MeshError(
          'EAGAIN',
          `${desc.op} ${desc.object}: dump kept being interrupted by concurrent changes (${DUMP_RETRIES} tries)`,
        );
      }
    }
  }

  /**
   * Send many requests with as few system calls as possible: messages are packed into
   * datagrams of up to 64 KiB (the kernel processes each message of a datagram in turn and
   * ACKs each), then the ACKs are collected before the next datagram goes out, so the receive
   * queue never holds more than one datagram's worth of ACKs.
   *
   * Returns one entry per item: null on success, or the NetlinkError for that item; a failed
   * item does not stop the others (the kernel carries on with the next message).
   */
  batch(items: readonly BatchItem[]): Array<NetlinkError | null> {
    const results: Array<NetlinkError | null> = new Array<NetlinkError | null>(items.length).fill(
      null,
    );
    let i = 0;
    while (i < items.length) {
      // Pack one datagram.
      const first = i;
      let bytes = 0;
      const seqIndex = new Map<number, number>();
      while (i < items.length) {
        const m = items[i]!.msg;
        if (bytes > 0 && bytes + m.length > BATCH_BYTES) break;
        bytes += m.length;
        i++;
      }
      const dgram = Buffer.allocUnsafe(bytes);
      let off = 0;
      for (let k = first; k < i; k++) {
        const m = items[k]!.msg;
        const seq = this.nextSeq();
        m.writeUInt16LE(m.readUInt16LE(6) | NLM_F_ACK, 6);
        stampMsg(m, seq, this.pid);
        m.copy(dgram, off);
        off += m.length; // NlWriter output is always 4-byte aligned
        seqIndex.set(seq, k);
      }
      send(this.fd, dgram);
      let pending = i - first;
      while (pending > 0) {
        for (const m of this.receive(descOf(items[first]!.desc), false)) {
          const k = seqIndex.get(m.seq);
          if (k === undefined || m.type !== NLMSG_ERROR) continue;
          seqIndex.delete(m.seq);
          pending--;
          const ack = parseAck(m);
          if (ack.errno !== 0)
            results[k] = new NetlinkError(descOf(items[k]!.desc), ack.errno, ack.message);
        }
      }
    }
    return results;
  }

  /** Like batch(), but throws the first error (after every item has been tried). */
  batchOrThrow(items: readonly BatchItem[]): void {
    const err = this.batch(items).find((r) => r !== null);
    if (err) throw err;
  }
}
