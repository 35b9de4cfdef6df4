/**
 * The agent's network side for tasks on this node: a task (TaskRuntime) attached to overlay
 * networks (OverlayDriver) with addresses the managers allocate, its endpoints published in the
 * networks' peer tables (netdb) and every remote endpoint programmed as static FDB/ARP.
 *
 * State that must survive a meshd restart lives in `<data-dir>/agent/agent.json` (tasks, their
 * networks and addresses, local gateway addresses). On start the agent adopts what the previous
 * run built: running task processes (the runtime checks pid + start time), the overlay
 * namespaces of networks still in use (others are removed), and it publishes its endpoints again.
 * A reconcile loop repairs drift in the kernel every 30 s and counts the repairs; our entries in
 * the peer tables are checked (and repaired, counted alike) every 5 s.
 *
 * May import src/agent, src/overlay, src/manager (types, identity helpers), src/util, node built-ins.
 */

import { writeFileSync, readFileSync, renameSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Network } from '../api/objects.js';
import type { NetworkInfo } from '../api/services.js';
import { netnsOpen, withNetns } from '../netlink/index.js';
import { OverlayDriver, type Peer } from '../overlay/index.js';
import { MeshError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { planPeerHold, type HoldPlan, type HoldState } from './peer-hold.js';
import { TaskRuntime, type TaskInfo } from './runtime.js';
import { newId } from '../util/ids.js';

const log = createLogger('agent');

/** The peer-table operations the agent needs from netdb. */
export interface PeerTables {
  /** Idempotent: joining a network this node is in already does nothing. */
  joinNetwork(netId: string): void;
  leaveNetwork(netId: string): void;
  createEntry(table: string, netId: string, key: string, value: Uint8Array): void;
  updateEntry(table: string, netId: string, key: string, value: Uint8Array): void;
  getEntry(table: string, netId: string, key: string): unknown;
  deleteEntry(table: string, netId: string, key: string): void;
  getEntries(table: string, netId: string): { key: string; value: Uint8Array; owner: string }[];
  /** hidden: its owner failed (it may come back); deleted: its owner removed it (a tombstone). */
  entryState(
    table: string,
    netId: string,
    key: string,
  ): 'visible' | 'hidden' | 'deleted' | 'absent';
  watch(table: string, cb: (ev: { netId: string; key: string }) => void): () => void;
  /** Networks this node is in. */
  networks(): string[];
}

/** Calls to the managers (attach/detach addresses); the cluster role provides it. */
export type ManagerCall = (method: string, params: unknown) => Promise<unknown>;

export const PEER_TABLE = 'overlay_peers';

interface PeerValue {
  ip: string;
  mac: string;
  vtep: string;
}

interface NetRecord {
  id: string;
  name: string;
  vni: number;
  subnets: { subnet: string; gateway: string }[];
  mtu?: number;
  internal: boolean;
  encrypted: boolean;
}

interface Attachment {
  networkId: string;
  address: string;
  ifname: string;
  mac?: string;
}

interface TaskRecord {
  id: string;
  name: string;
  /** Service tasks: addresses come with the assignment and go back when the managers delete
   *  the task, so the agent never calls network.attach/detach for them. */
  serviceId?: string;
  attachments: Attachment[];
  /** Address on mesh_gwbridge (egress), if the task has one. */
  gatewayIp?: string;
  autoRemove: boolean;
}

interface AgentState {
  version: 1;
  networks: Record<string, NetRecord>;
  tasks: TaskRecord[];
  /** Last local gateway address handed out (serial, like the managers' IPAM). */
  lastGatewayIp?: number;
}

export interface RunSpec {
  name?: string;
  networks: string[];
  cmd: string[];
  env?: Record<string, string>;
  /** Remove the task (and its addresses) once it exits. */
  autoRemove?: boolean;
}

export interface TaskView extends TaskInfo {
  networks: { network: string; networkId: string; address: string; ifname: string }[];
  serviceId?: string;
  /** Address on mesh_gwbridge (egress, host-mode ports), if any. */
  gatewayIp?: string;
}

/** A service task as the dispatcher assigns it: addresses are already allocated. */
export interface ServiceTaskSpec {
  id: string;
  name: string;
  serviceId: string;
  cmd: string[];
  env: Record<string, string>;
  attachments: { net: NetworkInfo; address: string }[];
  /** The task's /etc/resolv.conf (embedded DNS). */
  resolvConf?: string;
  /** Runs once the namespace is attached, before the process starts (the task's DNS server). */
  beforeStart?: (netnsPath: string) => Promise<void>;
}

export interface AgentOptions {
  dataDir: string;
  /** This node's underlay address: the VTEP. */
  vtep: string;
  dataPathPort: number;
  netnsPrefix: string;
  tables: PeerTables;
  manager: ManagerCall;
  /** How often the kernel state is reconciled. @default 30,000 ms */
  reconcileMs?: number;
  /**
   * How often our entries in the peer tables are checked (in memory, cheap; a task missing
   * there is unreachable from other nodes). @default 5,000 ms
   */
  tablesCheckMs?: number;
  /**
   * How long the endpoints of a node that vanished from a network's peer table as a whole stay
   * programmed (src/agent/peer-hold.ts): past the managers' node-down detection and the load
   * balancers' update. @default 60,000 ms
   */
  peerHoldMs?: number;
}

/** 10.255.0.0/16: .1 is the bridge; tasks get .2 … .65533 serially. */
const GW_BASE = (10 << 24) | (255 << 16);
/** The node's ingress namespace's address on mesh_gwbridge (src/lb/mesh.ts); never a task's. */
export const INGRESS_GATEWAY_IP = '10.255.255.254';

export class Agent {
  readonly overlay: OverlayDriver;
  /** Users of a network other than tasks (load-balancer and ingress namespaces): net → users. */
  private readonly extraUsers = new Map<string, Set<string>>();
  private state: AgentState;
  private readonly statePath: string;
  private readonly unwatch: () => void;
  private readonly peerSync = new Map<string, Promise<void>>();
  private readonly peerDirty = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private tablesTimer: NodeJS.Timeout | undefined;
  private reconciling = false;
  /** Tasks taken out of the peer tables on purpose (stopping); reconcile leaves them out. */
  private readonly withdrawn = new Set<string>();
  /** Per network: what was programmed and which nodes' endpoints are held (peer-hold.ts). */
  private readonly holds = new Map<string, HoldState>();
  /** Called after peers were added to or removed from the kernel (the LB re-checks reach). */
  private peersChanged: (() => void) | undefined;
  /** Per network: the peer-table keys last programmed, and their VTEPs (to tell deletes apart). */
  private readonly peerKeys = new Map<string, Map<string, string>>();
  private readonly holdTimers = new Map<string, NodeJS.Timeout>();
  readonly counters = {
    repairs: 0,
    reconciles: 0,
    peerSyncs: 0,
    peerConflicts: 0,
    /** Times a node's endpoints were held after the tables lost them all. */
    peerHolds: 0,
    /** Remote endpoints programmed now only because they are held. */
    peersHeld: 0,
  };
  private lastReconcile = 0;

  private constructor(
    private readonly opts: AgentOptions,
    readonly runtime: TaskRuntime,
    overlay: OverlayDriver,
    state: AgentState,
    statePath: string,
  ) {
    this.overlay = overlay;
    this.state = state;
    this.statePath = statePath;
    this.unwatch = opts.tables.watch(PEER_TABLE, (ev) => this.schedulePeers(ev.netId));
  }

  static async start(opts: AgentOptions): Promise<Agent> {
    const dir = join(opts.dataDir, 'agent');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const statePath = join(dir, 'agent.json');
    let state: AgentState = { version: 1, networks: {}, tasks: [] };
    try {
      state = JSON.parse(readFileSync(statePath, 'utf8')) as AgentState;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
        log.error('agent state unreadable; starting empty', { path: statePath, err: e });
      }
    }
    const runtime = await TaskRuntime.open({
      stateDir: join(dir, 'tasks'),
      netnsPrefix: opts.netnsPrefix,
    });
    const overlay = new OverlayDriver({
      vtep: opts.vtep,
      port: opts.dataPathPort,
      netnsPrefix: opts.netnsPrefix,
    });
    const a = new Agent(opts, runtime, overlay, state, statePath);
    runtime.onExit((e) => {
      const rec = a.state.tasks.find((t) => t.id === e.id);
      if (rec?.autoRemove)
        void a
          .remove(e.id)
          .catch((err: unknown) => log.warn('auto-remove failed', { task: e.id, err }));
    });
    await a.adopt();
    a.timer = setInterval(() => void a.reconcile(), opts.reconcileMs ?? 30_000);
    a.tablesTimer = setInterval(() => a.checkPeerTables(), opts.tablesCheckMs ?? 5_000);
    return a;
  }

  /**
   * An agent over the given runtime and overlay, with empty state, no adopt and no reconcile
   * timer: unit tests drive it with fakes to control how concurrent set-ups interleave.
   */
  static fromParts(opts: AgentOptions, runtime: TaskRuntime, overlay: OverlayDriver): Agent {
    const dir = join(opts.dataDir, 'agent');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const state: AgentState = { version: 1, networks: {}, tasks: [] };
    return new Agent(opts, runtime, overlay, state, join(dir, 'agent.json'));
  }

  private save(): void {
    const tmp = `${this.statePath}.tmp`;
    writeFileSync(tmp, JSON.stringify(this.state, null, 1), { mode: 0o600 });
    renameSync(tmp, this.statePath);
  }

  /** Networks used by tasks on this node (by id). */
  private networksInUse(): Set<string> {
    const s = new Set<string>();
    for (const t of this.state.tasks) for (const a of t.attachments) s.add(a.networkId);
    for (const [id, users] of this.extraUsers) if (users.size > 0) s.add(id);
    return s;
  }

  /** After a restart: keep what tasks still use, remove the rest, publish our endpoints again. */
  private async adopt(): Promise<void> {
    const used = this.networksInUse();
    const vnis = [...used]
      .map((id) => this.state.networks[id]?.vni)
      .filter((v): v is number => v !== undefined);
    const r = await this.overlay.adopt(vnis);
    if (r.removed.length > 0)
      log.info('removed overlay state of a previous run', { vnis: r.removed.join(',') });
    for (const id of used) {
      const net = this.state.networks[id];
      if (!net) continue;
      await this.overlay.ensureNetwork(net);
      // What the previous run programmed is held until the (still empty) tables catch up; seeded
      // before anything is published, since our own writes already trigger a programming.
      this.holds.set(id, { programmed: this.overlay.peers(net.vni), held: new Map() });
      this.opts.tables.joinNetwork(id);
    }
    for (const t of this.state.tasks) {
      if (!this.runtime.get(t.id)) {
        log.warn('task record without a runtime task; releasing it', { task: t.id });
        await this.release(t).catch(() => undefined);
        continue;
      }
      for (const at of t.attachments) this.publish(t, at);
    }
    for (const id of used) this.schedulePeers(id);
    if (r.kept.length > 0) log.info('adopted overlay networks', { vnis: r.kept.join(',') });
  }

  private endpointKey(taskId: string, netId: string): string {
    return `${taskId}.${netId}`;
  }

  private publish(t: TaskRecord, at: Attachment): void {
    if (!at.mac) return;
    this.withdrawn.delete(t.id);
    // Users of a network (tasks, load-balancer namespaces) are set up concurrently; whichever
    // publishes first must not find the node outside the network because the user that counted
    // as "first" has not reached its join yet. Joining is idempotent.
    this.opts.tables.joinNetwork(at.networkId);
    const v: PeerValue = { ip: at.address, mac: at.mac, vtep: this.opts.vtep };
    const key = this.endpointKey(t.id, at.networkId);
    const value = Buffer.from(JSON.stringify(v));
    // After a restart the entry may still be known (ours, from the previous run): update it.
    if (this.opts.tables.getEntry(PEER_TABLE, at.networkId, key)) {
      this.opts.tables.updateEntry(PEER_TABLE, at.networkId, key, value);
    } else {
      this.opts.tables.createEntry(PEER_TABLE, at.networkId, key, value);
    }
  }

  /**
   * `cb` runs after peers were added to or removed from the kernel: the load balancer's
   * self-check puts a backend whose entries just arrived back in rotation at once, instead of
   * at its next periodic check.
   */
  onPeersChanged(cb: () => void): void {
    this.peersChanged = cb;
  }

  /** Coalesce peer-table changes per network into one setPeers at a time. */
  private schedulePeers(netId: string): void {
    const net = this.state.networks[netId];
    if (!net || !this.networksInUse().has(netId)) return;
    this.peerDirty.add(netId);
    if (this.peerSync.has(netId)) return;
    const run = async (): Promise<void> => {
      while (this.peerDirty.delete(netId)) {
        const fromTables: Peer[] = [];
        const keys = new Map<string, string>();
        for (const e of this.opts.tables.getEntries(PEER_TABLE, netId)) {
          try {
            const v = JSON.parse(Buffer.from(e.value).toString('utf8')) as PeerValue;
            if (
              typeof v.ip === 'string' &&
              typeof v.mac === 'string' &&
              typeof v.vtep === 'string'
            ) {
              if (v.vtep !== this.opts.vtep) {
                fromTables.push({ ip: v.ip, mac: v.mac, vtep: v.vtep });
                keys.set(e.key, v.vtep);
              }
            }
          } catch {
            log.warn('bad peer entry ignored', { network: netId, key: e.key, owner: e.owner });
          }
        }
        // A node whose last endpoints its owner deleted (tombstones: its tasks were removed) is
        // not held; only one whose entries vanished otherwise (owner failed, our own restart).
        const lastKeys = this.peerKeys.get(netId) ?? new Map<string, string>();
        const deleted = new Set<string>();
        const kept = new Set<string>();
        for (const [key, vtep] of lastKeys) {
          if (keys.has(key)) continue;
          const st = this.opts.tables.entryState(PEER_TABLE, netId, key);
          if (st === 'deleted') deleted.add(vtep);
          else kept.add(vtep);
        }
        for (const v of kept) deleted.delete(v);
        this.peerKeys.set(netId, keys);
        const plan = planPeerHold(
          fromTables,
          this.holds.get(netId) ?? { programmed: [], held: new Map() },
          Date.now(),
          this.opts.peerHoldMs ?? 60_000,
          deleted,
        );
        this.logHolds(net.name, plan);
        try {
          const r = await this.overlay.setPeers(net.vni, plan.peers);
          this.holds.set(netId, { programmed: this.overlay.peers(net.vni), held: plan.held });
          this.counters.peerSyncs++;
          this.counters.peerConflicts += r.conflicts.length;
          if (r.added + r.removed > 0) this.peersChanged?.();
          this.counters.peersHeld = [...this.holds.values()].reduce(
            (n, h) => n + [...h.held.values()].reduce((m, x) => m + x.peers.length, 0),
            0,
          );
          clearTimeout(this.holdTimers.get(netId));
          this.holdTimers.delete(netId);
          if (plan.nextExpiry !== undefined) {
            const t = setTimeout(
              () => {
                this.holdTimers.delete(netId);
                this.schedulePeers(netId);
              },
              Math.max(10, plan.nextExpiry - Date.now()),
            );
            this.holdTimers.set(netId, t);
          }
        } catch (e) {
          log.warn('programming peers failed; retried at the next change or reconcile', {
            network: net.name,
            err: e,
          });
        }
      }
    };
    const p = run().finally(() => this.peerSync.delete(netId));
    this.peerSync.set(netId, p);
  }

  /** The network is gone from this node: nothing of it is held any more. */
  private dropHold(netId: string): void {
    this.holds.delete(netId);
    this.peerKeys.delete(netId);
    clearTimeout(this.holdTimers.get(netId));
    this.holdTimers.delete(netId);
  }

  private logHolds(network: string, plan: HoldPlan): void {
    for (const vtep of plan.newlyHeld) {
      this.counters.peerHolds++;
      log.warn('the peer table lost every endpoint of a node; keeping them programmed', {
        network,
        vtep,
        endpoints: plan.held.get(vtep)?.peers.length ?? 0,
        holdMs: this.opts.peerHoldMs ?? 60_000,
      });
    }
    for (const vtep of plan.released)
      log.info('the peer table lists the node again; its held endpoints are released', {
        network,
        vtep,
      });
    for (const vtep of plan.expired)
      log.warn('held endpoints of a node expired; removed from the kernel', { network, vtep });
  }

  private nextGatewayIp(): string {
    const used = new Set(this.state.tasks.map((t) => t.gatewayIp).filter(Boolean));
    let n = this.state.lastGatewayIp ?? 1;
    for (let i = 0; i < 65533; i++) {
      n = n >= 65534 ? 2 : n + 1;
      const ip = intToIp(GW_BASE + n);
      if ((n & 0xff) !== 0 && (n & 0xff) !== 255 && !used.has(ip) && ip !== INGRESS_GATEWAY_IP) {
        this.state.lastGatewayIp = n;
        return ip;
      }
    }
    throw new MeshError(
      'EEXHAUSTED',
      'run: no free address on mesh_gwbridge (10.255.0.0/16); remove tasks',
    );
  }

  // ---- tasks ----

  async run(spec: RunSpec): Promise<TaskView> {
    if (
      !Array.isArray(spec.cmd) ||
      spec.cmd.length === 0 ||
      !spec.cmd.every((c) => typeof c === 'string')
    ) {
      throw new MeshError('EUSAGE', 'run: give the command to run after --');
    }
    const id = newId();
    const name = spec.name ?? `task-${id.slice(0, 8)}`;
    if (this.state.tasks.some((t) => t.name === name)) {
      throw new MeshError(
        'ECONFLICT',
        `run ${name}: a task with that name exists on this node; pick another --name or remove it`,
      );
    }
    const info = await this.runtime.create({
      id,
      name,
      cmd: spec.cmd,
      ...(spec.env ? { env: spec.env } : {}),
    });
    const rec: TaskRecord = { id, name, attachments: [], autoRemove: spec.autoRemove === true };
    this.state.tasks.push(rec);
    this.save();
    try {
      for (const [i, ref] of spec.networks.entries()) {
        const r = (await this.opts.manager('network.attach', {
          networkRef: ref,
          taskId: id,
          taskName: name,
        })) as {
          address: string;
          network: Network;
        };
        await this.attachOne(rec, info.netnsPath, toNetRecord(r.network), r.address, i);
      }
      await this.attachGatewayIfNeeded(rec, info.netnsPath);
      await this.runtime.start(id);
    } catch (e) {
      log.warn('run failed; cleaning up', { task: name, err: e });
      await this.remove(id).catch((err: unknown) =>
        log.warn('clean-up after a failed run failed', { task: id, err }),
      );
      throw e;
    }
    return this.view(id);
  }

  /** Attach task `rec` (namespace `nsPath`) to `net` as eth<i> with `address`; publish it. */
  private async attachOne(
    rec: TaskRecord,
    nsPath: string,
    net: NetRecord,
    address: string,
    i: number,
  ): Promise<void> {
    this.state.networks[net.id] = net;
    const at: Attachment = { networkId: net.id, address, ifname: `eth${i}` };
    rec.attachments.push(at);
    this.save();
    await this.overlay.ensureNetwork(net);
    const res = await this.overlay.attach(net.vni, {
      taskNs: nsPath,
      ifname: at.ifname,
      ip: address,
    });
    at.mac = res.mac;
    fastArpRetry(nsPath, res.ifname);
    this.save();
    this.publish(rec, at);
    this.schedulePeers(net.id);
  }

  /** Egress through mesh_gwbridge unless every network of the task is internal. */
  private async attachGatewayIfNeeded(rec: TaskRecord, nsPath: string): Promise<void> {
    if (!rec.attachments.some((a) => !this.state.networks[a.networkId]?.internal)) return;
    rec.gatewayIp = this.nextGatewayIp();
    this.save();
    await this.overlay.attachGateway(nsPath, `${rec.gatewayIp}/16`);
  }

  private countUsers(netId: string): number {
    return (
      this.state.tasks.filter((t) => t.attachments.some((a) => a.networkId === netId)).length +
      (this.extraUsers.get(netId)?.size ?? 0)
    );
  }

  /**
   * Run a service task with the addresses its assignment carries: namespace, attachments,
   * gateway, then the process. On failure everything local is undone and the error thrown.
   */
  async runService(spec: ServiceTaskSpec): Promise<TaskView> {
    if (this.state.tasks.some((t) => t.id === spec.id)) return this.view(spec.id);
    const info = await this.runtime.create({
      id: spec.id,
      name: spec.name,
      cmd: spec.cmd,
      env: spec.env,
      ...(spec.resolvConf !== undefined ? { resolvConf: spec.resolvConf } : {}),
    });
    const rec: TaskRecord = {
      id: spec.id,
      name: spec.name,
      serviceId: spec.serviceId,
      attachments: [],
      autoRemove: false,
    };
    this.state.tasks.push(rec);
    this.save();
    try {
      for (const [i, a] of spec.attachments.entries()) {
        await this.attachOne(rec, info.netnsPath, netRecordFromInfo(a.net), a.address, i);
      }
      await this.attachGatewayIfNeeded(rec, info.netnsPath);
      if (spec.beforeStart) await spec.beforeStart(info.netnsPath);
      await this.runtime.start(spec.id);
    } catch (e) {
      log.warn('service task failed to start; cleaning up', { task: spec.name, err: e });
      await this.remove(spec.id).catch((err: unknown) =>
        log.warn('clean-up after a failed start failed', { task: spec.id, err }),
      );
      throw e;
    }
    return this.view(spec.id);
  }

  /** Take a task's endpoints out of the networks' peer tables. */
  private withdraw(rec: TaskRecord): void {
    this.withdrawn.add(rec.id);
    for (const at of rec.attachments) {
      try {
        this.opts.tables.deleteEntry(
          PEER_TABLE,
          at.networkId,
          this.endpointKey(rec.id, at.networkId),
        );
      } catch {
        // never published (the run failed before that) or already gone
      }
    }
  }

  /** Whether a task with this id exists on this node. */
  has(id: string): boolean {
    return this.state.tasks.some((t) => t.id === id);
  }

  /** Stop a task's process (SIGTERM, SIGKILL after graceMs); its namespace stays. */
  async stop(ref: string, graceMs: number): Promise<void> {
    const rec = this.find(ref);
    this.withdraw(rec);
    if (this.runtime.get(rec.id)?.state === 'running') await this.runtime.stop(rec.id, { graceMs });
  }

  /**
   * Hold network `net` for a user other than a task (a load-balancer namespace): the overlay
   * exists and this node is in its peer table while any user holds it.
   */
  async useNetwork(info: NetworkInfo, user: string): Promise<void> {
    const net = netRecordFromInfo(info);
    this.state.networks[net.id] = { ...this.state.networks[net.id], ...net };
    let users = this.extraUsers.get(net.id);
    if (!users) {
      users = new Set();
      this.extraUsers.set(net.id, users);
    }
    if (users.has(user)) return;
    users.add(user);
    this.save();
    try {
      await this.overlay.ensureNetwork(net);
    } catch (e) {
      // Not a user until the network exists: a retry must do the whole setup again.
      users.delete(user);
      this.save();
      throw e;
    }
    this.opts.tables.joinNetwork(net.id);
    this.schedulePeers(net.id);
  }

  async unuseNetwork(netId: string, user: string): Promise<void> {
    const users = this.extraUsers.get(netId);
    if (!users?.delete(user)) return;
    if (this.countUsers(netId) > 0) return;
    const net = this.state.networks[netId];
    this.opts.tables.leaveNetwork(netId);
    this.dropHold(netId);
    if (net) await this.overlay.removeNetwork(net.vni).catch(() => undefined);
    // A new user may have arrived during the removal; its record stays.
    if (this.countUsers(netId) === 0) delete this.state.networks[netId];
    this.save();
  }

  /** Publish a non-task endpoint (a load-balancer namespace) in a network's peer table. */
  publishEndpoint(netId: string, key: string, ip: string, mac: string): void {
    const value = Buffer.from(JSON.stringify({ ip, mac, vtep: this.opts.vtep }));
    if (this.countUsers(netId) === 0) {
      throw new MeshError(
        'ENOTFOUND',
        `publish endpoint ${key}: network ${netId} is not in use on this node (useNetwork first)`,
      );
    }
    this.opts.tables.joinNetwork(netId);
    const cur = this.opts.tables.getEntry(PEER_TABLE, netId, key) as
      { value?: Uint8Array } | undefined;
    if (cur && cur.value && Buffer.from(cur.value).equals(value)) return;
    if (cur) this.opts.tables.updateEntry(PEER_TABLE, netId, key, value);
    else this.opts.tables.createEntry(PEER_TABLE, netId, key, value);
  }

  unpublishEndpoint(netId: string, key: string): void {
    try {
      this.opts.tables.deleteEntry(PEER_TABLE, netId, key);
    } catch {
      // not published
    }
  }

  /** Stop and remove a task: out of the peer tables first, then the kernel, then the address. */
  async remove(ref: string): Promise<void> {
    const rec = this.find(ref);
    this.withdraw(rec);
    const info = this.runtime.get(rec.id);
    if (info?.state === 'running') await this.runtime.stop(rec.id, { graceMs: 5000 });
    await this.release(rec);
    if (info) await this.runtime.remove(rec.id);
  }

  /** Detach from networks, give the addresses back, forget the record. */
  private async release(rec: TaskRecord): Promise<void> {
    const info = this.runtime.get(rec.id);
    for (const at of rec.attachments) {
      const net = this.state.networks[at.networkId];
      if (net && info)
        await this.overlay
          .detach(net.vni, { taskNs: info.netnsPath, ifname: at.ifname })
          .catch(() => undefined);
    }
    if (rec.gatewayIp && info)
      await this.overlay.detachGateway(info.netnsPath).catch(() => undefined);
    if (rec.attachments.length > 0 && rec.serviceId === undefined) {
      await this.opts.manager('network.detach', { taskId: rec.id }).catch((e: unknown) => {
        log.warn(
          "could not release the task's addresses; they stay allocated until it is removed again",
          { task: rec.id, err: e },
        );
        throw e;
      });
    }
    this.state.tasks = this.state.tasks.filter((t) => t.id !== rec.id);
    this.withdrawn.delete(rec.id);
    for (const at of rec.attachments) {
      if (this.countUsers(at.networkId) === 0) {
        const net = this.state.networks[at.networkId];
        this.opts.tables.leaveNetwork(at.networkId);
        this.dropHold(at.networkId);
        if (net)
          await this.overlay
            .removeNetwork(net.vni)
            .catch((e: unknown) =>
              log.warn('network removal failed', { network: net.name, err: e }),
            );
        if (this.countUsers(at.networkId) === 0) delete this.state.networks[at.networkId];
      }
    }
    this.save();
  }

  private find(ref: string): TaskRecord {
    const rec =
      this.state.tasks.find((t) => t.id === ref) ??
      this.state.tasks.find((t) => t.name === ref) ??
      (() => {
        const m = this.state.tasks.filter((t) => t.id.startsWith(ref));
        return m.length === 1 ? m[0] : undefined;
      })();
    if (!rec)
      throw new MeshError(
        'ENOTFOUND',
        `task ${ref}: no such task on this node; see \`meshctl ps\``,
      );
    return rec;
  }

  view(ref: string): TaskView {
    const rec = this.find(ref);
    const info = this.runtime.get(rec.id);
    if (!info) throw new MeshError('ENOTFOUND', `task ${ref}: not in the runtime`);
    return {
      ...info,
      networks: rec.attachments.map((a) => ({
        network: this.state.networks[a.networkId]?.name ?? a.networkId,
        networkId: a.networkId,
        address: a.address,
        ifname: a.ifname,
      })),
      ...(rec.serviceId !== undefined ? { serviceId: rec.serviceId } : {}),
      ...(rec.gatewayIp !== undefined ? { gatewayIp: rec.gatewayIp } : {}),
    };
  }

  list(): TaskView[] {
    return this.state.tasks.filter((t) => this.runtime.get(t.id)).map((t) => this.view(t.id));
  }

  logs(ref: string): string {
    return this.runtime.logs(this.find(ref).id);
  }

  /** Kernel state against what the tasks need; drift repaired and counted. */
  async reconcile(): Promise<number> {
    if (this.reconciling) return 0;
    this.reconciling = true;
    try {
      const vnis = [...this.networksInUse()]
        .map((id) => this.state.networks[id]?.vni)
        .filter((v): v is number => v !== undefined);
      const r = await this.overlay.reconcile(vnis);
      this.counters.reconciles++;
      this.counters.repairs += r.repairs;
      this.lastReconcile = Date.now();
      if (r.repairs > 0) log.warn('reconcile repaired kernel drift', { repairs: r.repairs });
      return r.repairs;
    } catch (e) {
      log.warn('reconcile failed', { err: e });
      return 0;
    } finally {
      this.reconciling = false;
    }
  }

  /**
   * The peer tables against what our tasks need: this node in every network in use and every
   * running task's endpoint published. A missing endpoint makes the task unreachable from every
   * other node, so what is found missing is put back, logged and counted as a repair. Runs
   * every `tablesCheckMs`; returns the number of repairs.
   */
  checkPeerTables(): number {
    let repairs = 0;
    try {
      repairs = this.repairPeerTables();
    } catch (e) {
      log.warn('peer table check failed', { err: e });
    }
    this.counters.repairs += repairs;
    return repairs;
  }

  private repairPeerTables(): number {
    let repairs = 0;
    const joined = new Set(this.opts.tables.networks());
    for (const id of this.networksInUse()) {
      if (joined.has(id)) continue;
      log.warn('this node was not in the peer table of a network in use; joined it', {
        network: this.state.networks[id]?.name ?? id,
      });
      this.opts.tables.joinNetwork(id);
      repairs++;
    }
    for (const t of this.state.tasks) {
      if (this.withdrawn.has(t.id) || this.runtime.get(t.id)?.state !== 'running') continue;
      for (const at of t.attachments) {
        if (!at.mac) continue;
        if (
          this.opts.tables.getEntry(PEER_TABLE, at.networkId, this.endpointKey(t.id, at.networkId))
        )
          continue;
        try {
          this.publish(t, at);
          repairs++;
          log.warn("a running task's endpoint was missing from the peer table; published it", {
            task: t.name,
            network: this.state.networks[at.networkId]?.name ?? at.networkId,
          });
        } catch (e) {
          log.warn("could not publish a task's endpoint; retried at the next check (5 s)", {
            task: t.name,
            err: e,
          });
        }
      }
    }
    return repairs;
  }

  status(): unknown {
    return {
      networks: Object.values(this.state.networks).map((n) => ({
        ...n,
        peers: this.overlay.peers(n.vni),
        tasks: this.countUsers(n.id),
      })),
      counters: this.counters,
      lastReconcileMsAgo: this.lastReconcile ? Date.now() - this.lastReconcile : null,
    };
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    for (const t of this.holdTimers.values()) clearTimeout(t);
    if (this.tablesTimer) clearInterval(this.tablesTimer);
    this.unwatch();
    this.runtime.close();
    this.overlay.close();
  }
}

