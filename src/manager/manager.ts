/**
 * The manager role: the cluster store replicated by raft, the control listener on TCP 2377
 * (raft streams between managers, RPCs from joining nodes and from agents), and the leader's
 * housekeeping (promote caught-up learners, carry out demotions, mark silent nodes down).
 *
 * Every write goes through `commit()` (a raft proposal, resolved with the store's result once
 * applied here); every read a user sees goes through `read()` (a ReadIndex barrier first, so a
 * manager that lost touch with the leader never answers from stale state).
 *
 * May import src/api, src/raft, every room of src/manager, src/util, node built-ins.
 */

import { hostname as osHostname } from 'node:os';
import { ConfChangeType, StateRole, type ConfChange, type ConfState } from '../raft/index.js';
import { RaftTransport } from '../raft/transport.js';
import type { WalFs } from '../raft/wal.js';
import { MeshError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { ControlServer, type PeerIdentity } from './dispatch/server.js';
import type { NodeFiles } from './ca/identity.js';
import { newRaftId, type Credentials, type ManagerAddr, type NodeState } from './ca/identity.js';
import { CLUSTER_ID, type Cluster, type Node } from '../api/objects.js';
import type { DispatcherRpc } from '../api/services.js';
import {
  caDigest,
  certIdentity,
  issueNodeCert,
  makeJoinToken,
  parseJoinToken,
  tokenMatches,
} from './ca/pki.js';
import {
  describeNetwork,
  listNetworks,
  planAttach,
  planCreateNetwork,
  planDetach,
  planIngressNetwork,
  planRemoveNetwork,
  type NetworkView,
} from './allocation/networks.js';
import type { NetworkSpec } from '../api/networks.js';
import { RaftNode } from './store/raftnode.js';
import { ServiceController } from './orchestration/controller.js';
import { Dispatcher } from './dispatch/dispatcher.js';
import { Store, encodeOps, type ApplyResult, type Op } from './store/store.js';
import { newId } from '../util/ids.js';

const log = createLogger('manager');

export interface ManagerOptions {
  files: NodeFiles;
  state: NodeState;
  creds: Credentials;
  /**
   * Voters at index 0 of an empty log: `[own raft id]` for `cluster init`, the cluster's
   * bootstrap ids for a joining manager (ignored when the log exists).
   */
  bootstrapVoters?: number[];
  tickMs?: number;
  electionTick?: number;
  walFs?: WalFs;
  /** Called when this manager was removed from raft membership (demoted or removed). */
  onRemoved?: () => void;
}

/** Heartbeat period agents use (the leader marks a node down after DOWN_AFTER_PERIODS of them). */
export const DEFAULT_HEARTBEAT_MS = 2000;
/** Heartbeat periods of silence after which the leader marks a node down. */
export const DOWN_AFTER_PERIODS = 2.5;

export interface JoinRequest {
  token: string;
  csrPem: string;
  hostname: string;
  advertiseAddr: string;
  /** ip:port the node will listen on if it joins as a manager. */
  listenAddr: string;
  /** ip:port of its gossip agent, if it runs one. */
  gossipAddr?: string;
}

export interface JoinReply {
  nodeId: string;
  clusterId: string;
  role: 'manager' | 'worker';
  raftId?: number;
  caPem: string;
  certPem: string;
  managers: ManagerAddr[];
  heartbeatMs: number;
  /** See Cluster.bootstrapRaftIds. */
  bootstrapVoters: number[];
}

export interface HeartbeatReply {
  /** Gossip agents of other ready nodes, for a node whose gossip knows nobody. */
  gossipSeeds: string[];
  heartbeatMs: number;
  managers: ManagerAddr[];
  desiredRole: 'manager' | 'worker';
}

export class Manager {
  readonly store: Store;
  readonly raft: RaftNode;
  readonly server: ControlServer;
  readonly transport: RaftTransport;
  /** Services: specs, allocation, scheduling, orchestration (runs while leader). */
  readonly services: ServiceController;
  /** Agent sessions: assignments, task status, load-balancer acks, log relay (leader only). */
  readonly dispatcher: Dispatcher;
  private readonly files: NodeFiles;
  private state: NodeState;
  private creds: Credentials;
  private housekeeping: NodeJS.Timeout | undefined;
  /** Leader's in-memory record of agent heartbeats (node id → ms). */
  private readonly lastSeen = new Map<string, number>();
  private leaderAt = 0;
  /** When markSilentNodes last ran, and when this manager last resumed from a pause of its own. */
  private lastSilentCheck = 0;
  private resumedAt = 0;
  private closed = false;
  private removed = false;
  private readonly onRemoved: (() => void) | undefined;
  private busyHousekeeping = false;

  private constructor(
    opts: ManagerOptions,
    store: Store,
    raft: RaftNode,
    server: ControlServer,
    transport: RaftTransport,
  ) {
    this.files = opts.files;
    this.state = opts.state;
    this.creds = opts.creds;
    this.store = store;
    this.raft = raft;
    this.server = server;
    this.transport = transport;
    this.onRemoved = opts.onRemoved;
    const host = {
      store,
      commit: (ops: Op[]) => this.commit(ops),
      read: <T>(f: (s: Store) => T) => this.read(f),
      isLeader: () => this.raft.isLeader && !this.closed,
      now: () => Date.now(),
      appliedIndex: () => store.appliedIndex,
    };
    this.services = new ServiceController(host);
    this.dispatcher = new Dispatcher(host);
  }

  static async start(opts: ManagerOptions): Promise<Manager> {
    const st = opts.state;
    if (st.raftId === undefined) throw new Error('manager start without a raft id');
    const raftId = st.raftId;
    const holder: { m?: Manager; store: Store } = { store: new Store() };
    const transport = new RaftTransport({
      selfId: raftId,
      clusterId: st.clusterId,
      tls: () => {
        const c = holder.m?.creds ?? opts.creds;
        return { key: c.keyPem, cert: c.certPem, ca: c.caPem };
      },
      onMessages: (msgs) => holder.m?.raft.step(msgs),
      onUnreachable: (id) => holder.m?.raft.reportUnreachable(id),
      onSnapshotStatus: (id, ok) => holder.m?.raft.reportSnapshot(id, ok),
    });
    for (const m of st.managers) if (m.raftId !== raftId) transport.setPeer(m.raftId, m.addr);
    const raft = await RaftNode.open({
      id: raftId,
      dir: opts.files.raftDir,
      ...(opts.bootstrapVoters ? { bootstrapVoters: opts.bootstrapVoters } : {}),
      sm: {
        apply: (index, data) => holder.m!.applyEntry(index, data),
        snapshot: () => holder.store.snapshot(),
        restore: (data) => {
          // In place: watchers (allocator, scheduler, agents' views) stay subscribed and see
          // the difference as ordinary events.
          holder.store.load(data);
          holder.m?.syncPeersFromStore();
        },
        onConfChange: (cc, cs) => holder.m?.onConfChange(cc, cs),
        onLeaderChange: (_lead, role) => {
          if (role === StateRole.Leader && holder.m) holder.m.leaderAt = Date.now();
        },
      },
      transport,
      ...(opts.tickMs !== undefined ? { tickMs: opts.tickMs } : {}),
      ...(opts.electionTick !== undefined ? { raft: { electionTick: opts.electionTick } } : {}),
      ...(opts.walFs !== undefined ? { walFs: opts.walFs } : {}),
    });
    const [host, portText] = splitHostPort(st.listenAddr);
    const server = await ControlServer.listen({
      host,
      port: Number(portText),
      key: opts.creds.keyPem,
      cert: chainPem(opts.creds.certPem, opts.creds.caPem),
      ca: opts.creds.caPem,
      clusterId: st.clusterId,
      raft: transport,
    });
    const m = new Manager(opts, holder.store, raft, server, transport);
    holder.m = m;
    m.syncPeersFromStore();
    m.registerRpc();
    m.services.start();
    m.housekeeping = setInterval(() => void m.tick(), 250);
    log.info('manager started', {
      raftId,
      listen: st.listenAddr,
      cluster: st.clusterId,
    });
    return m;
  }

  // ---- store access ----

  private applyEntry(index: number, data: Uint8Array): ApplyResult {
    return this.store.apply(index, data);
  }

  /** Replicate `ops` as one transaction; throws the store's refusal as a MeshError. */
  async commit(ops: Op[], timeoutMs?: number): Promise<number[]> {
    const res = (await this.raft.propose(encodeOps(ops), timeoutMs)) as ApplyResult;
    if (!res.ok) throw new MeshError(res.error.code, res.error.message);
    return res.versions;
  }

  /** Run `f` against state that includes every write committed before the call. */
  async read<T>(f: (s: Store) => T, timeoutMs?: number): Promise<T> {
    await this.raft.readBarrier(timeoutMs);
    return f(this.store);
  }

  cluster(): Cluster {
    const c = this.store.get('cluster', CLUSTER_ID);
    if (!c) throw new MeshError('EUNAVAILABLE', 'the cluster object is not replicated here yet');
    return c;
  }

  // ---- membership and peers ----

  private syncPeersFromStore(): void {
    for (const n of this.store.list('node')) {
      if (n.raftId !== undefined && n.raftId !== this.state.raftId && n.managerAddr) {
        this.transport.setPeer(n.raftId, n.managerAddr);
      }
    }
  }

  private onConfChange(cc: ConfChange, cs: ConfState): void {
    if (cc.type === ConfChangeType.RemoveNode) {
      this.transport.removePeer(cc.nodeId);
      if (cc.nodeId === this.state.raftId && !this.removed) {
        this.removed = true;
        log.warn('this manager was removed from the raft membership');
        setImmediate(() => this.onRemoved?.());
      }
      return;
    }
    const ctx = parseCtx(cc.context);
    if (ctx && cc.nodeId !== this.state.raftId) this.transport.setPeer(cc.nodeId, ctx.addr);
    void cs;
  }

  /** Managers as the store knows them, for replies to agents and joiners. */
  managers(): ManagerAddr[] {
    const out: ManagerAddr[] = [];
    for (const n of this.store.list('node')) {
      if (n.role === 'manager' && n.raftId !== undefined && n.managerAddr) {
        out.push({ raftId: n.raftId, nodeId: n.id, addr: n.managerAddr });
      }
    }
    return out;
  }

  leaderAddr(): string | undefined {
    const lead = this.raft.leader;
    if (lead === 0) return undefined;
    return this.managers().find((m) => m.raftId === lead)?.addr;
  }

  // ---- cluster init ----

  /** First writes of a new cluster: the cluster object (CA, token secrets) and this node. */
  async initialize(
    ca: { certPem: string; keyPem: string },
    secrets: { worker: string; manager: string },
    hostname: string,
    managerAddr: string,
    gossipAddr?: string,
    heartbeatMs = DEFAULT_HEARTBEAT_MS,
  ): Promise<void> {
    const st = this.state;
    const id = certIdentity(this.creds.certPem);
    await this.commit([
      {
        op: 'create',
        kind: 'cluster',
        value: {
          id: CLUSTER_ID,
          clusterId: st.clusterId,
          bootstrapRaftIds: [st.raftId!],
          caCertPem: ca.certPem,
          caKeyPem: ca.keyPem,
          tokens: secrets,
          settings: { heartbeatPeriodMs: heartbeatMs },
          keys: [],
        },
      },
      {
        op: 'create',
        kind: 'node',
        value: {
          id: st.nodeId,
          hostname,
          role: 'manager',
          raftId: st.raftId!,
          addr: st.advertiseAddr,
          managerAddr,
          ...(gossipAddr ? { gossipAddr } : {}),
          availability: 'active',
          labels: {},
          status: { state: 'ready' },
          certificate: { notAfter: id.notAfter.getTime(), serial: '' },
        },
      },
    ]);
  }

  // ---- RPCs on 2377 ----

  private registerRpc(): void {
    this.server.register('join', (params) => this.handleJoin(params as JoinRequest));
    this.server.register('heartbeat', (params, peer) => this.handleHeartbeat(params, peer));
    this.server.register('promote.accept', (params, peer) =>
      this.handlePromoteAccept(params as { csrPem: string; listenAddr: string }, peer),
    );
    this.server.register('cert.renew', (params, peer) =>
      this.handleRenew(params as { csrPem: string }, peer),
    );
    this.server.register('leave', (_params, peer) => this.handleLeave(peer));
    const session = <P, R>(what: string, f: (nodeId: string, p: P) => Promise<R>) => {
      return async (params: unknown, peer: PeerIdentity | null): Promise<R> => {
        const p = this.requirePeer(peer, what);
        this.requireLeader(what);
        if (params === null || typeof params !== 'object') {
          throw new MeshError('EUSAGE', `${what}: parameters must be an object`);
        }
        return f(p.nodeId, params as P);
      };
    };
    const d = this.dispatcher;
    this.server.register(
      'dispatcher.assignments',
      session('assignments', (n, p: DispatcherRpc['dispatcher.assignments']) =>
        d.assignments(n, p),
      ),
    );
    this.server.register(
      'dispatcher.status',
      session('task status', (n, p: DispatcherRpc['dispatcher.status']) => d.status(n, p)),
    );
    this.server.register(
      'dispatcher.lbWait',
      session('lb wait', (n, p: DispatcherRpc['dispatcher.lbWait']) => d.lbWait(n, p)),
    );
    this.server.register(
      'dispatcher.logs',
      session('task logs', (n, p: DispatcherRpc['dispatcher.logs']) => d.logs(n, p)),
    );
    this.server.register('network.attach', (params, peer) => {
      const p = this.requirePeer(peer, 'attach');
      const o = (params ?? {}) as { networkRef?: unknown; taskId?: unknown; taskName?: unknown };
      if (typeof o.networkRef !== 'string' || typeof o.taskId !== 'string') {
        throw new MeshError('EUSAGE', 'attach: networkRef and taskId are required');
      }
      return this.attach({
        networkRef: o.networkRef,
        taskId: o.taskId,
        taskName: typeof o.taskName === 'string' ? o.taskName : o.taskId,
        nodeId: p.nodeId,
      });
    });
    this.server.register('network.detach', async (params, peer) => {
      const p = this.requirePeer(peer, 'detach');
      const taskId = (params as { taskId?: unknown } | null)?.taskId;
      if (typeof taskId !== 'string') throw new MeshError('EUSAGE', 'detach: taskId is required');
      const t = await this.read((s) => s.get('task', taskId));
      if (t && t.nodeId !== p.nodeId) {
        throw new MeshError('EAUTH', `detach task ${taskId}: it belongs to another node`);
      }
      if (t) await this.detach(taskId);
      return { ok: true };
    });
    this.server.register('network.get', async (params, peer) => {
      this.requirePeer(peer, 'network');
      const id = (params as { id?: unknown } | null)?.id;
      return this.read((s) => (typeof id === 'string' ? (s.get('network', id) ?? null) : null));
    });
  }

  private async handleJoin(req: JoinRequest): Promise<JoinReply> {
    if (typeof req?.token !== 'string' || typeof req.csrPem !== 'string') {
      throw new MeshError('EUSAGE', 'join: token and csrPem are required');
    }
    const cluster = await this.read(() => this.cluster());
    const tok = parseJoinToken(req.token);
    if (tok.digest !== caDigest(cluster.caCertPem)) {
      throw new MeshError(
        'ETOKEN',
        'join: the token is for another cluster (its CA digest does not match this one); get a token from a manager of this cluster',
      );
    }
    let role: 'manager' | 'worker';
    if (tokenMatches(req.token, cluster.caCertPem, cluster.tokens.manager)) role = 'manager';
    else if (tokenMatches(req.token, cluster.caCertPem, cluster.tokens.worker)) role = 'worker';
    else {
      throw new MeshError(
        'ETOKEN',
        'join: the token is not valid (rotated or mistyped); get a current one with `meshctl cluster join-token worker|manager` on a manager',
      );
    }
    const nodeId = newId();
    const advertise = String(req.advertiseAddr ?? '');
    const certPem = await issueNodeCert({
      caCertPem: cluster.caCertPem,
      caKeyPem: cluster.caKeyPem,
      csrPem: req.csrPem,
      nodeId,
      role,
      clusterId: cluster.clusterId,
      ...(advertise ? { ips: [advertise] } : {}),
    });
    const ident = certIdentity(certPem);
    const raftId = role === 'manager' ? newRaftId() : undefined;
    await this.commit([
      {
        op: 'create',
        kind: 'node',
        value: {
          id: nodeId,
          hostname: String(req.hostname ?? nodeId).slice(0, 253),
          role,
          ...(raftId !== undefined ? { raftId, managerAddr: req.listenAddr } : {}),
          addr: advertise,
          ...(typeof req.gossipAddr === 'string' ? { gossipAddr: req.gossipAddr } : {}),
          availability: 'active',
          labels: {},
          status: { state: 'ready' },
          certificate: { notAfter: ident.notAfter.getTime(), serial: '' },
        },
      },
    ]);
    this.lastSeen.set(nodeId, Date.now());
    if (raftId !== undefined) await this.addLearner(raftId, nodeId, req.listenAddr);
    log.info('node joined', { nodeId, role, addr: advertise });
    return {
      nodeId,
      clusterId: cluster.clusterId,
      role,
      ...(raftId !== undefined ? { raftId } : {}),
      caPem: cluster.caCertPem,
      certPem,
      managers: this.managers(),
      heartbeatMs: cluster.settings.heartbeatPeriodMs,
      bootstrapVoters: [...(cluster.bootstrapRaftIds ?? [])],
    };
  }

  private async addLearner(raftId: number, nodeId: string, addr: string): Promise<void> {
    this.transport.setPeer(raftId, addr);
    await this.raft.changeMembership({
      type: ConfChangeType.AddLearner,
      nodeId: raftId,
      context: Buffer.from(JSON.stringify({ nodeId, addr })),
    });
  }

  private requirePeer(peer: PeerIdentity | null, what: string): PeerIdentity {
    if (peer === null || peer.clusterId !== this.state.clusterId) {
      throw new MeshError('EAUTH', `${what}: a node certificate of this cluster is required`);
    }
    return peer;
  }

  private requireLeader(what: string): void {
    if (!this.raft.isLeader) {
      const addr = this.leaderAddr();
      throw new MeshError(
        'ENOTLEADER',
        `${what}: this manager is not the leader${addr ? `; the leader is ${addr}` : ' and no leader is known'}`,
      );
    }
  }

  /** Agents report every heartbeat period; only the leader keeps the record. */
  private async handleHeartbeat(
    params: unknown,
    peer: PeerIdentity | null,
  ): Promise<HeartbeatReply> {
    const p = this.requirePeer(peer, 'heartbeat');
    void params;
    return this.localHeartbeat(p.nodeId);
  }

  /** A heartbeat from `nodeId` (the leader's own agent calls this directly). */
  async localHeartbeat(nodeId: string): Promise<HeartbeatReply> {
    this.requireLeader('heartbeat');
    this.lastSeen.set(nodeId, Date.now());
    const node = this.store.get('node', nodeId);
    if (!node) {
      throw new MeshError(
        'ENOTFOUND',
        `heartbeat: node ${nodeId} was removed from the cluster; join it again with a token`,
      );
    }
    if (node.status.state !== 'ready') {
      await this.commit([
        { op: 'update', kind: 'node', value: { ...node, status: { state: 'ready' } } },
      ]);
    }
    const gossipSeeds = this.store
      .list('node', (n) => n.id !== nodeId && n.status.state === 'ready' && !!n.gossipAddr)
      .slice(0, 5)
      .map((n) => n.gossipAddr!);
    return {
      gossipSeeds,
      heartbeatMs: this.cluster().settings.heartbeatPeriodMs,
      managers: this.managers(),
      // Until the leader has removed it from raft, a manager being demoted stays one.
      desiredRole: node.role === 'manager' ? 'manager' : (node.desiredRole ?? node.role),
    };
  }

  /** A worker whose node was promoted asks for its manager certificate and raft membership. */
  private async handlePromoteAccept(
    req: { csrPem: string; listenAddr: string },
    peer: PeerIdentity | null,
  ): Promise<JoinReply> {
    const p = this.requirePeer(peer, 'promote');
    const node = await this.read((s) => s.get('node', p.nodeId));
    if (!node || node.desiredRole !== 'manager') {
      throw new MeshError('ECONFLICT', `promote node ${p.nodeId}: it is not marked for promotion`);
    }
    const cluster = this.cluster();
    const certPem = await issueNodeCert({
      caCertPem: cluster.caCertPem,
      caKeyPem: cluster.caKeyPem,
      csrPem: req.csrPem,
      nodeId: node.id,
      role: 'manager',
      clusterId: cluster.clusterId,
      ips: node.addr ? [node.addr] : [],
    });
    const raftId = newRaftId();
    const { desiredRole: _drop, ...rest } = node;
    void _drop;
    await this.commit([
      {
        op: 'update',
        kind: 'node',
        value: { ...rest, role: 'manager', raftId, managerAddr: req.listenAddr },
        version: node.version,
      },
    ]);
    await this.addLearner(raftId, node.id, req.listenAddr);
    return {
      nodeId: node.id,
      clusterId: cluster.clusterId,
      role: 'manager',
      raftId,
      caPem: cluster.caCertPem,
      certPem,
      managers: this.managers(),
      heartbeatMs: cluster.settings.heartbeatPeriodMs,
      bootstrapVoters: [...(cluster.bootstrapRaftIds ?? [])],
    };
  }

  /** Re-issue a node's certificate with the role the store says it has (renewal, demotion). */
  private async handleRenew(req: { csrPem: string }, peer: PeerIdentity | null): Promise<unknown> {
    const p = this.requirePeer(peer, 'renew certificate');
    const node = await this.read((s) => s.get('node', p.nodeId));
    if (!node) throw new MeshError('ENOTFOUND', `renew certificate: node ${p.nodeId} was removed`);
    const cluster = this.cluster();
    const certPem = await issueNodeCert({
      caCertPem: cluster.caCertPem,
      caKeyPem: cluster.caKeyPem,
      csrPem: req.csrPem,
      nodeId: node.id,
      role: node.role,
      clusterId: cluster.clusterId,
      ips: node.addr ? [node.addr] : [],
    });
    return { certPem, caPem: cluster.caCertPem, role: node.role };
  }

  private async handleLeave(peer: PeerIdentity | null): Promise<unknown> {
    const p = this.requirePeer(peer, 'leave');
    const node = await this.read((s) => s.get('node', p.nodeId));
    if (node && node.role === 'worker') {
      await this.commit([
        {
          op: 'update',
          kind: 'node',
          value: { ...node, status: { state: 'down', message: 'left the cluster' } },
        },
      ]);
    }
    this.lastSeen.delete(p.nodeId);
    return { ok: true };
  }

  // ---- user operations (API) ----

  async joinToken(role: 'worker' | 'manager', rotate: boolean): Promise<string> {
    if (rotate) {
      const c = await this.read(() => this.cluster());
      const secret = makeJoinToken(c.caCertPem).split('-').pop()!;
      await this.commit([
        {
          op: 'update',
          kind: 'cluster',
          value: { ...c, tokens: { ...c.tokens, [role]: secret } },
          version: c.version,
        },
      ]);
    }
    const c = await this.read(() => this.cluster());
    return makeJoinToken(c.caCertPem, c.tokens[role]);
  }

  async findNode(ref: string): Promise<Node> {
    return this.read((s) => {
      const byId = s.get('node', ref);
      if (byId) return byId;
      const matches = s.list('node').filter((n) => n.hostname === ref || n.id.startsWith(ref));
      if (matches.length === 1) return matches[0]!;
      if (matches.length === 0) {
        throw new MeshError('ENOTFOUND', `node ${ref}: no such node; see \`meshctl node ls\``);
      }
      throw new MeshError(
        'EUSAGE',
        `node ${ref}: ambiguous, matches ${matches.map((n) => n.id).join(', ')}; use the full id`,
      );
    });
  }

  async updateNode(
    ref: string,
    change: {
      availability?: Node['availability'];
      labelAdd?: Record<string, string>;
      labelRm?: string[];
    },
  ): Promise<Node> {
    const n = await this.findNode(ref);
    const labels = { ...n.labels, ...(change.labelAdd ?? {}) };
    for (const k of change.labelRm ?? []) delete labels[k];
    await this.commit([
      {
        op: 'update',
        kind: 'node',
        value: { ...n, labels, availability: change.availability ?? n.availability },
        version: n.version,
      },
    ]);
    return this.findNode(n.id);
  }

  async promote(ref: string): Promise<Node> {
    const n = await this.findNode(ref);
    if (n.role === 'manager') return n;
    await this.commit([
      { op: 'update', kind: 'node', value: { ...n, desiredRole: 'manager' }, version: n.version },
    ]);
    return this.findNode(n.id);
  }

  async demote(ref: string): Promise<Node> {
    const n = await this.findNode(ref);
    if (n.role === 'worker') return n;
    const voters = this.raft.status().confState.voters.length;
    if (voters <= 1) {
      throw new MeshError(
        'ECONFLICT',
        `demote node ${n.hostname}: it is the last manager; promote another node first`,
      );
    }
    const reachable = this.reachableVoters();
    if (n.raftId !== undefined && reachable - 1 < Math.floor((voters - 1) / 2) + 1) {
      throw new MeshError(
        'ECONFLICT',
        `demote node ${n.hostname}: the remaining managers would lose quorum (${reachable} of ${voters} reachable); bring managers back first`,
      );
    }
    await this.commit([
      { op: 'update', kind: 'node', value: { ...n, desiredRole: 'worker' }, version: n.version },
    ]);
    return this.findNode(n.id);
  }

  async removeNode(ref: string, force: boolean): Promise<void> {
    const n = await this.findNode(ref);
    if (n.role === 'manager') {
      throw new MeshError(
        'ECONFLICT',
        `remove node ${n.hostname}: it is a manager; demote it first (\`meshctl node demote ${n.hostname}\`)`,
      );
    }
    if (n.status.state === 'ready' && !force) {
      throw new MeshError(
        'ECONFLICT',
        `remove node ${n.hostname}: it is up; run \`meshctl cluster leave\` on it first, or use --force`,
      );
    }
    await this.commit([{ op: 'delete', kind: 'node', id: n.id }]);
    this.lastSeen.delete(n.id);
  }

  /** Voters the leader heard from recently (itself included); on followers, all voters. */
  private reachableVoters(): number {
    const st = this.raft.status();
    if (st.role !== StateRole.Leader) return st.confState.voters.length;
    let n = 0;
    for (const id of st.confState.voters) {
      if (id === st.id) n++;
      else if ((st.progress.get(id)?.match ?? 0) + 100 >= st.commit) n++;
    }
    return n;
  }

  /** Leave as a manager (only with --force from the CLI): remove ourselves from raft first. */
  async leaveAsManager(): Promise<void> {
    const st = this.raft.status();
    const me = this.state.raftId!;
    if (st.confState.voters.length > 1) {
      if (this.raft.isLeader) {
        const other = st.confState.voters.find((v) => v !== me)!;
        this.raft.transferLeadership(other);
        await waitUntil(() => !this.raft.isLeader && this.raft.leader !== 0, 5000);
      }
      const node = this.store.get('node', this.state.nodeId);
      await this.raft.changeMembership({ type: ConfChangeType.RemoveNode, nodeId: me });
      if (node) await this.commit([{ op: 'delete', kind: 'node', id: node.id }]).catch(() => {});
    }
  }

  // ---- networks ----

  /**
   * Plan against the current state and commit; a plan made from state that changed meanwhile
   * (another allocation, another leader) fails with ECONFLICT on its version checks and is
   * made again, so addresses and VNIs are never handed out twice.
   */
  private async planAndCommit<T>(plan: () => { ops: Op[]; result: T }): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      await this.raft.readBarrier();
      const { ops, result } = plan();
      try {
        await this.commit(ops);
        return result;
      } catch (e) {
        if (!(e instanceof MeshError) || e.code !== 'ECONFLICT' || attempt >= 8) throw e;
        if (!/version|holds another value|stale/.test(e.message)) throw e;
      }
    }
  }

  createNetwork(spec: NetworkSpec): Promise<NetworkView> {
    const id = newId();
    return this.planAndCommit(() => {
      const { ops } = planCreateNetwork(this.store, spec, id);
      return { ops, result: undefined };
    }).then(() => this.read((s) => describeNetwork(s, id)));
  }

  /** The ingress network every cluster gets at init. */
  async createIngressNetwork(): Promise<void> {
    const id = newId();
    await this.planAndCommit(() => ({ ops: planIngressNetwork(this.store, id).ops, result: 0 }));
  }

  removeNetwork(ref: string): Promise<void> {
    return this.planAndCommit(() => ({
      ops: planRemoveNetwork(this.store, ref),
      result: undefined,
    }));
  }

  networks(): Promise<ReturnType<typeof listNetworks>> {
    return this.read((s) => listNetworks(s));
  }

  /** The store's view plus each attachment's VTEP (its node's underlay address). */
  inspectNetwork(ref: string): Promise<NetworkView & { attachments: { vtep?: string }[] }> {
    return this.read((s) => {
      const v = describeNetwork(s, ref);
      return {
        ...v,
        attachments: v.attachments.map((a) => {
          const addr = a.nodeId !== undefined ? s.get('node', a.nodeId)?.addr : undefined;
          return addr ? { ...a, vtep: addr } : a;
        }),
      };
    });
  }

  /** Allocate `taskId` an address on a network (standalone tasks: `meshctl run --network`). */
  attach(req: { networkRef: string; taskId: string; taskName: string; nodeId: string }) {
    return this.planAndCommit(() => {
      const r = planAttach(this.store, req);
      return { ops: r.ops, result: { address: r.address, network: r.network } };
    });
  }

  detach(taskId: string): Promise<void> {
    return this.planAndCommit(() => ({ ops: planDetach(this.store, taskId), result: undefined }));
  }

  // ---- leader housekeeping ----

  private async tick(): Promise<void> {
    if (this.closed || this.busyHousekeeping || !this.raft.isLeader) return;
    this.busyHousekeeping = true;
    try {
      await this.promoteCaughtUpLearners();
      await this.carryOutDemotions();
      await this.markSilentNodes();
    } catch (e) {
      log.debug('housekeeping deferred', { err: e });
    } finally {
      this.busyHousekeeping = false;
    }
  }

  private async promoteCaughtUpLearners(): Promise<void> {
    const st = this.raft.status();
    for (const id of st.confState.learners) {
      const pr = st.progress.get(id);
      if (pr && pr.match >= st.commit) {
        log.info('promoting caught-up learner', { raftId: id, match: pr.match });
        await this.raft.changeMembership({ type: ConfChangeType.PromoteLearner, nodeId: id });
      }
    }
  }

  private async carryOutDemotions(): Promise<void> {
    for (const n of this.store.list('node')) {
      if (n.desiredRole !== 'worker' || n.role !== 'manager') continue;
      const me = this.state.raftId;
      if (n.raftId === me) {
        // Never remove ourselves while leading: hand over, the next leader does it.
        const other = this.raft.status().confState.voters.find((v) => v !== me);
        if (other !== undefined) this.raft.transferLeadership(other);
        return;
      }
      if (n.raftId !== undefined && this.raft.status().confState.voters.includes(n.raftId)) {
        await this.raft.changeMembership({ type: ConfChangeType.RemoveNode, nodeId: n.raftId });
      }
      const cur = this.store.get('node', n.id)!;
      const { desiredRole: _d, raftId: _r, managerAddr: _m, ...rest } = cur;
      void _d;
      void _r;
      void _m;
      await this.commit([
        { op: 'update', kind: 'node', value: { ...rest, role: 'worker' }, version: cur.version },
      ]);
      log.info('demoted manager', { node: n.id });
    }
  }

  private async markSilentNodes(): Promise<void> {
    const period = this.store.get('cluster', CLUSTER_ID)?.settings.heartbeatPeriodMs;
    if (period === undefined) return;
    const now = Date.now();
    // This runs every 250 ms. A longer gap means this manager was not running (stopped, CPU
    // starved, a suspended VM) or its commits were slow: heartbeats that arrived meanwhile are
    // still unread in its sockets, and the time it lost is no node's silence. Found by
    // test/netns/manager-pause: an 8 s SIGSTOP of the manager had nodes marked down on resume.
    // (A check from before this term is no pause: the new-leader grace below covers that.)
    const prev = this.lastSilentCheck;
    this.lastSilentCheck = now;
    if (prev > 0 && prev >= this.leaderAt && now - prev > period) {
      this.resumedAt = now;
      log.info('housekeeping resumed after a pause; node silence counts from now', {
        pausedMs: now - prev,
      });
    }
    // A new leader has no heartbeat record yet: give every agent three periods to find it.
    if (now - this.leaderAt < 3 * period) return;
    for (const n of this.store.list('node')) {
      if (n.status.state !== 'ready') continue;
      const seen = Math.max(this.lastSeen.get(n.id) ?? this.leaderAt, this.resumedAt);
      // 2.5 periods: down within 5 s of the last heartbeat at the default 2 s (issue 6 asks
      // for ≤ 6 s; Swarm takes 15 s), yet one late heartbeat is not enough.
      if (now - seen > DOWN_AFTER_PERIODS * period) {
        log.warn('node missed heartbeats; marking it down', { node: n.id, silentMs: now - seen });
        await this.commit([
          {
            op: 'update',
            kind: 'node',
            value: {
              ...n,
              status: {
                state: 'down',
                message: `no heartbeat for ${Math.round((now - seen) / 1000)} s`,
              },
            },
            version: n.version,
          },
        ]);
      }
    }
  }

  /** Replace this manager's certificate (renewal or role change) on the listener and dialler. */
  setCredentials(c: Credentials): void {
    this.creds = c;
    this.server.setCredentials({ key: c.keyPem, cert: chainPem(c.certPem, c.caPem), ca: c.caPem });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.housekeeping) clearInterval(this.housekeeping);
    this.services.stop();
    this.dispatcher.close();
    await this.server.close();
    this.transport.close();
    await this.raft.close();
  }

  static defaultHostname(): string {
    return osHostname();
  }
}

function parseCtx(ctx: Uint8Array | undefined): { nodeId: string; addr: string } | null {
  if (!ctx || ctx.length === 0) return null;
  try {
    const o = JSON.parse(Buffer.from(ctx).toString('utf8')) as { nodeId?: unknown; addr?: unknown };
    if (typeof o.addr === 'string' && typeof o.nodeId === 'string') {
      return { nodeId: o.nodeId, addr: o.addr };
    }
  } catch {
    // not ours
  }
  return null;
}

/** Our certificate followed by the CA's, so a joiner can pin the CA it is sent. */
function chainPem(certPem: string, caPem: string): string {
  return `${certPem.trimEnd()}\n${caPem.trimEnd()}\n`;
}

export function splitHostPort(addr: string): [string, string] {
  const i = addr.lastIndexOf(':');
  if (i <= 0) throw new MeshError('EUSAGE', `address ${addr}: expected IP:PORT`);
  return [addr.slice(0, i).replace(/^\[|\]$/g, ''), addr.slice(i + 1)];
}

async function waitUntil(f: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}
