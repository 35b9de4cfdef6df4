/**
 * The netdb driver: binds one deterministic NetdbCore (core.ts) to a running Memberlist.
 *
 * - Clock: Memberlist.clock (monotonic ms); one timer armed at `core.nextDeadline()`.
 * - Randomness: the gossip layer's seeded sfc32 (seed from node:crypto unless a test pins it).
 * - Transport: our messages are gossip user messages whose first byte is NETDB_MSG_TYPE, so
 *   other users of the user-message channel can share it (they must ignore that byte value);
 *   best-effort sends go over UDP, bulk and state syncs over the reliable (stream) path.
 * - Membership: gossip `join` → alive, `leave` of a *left* member → departed (entries deleted),
 *   of a dead one → failed (entries hidden until it returns or reapNodeMs passes).
 *
 * Bad input never throws out of here: undecodable messages are counted by the core. Local
 * commands throw UsageError/MeshError (bad names, not in the network, no such entry).
 * May import gossip/memberlist, gossip/swim and gossip/wire (types, constants), ./core,
 * ./config, util/.
 */

import { Memberlist, seededRandom } from '../gossip/memberlist.js';
import type { SwimEvent } from '../gossip/swim.js';
import { NodeState } from '../gossip/wire.js';
import type { NetdbConfig } from './config.js';
import {
  NetdbCore,
  type EntryView,
  type NetdbCounters,
  type NetdbEvent,
  type Send,
} from './core.js';

/**
 * First byte of every netdb user message. serf's message types are 0..~10; this value is
 * reserved for netdb on our gossip channel.
 */
export const NETDB_MSG_TYPE = 0x6e;

export interface NetworkDBOptions {
  config?: Partial<NetdbConfig>;
  /** 16 bytes to seed the PRNG (tests); random by default. */
  seed?: Uint8Array;
}

export interface NetworkDBCounters extends NetdbCounters {
  /** Sends the gossip layer refused (member unknown to it). */
  sendsRefused: number;
  /** Throws from the core on a remote input or a timer (a bug); counted, input dropped. */
  coreErrors: number;
  /** Throws from watch callbacks (their bug); counted. */
  watcherErrors: number;
}

export type WatchCallback = (ev: NetdbEvent) => void;

export class NetworkDB {
  readonly core: NetdbCore;
  private readonly ml: Memberlist;
  private readonly watchers = new Map<string, Set<WatchCallback>>();
  private timer: NodeJS.Timeout | null = null;
  private timerAt = Infinity;
  private closed = false;
  private readonly extra = { sendsRefused: 0, coreErrors: 0, watcherErrors: 0 };
  private readonly onEvent = (e: SwimEvent) => this.gossipEvent(e);

  private constructor(ml: Memberlist, o: NetworkDBOptions) {
    this.ml = ml;
    this.core = new NetdbCore({
      name: ml.name,
      config: o.config,
      rand: seededRandom(o.seed),
      now: Memberlist.clock(),
    });
  }

  /** Starts netdb on a running gossip node: takes its current members, then follows events. */
  static attach(ml: Memberlist, o: NetworkDBOptions = {}): NetworkDB {
    const db = new NetworkDB(ml, o);
    const now = Memberlist.clock();
    for (const m of ml.members()) {
      if (m.name === ml.name) continue;
      if (m.state === 'alive' || m.state === 'suspect') db.core.nodeAlive(now, m.name);
      else if (m.state === 'left') db.core.nodeLeft(now, m.name);
      else db.core.nodeFailed(now, m.name);
    }
    ml.on('event', db.onEvent);
    db.pump();
    return db;
  }

  // ---- API ----

  joinNetwork(netId: string): void {
    this.command(() => this.core.joinNetwork(Memberlist.clock(), netId));
  }

  leaveNetwork(netId: string): void {
    this.command(() => this.core.leaveNetwork(Memberlist.clock(), netId));
  }

  createEntry(table: string, netId: string, key: string, value: Uint8Array): void {
    this.command(() => this.core.createEntry(Memberlist.clock(), table, netId, key, value));
  }

