/**
 * LZW in the exact format of Go's compress/lzw with order LSB and literal width 8, which
 * memberlist uses for its compress message (util.go compressPayload/decompressBuffer).
 *
 * Format (GIF flavour, Welch 1984): codes start 9 bits wide and grow to at most 12; code 256
 * is clear, 257 is end-of-data; codes are packed least-significant bit first. The writer
 * follows current Go: a clear code first (GIF89a appendix F), the code width grows when the
 * next code to assign reaches 1<<width, and a clear is sent when code 4095 would be assigned.
 * The reader accepts streams with or without the leading clear (older Go omitted it), stops at
 * end-of-data and ignores what follows; a stream without end-of-data is an error, as in Go.
 * Pure; may import ./msgpack.js.
 */

import { WireError } from './msgpack.js';

const LIT_WIDTH = 8;
const CLEAR = 1 << LIT_WIDTH;
const EOF = CLEAR + 1;
const MAX_WIDTH = 12;
const MAX_CODE = (1 << MAX_WIDTH) - 1;

class BitWriter {
  private out: Uint8Array;
  private n = 0;
  private bits = 0;
  private nBits = 0;

  constructor(hint: number) {
    this.out = new Uint8Array(Math.max(16, hint));
  }

  write(code: number, width: number): void {
    this.bits |= code << this.nBits;
    this.nBits += width;
    while (this.nBits >= 8) {
      this.push(this.bits & 0xff);
      this.bits >>>= 8;
      this.nBits -= 8;
    }
  }

  private push(b: number): void {
    if (this.n === this.out.length) {
      const next = new Uint8Array(this.out.length * 2);
      next.set(this.out);
      this.out = next;
    }
    this.out[this.n++] = b;
  }

  finish(): Uint8Array {
    if (this.nBits > 0) this.push(this.bits & 0xff);
    return this.out.slice(0, this.n);
  }
}

/** Compresses `input` exactly as Go's `lzw.NewWriter(w, lzw.LSB, 8)` + Write + Close. */
export function lzwCompress(input: Uint8Array): Uint8Array {
  const w = new BitWriter(input.length / 2 + 8);
  // Dictionary of (prefix code, next byte) -> code. A flat table indexed by prefix*256+byte
  // is 4096*256 entries; a Map keyed the same way is smaller for gossip-sized inputs.
  let dict = new Map<number, number>();
  let width = LIT_WIDTH + 1;
  let hi = EOF;
  let overflow = 1 << width;

  // Go's incHi: returns false when the table was full and has been reset with a clear code.
  const incHi = (): boolean => {
    hi++;
    if (hi === overflow) {
      width++;
      overflow <<= 1;
    }
    if (hi === MAX_CODE) {
      w.write(CLEAR, width);
      width = LIT_WIDTH + 1;
      hi = EOF;
      overflow = CLEAR << 1;
      dict = new Map();
      return false;
    }
    return true;
  };

  w.write(CLEAR, width);
  if (input.length > 0) {
    let code = input[0] as number;
    for (let i = 1; i < input.length; i++) {
      const lit = input[i] as number;
      const key = code * 256 + lit;
      const hit = dict.get(key);
      if (hit !== undefined) {
        code = hit;
        continue;
      }
      w.write(code, width);
      code = lit;
      if (incHi()) dict.set(key, hi);
    }
    w.write(code, width);
    incHi();
  }
  w.write(EOF, width);
  return w.finish();
}

const TABLES = {
  prefix: new Uint16Array(1 << MAX_WIDTH),
  suffix: new Uint8Array(1 << MAX_WIDTH),
  scratch: new Uint8Array(1 << MAX_WIDTH),
};

/** Default cap on decompressed size: memberlist's maxDecompressedBytes (2 × 20 MiB). */
export const LZW_DEFAULT_MAX_OUTPUT = 2 * 20 * 1024 * 1024;

/**
 * Decompresses a Go LSB/8 LZW stream. Output beyond `maxOutput` bytes is an error (memberlist
 * HEAD caps at 40 MiB; pass a tighter cap for UDP packets). Work is linear in the output, so
 * the cap also bounds time.
 */
export function lzwDecompress(input: Uint8Array, maxOutput = LZW_DEFAULT_MAX_OUTPUT): Uint8Array {
  // Shared tables: decoding is synchronous and never re-entered. Stale entries from a previous
  // call are harmless: codes are only read once assigned in this stream (code <= hi).
  const { prefix, suffix, scratch } = TABLES;
  let out = new Uint8Array(Math.min(maxOutput, Math.max(64, input.length * 4)));
  let o = 0;
  const INVALID = 0xffff;

  let width = LIT_WIDTH + 1;
  let hi = EOF;
  let overflow = 1 << width;
  let last = INVALID;
  let bits = 0;
  let nBits = 0;
  let pos = 0;

  const emit = (src: Uint8Array, from: number, len: number): void => {
    if (o + len > maxOutput) {
      throw new WireError(`decompress lzw: output exceeds the ${maxOutput}-byte limit`);
    }
    if (o + len > out.length) {
      let size = out.length * 2;
      while (size < o + len) size *= 2;
      const next = new Uint8Array(Math.min(size, maxOutput));
      next.set(out.subarray(0, o));
      out = next;
    }
    out.set(src.subarray(from, from + len), o);
    o += len;
  };
  const one = new Uint8Array(1);

  for (;;) {
    while (nBits < width) {
      if (pos >= input.length) {
        throw new WireError('decompress lzw: stream ends without an end-of-data code', true);
      }
      bits |= (input[pos++] as number) << nBits;
      nBits += 8;
    }
    const code = bits & ((1 << width) - 1);
    bits >>>= width;
    nBits -= width;

    if (code < CLEAR) {
      one[0] = code;
      emit(one, 0, 1);
      if (last !== INVALID) {
        suffix[hi] = code;
        prefix[hi] = last;
      }
    } else if (code === CLEAR) {
      width = LIT_WIDTH + 1;
      hi = EOF;
      overflow = 1 << width;
      last = INVALID;
      continue;
    } else if (code === EOF) {
      return out.slice(0, o);
    } else if (code <= hi) {
      // Expand right to left into the scratch buffer; code == hi is the KwKwK case that
      // expands to last's string followed by its first byte.
      let i = scratch.length - 1;
      let c = code;
      if (code === hi && last !== INVALID) {
        c = last;
        while (c >= CLEAR) c = prefix[c] as number;
        scratch[i--] = c;
        c = last;
      }
      while (c >= CLEAR) {
        scratch[i--] = suffix[c] as number;
        c = prefix[c] as number;
      }
      scratch[i] = c;
      emit(scratch, i, scratch.length - i);
      if (last !== INVALID) {
        suffix[hi] = c;
        prefix[hi] = last;
      }
    } else {
      throw new WireError(`decompress lzw: invalid code ${code} (next code would be ${hi})`);
    }
    last = code;
    hi++;
    if (hi >= overflow) {
      if (width === MAX_WIDTH) {
        last = INVALID;
        hi--;
      } else {
        width++;
        overflow = 1 << width;
      }
    }
  }
}
