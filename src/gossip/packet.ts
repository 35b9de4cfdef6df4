/**
 * The layering of one UDP packet, in memberlist's order (net.go).
 *
 * Send (rawSendMsgPacket, then the transport): message or compound → LZW compress message
 * (only if smaller) → hasCrc header (if the peer's protocol max is >= 5) → encryption with the
 * primary key (label as additional data) → label header.
 * Receive (ingestPacket, handleCommand): label check → decrypt (any key) → CRC check → the
 * command tree, where compound parts and compressed payloads nest recursively.
 *
 * Also the stream (TCP) framing of rawSendMsgStream/readStream. Pure codec: no sockets, no
 * clock; randomness only through the Keyring. May import the other gossip wire modules.
 */

import { makeCompound, splitCompound } from './compound.js';
import { addCrc, stripCrc } from './crc32.js';
import { encryptedStreamLength, type EncryptionVersion } from './crypto.js';
import type { Keyring } from './keyring.js';
import { addLabel, checkLabel, type LabelPolicy } from './label.js';
import { lzwCompress, lzwDecompress } from './lzw.js';
import { WireError, type EncodeOptions } from './msgpack.js';
import {
  CompressionAlgo,
  MessageType,
  codecs,
  decodeMessage,
  maxDecompressedBytes,
  messageTypeName,
  type PacketMessage,
} from './wire.js';

/** `[9][compress{Algo: lzw, Buf}]` around `msg` (compressPayload). */
export function compressMessage(msg: Uint8Array, o?: EncodeOptions): Uint8Array {
  const body = codecs.compress.encode({ algo: CompressionAlgo.lzw, buf: lzwCompress(msg) }, o);
  const out = new Uint8Array(body.length + 1);
  out[0] = MessageType.compress;
  out.set(body, 1);
  return out;
}

/** Payload of a compress message body (after the type byte), capped at `maxOutput` bytes. */
export function decompressBody(body: Uint8Array, maxOutput = maxDecompressedBytes): Uint8Array {
  const c = codecs.compress.decode(body);
  if (c.algo !== CompressionAlgo.lzw) {
    throw new WireError(`decompress: cannot decompress unknown algorithm ${c.algo}`);
  }
  return lzwDecompress(c.buf, maxOutput);
}

export interface SealOptions {
  /** Compress with LZW, keeping the result only if smaller (EnableCompression). */
  compress?: boolean;
  /** Add the CRC header: do so when the destination's protocol max is >= 5. */
  crc?: boolean;
  /** Encrypt with this keyring's primary key when set and non-empty. */
  keyring?: Keyring | null;
  /** @default 1 (memberlist at protocol version >= 2) */
  encryptionVersion?: EncryptionVersion;
  /** Label header and additional data; '' (default) means none. */
  label?: string;
  encode?: EncodeOptions;
}

/** Wraps one packet message (or a compound from {@link makeCompound}) for the wire. */
export function sealPacket(msg: Uint8Array, opts: SealOptions = {}): Uint8Array {
  let out = msg;
  if (opts.compress) {
    const c = compressMessage(out, opts.encode);
    if (c.length < out.length) out = c;
  }
  if (opts.crc) out = addCrc(out);
  const label = opts.label ?? '';
  if (opts.keyring?.enabled)
    out = opts.keyring.encryptPacket(opts.encryptionVersion ?? 1, out, label);
  return addLabel(out, label);
}

export interface OpenOptions extends Partial<LabelPolicy> {
  /** Decrypt with these keys when set and non-empty. */
  keyring?: Keyring | null;
  /**
   * memberlist's GossipVerifyIncoming (default true): if false, a packet that fails to decrypt
   * is treated as plaintext, which is how a cluster migrates to encryption.
   */
  verifyIncoming?: boolean;
  /** Cap on the bytes all compress layers of one packet may expand to. @default 1 MiB */
  maxDecompressed?: number;
  /** Cap on compound/compress nesting. @default 4 */
  maxDepth?: number;
  /** Cap on leaf messages in one packet. @default 4096 */
  maxMessages?: number;
}

export const PACKET_MAX_DECOMPRESSED = 1024 * 1024;

export interface OpenedPacket {
  label: string;
  /** Id of the key that decrypted the packet; null if it was plaintext. */
  keyId: string | null;
  /** Leaf messages (type byte + body), compound and compress layers removed. */
  parts: Uint8Array[];
  /** Compound parts that were announced but cut off. */
  truncated: number;
  /** Inner layers that failed (bad compound or compress); the other parts still count. */
  errors: WireError[];
}

/**
 * Removes label, encryption and CRC (each failure throws, and the whole packet is dropped, as
 * in ingestPacket), then flattens compound and compress layers into leaf parts. A failure in
 * one inner layer is recorded in `errors` and its siblings are kept, as handleCompound does.
 */
export function openPacket(buf: Uint8Array, opts: OpenOptions = {}): OpenedPacket {
  const { label, rest } = checkLabel(buf, {
    label: opts.label ?? '',
    skipInboundLabelCheck: opts.skipInboundLabelCheck ?? false,
  });
  let plain = rest;
  let keyId: string | null = null;
  if (opts.keyring?.enabled) {
    try {
      const d = opts.keyring.decryptPacket(rest, label);
      plain = d.plain;
      keyId = d.keyId;
    } catch (e) {
      if (opts.verifyIncoming ?? true) throw e;
    }
  }
  const cmd = stripCrc(plain);
  const out: OpenedPacket = { label, keyId, parts: [], truncated: 0, errors: [] };
  flatten(cmd, 0, out, {
    maxDecompressed: opts.maxDecompressed ?? PACKET_MAX_DECOMPRESSED,
    maxDepth: opts.maxDepth ?? 4,
    maxMessages: opts.maxMessages ?? 4096,
  });
  return out;
}

