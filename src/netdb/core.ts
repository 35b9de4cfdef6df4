/**
 * The netdb core: per-network replicated tables, deterministic (STYLE.md: etcd-io/raft).
 *
 * What Docker's networkdb (moby libnetwork/networkdb) does, as a state machine with no clock,
 * timers, randomness or I/O: the driver passes `now` (ms) into every call and a seeded random
 * source at construction; outputs are drained with `ready()` as sends `{to, payload, reliable}`
 * (to = a node name) and events for local watchers.
 *
 * Model:
 * - Network membership: each node's join/leave of each network is a record stamped with that
 *   node's network lamport clock, gossiped cluster-wide (own transmit-limited queue, to a few
 *   random members per round) and exchanged whole with one random member on start and every
 *   `pushPullIntervalMs` (anti-entropy).
 * - Entries: per (network, table, key) {value, owner, ltime, deleting, reapAt}. Only the owner
 *   writes; a remote write wins when its (ltime, owner) is greater. Deletes leave tombstones
 *   reaped after `reapEntryMs` (the residual reap time travels, so all nodes reap together).
 *   Table events are gossiped among the network's peers only (3 per round, each queued event
 *   sent for retransmitMult·ceil(log10(N+1)) rounds, fresh events relayed by receivers);
 *   a bulk sync (all entries both ways, reliable path) runs with every member of a network
 *   we have not exchanged with under its current join (all members when we join, a newcomer
 *   when it joins or when we first hear of it), when a failed peer returns, after a digest
 *   mismatch, and every `bulkSyncIntervalMs` with one random peer.
 * - Digests: every `digestIntervalMs` each node sends one random member of each network a
 *   count and hash of what it holds there; a member with a quiet queue whose table differs
 *   starts a bulk sync with it. Table events for a network we are not in yet are held for
 *   `holdMs` and applied on our join.
 * - Failure: a failed node's entries are hidden from readers, restored if it returns, removed
 *   after `reapNodeMs`. A node that left gracefully has its entries turned into tombstones.
 *
 * Where we differ from networkdb (improvements):
 * - Table events carry the owner's network join time, so an entry that outruns the owner's
 *   join event is accepted (networkdb drops it until the next bulk sync), and one from before
 *   a later leave is refused.
 * - The owner is the authority on its entries: when a peer shows us an entry we own that is
 *   newer than ours (we restarted with a fresh clock) we re-stamp ours above it, and one we do
 *   not hold any more gets a fresh tombstone. The same holds for our network records.
 *   Restarts therefore converge without waiting for tombstones to expire.
 * - An unanswered member sync is retried (bulkSyncTimeoutMs) while the member is in.
 * - Digests and held events (above): a gap left by a lost event or a lagging view of who is
 *   in a network closes in about a second, not at the next periodic bulk sync (issue 13,
 *   docs/netdb.md, "Service create race").
 *
 * May import ./config, ./wire and util/errors. No node:* modules, no Date.now, setTimeout or
 * Math.random.
 */

import { MeshError, UsageError } from '../util/errors.js';
import { DEFAULT_CONFIG, validateConfig, type NetdbConfig } from './config.js';
import {
  Kind,
  MAX_KEY_BYTES,
  MAX_NAME_BYTES,
  MAX_VALUE_BYTES,
  decodeMessage,
  encodeGossipParts,
  encodeMessage,
  encodeNetEvent,
  encodeNetEventParts,
  encodeTableEvent,
  gossipHeaderSize,
  type Message,
  type NetEvent,
  type TableEvent,
} from './wire.js';

/** Injected randomness: a uniform integer in [0, n). */
export interface NetdbRandom {
  intn(n: number): number;
}

export interface Send {
  /** Node name. */
  to: string;
  payload: Uint8Array;
  /** true: the reliable (stream) path; false: best-effort UDP. */
  reliable: boolean;
}

/** A change as readers see it: hidden entries read as deleted, restored ones as created. */
export interface NetdbEvent {
  type: 'create' | 'update' | 'delete';
  table: string;
  netId: string;
  key: string;
  /** For a delete, the last value readers saw. */
  value: Uint8Array;
  owner: string;
}

export interface EntryView {
  key: string;
  value: Uint8Array;
  owner: string;
}

export interface NetdbCounters {
  /** Entries readers see, in the networks we are in. */
  entries: number;
  /** Deleted entries waiting to be reaped. */
  tombstones: number;
  /** Entries of failed nodes, kept but not shown. */
  hidden: number;
  messagesSent: number;
  messagesReceived: number;
  bytesSent: number;
  bytesReceived: number;
  bulkSyncsSent: number;
  bulkSyncsReceived: number;
  /** Network-state exchanges started (push/pull of network membership records). */
  stateSyncsSent: number;
  /** Table and network events that changed our state. */
  eventsApplied: number;
  /** Events older than what we hold (or from before the owner's later leave), dropped. */
  staleDropped: number;
  /** Events identical to what we hold. */
  duplicates: number;
  /**
   * Messages for a network we are not in, dropped: bulk syncs, and table events that could
   * not be held (the hold was full).
   */
  notInNetwork: number;
  /**
   * Table events for a network we are not in (yet) held instead of dropped: a peer that
   * joined a moment before us starts gossiping before our own join (see `holdMs`).
   */
  held: number;
  /** Held events applied when we joined their network. */
  heldApplied: number;
  /** Held events dropped unapplied: `holdMs` passed without our join, or the hold was full. */
  heldExpired: number;
  /**
   * Full-table exchanges started with a member of a network we are in because we had not
   * exchanged with it since it (or we) joined: every member on our join, a newcomer later.
   */
  memberSyncs: number;
  /** Digests received that differed from our table while both sides were quiet. */
  digestMismatches: number;
  /** Bulk syncs started because of a digest mismatch (at most one per peer per bulkSyncTimeoutMs). */
  digestRepairs: number;
  /** Messages that did not decode. */
  badMessages: number;
  /** Our own entries or records re-stamped or re-deleted because a peer held a stale copy. */
  ownerCorrections: number;
  /** Tombstones reaped. */
  reapedTombstones: number;
  /** Entries of failed nodes removed after reapNodeMs. */
  reapedEntries: number;
}

interface Entry {
  value: Uint8Array;
  owner: string;
  ltime: number;
  joinLtime: number;
  deleting: boolean;
  /** For tombstones: when to reap (driver ms). */
  reapAt: number;
}

interface NetRecord {
  ltime: number;
  leaving: boolean;
  reapAt: number;
}

