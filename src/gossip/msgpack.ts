/**
 * The msgpack subset that hashicorp/memberlist speaks, with Go struct semantics.
 *
 * Hand-written on purpose; a general msgpack library does not fit, for these reasons:
 * - Go's encoder (go-msgpack 0.5.5 and v2, `MsgpackHandle{}` without WriteExt) sends `[]byte`
 *   as msgpack *str* (fixstr/str16/str32, never str8 or bin). A general decoder turns str into
 *   JS text and corrupts non-UTF-8 addresses and metadata; a general encoder sends Uint8Array as
 *   bin and text as str8, which is not what Go sends (str8 is accepted by Go, bin is refused by
 *   0.5.5 for string fields).
 * - Whether a str is text or raw bytes depends on the Go struct field, not on the wire; so do
 *   the accepted forms (a `[]byte` field also takes bin or an array of small ints), the zero
 *   value on nil, the exact-case field match and the silent skip of unknown keys.
 * - Byte-exact re-encoding of the golden vectors needs keys in sorted order and Go's two integer
 *   styles (0.5.5 sends non-negative signed ints as unsigned; v2 sends the smallest signed form).
 * - Untrusted input: every length is checked against the bytes left, nesting is capped, and
 *   every failure is a {@link WireError}; a general library throws its own error types.
 *
 * Spec: https://github.com/msgpack/msgpack/blob/master/spec.md. May import util/errors only.
 */

import { MeshError } from '../util/errors.js';

/**
 * A malformed, truncated or oversized gossip message. `truncated` is true when the input
 * simply ended early, so a stream reader may wait for more bytes and retry.
 */
export class WireError extends MeshError {
  readonly truncated: boolean;

  constructor(message: string, truncated = false) {
    super('EWIRE', message);
    this.truncated = truncated;
  }
}

/** How a Go `int` (signed) field is encoded. Unsigned Go fields always use the unsigned forms. */
export type IntStyle = 'go-msgpack-0.5' | 'go-msgpack-2';

/** Deepest nesting the skipper follows inside unknown values before giving up. */
export const MAX_SKIP_DEPTH = 32;

const utf8 = new TextDecoder('utf-8');
const utf8enc = new TextEncoder();

/** A copy of `b[start, end)` as a plain Uint8Array (Buffer#slice would alias the input). */
export function copyBytes(b: Uint8Array, start = 0, end = b.length): Uint8Array {
  return Uint8Array.prototype.slice.call(b, start, end);
}

export function textToBytes(s: string): Uint8Array {
  return utf8enc.encode(s);
}

export function bytesToText(b: Uint8Array): string {
  return utf8.decode(b);
}

/** Growable output buffer with the msgpack forms Go's encoder emits. */
export class MsgpackWriter {
  private buf: Uint8Array;
  private view: DataView;
  private n = 0;

  constructor(initial = 64) {
    this.buf = new Uint8Array(initial);
    this.view = new DataView(this.buf.buffer);
  }

