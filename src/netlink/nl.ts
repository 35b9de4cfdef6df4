/**
 * Netlink message framing and attribute (TLV) encoding/decoding. Pure: no sockets, no syscalls.
 *
 * Layout (uapi linux/netlink.h): every message is a 16-byte nlmsghdr { len u32, type u16,
 * flags u16, seq u32, pid u32 } followed by a family header (ifinfomsg, ndmsg, genlmsghdr, …)
 * and attributes; everything is host byte order (little-endian on our targets) and padded to
 * 4 bytes (NLMSG_ALIGN / NLA_ALIGN). Constants keep kernel spelling.
 * May import: node built-ins, util/.
 */
import { MeshError } from '../util/errors.js';

// linux/netlink.h — on the wire, do not renumber.
export const NETLINK_ROUTE = 0;
export const NETLINK_XFRM = 6;
export const NETLINK_NETFILTER = 12;
export const NETLINK_GENERIC = 16;

export const NLMSG_NOOP = 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_OVERRUN = 4;
export const NLMSG_MIN_TYPE = 0x10;

export const NLM_F_REQUEST = 0x01;
export const NLM_F_MULTI = 0x02;
export const NLM_F_ACK = 0x04;
export const NLM_F_ECHO = 0x08;
export const NLM_F_DUMP_INTR = 0x10;
export const NLM_F_DUMP_FILTERED = 0x20;
// GET requests
export const NLM_F_ROOT = 0x100;
export const NLM_F_MATCH = 0x200;
export const NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH;
// NEW requests
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
export const NLM_F_APPEND = 0x800;
// ACK flags
export const NLM_F_CAPPED = 0x100;
export const NLM_F_ACK_TLVS = 0x200;

// Socket options at SOL_NETLINK.
export const NETLINK_ADD_MEMBERSHIP = 1;
export const NETLINK_CAP_ACK = 10;
export const NETLINK_EXT_ACK = 11;
export const NETLINK_GET_STRICT_CHK = 12;

// Extended ACK attributes (enum nlmsgerr_attrs).
export const NLMSGERR_ATTR_MSG = 1;
export const NLMSGERR_ATTR_OFFS = 2;

export const NLA_F_NESTED = 0x8000;
export const NLA_F_NET_BYTEORDER = 0x4000;
export const NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xffff;

export const NLMSG_HDRLEN = 16;
const NLA_HDRLEN = 4;

export const align4 = (n: number): number => (n + 3) & ~3;

/** Malformed bytes from the kernel (or a test): a bug somewhere, reported with where it was. */
export class NetlinkDecodeError extends MeshError {
  constructor(detail: string) {
    super('ENLDECODE', `decode netlink message: ${detail}`);
  }
}

/** One decoded netlink message; `payload` is a view of everything after the nlmsghdr. */
export interface NlMsg {
  type: number;
  flags: number;
  seq: number;
  pid: number;
  payload: Buffer;
}

/**
 * Builds one netlink message: the family header, then attributes, nested ones included.
 * seq and pid are left 0 and filled in by the socket when the message is sent.
 */
export class NlWriter {
  private buf: Buffer;
  private len = NLMSG_HDRLEN;

  constructor(type: number, flags: number, sizeHint = 128) {
    this.buf = Buffer.alloc(Math.max(sizeHint, 64));
    this.buf.writeUInt16LE(type, 4);
    this.buf.writeUInt16LE(flags, 6);
  }

  private reserve(n: number): number {
    const need = this.len + align4(n);
    if (need > this.buf.length) {
      const next = Buffer.alloc(Math.max(need, this.buf.length * 2));
      this.buf.copy(next, 0, 0, this.len);
      this.buf = next;
    }
    const at = this.len;
    this.len = need; // padding bytes are already zero: buffers are zero-filled
    return at;
  }

  /** Raw bytes (a fixed family header such as ifinfomsg), padded to 4. */
  raw(bytes: Uint8Array): this {
    const at = this.reserve(bytes.length);
    this.buf.set(bytes, at);
    return this;
  }

