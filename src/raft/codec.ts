/**
 * Wire codec of the manager-to-manager stream (TCP 2377): raft message batches, snapshot
 * chunks, and the frame layer both the raft and the rpc channels ride on.
 *
 * Pure: no I/O, no clock. May import src/raft/types.ts and src/util/errors.ts.
 *
 * Frame:  u32 BE length of what follows | u8 kind | payload            (kinds: FrameKind)
 * Batch:  u8 version (1) | uvarint count | count × message
 * Message:
 *   u8 type | uvarint from, to, term, logTerm, index, commit, rejectHint | u8 flags
 *   (bit 0 reject, bit 1 snapshot follows, bit 2 context follows) | uvarint entry count |
 *   entries: uvarint term, uvarint index, u8 type, uvarint length, data |
 *   [snapshot: uvarint index, term, then voters, learners, removed (each uvarint count and
 *   uvarint ids), uvarint length, data] | [context: uvarint length, bytes]
 * uvarint: unsigned LEB128, at most 8 bytes (indexes and terms are safe integers, < 2^53),
 * shortest form only, so every value has exactly one encoding.
 *
 * Decoding never throws anything but MeshError('EWIRE') and never allocates more than a constant
 * times the input length: every count and length is checked against the bytes left before use.
 * Decoded byte fields are views into one private copy of the input, never into the input itself
 * (a socket's read buffer must not be kept alive, or changed under us, through an entry in the log).
 */

import { invariant, MeshError } from '../util/errors.js';
import {
  EntryType,
  MessageType,
  type ConfState,
  type Entry,
  type Message,
  type Snapshot,
} from './types.js';

export const CODEC_VERSION = 1;

/** Frame kinds. On the wire: never renumber. */
export enum FrameKind {
  /** First frame of every connection: JSON {channel, from?, clusterId?}. */
  Hello = 1,
  /** rpc channel: JSON request {id, method, params} or reply {id, result} | {id, error}. */
  Rpc = 2,
  /** raft channel: one encoded message batch. */
  RaftBatch = 3,
  /** raft channel: one piece of a MsgSnap (see encodeSnapChunkHeader). */
  SnapChunk = 4,
  /** Either direction, just before closing: JSON {code, message} saying why. */
  Close = 5,
  /**
   * raft channel, receiver to sender: uvarint count of bytes received on this connection so far.
   * Lets the sender notice a stream that stopped moving (peer frozen, packets dropped) long
   * before TCP gives up, and dial again.
   */
  Ack = 6,
}

/** u32 length + u8 kind. */
export const FRAME_HEADER_BYTES = 5;

const FLAG_REJECT = 1;
const FLAG_SNAPSHOT = 2;
const FLAG_CONTEXT = 4;
const KNOWN_FLAGS = FLAG_REJECT | FLAG_SNAPSHOT | FLAG_CONTEXT;
const MAX_TYPE: number = MessageType.PreVoteResp;
/** Fewest bytes a message can take: type, 7 varints, flags, entry count. */
const MIN_MESSAGE_BYTES = 10;
/** Fewest bytes an entry can take: term, index, type, length. */
const MIN_ENTRY_BYTES = 4;

function wireError(detail: string): MeshError {
  return new MeshError('EWIRE', `decode raft frame: ${detail}`);
}

// ---- varints ----

/** Bytes of `n` as uvarint; also the one place that checks encoder input. */
function uvSize(n: number): number {
  if (n < 0x80 && n >= 0) {
    if (Number.isInteger(n)) return 1;
  } else if (n >= 0 && n <= Number.MAX_SAFE_INTEGER && Number.isInteger(n)) {
    if (n < 0x4000) return 2;
    if (n < 0x200000) return 3;
    if (n < 0x10000000) return 4;
    if (n < 0x800000000) return 5;
    if (n < 0x40000000000) return 6;
    if (n < 0x2000000000000) return 7;
    return 8;
  }
  // A negative, fractional or unsafe index/term/id is a bug in the caller, not a wire problem.
  invariant(false, `raft codec: ${n} is not a non-negative safe integer`);
}

