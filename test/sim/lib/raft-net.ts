/**
 * Synchronous in-process raft network for unit tests (after etcd's `network` test helper):
 * RawNodes with MemoryStorage, a driver that persists every Ready and delivers messages until
 * the cluster is quiet, and cuts/isolation/drop filters. May import src/raft.
 */

import type { MessageType } from '../../../src/raft/index.js';
import {
  EntryType,
  MemoryStorage,
  RawNode,
  SeededRandom,
  decodeConfChange,
  raftConfig,
  type Entry,
  type Message,
  type RaftConfig,
  type ReadState,
} from '../../../src/raft/index.js';

export interface NetNode {
  id: number;
  rn: RawNode;
  storage: MemoryStorage;
  applied: Entry[];
  readStates: ReadState[];
}

export class RaftNet {
  readonly nodes = new Map<number, NetNode>();
  private cut = new Set<string>();
  /** Messages of these types are dropped. */
  readonly dropTypes = new Set<MessageType>();
  /** Every message delivered, for assertions. */
  readonly delivered: Message[] = [];
  /** Extra filter: return false to drop. */
  filter: ((m: Message) => boolean) | undefined;

  constructor(
    ids: number[],
    cfg: Partial<RaftConfig> = {},
    seed = 1,
    storages?: Map<number, MemoryStorage>,
  ) {
    const rnd = new SeededRandom(seed);
    for (const id of ids) {
      const storage = storages?.get(id) ?? MemoryStorage.bootstrap(ids);
      const rn = new RawNode(
        raftConfig(id, { checkQuorum: false, preVote: false, ...cfg }),
        storage,
        new SeededRandom(rnd.intn(2 ** 31)),
      );
      this.nodes.set(id, { id, rn, storage, applied: [], readStates: [] });
    }
  }

  /** Start a new (joining) node on `storage`, with the same config overrides. */
  addNode(id: number, storage: MemoryStorage, cfg: Partial<RaftConfig> = {}): NetNode {
    const rn = new RawNode(
      raftConfig(id, { checkQuorum: false, preVote: false, ...cfg }),
      storage,
      new SeededRandom(id),
    );
    const n: NetNode = { id, rn, storage, applied: [], readStates: [] };
    this.nodes.set(id, n);
    return n;
  }

  node(id: number): NetNode {
    const n = this.nodes.get(id);
    if (n === undefined) throw new Error(`no node ${id}`);
    return n;
  }

  raft(id: number): RawNode['raft'] {
    return this.node(id).rn.raft;
  }

  /** Run one node's Ready: persist, apply, advance; return its outgoing messages. */
  processReady(n: NetNode): Message[] {
    const out: Message[] = [];
    for (let i = 0; i < 100 && n.rn.hasReady(); i++) {
      const rd = n.rn.ready();
      out.push(...rd.messages);
      if (rd.snapshot) n.storage.applySnapshot(rd.snapshot);
      n.storage.append(rd.entries);
      if (rd.hardState) n.storage.setHardState(rd.hardState);
      out.push(...rd.persistedMessages);
      for (const e of rd.committedEntries) {
        n.applied.push(e);
        if (e.type === EntryType.ConfChange) n.rn.applyConfChange(decodeConfChange(e.data));
      }
      n.readStates.push(...rd.readStates);
      n.rn.advance(rd);
    }
    return out;
  }

  /** Deliver everything until no node has anything to do (bounded). */
  drain(maxRounds = 1000): void {
    for (let round = 0; round < maxRounds; round++) {
      const msgs: Message[] = [];
      for (const n of this.nodes.values()) msgs.push(...this.processReady(n));
      if (msgs.length === 0) return;
      for (const m of msgs) this.deliver(m);
    }
    throw new Error('raft net did not quiesce');
  }

  deliver(m: Message): void {
    if (this.cut.has(`${m.from}>${m.to}`) || this.dropTypes.has(m.type)) return;
    if (this.filter && !this.filter(m)) return;
    const n = this.nodes.get(m.to);
    if (n === undefined) return;
    this.delivered.push(m);
    n.rn.step({ ...m });
  }

  /** Inject a message and run to quiescence. */
  send(m: Message): void {
    this.deliver(m);
    this.drain();
  }

  tick(id: number, n = 1): void {
    for (let i = 0; i < n; i++) this.node(id).rn.tick();
  }

  tickAll(n = 1): void {
    for (let i = 0; i < n; i++) {
      for (const nd of this.nodes.values()) nd.rn.tick();
      this.drain();
    }
  }

  campaign(id: number): void {
    this.node(id).rn.campaign();
    this.drain();
  }

  propose(id: number, data: string): void {
    this.node(id).rn.propose(new TextEncoder().encode(data));
    this.drain();
  }

  cutBoth(a: number, b: number): void {
    this.cut.add(`${a}>${b}`);
    this.cut.add(`${b}>${a}`);
  }

  cutOneWay(from: number, to: number): void {
    this.cut.add(`${from}>${to}`);
  }

  isolate(id: number): void {
    for (const other of this.nodes.keys()) if (other !== id) this.cutBoth(id, other);
  }

  heal(): void {
    this.cut.clear();
    this.dropTypes.clear();
    this.filter = undefined;
  }

  /** Data of applied normal non-empty entries, decoded. */
  values(id: number): string[] {
    return this.node(id)
      .applied.filter((e) => e.type === EntryType.Normal && e.data.length > 0)
      .map((e) => new TextDecoder().decode(e.data));
  }
}

/** A storage pre-filled with entries of the given terms (index 1..n) and a hard state term. */
export function storageWithTerms(voters: number[], terms: number[], term?: number): MemoryStorage {
  const s = MemoryStorage.bootstrap(voters);
  s.append(
    terms.map((t, i) => ({
      term: t,
      index: i + 1,
      type: EntryType.Normal,
      data: new Uint8Array([i]),
    })),
  );
  s.setHardState({ term: term ?? terms[terms.length - 1] ?? 0, vote: 0, commit: 0 });
  return s;
}
