// memberlist encryption (security.go layout, versions 0 and 1) and the keyring.
import { createDecipheriv } from 'node:crypto';

import t from 'tap';

import {
  decryptPayload,
  decryptStream,
  encryptOverhead,
  encryptPayload,
  encryptStream,
  encryptedLength,
  encryptionVersionFor,
  type EncryptionVersion,
} from '../../src/gossip/crypto.js';
import { Keyring, keyId } from '../../src/gossip/keyring.js';
import { WireError } from '../../src/gossip/msgpack.js';
import { MeshError } from '../../src/util/errors.js';
import {
  SERF_KEY,
  SERF_STREAM_ENCRYPTED,
  SERF_UDP_ENCRYPTED,
} from '../lib/gossip-serf-captures.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));
const fill = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v);
const errorCode = (fn: () => unknown): string | null => {
  try {
    fn();
  } catch (e) {
    return e instanceof MeshError ? e.code : 'not a MeshError';
  }
  return null;
};

t.test('sizes match memberlist', async (t) => {
  t.equal(encryptOverhead(0), 45);
  t.equal(encryptOverhead(1), 29);
  t.equal(encryptedLength(1, 100), 1 + 12 + 100 + 16);
  t.equal(encryptedLength(0, 100), 1 + 12 + 112 + 16);
  t.equal(encryptedLength(0, 0), 45, 'version 0 always pads, a full block for empty input');
  t.equal(encryptedLength(0, 16), 1 + 12 + 32 + 16);
  t.equal(encryptionVersionFor(1), 0);
  t.equal(encryptionVersionFor(2), 1);
  t.equal(encryptionVersionFor(5), 1);
});

t.test(
  'fixed-key, fixed-nonce vectors (NIST GCM test cases 2 and 4) in memberlist layout',
  async (t) => {
    // Test case 2: K = 0^128, IV = 0^96, P = 0^128.
    const out = encryptPayload(1, fill(16, 0), fill(16, 0), new Uint8Array(0), fill(12, 0));
    t.equal(
      hex(out),
      '01' +
        '00'.repeat(12) +
        '0388dace60b6a392f328c2b971b2fe78' +
        'ab6e47d42cec13bdf53a67b21257bddf',
      '[version][nonce][ciphertext][tag]',
    );
    // Test case 4: AES-128 with additional data (our label slot).
    const k = unhex('feffe9928665731c6d6a8f9467308308');
    const iv = unhex('cafebabefacedbaddecaf888');
    const p = unhex(
      'd9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39',
    );
    const a = unhex('feedfacedeadbeeffeedfacedeadbeefabaddad2');
    const c4 = encryptPayload(1, k, p, a, iv);
    t.equal(
      hex(c4),
      '01' +
        'cafebabefacedbaddecaf888' +
        '42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091' +
        '5bc94fbc3221a5db94fae95ae7121a47',
    );
    t.same(decryptPayload([k], c4, a).plain, p);
  },
);

t.test('version 0 pads with PKCS#7 inside the ciphertext', async (t) => {
  const key = fill(16, 9);
  const nonce = fill(12, 4);
  for (const [len, pad] of [
    [0, 16],
    [5, 11],
    [15, 1],
    [16, 16],
  ] as const) {
    const out = encryptPayload(0, key, fill(len, 0xaa), new Uint8Array(0), nonce);
    t.equal(out.length, encryptedLength(0, len), `length for ${len}`);
    t.equal(out[0], 0);
    const d = createDecipheriv('aes-128-gcm', key, nonce);
    d.setAuthTag(out.subarray(out.length - 16));
    const raw = Buffer.concat([d.update(out.subarray(13, out.length - 16)), d.final()]);
    t.equal(
      hex(raw),
      'aa'.repeat(len) + pad.toString(16).padStart(2, '0').repeat(pad),
      `${len} bytes + ${pad} pad`,
    );
    t.same(decryptPayload([key], out, new Uint8Array(0)).plain, fill(len, 0xaa));
  }
});

