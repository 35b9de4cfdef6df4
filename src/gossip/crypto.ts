/**
 * memberlist's packet and stream encryption (security.go), AES-GCM with 16/24/32-byte keys.
 *
 * Payload layout: `[version u8][nonce 12][ciphertext][tag 16]`.
 * - Version 0: the plaintext is PKCS#7-padded to a 16-byte multiple before sealing (1..16 pad
 *   bytes). Used by memberlist when its protocol version is 1.
 * - Version 1: no padding. Used at protocol version >= 2 (ours advertises pcur 2).
 * Additional data: packets use the label bytes (empty without a label); streams use
 * `[10][length u32 BE]` + label, where length counts the payload that follows.
 *
 * The nonce is an argument: the caller draws it (randomness is injected; see Keyring).
 * Uses node:crypto for AES-GCM only (no I/O). May import ./msgpack.js.
 */

import { createCipheriv, createDecipheriv } from 'node:crypto';

import { MeshError } from '../util/errors.js';

import { WireError } from './msgpack.js';
import { MessageType, maxPushStateBytes } from './wire.js';

export type EncryptionVersion = 0 | 1;

export const VERSION_SIZE = 1;
export const NONCE_SIZE = 12;
export const TAG_SIZE = 16;
const BLOCK = 16;

/** Worst-case bytes encryption adds (encryptOverhead): 45 for version 0, 29 for version 1. */
export function encryptOverhead(vsn: EncryptionVersion): number {
  return vsn === 0 ? 45 : 29;
}

/** Exact encrypted size of an `inp`-byte plaintext (encryptedLength). */
export function encryptedLength(vsn: EncryptionVersion, inp: number): number {
  if (vsn >= 1) return VERSION_SIZE + NONCE_SIZE + inp + TAG_SIZE;
  return VERSION_SIZE + NONCE_SIZE + inp + (BLOCK - (inp % BLOCK)) + TAG_SIZE;
}

/** The encryption version memberlist uses at a given protocol version (encryptionVersion()). */
export function encryptionVersionFor(protocolVersion: number): EncryptionVersion {
  return protocolVersion === 1 ? 0 : 1;
}

export function validateKey(key: Uint8Array): void {
  if (key.length !== 16 && key.length !== 24 && key.length !== 32) {
    throw new MeshError(
      'EKEYRING',
      `validate key: key is ${key.length} bytes, must be 16, 24 or 32 (AES-128/192/256)`,
    );
  }
}

function algo(key: Uint8Array): 'aes-128-gcm' | 'aes-192-gcm' | 'aes-256-gcm' {
  validateKey(key);
  return key.length === 16 ? 'aes-128-gcm' : key.length === 24 ? 'aes-192-gcm' : 'aes-256-gcm';
}

/** Seals `msg` as encryptPayload does, with the given 12-byte nonce. */
export function encryptPayload(
  vsn: EncryptionVersion,
  key: Uint8Array,
  msg: Uint8Array,
  aad: Uint8Array,
  nonce: Uint8Array,
): Uint8Array {
  if (nonce.length !== NONCE_SIZE) {
    throw new WireError(`encrypt payload: nonce is ${nonce.length} bytes, must be ${NONCE_SIZE}`);
  }
  let plain = msg;
  if (vsn === 0) {
    const pad = BLOCK - (msg.length % BLOCK);
    plain = new Uint8Array(msg.length + pad);
    plain.set(msg);
    plain.fill(pad, msg.length);
  }
  const cipher = createCipheriv(algo(key), key, nonce);
  cipher.setAAD(aad);
  const ct = cipher.update(plain);
  const fin = cipher.final();
  const tag = cipher.getAuthTag();
  const out = new Uint8Array(VERSION_SIZE + NONCE_SIZE + ct.length + fin.length + TAG_SIZE);
  out[0] = vsn;
  out.set(nonce, VERSION_SIZE);
  out.set(ct, VERSION_SIZE + NONCE_SIZE);
  out.set(fin, VERSION_SIZE + NONCE_SIZE + ct.length);
  out.set(tag, out.length - TAG_SIZE);
  return out;
}

