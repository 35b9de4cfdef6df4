/**
 * The daemon's cluster role: this node's membership (init, join, leave), the manager it runs
 * when it is one, the agent session every node keeps with the leader (heartbeats; promotion
 * and demotion are carried out from there), and the cluster/node/raft API routes.
 *
 * May import: manager/, raft/, util/, ./api, ./config.
 */
import { hostname } from 'node:os';
import {
  caDigest,
  certIdentity,
  createCA,
  createCsr,
  generateNodeKey,
  issueNodeCert,
  makeJoinToken,
  needsRenewal,
  parseJoinToken,
} from '../manager/ca/pki.js';
import {
  NodeFiles,
  newRaftId,
  type Credentials,
  type ManagerAddr,
  type NodeState,
} from '../manager/ca/identity.js';
import type { NetworkSpec } from '../api/networks.js';
import type { WalFs } from '../raft/wal.js';
import { Manager, splitHostPort, type HeartbeatReply, type JoinReply } from '../manager/manager.js';
import { forceNewCluster } from '../manager/store/recovery.js';
import { RpcClient } from '../manager/dispatch/server.js';
import { StateRole } from '../raft/index.js';
import { MeshError, UsageError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import type { ApiServer } from './api.js';
import type { DaemonConfig } from './config.js';
import type { GossipRole } from './gossip.js';
import { newId } from '../util/ids.js';

const log = createLogger('cluster');

const RPC_TIMEOUT_MS = 10_000;
/** Bounds of `cluster init --dispatcher-heartbeat` (Swarm's flag of the same name). */
const MIN_HEARTBEAT_MS = 100;
const MAX_HEARTBEAT_MS = 60_000;

export class ClusterRole {
  private readonly files: NodeFiles;
  private state: NodeState | null;
  private creds: Credentials | null;
  manager: Manager | undefined;
  private session: NodeJS.Timeout | undefined;
  private rpc: { addr: string; client: RpcClient } | undefined;
  private heartbeatMs = 2000;
  private readonly sessionListeners: (() => void)[] = [];
  private lastHeartbeatOk = 0;
  private lastHeartbeatError = '';
  private changing = false;
  private stopped = false;

  private lastGossipJoin = 0;

  private constructor(
    private readonly cfg: DaemonConfig,
    private readonly gossip: GossipRole | undefined,
    private readonly walFs: WalFs | undefined,
  ) {
    this.files = new NodeFiles(cfg.dataDir);
    this.state = this.files.loadState();
    this.creds = this.files.loadCredentials();
  }

  static async start(
    cfg: DaemonConfig,
    api: ApiServer,
    opts: { forceNewCluster?: boolean; gossip?: GossipRole; walFs?: WalFs } = {},
  ): Promise<ClusterRole> {
    const c = new ClusterRole(cfg, opts.gossip, opts.walFs);
    c.routes(api);
    if (c.state && c.creds) {
      if (c.state.role === 'manager') {
        if (opts.forceNewCluster) await forceNewCluster(c.files, c.state);
        await c.startManager();
      }
      c.startSession();
    } else if (opts.forceNewCluster) {
      throw new UsageError('--force-new-cluster: this node is not a manager of any cluster');
    }
    return c;
  }

  private async startManager(bootstrapVoters?: number[]): Promise<void> {
    const walFs = this.walFs;
    this.manager = await Manager.start({
      files: this.files,
      state: this.state!,
      creds: this.creds!,
      ...(bootstrapVoters ? { bootstrapVoters } : {}),
      ...(walFs ? { walFs } : {}),
      onRemoved: () => void this.demoted(),
    });
  }

  private listenAddr(req?: string): string {
    if (req) {
      splitHostPort(req);
      return req;
    }
    return `${this.cfg.listenAddr.host}:${this.cfg.listenAddr.port}`;
  }

  /** The address other managers dial: the listener's, with 0.0.0.0 replaced by --advertise-addr. */
  private dialAddr(listen: string, advertise: string): string {
    const [host, port] = splitHostPort(listen);
    return `${host === '0.0.0.0' || host === '::' ? advertise : host}:${port}`;
  }

  private advertise(req?: string): string {
    const a = req ?? this.cfg.advertiseAddr;
    if (!a) {
      throw new UsageError(
        'an advertise address is needed: pass --advertise-addr IP (to meshctl or meshd) with an address the other nodes reach this one at',
      );
    }
    return a;
  }

  private requireNoCluster(what: string): void {
    if (this.state) {
      throw new MeshError(
        'ECONFLICT',
        `${what}: this node is already in cluster ${this.state.clusterId} as a ${this.state.role}; run \`meshctl cluster leave\` first`,
      );
    }
  }

  private requireManager(what: string): Manager {
    if (!this.state) {
      throw new MeshError(
        'ENOCLUSTER',
        `${what}: this node is not in a cluster; run \`meshctl cluster init\` or \`meshctl cluster join\``,
      );
    }
    if (!this.manager) {
      const mgrs = this.state.managers.map((m) => m.addr).join(', ');
      throw new MeshError(
        'ENOTMANAGER',
        `${what}: this node is a worker; run it on a manager (${mgrs || 'none known'})`,
      );
    }
    return this.manager;
  }

  // ---- init / join / leave ----

  async init(req: {
    advertiseAddr?: string;
    listenAddr?: string;
    heartbeatMs?: unknown;
  }): Promise<unknown> {
    this.requireNoCluster('cluster init');
    const heartbeatMs = req.heartbeatMs;
    if (
      heartbeatMs !== undefined &&
      (typeof heartbeatMs !== 'number' ||
        !Number.isInteger(heartbeatMs) ||
        heartbeatMs < MIN_HEARTBEAT_MS ||
        heartbeatMs > MAX_HEARTBEAT_MS)
    ) {
      throw new UsageError(
        `cluster init: --dispatcher-heartbeat ${JSON.stringify(heartbeatMs)} ms is out of range: give 100ms to 1m (default 2s)`,
      );
    }
    if (this.changing)
      throw new MeshError('ECONFLICT', 'cluster init: another membership change is running');
    this.changing = true;
    try {
      const advertise = this.advertise(req.advertiseAddr);
      const listen = this.listenAddr(req.listenAddr);
      const nodeId = newId();
      const clusterId = newId();
      const ca = await createCA();
      const { keyPem, csrPem } = await generateNodeKey(nodeId);
      const certPem = await issueNodeCert({
        caCertPem: ca.certPem,
        caKeyPem: ca.keyPem,
        csrPem,
        nodeId,
        role: 'manager',
        clusterId,
        ips: [advertise],
      });
      const raftId = newRaftId();
      const self: ManagerAddr = { raftId, nodeId, addr: this.dialAddr(listen, advertise) };
      this.files.wipeRaft();
      this.creds = { caPem: ca.certPem, keyPem, certPem };
      this.state = {
        nodeId,
        clusterId,
        role: 'manager',
        raftId,
        advertiseAddr: advertise,
        listenAddr: listen,
        managers: [self],
      };
      await this.startManager([raftId]);
      const secret = () => makeJoinToken(ca.certPem).split('-').pop()!;
      await this.manager!.initialize(
        ca,
        { worker: secret(), manager: secret() },
        this.hostname(),
        self.addr,
        this.gossip ? `${advertise}:${this.cfg.gossipPort}` : undefined,
        heartbeatMs,
      );
      await this.manager!.createIngressNetwork();
      this.files.saveCredentials(this.creds);
      this.files.saveState(this.state);
      this.startSession();
      log.info('cluster initialized', { clusterId, nodeId, listen });
      return { clusterId, nodeId, role: 'manager', managerAddr: self.addr };
    } catch (e) {
      await this.manager?.close();
      this.manager = undefined;
      this.state = null;
      this.creds = null;
      this.files.wipe();
      throw e;
    } finally {
      this.changing = false;
    }
  }

  private hostname(): string {
    return this.cfg.nodeName || hostname();
  }

  /** Dial a manager, pinning its CA to the digest in the token (we have no CA yet). */
  private async dialWithToken(addr: string, token: string): Promise<RpcClient> {
    const tok = parseJoinToken(token);
    const [host, port] = splitHostPort(addr);
    return RpcClient.connect({
      host,
      port: Number(port),
      timeoutMs: RPC_TIMEOUT_MS,
      checkServer: (chain: Buffer[]) => {
        const root = chain[chain.length - 1];
        const pem = root ? derToPem(root) : '';
        if (!root || caDigest(pem) !== tok.digest) {
          throw new MeshError(
            'ETOKEN',
            `join ${addr}: the manager's CA does not match the token's digest; check the address and the token`,
          );
        }
      },
    });
  }

  async join(req: {
    token: string;
    addr: string;
    advertiseAddr?: string;
    listenAddr?: string;
  }): Promise<unknown> {
    this.requireNoCluster('cluster join');
    if (typeof req.token !== 'string' || typeof req.addr !== 'string') {
      throw new UsageError(
        'cluster join: --token TOKEN and a manager address IP:PORT are required',
      );
    }
    if (this.changing)
      throw new MeshError('ECONFLICT', 'cluster join: another membership change is running');
    this.changing = true;
    try {
      const addr = /:\d+$/.test(req.addr) ? req.addr : `${req.addr}:2377`;
      const advertise = this.advertise(req.advertiseAddr);
      const listen = this.listenAddr(req.listenAddr);
      const client = await this.dialWithToken(addr, req.token);
      let reply: JoinReply;
      const { keyPem, csrPem } = await generateNodeKey();
      try {
        reply = (await client.call(
          'join',
          {
            token: req.token,
            csrPem,
            hostname: this.hostname(),
            advertiseAddr: advertise,
            listenAddr: this.dialAddr(listen, advertise),
            ...(this.gossip ? { gossipAddr: `${advertise}:${this.cfg.gossipPort}` } : {}),
          },
          RPC_TIMEOUT_MS,
        )) as JoinReply;
      } finally {
        client.close();
      }
      this.creds = { caPem: reply.caPem, keyPem, certPem: reply.certPem };
      this.state = {
        nodeId: reply.nodeId,
        clusterId: reply.clusterId,
        role: reply.role,
        ...(reply.raftId !== undefined ? { raftId: reply.raftId } : {}),
        advertiseAddr: advertise,
        listenAddr: listen,
        managers: reply.managers,
      };
      this.heartbeatMs = reply.heartbeatMs;
      this.files.wipeRaft();
      this.files.saveCredentials(this.creds);
      this.files.saveState(this.state);
      if (reply.role === 'manager') {
        await this.startManager(reply.bootstrapVoters);
        await this.waitVoter(30_000);
      }
      this.startSession();
      log.info('joined cluster', {
        clusterId: reply.clusterId,
        nodeId: reply.nodeId,
        role: reply.role,
      });
      return { clusterId: reply.clusterId, nodeId: reply.nodeId, role: reply.role };
    } finally {
      this.changing = false;
    }
  }

  private async waitVoter(ms: number): Promise<void> {
    const m = this.manager!;
    const id = this.state!.raftId!;
    const end = Date.now() + ms;
    while (Date.now() < end) {
      const st = m.raft.status();
      if (st.confState.voters.includes(id) && st.lead !== 0) return;
      await sleep(50);
    }
    throw new MeshError(
      'ETIMEDOUT',
      'join as manager: not promoted to a voting member within 30 s; it is still catching up or the leader cannot reach this node at its --listen-addr (check firewalls for TCP 2377); see `meshctl cluster info`',
    );
  }

  async leave(req: { force?: boolean }): Promise<unknown> {
    if (!this.state) {
      throw new MeshError('ENOCLUSTER', 'cluster leave: this node is not in a cluster');
    }
    if (this.manager && !req.force) {
      const voters = this.manager.raft.status().confState.voters.length;
      throw new MeshError(
        'ECONFLICT',
        `cluster leave: this node is a manager (one of ${voters}); demote it first with \`meshctl node demote ${this.state.nodeId}\` on a manager, or pass --force (the remaining managers must keep a quorum)`,
      );
    }
    this.stopSession();
    if (this.manager) {
      await this.manager
        .leaveAsManager()
        .catch((e: unknown) =>
          log.warn('leave: could not remove this manager from raft', { err: e }),
        );
      await this.manager.close();
      this.manager = undefined;
    } else {
      await this.callManager('leave', {}).catch((e: unknown) =>
        log.warn('leave: managers not told', { err: e }),
      );
    }
    this.closeRpc();
    const clusterId = this.state.clusterId;
    this.files.wipe();
    this.state = null;
    this.creds = null;
    log.info('left the cluster', { clusterId });
    return { left: clusterId };
  }

  // ---- agent session ----

  /** Call `cb` whenever this node starts a session in a cluster (start, init, join). */
  onSession(cb: () => void): void {
    this.sessionListeners.push(cb);
    if (this.session) cb();
  }

  private startSession(): void {
    for (const cb of this.sessionListeners) queueMicrotask(cb);
    this.stopSession();
    const beat = (): void => {
      if (this.stopped) return;
      void this.heartbeat().finally(() => {
        if (!this.stopped && this.state) this.session = setTimeout(beat, this.heartbeatMs);
      });
    };
    this.session = setTimeout(beat, 10);
  }

  private stopSession(): void {
    if (this.session) clearTimeout(this.session);
    this.session = undefined;
  }

  private closeRpc(): void {
    this.rpc?.client.close();
    this.rpc = undefined;
  }

  /** True once this node belongs to a cluster (init or join done). */
  get inCluster(): boolean {
    return this.state !== null && this.creds !== null;
  }

  /** This node's id in the cluster (undefined outside one). */
  get nodeId(): string | undefined {
    return this.state?.nodeId;
  }

  /** RPC to the managers for other roles (the agent): same as the heartbeat's path. */
  managerRpc(method: string, params: unknown, timeoutMs?: number): Promise<unknown> {
    if (!this.inCluster) {
      return Promise.reject(
        new MeshError(
          'ENOCLUSTER',
          `${method}: this node is not in a cluster; run \`meshctl cluster init\` or \`meshctl cluster join\``,
        ),
      );
    }
    return this.callManager(method, params, timeoutMs);
  }

  /** Call a manager with this node's certificate; follows ENOTLEADER redirects once. */
  private async callManager(
    method: string,
    params: unknown,
    timeoutMs = RPC_TIMEOUT_MS,
  ): Promise<unknown> {
    const st = this.state!;
    const creds = this.creds!;
    const candidates = [
      ...(this.rpc ? [this.rpc.addr] : []),
      ...st.managers.map((m) => m.addr).filter((a) => a !== this.rpc?.addr),
    ];
    let lastErr: unknown = new MeshError('EUNAVAILABLE', 'no manager known');
    for (let i = 0; i < candidates.length + 1 && i < 6; i++) {
      const addr = candidates[i];
      if (addr === undefined) break;
      try {
        if (!this.rpc || this.rpc.addr !== addr) {
          this.closeRpc();
          const [host, port] = splitHostPort(addr);
          const client = await RpcClient.connect({
            host,
            port: Number(port),
            key: creds.keyPem,
            cert: creds.certPem,
            ca: creds.caPem,
            timeoutMs: RPC_TIMEOUT_MS,
          });
          this.rpc = { addr, client };
        }
        return await this.rpc.client.call(method, params, timeoutMs);
      } catch (e) {
        lastErr = e;
        // The manager answered with a refusal of its own: the connection is fine and another
        // manager would say the same. Only transport trouble and redirects move on.
        if (
          e instanceof MeshError &&
          !['ECONN', 'ETIMEDOUT', 'EWIRE', 'ENOTLEADER', 'EUNAVAILABLE', 'EAUTH'].includes(e.code)
        ) {
          throw e;
        }
        this.closeRpc();
        const m =
          e instanceof MeshError && e.code === 'ENOTLEADER'
            ? /the leader is (\S+)$/.exec(e.message)
            : null;
        if (m) candidates.splice(i + 1, 0, m[1]!);
      }
    }
    throw lastErr;
  }

  private async heartbeat(): Promise<void> {
    if (!this.state || this.changing) return;
    try {
      let reply: HeartbeatReply;
      if (this.manager?.raft.isLeader) {
        reply = await this.manager.localHeartbeat(this.state.nodeId);
      } else {
        reply = (await this.callManager('heartbeat', {
          nodeId: this.state.nodeId,
        })) as typeof reply;
      }
      this.lastHeartbeatOk = Date.now();
      if (
        this.gossip &&
        reply.gossipSeeds.length > 0 &&
        this.gossip.peerCount() === 0 &&
        Date.now() - this.lastGossipJoin > 5000
      ) {
        this.lastGossipJoin = Date.now();
        void this.gossip.joinSeeds(reply.gossipSeeds).catch(() => undefined);
      }
      this.lastHeartbeatError = '';
      this.heartbeatMs = reply.heartbeatMs;
      if (
        reply.managers.length > 0 &&
        JSON.stringify(reply.managers) !== JSON.stringify(this.state.managers)
      ) {
        this.state = { ...this.state, managers: reply.managers };
        this.files.saveState(this.state);
      }
      if (this.creds && needsRenewal(this.creds.certPem, new Date())) await this.renewCert();
      if (reply.desiredRole === 'manager' && !this.manager) await this.becomeManager();
      // A removed member does not always see its own removal commit (the leader stops
      // replicating to it), so the store's verdict, read by the leader, settles it.
      else if (reply.desiredRole === 'worker' && this.manager) await this.demoted();
    } catch (e) {
      this.lastHeartbeatError = (e as Error).message;
      log.debug('heartbeat failed', { err: e });
    }
  }

  /** Past half its validity the node certificate is re-issued (same key, same identity). */
  private async renewCert(): Promise<void> {
    const st = this.state!;
    const csrPem = await createCsr(this.creds!.keyPem, st.nodeId);
    const r = (await this.callManager('cert.renew', { csrPem })) as {
      certPem: string;
      caPem: string;
    };
    this.creds = { ...this.creds!, certPem: r.certPem, caPem: r.caPem };
    this.files.saveCredentials(this.creds);
    this.manager?.setCredentials(this.creds);
    this.closeRpc(); // the next call presents the new certificate
    log.info('node certificate renewed', {
      notAfter: certIdentity(r.certPem).notAfter.toISOString(),
    });
  }

  /** This worker was promoted: take a manager certificate and a raft id, start the manager. */
  private async becomeManager(): Promise<void> {
    this.changing = true;
    try {
      const st = this.state!;
      const csrPem = await createCsr(this.creds!.keyPem, st.nodeId);
      const listen = this.listenAddr();
      const reply = (await this.callManager('promote.accept', {
        csrPem,
        listenAddr: this.dialAddr(listen, st.advertiseAddr),
      })) as JoinReply;
      this.creds = { ...this.creds!, certPem: reply.certPem, caPem: reply.caPem };
      this.state = {
        ...st,
        role: 'manager',
        raftId: reply.raftId!,
        listenAddr: listen,
        managers: reply.managers,
      };
      this.files.wipeRaft();
      this.files.saveCredentials(this.creds);
      this.files.saveState(this.state);
      this.closeRpc();
      await this.startManager(reply.bootstrapVoters);
      log.info('promoted to manager', { raftId: reply.raftId });
    } catch (e) {
      log.warn('promotion failed; will retry', { err: e });
    } finally {
      this.changing = false;
    }
  }

  /** Raft removed this manager (demotion): continue as a worker with a worker certificate. */
  private async demoted(): Promise<void> {
    if (!this.manager || !this.state) return;
    this.changing = true;
    try {
      const m = this.manager;
      this.manager = undefined;
      await m.close();
      this.files.wipeRaft();
      const st = this.state;
      this.state = {
        ...st,
        role: 'worker',
        managers: st.managers.filter((x) => x.nodeId !== st.nodeId),
      };
      delete this.state.raftId;
      this.files.saveState(this.state);
      const csrPem = await createCsr(this.creds!.keyPem, st.nodeId);
      for (let i = 0; i < 20 && !this.stopped; i++) {
        try {
          const r = (await this.callManager('cert.renew', { csrPem })) as {
            certPem: string;
            caPem: string;
            role: string;
          };
          if (r.role === 'worker') {
            this.creds = { ...this.creds!, certPem: r.certPem, caPem: r.caPem };
            this.files.saveCredentials(this.creds);
            break;
          }
        } catch (e) {
          log.debug('renew after demotion failed; retrying', { err: e });
        }
        await sleep(500);
      }
      this.closeRpc();
      log.info('demoted to worker');
    } finally {
      this.changing = false;
    }
  }

  // ---- API ----

  private routes(api: ApiServer): void {
    const body = (b: unknown): Record<string, unknown> =>
      b && typeof b === 'object' ? (b as Record<string, unknown>) : {};
    const text = (v: unknown): string => (typeof v === 'string' ? v : '');
    const str = (v: unknown): string | undefined =>
      typeof v === 'string' && v !== '' ? v : undefined;
    api.route('POST', '/v1/cluster/init', ({ body: b }) => {
      const o = body(b);
      return this.init({
        ...(str(o.advertiseAddr) ? { advertiseAddr: str(o.advertiseAddr)! } : {}),
        ...(str(o.listenAddr) ? { listenAddr: str(o.listenAddr)! } : {}),
        ...(o.heartbeatMs !== undefined ? { heartbeatMs: o.heartbeatMs } : {}),
      });
    });
    api.route('POST', '/v1/cluster/join', ({ body: b }) => {
      const o = body(b);
      return this.join({
        token: text(o.token),
        addr: text(o.addr),
        ...(str(o.advertiseAddr) ? { advertiseAddr: str(o.advertiseAddr)! } : {}),
        ...(str(o.listenAddr) ? { listenAddr: str(o.listenAddr)! } : {}),
      });
    });
    api.route('POST', '/v1/cluster/leave', ({ body: b }) =>
      this.leave({ force: body(b).force === true }),
    );
    api.route('GET', '/v1/cluster/join-token', async ({ query }) => {
      const role = query.get('role');
      if (role !== 'worker' && role !== 'manager') {
        throw new UsageError('cluster join-token: say worker or manager');
      }
      const m = this.requireManager('cluster join-token');
      return { role, token: await m.joinToken(role, query.get('rotate') === '1') };
    });
    api.route('GET', '/v1/cluster', () => this.info());
    api.route('GET', '/v1/raft/status', () => this.raftStatus());
    api.route('GET', '/v1/nodes', async () => {
      const m = this.requireManager('node ls');
      const nodes = await m.read((s) => s.list('node'));
      return nodes.map((n) => ({ ...n, ...this.managerStatus(m, n.raftId) }));
    });
    api.route('GET', '/v1/node', async ({ query }) => {
      const m = this.requireManager('node inspect');
      const n = await m.findNode(query.get('id') ?? '');
      return { ...n, ...this.managerStatus(m, n.raftId) };
    });
    api.route('POST', '/v1/node/update', ({ body: b }) => {
      const o = body(b);
      const m = this.requireManager('node update');
      const avail = o.availability;
      if (avail !== undefined && avail !== 'active' && avail !== 'pause' && avail !== 'drain') {
        throw new UsageError('node update --availability: want active, pause or drain');
      }
      const labelAdd = (o.labelAdd ?? {}) as Record<string, string>;
      const labelRm = (o.labelRm ?? []) as string[];
      return m.updateNode(text(o.id), {
        ...(avail !== undefined ? { availability: avail } : {}),
        labelAdd,
        labelRm,
      });
    });
    api.route('POST', '/v1/node/promote', ({ body: b }) =>
      this.requireManager('node promote').promote(text(body(b).id)),
    );
    api.route('POST', '/v1/node/demote', ({ body: b }) =>
      this.requireManager('node demote').demote(text(body(b).id)),
    );
    api.route('POST', '/v1/node/rm', async ({ body: b }) => {
      const o = body(b);
      await this.requireManager('node rm').removeNode(text(o.id), o.force === true);
      return { removed: o.id };
    });
    api.route('POST', '/v1/networks', ({ body: b }) => {
      const o = body(b);
      const m = this.requireManager('net create');
      const subnets = Array.isArray(o.subnets) ? (o.subnets as NetworkSpec['subnets']) : undefined;
      const spec: NetworkSpec = {
        name: text(o.name),
        ...(typeof o.driver === 'string' ? { driver: o.driver } : {}),
        ...(subnets ? { subnets } : {}),
        attachable: o.attachable === true,
        internal: o.internal === true,
        encrypted: o.encrypted === true,
        ...(typeof o.mtu === 'number' ? { mtu: o.mtu } : {}),
        ...(o.labels && typeof o.labels === 'object'
          ? { labels: o.labels as Record<string, string> }
          : {}),
      };
      return m.createNetwork(spec);
    });
    api.route('GET', '/v1/networks', () => this.requireManager('net ls').networks());
    api.route('GET', '/v1/network', ({ query }) =>
      this.requireManager('net inspect').inspectNetwork(query.get('id') ?? ''),
    );
    api.route('POST', '/v1/network/rm', async ({ body: b }) => {
      const id = text(body(b).id);
      await this.requireManager('net rm').removeNetwork(id);
      return { removed: id };
    });
    // Services (issue 6): the controller validates bodies itself (EUSAGE → exit 2).
    api.route('POST', '/v1/services', ({ body: b }) =>
      this.requireManager('service create').services.create(b),
    );
    api.route('GET', '/v1/services', () => this.requireManager('service ls').services.list());
    api.route('GET', '/v1/service', ({ query }) =>
      this.requireManager('service inspect').services.inspect(query.get('id') ?? ''),
    );
    api.route('POST', '/v1/service/update', ({ body: b }) =>
      this.requireManager('service update').services.update(text(body(b).id), b),
    );
    api.route('POST', '/v1/service/scale', ({ body: b }) => {
      const o = body(b);
      if (typeof o.replicas !== 'number' || !Number.isSafeInteger(o.replicas) || o.replicas < 0) {
        throw new UsageError('service scale: replicas must be a whole number ≥ 0');
      }
      return this.requireManager('service scale').services.scale(text(o.id), o.replicas);
    });
    api.route('POST', '/v1/service/rollback', ({ body: b }) =>
      this.requireManager('service rollback').services.rollback(text(body(b).id)),
    );
    api.route('POST', '/v1/service/rm', async ({ body: b }) => {
      const id = text(body(b).id);
      await this.requireManager('service rm').services.remove(id);
      return { removed: id };
    });
    // The CLI's wait after create/scale/update/rollback: once every replica runs, every node's
    // load balancer must have applied the view holding the service's latest task change (the
    // dispatcher's lbWait, asked of the leader with this node's identity, as agents do).
    api.route('POST', '/v1/service/served', async ({ body: b }) => {
      const o = body(b);
      const timeoutMs = typeof o.timeoutMs === 'number' ? o.timeoutMs : 30_000;
      if (!Number.isFinite(timeoutMs) || timeoutMs < 0) {
        throw new UsageError('service served: timeoutMs must be a number of ms ≥ 0');
      }
      const m = this.requireManager('service served');
      const svc = await m.services.inspect(text(o.id));
      let version = 0;
      for (const t of m.store.list('task', (t) => t.serviceId === svc.id)) {
        version = Math.max(version, t.version);
      }
      const r = (await this.managerRpc(
        'dispatcher.lbWait',
        { version, timeoutMs },
        timeoutMs + 5_000,
      )) as { waitedMs: number; pending: string[] };
      return { version, waitedMs: r.waitedMs, pending: r.pending };
    });
    api.route('GET', '/v1/service/tasks', ({ query }) => {
      const id = query.get('id');
      return this.requireManager('service ps').services.tasks(id ?? undefined);
    });
    api.route('GET', '/v1/service/logs', async ({ query }) => {
      const m = this.requireManager('service logs');
      const tail = Number(query.get('tail') ?? '0');
      if (!Number.isSafeInteger(tail) || tail < 0) {
        throw new UsageError('service logs: --tail wants a whole number ≥ 0');
      }
      const svc = await m.services.inspect(query.get('id') ?? '');
      const tasks = m.store.list('task', (t) => t.serviceId === svc.id && t.nodeId !== undefined);
      const byNode = new Map<string, typeof tasks>();
      for (const t of tasks) byNode.set(t.nodeId!, [...(byNode.get(t.nodeId!) ?? []), t]);
      const logs: Record<string, string> = {};
      const missing: string[] = [];
      await Promise.all(
        [...byNode].map(async ([nodeId, ts]) => {
          try {
            const got = await m.dispatcher.requestLogs(
              nodeId,
              ts.map((t) => t.id),
              tail,
              5_000,
            );
            for (const t of ts) {
              if (got[t.id] !== undefined) logs[t.name] = got[t.id]!;
            }
          } catch (e) {
            const host = m.store.get('node', nodeId)?.hostname ?? nodeId;
            missing.push(`${host}: ${(e as Error).message}`);
          }
        }),
      );
      return { logs, missing };
    });
    // Debug register: what the fault test and the raft benchmark drive. Writes are raft
    // commits; reads pass a ReadIndex barrier first, so both are linearizable.
    api.route('POST', '/v1/debug/kv', async ({ body: b }) => {
      const o = body(b);
      const key = text(o.key);
      const value = text(o.value);
      const m = this.requireManager('debug kv');
      if ('prev' in o) {
        if (o.prev !== null && typeof o.prev !== 'string') {
          throw new UsageError('debug kv: prev must be a string or null');
        }
        const prev = o.prev;
        await m.commit([{ op: 'cas', kind: 'kv', id: key, prev, value }]);
      } else {
        await m.commit([{ op: 'put', kind: 'kv', id: key, value }]);
      }
      return { ok: true, value };
    });
    api.route('GET', '/v1/debug/kv', async ({ query }) => {
      const m = this.requireManager('debug kv');
      const key = query.get('key') ?? '';
      const v = await m.read((s) => s.get('kv', key));
      return { value: v ? v.value : null };
    });
  }

  /** Manager status as this manager sees it: the leader, or whether our raft stream is up. */
  private managerStatus(
    m: Manager,
    raftId: number | undefined,
  ): { leader: boolean; managerStatus?: 'leader' | 'reachable' | 'unreachable' | 'catching up' } {
    if (raftId === undefined) return { leader: false };
    const leader = raftId === m.raft.leader;
    // A promoted manager is a learner until it has the log: it does not count for quorum yet,
    // so `reachable` (what scripts wait for before relying on it) must wait too.
    if (m.raft.status().confState.learners.includes(raftId)) {
      return { leader, managerStatus: 'catching up' };
    }
    const up = raftId === this.state?.raftId || m.transport.isConnected(raftId);
    return { leader, managerStatus: leader ? 'leader' : up ? 'reachable' : 'unreachable' };
  }

  info(): unknown {
    if (!this.state) return { cluster: null };
    const st = this.state;
    const id = this.creds ? certIdentity(this.creds.certPem) : null;
    return {
      clusterId: st.clusterId,
      nodeId: st.nodeId,
      role: st.role,
      advertiseAddr: st.advertiseAddr,
      managers: st.managers,
      certificate: id ? { role: id.role, notAfter: id.notAfter.toISOString() } : null,
      session: {
        /** The cluster's heartbeat period, as the managers' last reply gave it. */
        heartbeatMs: this.heartbeatMs,
        lastHeartbeatMsAgo: this.lastHeartbeatOk ? Date.now() - this.lastHeartbeatOk : null,
        error: this.lastHeartbeatError || undefined,
      },
      raft: this.manager ? this.raftStatus() : undefined,
    };
  }

  raftStatus(): unknown {
    const m = this.requireManager('raft status');
    const s = m.raft.status();
    const role = ['follower', 'candidate', 'leader', 'precandidate'][s.role] ?? 'unknown';
    return {
      raftId: s.id,
      role,
      leader: s.lead,
      leaderAddr: m.leaderAddr() ?? null,
      term: s.term,
      commit: s.commit,
      applied: s.applied,
      firstIndex: s.firstIndex,
      lastIndex: s.lastIndex,
      voters: s.confState.voters,
      learners: s.confState.learners,
      progress:
        s.role === StateRole.Leader
          ? Object.fromEntries(
              [...s.progress].map(([k, v]) => [k, { match: v.match, next: v.next }]),
            )
          : undefined,
      counters: m.raft.counters,
      wal: m.raft.storage.stats(),
    };
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.stopSession();
    this.closeRpc();
    await this.manager?.close();
  }
}

function derToPem(der: Buffer): string {
  const b64 = der.toString('base64').replace(/(.{64})/g, '$1\n');
  return `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
