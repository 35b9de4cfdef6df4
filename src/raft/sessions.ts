/**
 * Client sessions for exactly-once proposals (thesis §6.3), for the state machine wrapper.
 *
 * Raft applies a retried proposal twice if both copies commit (a follower forwarded it to a
 * leader that lost leadership, the client retried elsewhere, both made it). Each proposal
 * therefore carries (client id, sequence number), clients number their requests 1, 2, 3… and
 * retry with the same number, and the state machine asks `admit()` before applying: the
 * decision depends only on the log, so every replica skips the same entries. The table belongs
 * in state machine snapshots (`toJSON`/`fromJSON`). Pure; may import nothing.
 */

export interface SessionEntry {
  seq: number;
  /** Result of the last applied request, to answer a retry without re-executing it. */
  result?: string;
}

export class SessionTable {
  private readonly last = new Map<string, SessionEntry>();

  /** True if (client, seq) is new and must be applied; false for a duplicate or stale retry. */
  admit(client: string, seq: number): boolean {
    const e = this.last.get(client);
    if (e !== undefined && seq <= e.seq) return false;
    this.last.set(client, { seq });
    return true;
  }

  /** Remember the result of the request just admitted for `client`. */
  setResult(client: string, result: string): void {
    const e = this.last.get(client);
    if (e !== undefined) e.result = result;
  }

  /** The last applied request of `client`, if any (to answer a duplicate). */
  lastApplied(client: string): SessionEntry | undefined {
    return this.last.get(client);
  }

  /**
   * Forget a client. Expiry must itself be a logged, deterministic decision (e.g. an entry
   * carrying the leader's time), never local wall-clock time on each replica.
   */
  expire(client: string): void {
    this.last.delete(client);
  }

  get size(): number {
    return this.last.size;
  }

  toJSON(): [string, SessionEntry][] {
    return [...this.last].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  }

  static fromJSON(rows: [string, SessionEntry][]): SessionTable {
    const t = new SessionTable();
    for (const [k, v] of rows) t.last.set(k, { ...v });
    return t;
  }
}
