/**
 * The netdb wire codec: the messages netdb cores exchange inside gossip user messages.
 *
 * Compact binary, little to parse and easy to bound: every message starts with a version byte
 * (WIRE_VERSION) and a kind byte; integers are unsigned LEB128 varints (at most 53 bits, so
 * they stay exact as JS numbers), strings and byte fields are a varint length then the bytes.
 * Decoding untrusted input never throws anything but a {@link WireError} (a MeshError, code
 * EWIRE): every length is checked against the bytes left and against a per-field cap before
 * anything is allocated, and counts are checked against the smallest encoding of an item, so a
 * hostile count cannot make us allocate more than the input's size.
 *
 * Kind numbers and field order are on the wire: never renumber, only add kinds (a decoder
 * refuses kinds and versions it does not know, and the core counts them as bad messages).
 * May import util/errors and gossip/msgpack (WireError) only.
 */

import { WireError } from '../gossip/msgpack.js';

export const WIRE_VERSION = 1;

/** Message kinds. On the wire: do not renumber. */
export const Kind = {
  /** Table events of one network, gossiped over UDP to a few peers of that network. */
  gossip: 1,
  /** All entries of one network, over the reliable path; `reply` marks the answer. */
  bulk: 2,
  /** Network join/leave events, gossiped cluster-wide. */
  netEvents: 3,
  /** Every network membership record we know (anti-entropy, reliable path); `reply` marks the answer. */
  netState: 4,
  /**
   * Count and hash of every entry the sender holds in one network, and its join time there
   * (UDP): a member whose table differs asks for a bulk sync.
   */
  digest: 5,
} as const;
export type Kind = (typeof Kind)[keyof typeof Kind];

/** Longest node name, network id or table name, bytes. */
export const MAX_NAME_BYTES = 256;
/** Longest entry key, bytes. */
export const MAX_KEY_BYTES = 1024;
/** Largest entry value, bytes (entries are small JSON documents: endpoints, peers). */
export const MAX_VALUE_BYTES = 16 * 1024;
/** Largest message accepted or produced, bytes (a bulk sync of a big network). */
export const MAX_MESSAGE_BYTES = 32 * 1024 * 1024;

/** One write to a table entry, as it travels. The network id is carried once per message. */
export interface TableEvent {
  table: string;
  key: string;
  /** The node that wrote it (only the owner writes an entry). */
  owner: string;
  /** The owner's table lamport time of the write. */
  ltime: number;
  /**
   * The lamport time of the owner's join of this network, so a receiver that has not heard
   * the join yet can accept the entry (and learn the membership), and one that holds a later
   * leave can drop it as stale.
   */
  joinLtime: number;
  deleting: boolean;
  /** For a delete: milliseconds left before the tombstone is reaped (so all nodes reap together). */
  reapMs: number;
  value: Uint8Array;
}

/** A node's join or leave of a network. */
export interface NetEvent {
  node: string;
  netId: string;
  /** The node's network lamport time of the change. */
  ltime: number;
  leaving: boolean;
  /** For a leave: milliseconds left before the record is forgotten. */
  reapMs: number;
}

export type Message =
  | { kind: typeof Kind.gossip; from: string; netId: string; events: TableEvent[] }
  | {
      kind: typeof Kind.bulk;
      from: string;
      netId: string;
      reply: boolean;
      /** The sender's table clock, witnessed by the receiver. */
      ltime: number;
      events: TableEvent[];
    }
  | { kind: typeof Kind.netEvents; from: string; events: NetEvent[] }
  | {
      kind: typeof Kind.netState;
      from: string;
      reply: boolean;
      /** The sender's network clock, witnessed by the receiver. */
      ltime: number;
      events: NetEvent[];
    }
  | {
      kind: typeof Kind.digest;
      from: string;
      netId: string;
      /** The sender's join lamport time of the network (it tells its membership). */
      joinLtime: number;
      /** Entries held, tombstones included. */
      count: number;
      /** Order-independent 32-bit hash of (table, key, owner, ltime, deleting) of each. */
      hash: number;
    };

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