interface Limits {
  /** Decompression budget left for the whole packet, shared by all its compress layers. */
  maxDecompressed: number;
  maxDepth: number;
  maxMessages: number;
}

function flatten(buf: Uint8Array, depth: number, out: OpenedPacket, lim: Limits): void {
  if (buf.length < 1) {
    out.errors.push(new WireError('open packet: missing message type byte'));
    return;
  }
  const type = buf[0] as number;
  if (type !== MessageType.compound && type !== MessageType.compress) {
    if (out.parts.length >= lim.maxMessages) {
      out.errors.push(new WireError(`open packet: more than ${lim.maxMessages} messages`));
      return;
    }
    out.parts.push(buf);
    return;
  }
  if (depth >= lim.maxDepth) {
    out.errors.push(
      new WireError(`open packet: ${messageTypeName(type)} nested deeper than ${lim.maxDepth}`),
    );
    return;
  }
  try {
    if (type === MessageType.compound) {
      const c = splitCompound(buf.subarray(1));
      out.truncated += c.truncated;
      for (const p of c.parts) flatten(p, depth + 1, out, lim);
    } else {
      const payload = decompressBody(buf.subarray(1), lim.maxDecompressed);
      lim.maxDecompressed -= payload.length;
      flatten(payload, depth + 1, out, lim);
    }
  } catch (e) {
    if (!(e instanceof WireError)) throw e;
    out.errors.push(e);
  }
}

export interface DecodedPacket extends Omit<OpenedPacket, 'parts'> {
  messages: PacketMessage[];
}

/** {@link openPacket} then {@link decodeMessage} on each part; bad parts go to `errors`. */
export function decodePacket(buf: Uint8Array, opts: OpenOptions = {}): DecodedPacket {
  const { parts, ...rest } = openPacket(buf, opts);
  const messages: PacketMessage[] = [];
  for (const p of parts) {
    try {
      messages.push(decodeMessage(p));
    } catch (e) {
      if (!(e instanceof WireError)) throw e;
      rest.errors.push(e);
    }
  }
  return { ...rest, messages };
}

/** Convenience: several messages into one packet (a compound when more than one). */
export function sealMessages(msgs: readonly Uint8Array[], opts: SealOptions = {}): Uint8Array {
  if (msgs.length === 0) throw new WireError('seal packet: no messages');
  return sealPacket(msgs.length === 1 ? (msgs[0] as Uint8Array) : makeCompound(msgs), opts);
}

/**
 * Wraps a stream message (rawSendMsgStream + AddLabelHeaderToStream): compression is applied
 * unconditionally when enabled, then `[10][len][payload]` encryption, then the label header.
 */
export function sealStream(msg: Uint8Array, opts: Omit<SealOptions, 'crc'> = {}): Uint8Array {
  let out = opts.compress ? compressMessage(msg, opts.encode) : msg;
  const label = opts.label ?? '';
  if (opts.keyring?.enabled)
    out = opts.keyring.encryptStream(opts.encryptionVersion ?? 1, out, label);
  return addLabel(out, label);
}

export interface OpenedStream {
  label: string;
  keyId: string | null;
  /** Message type after decryption and decompression. */
  type: number;
  /** Bytes after the type byte: the msgpack body and any raw trailer (user state). */
  body: Uint8Array;
}

/**
 * Unwraps one stream message held whole in `buf` (RemoveLabelHeaderFromStream + readStream).
 * With a keyring, plaintext is refused unless `verifyIncoming` is false; without one, an
 * encrypted stream is refused. Truncated input throws a WireError with `truncated` set.
 * For plaintext streams the body extent is only known by decoding it (see wire.ts
 * decodePushPullBody / decodeStreamUserMsgBody, which report `consumed`).
 */
export function openStream(
  buf: Uint8Array,
  opts: Omit<OpenOptions, 'maxDepth' | 'maxMessages'> = {},
): OpenedStream {
  const { label, rest } = checkLabel(buf, {
    label: opts.label ?? '',
    skipInboundLabelCheck: opts.skipInboundLabelCheck ?? false,
  });
  if (rest.length < 1) throw new WireError('open stream: missing message type byte', true);
  let type = rest[0] as number;
  let body = rest.subarray(1);
  let keyId: string | null = null;
  if (type === MessageType.encrypt) {
    if (!opts.keyring?.enabled) {
      throw new WireError(
        'open stream: remote state is encrypted and encryption is not configured',
      );
    }
    encryptedStreamLength(rest);
    const d = opts.keyring.decryptStream(rest, label);
    keyId = d.keyId;
    if (d.plain.length < 1) throw new WireError('open stream: decrypted message is empty');
    type = d.plain[0] as number;
    body = d.plain.subarray(1);
  } else if (opts.keyring?.enabled && (opts.verifyIncoming ?? true)) {
    throw new WireError('open stream: encryption is configured but remote state is not encrypted');
  }
  if (type === MessageType.compress) {
    const d = decompressBody(body, opts.maxDecompressed ?? maxDecompressedBytes);
    if (d.length < 1) throw new WireError('open stream: decompressed message is empty');
    type = d[0] as number;
    body = d.subarray(1);
  }
  return { label, keyId, type, body };
}
