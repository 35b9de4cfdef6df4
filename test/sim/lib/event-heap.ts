// The simulators' event queue: a binary min-heap on (at, seq), so events due at the same
// simulated time run in the order they were scheduled (that order is part of a seed's run).

export interface SimEvent {
  /** Simulated time, ms. */
  at: number;
  /** Scheduling order, the tie-break. */
  seq: number;
  fn: () => void;
}

const less = (x: SimEvent, y: SimEvent): boolean => x.at < y.at || (x.at === y.at && x.seq < y.seq);

export class EventHeap {
  private a: SimEvent[] = [];
  get size(): number {
    return this.a.length;
  }
  peek(): SimEvent | undefined {
    return this.a[0];
  }
  push(e: SimEvent): void {
    const a = this.a;
    a.push(e);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!less(e, a[p]!)) break;
      a[i] = a[p]!;
      i = p;
    }
    a[i] = e;
  }
  pop(): SimEvent | undefined {
    const a = this.a;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= a.length) break;
        const r = l + 1;
        const c = r < a.length && less(a[r]!, a[l]!) ? r : l;
        if (!less(a[c]!, last)) break;
        a[i] = a[c]!;
        i = c;
      }
      a[i] = last;
    }
    return top;
  }
}