/** Smallest encodings, used to bound counts before allocating. */
const MIN_TABLE_EVENT_BYTES = 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1;
const MIN_NET_EVENT_BYTES = 1 + 1 + 1 + 1 + 1;

class Writer {
  private buf = new Uint8Array(256);
  private n = 0;

  private ensure(extra: number): void {
    if (this.n + extra <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.n + extra) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.n));
    this.buf = next;
  }

  u8(b: number): void {
    this.ensure(1);
    this.buf[this.n++] = b & 0xff;
  }

  varint(v: number): void {
    if (!Number.isSafeInteger(v) || v < 0) {
      throw new WireError(`encode netdb message: ${v} is not a non-negative safe integer`);
    }
    this.ensure(8);
    while (v >= 0x80) {
      this.buf[this.n++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.n++] = v;
  }

  bytes(b: Uint8Array, max: number, what: string): void {
    if (b.length > max) {
      throw new WireError(`encode netdb message: ${what} is ${b.length} bytes, at most ${max}`);
    }
    this.varint(b.length);
    this.ensure(b.length);
    this.buf.set(b, this.n);
    this.n += b.length;
  }

  str(s: string, max: number, what: string): void {
    this.bytes(enc.encode(s), max, what);
  }

  finish(): Uint8Array {
    if (this.n > MAX_MESSAGE_BYTES) {
      throw new WireError(`encode netdb message: ${this.n} bytes, at most ${MAX_MESSAGE_BYTES}`);
    }
    return this.buf.slice(0, this.n);
  }
}

class Reader {
  private i = 0;
  constructor(private readonly b: Uint8Array) {}

  get left(): number {
    return this.b.length - this.i;
  }

  u8(what: string): number {
    if (this.i >= this.b.length) throw new WireError(`decode netdb ${what}: truncated`, true);
    return this.b[this.i++] as number;
  }

  varint(what: string): number {
    let v = 0;
    let mul = 1;
    for (let k = 0; k < 8; k++) {
      const c = this.u8(what);
      v += (c & 0x7f) * mul;
      if ((c & 0x80) === 0) {
        if (!Number.isSafeInteger(v)) throw new WireError(`decode netdb ${what}: varint too big`);
        if (k > 0 && c === 0) throw new WireError(`decode netdb ${what}: overlong varint`);
        return v;
      }
      mul *= 0x80;
    }
    throw new WireError(`decode netdb ${what}: varint longer than 8 bytes`);
  }

  bytes(max: number, what: string): Uint8Array {
    const n = this.varint(what);
    if (n > max) throw new WireError(`decode netdb ${what}: ${n} bytes, at most ${max}`);
    if (n > this.left) throw new WireError(`decode netdb ${what}: truncated`, true);
    // A copy: decoded values outlive the packet buffer (they go into the tables).
    const out = this.b.slice(this.i, this.i + n);
    this.i += n;
    return out;
  }

  str(max: number, what: string): string {
    const n = this.varint(what);
    if (n > max) throw new WireError(`decode netdb ${what}: ${n} bytes, at most ${max}`);
    if (n > this.left) throw new WireError(`decode netdb ${what}: truncated`, true);
    let s: string;
    try {
      s = dec.decode(this.b.subarray(this.i, this.i + n));
    } catch {
      throw new WireError(`decode netdb ${what}: not UTF-8`);
    }
    this.i += n;
    return s;
  }

  count(minItemBytes: number, what: string): number {
    const n = this.varint(what);
    if (n * minItemBytes > this.left) {
      throw new WireError(
        `decode netdb ${what}: ${n} items cannot fit in ${this.left} bytes`,
        true,
      );
    }
    return n;
  }

  end(): void {
    if (this.left !== 0) throw new WireError(`decode netdb message: ${this.left} trailing bytes`);
  }
}

function writeTableEvent(w: Writer, e: TableEvent): void {
  w.u8(e.deleting ? 1 : 0);
  w.varint(e.ltime);
  w.varint(e.joinLtime);
  w.varint(e.deleting ? e.reapMs : 0);
  w.str(e.owner, MAX_NAME_BYTES, 'owner');
  w.str(e.table, MAX_NAME_BYTES, 'table');
  w.str(e.key, MAX_KEY_BYTES, 'key');
  w.bytes(e.value, MAX_VALUE_BYTES, 'value');
}

