/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), slice-by-8, for WAL and snapshot
 * records. Pure; may import nothing.
 *
 * Why CRC-32C rather than zlib's CRC-32 (IEEE): the Castagnoli polynomial keeps a Hamming
 * distance of 6 for messages up to a few kilobits where IEEE's keeps 4 (Castagnoli, Brauer &
 * Herrmann 1993; Koopman 2002), which covers our typical record; it is what iSCSI, ext4 metadata
 * and etcd's WAL use, so a record can be checked with standard tools. Node 20 has no native
 * CRC-32C; this table version runs at several hundred MB/s, far above an fsync-bound log.
 */

const TABLES = (() => {
  const t = new Uint32Array(8 * 256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  for (let i = 0; i < 256; i++) {
    for (let k = 1; k < 8; k++) {
      const prev = t[(k - 1) * 256 + i]!;
      t[k * 256 + i] = ((prev >>> 8) ^ t[prev & 0xff]!) >>> 0;
    }
  }
  return t;
})();

/** CRC-32C of `buf[start, end)`, continuing from `crc` (the result of a previous call, or 0). */
export function crc32c(buf: Uint8Array, crc = 0, start = 0, end = buf.length): number {
  const t = TABLES;
  let c = ~crc >>> 0;
  let i = start;
  for (; i + 8 <= end; i += 8) {
    const lo =
      (c ^ (buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24))) >>> 0;
    c =
      t[7 * 256 + (lo & 0xff)]! ^
      t[6 * 256 + ((lo >>> 8) & 0xff)]! ^
      t[5 * 256 + ((lo >>> 16) & 0xff)]! ^
      t[4 * 256 + (lo >>> 24)]! ^
      t[3 * 256 + buf[i + 4]!]! ^
      t[2 * 256 + buf[i + 5]!]! ^
      t[256 + buf[i + 6]!]! ^
      t[buf[i + 7]!]!;
  }
  for (; i < end; i++) c = t[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}