type NodeState = 'alive' | 'failed' | 'left';

interface NodeInfo {
  state: NodeState;
  reapAt: number;
}

interface QueueItem {
  bytes: Uint8Array;
  transmits: number;
  id: number;
}

/**
 * Transmit-limited queue of encoded events (memberlist queue.go semantics): a newer event with
 * the same name replaces a queued one; least-sent first, then larger, then newer; an event
 * leaves after `limit` transmissions. Unlike memberlist's, an event larger than the packet goes
 * out alone rather than never.
 */
class EventQueue {
  private readonly items = new Map<string, QueueItem>();
  private nextId = 0;

  get length(): number {
    return this.items.size;
  }

  queue(name: string, bytes: Uint8Array): void {
    this.items.delete(name);
    this.items.set(name, { bytes, transmits: 0, id: this.nextId++ });
  }

  clear(): void {
    this.items.clear();
  }

  /** Takes events for one packet; `skip` holds those already sent this round (not retaken). */
  take(budget: number, limit: number, skip: Set<Uint8Array>): Uint8Array[] {
    if (this.items.size === 0) return [];
    const all = [...this.items.entries()].sort(
      ([, a], [, b]) => a.transmits - b.transmits || b.bytes.length - a.bytes.length || b.id - a.id,
    );
    const out: Uint8Array[] = [];
    let used = 0;
    for (const [name, it] of all) {
      if (skip.has(it.bytes)) continue;
      if (used + it.bytes.length > budget && !(out.length === 0 && used === 0)) continue;
      used += it.bytes.length;
      out.push(it.bytes);
      skip.add(it.bytes);
      it.transmits++;
      if (it.transmits >= limit) this.items.delete(name);
      if (used >= budget) break;
    }
    return out;
  }
}

interface LocalNet {
  queue: EventQueue;
  /** Next periodic bulk sync. */
  nextBulk: number;
  /**
   * Member → the join record (its lamport time; 0 if we had none) under which we last
   * received its full table, by its request or its reply. A member of the network missing
   * here, or here under an older join, gets a full exchange (settle): networkdb's joiner syncs
   * with every node of the network, and an owner that sees a newcomer pushes its entries.
   */
  exchanged: Map<string, number>;
  /** Member → when our unanswered request for its table is retried. */
  asked: Map<string, number>;
  /** Next digest of this network to one random member. */
  nextDigest: number;
  /** Member → no digest-triggered sync with it before this time. */
  digestQuiet: Map<string, number>;
  /** Peers that came back from failure: bulk-sync with one of them at `resyncAt`. */
  resyncWith: Set<string>;
  /** 0: no resync pending. Returns are batched (a healed partition brings many at once). */
  resyncAt: number;
}

class Lamport {
  time = 0;
  witness(t: number): void {
    if (t > this.time) this.time = t;
  }
  next(): number {
    return ++this.time;
  }
}

export interface NetdbCoreOptions {
  /** Our node name (the gossip member name). */
  name: string;
  config?: Partial<NetdbConfig>;
  rand: NetdbRandom;
  /** The driver's clock (ms) at creation. */
  now: number;
}

const SEP = '\u0000';

/**
 * How long returns of failed peers are collected before one bulk sync with one of them: the
 * failure detector reports a healed partition member by member, and one
 * sync with any node of the other side brings its whole view.
 */
const RESYNC_BATCH_MS = 300;

const utf8 = new TextEncoder();

function checkName(op: string, what: string, s: string, max = MAX_NAME_BYTES): void {
  if (typeof s !== 'string') throw new UsageError(`${op}: ${what} must be text`);
  const n = utf8.encode(s).length;
  if (n === 0 || n > max) {
    throw new UsageError(`${op}: ${what} must be 1..${max} bytes of text`);
  }
}

export class NetdbCore {
  readonly name: string;
  readonly config: Readonly<NetdbConfig>;
  private readonly rand: NetdbRandom;
  private now: number;
  private readonly tableClock = new Lamport();
  private readonly netClock = new Lamport();
  /** netId → table → key → entry, for the networks we are in. */
  private readonly tables = new Map<string, Map<string, Map<string, Entry>>>();
  /** node → netId → record, ourselves included. */
  private readonly nodeNets = new Map<string, Map<string, NetRecord>>();
  private readonly nodes = new Map<string, NodeInfo>();
  private readonly local = new Map<string, LocalNet>();
  private readonly clusterQueue = new EventQueue();
  private nextGossip: number;
  private nextPushPull: number;
  /** A state exchange is owed (at start, until one is answered); retried at this time. */
  private statePullDue = true;
  private statePullRetryAt = 0;
  private nextReap = Infinity;
  /**
   * netId → (table, key) → the newest table event for a network we are not in, and when it
   * is dropped; applied on our join (see NetdbConfig.holdMs).
   */
  private readonly holds = new Map<string, Map<string, { ev: TableEvent; until: number }>>();
  private heldCount = 0;
  /**
   * Failed nodes whose entries we reaped → when we forget that. Peers reap a little later
   * than us (each counts reapNodeMs from its own detection): without this, a bulk sync from
   * one of them would bring the entries back as if their owner were new.
   */
  private readonly reapedNodes = new Map<string, number>();
  /** Who is in which network may have changed since settle() last compared members. */
  private membersChanged = true;
  /** Earliest retry of an unanswered member sync (Infinity: none). */
  private nextAskRetry = Infinity;
  private sends: Send[] = [];
  private events: NetdbEvent[] = [];
  private stopped = false;
  private readonly c: Omit<NetdbCounters, 'entries' | 'tombstones' | 'hidden'> = {
    messagesSent: 0,
    messagesReceived: 0,
    bytesSent: 0,
    bytesReceived: 0,
    bulkSyncsSent: 0,
    bulkSyncsReceived: 0,
    stateSyncsSent: 0,
    eventsApplied: 0,
    staleDropped: 0,
    duplicates: 0,
    notInNetwork: 0,
    held: 0,
    heldApplied: 0,
    heldExpired: 0,
    memberSyncs: 0,
    digestMismatches: 0,
    digestRepairs: 0,
    badMessages: 0,
    ownerCorrections: 0,
    reapedTombstones: 0,
    reapedEntries: 0,
  };

