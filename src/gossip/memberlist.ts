/**
 * The gossip driver: a `Memberlist` owns one deterministic SWIM core (swim.ts) and gives it the
 * real world, per the driver contract in docs/gossip.md: the monotonic clock, one timer armed at
 * `core.nextDeadline()`, a PRNG seeded from node:crypto, the keyring, and the transport
 * (transport.ts). After every input it drains `ready()`: packets are sealed (compound, LZW, CRC
 * for peers with protocol max >= 5, encryption, label) and sent; stream requests are dialled,
 * written, answered and reported back through exactly one `streamDone`; events go to listeners.
 *
 * Bad input never throws out of here: undecodable packets and streams are counted and dropped.
 * May import node:crypto, node:events, node:net (types), node:perf_hooks and the gossip modules.
 */

import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';

import { MeshError, UsageError } from '../util/errors.js';
import { LAN_CONFIG, type SwimConfig } from './config.js';
import { encryptOverhead } from './crypto.js';
import type { Keyring } from './keyring.js';
import { labelOverhead } from './label.js';
import { WireError } from './msgpack.js';
import { decodePacket, openStream, sealMessages, sealStream } from './packet.js';
import { decodeStreamMessage, encodeStreamMessage } from './stream.js';
import {
  Swim,
  formatAddress,
  parseAddress,
  type Address,
  type Member,
  type OutStream,
  type StreamMessage,
  type SwimDelegate,
  type SwimEvent,
  type SwimRandom,
} from './swim.js';
import { Transport, readMessage, type TransportCounters } from './transport.js';
import { maxDecompressedBytes, NodeState } from './wire.js';

export interface MemberlistOptions {
  /** Unique member name. */
  name: string;
  /** Address to bind and advertise (the host's underlay address). */
  bindAddr: string;
  /** UDP and TCP port. 0 picks a free one. @default 7946 */
  port?: number;
  /** SWIM timing. @default LAN_CONFIG */
  config?: SwimConfig;
  /** Encrypt with its primary key and accept any installed key. @default none (plaintext) */
  keyring?: Keyring | null;
  /** memberlist >= 0.3 label; '' means none (memberlist 0.2 peers such as serf 0.9 have none). @default '' */
  label?: string;
  /** LZW-compress packets when it makes them smaller, streams always (EnableCompression). @default true */
  compress?: boolean;
  /** Node metadata (serf puts its tags here), at most 512 bytes. @default empty */
  meta?: Uint8Array;
  delegate?: SwimDelegate;
  /** Seed for the PRNG (tests); by default 128 bits from node:crypto. */
  seed?: Uint8Array;
  /** Largest stream message accepted, bytes. @default 40 MiB (memberlist HEAD's cap) */
  maxStreamBytes?: number;
}

/** Driver counters, next to the core's and the transport's. */
export interface DriverCounters {
  /** Datagrams dropped whole: bad label, decryption, CRC, or garbage. */
  badPackets: number;
  /** Parts of otherwise good packets that did not decode. */
  badMessages: number;
  /** Inbound streams that failed to read or decode. */
  badStreams: number;
  /** Outbound streams that ended in an error (refused, timeout, garbage reply). */
  streamErrors: number;
  /** Throws from the core on an input (a bug or a refused value); counted, input dropped. */
  coreErrors: number;
  /**
   * Times the one timer fired. With the transport's packetsIn and streamsIn this is the
   * gossip layer's share of event-loop wakeups, which is most of an idle node's CPU.
   */
  timerFires: number;
  /** Timer fires after which the core had nothing to send or report (early, or nothing due). */
  timerFiresIdle: number;
}

export interface MemberView {
  name: string;
  addr: string;
  state: 'alive' | 'suspect' | 'dead' | 'left';
  incarnation: number;
  /** Milliseconds since the last state change. */
  sinceMs: number;
  vsn: number[];
  meta: string;
}