function putUv(b: Uint8Array, o: number, n: number): number {
  if (n < 0x80000000) {
    while (n >= 0x80) {
      b[o++] = (n & 0x7f) | 0x80;
      n >>>= 7;
    }
  } else {
    while (n >= 0x80) {
      b[o++] = (n % 0x80) | 0x80;
      n = Math.floor(n / 0x80);
    }
  }
  b[o++] = n;
  return o;
}

/** Bounds-checked reader over one buffer. */
class Reader {
  pos: number;
  private own: Uint8Array | undefined;
  constructor(
    readonly b: Uint8Array,
    pos: number,
    readonly end: number,
  ) {
    this.pos = pos;
  }

  left(): number {
    return this.end - this.pos;
  }

  u8(what: string): number {
    if (this.pos >= this.end) throw wireError(`truncated at ${what}`);
    return this.b[this.pos++]!;
  }

  uv(what: string): number {
    const b = this.b;
    let p = this.pos;
    if (p >= this.end) throw wireError(`truncated at ${what}`);
    let x = b[p++]!;
    if (x < 0x80) {
      this.pos = p;
      return x;
    }
    let n = x & 0x7f;
    let mul = 0x80;
    for (let i = 1; ; i++) {
      if (p >= this.end) throw wireError(`truncated at ${what}`);
      if (i === 8) throw wireError(`${what}: varint longer than 8 bytes`);
      x = b[p++]!;
      n += (x & 0x7f) * mul;
      if (x < 0x80) {
        if (x === 0) throw wireError(`${what}: varint not in shortest form`);
        break;
      }
      mul *= 0x80;
    }
    if (n > Number.MAX_SAFE_INTEGER) throw wireError(`${what}: ${n} exceeds 2^53-1`);
    this.pos = p;
    return n;
  }

  /** A count whose items take at least `minBytes` each. */
  count(what: string, minBytes: number): number {
    const n = this.uv(what);
    if (n * minBytes > this.left()) throw wireError(`${what} ${n} exceeds the bytes left`);
    return n;
  }

