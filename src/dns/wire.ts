/**
 * DNS messages (RFC 1035 §4, EDNS0 from RFC 6891) as far as the embedded resolver needs them:
 * queries are parsed (header, questions, an OPT record's UDP size), answers encoded (A, PTR,
 * SRV records; names written without compression, which every resolver accepts). Queries we
 * forward travel as the bytes they came in, so nothing else needs a codec.
 *
 * Written by hand: the npm DNS packet libraries are either unmaintained or throw plain errors
 * (or loop) on hostile input, and this is the part of the resolver every task can send
 * arbitrary bytes to. Every malformed input is a MeshError('EDNS'); parsing is bounded
 * (compression pointers must point backwards, at most 127 hops, names ≤ 255 octets).
 * Pure; may import util/errors only.
 */
import { MeshError } from '../util/errors.js';

export const TYPE = {
  A: 1,
  NS: 2,
  CNAME: 5,
  SOA: 6,
  PTR: 12,
  MX: 15,
  TXT: 16,
  AAAA: 28,
  SRV: 33,
  OPT: 41,
  ANY: 255,
} as const;

export const CLASS_IN = 1;

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 };

/** Plain DNS over UDP without EDNS: RFC 1035 §4.2.1. */
export const UDP_MAX_PLAIN = 512;

export interface Question {
  /** Lower-case, no trailing dot ('' is the root). */
  name: string;
  type: number;
  class: number;
}

export interface Query {
  id: number;
  opcode: number;
  /** Recursion desired. */
  rd: boolean;
  /** QR bit: set on responses (we only answer queries). */
  qr: boolean;
  questions: Question[];
  /** The sender's EDNS UDP payload size, when it sent an OPT record. */
  ednsUdpSize?: number;
}

export type RData =
  | { a: string }
  | { ptr: string }
  | { srv: { priority: number; weight: number; port: number; target: string } };

export interface Rr {
  name: string;
  type: number;
  ttl: number;
  data: RData;
}

const bad = (what: string): MeshError => new MeshError('EDNS', `malformed DNS message: ${what}`);

/** Read a (possibly compressed) name at `off`; returns it and the offset after it. */
export function readName(buf: Uint8Array, off: number): { name: string; next: number } {
  const labels: string[] = [];
  let pos = off;
  let next = -1;
  let hops = 0;
  let length = 0;
  for (;;) {
    if (pos >= buf.length) throw bad('name runs past the end');
    const len = buf[pos]!;
    if (len === 0) {
      if (next < 0) next = pos + 1;
      break;
    }
    const kind = len & 0xc0;
    if (kind === 0xc0) {
      if (pos + 1 >= buf.length) throw bad('compression pointer runs past the end');
      const target = ((len & 0x3f) << 8) | buf[pos + 1]!;
      // Only backwards: no loops, and at most 127 hops (a name has at most 127 labels).
      if (target >= pos || ++hops > 127) throw bad('compression pointer loop');
      if (next < 0) next = pos + 2;
      pos = target;
      continue;
    }
    if (kind !== 0) throw bad('unknown label type');
    if (pos + 1 + len > buf.length) throw bad('label runs past the end');
    length += len + 1;
    if (length > 255) throw bad('name longer than 255 octets');
    let label = '';
    for (let i = pos + 1; i < pos + 1 + len; i++) {
      const c = buf[i]!;
      // Dots and non-printables inside a label would make names ambiguous: escape them.
      label +=
        c === 0x2e || c < 0x21 || c > 0x7e
          ? `\\${c.toString().padStart(3, '0')}`
          : String.fromCharCode(c);
    }
    labels.push(label.toLowerCase());
    pos += 1 + len;
  }
  return { name: labels.join('.'), next };
}

/** Parse a query: header and questions; the OPT record (if any) for its UDP size. */
export function parseQuery(buf: Uint8Array): Query {
  if (buf.length < 12) throw bad('shorter than a header');
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const id = view.getUint16(0);
  const flags = view.getUint16(2);
  const qd = view.getUint16(4);
  const an = view.getUint16(6);
  const ns = view.getUint16(8);
  const ar = view.getUint16(10);
  if (qd > 16) throw bad(`${qd} questions`);
  const questions: Question[] = [];
  let off = 12;
  for (let i = 0; i < qd; i++) {
    const n = readName(buf, off);
    off = n.next;
    if (off + 4 > buf.length) throw bad('question runs past the end');
    questions.push({ name: n.name, type: view.getUint16(off), class: view.getUint16(off + 2) });
    off += 4;
  }
  // Skip answer and authority records (a query has none, but tolerate them); look for OPT in
  // the additional section.
  let ednsUdpSize: number | undefined;
  const total = an + ns + ar;
  if (total > 64) throw bad(`${total} records in a query`);
  for (let i = 0; i < total; i++) {
    const n = readName(buf, off);
    off = n.next;
    if (off + 10 > buf.length) throw bad('record runs past the end');
    const type = view.getUint16(off);
    const klass = view.getUint16(off + 2);
    const rdlen = view.getUint16(off + 8);
    if (off + 10 + rdlen > buf.length) throw bad('record data runs past the end');
    if (type === TYPE.OPT && i >= an + ns) ednsUdpSize = Math.max(UDP_MAX_PLAIN, klass);
    off += 10 + rdlen;
  }
  return {
    id,
    qr: (flags & 0x8000) !== 0,
    opcode: (flags >> 11) & 0xf,
    rd: (flags & 0x0100) !== 0,
    questions,
    ...(ednsUdpSize !== undefined ? { ednsUdpSize } : {}),
  };
}