const STATE_NAMES: Record<number, MemberView['state']> = {
  [NodeState.alive]: 'alive',
  [NodeState.suspect]: 'suspect',
  [NodeState.dead]: 'dead',
  [NodeState.left]: 'left',
};

/** sfc32 seeded from 16 bytes: fast, and reproducible when a test pins the seed. */
export function seededRandom(seed: Uint8Array = randomBytes(16)): SwimRandom {
  if (seed.length < 16) throw new UsageError('seed gossip random: want 16 bytes');
  const v = new DataView(seed.buffer, seed.byteOffset, 16);
  let a = v.getUint32(0);
  let b = v.getUint32(4);
  let c = v.getUint32(8);
  let d = v.getUint32(12) | 1;
  const next = () => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return t >>> 0;
  };
  for (let i = 0; i < 12; i++) next();
  return {
    intn(n: number): number {
      if (!(n > 0)) return 0;
      // 53 random bits, so modulo bias is negligible for any member count.
      const x = (next() >>> 5) * 67108864 + (next() >>> 6);
      return Math.floor((x / 9007199254740992) * n);
    },
  };
}

function parseIPv4(a: string): Uint8Array | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(a);
  if (!m) return null;
  const b = m.slice(1).map(Number);
  return b.every((x) => x <= 255) ? Uint8Array.from(b) : null;
}

/** Emits `'event'` with every {@link SwimEvent} of the core. */
export class Memberlist extends EventEmitter {
  readonly name: string;
  readonly core: Swim;
  readonly transport: Transport;
  readonly keyring: Keyring | null;
  readonly label: string;
  readonly counters: DriverCounters = {
    badPackets: 0,
    badMessages: 0,
    badStreams: 0,
    streamErrors: 0,
    coreErrors: 0,
    timerFires: 0,
    timerFiresIdle: 0,
  };
  private readonly compress: boolean;
  private readonly maxStreamBytes: number;
  private readonly cfg: SwimConfig;
  private timer: NodeJS.Timeout | null = null;
  private timerAt = Infinity;
  private armPending = false;
  private stopped = false;
  /** Protocol max of peers by address, for the CRC decision (memberlist rawSendMsgPacket). */
  private readonly pmax = new Map<Address, number>();
  private joinWaiters: ((r: { contacted: number; errors: string[] }) => void)[] = [];
  private leaveWaiters: (() => void)[] = [];
  private joinChain: Promise<unknown> = Promise.resolve();

  private constructor(o: MemberlistOptions, transport: Transport, core: Swim) {
    super();
    this.name = o.name;
    this.transport = transport;
    this.core = core;
    this.keyring = o.keyring ?? null;
    this.label = o.label ?? '';
    this.compress = o.compress ?? true;
    this.maxStreamBytes = o.maxStreamBytes ?? maxDecompressedBytes;
    this.cfg = o.config ?? LAN_CONFIG;
  }

  /** Monotonic milliseconds: the clock the core runs on. */
  static clock(this: void): number {
    return performance.now();
  }

  /** Binds the transport and starts the core (alive at incarnation 1, timers running). */
  static async create(o: MemberlistOptions): Promise<Memberlist> {
    const addr = parseIPv4(o.bindAddr);
    if (!addr) {
      throw new UsageError(
        `create gossip node ${o.name}: bind address ${JSON.stringify(o.bindAddr)} is not an IPv4 address`,
      );
    }
    let self: Memberlist | null = null;
    const transport = await Transport.listen(
      { bindAddr: o.bindAddr, port: o.port ?? 7946 },
      {
        packet: (from, buf) => self?.onPacket(from, buf),
        stream: (from, sock) => {
          if (self) self.onStream(from, sock);
          else sock.destroy();
        },
      },
    );
    try {
      const label = o.label ?? '';
      const core = new Swim({
        name: o.name,
        addr,
        port: transport.port,
        meta: o.meta,
        config: o.config ?? LAN_CONFIG,
        rand: seededRandom(o.seed),
        now: Memberlist.clock(),
        delegate: o.delegate,
        // The keyring may be enabled later (install + use), so always reserve the room.
        packetOverhead: labelOverhead(label) + (o.keyring ? encryptOverhead(1) : 0),
      });
      self = new Memberlist(o, transport, core);
      self.pump();
      return self;
    } catch (e) {
      await transport.close();
      throw e;
    }
  }