  private ensure(extra: number): void {
    if (this.n + extra <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.n + extra) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.n));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  byte(b: number): void {
    this.ensure(1);
    this.buf[this.n++] = b & 0xff;
  }

  raw(bytes: Uint8Array): void {
    this.ensure(bytes.length);
    this.buf.set(bytes, this.n);
    this.n += bytes.length;
  }

  private be16(v: number): void {
    this.ensure(2);
    this.view.setUint16(this.n, v);
    this.n += 2;
  }

  private be32(v: number): void {
    this.ensure(4);
    this.view.setUint32(this.n, v);
    this.n += 4;
  }

  private be64(v: bigint): void {
    this.ensure(8);
    this.view.setBigUint64(this.n, BigInt.asUintN(64, v));
    this.n += 8;
  }

  nil(): void {
    this.byte(0xc0);
  }

  bool(v: boolean): void {
    this.byte(v ? 0xc3 : 0xc2);
  }

  /** Smallest unsigned form, as Go encodes uint8/16/32/64 fields. */
  uint(v: number): void {
    if (!Number.isSafeInteger(v) || v < 0) {
      throw new WireError(`encode msgpack: ${v} is not an unsigned integer`);
    }
    if (v <= 0x7f) this.byte(v);
    else if (v <= 0xff) {
      this.byte(0xcc);
      this.byte(v);
    } else if (v <= 0xffff) {
      this.byte(0xcd);
      this.be16(v);
    } else if (v <= 0xffffffff) {
      this.byte(0xce);
      this.be32(v);
    } else {
      this.byte(0xcf);
      this.be64(BigInt(v));
    }
  }

  /** A Go `int` field in the given encoder's style (see {@link IntStyle}). */
  int(v: number, style: IntStyle): void {
    if (!Number.isSafeInteger(v)) throw new WireError(`encode msgpack: ${v} is not an integer`);
    if (v >= 0 && (style === 'go-msgpack-0.5' || v <= 0x7f)) {
      this.uint(v);
      return;
    }
    if (v >= -32 && v < 0) this.byte(v & 0xff);
    else if (v >= -0x80 && v <= 0x7f) {
      this.byte(0xd0);
      this.byte(v & 0xff);
    } else if (v >= -0x8000 && v <= 0x7fff) {
      this.byte(0xd1);
      this.be16(v & 0xffff);
    } else if (v >= -0x80000000 && v <= 0x7fffffff) {
      this.byte(0xd2);
      this.be32(v >>> 0);
    } else {
      this.byte(0xd3);
      this.be64(BigInt(v));
    }
  }

  /** A str header plus bytes: fixstr, else str16, else str32 (Go never emits str8 or bin). */
  str(bytes: Uint8Array): void {
    const len = bytes.length;
    if (len <= 31) this.byte(0xa0 | len);
    else if (len <= 0xffff) {
      this.byte(0xda);
      this.be16(len);
    } else {
      this.byte(0xdb);
      this.be32(len);
    }
    this.raw(bytes);
  }

  mapHeader(count: number): void {
    if (count <= 15) this.byte(0x80 | count);
    else if (count <= 0xffff) {
      this.byte(0xde);
      this.be16(count);
    } else {
      this.byte(0xdf);
      this.be32(count);
    }
  }

  finish(): Uint8Array {
    return this.buf.slice(0, this.n);
  }

  get length(): number {
    return this.n;
  }
}

/** What a leading byte announces; used for error messages and dispatch. */
export function describeByte(b: number): string {
  if (b <= 0x7f || b >= 0xe0) return 'int';
  if (b <= 0x8f || b === 0xde || b === 0xdf) return 'map';
  if (b <= 0x9f || b === 0xdc || b === 0xdd) return 'array';
  if (b <= 0xbf || (b >= 0xd9 && b <= 0xdb)) return 'str';
  if (b === 0xc0) return 'nil';
  if (b === 0xc2 || b === 0xc3) return 'bool';
  if (b >= 0xc4 && b <= 0xc6) return 'bin';
  if (b === 0xca || b === 0xcb) return 'float';
  if (b >= 0xcc && b <= 0xd3) return 'int';
  if ((b >= 0xc7 && b <= 0xc9) || (b >= 0xd4 && b <= 0xd8)) return 'ext';
  return 'invalid';
}

/** Cursor over untrusted bytes. Every read checks bounds and throws {@link WireError}. */
export class MsgpackReader {
  pos: number;
  private readonly view: DataView;

  constructor(
    readonly buf: Uint8Array,
    pos = 0,
  ) {
    this.pos = pos;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number): void {
    if (this.buf.length - this.pos < n) {
      throw new WireError(
        `decode msgpack: input ends at byte ${this.buf.length}, ${n} more needed at ${this.pos}`,
        true,
      );
    }
  }

  peek(): number {
    this.need(1);
    return this.buf[this.pos] as number;
  }

  private u8(): number {
    this.need(1);
    return this.buf[this.pos++] as number;
  }

  private u16(): number {
    this.need(2);
    const v = this.view.getUint16(this.pos);
    this.pos += 2;
    return v;
  }

