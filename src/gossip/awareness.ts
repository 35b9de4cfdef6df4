/**
 * Local health awareness (Lifeguard §3.1; memberlist awareness.go): a score in
 * [0, max − 1] that rises when this node misses acks or nacks it should have received, or has
 * to refute a suspicion about itself, and falls with each successful probe. Timeouts are
 * multiplied by score + 1, so a node that is itself slow or overloaded probes less often and
 * accuses others less. Pure; imports nothing.
 */

export class Awareness {
  private value = 0;

  /** @param max awarenessMaxMultiplier; 1 pins the score at 0. */
  constructor(private readonly max: number) {}

  /** Adds `delta` and clamps; returns true if the score changed. */
  applyDelta(delta: number): boolean {
    const before = this.value;
    this.value = Math.min(Math.max(this.value + delta, 0), this.max - 1);
    return this.value !== before;
  }

  /** 0 is healthy; max − 1 is the worst. */
  get score(): number {
    return this.value;
  }

  /** `timeout` (ms) scaled by the current health: timeout · (score + 1). */
  scaleTimeout(timeout: number): number {
    return timeout * (this.value + 1);
  }
}