  // Note for every writer below: take the offset from attr() *before* touching this.buf,
  // since reserving may replace the buffer.
  private attr(type: number, len: number): number {
    const at = this.reserve(NLA_HDRLEN + len);
    this.buf.writeUInt16LE(NLA_HDRLEN + len, at);
    this.buf.writeUInt16LE(type, at + 2);
    return at + NLA_HDRLEN;
  }

  u8(type: number, v: number): this {
    const at = this.attr(type, 1);
    this.buf.writeUInt8(v, at);
    return this;
  }
  u16(type: number, v: number): this {
    const at = this.attr(type, 2);
    this.buf.writeUInt16LE(v, at);
    return this;
  }
  /** A 16-bit value in network byte order (ports: IFLA_VXLAN_PORT, IPVS_SVC_ATTR_PORT). */
  be16(type: number, v: number): this {
    const at = this.attr(type, 2);
    this.buf.writeUInt16BE(v, at);
    return this;
  }
  u32(type: number, v: number): this {
    const at = this.attr(type, 4);
    this.buf.writeUInt32LE(v >>> 0, at);
    return this;
  }
  s32(type: number, v: number): this {
    const at = this.attr(type, 4);
    this.buf.writeInt32LE(v, at);
    return this;
  }
  u64(type: number, v: bigint): this {
    const at = this.attr(type, 8);
    this.buf.writeBigUInt64LE(v, at);
    return this;
  }
  /** A NUL-terminated string (NLA_NUL_STRING / NLA_STRING both accept it). */
  str(type: number, s: string): this {
    const b = Buffer.from(s + '\0', 'utf8');
    const at = this.attr(type, b.length);
    this.buf.set(b, at);
    return this;
  }
  bytes(type: number, b: Uint8Array): this {
    const at = this.attr(type, b.length);
    this.buf.set(b, at);
    return this;
  }
  flag(type: number): this {
    this.attr(type, 0);
    return this;
  }
  /** A nested attribute: `fill` writes its children. NLA_F_NESTED is set unless `plain`. */
  nest(type: number, fill: (w: this) => void, plain = false): this {
    const at = this.reserve(NLA_HDRLEN);
    this.buf.writeUInt16LE((plain ? type : type | NLA_F_NESTED) & 0xffff, at + 2);
    fill(this);
    this.buf.writeUInt16LE(this.len - at, at);
    return this;
  }

  /** The finished message (a view; do not keep the writer afterwards). */
  finish(): Buffer {
    this.buf.writeUInt32LE(this.len, 0);
    return this.buf.subarray(0, this.len);
  }
}

/** Fill seq and pid into an encoded message (in place). */
export function stampMsg(msg: Buffer, seq: number, pid: number): void {
  msg.writeUInt32LE(seq >>> 0, 8);
  msg.writeUInt32LE(pid >>> 0, 12);
}

/** Split a received datagram into messages, validating every length. */
export function parseMsgs(buf: Buffer): NlMsg[] {
  const out: NlMsg[] = [];
  let off = 0;
  while (off + NLMSG_HDRLEN <= buf.length) {
    const len = buf.readUInt32LE(off);
    if (len < NLMSG_HDRLEN || off + len > buf.length) {
      throw new NetlinkDecodeError(
        `message at offset ${off} has length ${len} (datagram ${buf.length})`,
      );
    }
    out.push({
      type: buf.readUInt16LE(off + 4),
      flags: buf.readUInt16LE(off + 6),
      seq: buf.readUInt32LE(off + 8),
      pid: buf.readUInt32LE(off + 12),
      payload: buf.subarray(off + NLMSG_HDRLEN, off + len),
    });
    off += align4(len);
  }
  return out;
}

/**
 * Decoded attributes of one message or nest. Attribute types are masked (NLA_F_NESTED and
 * NLA_F_NET_BYTEORDER removed); a repeated type keeps the last value in `get` and all of them
 * in `all`.
 */
export class Attrs {
  private readonly map = new Map<number, Buffer>();
  private readonly list: Array<[number, Buffer]> = [];