  constructor(o: NetdbCoreOptions) {
    checkName('create netdb', 'node name', o.name);
    const cfg = { ...DEFAULT_CONFIG, ...(o.config ?? {}) };
    if (o.config?.reapEntryMs !== undefined && o.config.reapNetworkMs === undefined) {
      cfg.reapNetworkMs =
        cfg.reapEntryMs + DEFAULT_CONFIG.reapNetworkMs - DEFAULT_CONFIG.reapEntryMs;
    }
    validateConfig(cfg);
    this.config = Object.freeze(cfg);
    this.name = o.name;
    this.rand = o.rand;
    this.now = o.now;
    // Random phases, so nodes started together do not gossip in lockstep (networkdb staggers).
    this.nextGossip = o.now + this.rand.intn(cfg.gossipIntervalMs);
    this.nextPushPull = o.now + cfg.pushPullIntervalMs / 2 + this.rand.intn(cfg.pushPullIntervalMs);
    this.nodeNets.set(o.name, new Map());
  }

  // ---- queries ----

  /** The entry readers see, or undefined (absent, deleted, or owned by a failed node). */
  getEntry(table: string, netId: string, key: string): EntryView | undefined {
    const e = this.tables.get(netId)?.get(table)?.get(key);
    if (!e || !this.visible(e)) return undefined;
    return { key, value: e.value, owner: e.owner };
  }

  /**
   * What became of an entry: `visible`, `hidden` (its owner failed: it may come back), `deleted`
   * (a tombstone: its owner removed it) or `absent` (never seen, or reaped).
   */
  entryState(
    table: string,
    netId: string,
    key: string,
  ): 'visible' | 'hidden' | 'deleted' | 'absent' {
    const e = this.tables.get(netId)?.get(table)?.get(key);
    if (!e) return 'absent';
    if (e.deleting) return 'deleted';
    return this.visible(e) ? 'visible' : 'hidden';
  }

