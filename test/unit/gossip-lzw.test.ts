// LZW exactly as Go's compress/lzw (LSB, literal width 8), checked against hand-derived
// streams and against streams Go itself produced (captured from serf).
import t from 'tap';

import { lzwCompress, lzwDecompress } from '../../src/gossip/lzw.js';
import { WireError } from '../../src/gossip/msgpack.js';
import { decompressBody } from '../../src/gossip/packet.js';
import { codecs } from '../../src/gossip/wire.js';
import { SERF_STREAM_PLAIN, SERF_UDP_PLAIN } from '../lib/gossip-serf-captures.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));
const ascii = (s: string): Uint8Array => new TextEncoder().encode(s);

/** Deterministic bytes (xorshift32) so failures reproduce. */
function pseudo(n: number, seed: number, alphabet = 256): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = (x >>> 0) % alphabet;
  }
  return out;
}

t.test('hand-derived streams (9-bit codes packed LSB first)', async (t) => {
  // "aaa": clear(256) 'a'(97) 258(=aa, the KwKwK case) eof(257):
  // 256 | 97<<9 | 258<<18 | 257<<27 = 0x80C08C300 -> 00 c3 08 0c 08.
  t.equal(hex(lzwCompress(ascii('aaa'))), '00c3080c08');
  t.same(lzwDecompress(unhex('00c3080c08')), ascii('aaa'));
  // "ab": 256 | 97<<9 | 98<<18 | 257<<27 = 0x80988C300.
  t.equal(hex(lzwCompress(ascii('ab'))), '00c3880908');
  t.same(lzwDecompress(unhex('00c3880908')), ascii('ab'));
  // Empty input: clear then eof, as Go's Close does when nothing was written.
  t.equal(hex(lzwCompress(new Uint8Array(0))), '000302');
  t.same(lzwDecompress(unhex('000302')), new Uint8Array(0));
  // Older Go writers sent no leading clear: 97 | 258<<9 | 257<<18 = 0x4060461.
  t.same(lzwDecompress(unhex('61040604')), ascii('aaa'));
  // Bytes after end-of-data are ignored, as Go's reader stops at eof.
  t.same(lzwDecompress(unhex('00c3080c08ffff')), ascii('aaa'));
});

t.test('Go-produced streams from serf decode, and we re-compress them byte-exactly', async (t) => {
  for (const [what, capture, size] of [
    ['push/pull stream', SERF_STREAM_PLAIN, 683],
    ['UDP ack+alive', SERF_UDP_PLAIN, 216],
  ] as const) {
    const c = codecs.compress.decode(unhex(capture).subarray(1));
    const plain = lzwDecompress(c.buf);
    t.equal(plain.length, size, `${what}: ${c.buf.length} -> ${plain.length} bytes`);
    t.same(decompressBody(unhex(capture).subarray(1)), plain);
    t.equal(hex(lzwCompress(plain)), hex(c.buf), `${what}: our writer matches Go's bit for bit`);
  }
});

t.test('round trips across width changes and table resets', async (t) => {
  const cases: [string, Uint8Array][] = [
    ['one byte', new Uint8Array([0xff])],
    ['zeros 100k', new Uint8Array(100_000)],
    ['random 50k', pseudo(50_000, 1)],
    ['4-letter 200k', pseudo(200_000, 2, 4)],
    ['text-ish 30k', pseudo(30_000, 3, 40).map((b) => b + 60)],
  ];
  // Inputs sized to land the code count on the 512/1024/2048/4095 boundaries.
  for (let n = 250; n < 9000; n += 97) cases.push([`random ${n}`, pseudo(n, n)]);
  for (const [what, input] of cases) {
    const c = lzwCompress(input);
    t.ok(lzwDecompress(c, input.length).length === input.length, what);
    t.equal(hex(lzwDecompress(c, input.length)), hex(input), what);
  }
});

t.test('bad streams are WireErrors; output is capped', async (t) => {
  t.throws(() => lzwDecompress(new Uint8Array(0)), WireError, 'empty: no eof');
  t.throws(() => lzwDecompress(unhex('00c308')), /without an end-of-data/, 'cut before eof');
  // First code after clear is 258, which nothing has defined yet.
  t.throws(() => lzwDecompress(unhex('000502')), /invalid code 258/);
  const zeros = lzwCompress(new Uint8Array(1 << 20));
  t.equal(lzwDecompress(zeros, 1 << 20).length, 1 << 20, 'exactly at the cap is fine');
  t.throws(() => lzwDecompress(zeros, (1 << 20) - 1), /exceeds the 1048575-byte limit/);
  t.throws(
    () => decompressBody(codecs.compress.encode({ algo: 1, buf: zeros })),
    /unknown algorithm 1/,
  );
});
