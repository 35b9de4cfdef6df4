/**
 * memberlist compound messages (util.go makeCompoundMessage / decodeCompoundMessage):
 * `[7][count u8][len u16 BE]×count[part]×count`. Up to 255 parts per compound, each up to
 * 65535 bytes. Pure; may import ./msgpack.js and ./wire.js.
 */

import { WireError } from './msgpack.js';
import { MessageType } from './wire.js';

/** memberlist's maxMsgs in makeCompoundMessages: the count is one byte. */
export const MAX_COMPOUND_PARTS = 255;
export const MAX_COMPOUND_PART_BYTES = 0xffff;

/** One compound message holding `parts` (1..255 of them, each <= 65535 bytes). */
export function makeCompound(parts: readonly Uint8Array[]): Uint8Array {
  if (parts.length > MAX_COMPOUND_PARTS) {
    throw new WireError(`make compound: ${parts.length} parts, at most ${MAX_COMPOUND_PARTS} fit`);
  }
  let total = 2 + 2 * parts.length;
  for (const p of parts) {
    if (p.length > MAX_COMPOUND_PART_BYTES) {
      throw new WireError(
        `make compound: a part of ${p.length} bytes exceeds ${MAX_COMPOUND_PART_BYTES}`,
      );
    }
    total += p.length;
  }
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  out[0] = MessageType.compound;
  out[1] = parts.length;
  let off = 2;
  for (const p of parts) {
    view.setUint16(off, p.length);
    off += 2;
  }
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Splits any number of parts into compounds of at most 255 (makeCompoundMessages). */
export function makeCompounds(parts: readonly Uint8Array[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < parts.length; i += MAX_COMPOUND_PARTS) {
    out.push(makeCompound(parts.slice(i, i + MAX_COMPOUND_PARTS)));
  }
  return out;
}

export interface CompoundParts {
  parts: Uint8Array[];
  /** Parts announced but cut off; memberlist logs these and still handles the others. */
  truncated: number;
}

/**
 * Splits a compound body (the bytes after the type byte). Like memberlist: a missing count or
 * length table is an error, parts whose bytes are missing are counted as truncated, trailing
 * bytes are ignored. Parts are views into `body`.
 */
export function splitCompound(body: Uint8Array): CompoundParts {
  if (body.length < 1) throw new WireError('split compound: missing part count byte', true);
  const n = body[0] as number;
  if (body.length < 1 + 2 * n) {
    throw new WireError(`split compound: length table of ${n} parts is truncated`, true);
  }
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const parts: Uint8Array[] = [];
  let off = 1 + 2 * n;
  for (let i = 0; i < n; i++) {
    const len = view.getUint16(1 + 2 * i);
    if (body.length - off < len) return { parts, truncated: n - i };
    parts.push(body.subarray(off, off + len));
    off += len;
  }
  return { parts, truncated: 0 };
}