  /** Visible entries of a table in a network, sorted by key. */
  getEntries(table: string, netId: string): EntryView[] {
    const t = this.tables.get(netId)?.get(table);
    if (!t) return [];
    const out: EntryView[] = [];
    for (const [key, e] of t)
      if (this.visible(e)) out.push({ key, value: e.value, owner: e.owner });
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  /** Alive nodes participating in a network, ourselves included when joined; sorted. */
  peers(netId: string): string[] {
    const out: string[] = [];
    for (const [node, nets] of this.nodeNets) {
      const r = nets.get(netId);
      if (!r || r.leaving) continue;
      if (node !== this.name && this.nodes.get(node)?.state !== 'alive') continue;
      out.push(node);
    }
    return out.sort();
  }

  /** Networks we are in, sorted. */
  networks(): string[] {
    return [...this.local.keys()].sort();
  }

  counters(): NetdbCounters {
    let entries = 0;
    let tombstones = 0;
    let hidden = 0;
    for (const tabs of this.tables.values()) {
      for (const t of tabs.values()) {
        for (const e of t.values()) {
          if (e.deleting) tombstones++;
          else if (this.visible(e)) entries++;
          else hidden++;
        }
      }
    }
    return { entries, tombstones, hidden, ...this.c };
  }

  /** Lamport clocks (tests, diagnostics). */
  clocks(): { table: number; network: number } {
    return { table: this.tableClock.time, network: this.netClock.time };
  }

  // ---- local commands ----

  joinNetwork(now: number, netId: string): void {
    this.advance(now);
    checkName('join network', 'network id', netId);
    if (this.local.has(netId)) return;
    const ltime = this.netClock.next();
    this.selfNets().set(netId, { ltime, leaving: false, reapAt: 0 });
    this.local.set(netId, {
      queue: new EventQueue(),
      nextBulk:
        now + this.config.bulkSyncIntervalMs / 2 + this.rand.intn(this.config.bulkSyncIntervalMs),
      exchanged: new Map(),
      asked: new Map(),
      nextDigest: now + this.rand.intn(this.config.digestIntervalMs),
      digestQuiet: new Map(),
      resyncWith: new Set(),
      resyncAt: 0,
    });
    this.tables.set(netId, new Map());
    this.queueNetEvent({ node: this.name, netId, ltime, leaving: false, reapMs: 0 });
    const held = this.holds.get(netId);
    if (held) {
      this.holds.delete(netId);
      this.heldCount -= held.size;
      for (const { ev } of held.values()) {
        this.c.heldApplied++;
        this.applyTable(netId, ev, true);
      }
    }
    this.membersChanged = true;
    this.settle();
  }

  /** Leaves a network: our tables of it are dropped; peers delete our entries in it. */
  leaveNetwork(now: number, netId: string): void {
    this.advance(now);
    if (!this.local.has(netId)) return;
    const ltime = this.netClock.next();
    const reapAt = now + this.config.reapNetworkMs;
    this.selfNets().set(netId, { ltime, leaving: true, reapAt });
    this.scheduleReap(reapAt);
    const tabs = this.tables.get(netId);
    if (tabs) {
      for (const [table, t] of tabs) {
        for (const [key, e] of t) {
          if (this.visible(e)) this.emit('delete', table, netId, key, e.value, e.owner);
        }
      }
    }
    this.tables.delete(netId);
    this.local.delete(netId);
    this.queueNetEvent({
      node: this.name,
      netId,
      ltime,
      leaving: true,
      reapMs: this.config.reapNetworkMs,
    });
    this.settle();
  }

  createEntry(now: number, table: string, netId: string, key: string, value: Uint8Array): void {
    this.advance(now);
    const t = this.writable('create entry', table, netId, key, value);
    const e = t.get(key);
    if (e && this.visible(e)) {
      throw new MeshError(
        'ECONFLICT',
        `create entry ${table}/${netId}/${key}: it exists (owned by ${e.owner}); update it instead`,
      );
    }
    this.localWrite(table, netId, key, value, false);
  }

  updateEntry(now: number, table: string, netId: string, key: string, value: Uint8Array): void {
    this.advance(now);
    const t = this.writable('update entry', table, netId, key, value);
    const e = t.get(key);
    if (!e || e.deleting || e.owner !== this.name) {
      throw new MeshError(
        'ENOTFOUND',
        `update entry ${table}/${netId}/${key}: no such entry of this node; create it first`,
      );
    }
    this.localWrite(table, netId, key, value, false);
  }

  deleteEntry(now: number, table: string, netId: string, key: string): void {
    this.advance(now);
    const t = this.writable('delete entry', table, netId, key, new Uint8Array(0));
    const e = t.get(key);
    if (!e || e.deleting || e.owner !== this.name) {
      throw new MeshError(
        'ENOTFOUND',
        `delete entry ${table}/${netId}/${key}: no such entry of this node`,
      );
    }
    this.localWrite(table, netId, key, e.value, true);
  }

  // ---- membership inputs (from the gossip layer) ----

  /** A member is alive: new, or back from failure or departure. */
  nodeAlive(now: number, node: string): void {
    this.advance(now);
    if (node === this.name) return;
    const prev = this.nodes.get(node);
    this.nodes.set(node, { state: 'alive', reapAt: 0 });
    this.reapedNodes.delete(node);
    this.membersChanged = true;
    if (prev?.state === 'failed') {
      // Back (a healed partition, a fast restart): show its entries again, and bulk-sync with
      // it soon for every shared network, since either side may have missed writes.
      for (const [netId, tabs] of this.tables) {
        for (const [table, t] of tabs) {
          for (const [key, e] of t) {
            if (e.owner === node && !e.deleting)
              this.emit('create', table, netId, key, e.value, node);
          }
        }
        const ln = this.local.get(netId);
        if (ln && this.nodeNets.get(node)?.get(netId)?.leaving === false) {
          ln.resyncWith.add(node);
          if (ln.resyncAt === 0) ln.resyncAt = now + RESYNC_BATCH_MS;
        }
      }
    }
    this.settle();
  }

  /** A member was declared dead by the failure detector: hide its entries. */
  nodeFailed(now: number, node: string): void {
    this.advance(now);
    if (node === this.name) return;
    const prev = this.nodes.get(node);
    if (prev?.state === 'failed' || prev?.state === 'left') return;
    const reapAt = now + this.config.reapNodeMs;
    this.nodes.set(node, { state: 'failed', reapAt });
    this.scheduleReap(reapAt);
    for (const [netId, tabs] of this.tables) {
      for (const [table, t] of tabs) {
        for (const [key, e] of t) {
          if (e.owner === node && !e.deleting)
            this.emit('delete', table, netId, key, e.value, node);
        }
      }
    }
    this.settle();
  }

  /** A member left the cluster gracefully: its entries are deleted, its networks left. */
  nodeLeft(now: number, node: string): void {
    this.advance(now);
    if (node === this.name) return;
    const prevState = this.nodes.get(node)?.state;
    const reapAt = now + this.config.reapNodeMs;
    this.nodes.set(node, { state: 'left', reapAt });
    this.scheduleReap(reapAt);
    for (const [netId, tabs] of this.tables) {
      for (const [table, t] of tabs) {
        for (const [key, e] of t) {
          if (e.owner !== node || e.deleting) continue;
          if (prevState !== 'failed') this.emit('delete', table, netId, key, e.value, node);
          this.tombstone(e, now + this.config.reapEntryMs);
        }
      }
    }
    // Its memberships go with it; a stale join of it is harmless while it is 'left' (no
    // peer, its table events refused), and if it returns it re-announces them.
    this.nodeNets.delete(node);
    this.settle();
  }

  // ---- message input ----

  /** A netdb message from a peer (the payload after the driver's type byte). */
  receive(now: number, payload: Uint8Array): void {
    this.advance(now);
    if (this.stopped) return;
    this.c.messagesReceived++;
    this.c.bytesReceived += payload.length;
    let m: Message;
    try {
      m = decodeMessage(payload);
    } catch {
      this.c.badMessages++;
      return;
    }
    if (m.from === this.name) return;
    switch (m.kind) {
      case Kind.gossip:
        for (const e of m.events) this.applyTable(m.netId, e, false);
        break;
      case Kind.bulk:
        this.onBulk(m);
        break;
      case Kind.netEvents:
        for (const e of m.events) this.applyNet(e, false);
        break;
      case Kind.digest:
        this.onDigest(m);
        break;
      case Kind.netState:
        this.netClock.witness(m.ltime);
        for (const e of m.events) this.applyNet(e, true);
        if (m.reply) {
          this.statePullDue = false;
          this.statePullRetryAt = 0;
        } else {
          this.sendMsg(m.from, this.netStateMessage(true), true);
        }
        break;
    }
    this.settle();
  }

  // ---- time ----

  /** When `tick` must next be called (Infinity: only on input). */
  nextDeadline(): number {
    if (this.stopped) return Infinity;
    let d = Math.min(this.nextReap, this.nextPushPull);
    if (this.statePullRetryAt > 0) d = Math.min(d, this.statePullRetryAt);
    if (!this.gossipIdle()) d = Math.min(d, this.nextGossip);
    d = Math.min(d, this.nextAskRetry);
    for (const n of this.local.values()) {
      d = Math.min(d, n.nextBulk, n.nextDigest);
      if (n.resyncAt > 0) d = Math.min(d, n.resyncAt);
    }
    for (const h of this.holds.values()) {
      const first = h.values().next().value;
      if (first) d = Math.min(d, first.until);
    }
    return d;
  }

  tick(now: number): void {
    this.advance(now);
    if (this.stopped) return;
    if (now >= this.nextGossip) {
      this.gossip();
      this.nextGossip = nextTick(this.nextGossip, now, this.config.gossipIntervalMs);
    }
    for (const [netId, n] of this.local) {
      if (now >= n.nextBulk) {
        n.nextBulk = nextTick(n.nextBulk, now, this.config.bulkSyncIntervalMs);
        const p = this.randomPeers(netId, 1)[0];
        if (p !== undefined) this.sendBulk(netId, p, false);
      }
      if (now >= n.nextDigest) {
        n.nextDigest = nextTick(n.nextDigest, now, this.config.digestIntervalMs);
        this.sendDigest(netId, n);
      }
    }
    this.expireHolds();
    if (this.statePullRetryAt > 0 && now >= this.statePullRetryAt) {
      this.statePullRetryAt = 0;
      this.statePullDue = true;
    }
    if (now >= this.nextPushPull) {
      this.nextPushPull = nextTick(this.nextPushPull, now, this.config.pushPullIntervalMs);
      this.statePullDue = true;
    }
    if (now >= this.nextReap) this.reap();
    this.settle();
  }

  hasReady(): boolean {
    return this.sends.length > 0 || this.events.length > 0;
  }

  ready(): { sends: Send[]; events: NetdbEvent[] } {
    const r = { sends: this.sends, events: this.events };
    this.sends = [];
    this.events = [];
    return r;
  }

  /** Stops all output; later inputs are ignored. */
  stop(): void {
    this.stopped = true;
    this.sends = [];
  }

  // ---- internals: local writes ----

  private selfNets(): Map<string, NetRecord> {
    return this.nodeNets.get(this.name) as Map<string, NetRecord>;
  }

  private writable(
    op: string,
    table: string,
    netId: string,
    key: string,
    value: Uint8Array,
  ): Map<string, Entry> {
    checkName(op, 'table', table);
    checkName(op, 'network id', netId);
    checkName(op, 'key', key, MAX_KEY_BYTES);
    if (!(value instanceof Uint8Array) || value.length > MAX_VALUE_BYTES) {
      throw new UsageError(
        `${op} ${table}/${netId}/${key}: value must be at most ${MAX_VALUE_BYTES} bytes`,
      );
    }
    const tabs = this.tables.get(netId);
    if (!tabs || !this.local.has(netId)) {
      throw new MeshError(
        'ENOTFOUND',
        `${op} ${table}/${netId}/${key}: this node is not in network ${netId} (join it first)`,
      );
    }
    let t = tabs.get(table);
    if (!t) {
      t = new Map();
      tabs.set(table, t);
    }
    return t;
  }

  private localWrite(
    table: string,
    netId: string,
    key: string,
    value: Uint8Array,
    del: boolean,
  ): void {
    const t = this.tables.get(netId)?.get(table) as Map<string, Entry>;
    const prev = t.get(key);
    const joinLtime = this.selfNets().get(netId)?.ltime ?? 0;
    const e: Entry = {
      value: del ? value : value.slice(),
      owner: this.name,
      ltime: this.tableClock.next(),
      joinLtime,
      deleting: del,
      reapAt: del ? this.now + this.config.reapEntryMs : 0,
    };
    t.set(key, e);
    if (del) {
      this.scheduleReap(e.reapAt);
      this.emit('delete', table, netId, key, e.value, this.name);
    } else {
      this.emit(
        prev && !prev.deleting ? 'update' : 'create',
        table,
        netId,
        key,
        e.value,
        this.name,
      );
    }
    this.queueTable(netId, table, key, e);
    this.settle();
  }

  // ---- internals: applying remote state ----

  private visible(e: Entry): boolean {
    return !e.deleting && (e.owner === this.name || this.nodes.get(e.owner)?.state !== 'failed');
  }

  private ownerVisible(owner: string): boolean {
    return owner === this.name || this.nodes.get(owner)?.state !== 'failed';
  }

  /** Applies one table event; returns whether it changed our state. */
  private applyTable(netId: string, ev: TableEvent, fromBulk: boolean): boolean {
    const ln = this.local.get(netId);
    const tabs = this.tables.get(netId);
    if (!ln || !tabs) {
      this.hold(netId, ev);
      return false;
    }
    this.tableClock.witness(ev.ltime);
    if (ev.owner === this.name) return this.ownerCheck(netId, ev);
    if (this.reapedNodes.has(ev.owner) || !this.learnMember(ev.owner, netId, ev.joinLtime)) {
      this.c.staleDropped++;
      return false;
    }
    let t = tabs.get(ev.table);
    if (!t) {
      t = new Map();
      tabs.set(ev.table, t);
    }
    const prev = t.get(ev.key);
    if (prev) {
      if (prev.ltime === ev.ltime && prev.owner === ev.owner) {
        // The same (ltime, owner) with other content: the owner restarted with a fresh clock
        // and reused the time. Pick the same winner everywhere; the owner then re-stamps its
        // real state above both (ownerCheck).
        if (sameContent(prev, ev) || compareContent(prev, ev) >= 0) {
          this.c.duplicates++;
          return false;
        }
      } else if (prev.ltime > ev.ltime || (prev.ltime === ev.ltime && prev.owner > ev.owner)) {
        this.c.staleDropped++;
        return false;
      }
    }
    const reapMs = Math.min(ev.reapMs, this.config.reapEntryMs);
    const e: Entry = {
      value: ev.value,
      owner: ev.owner,
      ltime: ev.ltime,
      joinLtime: ev.joinLtime,
      deleting: ev.deleting,
      reapAt: ev.deleting ? this.now + reapMs : 0,
    };
    if (ev.deleting) {
      // Readers saw the last live value; keep it in the tombstone for the delete event.
      if (prev && !prev.deleting) e.value = prev.value;
      this.scheduleReap(e.reapAt);
    }
    t.set(ev.key, e);
    this.c.eventsApplied++;
    const before = prev !== undefined && this.visible(prev);
    const after = this.visible(e);
    if (!before && after) this.emit('create', ev.table, netId, ev.key, e.value, e.owner);
    else if (before && after) this.emit('update', ev.table, netId, ev.key, e.value, e.owner);
    else if (before && !after) this.emit('delete', ev.table, netId, ev.key, prev.value, prev.owner);
    if (!fromBulk || ln.queue.length < this.config.maxRebroadcastQueue) {
      this.queueTable(netId, ev.table, ev.key, e);
    }
    return true;
  }

  /**
   * What a message of `node` about network `netId` tells of its membership there: it was in
   * since its join `joinLtime`. Records a join we had not heard of yet (the join record may
   * come later, or have been lost). Returns false when we hold a later *leave* of it, or it
   * left the cluster: the message is stale. Only a later leave makes it stale: a later join
   * may be the node re-asserting its membership (see ownerNetCheck).
   */
  private learnMember(node: string, netId: string, joinLtime: number): boolean {
    let nets = this.nodeNets.get(node);
    const rec = nets?.get(netId);
    if (rec && rec.leaving && rec.ltime >= joinLtime) return false;
    if (this.nodes.get(node)?.state === 'left') return false;
    if (!rec || rec.ltime < joinLtime) {
      if (!nets) {
        nets = new Map();
        this.nodeNets.set(node, nets);
      }
      nets.set(netId, { ltime: joinLtime, leaving: false, reapAt: 0 });
      this.netClock.witness(joinLtime);
      this.membersChanged = true;
    }
    return true;
  }

  /**
   * A table event for a network we are not in. A member that joined a moment before us gossips
   * to us as soon as it hears our join record; dropping it would leave the entry missing until
   * a bulk sync. Keep the newest per key, bounded in time and count.
   */
  private hold(netId: string, ev: TableEvent): void {
    let h = this.holds.get(netId);
    const k = ev.table + SEP + ev.key;
    const cur = h?.get(k);
    if (cur) {
      if (cur.ev.ltime > ev.ltime || (cur.ev.ltime === ev.ltime && cur.ev.owner >= ev.owner)) {
        this.c.duplicates++;
        return;
      }
      h?.delete(k);
      this.heldCount--;
    }
    if (this.heldCount >= this.config.maxHeldEvents) {
      this.c.notInNetwork++;
      return;
    }
    if (!h) {
      h = new Map();
      this.holds.set(netId, h);
    }
    h.set(k, { ev, until: this.now + this.config.holdMs });
    this.heldCount++;
    this.c.held++;
  }

  /** Drops held events older than holdMs (each network's map is in arrival order). */
  private expireHolds(): void {
    for (const [netId, h] of this.holds) {
      for (const [k, it] of h) {
        if (it.until > this.now) break;
        h.delete(k);
        this.heldCount--;
        this.c.heldExpired++;
      }
      if (h.size === 0) this.holds.delete(netId);
    }
  }

  /**
   * A peer showed us an entry we own. If it is newer than ours (or we no longer hold it while
   * it is live), we lost state in a restart: re-stamp ours above it, or delete it anew.
   */
  private ownerCheck(netId: string, ev: TableEvent): boolean {
    const t = this.tables.get(netId)?.get(ev.table);
    const mine = t?.get(ev.key);
    if (mine && mine.owner !== this.name) return false;
    if (mine) {
      if (ev.ltime < mine.ltime || (ev.ltime === mine.ltime && sameContent(mine, ev))) {
        if (ev.ltime === mine.ltime) this.c.duplicates++;
        else this.c.staleDropped++;
        return false;
      }
      mine.ltime = this.tableClock.next();
      mine.joinLtime = this.selfNets().get(netId)?.ltime ?? 0;
      if (mine.deleting) {
        mine.reapAt = this.now + this.config.reapEntryMs;
        this.scheduleReap(mine.reapAt);
      }
      this.c.ownerCorrections++;
      this.queueTable(netId, ev.table, ev.key, mine);
      return true;
    }
    if (ev.deleting) return false;
    const tabs = this.tables.get(netId) as Map<string, Map<string, Entry>>;
    let tt = t;
    if (!tt) {
      tt = new Map();
      tabs.set(ev.table, tt);
    }
    const e: Entry = {
      value: new Uint8Array(0),
      owner: this.name,
      ltime: this.tableClock.next(),
      joinLtime: this.selfNets().get(netId)?.ltime ?? 0,
      deleting: true,
      reapAt: this.now + this.config.reapEntryMs,
    };
    tt.set(ev.key, e);
    this.scheduleReap(e.reapAt);
    this.c.ownerCorrections++;
    this.queueTable(netId, ev.table, ev.key, e);
    return true;
  }

  /** Applies one network membership record; returns whether it changed our state. */
  private applyNet(ev: NetEvent, fromState: boolean): boolean {
    this.netClock.witness(ev.ltime);
    if (ev.node === this.name) return this.ownerNetCheck(ev);
    let nets = this.nodeNets.get(ev.node);
    const rec = nets?.get(ev.netId);
    if (rec && rec.ltime >= ev.ltime) {
      if (rec.ltime === ev.ltime) this.c.duplicates++;
      else this.c.staleDropped++;
      return false;
    }
    if (ev.leaving && ev.reapMs === 0) return false;
    if (!nets) {
      nets = new Map();
      this.nodeNets.set(ev.node, nets);
    }
    const reapAt = ev.leaving ? this.now + Math.min(ev.reapMs, this.config.reapNetworkMs) : 0;
    nets.set(ev.netId, { ltime: ev.ltime, leaving: ev.leaving, reapAt });
    this.membersChanged = true;
    if (ev.leaving) {
      this.scheduleReap(reapAt);
      // The node left the network, not the cluster: its entries there are deleted.
      const tabs = this.tables.get(ev.netId);
      if (tabs) {
        for (const [table, t] of tabs) {
          for (const [key, e] of t) {
            if (e.owner !== ev.node || e.deleting) continue;
            if (this.visible(e)) this.emit('delete', table, ev.netId, key, e.value, e.owner);
            this.tombstone(e, this.now + this.config.reapEntryMs);
          }
        }
      }
    }
    this.c.eventsApplied++;
    if (!fromState || this.clusterQueue.length < this.config.maxRebroadcastQueue) {
      this.queueNetEvent({ ...ev, reapMs: ev.leaving ? Math.max(1, reapAt - this.now) : 0 });
    }
    return true;
  }

  /** Someone holds a record of our membership at least as new as ours: re-assert ours above it. */
  private ownerNetCheck(ev: NetEvent): boolean {
    const mine = this.selfNets().get(ev.netId);
    if (mine && mine.ltime > ev.ltime) return false;
    if (mine && mine.ltime === ev.ltime && mine.leaving === ev.leaving) {
      this.c.duplicates++;
      return false;
    }
    if (!mine && ev.leaving) return false;
    const joined = this.local.has(ev.netId);
    const ltime = this.netClock.next();
    const reapAt = joined ? 0 : this.now + this.config.reapNetworkMs;
    this.selfNets().set(ev.netId, { ltime, leaving: !joined, reapAt });
    if (!joined) this.scheduleReap(reapAt);
    this.c.ownerCorrections++;
    if (joined) {
      // Peers may have refused our entries as older than the record they held: resend them.
      for (const [table, t] of this.tables.get(ev.netId) ?? []) {
        for (const [key, e] of t)
          if (e.owner === this.name) this.queueTable(ev.netId, table, key, e);
      }
    }
    this.queueNetEvent({
      node: this.name,
      netId: ev.netId,
      ltime,
      leaving: !joined,
      reapMs: joined ? 0 : this.config.reapNetworkMs,
    });
    return true;
  }

  private onBulk(m: Extract<Message, { kind: typeof Kind.bulk }>): void {
    this.c.bulkSyncsReceived++;
    this.tableClock.witness(m.ltime);
    const ln = this.local.get(m.netId);
    if (!ln) {
      this.c.notInNetwork++;
      return;
    }
    for (const e of m.events) this.applyTable(m.netId, e, true);
    // After applying: the sender's own entries told us its join, if we had not heard it.
    ln.exchanged.set(m.from, this.joinOf(m.from, m.netId));
    ln.asked.delete(m.from);
    this.membersChanged = true;
    if (!m.reply) this.sendBulk(m.netId, m.from, true);
  }

  /** The lamport time of a node's current join of a network; 0 if none is known. */
  private joinOf(node: string, netId: string): number {
    const r = this.nodeNets.get(node)?.get(netId);
    return r && !r.leaving ? r.ltime : 0;
  }

  /**
   * A member's digest of a network. Both sides quiet (nothing queued) and different tables:
   * something was missed (a lost event, a member one of us did not know of yet); exchange
   * full tables with it now rather than at the next periodic bulk sync.
   */
  private onDigest(m: Extract<Message, { kind: typeof Kind.digest }>): void {
    const ln = this.local.get(m.netId);
    // Not in it (we just left; the sender has not heard yet): a digest asks for nothing.
    if (!ln) return;
    if (!this.learnMember(m.from, m.netId, m.joinLtime)) return;
    if (ln.queue.length > 0) return;
    const d = this.digestOf(m.netId);
    if (d.count === m.count && d.hash === m.hash) return;
    this.c.digestMismatches++;
    if (this.now < (ln.digestQuiet.get(m.from) ?? 0)) return;
    ln.digestQuiet.set(m.from, this.now + this.config.bulkSyncTimeoutMs);
    this.c.digestRepairs++;
    this.sendBulk(m.netId, m.from, false);
  }

  /** Count and order-independent hash (sum of per-entry FNV-1a) of everything we hold. */
  private digestOf(netId: string): { count: number; hash: number } {
    let count = 0;
    let hash = 0;
    for (const [table, t] of this.tables.get(netId) ?? []) {
      for (const [key, e] of t) {
        count++;
        const id = `${table}${SEP}${key}${SEP}${e.owner}${SEP}${e.ltime}${SEP}${e.deleting ? 1 : 0}`;
        hash = (hash + fnv1a(id)) >>> 0;
      }
    }
    return { count, hash };
  }

  private sendDigest(netId: string, ln: LocalNet): void {
    if (ln.queue.length > 0) return;
    const p = this.randomPeers(netId, 1)[0];
    if (p === undefined) return;
    const d = this.digestOf(netId);
    const payload = encodeMessage({
      kind: Kind.digest,
      from: this.name,
      netId,
      joinLtime: this.joinOf(this.name, netId),
      count: d.count,
      hash: d.hash,
    });
    this.sendMsg(p, payload, false);
  }

  private tombstone(e: Entry, reapAt: number): void {
    e.deleting = true;
    e.reapAt = reapAt;
    this.scheduleReap(reapAt);
  }

  // ---- internals: output ----

  private emit(
    type: NetdbEvent['type'],
    table: string,
    netId: string,
    key: string,
    value: Uint8Array,
    owner: string,
  ): void {
    this.events.push({ type, table, netId, key, value, owner });
  }

  private sendMsg(to: string, payload: Uint8Array, reliable: boolean): void {
    if (this.stopped) return;
    this.c.messagesSent++;
    this.c.bytesSent += payload.length;
    this.sends.push({ to, payload, reliable });
  }

  private wireEvent(netId: string, table: string, key: string, e: Entry): TableEvent {
    return {
      table,
      key,
      owner: e.owner,
      ltime: e.ltime,
      joinLtime:
        e.owner === this.name ? (this.selfNets().get(netId)?.ltime ?? e.joinLtime) : e.joinLtime,
      deleting: e.deleting,
      reapMs: e.deleting ? Math.max(0, Math.ceil(e.reapAt - this.now)) : 0,
      value: e.deleting ? new Uint8Array(0) : e.value,
    };
  }

  private queueTable(netId: string, table: string, key: string, e: Entry): void {
    const ln = this.local.get(netId);
    if (!ln) return;
    ln.queue.queue(table + SEP + key, encodeTableEvent(this.wireEvent(netId, table, key, e)));
  }

  private queueNetEvent(ev: NetEvent): void {
    this.clusterQueue.queue(ev.node + SEP + ev.netId, encodeNetEvent(ev));
  }

  private sendBulk(netId: string, to: string, reply: boolean): void {
    const tabs = this.tables.get(netId);
    if (!tabs) return;
    const events: TableEvent[] = [];
    for (const [table, t] of tabs)
      for (const [key, e] of t) events.push(this.wireEvent(netId, table, key, e));
    let payload: Uint8Array;
    try {
      payload = encodeMessage({
        kind: Kind.bulk,
        from: this.name,
        netId,
        reply,
        ltime: this.tableClock.time,
        events,
      });
    } catch {
      // Over MAX_MESSAGE_BYTES: far beyond the tables this is built for; gossip still works.
      this.c.badMessages++;
      return;
    }
    this.c.bulkSyncsSent++;
    this.sendMsg(to, payload, true);
  }

  private netStateMessage(reply: boolean): Uint8Array {
    const events: NetEvent[] = [];
    for (const [node, nets] of this.nodeNets) {
      if (node !== this.name && this.nodes.get(node)?.state === 'left') continue;
      for (const [netId, r] of nets) {
        events.push({
          node,
          netId,
          ltime: r.ltime,
          leaving: r.leaving,
          reapMs: r.leaving ? Math.max(1, Math.ceil(r.reapAt - this.now)) : 0,
        });
      }
    }
    return encodeMessage({
      kind: Kind.netState,
      from: this.name,
      reply,
      ltime: this.netClock.time,
      events,
    });
  }

  private gossipIdle(): boolean {
    if (this.clusterQueue.length > 0) return false;
    for (const n of this.local.values()) if (n.queue.length > 0) return false;
    return true;
  }

  private gossip(): void {
    const budget = this.config.maxPacketBytes;
    for (const [netId, ln] of this.local) {
      if (ln.queue.length === 0) continue;
      const peers = this.randomPeers(netId, this.config.gossipNodes);
      if (peers.length === 0) {
        // No member known: each one we learn of later gets a full exchange (settle), so
        // nothing queued here can be missed by it.
        ln.queue.clear();
        continue;
      }
      const n = this.peers(netId).length;
      const limit = this.config.retransmitMult * Math.ceil(Math.log10(n + 1));
      const room = budget - gossipHeaderSize(this.name, netId, 255);
      const taken = new Set<Uint8Array>();
      for (let k = 0; k < this.config.maxGossipPackets; k++) {
        const parts = ln.queue.take(room, limit, taken);
        if (parts.length === 0) break;
        const payload = encodeGossipParts(this.name, netId, parts);
        for (const p of peers) this.sendMsg(p, payload, false);
      }
    }
    if (this.clusterQueue.length > 0) {
      const alive = this.aliveNodes();
      if (alive.length === 0) {
        this.clusterQueue.clear();
        return;
      }
      const targets = this.pick(alive, this.config.gossipNodes);
      const limit = this.config.retransmitMult * Math.ceil(Math.log10(alive.length + 2));
      const parts = this.clusterQueue.take(
        budget - gossipHeaderSize(this.name, '', 255),
        limit,
        new Set(),
      );
      if (parts.length === 0) return;
      const payload = encodeNetEventParts(this.name, parts);
      for (const to of targets) this.sendMsg(to, payload, false);
    }
  }

  /**
   * Actions due at once after any input: the first bulk sync of a network (or a resync with a
   * returned peer), and the state exchange owed at start and every pushPullIntervalMs.
   */
  private settle(): void {
    if (this.stopped) return;
    for (const [netId, ln] of this.local) {
      if (ln.resyncAt > 0 && this.now >= ln.resyncAt) {
        ln.resyncAt = 0;
        const back = [...ln.resyncWith].filter((p) => this.nodes.get(p)?.state === 'alive');
        ln.resyncWith.clear();
        const p = this.pick(back, 1)[0];
        if (p !== undefined) this.sendBulk(netId, p, false);
      }
    }
    if (this.membersChanged || this.now >= this.nextAskRetry) this.syncMembers();
    if (this.statePullDue) {
      const p = this.pick(this.aliveNodes(), 1)[0];
      if (p !== undefined) {
        this.statePullDue = false;
        this.statePullRetryAt = this.now + this.config.bulkSyncTimeoutMs;
        this.c.stateSyncsSent++;
        this.sendMsg(p, this.netStateMessage(false), true);
      }
    }
  }

  /**
   * Full exchange with every member of each of our networks we have not exchanged with under
   * its current join: all of them when we join, a newcomer when it joins (or when we first
   * hear of it: a join record may arrive after the member's own messages). networkdb's joiner
   * bulk-syncs with every node of the network; one random peer is not enough, as it may not
   * have the entries of a third member that joined at the same instant.
   */
  private syncMembers(): void {
    this.membersChanged = false;
    this.nextAskRetry = Infinity;
    for (const [netId, ln] of this.local) {
      const peers = this.peers(netId);
      for (const p of ln.asked.keys()) if (!peers.includes(p)) ln.asked.delete(p);
      for (const p of peers) {
        if (p === this.name || ln.exchanged.get(p) === this.joinOf(p, netId)) continue;
        let retry = ln.asked.get(p);
        if (retry === undefined || this.now >= retry) {
          retry = this.now + this.config.bulkSyncTimeoutMs;
          ln.asked.set(p, retry);
          this.c.memberSyncs++;
          this.sendBulk(netId, p, false);
        }
        this.nextAskRetry = Math.min(this.nextAskRetry, retry);
      }
    }
  }

  private aliveNodes(): string[] {
    const out: string[] = [];
    for (const [n, i] of this.nodes) if (i.state === 'alive') out.push(n);
    return out.sort();
  }

  private randomPeers(netId: string, k: number): string[] {
    return this.pick(
      this.peers(netId).filter((p) => p !== this.name),
      k,
    );
  }

  /** Up to k distinct random elements (partial Fisher-Yates on a copy). */
  private pick(xs: string[], k: number): string[] {
    const a = [...xs];
    const n = Math.min(k, a.length);
    for (let i = 0; i < n; i++) {
      const j = i + this.rand.intn(a.length - i);
      const tmp = a[i] as string;
      a[i] = a[j] as string;
      a[j] = tmp;
    }
    return a.slice(0, n);
  }

  // ---- internals: time and reaping ----

  private advance(now: number): void {
    if (now > this.now) this.now = now;
    // While nothing is queued the gossip grid is slept through; keep its phase.
    if (this.nextGossip <= this.now && this.gossipIdle()) {
      this.nextGossip = nextTick(this.nextGossip, this.now, this.config.gossipIntervalMs);
    }
  }

  private scheduleReap(at: number): void {
    if (at < this.nextReap) this.nextReap = at;
  }

  private reap(): void {
    const now = this.now;
    let next = Infinity;
    const gone = new Set<string>();
    for (const [node, info] of this.nodes) {
      if (info.state === 'alive') continue;
      if (info.reapAt <= now) {
        gone.add(node);
        this.nodes.delete(node);
        this.nodeNets.delete(node);
        if (info.state === 'failed') this.reapedNodes.set(node, now + this.config.reapEntryMs);
      } else next = Math.min(next, info.reapAt);
    }
    for (const [node, until] of this.reapedNodes) {
      if (until <= now) this.reapedNodes.delete(node);
      else next = Math.min(next, until);
    }
    for (const tabs of this.tables.values()) {
      for (const t of tabs.values()) {
        for (const [key, e] of t) {
          if (gone.has(e.owner)) {
            t.delete(key);
            if (!e.deleting) this.c.reapedEntries++;
            else this.c.reapedTombstones++;
          } else if (e.deleting) {
            if (e.reapAt <= now) {
              t.delete(key);
              this.c.reapedTombstones++;
            } else next = Math.min(next, e.reapAt);
          }
        }
      }
    }
    for (const ln of this.local.values()) {
      for (const node of gone) {
        ln.exchanged.delete(node);
        ln.digestQuiet.delete(node);
      }
    }
    for (const nets of this.nodeNets.values()) {
      for (const [netId, r] of nets) {
        if (!r.leaving) continue;
        if (r.reapAt <= now) nets.delete(netId);
        else next = Math.min(next, r.reapAt);
      }
    }
    this.nextReap = next;
  }
}

/** 32-bit FNV-1a of a string's UTF-16 code units (a digest term, not a security hash). */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** Tombstones compare equal whatever value they keep for the delete event. */
function sameContent(a: Entry, b: TableEvent): boolean {
  if (a.deleting !== b.deleting) return false;
  return a.deleting || bytesEqual(a.value, b.value);
}

/** A total order on content, for equal (ltime, owner): tombstone first, then by bytes. */
function compareContent(a: Entry, b: TableEvent): number {
  if (a.deleting !== b.deleting) return a.deleting ? -1 : 1;
  if (a.deleting) return 0;
  const n = Math.min(a.value.length, b.value.length);
  for (let i = 0; i < n; i++) {
    const d = (a.value[i] as number) - (b.value[i] as number);
    if (d !== 0) return d;
  }
  return a.value.length - b.value.length;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The first point of the grid `last + k·interval` (k ≥ 1) after `now`. */
function nextTick(last: number, now: number, interval: number): number {
  if (now < last) return last;
  return last + (Math.floor((now - last) / interval) + 1) * interval;
}