  private u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }

  private bytes(n: number): Uint8Array {
    this.need(n);
    const out = copyBytes(this.buf, this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  private wrongType(want: string, b: number): WireError {
    return new WireError(
      `decode msgpack: expected ${want} at byte ${this.pos}, found ${describeByte(b)} (0x${b.toString(16)})`,
    );
  }

  /** Consumes a nil if one is next; Go leaves the field at its zero value then. */
  tryNil(): boolean {
    if (this.peek() === 0xc0) {
      this.pos++;
      return true;
    }
    return false;
  }

  /** Any msgpack integer form, as a JS number; values beyond 2^53 are refused. */
  integer(): number {
    const b = this.peek();
    if (b <= 0x7f) {
      this.pos++;
      return b;
    }
    if (b >= 0xe0) {
      this.pos++;
      return b - 0x100;
    }
    const at = this.pos;
    this.pos++;
    switch (b) {
      case 0xcc:
        return this.u8();
      case 0xcd:
        return this.u16();
      case 0xce:
        return this.u32();
      case 0xd0:
        return (this.u8() << 24) >> 24;
      case 0xd1:
        return (this.u16() << 16) >> 16;
      case 0xd2:
        return this.u32() | 0;
      case 0xcf:
      case 0xd3: {
        this.need(8);
        const v = b === 0xcf ? this.view.getBigUint64(this.pos) : this.view.getBigInt64(this.pos);
        this.pos += 8;
        if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
          throw new WireError(`decode msgpack: integer ${v} at byte ${at} is out of range`);
        }
        return Number(v);
      }
      default:
        this.pos = at;
        throw this.wrongType('int', b);
    }
  }

  /** An unsigned integer no larger than `max` (a Go uintN field). */
  uint(max: number, what: string): number {
    const at = this.pos;
    const v = this.integer();
    if (v < 0 || v > max) {
      throw new WireError(`decode msgpack: ${what} = ${v} at byte ${at} does not fit (max ${max})`);
    }
    return v;
  }

  bool(): boolean {
    const b = this.peek();
    if (b === 0xc2 || b === 0xc3) {
      this.pos++;
      return b === 0xc3;
    }
    throw this.wrongType('bool', b);
  }

  /** Length of a str or bin whose header is next, or -1 if the next value is neither. */
  private rawHeader(): number {
    const b = this.peek();
    if (b >= 0xa0 && b <= 0xbf) {
      this.pos++;
      return b & 0x1f;
    }
    switch (b) {
      case 0xd9:
      case 0xc4:
        this.pos++;
        return this.u8();
      case 0xda:
      case 0xc5:
        this.pos++;
        return this.u16();
      case 0xdb:
      case 0xc6:
        this.pos++;
        return this.u32();
      default:
        return -1;
    }
  }

  /** A str or bin value as raw bytes (a Go string field; go-msgpack v2 accepts bin here). */
  strOrBin(): Uint8Array {
    const b = this.peek();
    const len = this.rawHeader();
    if (len < 0) throw this.wrongType('str or bin', b);
    return this.bytes(len);
  }

  /**
   * A Go `[]byte` field: str, bin, or an array of integers 0..255 (go-msgpack accepts all
   * three). nil is the empty slice.
   */
  byteSlice(what: string): Uint8Array {
    if (this.tryNil()) return new Uint8Array(0);
    const b = this.peek();
    const len = this.rawHeader();
    if (len >= 0) return this.bytes(len);
    if (b >= 0x90 && b <= 0x9f) {
      this.pos++;
      return this.smallIntArray(b & 0x0f, what);
    }
    if (b === 0xdc || b === 0xdd) {
      this.pos++;
      const n = b === 0xdc ? this.u16() : this.u32();
      return this.smallIntArray(n, what);
    }
    throw this.wrongType(`${what} (bytes)`, b);
  }

  private smallIntArray(n: number, what: string): Uint8Array {
    this.need(n); // each element takes at least one byte
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.uint(0xff, `${what}[${i}]`);
    return out;
  }

  /** Entry count of a map whose header is next; nil is not a map here. */
  mapHeader(): number {
    const b = this.peek();
    let n: number;
    if (b >= 0x80 && b <= 0x8f) {
      this.pos++;
      n = b & 0x0f;
    } else if (b === 0xde) {
      this.pos++;
      n = this.u16();
    } else if (b === 0xdf) {
      this.pos++;
      n = this.u32();
    } else {
      throw this.wrongType('map', b);
    }
    this.need(2 * n); // key and value take at least one byte each
    return n;
  }

  /** Steps over one value of any type, nested no deeper than {@link MAX_SKIP_DEPTH}. */
  skip(depth = 0): void {
    if (depth > MAX_SKIP_DEPTH) {
      throw new WireError(
        `decode msgpack: nesting deeper than ${MAX_SKIP_DEPTH} at byte ${this.pos}`,
      );
    }
    const b = this.peek();
    const at = this.pos;
    if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) {
      this.pos++;
      return;
    }
    const rawLen = this.rawHeader();
    if (rawLen >= 0) {
      this.need(rawLen);
      this.pos += rawLen;
      return;
    }
    this.pos++;
    let items: number;
    switch (b) {
      case 0xcc:
      case 0xd0:
        return this.advance(1);
      case 0xcd:
      case 0xd1:
        return this.advance(2);
      case 0xce:
      case 0xd2:
      case 0xca:
        return this.advance(4);
      case 0xcf:
      case 0xd3:
      case 0xcb:
        return this.advance(8);
      case 0xd4:
        return this.advance(2);
      case 0xd5:
        return this.advance(3);
      case 0xd6:
        return this.advance(5);
      case 0xd7:
        return this.advance(9);
      case 0xd8:
        return this.advance(17);
      case 0xc7:
        return this.advance(this.u8() + 1);
      case 0xc8:
        return this.advance(this.u16() + 1);
      case 0xc9:
        return this.advance(this.u32() + 1);
      case 0xdc:
        items = this.u16();
        break;
      case 0xdd:
        items = this.u32();
        break;
      case 0xde:
        items = 2 * this.u16();
        break;
      case 0xdf:
        items = 2 * this.u32();
        break;
      default:
        if (b >= 0x80 && b <= 0x8f) items = 2 * (b & 0x0f);
        else if (b >= 0x90 && b <= 0x9f) items = b & 0x0f;
        else {
          this.pos = at;
          throw this.wrongType('a msgpack value', b);
        }
    }
    this.need(items);
    for (let i = 0; i < items; i++) this.skip(depth + 1);
  }

  private advance(n: number): void {
    this.need(n);
    this.pos += n;
  }
}

