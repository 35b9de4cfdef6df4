/**
 * The node's service load balancer: turns the cluster's service table (ServiceEntry[], from the
 * dispatcher) into kernel state on this node.
 *
 *   - VIPs: per overlay network with local tasks and VIP services, a namespace
 *     `<prefix>mesh-lb-<vni>` attached to the network like a task (with this node's lbAddr), the
 *     VIPs as /32 aliases on its eth0 (local tasks ARP for them over br0, remote nodes never
 *     see them), and one LbService per (service, network, protocol) with port 0 = every port:
 *     DNAT keeps the destination port, masquerade to lbAddr so replies come back here.
 *   - Ingress routing mesh: namespace `<prefix>mesh-ingress` on the ingress network (with the
 *     node's ingress lbAddr) plus gw0 = INGRESS_GW on mesh_gwbridge; the host's table
 *     `ip mesh-ingress` DNATs published ports on local addresses to INGRESS_GW:port, and inside
 *     the namespace one LbService per published port balances over every task's ingress address.
 *   - Host-mode ports: the same host table DNATs the port to the local task's gw0 address.
 *   - Both answer on the node's loopback too (`curl localhost:8080` on a node works, as users
 *     expect): route_localnet on mesh_gwbridge lets the DNATed 127.0.0.1-sourced packets leave
 *     through it, masqueraded to the bridge's address; packets to 127.0.0.0/8 arriving *from*
 *     mesh_gwbridge are dropped before routing, so tasks cannot reach the node's loopback-only
 *     services through it (kube-proxy's CVE-2020-8558).
 *   - Published ports are reserved on the host (bound, never listening).
 *
 * Backends (src/lb/nft.ts, src/lb/ipvs.ts) are one per namespace, all of the same kind, chosen
 * at start (auto: IPVS when the kernel has it). apply() is idempotent; reconcile() re-applies
 * the last table and counts the repairs.
 *
 * May import: lb/, netlink/, overlay/ (the driver), api/ (types), util/, node.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import type { NetworkInfo, PortSpec, ServiceEntry } from '../api/services.js';
import {
  NETLINK_ROUTE,
  NetlinkSocket,
  addrAdd,
  addrDel,
  addrList,
  linkFind,
  linkSetUp,
  netnsCreate,
  netnsDelete,
  netnsList,
  netnsOpen,
  withNetns,
  type Netns,
} from '../netlink/index.js';
import { AF_INET } from '../netlink/rt.js';
import type { OverlayDriver } from '../overlay/driver.js';
import { GW_BRIDGE } from '../overlay/plan.js';
import { MeshError } from '../util/errors.js';
import { runTool } from '../util/exec.js';
import { createLogger } from '../util/log.js';
import { IpvsBackend } from './ipvs.js';
import { NftBackend } from './nft.js';
import { planReach } from './reach.js';
import { reservePort, type Reservation } from './reserve.js';
import type { LbShow, LbShowBackend, LbShowEntry, ReachCounters, Scheduler } from '../api/lb.js';
import type { BackendStats, LbBackend, LbService } from './types.js';

const log = createLogger('lb');

/** gw0 of the ingress namespace on mesh_gwbridge; the agent never hands it to a task. */
export const INGRESS_GW = '10.255.255.254';
/** The host's table for published ports (ingress and host mode). */
export const INGRESS_TABLE = 'mesh-ingress';
/** Masquerade for the IPVS backend (nftables does its own in table mesh-lb). */
const SNAT_TABLE = 'mesh-lb-snat';
const FIRST_MARK = 256;

export interface ServiceLbOptions {
  /** Prefix of the namespaces we create (`<prefix>mesh-lb-<vni>`, `<prefix>mesh-ingress`). */
  netnsPrefix: string;
  backend: 'auto' | 'ipvs' | 'nftables';
  /** The agent's overlay driver (attachments of the LB namespaces). */
  overlay: OverlayDriver;
  nodeId: string;
  /** This node's underlay address (what `lb show` names as the node). */
  vtep: string;
  /** The node's namespace (host table, reservations). @default the caller's */
  hostNetns?: Netns;
  /** @default 'rr' */
  scheduler?: Scheduler;
  /** Idle timeouts of every service (seconds). */
  timeouts?: LbService['timeouts'];
  /** Reserve published ports on the host. @default true */
  reservePorts?: boolean;
  /** Clock for `lb show` (ms since the epoch). @default Date.now */
  now?: () => number;
}

