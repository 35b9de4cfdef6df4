/**
 * Suspicion timers (Lifeguard §3.2; memberlist suspicion.go and util.go): a suspicion starts at
 * a maximum timeout and decays logarithmically towards a minimum as independent members confirm
 * it, so a failure seen by many is declared quickly while one confused accuser cannot get a
 * healthy node killed fast. Deadline-based: the core checks `deadline` against its injected
 * clock; nothing here reads time. Pure; imports nothing.
 */

/**
 * Minimum suspicion time in ms: mult · max(1, log10(max(1, n))) · interval, with the node scale
 * truncated to thousandths as memberlist does (time.Duration(nodeScale*1000)).
 */
export function suspicionTimeout(suspicionMult: number, n: number, interval: number): number {
  const nodeScale = Math.max(1, Math.log10(Math.max(1, n)));
  return (suspicionMult * Math.trunc(nodeScale * 1000) * interval) / 1000;
}

/**
 * Time left in ms after `n` of `k` expected confirmations, `elapsed` ms into the suspicion:
 * max − (log(n + 1) / log(k + 1)) · (max − min), floored to whole ms, never below min.
 * The result is negative when the suspicion is already overdue.
 */
export function remainingSuspicionTime(
  n: number,
  k: number,
  elapsed: number,
  min: number,
  max: number,
): number {
  const frac = Math.log(n + 1) / Math.log(k + 1);
  const raw = max - frac * (max - min);
  const timeout = Math.max(Math.floor(raw), min);
  return timeout - elapsed;
}

export class Suspicion {
  /** Confirmations counted so far (the original accuser is not one). */
  n = 0;
  /** When the suspect is to be declared dead, in the core's ms clock. */
  deadline: number;
  private readonly confirmations = new Set<string>();

  /**
   * @param from the first accuser; its later messages do not count as confirmations
   * @param k confirmations that bring the timeout down to `min`; below 1 the timeout is `min`
   */
  constructor(
    from: string,
    readonly k: number,
    readonly min: number,
    readonly max: number,
    readonly start: number,
  ) {
    this.confirmations.add(from);
    this.deadline = start + (k < 1 ? min : max);
  }

  /**
   * Counts a new accuser and pulls the deadline in. Returns true if it was new (and the core
   * should re-gossip the suspicion, so others learn of the confirmation), false for a repeat or
   * once `k` confirmations are in.
   */
  confirm(from: string, now: number): boolean {
    if (this.n >= this.k || this.confirmations.has(from)) return false;
    this.confirmations.add(from);
    this.n++;
    const remaining = remainingSuspicionTime(this.n, this.k, now - this.start, this.min, this.max);
    this.deadline = now + Math.max(remaining, 0);
    return true;
  }
}