/** The Go type of a struct field, which decides both the wire form and what is accepted. */
export type FieldKind = 'uint8' | 'uint16' | 'uint32' | 'int' | 'bool' | 'bytes' | 'string';

export interface FieldSpec {
  /** Go field name: the map key on the wire, matched case-sensitively. */
  readonly go: string;
  /** Property name in our TypeScript body type. */
  readonly ts: string;
  readonly kind: FieldKind;
  /** Go's `codec:",omitempty"`: the key is left out when the value is the zero value. */
  readonly omitempty?: boolean;
}

const UINT_MAX: Record<string, number> = { uint8: 0xff, uint16: 0xffff, uint32: 0xffffffff };

function zeroOf(kind: FieldKind): unknown {
  switch (kind) {
    case 'bool':
      return false;
    case 'bytes':
      return new Uint8Array(0);
    case 'string':
      return '';
    default:
      return 0;
  }
}

function isZero(kind: FieldKind, v: unknown): boolean {
  if (kind === 'bytes') return v instanceof Uint8Array && v.length === 0;
  return v === zeroOf(kind);
}

export interface EncodeOptions {
  /** @default 'go-msgpack-0.5' — what memberlist 0.2.2 / serf 0.9.4 send. */
  intStyle?: IntStyle;
}

/**
 * Encoder/decoder for one Go struct, sent as a msgpack map keyed by Go field names.
 * Keys go out in byte order of the Go names, which reproduces Go's golden vectors exactly.
 * Empty `[]byte` values go out as nil, as Go sends a nil slice.
 */