function readTableEvent(r: Reader): TableEvent {
  const flags = r.u8('table event flags');
  if (flags > 1) throw new WireError(`decode netdb table event: unknown flags ${flags}`);
  const deleting = flags === 1;
  const ltime = r.varint('table event ltime');
  const joinLtime = r.varint('table event join ltime');
  const reapMs = r.varint('table event reap time');
  const owner = r.str(MAX_NAME_BYTES, 'table event owner');
  const table = r.str(MAX_NAME_BYTES, 'table event table');
  const key = r.str(MAX_KEY_BYTES, 'table event key');
  const value = r.bytes(MAX_VALUE_BYTES, 'table event value');
  return { table, key, owner, ltime, joinLtime, deleting, reapMs, value };
}

function writeNetEvent(w: Writer, e: NetEvent): void {
  w.u8(e.leaving ? 1 : 0);
  w.varint(e.ltime);
  w.varint(e.leaving ? e.reapMs : 0);
  w.str(e.node, MAX_NAME_BYTES, 'node');
  w.str(e.netId, MAX_NAME_BYTES, 'network id');
}

function readNetEvent(r: Reader): NetEvent {
  const flags = r.u8('network event flags');
  if (flags > 1) throw new WireError(`decode netdb network event: unknown flags ${flags}`);
  const ltime = r.varint('network event ltime');
  const reapMs = r.varint('network event reap time');
  const node = r.str(MAX_NAME_BYTES, 'network event node');
  const netId = r.str(MAX_NAME_BYTES, 'network event network id');
  return { node, netId, ltime, leaving: flags === 1, reapMs };
}

/** Encodes a table event alone; `encodeGossip` can splice such pieces without re-encoding. */
export function encodeTableEvent(e: TableEvent): Uint8Array {
  const w = new Writer();
  writeTableEvent(w, e);
  return w.finish();
}

/**
 * A gossip message from pre-encoded table events (see encodeTableEvent): the queue encodes
 * each event once and packs as many as fit.
 */
export function encodeGossipParts(from: string, netId: string, parts: Uint8Array[]): Uint8Array {
  const w = new Writer();
  w.u8(WIRE_VERSION);
  w.u8(Kind.gossip);
  w.str(from, MAX_NAME_BYTES, 'sender');
  w.str(netId, MAX_NAME_BYTES, 'network id');
  w.varint(parts.length);
  return concat(w.finish(), parts);
}

/** Encodes a network event alone, for {@link encodeNetEventParts}. */
export function encodeNetEvent(e: NetEvent): Uint8Array {
  const w = new Writer();
  writeNetEvent(w, e);
  return w.finish();
}

/** A netEvents message from pre-encoded network events (see encodeNetEvent). */
export function encodeNetEventParts(from: string, parts: Uint8Array[]): Uint8Array {
  const w = new Writer();
  w.u8(WIRE_VERSION);
  w.u8(Kind.netEvents);
  w.str(from, MAX_NAME_BYTES, 'sender');
  w.varint(parts.length);
  return concat(w.finish(), parts);
}

function concat(head: Uint8Array, parts: Uint8Array[]): Uint8Array {
  let n = head.length;
  for (const p of parts) n += p.length;
  if (n > MAX_MESSAGE_BYTES) {
    throw new WireError(`encode netdb message: ${n} bytes, at most ${MAX_MESSAGE_BYTES}`);
  }
  const out = new Uint8Array(n);
  out.set(head);
  let o = head.length;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Bytes of a gossip message header for this sender and network, with a count of `n` events. */
export function gossipHeaderSize(from: string, netId: string, n: number): number {
  return encodeGossipParts(from, netId, []).length - 1 + varintSize(n);
}

export function varintSize(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 0x80);
    n++;
  }
  return n;
}