  get port(): number {
    return this.transport.port;
  }

  get address(): Address {
    return formatAddress(parseIPv4(this.transport.bindAddr) as Uint8Array, this.transport.port);
  }

  /**
   * Joins through `seeds` (`ip:port`): one push/pull each. Resolves with how many answered;
   * joins are serialized so each `joinDone` matches its call.
   */
  join(seeds: readonly string[]): Promise<{ contacted: number; errors: string[] }> {
    for (const s of seeds) parseAddress(s);
    const run = () =>
      new Promise<{ contacted: number; errors: string[] }>((resolve) => {
        if (this.stopped) {
          resolve({ contacted: 0, errors: ['gossip node is shut down'] });
          return;
        }
        this.joinWaiters.push(resolve);
        this.input(() => this.core.join(Memberlist.clock(), seeds));
      });
    const p = this.joinChain.then(run, run);
    this.joinChain = p;
    return p;
  }

  /**
   * Graceful leave: broadcasts our departure and waits until it has been sent its full number
   * of times (`leaveDone`) or `timeoutMs` passes. Call `shutdown()` afterwards.
   */
  leave(timeoutMs = 5000): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      if (this.stopped) {
        resolve(false);
        return;
      }
      const t = setTimeout(() => resolve(false), timeoutMs);
      this.leaveWaiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
      this.input(() => this.core.leave(Memberlist.clock()));
    });
  }

  setMeta(meta: Uint8Array): void {
    this.core.setMeta(Memberlist.clock(), meta);
    this.pump();
  }

  broadcastUser(payload: Uint8Array, name: string | null = null): void {
    this.core.broadcastUser(payload, name, Memberlist.clock());
    this.pump();
  }

  sendUser(to: string, payload: Uint8Array, reliable = false): boolean {
    const now = Memberlist.clock();
    const ok = reliable
      ? this.core.sendUserReliable(now, to, payload)
      : this.core.sendUser(now, to, payload);
    this.pump();
    return ok;
  }

  /** Stops the core, the timer and every socket. Safe to call twice. */
  async shutdown(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.core.shutdown();
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const w of this.joinWaiters.splice(0))
      w({ contacted: 0, errors: ['gossip node is shut down'] });
    await this.transport.close();
  }

  /** Members as plain values (addresses as strings), ourselves included. */
  members(): MemberView[] {
    const now = Memberlist.clock();
    return this.core.members().map((m: Member) => ({
      name: m.name,
      addr: formatAddress(m.addr, m.port),
      state: STATE_NAMES[m.state] ?? 'dead',
      incarnation: m.incarnation,
      sinceMs: Math.max(0, Math.round(now - m.stateChange)),
      vsn: [...m.vsn],
      meta: Buffer.from(m.meta).toString('base64'),
    }));
  }

  /** Everything `meshctl debug gossip` shows. */
  status(): {
    name: string;
    addr: string;
    health: number;
    incarnation: number;
    keys: { primary: string | null; keys: string[] } | null;
    members: MemberView[];
    counters: DriverCounters & TransportCounters & Swim['counters'] & { openStreams: number };
  } {
    return {
      name: this.name,
      addr: this.address,
      health: this.core.healthScore,
      incarnation: this.core.localIncarnation,
      keys: this.keyring ? this.keyring.ids() : null,
      members: this.members(),
      counters: {
        ...this.core.counters,
        ...this.transport.counters,
        ...this.counters,
        openStreams: this.transport.openStreams,
      },
    };
  }

  // ---- inputs ----

  /** Runs one core input; a throw is a dropped input, never a crash. Then drains. */
  private input(fn: () => void): void {
    if (this.stopped) return;
    try {
      fn();
    } catch {
      this.counters.coreErrors++;
    }
    this.pump();
  }

  private onPacket(from: string, buf: Uint8Array): void {
    if (this.stopped) return;
    let pkt;
    try {
      pkt = decodePacket(buf, { keyring: this.keyring, label: this.label });
    } catch {
      this.counters.badPackets++;
      return;
    }
    this.counters.badMessages += pkt.errors.length + pkt.truncated;
    if (pkt.messages.length === 0) return;
    const now = Memberlist.clock();
    for (const m of pkt.messages) {
      try {
        this.core.step(now, from, m);
      } catch {
        this.counters.coreErrors++;
      }
    }
    this.pump();
  }

  private parseStream(buf: Uint8Array): StreamMessage {
    const o = openStream(buf, {
      keyring: this.keyring,
      label: this.label,
      maxDecompressed: this.maxStreamBytes,
    });
    return decodeStreamMessage(o.type, o.body);
  }

  private onStream(from: string, sock: Socket): void {
    const clock = Memberlist.clock;
    readMessage(sock, (b) => this.parseStream(b), {
      deadline: clock() + this.cfg.tcpTimeout,
      clock,
      maxBytes: this.maxStreamBytes,
    }).then(
      (msg) => {
        if (this.stopped) {
          sock.destroy();
          return;
        }
        let reply: StreamMessage | null = null;
        try {
          reply = this.core.handleStream(clock(), from, msg);
        } catch {
          this.counters.coreErrors++;
        }
        if (reply) {
          let bytes: Uint8Array | null = null;
          try {
            bytes = this.sealStreamMessage(reply);
          } catch {
            this.counters.coreErrors++;
          }
          if (bytes) sock.end(bytes);
          else sock.destroy();
        } else {
          sock.end();
        }
        this.lingerClose(sock);
        this.pump();
      },
      () => {
        this.counters.badStreams++;
        sock.destroy();
      },
    );
  }

  /**
   * After our reply: keep reading (and discarding) so the peer's FIN is seen and the socket
   * closes, and destroy it anyway at tcpTimeout if the peer never closes (memberlist closes
   * the connection once it has answered).
   */
  private lingerClose(sock: Socket): void {
    if (sock.destroyed) return;
    const t = setTimeout(() => sock.destroy(), this.cfg.tcpTimeout);
    sock.once('close', () => clearTimeout(t));
    sock.resume();
  }

  private sealStreamMessage(m: StreamMessage): Uint8Array {
    return sealStream(encodeStreamMessage(m), {
      compress: this.compress,
      keyring: this.keyring,
      label: this.label,
    });
  }

  // ---- outputs ----

  /** Drains the core's output and re-arms the one timer at `nextDeadline()`. */
  private pump(): void {
    if (this.stopped) return;
    for (let round = 0; round < 16 && this.core.hasReady(); round++) {
      const r = this.core.ready();
      for (const e of r.events) this.onEvent(e);
      for (const p of r.packets) this.sendPacket(p.to, p.parts);
      for (const s of r.streams) this.openOutStream(s);
    }
    this.arm();
  }

  /**
   * Keeps the one timer at or before `nextDeadline()`. A timer that is due before the new
   * deadline is left to fire (the tick then finds nothing due and re-arms): clearing it would
   * not save the wakeup, because Node does not push its libuv timer back when a timer is
   * cleared. So `timerFires` counts every wakeup our timer costs. Arming waits for the end of
   * this loop turn (setImmediate runs after the poll phase): a probe's ack that is already in
   * the socket is read first, and the probe timeout it cancels is never armed.
   */
  private arm(): void {
    if (this.stopped || this.armPending) return;
    this.armPending = true;
    setImmediate(() => {
      this.armPending = false;
      this.armNow();
    });
  }

  private armNow(): void {
    if (this.stopped) return;
    const at = this.core.nextDeadline();
    if (this.timer && this.timerAt <= at) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = at;
    if (!Number.isFinite(at)) return;
    const delay = Math.max(0, Math.ceil(at - Memberlist.clock()));
    this.timer = setTimeout(() => {
      this.timer = null;
      this.timerAt = Infinity;
      this.counters.timerFires++;
      this.input(() => {
        this.core.tick(Memberlist.clock());
        if (!this.core.hasReady()) this.counters.timerFiresIdle++;
      });
    }, delay);
  }

  private onEvent(e: SwimEvent): void {
    switch (e.type) {
      case 'join':
      case 'update':
        this.pmax.set(formatAddress(e.node.addr, e.node.port), e.node.vsn[1] ?? 0);
        break;
      case 'joinDone':
        this.joinWaiters.shift()?.({ contacted: e.contacted, errors: e.errors });
        break;
      case 'leaveDone':
        for (const w of this.leaveWaiters.splice(0)) w();
        break;
      default:
        break;
    }
    try {
      this.emit('event', e);
    } catch {
      // A listener's bug must not stop the driver.
    }
  }

  private sendPacket(to: Address, parts: Uint8Array[]): void {
    let host: string;
    let port: number;
    let buf: Uint8Array;
    try {
      ({ host, port } = parseAddress(to));
      buf = sealMessages(parts, {
        crc: (this.pmax.get(to) ?? 0) >= 5,
        compress: this.compress,
        keyring: this.keyring,
        label: this.label,
      });
    } catch {
      this.counters.coreErrors++;
      return;
    }
    this.transport.send(host, port, buf);
  }

  private openOutStream(s: OutStream): void {
    const clock = Memberlist.clock;
    let done = false;
    let sock: Socket | null = null;
    const finish = (reply: StreamMessage | null, err: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err !== '') this.counters.streamErrors++;
      sock?.destroy();
      this.input(() => this.core.streamDone(clock(), s.id, reply, err));
    };
    const timer = setTimeout(
      () => finish(null, `dial ${s.to}: i/o timeout`),
      Math.max(0, s.deadline - clock()),
    );
    let bytes: Uint8Array;
    try {
      bytes = this.sealStreamMessage(s.message);
      const { host, port } = parseAddress(s.to);
      sock = this.transport.dial(host, port);
    } catch (e) {
      // Deferred: streamDone must not re-enter the core while pump() is draining it.
      setImmediate(() => finish(null, (e as Error).message));
      return;
    }
    const c = sock;
    c.once('error', (e) => finish(null, `stream ${s.to}: ${e.message}`));
    c.once('connect', () => {
      c.write(bytes);
      if (!s.reply) {
        c.end(() => finish(null, ''));
        return;
      }
      readMessage(c, (b) => this.parseStream(b), {
        deadline: s.deadline,
        clock,
        maxBytes: this.maxStreamBytes,
      }).then(
        (m) => finish(m, ''),
        (e: unknown) =>
          finish(
            null,
            `stream ${s.to}: ${e instanceof WireError || e instanceof MeshError ? e.message : String(e)}`,
          ),
      );
    });
  }
}

/** Key from base64 (16, 24 or 32 bytes once decoded), as serf's `-encrypt` takes it. */
export function keyFromBase64(s: string): Uint8Array {
  const k = Buffer.from(s, 'base64');
  if (![16, 24, 32].includes(k.length)) {
    throw new UsageError(
      `parse gossip key: ${k.length} bytes after base64, want 16, 24 or 32 (e.g. \`head -c32 /dev/urandom | base64\`)`,
    );
  }
  return new Uint8Array(k);
}