export class StructCodec<T extends object> {
  private readonly sorted: readonly FieldSpec[];
  private readonly byGoName: ReadonlyMap<string, FieldSpec>;

  constructor(
    readonly name: string,
    readonly fields: readonly FieldSpec[],
  ) {
    this.sorted = [...fields].sort((a, b) => (a.go < b.go ? -1 : a.go > b.go ? 1 : 0));
    this.byGoName = new Map(fields.map((f) => [f.go, f]));
  }

  write(w: MsgpackWriter, value: T, opts: EncodeOptions = {}): void {
    const style = opts.intStyle ?? 'go-msgpack-0.5';
    const rec = value as Record<string, unknown>;
    const present = this.sorted.filter((f) => !(f.omitempty && isZero(f.kind, rec[f.ts])));
    w.mapHeader(present.length);
    for (const f of present) {
      w.str(textToBytes(f.go));
      const v = rec[f.ts];
      switch (f.kind) {
        case 'uint8':
        case 'uint16':
        case 'uint32':
          if (
            typeof v !== 'number' ||
            !Number.isInteger(v) ||
            v < 0 ||
            v > (UINT_MAX[f.kind] ?? 0)
          ) {
            throw new WireError(`encode ${this.name}: ${f.ts} = ${String(v)} is not a ${f.kind}`);
          }
          w.uint(v);
          break;
        case 'int':
          if (typeof v !== 'number' || !Number.isSafeInteger(v)) {
            throw new WireError(`encode ${this.name}: ${f.ts} = ${String(v)} is not an integer`);
          }
          w.int(v, style);
          break;
        case 'bool':
          if (typeof v !== 'boolean')
            throw new WireError(`encode ${this.name}: ${f.ts} is not a boolean`);
          w.bool(v);
          break;
        case 'bytes':
          if (!(v instanceof Uint8Array)) {
            throw new WireError(`encode ${this.name}: ${f.ts} is not a Uint8Array`);
          }
          if (v.length === 0) w.nil();
          else w.str(v);
          break;
        case 'string':
          if (typeof v !== 'string')
            throw new WireError(`encode ${this.name}: ${f.ts} is not a string`);
          w.str(textToBytes(v));
          break;
      }
    }
  }

  encode(value: T, opts: EncodeOptions = {}): Uint8Array {
    const w = new MsgpackWriter();
    this.write(w, value, opts);
    return w.finish();
  }

  /**
   * Reads one struct at the reader's position. As go-msgpack does: unknown keys are skipped,
   * a nil value (or a nil in place of the whole map) leaves the zero value, a repeated key
   * keeps the last value, and a key that differs in case is an unknown key.
   */
  read(r: MsgpackReader): T {
    const out: Record<string, unknown> = {};
    for (const f of this.fields) out[f.ts] = zeroOf(f.kind);
    if (r.tryNil()) return out as T;
    const n = r.mapHeader();
    for (let i = 0; i < n; i++) {
      const key = bytesToText(r.strOrBin());
      const f = this.byGoName.get(key);
      if (f === undefined) {
        r.skip();
        continue;
      }
      if (f.kind === 'bytes') {
        out[f.ts] = r.byteSlice(f.go);
        continue;
      }
      if (r.tryNil()) {
        out[f.ts] = zeroOf(f.kind);
        continue;
      }
      switch (f.kind) {
        case 'uint8':
        case 'uint16':
        case 'uint32':
          out[f.ts] = r.uint(UINT_MAX[f.kind] ?? 0, `${this.name}.${f.go}`);
          break;
        case 'int':
          out[f.ts] = r.integer();
          break;
        case 'bool':
          out[f.ts] = r.bool();
          break;
        case 'string':
          out[f.ts] = bytesToText(r.strOrBin());
          break;
      }
    }
    return out as T;
  }

  /** Decodes one struct from the start of `buf`; trailing bytes are ignored, as Go does. */
  decode(buf: Uint8Array): T {
    return this.read(new MsgpackReader(buf));
  }
}
