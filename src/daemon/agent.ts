/**
 * The daemon's agent role: the network tables (netdb over this node's gossip) and the task
 * agent (src/agent) once the node is in a cluster, and the task API routes behind
 * `meshctl run|ps|rm|logs` and `meshctl debug overlay`.
 *
 * The agent starts lazily: at daemon start when the node already belongs to a cluster, or at the
 * first task request after `cluster init`/`join`. It needs gossip (an --advertise-addr).
 * May import: agent/, netdb/, util/, ./api, ./cluster, ./config, ./gossip.
 */
import { Agent, type PeerTables } from '../agent/agent.js';
import { Worker } from '../agent/worker.js';
import { ServiceLb } from '../lb/mesh.js';
import { DnsServer, DnsTable, taskResolvConf } from '../dns/index.js';
import { NetworkDB } from '../netdb/netdb.js';
import { MeshError, UsageError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import type { ApiServer } from './api.js';
import type { ClusterRole } from './cluster.js';
import type { DaemonConfig } from './config.js';
import type { GossipRole } from './gossip.js';

const log = createLogger('agent');

export class AgentRole {
  private agent: Agent | undefined;
  private starting: Promise<Agent> | undefined;
  private netdb: NetworkDB | undefined;
  private worker: Worker | undefined;
  private lb: ServiceLb | undefined;
  private lbTimer: NodeJS.Timeout | undefined;
  private reachTimer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly cfg: DaemonConfig,
    private readonly cluster: ClusterRole,
    private readonly gossip: GossipRole | undefined,
  ) {}

  static async start(
    cfg: DaemonConfig,
    api: ApiServer,
    cluster: ClusterRole,
    gossip: GossipRole | undefined,
  ): Promise<AgentRole> {
    const r = new AgentRole(cfg, cluster, gossip);
    r.routes(api);
    if (cluster.inCluster && gossip) await r.ensure();
    // After init/join the node takes service tasks without waiting for a first `meshctl run`.
    if (gossip) {
      cluster.onSession(() => {
        if (cluster.inCluster) {
          void r.ensure().catch((e: unknown) => log.warn('agent start failed', { err: e }));
        }
      });
    }
    return r;
  }

  /** The agent, started on first use. */
  private ensure(): Promise<Agent> {
    if (this.agent) return Promise.resolve(this.agent);
    if (!this.cluster.inCluster) {
      return Promise.reject(
        new MeshError(
          'ENOCLUSTER',
          'tasks need a cluster (addresses come from the managers): run `meshctl cluster init` or `meshctl cluster join` first',
        ),
      );
    }
    if (!this.gossip || !this.cfg.advertiseAddr) {
      return Promise.reject(
        new MeshError(
          'EUNAVAILABLE',
          'tasks need gossip (the overlay peer tables ride on it): start meshd with --advertise-addr',
        ),
      );
    }
    const gossip = this.gossip;
    const vtep = this.cfg.advertiseAddr;
    this.starting ??= (async () => {
      this.netdb = NetworkDB.attach(gossip.ml, {
        config: { bulkSyncIntervalMs: this.cfg.netdbBulkSyncSec * 1000 },
      });
      const tables: PeerTables = this.netdb;
      const agent = await Agent.start({
        dataDir: this.cfg.dataDir,
        vtep,
        dataPathPort: this.cfg.dataPathPort,
        netnsPrefix: this.cfg.netnsPrefix,
        tables,
        manager: (method, params) => this.cluster.managerRpc(method, params),
      });
      const lb = await ServiceLb.start({
        netnsPrefix: this.cfg.netnsPrefix,
        backend: this.cfg.lbBackend,
        scheduler: this.cfg.lbScheduler,
        ...(Object.keys(this.cfg.lbTimeouts).length > 0 ? { timeouts: this.cfg.lbTimeouts } : {}),
        overlay: agent.overlay,
        nodeId: this.cluster.nodeId!,
        vtep,
      });
      this.lb = lb;
      // Drift (a hand-deleted rule, alias or namespace) is repaired and counted (`lb show`).
      this.lbTimer = setInterval(() => {
        void lb.reconcile().catch((e: unknown) => log.warn('lb reconcile failed', { err: e }));
      }, 30_000);
      // The self-check: a backend whose overlay path is missing leaves rotation within 2 s.
      const checkReach = (): void =>
        void lb.checkReach().catch((e: unknown) => log.warn('lb self-check failed', { err: e }));
      this.reachTimer = setInterval(checkReach, 2_000);
      // And at once when the overlay's peers change, so a new backend enters rotation as soon
      // as its path exists.
      agent.onPeersChanged(checkReach);
      this.agent = agent;
      const dnsTable = new DnsTable();
      const upstreams = this.cfg.dnsUpstreams;
      this.worker = new Worker({
        lb,
        dns: {
          update: (services) => dnsTable.update(services),
          serve: (netnsPath, networks) =>
            DnsServer.start({
              netnsPath,
              networks,
              table: dnsTable,
              ...(upstreams ? { upstreams } : {}),
            }),
          resolvConf: () => taskResolvConf(),
        },
        nodeId: this.cluster.nodeId!,
        nodeName: this.cfg.nodeName,
        agent,
        rpc: (method, params, timeoutMs) => this.cluster.managerRpc(method, params, timeoutMs),
      });
      this.worker.start();
      log.info('agent started', {
        vtep,
        dataPathPort: this.cfg.dataPathPort,
        lbBackend: lb.backendName,
      });
      return agent;
    })().catch((e: unknown) => {
      this.starting = undefined;
      throw e;
    });
    return this.starting;
  }

  private routes(api: ApiServer): void {
    const body = (b: unknown): Record<string, unknown> =>
      b && typeof b === 'object' ? (b as Record<string, unknown>) : {};
    const strings = (v: unknown, what: string): string[] => {
      if (v === undefined) return [];
      if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
        throw new UsageError(`${what} must be a list of strings`);
      }
      return v;
    };
    api.route('POST', '/v1/tasks', async ({ body: b }) => {
      const o = body(b);
      const env: Record<string, string> = {};
      for (const kv of strings(o.env, 'env')) {
        const i = kv.indexOf('=');
        if (i <= 0) throw new UsageError(`run -e ${kv}: want KEY=VALUE`);
        env[kv.slice(0, i)] = kv.slice(i + 1);
      }
      const agent = await this.ensure();
      return agent.run({
        ...(typeof o.name === 'string' && o.name ? { name: o.name } : {}),
        networks: strings(o.networks, 'networks'),
        cmd: strings(o.cmd, 'cmd'),
        env,
        autoRemove: o.autoRemove === true,
      });
    });
    api.route('GET', '/v1/tasks', async () => (await this.ensure()).list());
    api.route('GET', '/v1/task', async ({ query }) =>
      (await this.ensure()).view(query.get('id') ?? ''),
    );
    api.route('GET', '/v1/task/logs', async ({ query }) => ({
      logs: (await this.ensure()).logs(query.get('id') ?? ''),
    }));
    api.route('POST', '/v1/task/rm', async ({ body: b }) => {
      const id = body(b).id;
      if (typeof id !== 'string') throw new UsageError('rm: give a task id or name');
      await (await this.ensure()).remove(id);
      return { removed: id };
    });
    api.route('GET', '/v1/lb', async ({ query }) => {
      await this.ensure();
      const service = query.get('service');
      return this.lb!.show(service ? { service } : {});
    });
    api.route('GET', '/v1/debug/overlay', async () => {
      const agent = await this.ensure();
      return {
        agent: agent.status(),
        netdb: this.netdb?.counters(),
        worker: this.worker?.status(),
        lbSelfCheck: this.lb?.reachStatus(),
      };
    });
  }

  stop(): void {
    void this.worker?.close();
    if (this.lbTimer) clearInterval(this.lbTimer);
    if (this.reachTimer) clearInterval(this.reachTimer);
    this.agent?.close();
    this.netdb?.close();
  }
}