  bytes(what: string): Uint8Array {
    const n = this.uv(`${what} length`);
    if (n > this.left()) throw wireError(`${what} length ${n} exceeds the bytes left`);
    // One private copy of the input, made at the first byte field, and views into it: a small
    // typed array costs far more to allocate than to copy, and the entries of one batch are
    // consecutive log entries that the log keeps and drops together.
    if (this.own === undefined) {
      this.own = new Uint8Array(this.end);
      this.own.set(this.b.subarray(0, this.end));
    }
    const out = this.own.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  ids(what: string): number[] {
    const n = this.count(what, 1);
    const out = new Array<number>(n);
    for (let i = 0; i < n; i++) out[i] = this.uv(what);
    return out;
  }
}

// ---- batches ----

function idsSize(ids: number[]): number {
  let s = uvSize(ids.length);
  for (const id of ids) s += uvSize(id);
  return s;
}

function snapshotSize(s: Snapshot, withData: boolean): number {
  const cs = s.metadata.confState;
  const dl = withData ? s.data.length : 0;
  return (
    uvSize(s.metadata.index) +
    uvSize(s.metadata.term) +
    idsSize(cs.voters) +
    idsSize(cs.learners) +
    idsSize(cs.removed) +
    uvSize(dl) +
    dl
  );
}

function messageSize(m: Message, snapData: boolean): number {
  const type: number = m.type;
  invariant(type >= 0 && type <= MAX_TYPE, `raft codec: message type ${type}`);
  let s =
    2 +
    uvSize(m.from) +
    uvSize(m.to) +
    uvSize(m.term) +
    uvSize(m.logTerm) +
    uvSize(m.index) +
    uvSize(m.commit) +
    uvSize(m.rejectHint) +
    uvSize(m.entries.length);
  for (const e of m.entries) {
    s += uvSize(e.term) + uvSize(e.index) + 1 + uvSize(e.data.length) + e.data.length;
  }
  if (m.snapshot !== undefined) s += snapshotSize(m.snapshot, snapData);
  if (m.context !== undefined) s += uvSize(m.context.length) + m.context.length;
  return s;
}

/** Bytes one message adds to a batch. Throws (a bug) on a field that is not a safe uint. */
export function messageBytes(m: Message): number {
  return messageSize(m, true);
}

/** Bytes of a batch's version and count, before its messages. */
export function batchHeaderBytes(count: number): number {
  return 1 + uvSize(count);
}

/** Exact size of `encodeBatchInto(msgs, …)`. Throws (a bug) on a field that is not a safe uint. */
export function batchSize(msgs: readonly Message[]): number {
  let s = batchHeaderBytes(msgs.length);
  for (const m of msgs) s += messageSize(m, true);
  return s;
}

function putIds(b: Uint8Array, o: number, ids: number[]): number {
  o = putUv(b, o, ids.length);
  for (const id of ids) o = putUv(b, o, id);
  return o;
}

function putMessage(b: Uint8Array, o: number, m: Message, snapData: boolean): number {
  b[o++] = m.type;
  o = putUv(b, o, m.from);
  o = putUv(b, o, m.to);
  o = putUv(b, o, m.term);
  o = putUv(b, o, m.logTerm);
  o = putUv(b, o, m.index);
  o = putUv(b, o, m.commit);
  o = putUv(b, o, m.rejectHint);
  b[o++] =
    (m.reject ? FLAG_REJECT : 0) |
    (m.snapshot !== undefined ? FLAG_SNAPSHOT : 0) |
    (m.context !== undefined ? FLAG_CONTEXT : 0);
  o = putUv(b, o, m.entries.length);
  for (const e of m.entries) {
    o = putUv(b, o, e.term);
    o = putUv(b, o, e.index);
    b[o++] = e.type;
    o = putUv(b, o, e.data.length);
    b.set(e.data, o);
    o += e.data.length;
  }
  const s = m.snapshot;
  if (s !== undefined) {
    o = putUv(b, o, s.metadata.index);
    o = putUv(b, o, s.metadata.term);
    o = putIds(b, o, s.metadata.confState.voters);
    o = putIds(b, o, s.metadata.confState.learners);
    o = putIds(b, o, s.metadata.confState.removed);
    if (snapData) {
      o = putUv(b, o, s.data.length);
      b.set(s.data, o);
      o += s.data.length;
    } else {
      b[o++] = 0;
    }
  }
  if (m.context !== undefined) {
    o = putUv(b, o, m.context.length);
    b.set(m.context, o);
    o += m.context.length;
  }
  return o;
}

/**
 * Encode `msgs[start, end)` at `b[o…]`, which must have `batchSize` of them bytes free; returns
 * the end offset. Lets the transport write the frame header and the batch into one buffer.
 */
export function encodeBatchInto(
  msgs: readonly Message[],
  b: Uint8Array,
  o: number,
  start = 0,
  end = msgs.length,
): number {
  b[o++] = CODEC_VERSION;
  o = putUv(b, o, end - start);
  for (let i = start; i < end; i++) o = putMessage(b, o, msgs[i]!, true);
  return o;
}

export function encodeBatch(msgs: readonly Message[]): Uint8Array {
  const b = new Uint8Array(batchSize(msgs));
  encodeBatchInto(msgs, b, 0);
  return b;
}

function readEntry(r: Reader): Entry {
  const term = r.uv('entry term');
  const index = r.uv('entry index');
  const type = r.u8('entry type');
  if (type !== (EntryType.Normal as number) && type !== (EntryType.ConfChange as number)) {
    throw wireError(`unknown entry type ${type}`);
  }
  return { term, index, type, data: r.bytes('entry data') };
}

function readSnapshot(r: Reader): Snapshot {
  const index = r.uv('snapshot index');
  const term = r.uv('snapshot term');
  const confState: ConfState = {
    voters: r.ids('voters'),
    learners: r.ids('learners'),
    removed: r.ids('removed'),
  };
  return { metadata: { index, term, confState }, data: r.bytes('snapshot data') };
}

function readMessage(r: Reader): Message {
  const type = r.u8('message type');
  if (type > MAX_TYPE) throw wireError(`unknown message type ${type}`);
  const from = r.uv('from');
  const to = r.uv('to');
  const term = r.uv('term');
  const logTerm = r.uv('logTerm');
  const index = r.uv('index');
  const commit = r.uv('commit');
  const rejectHint = r.uv('rejectHint');
  const flags = r.u8('flags');
  if ((flags & ~KNOWN_FLAGS) !== 0) throw wireError(`unknown flags 0x${flags.toString(16)}`);
  const n = r.count('entry count', MIN_ENTRY_BYTES);
  const entries = new Array<Entry>(n);
  for (let i = 0; i < n; i++) entries[i] = readEntry(r);
  const m: Message = {
    type,
    from,
    to,
    term,
    logTerm,
    index,
    entries,
    commit,
    reject: (flags & FLAG_REJECT) !== 0,
    rejectHint,
  };
  if ((flags & FLAG_SNAPSHOT) !== 0) m.snapshot = readSnapshot(r);
  if ((flags & FLAG_CONTEXT) !== 0) m.context = r.bytes('context');
  return m;
}

/** Decode one batch occupying all of `b` (trailing bytes are an error). */
export function decodeBatch(b: Uint8Array): Message[] {
  const r = new Reader(b, 0, b.length);
  const v = r.u8('version');
  if (v !== CODEC_VERSION)
    throw wireError(`batch version ${v}, this build speaks ${CODEC_VERSION}`);
  const n = r.count('message count', MIN_MESSAGE_BYTES);
  const out = new Array<Message>(n);
  for (let i = 0; i < n; i++) out[i] = readMessage(r);
  if (r.left() !== 0) throw wireError(`${r.left()} trailing bytes after ${n} messages`);
  return out;
}

// ---- snapshot chunks ----

/**
 * A MsgSnap travels as SnapChunk frames so that a large snapshot neither needs one huge frame nor
 * blocks the stream: chunks interleave with ordinary batches and the receiver reassembles them.
 * Payload: u8 version | uvarint seq | uvarint total | uvarint offset | uvarint meta length |
 * meta | data. `meta` (first chunk only, offset 0) is the MsgSnap itself, encoded as a one-message
 * batch with empty snapshot data; `total` is the snapshot data length; `seq` tells one transfer
 * from the next on the same connection.
 */
export interface SnapChunk {
  seq: number;
  total: number;
  offset: number;
  /** Present on the first chunk only. */
  msg?: Message;
  /** View into the decoded payload (the receiver copies it into the reassembled snapshot). */
  data: Uint8Array;
}

/** Chunk payload minus its data, ready to follow a frame header. `msg` only for offset 0. */
export function encodeSnapChunkHeader(
  seq: number,
  total: number,
  offset: number,
  msg: Message | undefined,
): Uint8Array {
  const metaLen = msg === undefined ? 0 : 1 + uvSize(1) + messageSize(msg, false);
  const b = new Uint8Array(
    1 + uvSize(seq) + uvSize(total) + uvSize(offset) + uvSize(metaLen) + metaLen,
  );
  b[0] = CODEC_VERSION;
  let o = putUv(b, 1, seq);
  o = putUv(b, o, total);
  o = putUv(b, o, offset);
  o = putUv(b, o, metaLen);
  if (msg !== undefined) {
    b[o++] = CODEC_VERSION;
    o = putUv(b, o, 1);
    putMessage(b, o, msg, false);
  }
  return b;
}

export function decodeSnapChunk(b: Uint8Array): SnapChunk {
  const r = new Reader(b, 0, b.length);
  const v = r.u8('chunk version');
  if (v !== CODEC_VERSION)
    throw wireError(`chunk version ${v}, this build speaks ${CODEC_VERSION}`);
  const seq = r.uv('chunk seq');
  const total = r.uv('chunk total');
  const offset = r.uv('chunk offset');
  const metaLen = r.uv('chunk meta length');
  if (metaLen > r.left()) throw wireError(`chunk meta length ${metaLen} exceeds the bytes left`);
  const c: SnapChunk = { seq, total, offset, data: b.subarray(r.pos + metaLen) };
  if (offset === 0) {
    if (metaLen === 0) throw wireError('first snapshot chunk without its message');
    const msgs = decodeBatch(b.subarray(r.pos, r.pos + metaLen));
    const m = msgs[0];
    if (msgs.length !== 1 || m === undefined || m.type !== MessageType.Snap || !m.snapshot) {
      throw wireError('first snapshot chunk does not carry exactly one MsgSnap');
    }
    c.msg = m;
  } else if (metaLen !== 0) {
    throw wireError('snapshot chunk past offset 0 carries a message');
  }
  if (offset > total || c.data.length > total - offset) {
    throw wireError(`snapshot chunk ${offset}+${c.data.length} beyond total ${total}`);
  }
  return c;
}

// ---- frames ----

/** Write a frame header for a payload of `payloadLen` bytes at `b[o…o+5)`. */
export function putFrameHeader(
  b: Uint8Array,
  o: number,
  kind: FrameKind,
  payloadLen: number,
): void {
  const len = payloadLen + 1;
  b[o] = (len / 0x1000000) & 0xff;
  b[o + 1] = (len >>> 16) & 0xff;
  b[o + 2] = (len >>> 8) & 0xff;
  b[o + 3] = len & 0xff;
  b[o + 4] = kind;
}

export function encodeFrame(kind: FrameKind, payload: Uint8Array): Uint8Array {
  const b = new Uint8Array(FRAME_HEADER_BYTES + payload.length);
  putFrameHeader(b, 0, kind, payload.length);
  b.set(payload, FRAME_HEADER_BYTES);
  return b;
}

export function encodeAckFrame(received: number): Uint8Array {
  const b = new Uint8Array(FRAME_HEADER_BYTES + uvSize(received));
  putFrameHeader(b, 0, FrameKind.Ack, b.length - FRAME_HEADER_BYTES);
  putUv(b, FRAME_HEADER_BYTES, received);
  return b;
}

export function decodeAck(payload: Uint8Array): number {
  const r = new Reader(payload, 0, payload.length);
  const n = r.uv('ack');
  if (r.left() !== 0) throw wireError('trailing bytes after ack');
  return n;
}

export interface Frame {
  /** Any byte: receivers refuse kinds they do not expect. */
  kind: FrameKind;
  /** A view into the received bytes when they arrived in one piece, else a fresh copy. */
  payload: Uint8Array;
}

/**
 * Incremental frame splitter for a byte stream. Buffers at most what was pushed; a length above
 * `maxFrameBytes` (counting kind and payload) or of zero throws EWIRE before anything is
 * allocated for it, so the caller can close the connection.
 */
export class FrameDecoder {
  private chunks: Uint8Array[] = [];
  private head = 0;
  private buffered = 0;