/** A local task with host-mode published ports. */
export interface HostTask {
  taskId: string;
  taskName?: string;
  /** The task's gw0 address (plain IP). */
  gatewayIp: string;
  ports: PortSpec[];
}

interface Meta {
  kind: 'vip' | 'ingress';
  service: string;
  serviceId: string;
  network: string;
  networkId: string;
}

/** One namespace we own: a per-network LB namespace or the ingress namespace. */
interface LbNs {
  name: string;
  ns: Netns;
  net: NetworkInfo;
  lbAddr: string;
  mac: string;
  backend: LbBackend;
  desired: LbService[];
  meta: Map<string, Meta>;
  vips: Set<string>;
  ingress: boolean;
}

const bare = (cidr: string): string => cidr.split('/')[0] ?? cidr;

async function runNft(netns: Netns | undefined, args: string[], input = ''): Promise<string> {
  const r = await runTool('nft', args, { ...(netns ? { netns } : {}), input }).catch((e: Error) => {
    throw new MeshError('ENFT', `run nft: ${e.message} (is nftables installed?)`);
  });
  if (r.code !== 0) {
    throw new MeshError('ENFT', `nft ${args.join(' ')}: ${r.stderr.trim() || `exit ${r.code}`}`);
  }
  return r.stdout;
}

/** The host's published-port table as one `nft -f` transaction replacing it. Pure. */
export function ingressTableScript(
  ingress: readonly PortSpec[],
  host: readonly { gatewayIp: string; port: PortSpec }[],
): string {
  const rules: string[] = [];
  for (const p of ingress)
    rules.push(`${p.protocol} dport ${p.published} dnat to ${INGRESS_GW}:${p.published}`);
  for (const h of host)
    rules.push(
      `${h.port.protocol} dport ${h.port.published} dnat to ${h.gatewayIp}:${h.port.target}`,
    );
  // From the network: never 127/8 (martian there). From this node: loopback included.
  const fromNet = rules.map((r) => `    fib daddr type local ip daddr != 127.0.0.0/8 ${r}`);
  const fromHost = rules.map((r) => `    fib daddr type local ${r}`);
  return [
    `table ip ${INGRESS_TABLE}`,
    `delete table ip ${INGRESS_TABLE}`,
    `table ip ${INGRESS_TABLE} {`,
    '  chain guard {',
    '    type filter hook prerouting priority -150; policy accept;',
    `    iifname "${GW_BRIDGE}" ip daddr 127.0.0.0/8 drop`,
    '  }',
    '  chain prerouting {',
    '    type nat hook prerouting priority -100; policy accept;',
    ...fromNet,
    '  }',
    '  chain output {',
    '    type nat hook output priority -100; policy accept;',
    ...fromHost,
    '  }',
    '  chain postrouting {',
    '    type nat hook postrouting priority 100; policy accept;',
    `    oifname "${GW_BRIDGE}" ip saddr 127.0.0.0/8 masquerade`,
    '  }',
    '  chain forward {',
    '    type filter hook forward priority 0; policy accept;',
    '    ct status dnat accept',
    '  }',
    '}',
    '',
  ].join('\n');
}

/**
 * route_localnet on mesh_gwbridge in the host namespace (see the file comment): on while the host
 * table exists (its guard chain drops what it would otherwise let in), off when it goes.
 */