export function encodeMessage(m: Message): Uint8Array {
  if (m.kind === Kind.gossip) {
    return encodeGossipParts(m.from, m.netId, m.events.map(encodeTableEvent));
  }
  const w = new Writer();
  w.u8(WIRE_VERSION);
  w.u8(m.kind);
  w.str(m.from, MAX_NAME_BYTES, 'sender');
  switch (m.kind) {
    case Kind.bulk:
      w.str(m.netId, MAX_NAME_BYTES, 'network id');
      w.u8(m.reply ? 1 : 0);
      w.varint(m.ltime);
      w.varint(m.events.length);
      for (const e of m.events) writeTableEvent(w, e);
      break;
    case Kind.netEvents:
      w.varint(m.events.length);
      for (const e of m.events) writeNetEvent(w, e);
      break;
    case Kind.netState:
      w.u8(m.reply ? 1 : 0);
      w.varint(m.ltime);
      w.varint(m.events.length);
      for (const e of m.events) writeNetEvent(w, e);
      break;
    case Kind.digest:
      w.str(m.netId, MAX_NAME_BYTES, 'network id');
      w.varint(m.joinLtime);
      w.varint(m.count);
      w.varint(m.hash);
      break;
  }
  return w.finish();
}

/** Decodes one message; throws only {@link WireError}. */
export function decodeMessage(b: Uint8Array): Message {
  if (b.length > MAX_MESSAGE_BYTES) {
    throw new WireError(`decode netdb message: ${b.length} bytes, at most ${MAX_MESSAGE_BYTES}`);
  }
  const r = new Reader(b);
  const v = r.u8('version');
  if (v !== WIRE_VERSION) {
    throw new WireError(`decode netdb message: version ${v}, this node speaks ${WIRE_VERSION}`);
  }
  const kind = r.u8('kind');
  const from = r.str(MAX_NAME_BYTES, 'sender');
  let m: Message;
  switch (kind) {
    case Kind.gossip: {
      const netId = r.str(MAX_NAME_BYTES, 'network id');
      const n = r.count(MIN_TABLE_EVENT_BYTES, 'event count');
      const events: TableEvent[] = [];
      for (let i = 0; i < n; i++) events.push(readTableEvent(r));
      m = { kind, from, netId, events };
      break;
    }
    case Kind.bulk: {
      const netId = r.str(MAX_NAME_BYTES, 'network id');
      const flags = r.u8('bulk flags');
      if (flags > 1) throw new WireError(`decode netdb bulk sync: unknown flags ${flags}`);
      const ltime = r.varint('bulk ltime');
      const n = r.count(MIN_TABLE_EVENT_BYTES, 'event count');
      const events: TableEvent[] = [];
      for (let i = 0; i < n; i++) events.push(readTableEvent(r));
      m = { kind, from, netId, reply: flags === 1, ltime, events };
      break;
    }
    case Kind.netEvents: {
      const n = r.count(MIN_NET_EVENT_BYTES, 'event count');
      const events: NetEvent[] = [];
      for (let i = 0; i < n; i++) events.push(readNetEvent(r));
      m = { kind, from, events };
      break;
    }
    case Kind.netState: {
      const flags = r.u8('state flags');
      if (flags > 1) throw new WireError(`decode netdb network state: unknown flags ${flags}`);
      const ltime = r.varint('state ltime');
      const n = r.count(MIN_NET_EVENT_BYTES, 'event count');
      const events: NetEvent[] = [];
      for (let i = 0; i < n; i++) events.push(readNetEvent(r));
      m = { kind, from, reply: flags === 1, ltime, events };
      break;
    }
    case Kind.digest: {
      const netId = r.str(MAX_NAME_BYTES, 'network id');
      const joinLtime = r.varint('digest join ltime');
      const count = r.varint('digest count');
      const hash = r.varint('digest hash');
      if (hash > 0xffffffff) throw new WireError(`decode netdb digest: hash ${hash} over 32 bits`);
      m = { kind, from, netId, joinLtime, count, hash };
      break;
    }
    default:
      throw new WireError(`decode netdb message: unknown kind ${kind}`);
  }
  r.end();
  return m;
}
