/**
 * Transmit-limited broadcast queue (memberlist queue.go TransmitLimitedQueue): each queued
 * message is piggybacked on outgoing packets until it has been sent
 * retransmitMult · ceil(log10(N + 1)) times (SWIM §4.1: infection-style dissemination reaches
 * everyone in O(log N) rounds with high probability). Least-sent messages go first, then larger
 * ones (to fill the packet), then newer ones. A message with a name replaces any queued message
 * with the same name: a newer alive/suspect/dead about a node makes older ones pointless.
 * Pure; imports nothing.
 */

/** Transmissions per broadcast for a cluster of `n` members (memberlist util.go). */
export function retransmitLimit(retransmitMult: number, n: number): number {
  return retransmitMult * Math.ceil(Math.log10(n + 1));
}

export interface Broadcast<T> {
  /** Invalidation key: a newer broadcast with the same name replaces this one. */
  name: string | null;
  /** The message; encoded by the queue's `encode` only when first offered for sending. */
  value: T;
  /** Called once when the broadcast leaves the queue: `true` if fully sent, `false` if replaced. */
  finished?: (sent: boolean) => void;
}

/** A broadcast taken for sending: the message and its wire bytes. */
export interface Taken<T> {
  value: T;
  bytes: Uint8Array;
}

interface Item<T> {
  b: Broadcast<T>;
  /** Wire bytes, encoded lazily: broadcasts replaced or reset before sending cost nothing. */
  bytes: Uint8Array | null;
  transmits: number;
  id: number;
}

export class TransmitLimitedQueue<T> {
  private items: Item<T>[] = [];
  private readonly byName = new Map<string, Item<T>>();
  private nextId = 0;
  private sorted = true;

  /**
   * @param retransmitMult see SwimConfig.retransmitMult
   * @param numNodes current member count estimate (read at each getBroadcasts)
   * @param encode the wire bytes of a message (their length decides packing)
   */
  constructor(
    private readonly retransmitMult: number,
    private readonly numNodes: () => number,
    private readonly encode: (value: T) => Uint8Array,
  ) {}

  get length(): number {
    return this.items.length;
  }

  /** Queues `b`, dropping a queued broadcast with the same name. */
  queue(b: Broadcast<T>): void {
    if (b.name !== null) {
      const old = this.byName.get(b.name);
      if (old) {
        this.items.splice(this.items.indexOf(old), 1);
        old.b.finished?.(false);
      }
    }
    const it: Item<T> = { b, bytes: null, transmits: 0, id: this.nextId++ };
    if (b.name !== null) this.byName.set(b.name, it);
    this.items.push(it);
    this.sorted = false;
  }

  /**
   * Takes broadcasts whose bytes plus `overhead` each fit in `limit` bytes in total, counting a
   * transmission for each; those that reach the limit leave the queue.
   */
  getBroadcasts(overhead: number, limit: number): Taken<T>[] {
    if (this.items.length === 0) return [];
    if (!this.sorted) {
      for (const it of this.items) it.bytes ??= this.encode(it.b.value);
      this.items.sort(byPriority);
      this.sorted = true;
    }
    const max = retransmitLimit(this.retransmitMult, this.numNodes());
    const out: Taken<T>[] = [];
    let used = 0;
    let removed = false;
    for (const it of this.items) {
      const free = limit - used - overhead;
      if (free <= 0) break;
      const bytes = it.bytes as Uint8Array;
      if (bytes.length > free) continue;
      used += overhead + bytes.length;
      out.push({ value: it.b.value, bytes });
      it.transmits++;
      this.sorted = false;
      if (it.transmits >= max) {
        removed = true;
        it.transmits = -1;
      }
    }
    if (removed) {
      this.items = this.items.filter((it) => {
        if (it.transmits >= 0) return true;
        if (it.b.name !== null) this.byName.delete(it.b.name);
        it.b.finished?.(true);
        return false;
      });
    }
    return out;
  }

  /** Drops everything queued (memberlist Reset); each dropped broadcast finishes unsent. */
  reset(): void {
    const old = this.items;
    this.items = [];
    this.byName.clear();
    for (const it of old) it.b.finished?.(false);
  }

  /** Queued broadcasts and their transmit counts, least-sent first (for tests and debugging). */
  snapshot(): { name: string | null; transmits: number; bytes: number }[] {
    for (const it of this.items) it.bytes ??= this.encode(it.b.value);
    return [...this.items].sort(byPriority).map((it) => ({
      name: it.b.name,
      transmits: it.transmits,
      bytes: (it.bytes as Uint8Array).length,
    }));
  }
}

/** Least-sent first, then larger (to fill the packet), then newer (memberlist Less). */
function byPriority<T>(a: Item<T>, b: Item<T>): number {
  return (
    a.transmits - b.transmits ||
    (b.bytes as Uint8Array).length - (a.bytes as Uint8Array).length ||
    b.id - a.id
  );
}