function setRouteLocalnet(hostNetns: Netns | undefined, on: boolean): void {
  const set = (): void => {
    const p = `/proc/sys/net/ipv4/conf/${GW_BRIDGE}/route_localnet`;
    try {
      if (readFileSync(p, 'utf8').trim() !== (on ? '1' : '0')) writeFileSync(p, on ? '1' : '0');
    } catch (e) {
      // No bridge (yet, or any more): nothing to route; apply/reconcile set it once it exists.
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  };
  if (hostNetns) withNetns(hostNetns, set);
  else set();
}

/** Masquerade of balanced traffic for the IPVS backend (marks ≥ 256, first packets). */
function snatScript(): string {
  return [
    `table ip ${SNAT_TABLE}`,
    `delete table ip ${SNAT_TABLE}`,
    `table ip ${SNAT_TABLE} {`,
    '  chain postrouting {',
    '    type nat hook postrouting priority 100; policy accept;',
    `    meta mark >= ${FIRST_MARK} masquerade`,
    '  }',
    '}',
    '',
  ].join('\n');
}

export class ServiceLb {
  readonly backendName: 'ipvs' | 'nftables';
  private readonly opts: ServiceLbOptions;
  private readonly now: () => number;
  private readonly lbs = new Map<string, LbNs>();
  /**
   * Stable fwmarks per service key. A restarted meshd reads them back from the namespaces it
   * adopts (start()): a renumbered mark would rewrite every rule, and conntrack entries of live
   * connections carry the old mark as their ct mark.
   */
  private readonly marks = new Map<string, number>();
  private nextMark = FIRST_MARK;
  /**
   * Until the first apply, what a previous meshd left (namespaces, host table) is kept as it is:
   * it carries the node's traffic while this one starts. The first apply adopts what is still
   * wanted and removes the rest.
   */
  private adopting = true;
  private reservations = new Map<string, Reservation>();
  private hostScript: string | undefined;
  private hostEntries: LbShowEntry[] = [];
  private hostRules: string[] = [];
  private lastApply: number | undefined;
  private lastReconcile: number | undefined;
  private driftRepaired = 0;
  /** Per LB namespace: unreachable backend address → since (ms); see src/lb/reach.ts. */
  private readonly unreachable = new Map<string, Map<string, number>>();
  private readonly reachCounters: ReachCounters = {
    checks: 0,
    unreachable: 0,
    restored: 0,
    current: 0,
  };
  private closed = false;
  /** apply, reconcile, show and close run one at a time (namespaces are set up across awaits). */
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(opts: ServiceLbOptions, backend: 'ipvs' | 'nftables') {
    this.opts = opts;
    this.backendName = backend;
    this.now = opts.now ?? Date.now;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Pick the backend (auto: IPVS when the kernel answers) and remove what a previous run left. */
  static async start(opts: ServiceLbOptions): Promise<ServiceLb> {
    let backend: 'ipvs' | 'nftables';
    if (opts.backend === 'auto')
      backend = IpvsBackend.available(opts.hostNetns) ? 'ipvs' : 'nftables';
    else if (opts.backend === 'ipvs') {
      if (!IpvsBackend.available(opts.hostNetns))
        throw new MeshError(
          'ELB',
          'start load balancer: IPVS is not available in this kernel (modprobe ip_vs, or use --lb-backend nftables)',
        );
      backend = 'ipvs';
    } else if (opts.backend === 'nftables') backend = 'nftables';
    else
      throw new MeshError(
        'EUSAGE',
        `start load balancer: unknown backend ${JSON.stringify(opts.backend)} (auto, ipvs, nftables)`,
      );
    const lb = new ServiceLb(opts, backend);
    await lb.adoptMarks();
    return lb;
  }

  /** Our namespaces a previous run left (by prefix). */
  private leftovers(): string[] {
    const p = this.opts.netnsPrefix;
    const re = new RegExp(`^${escapeRe(p)}mesh-lb-\\d+$`);
    return netnsList().filter((n) => n === `${p}mesh-ingress` || re.test(n));
  }

  /** Read back the fwmarks a previous run gave each service key in the namespaces it left. */
  private async adoptMarks(): Promise<void> {
    for (const name of this.leftovers()) {
      let ns: Netns;
      try {
        ns = netnsOpen(name);
      } catch {
        continue; // removed meanwhile: nothing to adopt
      }
      try {
        const backend: LbBackend =
          this.backendName === 'ipvs'
            ? new IpvsBackend({ netns: ns, markRules: true })
            : new NftBackend({ netns: ns });
        try {
          for (const s of await backend.read()) {
            if (s.fwmark < FIRST_MARK || [...this.marks.values()].includes(s.fwmark)) continue;
            this.marks.set(s.key, s.fwmark);
            this.nextMark = Math.max(this.nextMark, s.fwmark + 1);
          }
        } finally {
          if (backend instanceof IpvsBackend) backend.close();
        }
      } catch {
        // Unreadable (another backend's, damaged): its services get new marks; apply replaces it.
      } finally {
        ns.close();
      }
    }
  }

  private nsName(net: NetworkInfo): string {
    return net.ingress
      ? `${this.opts.netnsPrefix}mesh-ingress`
      : `${this.opts.netnsPrefix}mesh-lb-${net.vni}`;
  }

  private mark(key: string): number {
    let m = this.marks.get(key);
    if (m === undefined) {
      m = this.nextMark++;
      this.marks.set(key, m);
    }
    return m;
  }

  /** The LbServices each namespace should hold, by network id. Pure except for mark numbers. */
  private plan(
    services: readonly ServiceEntry[],
    nets: Map<string, NetworkInfo>,
    localNetworks: ReadonlySet<string>,
  ): Map<
    string,
    { net: NetworkInfo; svcs: LbService[]; meta: Map<string, Meta>; vips: Set<string> }
  > {
    const out = new Map<
      string,
      { net: NetworkInfo; svcs: LbService[]; meta: Map<string, Meta>; vips: Set<string> }
    >();
    const slot = (net: NetworkInfo) => {
      let s = out.get(net.id);
      if (!s) {
        s = { net, svcs: [], meta: new Map(), vips: new Set() };
        out.set(net.id, s);
      }
      return s;
    };
    const scheduler = this.opts.scheduler ?? 'rr';
    const sorted = [...services].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    for (const svc of sorted) {
      if (svc.endpointMode !== 'vip') continue;
      for (const [netId, vip] of Object.entries(svc.vips)) {
        const net = nets.get(netId);
        if (!net || net.ingress || !net.lbAddr || !localNetworks.has(netId)) continue;
        const s = slot(net);
        s.vips.add(vip);
        for (const protocol of ['tcp', 'udp'] as const) {
          const key = `vip:${netId}:${svc.id}/${protocol}`;
          const backends = svc.endpoints
            .filter((e) => e.addresses[netId] !== undefined)
            .map((e) => ({
              ip: e.addresses[netId]!,
              port: 0,
              weight: e.state === 'active' ? 1 : 0,
              state: e.state,
              task: e.taskName,
              node: e.nodeId,
            }));
          const ls: LbService = {
            key,
            fwmark: this.mark(key),
            protocol,
            vip,
            port: 0,
            targetPort: 0,
            scheduler,
            backends,
          };
          if (this.opts.timeouts) ls.timeouts = this.opts.timeouts;
          s.svcs.push(ls);
          s.meta.set(key, {
            kind: 'vip',
            service: svc.name,
            serviceId: svc.id,
            network: net.name,
            networkId: netId,
          });
        }
      }
    }
    const ingressNet = [...nets.values()].find((n) => n.ingress);
    if (ingressNet?.lbAddr) {
      for (const svc of sorted) {
        for (const p of svc.ports) {
          if (p.mode !== 'ingress') continue;
          const s = slot(ingressNet);
          const key = `ingress:${p.published}/${p.protocol}`;
          const backends = svc.endpoints
            .filter((e) => e.addresses[ingressNet.id] !== undefined)
            .map((e) => ({
              ip: e.addresses[ingressNet.id]!,
              port: p.target,
              weight: e.state === 'active' ? 1 : 0,
              state: e.state,
              task: e.taskName,
              node: e.nodeId,
            }));
          const ls: LbService = {
            key,
            fwmark: this.mark(key),
            protocol: p.protocol,
            port: p.published,
            targetPort: p.target,
            scheduler,
            backends,
          };
          if (this.opts.timeouts) ls.timeouts = this.opts.timeouts;
          s.svcs.push(ls);
          s.meta.set(key, {
            kind: 'ingress',
            service: svc.name,
            serviceId: svc.id,
            network: ingressNet.name,
            networkId: ingressNet.id,
          });
        }
      }
    }
    return out;
  }

  /**
   * Make the kernel match the table: LB namespaces for `localNetworks` with VIP services, the
   * ingress namespace while any service publishes ingress ports (and the ingress network has
   * this node's lbAddr), the host table and the port reservations. Returns the kernel changes.
   */
  apply(
    services: ServiceEntry[],
    networks: NetworkInfo[],
    localNetworks: Set<string>,
    hostTasks: HostTask[] = [],
  ): Promise<{ changes: number }> {
    return this.serial(() => this.applyNow(services, networks, localNetworks, hostTasks));
  }

  private async applyNow(
    services: ServiceEntry[],
    networks: NetworkInfo[],
    localNetworks: Set<string>,
    hostTasks: HostTask[],
  ): Promise<{ changes: number }> {
    if (this.closed) throw new MeshError('ECLOSED', 'apply load balancer: it was closed');
    const nets = new Map(networks.map((n) => [n.id, n]));
    const want = this.plan(services, nets, localNetworks);
    // Forget the marks of services that are gone (numbers are never reused: nextMark only grows).
    const used = new Set([...want.values()].flatMap((w) => w.svcs.map((x) => x.key)));
    for (const k of [...this.marks.keys()]) if (!used.has(k)) this.marks.delete(k);
    let changes = 0;
    for (const [netId, lb] of [...this.lbs]) {
      const w = want.get(netId);
      if (!w || w.net.vni !== lb.net.vni || w.net.lbAddr !== lb.net.lbAddr) {
        await this.teardown(lb);
        this.lbs.delete(netId);
        changes++;
      }
    }
    for (const [netId, w] of want) {
      let lb = this.lbs.get(netId);
      if (!lb) {
        lb = await this.setup(w.net);
        this.lbs.set(netId, lb);
        changes++;
      }
      lb.desired = w.svcs;
      lb.meta = w.meta;
      lb.vips = w.vips;
      changes += this.syncVips(lb);
      // Checked after each change too: a new backend whose path is missing never gets traffic.
      this.planReach(lb);
      changes += (await lb.backend.apply(this.effective(lb))).changes;
    }
    for (const name of [...this.unreachable.keys()])
      if (![...this.lbs.values()].some((l) => l.name === name)) this.unreachable.delete(name);
    changes += await this.applyHost(services, hostTasks);
    if (this.adopting) {
      // Everything still wanted is adopted now: what a previous run left beyond it goes.
      this.removeStale(new Set([...this.lbs.values()].map((l) => l.name)));
      this.adopting = false;
    }
    this.lastApply = this.now();
    return { changes };
  }

  /** Create (or adopt) the namespace, attach it to the network, start its backend. */
  private async setup(net: NetworkInfo): Promise<LbNs> {
    const name = this.nsName(net);
    const lbAddr = net.lbAddr!;
    const ns = netnsList().includes(name) ? netnsOpen(name) : netnsCreate(name);
    try {
      const rt = NetlinkSocket.open(NETLINK_ROUTE, { netns: ns });
      try {
        linkSetUp(rt, 'lo');
      } finally {
        rt.close();
      }
      withNetns(ns, () => {
        const p = '/proc/sys/net/ipv4/ip_forward';
        if (readFileSync(p, 'utf8').trim() !== '1') writeFileSync(p, '1');
      });
      const ov = this.opts.overlay;
      await ov.ensureNetwork({
        id: net.id,
        vni: net.vni,
        subnets: net.subnets,
        ...(net.mtu !== undefined ? { mtu: net.mtu } : {}),
        internal: net.internal,
        encrypted: net.encrypted,
      });
      const att = await ov.attach(net.vni, { taskNs: name, ip: lbAddr, ifname: 'eth0' });
      if (net.ingress) await ov.attachGateway(name, `${INGRESS_GW}/16`);
      const backend: LbBackend =
        this.backendName === 'ipvs'
          ? new IpvsBackend({ netns: ns, markRules: true })
          : new NftBackend({ netns: ns });
      if (this.backendName === 'ipvs') await runNft(ns, ['-f', '-'], snatScript());
      return {
        name,
        ns,
        net,
        lbAddr,
        mac: att.mac,
        backend,
        desired: [],
        meta: new Map(),
        vips: new Set(),
        ingress: net.ingress,
      };
    } catch (e) {
      ns.close();
      await this.removeNs(name, net).catch(() => undefined);
      throw e;
    }
  }

  /** The namespace still exists and still has its eth0 (and gw0 for ingress). */
  private intact(lb: LbNs): boolean {
    if (!netnsList().includes(lb.name)) return false;
    const rt = NetlinkSocket.open(NETLINK_ROUTE, { netns: lb.ns });
    try {
      return (
        linkFind(rt, 'eth0') !== undefined && (!lb.ingress || linkFind(rt, 'gw0') !== undefined)
      );
    } finally {
      rt.close();
    }
  }

  /** VIP /32 aliases on eth0: add the missing, drop the stale. */
  private syncVips(lb: LbNs): number {
    if (lb.ingress) return 0;
    const rt = NetlinkSocket.open(NETLINK_ROUTE, { netns: lb.ns });
    try {
      let n = 0;
      const have = new Set(
        addrList(rt, { dev: 'eth0', family: AF_INET })
          .map((a) => a.cidr)
          .filter((c) => c.endsWith('/32')),
      );
      for (const v of lb.vips)
        if (!have.has(`${v}/32`)) {
          addrAdd(rt, 'eth0', `${v}/32`, { replace: true });
          n++;
        }
      for (const c of have)
        if (!lb.vips.has(bare(c))) {
          addrDel(rt, 'eth0', c, { ifExists: true });
          n++;
        }
      return n;
    } finally {
      rt.close();
    }
  }

  private async removeNs(name: string, net?: NetworkInfo): Promise<void> {
    const ov = this.opts.overlay;
    if (net) {
      if (net.ingress) await ov.detachGateway(name).catch(() => undefined);
      await ov.detach(net.vni, { taskNs: name, ifname: 'eth0' }).catch(() => undefined);
    }
    netnsDelete(name, { ifExists: true });
  }

  private async teardown(lb: LbNs): Promise<void> {
    if (lb.backend instanceof IpvsBackend) lb.backend.close();
    lb.ns.close();
    await this.removeNs(lb.name, lb.net);
  }

  /** Namespaces of ours (by prefix) that are not in `keep`: left by an earlier run. */
  private removeStale(keep: Set<string>): void {
    for (const n of this.leftovers()) if (!keep.has(n)) netnsDelete(n, { ifExists: true });
  }

  private async applyHost(services: ServiceEntry[], hostTasks: HostTask[]): Promise<number> {
    const ingress: PortSpec[] = [];
    const entries: LbShowEntry[] = [];
    const ingressNs = [...this.lbs.values()].some((l) => l.ingress);
    for (const s of services)
      for (const p of s.ports) if (p.mode === 'ingress' && ingressNs) ingress.push(p);
    const host: { gatewayIp: string; port: PortSpec }[] = [];
    for (const t of hostTasks)
      for (const p of t.ports) {
        if (p.mode !== 'host') continue;
        host.push({ gatewayIp: t.gatewayIp, port: p });
        const svc = services.find((s) => s.endpoints.some((e) => e.taskId === t.taskId));
        entries.push({
          kind: 'host',
          service: svc?.name ?? '',
          serviceId: svc?.id ?? '',
          namespace: 'host',
          protocol: p.protocol,
          port: p.published,
          targetPort: p.target,
          programmed: true,
          backends: [
            {
              ...(t.taskName !== undefined ? { task: t.taskName } : {}),
              node: this.opts.nodeId,
              address: t.gatewayIp,
              port: p.target,
              weight: 1,
              state: 'active',
            },
          ],
        });
      }
    this.hostEntries = entries;
    let changes = 0;
    const all = [...ingress, ...host.map((h) => h.port)];
    // Reservations: bind what is published, release what is no longer.
    if (this.opts.reservePorts !== false) {
      const wantR = new Set(all.map((p) => `${p.published}/${p.protocol}`));
      for (const [k, r] of this.reservations)
        if (!wantR.has(k)) {
          r.close();
          this.reservations.delete(k);
          changes++;
        }
      for (const p of all) {
        const k = `${p.published}/${p.protocol}`;
        if (this.reservations.has(k)) continue;
        this.reservations.set(k, reservePort(p.published, p.protocol, this.opts.hostNetns));
        changes++;
      }
    }
    const script = all.length ? ingressTableScript(ingress, host) : undefined;
    this.hostRules = [
      ...ingress.map((p) => `dnat to ${INGRESS_GW}:${p.published}`),
      ...host.map((h) => `dnat to ${h.gatewayIp}:${h.port.target}`),
    ];
    // The first apply after a restart also drops a host table a previous run left.
    if (script !== this.hostScript || (this.adopting && !script)) {
      if (script) await runNft(this.opts.hostNetns, ['-f', '-'], script);
      else await this.dropHostTable();
      this.hostScript = script;
      changes++;
    }
    if (script) setRouteLocalnet(this.opts.hostNetns, true);
    return changes;
  }

  private async dropHostTable(): Promise<void> {
    // The guard chain goes with the table: route_localnet first.
    setRouteLocalnet(this.opts.hostNetns, false);
    await runNft(
      this.opts.hostNetns,
      ['-f', '-'],
      `table ip ${INGRESS_TABLE}\ndelete table ip ${INGRESS_TABLE}\n`,
    );
  }

  /** Re-apply the last table to the kernel; returns the repairs (drift) made. */
  reconcile(): Promise<number> {
    return this.serial(() => this.reconcileNow());
  }

  private async reconcileNow(): Promise<number> {
    if (this.closed) return 0;
    let n = 0;
    for (const lb of this.lbs.values()) {
      if (!this.intact(lb)) {
        // Someone removed the namespace or its interface: rebuild it whole.
        await this.teardown(lb);
        const fresh = await this.setup(lb.net);
        fresh.desired = lb.desired;
        fresh.meta = lb.meta;
        fresh.vips = lb.vips;
        this.lbs.set(lb.net.id, fresh);
        n++;
        n += this.syncVips(fresh);
        n += (await fresh.backend.apply(this.effective(fresh))).changes;
        continue;
      }
      n += this.syncVips(lb);
      n += (await lb.backend.apply(this.effective(lb))).changes;
    }
    if (this.hostScript) {
      const listing = await runNft(this.opts.hostNetns, [
        'list',
        'table',
        'ip',
        INGRESS_TABLE,
      ]).catch(() => '');
      if (!this.hostRules.every((r) => listing.includes(r))) {
        await runNft(this.opts.hostNetns, ['-f', '-'], this.hostScript);
        n++;
      }
      setRouteLocalnet(this.opts.hostNetns, true);
    }
    this.driftRepaired += n;
    this.lastReconcile = this.now();
    return n;
  }

  /**
   * The self-check: take backends the data path cannot reach out of rotation (weight 0, as
   * draining: no new connections) until it can, and put them back. Cheap (one neighbour and one
   * FDB dump per network with remote backends); the daemon runs it every few seconds, and every
   * apply runs it. Returns how many backends changed state.
   */
  checkReach(): Promise<number> {
    return this.serial(async () => {
      if (this.closed) return 0;
      let n = 0;
      for (const lb of this.lbs.values()) {
        const changed = this.planReach(lb);
        if (changed > 0) await lb.backend.apply(this.effective(lb));
        n += changed;
      }
      return n;
    });
  }

  /** Update lb's unreachable set from the kernel; logs and counts changes. */
  private planReach(lb: LbNs): number {
    this.reachCounters.checks++;
    const backends = lb.desired.flatMap((s) => s.backends.filter((b) => b.state === 'active'));
    const reachable = this.opts.overlay.reachablePeers(lb.net.vni);
    const prev = this.unreachable.get(lb.name) ?? new Map<string, number>();
    const p = planReach(backends, this.opts.nodeId, reachable, prev, this.now());
    for (const ip of p.lost) {
      const b = backends.find((x) => x.ip === ip);
      log.warn(
        'backend unreachable: no overlay ARP/FDB entry for it; out of rotation until there is',
        {
          namespace: lb.name,
          backend: ip,
          task: b?.task,
          node: b?.node,
        },
      );
    }
    for (const ip of p.back)
      log.info('backend reachable again; back in rotation', { namespace: lb.name, backend: ip });
    this.reachCounters.unreachable += p.lost.length;
    this.reachCounters.restored += p.back.length;
    if (p.unreachable.size > 0) this.unreachable.set(lb.name, p.unreachable);
    else this.unreachable.delete(lb.name);
    this.reachCounters.current = [...this.unreachable.values()].reduce((a, m) => a + m.size, 0);
    return p.lost.length + p.back.length;
  }

  /** lb's desired services with unreachable backends at weight 0 (draining). */
  private effective(lb: LbNs): LbService[] {
    const out = this.unreachable.get(lb.name);
    if (!out) return lb.desired;
    return lb.desired.map((s) => ({
      ...s,
      backends: s.backends.map((b) =>
        out.has(b.ip) && b.state === 'active' ? { ...b, weight: 0, state: 'draining' as const } : b,
      ),
    }));
  }

  /** The self-check's counters (`meshctl debug overlay`). */
  reachStatus(): ReachCounters {
    return { ...this.reachCounters };
  }

  /** What this node's kernel holds, with connection counts, for `meshctl lb show`. */
  show(filter: { service?: string } = {}): Promise<LbShow> {
    return this.serial(() => this.showNow(filter));
  }

  private async showNow(filter: { service?: string }): Promise<LbShow> {
    const entries: LbShowEntry[] = [];
    const match = (name: string, id: string): boolean =>
      filter.service === undefined ||
      filter.service === name ||
      (filter.service.length >= 4 && id.startsWith(filter.service));
    for (const lb of this.lbs.values()) {
      const kernel = new Map((await lb.backend.read()).map((s) => [s.key, s]));
      for (const d of lb.desired) {
        const m = lb.meta.get(d.key);
        if (!m || !match(m.service, m.serviceId)) continue;
        const k = kernel.get(d.key);
        const backends: LbShowBackend[] = (k?.backends ?? d.backends).map(
          (b: (typeof d.backends)[number] & BackendStats) => {
            const o: LbShowBackend = {
              address: b.ip,
              port: b.port,
              weight: b.weight,
              state: b.state,
            };
            if (b.task !== undefined) o.task = b.task;
            if (b.node !== undefined) o.node = b.node;
            if (b.activeConns !== undefined) o.activeConns = b.activeConns;
            if (b.inactiveConns !== undefined) o.inactiveConns = b.inactiveConns;
            if (b.scheduledConns !== undefined) o.scheduledConns = b.scheduledConns;
            const since = this.unreachable.get(lb.name)?.get(b.ip);
            if (since !== undefined) o.unreachableSince = since;
            return o;
          },
        );
        const e: LbShowEntry = {
          kind: m.kind,
          service: m.service,
          serviceId: m.serviceId,
          network: m.network,
          networkId: m.networkId,
          namespace: lb.name,
          protocol: d.protocol,
          port: d.port,
          targetPort: d.targetPort,
          fwmark: d.fwmark,
          scheduler: k?.scheduler ?? d.scheduler,
          programmed: k !== undefined,
          backends,
        };
        if (d.vip !== undefined) e.vip = d.vip;
        entries.push(e);
      }
    }
    for (const h of this.hostEntries) if (match(h.service, h.serviceId)) entries.push(h);
    const out: LbShow = {
      node: this.opts.nodeId,
      backend: this.backendName,
      driftRepaired: this.driftRepaired,
      reach: { ...this.reachCounters },
      entries,
    };
    if (this.lastApply !== undefined) out.lastApply = this.lastApply;
    if (this.lastReconcile !== undefined) out.lastReconcile = this.lastReconcile;
    return out;
  }

  /** The LB namespaces' addresses, for the agent to publish as peer endpoints of each network. */
  lbEndpoints(): { networkId: string; ip: string; mac: string }[] {
    return [...this.lbs.values()].map((l) => ({
      networkId: l.net.id,
      ip: bare(l.lbAddr),
      mac: l.mac,
    }));
  }

  /** Names of the namespaces we hold (tests, diagnostics). */
  namespaces(): { networkId: string; name: string }[] {
    return [...this.lbs.values()].map((l) => ({ networkId: l.net.id, name: l.name }));
  }

  /** Remove everything: namespaces, host table, reservations. */
  close(): Promise<void> {
    return this.serial(() => this.closeNow());
  }

  private async closeNow(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const errs: unknown[] = [];
    for (const lb of this.lbs.values()) await this.teardown(lb).catch((e: unknown) => errs.push(e));
    this.lbs.clear();
    for (const r of this.reservations.values()) r.close();
    this.reservations.clear();
    if (this.hostScript !== undefined)
      await this.dropHostTable().catch((e: unknown) => errs.push(e));
    this.hostScript = undefined;
    if (errs.length) throw errs[0];
  }
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