/**
 * A task answering a peer that just appeared must ARP for it, and the vxlan device answers only
 * once the peer table has reached this node (≤ one gossip round). With the kernel's default
 * 1 s ARP retransmit the first exchange then takes a second; 100 ms bounds it near one round
 * (bench/overlay: p99 1.04 s → 0.21 s). Unanswered ARP stays rare here: peers are static.
 */
const ARP_RETRANS_MS = 100;

function fastArpRetry(taskNsPath: string, ifname: string): void {
  try {
    const ns = netnsOpen({ path: taskNsPath });
    try {
      // /proc/sys/net resolves to the opening thread's network namespace.
      withNetns(ns, () =>
        writeFileSync(`/proc/sys/net/ipv4/neigh/${ifname}/retrans_time_ms`, `${ARP_RETRANS_MS}\n`),
      );
    } finally {
      ns.close();
    }
  } catch (e) {
    log.warn('could not shorten the ARP retransmit time', { ifname, err: e });
  }
}

function toNetRecord(n: Network): NetRecord {
  return {
    id: n.id,
    name: n.name,
    vni: n.vni,
    subnets: n.subnets.map((s) => ({ subnet: s.subnet, gateway: s.gateway })),
    ...(n.options.mtu !== undefined ? { mtu: n.options.mtu } : {}),
    internal: n.options.internal,
    encrypted: n.options.encrypted,
  };
}

function netRecordFromInfo(n: NetworkInfo): NetRecord {
  return {
    id: n.id,
    name: n.name,
    vni: n.vni,
    subnets: n.subnets.map((s) => ({ subnet: s.subnet, gateway: s.gateway })),
    ...(n.mtu !== undefined ? { mtu: n.mtu } : {}),
    internal: n.internal,
    encrypted: n.encrypted,
  };
}

function intToIp(v: number): string {
  return [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255].join('.');
}
