/**
 * The gossip keyring, with memberlist's semantics (keyring.go): an ordered set of AES keys
 * whose first entry is the primary. We encrypt with the primary and accept any installed key,
 * which is what lets a cluster rotate keys without a partition: install everywhere, use
 * everywhere, then remove the old key.
 *
 * Keys are never printed; `keyId()` gives a short SHA-256 prefix for diagnostics. Randomness
 * for nonces is injected (`randomBytes`), so the simulator can pin it.
 * May import node:crypto (hashing, AES-GCM; no I/O), ./crypto.js, ./msgpack.js.
 */

import { createHash, randomBytes as cryptoRandomBytes } from 'node:crypto';

import {
  NONCE_SIZE,
  decryptPayload,
  decryptStream,
  encryptPayload,
  encryptStream,
  validateKey,
  type EncryptionVersion,
} from './crypto.js';
import { MeshError } from '../util/errors.js';

import { copyBytes, textToBytes } from './msgpack.js';

/** Short, stable, non-reversible name for a key: the first 8 bytes of SHA-256, in hex. */
export function keyId(key: Uint8Array): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 16);
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export interface KeyringOptions {
  /** Source of nonces. @default node:crypto randomBytes */
  randomBytes?: (n: number) => Uint8Array;
}

export class Keyring {
  private keys: Uint8Array[] = [];
  private readonly random: (n: number) => Uint8Array;

  /** Like memberlist's NewKeyring: the primary first, then the others (duplicates ignored). */
  constructor(primary?: Uint8Array, others: readonly Uint8Array[] = [], opts: KeyringOptions = {}) {
    this.random = opts.randomBytes ?? ((n) => new Uint8Array(cryptoRandomBytes(n)));
    if (primary === undefined) {
      if (others.length > 0)
        throw new MeshError('EKEYRING', 'create keyring: empty primary key not allowed');
      return;
    }
    this.install(primary);
    for (const k of others) this.install(k);
  }

  /** Adds a key for decryption; the first key ever installed becomes the primary. No-op if present. */
  install(key: Uint8Array): void {
    validateKey(key);
    if (this.keys.some((k) => equal(k, key))) return;
    this.keys.push(copyBytes(key));
  }

  /** Makes an installed key the primary (memberlist UseKey). */
  use(key: Uint8Array): void {
    const i = this.keys.findIndex((k) => equal(k, key));
    if (i < 0)
      throw new MeshError(
        'EKEYRING',
        `use key ${keyId(key)}: key is not in the keyring (install it first)`,
      );
    const [k] = this.keys.splice(i, 1);
    this.keys.unshift(k as Uint8Array);
  }

  /** Removes a key; removing the primary is refused (make another key primary first). */
  remove(key: Uint8Array): void {
    const primary = this.keys[0];
    if (primary !== undefined && equal(primary, key)) {
      throw new MeshError(
        'EKEYRING',
        `remove key ${keyId(key)}: removing the primary key is not allowed (use another key first)`,
      );
    }
    this.keys = this.keys.filter((k) => !equal(k, key));
  }

  get enabled(): boolean {
    return this.keys.length > 0;
  }

  /** Copies of the keys, primary first. */
  getKeys(): Uint8Array[] {
    return this.keys.map((k) => copyBytes(k));
  }

  primaryKey(): Uint8Array | undefined {
    const k = this.keys[0];
    return k === undefined ? undefined : copyBytes(k);
  }

  /** Key ids, primary first, for `meshctl debug gossip`. */
  ids(): { primary: string | null; keys: string[] } {
    const keys = this.keys.map(keyId);
    return { primary: keys[0] ?? null, keys };
  }

  private primaryOrThrow(): Uint8Array {
    const k = this.keys[0];
    if (k === undefined)
      throw new MeshError('EKEYRING', 'encrypt: keyring is empty (install a key)');
    return k;
  }

  /** Encrypts a packet with the primary key; `label` is the additional data. */
  encryptPacket(vsn: EncryptionVersion, msg: Uint8Array, label = ''): Uint8Array {
    return encryptPayload(
      vsn,
      this.primaryOrThrow(),
      msg,
      textToBytes(label),
      this.random(NONCE_SIZE),
    );
  }

  /** Decrypts a packet trying every key, primary first; `keyId` says which key worked. */
  decryptPacket(msg: Uint8Array, label = ''): { plain: Uint8Array; keyId: string } {
    const r = decryptPayload(this.keys, msg, textToBytes(label));
    return { plain: r.plain, keyId: keyId(this.keys[r.keyIndex] as Uint8Array) };
  }

  /** `[10][len][payload]` stream framing with the primary key. */
  encryptStream(vsn: EncryptionVersion, msg: Uint8Array, label = ''): Uint8Array {
    return encryptStream(
      vsn,
      this.primaryOrThrow(),
      msg,
      textToBytes(label),
      this.random(NONCE_SIZE),
    );
  }

  decryptStream(
    buf: Uint8Array,
    label = '',
  ): { plain: Uint8Array; keyId: string; consumed: number } {
    const r = decryptStream(this.keys, buf, textToBytes(label));
    return {
      plain: r.plain,
      keyId: keyId(this.keys[r.keyIndex] as Uint8Array),
      consumed: r.consumed,
    };
  }
}