  constructor(public maxFrameBytes: number) {}

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /** Bytes received but not yet returned as frames. */
  get pending(): number {
    return this.buffered;
  }

  private byteAt(i: number): number {
    let off = this.head + i;
    for (const c of this.chunks) {
      if (off < c.length) return c[off]!;
      off -= c.length;
    }
    return 0;
  }

  /** The next complete frame, or undefined until more bytes arrive. */
  next(): Frame | undefined {
    if (this.buffered < 4) return undefined;
    const len =
      this.byteAt(0) * 0x1000000 +
      ((this.byteAt(1) << 16) | (this.byteAt(2) << 8) | this.byteAt(3));
    if (len === 0) throw wireError('empty frame');
    if (len > this.maxFrameBytes) {
      throw wireError(`frame of ${len} bytes exceeds the limit of ${this.maxFrameBytes}`);
    }
    if (this.buffered < 4 + len) return undefined;
    const first = this.chunks[0]!;
    let whole: Uint8Array;
    if (first.length - this.head >= 4 + len) {
      whole = first.subarray(this.head + 4, this.head + 4 + len);
      this.head += 4 + len;
      if (this.head === first.length) {
        this.chunks.shift();
        this.head = 0;
      }
    } else {
      whole = new Uint8Array(len);
      let skip = 4;
      let filled = 0;
      while (filled < len) {
        const c = this.chunks[0]!;
        const avail = c.length - this.head;
        if (skip >= avail) {
          skip -= avail;
          this.chunks.shift();
          this.head = 0;
          continue;
        }
        this.head += skip;
        skip = 0;
        const take = Math.min(c.length - this.head, len - filled);
        whole.set(c.subarray(this.head, this.head + take), filled);
        filled += take;
        this.head += take;
        if (this.head === c.length) {
          this.chunks.shift();
          this.head = 0;
        }
      }
    }
    this.buffered -= 4 + len;
    return { kind: whole[0]! as FrameKind, payload: whole.subarray(1) };
  }
}