t.test('round trips: both versions, all key sizes, with and without additional data', async (t) => {
  let n = 0;
  for (const vsn of [0, 1] as EncryptionVersion[]) {
    for (const size of [16, 24, 32]) {
      for (const aad of [new Uint8Array(0), unhex('6c6162656c')]) {
        for (const len of [0, 1, 15, 16, 17, 100, 1400]) {
          const key = fill(size, size + len);
          const msg = fill(len, len & 0xff);
          const out = encryptPayload(vsn, key, msg, aad, fill(12, n++ & 0xff));
          t.equal(out.length, encryptedLength(vsn, len));
          const r = decryptPayload([fill(size, 1), key], out, aad);
          t.same(r.plain, msg);
          t.equal(r.keyIndex, 1, 'tries every key');
        }
      }
    }
  }
});

t.test('decryption failures are WireErrors', async (t) => {
  const key = fill(32, 1);
  const msg = encryptPayload(1, key, fill(20, 2), new Uint8Array(0), fill(12, 3));
  t.throws(() => decryptPayload([key], new Uint8Array(0), new Uint8Array(0)), /empty payload/);
  t.throws(
    () => decryptPayload([key], Uint8Array.of(2, ...msg.subarray(1)), new Uint8Array(0)),
    /unsupported encryption version 2/,
  );
  t.throws(() => decryptPayload([key], msg.subarray(0, 28), new Uint8Array(0)), /too small/);
  t.throws(
    () => decryptPayload([key], Uint8Array.of(0, ...fill(43, 0)), new Uint8Array(0)),
    /too small/,
    'v0 needs 45',
  );
  const tampered = msg.slice();
  tampered[20] = (tampered[20] as number) ^ 1;
  t.throws(
    () => decryptPayload([key], tampered, new Uint8Array(0)),
    /none of the 1 installed keys/,
  );
  t.throws(
    () => decryptPayload([key], msg, unhex('00')),
    /none of/,
    'additional data is authenticated',
  );
  t.throws(() => decryptPayload([], msg, new Uint8Array(0)), /no keys installed/);
  // The version byte is outside the AEAD (as in memberlist): relabel a v1 payload as v0 and the
  // tag still verifies, so the padding check is what stops garbage.
  const v1 = encryptPayload(1, key, Uint8Array.of(1, 2, 3, 0), new Uint8Array(0), fill(12, 5));
  t.throws(
    () => decryptPayload([key], Uint8Array.of(0, ...v1.subarray(1)), new Uint8Array(0)),
    /too small|padding/,
  );
  const big = encryptPayload(
    1,
    key,
    Uint8Array.of(...fill(40, 1), 0),
    new Uint8Array(0),
    fill(12, 6),
  );
  big[0] = 0;
  t.throws(() => decryptPayload([key], big, new Uint8Array(0)), /bad PKCS#7 padding byte 0/);
  const big2 = encryptPayload(
    1,
    key,
    Uint8Array.of(...fill(40, 1), 3, 2, 3),
    new Uint8Array(0),
    fill(12, 6),
  );
  big2[0] = 0;
  t.throws(() => decryptPayload([key], big2, new Uint8Array(0)), /bad PKCS#7 padding$/);
  for (const bad of [fill(15, 0), fill(17, 0), new Uint8Array(0)]) {
    try {
      encryptPayload(1, bad, fill(1, 0), new Uint8Array(0), fill(12, 0));
      t.fail('bad key accepted');
    } catch (e) {
      t.ok(e instanceof MeshError && e.code === 'EKEYRING', `${bad.length}-byte key refused`);
    }
  }
  t.throws(
    () => encryptPayload(1, key, fill(1, 0), new Uint8Array(0), fill(8, 0)),
    WireError,
    'nonce must be 12 bytes',
  );
});

t.test('stream framing: [10][len u32][payload], header and label authenticated', async (t) => {
  const key = fill(16, 2);
  const s = encryptStream(1, key, fill(10, 7), new Uint8Array(0), fill(12, 1));
  t.equal(hex(s.subarray(0, 5)), '0a' + (1 + 12 + 10 + 16).toString(16).padStart(8, '0'));
  t.same(decryptStream([key], s, new Uint8Array(0)).plain, fill(10, 7));
  t.equal(
    decryptStream([key], Uint8Array.of(...s, 0xee), new Uint8Array(0)).consumed,
    s.length,
    'stops at its length',
  );
  const labeled = encryptStream(0, key, fill(10, 7), unhex('6c'), fill(12, 1));
  t.same(decryptStream([key], labeled, unhex('6c')).plain, fill(10, 7));
  t.throws(() => decryptStream([key], labeled, new Uint8Array(0)), /none of/);
  t.throws(() => decryptStream([key], unhex('0a7fffffff'), new Uint8Array(0)), /larger than limit/);
  t.equal(
    errorCode(() => decryptStream([key], s.subarray(0, 20), new Uint8Array(0))),
    'EWIRE',
  );
});

t.test('serf-encrypted traffic opens with the same key', async (t) => {
  const s = decryptStream([SERF_KEY], unhex(SERF_STREAM_ENCRYPTED), new Uint8Array(0));
  t.equal(s.plain[0], 9, 'serf compresses inside the encryption');
  t.equal(unhex(SERF_STREAM_ENCRYPTED)[5], 1, 'encryption version 1 (protocol 2)');
  const u = decryptPayload([fill(32, 0), SERF_KEY], unhex(SERF_UDP_ENCRYPTED), new Uint8Array(0));
  t.equal(u.keyIndex, 1);
  t.equal(u.plain[0], 9);
});

t.test('keyring: install, use, remove, as memberlist', async (t) => {
  const k1 = fill(16, 1);
  const k2 = fill(24, 2);
  const k3 = fill(32, 3);
  const empty = new Keyring();
  t.equal(empty.enabled, false);
  t.same(empty.ids(), { primary: null, keys: [] });
  t.throws(() => empty.encryptPacket(1, fill(1, 0)), /keyring is empty/);
  t.throws(() => new Keyring(undefined, [k1]), /empty primary key/);

  const ring = new Keyring(k1, [k2, k1]);
  t.same(ring.getKeys(), [k1, k2], 'primary first, duplicates ignored');
  ring.install(k3);
  ring.install(k2);
  t.same(ring.getKeys(), [k1, k2, k3]);
  t.equal(
    errorCode(() => ring.install(fill(20, 0))),
    'EKEYRING',
  );
  t.throws(() => ring.remove(k1), /primary key is not allowed/);
  ring.use(k3);
  t.same(ring.getKeys(), [k3, k1, k2]);
  t.throws(() => ring.use(fill(16, 9)), /not in the keyring/);
  ring.remove(k1);
  ring.remove(fill(16, 9));
  t.same(ring.getKeys(), [k3, k2]);
  ring.getKeys()[0]?.fill(0);
  t.same(ring.primaryKey(), k3, 'callers get copies');

  t.equal(keyId(k1), keyId(fill(16, 1)));
  t.not(keyId(k1), keyId(k2));
  t.match(keyId(k1), /^[0-9a-f]{16}$/);
  t.notOk(keyId(k1).includes(hex(k1).slice(0, 8)), 'the id is not the key');
  t.same(ring.ids(), { primary: keyId(k3), keys: [keyId(k3), keyId(k2)] });
});

t.test('keyring rotation keeps old and new senders readable', async (t) => {
  const oldKey = fill(16, 1);
  const newKey = fill(16, 2);
  let n = 0;
  const rnd = (k: number): Uint8Array => fill(k, ++n);
  const a = new Keyring(oldKey, [], { randomBytes: rnd });
  const b = new Keyring(oldKey, [], { randomBytes: rnd });
  b.install(newKey);
  b.use(newKey);
  const fromA = a.encryptPacket(1, fill(3, 7), 'lbl');
  const fromB = b.encryptPacket(1, fill(3, 8), 'lbl');
  t.same(b.decryptPacket(fromA, 'lbl'), { plain: fill(3, 7), keyId: keyId(oldKey) });
  t.throws(() => a.decryptPacket(fromB, 'lbl'), /none of/);
  a.install(newKey);
  t.same(a.decryptPacket(fromB, 'lbl'), { plain: fill(3, 8), keyId: keyId(newKey) });
  t.equal(hex(fromA.subarray(1, 13)), hex(fill(12, 1)), 'nonce comes from the injected source');
  const st = a.encryptStream(0, fill(50, 1));
  t.same(b.decryptStream(st).plain, fill(50, 1));
});
