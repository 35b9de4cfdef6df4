/**
 * IEEE CRC-32 (the polynomial of Go's crc32.ChecksumIEEE, zlib, Ethernet) and memberlist's
 * hasCrc framing: `[12][crc32 big-endian of the rest][message]`, used towards peers whose
 * protocol max is >= 5 (net.go rawSendMsgPacket / ingestPacket). Pure; may import ./msgpack.js.
 */

import { WireError } from './msgpack.js';
import { MessageType } from './wire.js';

const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32/IEEE (reflected 0xEDB88320, init and final xor 0xFFFFFFFF). */
export function crc32(buf: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++)
    c = (TABLE[(c ^ (buf[i] as number)) & 0xff] as number) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** Prefixes `msg` with the hasCrc header. */
export function addCrc(msg: Uint8Array): Uint8Array {
  const out = new Uint8Array(msg.length + 5);
  out[0] = MessageType.hasCrc;
  new DataView(out.buffer).setUint32(1, crc32(msg));
  out.set(msg, 5);
  return out;
}

/**
 * If `buf` carries a hasCrc header (memberlist looks for it only when at least 5 bytes are
 * present), checks and strips it; otherwise returns `buf` unchanged. A mismatch throws.
 */
export function stripCrc(buf: Uint8Array): Uint8Array {
  if (buf.length < 5 || buf[0] !== MessageType.hasCrc) return buf;
  const expected = new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getUint32(1);
  const body = buf.subarray(5);
  const got = crc32(body);
  if (got !== expected) {
    throw new WireError(
      `check packet crc: got ${got.toString(16).padStart(8, '0')}, header says ${expected.toString(16).padStart(8, '0')}`,
    );
  }
  return body;
}
