/**
 * Injected randomness for the raft core (election timeout jitter) and a seeded generator for
 * tests and the simulator. The daemon passes a generator seeded from crypto. May import nothing.
 */

export interface RaftRandom {
  /** Uniform integer in [0, n). */
  intn(n: number): number;
}

/** mulberry32: small, fast, deterministic per seed; not for cryptography. */
export class SeededRandom implements RaftRandom {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  intn(n: number): number {
    return Math.floor(this.next() * n);
  }
}