class Writer {
  private buf = Buffer.alloc(512);
  len = 0;
  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const b = Buffer.alloc(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(b, 0, 0, this.len);
    this.buf = b;
  }
  u8(v: number): void {
    this.room(1);
    this.buf[this.len++] = v;
  }
  u16(v: number): void {
    this.room(2);
    this.buf.writeUInt16BE(v, this.len);
    this.len += 2;
  }
  u32(v: number): void {
    this.room(4);
    this.buf.writeUInt32BE(v >>> 0, this.len);
    this.len += 4;
  }
  name(n: string): void {
    if (n !== '') {
      for (const label of n.split('.')) {
        const bytes = unescapeLabel(label);
        if (bytes.length === 0 || bytes.length > 63) {
          throw new MeshError('EDNS', `encode name ${JSON.stringify(n)}: bad label length`);
        }
        this.u8(bytes.length);
        this.room(bytes.length);
        bytes.copy(this.buf, this.len);
        this.len += bytes.length;
      }
    }
    this.u8(0);
  }
  setU16(at: number, v: number): void {
    this.buf.writeUInt16BE(v, at);
  }
  done(): Buffer {
    return this.buf.subarray(0, this.len);
  }
}

function unescapeLabel(label: string): Buffer {
  const out: number[] = [];
  for (let i = 0; i < label.length; i++) {
    if (label[i] === '\\' && /^\d{3}$/.test(label.slice(i + 1, i + 4))) {
      out.push(Number(label.slice(i + 1, i + 4)) & 0xff);
      i += 3;
    } else {
      out.push(label.charCodeAt(i) & 0xff);
    }
  }
  return Buffer.from(out);
}

function writeRr(w: Writer, rr: Rr): void {
  w.name(rr.name);
  w.u16(rr.type);
  w.u16(CLASS_IN);
  w.u32(rr.ttl);
  const lenAt = w.len;
  w.u16(0);
  const start = w.len;
  const d = rr.data;
  if ('a' in d) {
    const parts = d.a.split('.').map(Number);
    if (parts.length !== 4 || parts.some((p) => !(p >= 0 && p <= 255))) {
      throw new MeshError('EDNS', `encode A record: ${d.a} is not an IPv4 address`);
    }
    for (const p of parts) w.u8(p);
  } else if ('ptr' in d) {
    w.name(d.ptr);
  } else {
    w.u16(d.srv.priority);
    w.u16(d.srv.weight);
    w.u16(d.srv.port);
    w.name(d.srv.target);
  }
  w.setU16(lenAt, w.len - start);
}

/**
 * A response to `q`: its first question echoed, `answers`, flags QR, AA (our names), RD copied,
 * RA. When it would not fit `maxSize` (UDP), the answers are dropped and TC set, so the client
 * retries over TCP (RFC 1035 §4.2.1, RFC 7766).
 */
export function encodeResponse(
  q: Query,
  rcode: number,
  answers: readonly Rr[],
  opts: { aa: boolean; maxSize?: number; additional?: readonly Rr[] } = { aa: true },
): Buffer {
  const build = (ans: readonly Rr[], add: readonly Rr[], tc: boolean): Buffer => {
    const w = new Writer();
    w.u16(q.id);
    const flags =
      0x8000 |
      (q.opcode << 11) |
      (opts.aa ? 0x0400 : 0) |
      (tc ? 0x0200 : 0) |
      (q.rd ? 0x0100 : 0) |
      0x0080 |
      (rcode & 0xf);
    w.u16(flags);
    const question = q.questions[0];
    w.u16(question ? 1 : 0);
    w.u16(ans.length);
    w.u16(0);
    w.u16(add.length);
    if (question) {
      w.name(question.name);
      w.u16(question.type);
      w.u16(question.class);
    }
    for (const rr of ans) writeRr(w, rr);
    for (const rr of add) writeRr(w, rr);
    return w.done();
  };
  const full = build(answers, opts.additional ?? [], false);
  if (opts.maxSize === undefined || full.length <= opts.maxSize) return full;
  const noAdd = build(answers, [], false);
  if (noAdd.length <= opts.maxSize) return noAdd;
  return build([], [], true);
}

/** A bare error response (FORMERR for what did not parse needs only the id). */
export function errorResponse(id: number, rcode: number, q?: Query): Buffer {
  if (q) return encodeResponse(q, rcode, [], { aa: false });
  const b = Buffer.alloc(12);
  b.writeUInt16BE(id, 0);
  b.writeUInt16BE(0x8000 | 0x0080 | (rcode & 0xf), 2);
  return b;
}

/** `4.3.2.1.in-addr.arpa` → `1.2.3.4`, or undefined. */
export function ptrToIp(name: string): string | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.in-addr\.arpa$/.exec(name);
  if (!m) return undefined;
  const parts = [m[4], m[3], m[2], m[1]].map(Number);
  return parts.every((p) => p <= 255) ? parts.join('.') : undefined;
}

export function ipToPtr(ip: string): string {
  return `${ip.split('.').reverse().join('.')}.in-addr.arpa`;
}