/** Opens with one key; null if authentication fails. */
function open(key: Uint8Array, msg: Uint8Array, aad: Uint8Array): Uint8Array | null {
  const nonce = msg.subarray(VERSION_SIZE, VERSION_SIZE + NONCE_SIZE);
  const ct = msg.subarray(VERSION_SIZE + NONCE_SIZE, msg.length - TAG_SIZE);
  const tag = msg.subarray(msg.length - TAG_SIZE);
  const d = createDecipheriv(algo(key), key, nonce);
  d.setAAD(aad);
  d.setAuthTag(tag);
  const a = d.update(ct);
  try {
    const b = d.final();
    const out = new Uint8Array(a.length + b.length);
    out.set(a);
    out.set(b, a.length);
    return out;
  } catch {
    return null;
  }
}

/**
 * Opens a payload with the first key that authenticates it (decryptPayload), removing the
 * PKCS#7 padding for version 0. Unlike memberlist, which trusts the last byte (and panics on
 * a bad one), padding is checked fully.
 */
export function decryptPayload(
  keys: readonly Uint8Array[],
  msg: Uint8Array,
  aad: Uint8Array,
): { plain: Uint8Array; keyIndex: number } {
  if (msg.length === 0) throw new WireError('decrypt payload: cannot decrypt empty payload');
  const vsn = msg[0] as number;
  if (vsn > 1) throw new WireError(`decrypt payload: unsupported encryption version ${vsn}`);
  if (msg.length < encryptedLength(vsn as EncryptionVersion, 0)) {
    throw new WireError(`decrypt payload: payload is too small to decrypt: ${msg.length} bytes`);
  }
  for (let k = 0; k < keys.length; k++) {
    const plain = open(keys[k] as Uint8Array, msg, aad);
    if (plain === null) continue;
    if (vsn === 1) return { plain, keyIndex: k };
    const pad = plain[plain.length - 1] as number;
    if (pad < 1 || pad > BLOCK || pad > plain.length) {
      throw new WireError(`decrypt payload: bad PKCS#7 padding byte ${pad}`);
    }
    for (let i = plain.length - pad; i < plain.length; i++) {
      if (plain[i] !== pad) throw new WireError('decrypt payload: bad PKCS#7 padding');
    }
    return { plain: plain.subarray(0, plain.length - pad), keyIndex: k };
  }
  throw new WireError(
    keys.length === 0
      ? 'decrypt payload: no keys installed'
      : `decrypt payload: none of the ${keys.length} installed keys could decrypt the message (key mismatch?)`,
  );
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** `[10][length u32 BE][payload]` for a stream, as encryptLocalState builds it. */
export function encryptStream(
  vsn: EncryptionVersion,
  key: Uint8Array,
  msg: Uint8Array,
  streamLabel: Uint8Array,
  nonce: Uint8Array,
): Uint8Array {
  const header = new Uint8Array(5);
  header[0] = MessageType.encrypt;
  new DataView(header.buffer).setUint32(1, encryptedLength(vsn, msg.length));
  const payload = encryptPayload(vsn, key, msg, concat(header, streamLabel), nonce);
  return concat(header, payload);
}

/**
 * Total bytes of an encrypted stream message whose first 5 bytes are in `head`, so a reader
 * knows how much to wait for; refuses lengths over memberlist's maxPushStateBytes.
 */
export function encryptedStreamLength(head: Uint8Array): number {
  if (head.length < 5) throw new WireError('read encrypted stream: header is truncated', true);
  if (head[0] !== MessageType.encrypt) {
    throw new WireError(
      `read encrypted stream: type byte is ${head[0]}, expected ${MessageType.encrypt}`,
    );
  }
  const len = new DataView(head.buffer, head.byteOffset, 5).getUint32(1);
  if (len > maxPushStateBytes) {
    throw new WireError(
      `read encrypted stream: remote state of ${len} bytes is larger than limit (${maxPushStateBytes})`,
    );
  }
  return 5 + len;
}

/** Opens a whole `[10][len][payload]` stream message (decryptRemoteState). */
export function decryptStream(
  keys: readonly Uint8Array[],
  buf: Uint8Array,
  streamLabel: Uint8Array,
): { plain: Uint8Array; keyIndex: number; consumed: number } {
  const total = encryptedStreamLength(buf);
  if (buf.length < total) {
    throw new WireError(
      `read encrypted stream: ${total} bytes announced, ${buf.length} present`,
      true,
    );
  }
  const r = decryptPayload(keys, buf.subarray(5, total), concat(buf.subarray(0, 5), streamLabel));
  return { ...r, consumed: total };
}