  updateEntry(table: string, netId: string, key: string, value: Uint8Array): void {
    this.command(() => this.core.updateEntry(Memberlist.clock(), table, netId, key, value));
  }

  deleteEntry(table: string, netId: string, key: string): void {
    this.command(() => this.core.deleteEntry(Memberlist.clock(), table, netId, key));
  }

  getEntry(table: string, netId: string, key: string): EntryView | undefined {
    return this.core.getEntry(table, netId, key);
  }

  /** See NetdbCore.entryState: visible, hidden (owner failed), deleted (tombstone) or absent. */
  entryState(table: string, netId: string, key: string): ReturnType<NetdbCore['entryState']> {
    return this.core.entryState(table, netId, key);
  }

  getEntries(table: string, netId: string): EntryView[] {
    return this.core.getEntries(table, netId);
  }

  /** Calls `cb` for every change of `table` as readers see it; returns the unsubscribe. */
  watch(table: string, cb: WatchCallback): () => void {
    let set = this.watchers.get(table);
    if (!set) this.watchers.set(table, (set = new Set()));
    set.add(cb);
    return () => {
      set.delete(cb);
    };
  }

  /** Alive nodes in a network (ourselves included when joined), sorted. */
  peers(netId: string): string[] {
    return this.core.peers(netId);
  }

  networks(): string[] {
    return this.core.networks();
  }

  counters(): NetworkDBCounters {
    return { ...this.core.counters(), ...this.extra };
  }

  /**
   * Stops netdb (timer, listeners). It does not leave networks: peers keep our entries until
   * the gossip layer reports us gone (left: deleted; failed: hidden). Safe to call twice.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.core.stop();
    this.ml.off('event', this.onEvent);
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.watchers.clear();
  }

  // ---- plumbing ----

  private command(fn: () => void): void {
    if (this.closed) return;
    try {
      fn();
    } finally {
      this.pump();
    }
  }

  private input(fn: () => void): void {
    if (this.closed) return;
    try {
      fn();
    } catch {
      this.extra.coreErrors++;
    }
    this.pump();
  }

  private gossipEvent(e: SwimEvent): void {
    switch (e.type) {
      case 'user':
        if (e.payload.length > 0 && e.payload[0] === NETDB_MSG_TYPE) {
          this.input(() => this.core.receive(Memberlist.clock(), e.payload.subarray(1)));
        }
        break;
      case 'join':
        if (e.node.name !== this.ml.name)
          this.input(() => this.core.nodeAlive(Memberlist.clock(), e.node.name));
        break;
      case 'leave':
        if (e.node.state === NodeState.left)
          this.input(() => this.core.nodeLeft(Memberlist.clock(), e.node.name));
        else this.input(() => this.core.nodeFailed(Memberlist.clock(), e.node.name));
        break;
      default:
        break;
    }
  }

  private pump(): void {
    if (this.closed) return;
    for (let round = 0; round < 16 && this.core.hasReady(); round++) {
      const r = this.core.ready();
      for (const s of r.sends) this.send(s);
      for (const ev of r.events) this.notify(ev);
    }
    this.arm();
  }

  private send(s: Send): void {
    const buf = new Uint8Array(s.payload.length + 1);
    buf[0] = NETDB_MSG_TYPE;
    buf.set(s.payload, 1);
    let ok: boolean;
    try {
      ok = this.ml.sendUser(s.to, buf, s.reliable);
    } catch {
      ok = false;
    }
    if (!ok) this.extra.sendsRefused++;
  }

  private notify(ev: NetdbEvent): void {
    const set = this.watchers.get(ev.table);
    if (!set) return;
    for (const cb of [...set]) {
      try {
        cb(ev);
      } catch {
        this.extra.watcherErrors++;
      }
    }
  }

  private arm(): void {
    if (this.closed) return;
    const at = this.core.nextDeadline();
    if (this.timer && this.timerAt <= at) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = at;
    if (!Number.isFinite(at)) return;
    this.timer = setTimeout(
      () => {
        this.timer = null;
        this.timerAt = Infinity;
        this.input(() => this.core.tick(Memberlist.clock()));
      },
      Math.max(0, Math.ceil(at - Memberlist.clock())),
    );
    this.timer.unref();
  }
}