  constructor(buf: Buffer, start = 0, end = buf.length) {
    let off = start;
    while (off + NLA_HDRLEN <= end) {
      const len = buf.readUInt16LE(off);
      if (len < NLA_HDRLEN || off + len > end) {
        throw new NetlinkDecodeError(`attribute at offset ${off} has length ${len} (end ${end})`);
      }
      const type = buf.readUInt16LE(off + 2) & NLA_TYPE_MASK;
      const val = buf.subarray(off + NLA_HDRLEN, off + len);
      this.map.set(type, val);
      this.list.push([type, val]);
      off += align4(len);
    }
  }

  has(type: number): boolean {
    return this.map.has(type);
  }
  get(type: number): Buffer | undefined {
    return this.map.get(type);
  }
  all(): ReadonlyArray<[number, Buffer]> {
    return this.list;
  }
  private fixed(type: number, size: number): Buffer | undefined {
    const v = this.map.get(type);
    if (v === undefined) return undefined;
    if (v.length < size) {
      throw new NetlinkDecodeError(`attribute ${type} has ${v.length} bytes, want ${size}`);
    }
    return v;
  }
  u8(type: number): number | undefined {
    return this.fixed(type, 1)?.readUInt8(0);
  }
  u16(type: number): number | undefined {
    return this.fixed(type, 2)?.readUInt16LE(0);
  }
  be16(type: number): number | undefined {
    return this.fixed(type, 2)?.readUInt16BE(0);
  }
  u32(type: number): number | undefined {
    return this.fixed(type, 4)?.readUInt32LE(0);
  }
  s32(type: number): number | undefined {
    return this.fixed(type, 4)?.readInt32LE(0);
  }
  u64(type: number): bigint | undefined {
    return this.fixed(type, 8)?.readBigUInt64LE(0);
  }
  /** A string attribute without its trailing NUL (if any). */
  str(type: number): string | undefined {
    const v = this.map.get(type);
    if (v === undefined) return undefined;
    const nul = v.indexOf(0);
    return v.toString('utf8', 0, nul < 0 ? v.length : nul);
  }
  nested(type: number): Attrs | undefined {
    const v = this.map.get(type);
    return v === undefined ? undefined : new Attrs(v);
  }
}

/** A decoded NLMSG_ERROR: errno (positive, 0 = ACK) and the extended-ACK text if the kernel sent one. */
export interface NlAck {
  errno: number;
  /** seq of the request this answers (from the echoed header). */
  seq: number;
  message?: string;
  badAttrOffset?: number;
}

export function parseAck(m: NlMsg): NlAck {
  const p = m.payload;
  if (p.length < 4 + NLMSG_HDRLEN) throw new NetlinkDecodeError('short NLMSG_ERROR');
  const err = p.readInt32LE(0);
  const origLen = p.readUInt32LE(4);
  const ack: NlAck = { errno: -err, seq: p.readUInt32LE(12) };
  if (m.flags & NLM_F_ACK_TLVS) {
    // With NLM_F_CAPPED only the original header was echoed, otherwise the whole request.
    const echoed = m.flags & NLM_F_CAPPED ? NLMSG_HDRLEN : origLen;
    const tlvStart = 4 + align4(echoed);
    if (tlvStart <= p.length) {
      const a = new Attrs(p, tlvStart);
      const msg = a.str(NLMSGERR_ATTR_MSG);
      if (msg) ack.message = msg;
      const offs = a.u32(NLMSGERR_ATTR_OFFS);
      if (offs !== undefined) ack.badAttrOffset = offs;
    }
  }
  return ack;
}

/**
 * NLMSG_DONE carries an int error (negative errno) for dumps that failed, followed by
 * extended-ACK attributes when NLM_F_ACK_TLVS is set.
 */
export function parseDone(m: NlMsg): { errno: number; message?: string } {
  const p = m.payload;
  if (p.length < 4) return { errno: 0 };
  const errno = -p.readInt32LE(0);
  if (!(m.flags & NLM_F_ACK_TLVS) || p.length <= 4) return { errno };
  const msg = new Attrs(p, 4).str(NLMSGERR_ATTR_MSG);
  return msg ? { errno, message: msg } : { errno };
}
