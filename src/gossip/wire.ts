/**
 * memberlist message types and their bodies, wire-compatible with hashicorp/memberlist
 * (net.go: the message structs; serf 0.9.4 = memberlist 0.2.2 and memberlist HEAD).
 *
 * A packet message is one type byte followed by the msgpack body; stream messages (push/pull,
 * user) carry further raw bytes after it. Framing layers (compound, compress, CRC, encryption,
 * label) live in their own modules. Pure: may import ./msgpack.js and util/errors only.
 */

import {
  copyBytes,
  MsgpackReader,
  MsgpackWriter,
  StructCodec,
  WireError,
  type EncodeOptions,
} from './msgpack.js';

/**
 * memberlist's messageType numbers.
 *
 * WARNING: these numbers are on the wire and shared with every memberlist/serf peer. Never
 * renumber; only append, and only together with memberlist.
 */
export const MessageType = {
  ping: 0,
  indirectPing: 1,
  ackResp: 2,
  suspect: 3,
  alive: 4,
  dead: 5,
  pushPull: 6,
  compound: 7,
  user: 8,
  compress: 9,
  encrypt: 10,
  nackResp: 11,
  hasCrc: 12,
  err: 13,
  /** Deliberately far from 0/1 (encryption versions) and the other types; memberlist >= 0.3. */
  hasLabel: 244,
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

const typeNames = new Map<number, string>(Object.entries(MessageType).map(([k, v]) => [v, k]));

/** `ping(0)`, or `unknown(99)` for a number memberlist does not define. */
export function messageTypeName(t: number): string {
  return `${typeNames.get(t) ?? 'unknown'}(${t})`;
}

/** memberlist's compressionType. WARNING: on the wire. */
export const CompressionAlgo = { lzw: 0 } as const;

/** memberlist's NodeStateType as carried in pushNodeState.State. WARNING: on the wire. */
export const NodeState = { alive: 0, suspect: 1, dead: 2, left: 3 } as const;
export type NodeState = (typeof NodeState)[keyof typeof NodeState];

/** net.go limits. */
export const MetaMaxSize = 512;
export const compoundHeaderOverhead = 2;
export const compoundOverhead = 2;
export const userMsgOverhead = 1;
export const maxPushStateBytes = 20 * 1024 * 1024;
export const maxPushStateNodes = 1024 * 1024;
export const maxUserMsgBytes = 20 * 1024 * 1024;
export const maxDecompressedBytes = 2 * maxPushStateBytes;

/** memberlist's protocol range (net.go ProtocolVersionMin/Max). */
export const ProtocolVersionMin = 1;
export const ProtocolVersionMax = 5;

/**
 * The six version bytes we advertise: pmin, pmax, pcur, dmin, dmax, dcur. Serf 0.9.4 accepts
 * delegate versions 2..5 (it sends [1,5,2,2,5,5]); a delegate version of 0 is refused at join
 * and, if spread by UDP gossip, breaks push/pull for the whole serf cluster.
 */
export const OUR_VSN: readonly number[] = Object.freeze([1, 5, 2, 2, 5, 4]);

/**
 * Why a version array must not be sent, or null if it is fine: memberlist 0.2.2 indexes six
 * entries without checking (a short array crashes it) and serf refuses delegate version 0.
 */
export function vsnProblem(vsn: Uint8Array): string | null {
  if (vsn.length !== 6) return `has ${vsn.length} entries, memberlist needs exactly 6`;
  const [pmin, pmax, pcur, dmin, dmax, dcur] = vsn as unknown as number[];
  if (!pmin || !pmax || !pcur) return 'has a protocol version 0';
  if (!dmin || !dmax || !dcur) return 'has a delegate version 0 (serf refuses it)';
  if (pmin > pcur || pcur > pmax)
    return `protocol versions out of order (${pmin} <= ${pcur} <= ${pmax})`;
  if (dmin > dcur || dcur > dmax)
    return `delegate versions out of order (${dmin} <= ${dcur} <= ${dmax})`;
  return null;
}

export interface Ping {
  seqNo: number;
  /** Intended recipient's name, so a restarted agent with a new name does not answer. */
  node: string;
  sourceAddr: Uint8Array;
  sourcePort: number;
  sourceNode: string;
}

export interface IndirectPing {
  seqNo: number;
  target: Uint8Array;
  port: number;
  node: string;
  /** Ask for a nack if the target does not answer (protocol >= 4). */
  nack: boolean;
  sourceAddr: Uint8Array;
  sourcePort: number;
  sourceNode: string;
}

export interface AckResp {
  seqNo: number;
  payload: Uint8Array;
}

export interface NackResp {
  seqNo: number;
}

export interface ErrResp {
  error: string;
}

export interface Suspect {
  incarnation: number;
  node: string;
  from: string;
}

export interface Alive {
  incarnation: number;
  node: string;
  addr: Uint8Array;
  port: number;
  meta: Uint8Array;
  /** pmin, pmax, pcur, dmin, dmax, dcur; see {@link OUR_VSN}. */
  vsn: Uint8Array;
}

export interface Dead {
  incarnation: number;
  node: string;
  from: string;
}

export interface PushPullHeader {
  nodes: number;
  userStateLen: number;
  join: boolean;
}

export interface PushNodeState {
  name: string;
  addr: Uint8Array;
  port: number;
  meta: Uint8Array;
  incarnation: number;
  state: number;
  vsn: Uint8Array;
}

export interface UserMsgHeader {
  userMsgLen: number;
}

export interface Compress {
  algo: number;
  buf: Uint8Array;
}

/** One codec per memberlist struct, fields as declared in net.go. */
export const codecs = {
  ping: new StructCodec<Ping>('ping', [
    { go: 'SeqNo', ts: 'seqNo', kind: 'uint32' },
    { go: 'Node', ts: 'node', kind: 'string' },
    { go: 'SourceAddr', ts: 'sourceAddr', kind: 'bytes', omitempty: true },
    { go: 'SourcePort', ts: 'sourcePort', kind: 'uint16', omitempty: true },
    { go: 'SourceNode', ts: 'sourceNode', kind: 'string', omitempty: true },
  ]),
  indirectPing: new StructCodec<IndirectPing>('indirectPingReq', [
    { go: 'SeqNo', ts: 'seqNo', kind: 'uint32' },
    { go: 'Target', ts: 'target', kind: 'bytes' },
    { go: 'Port', ts: 'port', kind: 'uint16' },
    { go: 'Node', ts: 'node', kind: 'string' },
    { go: 'Nack', ts: 'nack', kind: 'bool' },
    { go: 'SourceAddr', ts: 'sourceAddr', kind: 'bytes', omitempty: true },
    { go: 'SourcePort', ts: 'sourcePort', kind: 'uint16', omitempty: true },
    { go: 'SourceNode', ts: 'sourceNode', kind: 'string', omitempty: true },
  ]),
  ackResp: new StructCodec<AckResp>('ackResp', [
    { go: 'SeqNo', ts: 'seqNo', kind: 'uint32' },
    { go: 'Payload', ts: 'payload', kind: 'bytes' },
  ]),
  nackResp: new StructCodec<NackResp>('nackResp', [{ go: 'SeqNo', ts: 'seqNo', kind: 'uint32' }]),
  errResp: new StructCodec<ErrResp>('errResp', [{ go: 'Error', ts: 'error', kind: 'string' }]),
  suspect: new StructCodec<Suspect>('suspect', [
    { go: 'Incarnation', ts: 'incarnation', kind: 'uint32' },
    { go: 'Node', ts: 'node', kind: 'string' },
    { go: 'From', ts: 'from', kind: 'string' },
  ]),
  alive: new StructCodec<Alive>('alive', [
    { go: 'Incarnation', ts: 'incarnation', kind: 'uint32' },
    { go: 'Node', ts: 'node', kind: 'string' },
    { go: 'Addr', ts: 'addr', kind: 'bytes' },
    { go: 'Port', ts: 'port', kind: 'uint16' },
    { go: 'Meta', ts: 'meta', kind: 'bytes' },
    { go: 'Vsn', ts: 'vsn', kind: 'bytes' },
  ]),
  dead: new StructCodec<Dead>('dead', [
    { go: 'Incarnation', ts: 'incarnation', kind: 'uint32' },
    { go: 'Node', ts: 'node', kind: 'string' },
    { go: 'From', ts: 'from', kind: 'string' },
  ]),
  pushPullHeader: new StructCodec<PushPullHeader>('pushPullHeader', [
    { go: 'Nodes', ts: 'nodes', kind: 'int' },
    { go: 'UserStateLen', ts: 'userStateLen', kind: 'int' },
    { go: 'Join', ts: 'join', kind: 'bool' },
  ]),
  pushNodeState: new StructCodec<PushNodeState>('pushNodeState', [
    { go: 'Name', ts: 'name', kind: 'string' },
    { go: 'Addr', ts: 'addr', kind: 'bytes' },
    { go: 'Port', ts: 'port', kind: 'uint16' },
    { go: 'Meta', ts: 'meta', kind: 'bytes' },
    { go: 'Incarnation', ts: 'incarnation', kind: 'uint32' },
    { go: 'State', ts: 'state', kind: 'int' },
    { go: 'Vsn', ts: 'vsn', kind: 'bytes' },
  ]),
  userMsgHeader: new StructCodec<UserMsgHeader>('userMsgHeader', [
    { go: 'UserMsgLen', ts: 'userMsgLen', kind: 'int' },
  ]),
  compress: new StructCodec<Compress>('compress', [
    { go: 'Algo', ts: 'algo', kind: 'uint8' },
    { go: 'Buf', ts: 'buf', kind: 'bytes' },
  ]),
} as const;

function checkVsn(what: string, vsn: Uint8Array): void {
  const p = vsnProblem(vsn);
  if (p !== null) throw new WireError(`encode ${what}: version array [${vsn.join(',')}] ${p}`);
}

function checkMeta(what: string, meta: Uint8Array): void {
  if (meta.length > MetaMaxSize) {
    throw new WireError(
      `encode ${what}: meta is ${meta.length} bytes, memberlist allows ${MetaMaxSize}`,
    );
  }
}

export const encodePing = (b: Ping, o?: EncodeOptions): Uint8Array => codecs.ping.encode(b, o);
export const decodePing = (buf: Uint8Array): Ping => codecs.ping.decode(buf);
export const encodeIndirectPing = (b: IndirectPing, o?: EncodeOptions): Uint8Array =>
  codecs.indirectPing.encode(b, o);
export const decodeIndirectPing = (buf: Uint8Array): IndirectPing =>
  codecs.indirectPing.decode(buf);
export const encodeAckResp = (b: AckResp, o?: EncodeOptions): Uint8Array =>
  codecs.ackResp.encode(b, o);
export const decodeAckResp = (buf: Uint8Array): AckResp => codecs.ackResp.decode(buf);
export const encodeNackResp = (b: NackResp, o?: EncodeOptions): Uint8Array =>
  codecs.nackResp.encode(b, o);
export const decodeNackResp = (buf: Uint8Array): NackResp => codecs.nackResp.decode(buf);
export const encodeErrResp = (b: ErrResp, o?: EncodeOptions): Uint8Array =>
  codecs.errResp.encode(b, o);
export const decodeErrResp = (buf: Uint8Array): ErrResp => codecs.errResp.decode(buf);
export const encodeSuspect = (b: Suspect, o?: EncodeOptions): Uint8Array =>
  codecs.suspect.encode(b, o);
export const decodeSuspect = (buf: Uint8Array): Suspect => codecs.suspect.decode(buf);
export const encodeDead = (b: Dead, o?: EncodeOptions): Uint8Array => codecs.dead.encode(b, o);
export const decodeDead = (buf: Uint8Array): Dead => codecs.dead.decode(buf);
export const decodeAlive = (buf: Uint8Array): Alive => codecs.alive.decode(buf);
export const encodePushPullHeader = (b: PushPullHeader, o?: EncodeOptions): Uint8Array =>
  codecs.pushPullHeader.encode(b, o);
export const decodePushPullHeader = (buf: Uint8Array): PushPullHeader =>
  codecs.pushPullHeader.decode(buf);
export const decodePushNodeState = (buf: Uint8Array): PushNodeState =>
  codecs.pushNodeState.decode(buf);
export const encodeUserMsgHeader = (b: UserMsgHeader, o?: EncodeOptions): Uint8Array =>
  codecs.userMsgHeader.encode(b, o);
export const decodeUserMsgHeader = (buf: Uint8Array): UserMsgHeader =>
  codecs.userMsgHeader.decode(buf);
export const encodeCompress = (b: Compress, o?: EncodeOptions): Uint8Array =>
  codecs.compress.encode(b, o);
export const decodeCompress = (buf: Uint8Array): Compress => codecs.compress.decode(buf);

/** Refuses a version array memberlist 0.2.2 or serf would choke on, and oversized meta. */
export function encodeAlive(b: Alive, o?: EncodeOptions): Uint8Array {
  checkVsn('alive', b.vsn);
  checkMeta('alive', b.meta);
  return codecs.alive.encode(b, o);
}

/** Same refusals as {@link encodeAlive}: a relayed node state is gossiped on like an alive. */
export function encodePushNodeState(b: PushNodeState, o?: EncodeOptions): Uint8Array {
  checkVsn(`pushNodeState ${b.name}`, b.vsn);
  checkMeta('pushNodeState', b.meta);
  return codecs.pushNodeState.encode(b, o);
}

/** A message that can travel inside a packet (alone, in a compound or compressed). */
export type PacketMessage =
  | { type: typeof MessageType.ping; body: Ping }
  | { type: typeof MessageType.indirectPing; body: IndirectPing }
  | { type: typeof MessageType.ackResp; body: AckResp }
  | { type: typeof MessageType.nackResp; body: NackResp }
  | { type: typeof MessageType.suspect; body: Suspect }
  | { type: typeof MessageType.alive; body: Alive }
  | { type: typeof MessageType.dead; body: Dead }
  | { type: typeof MessageType.err; body: ErrResp }
  /** Over UDP a user message is the type byte and the delegate's raw bytes, no header. */
  | { type: typeof MessageType.user; body: Uint8Array };

function prefixed(type: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(body.length + 1);
  out[0] = type;
  out.set(body, 1);
  return out;
}

/** Type byte plus body, as memberlist's `encode(msgType, msg)`. */
export function encodeMessage(m: PacketMessage, o?: EncodeOptions): Uint8Array {
  switch (m.type) {
    case MessageType.ping:
      return prefixed(m.type, encodePing(m.body, o));
    case MessageType.indirectPing:
      return prefixed(m.type, encodeIndirectPing(m.body, o));
    case MessageType.ackResp:
      return prefixed(m.type, encodeAckResp(m.body, o));
    case MessageType.nackResp:
      return prefixed(m.type, encodeNackResp(m.body, o));
    case MessageType.suspect:
      return prefixed(m.type, encodeSuspect(m.body, o));
    case MessageType.alive:
      return prefixed(m.type, encodeAlive(m.body, o));
    case MessageType.dead:
      return prefixed(m.type, encodeDead(m.body, o));
    case MessageType.err:
      return prefixed(m.type, encodeErrResp(m.body, o));
    case MessageType.user:
      return prefixed(m.type, m.body);
  }
}

/**
 * Decodes one leaf message (type byte + body). Framing types (compound, compress, encrypt,
 * hasCrc, hasLabel) and stream-only types (pushPull) are refused: unwrap those first.
 */
export function decodeMessage(buf: Uint8Array): PacketMessage {
  if (buf.length < 1) throw new WireError('decode message: missing message type byte');
  const type = buf[0] as number;
  const body = buf.subarray(1);
  switch (type) {
    case MessageType.ping:
      return { type, body: decodePing(body) };
    case MessageType.indirectPing:
      return { type, body: decodeIndirectPing(body) };
    case MessageType.ackResp:
      return { type, body: decodeAckResp(body) };
    case MessageType.nackResp:
      return { type, body: decodeNackResp(body) };
    case MessageType.suspect:
      return { type, body: decodeSuspect(body) };
    case MessageType.alive:
      return { type, body: decodeAlive(body) };
    case MessageType.dead:
      return { type, body: decodeDead(body) };
    case MessageType.err:
      return { type, body: decodeErrResp(body) };
    case MessageType.user:
      return { type, body: copyBytes(body) };
    default:
      throw new WireError(`decode message: ${messageTypeName(type)} is not a message body type`);
  }
}

/** A push/pull exchange as sent on a stream: header, node states, then raw user state. */
export interface PushPull {
  join: boolean;
  nodes: PushNodeState[];
  userState: Uint8Array;
}

/** `[pushPullMsg][header][state]…[user state]`, as memberlist's sendLocalState builds it. */
export function encodePushPull(p: PushPull, o?: EncodeOptions): Uint8Array {
  const w = new MsgpackWriter(256);
  w.byte(MessageType.pushPull);
  codecs.pushPullHeader.write(
    w,
    { nodes: p.nodes.length, userStateLen: p.userState.length, join: p.join },
    o,
  );
  for (const n of p.nodes) w.raw(encodePushNodeState(n, o));
  w.raw(p.userState);
  return w.finish();
}

/**
 * Decodes the body of a push/pull stream message (after the type byte). Limits as memberlist's
 * readRemoteState: node count 0..maxPushStateNodes, user state 0..maxPushStateBytes; the
 * count is also checked against the bytes present, so a lying header cannot allocate.
 * Throws a truncated {@link WireError} if `buf` ends early (a stream reader may wait for more).
 */
export function decodePushPullBody(buf: Uint8Array): { value: PushPull; consumed: number } {
  const r = new MsgpackReader(buf);
  const h = codecs.pushPullHeader.read(r);
  if (h.nodes < 0 || h.nodes > maxPushStateNodes) {
    throw new WireError(
      `decode pushPull: node count ${h.nodes} is outside 0..${maxPushStateNodes}`,
    );
  }
  if (h.userStateLen < 0 || h.userStateLen > maxPushStateBytes) {
    throw new WireError(
      `decode pushPull: user state length ${h.userStateLen} is outside 0..${maxPushStateBytes}`,
    );
  }
  const nodes: PushNodeState[] = [];
  for (let i = 0; i < h.nodes; i++) {
    if (r.remaining < 1) throw new WireError(`decode pushPull: input ends before node ${i}`, true);
    nodes.push(codecs.pushNodeState.read(r));
  }
  if (r.remaining < h.userStateLen) {
    throw new WireError(
      `decode pushPull: user state needs ${h.userStateLen} bytes, ${r.remaining} present`,
      true,
    );
  }
  const userState = copyBytes(buf, r.pos, r.pos + h.userStateLen);
  return { value: { join: h.join, nodes, userState }, consumed: r.pos + h.userStateLen };
}

/** `[userMsg][userMsgHeader][bytes]`: a user message sent over a stream (sendUserMsg). */
export function encodeStreamUserMsg(payload: Uint8Array, o?: EncodeOptions): Uint8Array {
  const w = new MsgpackWriter(payload.length + 16);
  w.byte(MessageType.user);
  codecs.userMsgHeader.write(w, { userMsgLen: payload.length }, o);
  w.raw(payload);
  return w.finish();
}

/** Body of a stream user message (after the type byte), limits as memberlist's readUserMsg. */
export function decodeStreamUserMsgBody(buf: Uint8Array): { value: Uint8Array; consumed: number } {
  const r = new MsgpackReader(buf);
  const h = codecs.userMsgHeader.read(r);
  if (h.userMsgLen < 0 || h.userMsgLen > maxUserMsgBytes) {
    throw new WireError(
      `decode user message: length ${h.userMsgLen} is outside 0..${maxUserMsgBytes}`,
    );
  }
  if (r.remaining < h.userMsgLen) {
    throw new WireError(
      `decode user message: needs ${h.userMsgLen} bytes, ${r.remaining} present`,
      true,
    );
  }
  return { value: copyBytes(buf, r.pos, r.pos + h.userMsgLen), consumed: r.pos + h.userMsgLen };
}
