/**
 * The data of a normal raft entry, the one encoding a write has from proposal to store:
 * u8 version 1 | u16 client length | client (UTF-8) | f64 seq | the command (the store's ops as
 * UTF-8 JSON). RaftNode frames a command with its lane's client id and sequence number (for
 * exactly-once apply, Raft thesis §6.3) and reads the header back to answer the proposer; the
 * store decodes the whole entry once.
 * Pure; may import nothing.
 */

export interface EntryData {
  client: string;
  seq: number;
  cmd: Uint8Array;
}

const encoder = new TextEncoder();
const HEADER = 11;

export function encodeEntry(client: string, seq: number, cmd: Uint8Array): Uint8Array {
  const c = encoder.encode(client);
  const out = new Uint8Array(HEADER + c.length + cmd.length);
  const v = new DataView(out.buffer);
  out[0] = 1;
  v.setUint16(1, c.length);
  out.set(c, 3);
  v.setFloat64(3 + c.length, seq);
  out.set(cmd, HEADER + c.length);
  return out;
}

/** The header and the command bytes, or null when `b` is not an entry of this layout. */
export function decodeEntry(b: Uint8Array): EntryData | null {
  if (b.length < HEADER || b[0] !== 1) return null;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const n = v.getUint16(1);
  if (b.length < HEADER + n) return null;
  let client: string;
  try {
    client = new TextDecoder('utf-8', { fatal: true }).decode(b.subarray(3, 3 + n));
  } catch {
    return null;
  }
  const seq = v.getFloat64(3 + n);
  if (!Number.isSafeInteger(seq) || seq <= 0) return null;
  return { client, seq, cmd: b.subarray(HEADER + n) };
}
