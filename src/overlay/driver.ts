/**
 * The VXLAN overlay driver: per network on this node, a namespace `mesh-ov-<vni>` holding
 * bridge `br0` (the gateway addresses) and vxlan `vx-<vni>` whose UDP socket stays in the
 * node's namespace; tasks attached by veth pairs; remote endpoints programmed as permanent ARP
 * and static FDB entries (no flooding, no learning, RFC 7348 §4.1 without multicast); egress
 * through the node's `mesh_gwbridge` with masquerade. Every method converges the kernel to a
 * desired state, so calling it twice changes nothing; reconcile() does the same for all
 * networks and counts what it had to repair. See docs/overlay.md.
 *
 * All kernel work is synchronous (netlink requests complete inside sendmsg, see
 * docs/netlink.md), so no two public calls interleave even though they are async.
 * May import: netlink/, util/, ./plan, ./bridge, node built-ins.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { MeshError, type ErrorCode } from '../util/errors.js';
import {
  NETLINK_ROUTE,
  NetlinkError,
  NetlinkSocket,
  addrAdd,
  addrDel,
  addrList,
  fdbList,
  isErrno,
  linkAdd,
  linkDel,
  linkFind,
  linkGet,
  linkList,
  linkSet,
  neighList,
  netnsCreate,
  netnsDelete,
  netnsList,
  netnsOpen,
  routeAdd,
  withNetns,
  type BatchItem,
  type Link,
  type Netns,
} from '../netlink/index.js';
import { fdbMsg, neighMsg } from '../netlink/neigh.js';
import {
  AF_INET,
  NTF_SELF,
  NUD_NOARP,
  NUD_PERMANENT,
  RTM_DELNEIGH,
  RTM_NEWNEIGH,
} from '../netlink/rt.js';
import { listPortFlags, setPortFlags, staticFdbItems } from './bridge.js';
import {
  BRIDGE_NAME,
  GW_BRIDGE,
  GW_IFNAME,
  NAT_TABLE,
  bareIp,
  inSubnet,
  sortByIp,
  intToIpv4,
  macFromIp,
  natRuleset,
  natRulesetPresent,
  netnsNameFor,
  overlayMtu,
  parseV4Cidr,
  planPeers,
  vethName,
  vxlanName,
  type KernelPeers,
  type Peer,
} from './plan.js';

export type { Peer } from './plan.js';

export interface OverlayDriverOptions {
  /** This node's underlay IPv4 address: the source of encapsulated packets (VTEP). */
  vtep: string;
  /** VXLAN UDP port (meshd --data-path-port). @default 4789 */
  port?: number;
  /** Underlay device; its MTU bounds the overlay's. @default the device holding `vtep` */
  underlayDev?: string;
  /** Local gateway bridge subnet; `.1` goes on mesh_gwbridge. @default '10.255.0.0/16' */
  gatewaySubnet?: string;
  /**
   * The node's network namespace, where vxlan sockets, mesh_gwbridge and the NAT table live.
   * @default the namespace of the calling thread (meshd runs in the node's namespace)
   */
  hostNetns?: Netns;
  /**
   * Prefix for the names of the namespaces the driver creates (`<prefix>mesh-ov-<vni>`).
   * Named namespaces live in the file system (/run/netns), so namespaced test hosts sharing
   * one machine need distinct prefixes; a real node keeps the default.
   * @default ''
   */
  netnsPrefix?: string;
}

export interface NetworkSpec {
  id: string;
  vni: number;
  subnets: ReadonlyArray<{ subnet: string; gateway: string }>;
  /** Overlay MTU; default: underlay MTU − 50 (− 26 more when encrypted). */
  mtu?: number;
  internal: boolean;
  encrypted: boolean;
}

export interface AttachSpec {
  /** The task's namespace: a name under /run/netns, or a path (`/proc/PID/ns/net`). */
  taskNs: string;
  /** Interface name inside the task. @default 'eth0' */
  ifname?: string;
  /** The task's address with prefix length, `10.0.1.5/24`. */
  ip: string;
  /** @default 02:42:<ip bytes> */
  mac?: string;
  /** If set, the task's default route goes via this address on the network. */
  gateway?: string;
}

export interface AttachResult {
  ifname: string;
  /** Network-side veth name (`mesh-<8 hex>`), inside the network namespace. */
  veth: string;
  mac: string;
  mtu: number;
}

export interface PeersResult {
  /** Kernel entries added or replaced. */
  added: number;
  /** Stale kernel entries removed. */
  removed: number;
  /** Peers dropped because another peer claimed the same IP or MAC (later entry wins). */
  conflicts: Peer[];
}

/** What the driver remembers of an attachment, also stored as the veth's alias for adopt(). */
interface AttachRecord {
  taskNs: string;
  ifname: string;
  ip: string;
  mac: string;
  gateway?: string;
}

interface NetState {
  vni: number;
  nsName: string;
  ns: Netns;
  rt: NetlinkSocket;
  /** Known once ensureNetwork has run (adopt alone knows only what the kernel holds). */
  spec?: NetworkSpec;
  /** Remote endpoints as last programmed by setPeers (or read back by adopt). */
  peers: Peer[];
  attachments: Map<string, AttachRecord>;
}

interface GwRecord {
  taskNs: string;
  ip: string;
}

/** Error of the overlay driver: what failed, on which object, and the kernel's reason. */
export class OverlayError extends MeshError {
  /** errno name of the underlying kernel error (`EEXIST`, …), if there was one. */
  readonly errnoName: string | undefined;
  constructor(code: ErrorCode, message: string, cause?: unknown) {
    super(code, message, { cause });
    this.errnoName = cause instanceof NetlinkError ? cause.errnoName : undefined;
  }
}

function wrap(what: string, e: unknown): OverlayError {
  if (e instanceof OverlayError) return e;
  // The driver's own verdicts keep their code; whatever the kernel or a tool refused is EOVERLAY.
  const own =
    e instanceof MeshError && ['EUSAGE', 'ENOTFOUND', 'EEXIST', 'EUNSUPPORTED'].includes(e.code);
  const code = own ? e.code : 'EOVERLAY';
  return new OverlayError(code, `${what}: ${e instanceof Error ? e.message : String(e)}`, e);
}

const ALIAS_TAG = 'mesh:';
const DEFAULT_GW_SUBNET = '10.255.0.0/16';
/** Linux's minimum IPv4 MTU (RFC 791: 68). */
const MIN_MTU = 68;

function nsHandle(ref: string): Netns {
  return ref.startsWith('/') ? netnsOpen({ path: ref }) : netnsOpen(ref);
}

export class OverlayDriver {
  readonly vtep: string;
  readonly port: number;
  readonly gatewaySubnet: string;
  private readonly gwAddr: string;
  private readonly prefix: string;
  private readonly hostNs: Netns | undefined;
  private readonly host: NetlinkSocket;
  private readonly nets = new Map<number, NetState>();
  private readonly gws = new Map<string, GwRecord>();
  private readonly opts: OverlayDriverOptions;

  constructor(opts: OverlayDriverOptions) {
    this.opts = opts;
    parseV4Cidr(`${opts.vtep}/32`, 'vtep');
    this.vtep = opts.vtep;
    this.port = opts.port ?? 4789;
    if (!Number.isInteger(this.port) || this.port < 1 || this.port > 65535) {
      throw new MeshError('EUSAGE', `overlay port ${this.port}: want 1..65535`);
    }
    this.gatewaySubnet = opts.gatewaySubnet ?? DEFAULT_GW_SUBNET;
    const g = parseV4Cidr(this.gatewaySubnet, 'gateway subnet');
    if (g.len > 30)
      throw new MeshError('EUSAGE', `gateway subnet ${this.gatewaySubnet}: too small`);
    this.gatewaySubnet = `${intToIpv4(g.net)}/${g.len}`;
    this.gwAddr = `${intToIpv4(g.net + 1)}/${g.len}`;
    this.prefix = opts.netnsPrefix ?? '';
    this.hostNs = opts.hostNetns;
    this.host = NetlinkSocket.open(NETLINK_ROUTE, this.hostNs ? { netns: this.hostNs } : {});
  }

  /** Close the driver's sockets and namespace handles; kernel state stays (adopt finds it). */
  close(): void {
    for (const st of this.nets.values()) this.closeNet(st);
    this.nets.clear();
    this.host.close();
  }

  /** The namespace name of a network on this node. */
  netnsName(vni: number): string {
    return netnsNameFor(this.prefix, vni);
  }

  /**
   * Create or repair a network's namespace, bridge, vxlan device and peers.
   * Equivalent to: `ip netns add mesh-ov-VNI; ip link add br0 type bridge; ip addr add GW dev br0;
   * ip link add vx-VNI type vxlan id VNI local VTEP dstport PORT nolearning proxy;
   * ip link set vx-VNI netns mesh-ov-VNI master br0 up; bridge link set dev vx-VNI learning off flood off`.
   */
  ensureNetwork(spec: NetworkSpec): Promise<{ ns: string; mtu: number }> {
    const what = `ensure network ${spec.id} (vni ${spec.vni}, netns ${this.netnsName(spec.vni)})`;
    return this.run(what, () => {
      this.validateSpec(spec);
      if (spec.encrypted) {
        // Fail closed: the manager refuses to create such a network, but a store written by an
        // older version may hold one; never bring it up in cleartext.
        throw new MeshError(
          'EUNSUPPORTED',
          `${what}: the network is encrypted and this node cannot program ESP (XFRM) for its VXLAN traffic; refusing to carry it in cleartext (remove the network, or recreate it without --opt encrypted)`,
        );
      }
      let st = this.nets.get(spec.vni);
      if (!st) {
        // A network a previous run left: take over its peers and attachments as they are, so
        // traffic keeps flowing until the caller's setPeers replaces them.
        const existed = netnsList().includes(this.netnsName(spec.vni));
        st = this.openNet(spec.vni, true);
        if (existed) this.readBack(st);
      }
      st.spec = spec;
      this.converge(st);
      return { ns: st.nsName, mtu: this.mtuOf(st) };
    });
  }

  /** Remove a network: its veths (and so the tasks' ends), vxlan, bridge and namespace. */
  removeNetwork(vni: number): Promise<void> {
    return this.run(`remove network vni ${vni} (netns ${this.netnsName(vni)})`, () => {
      this.removeNet(vni);
    });
  }

  /**
   * Make the kernel hold exactly these remote endpoints: a permanent ARP entry (the vxlan
   * device answers ARP from it), an FDB entry MAC → VTEP on the vxlan device and a static
   * bridge entry MAC → vxlan port for each; entries of endpoints on this node are skipped.
   */
  setPeers(vni: number, peers: readonly Peer[]): Promise<PeersResult> {
    const what = `set peers of network vni ${vni}`;
    return this.run(what, () => {
      const st = this.need(vni);
      for (const p of peers) {
        if (
          !p ||
          typeof p.ip !== 'string' ||
          typeof p.mac !== 'string' ||
          typeof p.vtep !== 'string'
        ) {
          throw new MeshError('EUSAGE', `peer ${JSON.stringify(p)}: want {ip, mac, vtep}`);
        }
        parseV4Cidr(`${bareIp(p.ip)}/32`, `peer ip`);
        parseV4Cidr(`${p.vtep}/32`, `peer vtep`);
      }
      st.peers = [...peers];
      return this.syncPeers(st);
    });
  }

  /**
   * Attach a task: a veth pair, the network side `mesh-<8 hex>` on br0 (learning and flooding
   * off, a static bridge entry for the task's MAC), the task side named `ifname` with the
   * address, the network's MTU and routes to the network's other subnets.
   */
  attach(vni: number, a: AttachSpec): Promise<AttachResult> {
    const ifname = a.ifname ?? 'eth0';
    const what = `attach ${a.taskNs} ${ifname} ${a.ip} to network vni ${vni}`;
    return this.run(what, () => {
      const st = this.need(vni);
      if (!st.spec)
        throw new MeshError(
          'ENOTFOUND',
          `network vni ${vni} was adopted but not ensured; call ensureNetwork first`,
        );
      const ip = parseV4Cidr(a.ip, 'task address');
      if (ip.len === 32 || !st.spec.subnets.some((s) => inSubnet(a.ip, s.subnet))) {
        throw new MeshError(
          'EUSAGE',
          `task address ${a.ip}: not in a subnet of network ${st.spec.id} (${st.spec.subnets.map((s) => s.subnet).join(', ')})`,
        );
      }
      const rec: AttachRecord = {
        taskNs: a.taskNs,
        ifname,
        ip: a.ip,
        mac: (a.mac ?? macFromIp(a.ip)).toLowerCase(),
      };
      if (a.gateway !== undefined) rec.gateway = a.gateway;
      const veth = vethName(`${vni}|${a.taskNs}|${ifname}`);
      this.attachOne(st, veth, rec);
      st.attachments.set(veth, rec);
      return { ifname, veth, mac: rec.mac, mtu: this.mtuOf(st) };
    });
  }

  /** Remove a task's attachment to a network (both veth ends go). No-op if absent. */
  detach(vni: number, a: { taskNs: string; ifname?: string }): Promise<void> {
    const ifname = a.ifname ?? 'eth0';
    return this.run(`detach ${a.taskNs} ${ifname} from network vni ${vni}`, () => {
      const st = this.nets.get(vni);
      const veth = vethName(`${vni}|${a.taskNs}|${ifname}`);
      if (st) {
        linkDel(st.rt, veth, { ifExists: true });
        st.attachments.delete(veth);
      }
    });
  }

  /**
   * Give a task egress to the outside world: `gw0` in the task on the node's mesh_gwbridge
   * (created on first use with `.1` of the gateway subnet, ip_forward on, masquerade out of
   * the underlay device in nft table `ip mesh-nat`), default route via the bridge. The caller
   * skips this for tasks whose networks are all --internal.
   */
  attachGateway(taskNs: string, ip: string): Promise<{ ifname: string; veth: string }> {
    const what = `attach ${taskNs} to ${GW_BRIDGE} with ${ip}`;
    return this.run(what, () => {
      const cidr = ip.includes('/')
        ? ip
        : `${ip}/${parseV4Cidr(this.gatewaySubnet, 'gateway subnet').len}`;
      if (!inSubnet(cidr, this.gatewaySubnet) || bareIp(cidr) === bareIp(this.gwAddr)) {
        throw new MeshError(
          'EUSAGE',
          `gateway address ${ip}: want an address of ${this.gatewaySubnet} other than ${bareIp(this.gwAddr)}`,
        );
      }
      this.ensureGwBridge();
      const veth = vethName(`gw|${taskNs}`);
      const rec = { taskNs, ip: cidr };
      this.attachGw(veth, rec);
      this.gws.set(veth, rec);
      return { ifname: GW_IFNAME, veth };
    });
  }

  /** Remove a task's gw0 (both ends). mesh_gwbridge and the NAT table stay for the next task. */
  detachGateway(taskNs: string): Promise<void> {
    return this.run(`detach ${taskNs} from ${GW_BRIDGE}`, () => {
      const veth = vethName(`gw|${taskNs}`);
      linkDel(this.host, veth, { ifExists: true });
      this.gws.delete(veth);
    });
  }

  /**
   * At start: find the networks a previous run left (namespaces `<prefix>mesh-ov-<vni>`), keep
   * the desired ones with their peers and attachments as the kernel holds them, remove the
   * rest, and delete stray `vx-*` devices in the node's namespace. Touches nothing else.
   */
  adopt(desired: readonly number[]): Promise<{ kept: number[]; removed: number[] }> {
    return this.run('adopt overlay state', () => {
      const want = new Set(desired);
      const kept: number[] = [];
      const removed: number[] = [];
      for (const vni of this.ourNetworks()) {
        if (want.has(vni)) {
          const st = this.nets.get(vni) ?? this.openNet(vni, false);
          this.readBack(st);
          kept.push(vni);
        } else {
          this.removeNet(vni);
          removed.push(vni);
        }
      }
      removed.push(...this.removeStrayVxlans());
      this.readBackGws();
      return {
        kept: kept.sort((a, b) => a - b),
        removed: [...new Set(removed)].sort((a, b) => a - b),
      };
    });
  }

  /**
   * Converge every desired network to the driver's state and remove networks of ours that are
   * not desired; returns how many kernel objects had to be fixed (0 when nothing drifted).
   * Desired networks never ensured on this node are listed in `unknown`.
   */
  reconcile(desired: readonly number[]): Promise<{ repairs: number; unknown: number[] }> {
    return this.run('reconcile overlay networks', () => {
      let repairs = 0;
      const want = new Set(desired);
      const unknown: number[] = [];
      for (const vni of [...this.nets.keys()]) {
        if (!want.has(vni)) {
          this.removeNet(vni);
          repairs++;
        }
      }
      for (const vni of this.ourNetworks()) {
        if (!want.has(vni)) {
          this.removeNet(vni);
          repairs++;
        }
      }
      repairs += this.removeStrayVxlans().length;
      for (const vni of want) {
        const st = this.nets.get(vni);
        if (!st?.spec) {
          unknown.push(vni);
          continue;
        }
        repairs += this.converge(st);
      }
      if (this.gws.size > 0) {
        repairs += this.ensureGwBridge();
        for (const [veth, rec] of [...this.gws]) {
          try {
            repairs += this.attachGw(veth, rec);
          } catch (e) {
            // The task ended (its namespace is gone, and its gw0 pair with it).
            if (e instanceof MeshError && e.code === 'ENETNS') this.gws.delete(veth);
            else throw e;
          }
        }
      }
      return { repairs, unknown: unknown.sort((a, b) => a - b) };
    });
  }

  /**
   * The peers a network has programmed (after setPeers or adopt): remote endpoints only, bare
   * IPs, lower-case MACs, sorted by IP, conflicts resolved.
   */
  peers(vni: number): Peer[] {
    return [...(this.nets.get(vni)?.peers ?? [])];
  }

  /**
   * The remote endpoints the kernel can reach now (read back, not the driver's memory): the
   * addresses with a permanent ARP entry on the network's vxlan device whose MAC has an FDB
   * entry towards a VTEP. A load balancer's self-check (src/lb/reach.ts) reads this. Empty when
   * the network is not set up here.
   */
  reachablePeers(vni: number): Set<string> {
    const st = this.nets.get(vni);
    if (!st) return new Set();
    const vx = linkFind(st.rt, vxlanName(vni));
    if (!vx) return new Set();
    const k = this.kernelPeers(st.rt, vx.index);
    const macs = new Set(k.fdb.map((f) => f.mac));
    return new Set(k.neigh.filter((n) => n.mac !== '' && macs.has(n.mac)).map((n) => n.ip));
  }

  /** Networks (VNIs) the driver manages. */
  networks(): number[] {
    return [...this.nets.keys()].sort((a, b) => a - b);
  }

  /** Run synchronous kernel work as a promise, wrapping any failure with what was being done. */
  private run<T>(what: string, fn: () => T): Promise<T> {
    try {
      return Promise.resolve(fn());
    } catch (e) {
      return Promise.reject(wrap(what, e));
    }
  }

  // ---- internals ----------------------------------------------------------------------------

  private validateSpec(spec: NetworkSpec): void {
    if (!Number.isInteger(spec.vni) || spec.vni < 1 || spec.vni > 0xffffff) {
      throw new MeshError('EUSAGE', `vni ${spec.vni}: want 1..16777215`);
    }
    if (spec.subnets.length === 0) throw new MeshError('EUSAGE', `network ${spec.id}: no subnet`);
    for (const s of spec.subnets) {
      const p = parseV4Cidr(s.subnet, 'subnet');
      if (p.len > 30)
        throw new MeshError(
          'EUSAGE',
          `subnet ${s.subnet}: too small for a gateway and tasks (want /30 or larger)`,
        );
      if (!inSubnet(s.gateway, s.subnet)) {
        throw new MeshError('EUSAGE', `gateway ${s.gateway}: not inside subnet ${s.subnet}`);
      }
    }
    if (
      spec.mtu !== undefined &&
      (!Number.isInteger(spec.mtu) || spec.mtu < MIN_MTU || spec.mtu > 65535)
    ) {
      throw new MeshError('EUSAGE', `mtu ${spec.mtu}: want ${MIN_MTU}..65535`);
    }
  }

  private need(vni: number): NetState {
    const st = this.nets.get(vni);
    if (!st) {
      throw new MeshError(
        'ENOTFOUND',
        `network vni ${vni} is not set up on this node; call ensureNetwork (or adopt) first`,
      );
    }
    return st;
  }

  private inHost<T>(fn: () => T): T {
    return this.hostNs ? withNetns(this.hostNs, fn) : fn();
  }

  private underlay(): Link {
    if (this.opts.underlayDev !== undefined) return linkGet(this.host, this.opts.underlayDev);
    const a = addrList(this.host, { family: AF_INET }).find((x) => x.address === this.vtep);
    if (!a) {
      throw new MeshError(
        'ENOTFOUND',
        `find underlay device of vtep ${this.vtep}: no device of this node has that address; give the node's underlay address (--advertise-addr) or --data-path-dev`,
      );
    }
    return linkGet(this.host, a.index);
  }

  private mtuOf(st: NetState): number {
    const spec = st.spec;
    if (!spec) return linkGet(st.rt, BRIDGE_NAME).mtu;
    const mtu = overlayMtu(this.underlay().mtu, spec.encrypted, spec.mtu);
    if (mtu < MIN_MTU) {
      throw new MeshError(
        'EUSAGE',
        `mtu of network ${spec.id}: the underlay leaves only ${mtu} bytes; raise the underlay MTU or set the network's mtu option`,
      );
    }
    return mtu;
  }

  /** Open (or with `create`, create) a network's namespace and a socket inside it. */
  private openNet(vni: number, create: boolean): NetState {
    const nsName = this.netnsName(vni);
    const exists = netnsList().includes(nsName);
    if (!exists && !create) throw new MeshError('ENOTFOUND', `netns ${nsName}: does not exist`);
    const ns = exists ? netnsOpen(nsName) : netnsCreate(nsName);
    let rt: NetlinkSocket;
    try {
      rt = NetlinkSocket.open(NETLINK_ROUTE, { netns: ns });
    } catch (e) {
      ns.close();
      throw e;
    }
    const st: NetState = { vni, nsName, ns, rt, peers: [], attachments: new Map() };
    this.nets.set(vni, st);
    return st;
  }

  private closeNet(st: NetState): void {
    st.rt.close();
    st.ns.close();
  }

  private removeNet(vni: number): void {
    const nsName = this.netnsName(vni);
    let st = this.nets.get(vni);
    if (!st && netnsList().includes(nsName)) st = this.openNet(vni, false);
    if (st) {
      // Delete the devices ourselves: a namespace is torn down asynchronously once its last
      // reference goes, and the tasks' veth ends would linger until then.
      for (const l of linkList(st.rt)) {
        if (l.kind === 'veth' || l.kind === 'vxlan' || l.kind === 'bridge')
          linkDel(st.rt, l.index, { ifExists: true });
      }
      this.closeNet(st);
      this.nets.delete(vni);
    }
    netnsDelete(nsName, { ifExists: true });
    const stray = linkFind(this.host, vxlanName(vni));
    if (stray?.kind === 'vxlan') linkDel(this.host, stray.index, { ifExists: true });
  }

  /** VNIs of the namespaces of ours in /run/netns. */
  private ourNetworks(): number[] {
    const head = `${this.prefix}mesh-ov-`;
    const out: number[] = [];
    for (const name of netnsList()) {
      if (!name.startsWith(head)) continue;
      const rest = name.slice(head.length);
      if (/^[1-9]\d{0,7}$/.test(rest)) out.push(Number(rest));
    }
    return out.sort((a, b) => a - b);
  }

  /** vx-<n> devices left in the node's namespace (a crash between create and move); returns their VNIs. */
  private removeStrayVxlans(): number[] {
    // The driver creates vxlan devices directly inside the network's namespace, so one in the
    // node's namespace is never live state: an older agent or a crash left it.
    const out: number[] = [];
    for (const l of linkList(this.host)) {
      const m = /^vx-(\d+)$/.exec(l.name);
      if (!m || l.kind !== 'vxlan') continue;
      linkDel(this.host, l.index, { ifExists: true });
      out.push(Number(m[1]));
    }
    return out;
  }

  /** Bring a network's kernel objects to the desired state; returns the number of fixes. */
  private converge(st: NetState): number {
    const spec = st.spec;
    if (!spec) return 0;
    const mtu = this.mtuOf(st);
    let fixes = 0;
    if (!netnsList().includes(st.nsName)) {
      // The namespace vanished under us (deleted by hand): start over with a fresh one.
      const keep = { spec, peers: st.peers, attachments: st.attachments };
      this.closeNet(st);
      this.nets.delete(st.vni);
      st = this.openNet(st.vni, true);
      Object.assign(st, keep);
      fixes++;
    }
    const rt = st.rt;
    const lo = linkGet(rt, 'lo');
    if (!lo.up) {
      linkSet(rt, 'lo', { up: true });
      fixes++;
    }

    // Bridge, with a MAC derived from the first gateway so it never changes as ports come and go.
    const gwMac = macFromIp(spec.subnets[0]!.gateway);
    let br = linkFind(rt, BRIDGE_NAME);
    if (br && br.kind !== 'bridge') {
      linkDel(rt, br.index);
      br = undefined;
    }
    if (!br) {
      linkAdd(rt, { kind: 'bridge', name: BRIDGE_NAME, mtu, mac: gwMac, up: true, stp: false });
      br = linkGet(rt, BRIDGE_NAME);
      fixes++;
    } else if (!br.up || br.mac !== gwMac) {
      linkSet(rt, br.index, { up: true, mac: gwMac });
      fixes++;
    }
    const wantAddrs = new Set(
      spec.subnets.map((s) => `${bareIp(s.gateway)}/${parseV4Cidr(s.subnet, 'subnet').len}`),
    );
    const haveAddrs = addrList(rt, { dev: br.index, family: AF_INET }).map((a) => a.cidr);
    for (const a of haveAddrs) {
      if (!wantAddrs.has(a)) {
        addrDel(rt, br.index, a, { ifExists: true });
        fixes++;
      }
    }
    for (const a of wantAddrs) {
      if (!haveAddrs.includes(a)) {
        addrAdd(rt, br.index, a, { replace: true });
        fixes++;
      }
    }

    // The vxlan device: right settings, its socket in the node's namespace (linkNetnsId set).
    const name = vxlanName(st.vni);
    let vx = linkFind(rt, name);
    const under = this.underlay();
    if (vx) {
      const v = vx.vxlan;
      const ok =
        vx.kind === 'vxlan' &&
        v !== undefined &&
        vx.linkNetnsId !== undefined &&
        v.vni === st.vni &&
        v.port === this.port &&
        v.local === this.vtep &&
        !v.learning &&
        v.proxy &&
        !v.l2miss &&
        !v.l3miss;
      if (!ok) {
        linkDel(rt, vx.index);
        vx = undefined;
      }
    }
    if (!vx) {
      // IFLA_NET_NS_FD at creation: the device is made by the node's namespace (which keeps
      // its UDP socket, vxlan's src_net) and registered in the network's namespace in one
      // step, the same outcome as `ip link add` then `ip link set netns`, with no window in
      // which a crash leaves it behind in the node's namespace.
      const stray = linkFind(this.host, name);
      if (stray?.kind === 'vxlan') linkDel(this.host, stray.index);
      linkAdd(this.host, {
        kind: 'vxlan',
        name,
        vni: st.vni,
        port: this.port,
        local: this.vtep,
        dev: under.index,
        learning: false,
        proxy: true,
        l2miss: false,
        l3miss: false,
        mtu,
        netns: st.ns,
      });
      vx = linkGet(rt, name);
      fixes++;
    }
    if (!vx.up || vx.mtu !== mtu || vx.master !== br.index) {
      linkSet(rt, vx.index, { master: br.index, mtu, up: true });
      fixes++;
    }
    const flags = listPortFlags(rt);
    const vf = flags.get(vx.index);
    if (!vf || vf.learning || vf.flood) {
      setPortFlags(rt, vx.index, name, { learning: false, flood: false });
      fixes++;
    }

    const synced = this.syncPeers(st);
    fixes += synced.added + synced.removed;

    for (const [veth, rec] of [...st.attachments]) {
      try {
        fixes += this.attachOne(st, veth, rec, flags);
      } catch (e) {
        // A task whose namespace is gone has ended; its attachment goes with it.
        if (e instanceof MeshError && e.code === 'ENETNS') st.attachments.delete(veth);
        else throw e;
      }
    }
    // The bridge's MTU last, once its ports have theirs, so raising and lowering both work.
    if (linkGet(rt, br.index).mtu !== mtu) {
      linkSet(rt, br.index, { mtu });
      fixes++;
    }
    return fixes;
  }

  private kernelPeers(rt: NetlinkSocket, vx: number): KernelPeers {
    const neigh = neighList(rt, { dev: vx, family: AF_INET })
      .filter((n) => n.ip !== undefined)
      // A non-permanent entry counts as absent (mac ''), so a wanted one is replaced.
      .map((n) => ({ ip: n.ip!, mac: (n.state & NUD_PERMANENT) !== 0 && n.mac ? n.mac : '' }));
    const fdb: Array<{ mac: string; dst: string }> = [];
    const bridge: string[] = [];
    for (const f of fdbList(rt, { dev: vx })) {
      if (!f.mac) continue;
      if (f.master === undefined && (f.flags & NTF_SELF) !== 0 && f.ip)
        fdb.push({ mac: f.mac, dst: f.ip });
      else if (f.master !== undefined && f.state === NUD_NOARP) bridge.push(f.mac);
    }
    return { neigh, fdb, bridge };
  }

  private syncPeers(st: NetState): PeersResult {
    const rt = st.rt;
    const vx = linkGet(rt, vxlanName(st.vni));
    const plan = planPeers(st.peers, this.vtep, this.kernelPeers(rt, vx.index));
    const del: BatchItem[] = [
      ...plan.neighDel.map((ip) => ({
        msg: neighMsg(RTM_DELNEIGH, vx.index, { ip, mac: '00:00:00:00:00:00' }),
        desc: { op: 'del', object: `neigh ${ip} dev ${vx.name}` },
      })),
      ...plan.fdbDel.map((f) => ({
        msg: fdbMsg(RTM_DELNEIGH, vx.index, { mac: f.mac, dst: f.dst }),
        desc: { op: 'del', object: `fdb ${f.mac} dst ${f.dst} dev ${vx.name}` },
      })),
      ...staticFdbItems(true, vx.index, vx.name, plan.bridgeDel),
    ];
    const add: BatchItem[] = [
      ...plan.neighAdd.map((n) => ({
        msg: neighMsg(RTM_NEWNEIGH, vx.index, n),
        desc: () => ({ op: 'add', object: `neigh ${n.ip} lladdr ${n.mac} dev ${vx.name}` }),
      })),
      ...plan.fdbAdd.map((f) => ({
        msg: fdbMsg(RTM_NEWNEIGH, vx.index, { mac: f.mac, dst: f.dst }),
        desc: () => ({ op: 'add', object: `fdb ${f.mac} dst ${f.dst} dev ${vx.name}` }),
      })),
      ...staticFdbItems(false, vx.index, vx.name, plan.bridgeAdd),
    ];
    const delErr = rt.batch(del).find((r) => r !== null && r.errnoName !== 'ENOENT');
    if (delErr) throw delErr;
    rt.batchOrThrow(add);
    st.peers = plan.desired;
    return { added: add.length, removed: del.length, conflicts: plan.conflicts };
  }

  /** Create or repair one attachment; returns the number of fixes. Throws ENETNS if the task's namespace is gone. */
  private attachOne(
    st: NetState,
    veth: string,
    rec: AttachRecord,
    flags?: Map<number, { learning: boolean; flood: boolean }>,
  ): number {
    const spec = st.spec!;
    const mtu = this.mtuOf(st);
    const rt = st.rt;
    let fixes = 0;
    let link = linkFind(rt, veth);
    const taskNs = nsHandle(rec.taskNs);
    const trt = NetlinkSocket.open(NETLINK_ROUTE, { netns: taskNs });
    try {
      let tl = linkFind(trt, rec.ifname);
      if (link && (!tl || (link.parent ?? link.index) !== tl.index)) {
        // Our end exists but its peer is not the task's `ifname`: rebuild the pair.
        linkDel(rt, link.index);
        link = undefined;
      }
      if (!link) {
        if (tl) {
          throw new MeshError(
            'EEXIST',
            `link ${rec.ifname} in ${rec.taskNs}: the task already has an interface of that name that is not ours; detach it or pick another ifname`,
          );
        }
        linkAdd(rt, {
          kind: 'veth',
          name: veth,
          mtu,
          peer: { name: rec.ifname, netns: taskNs, mtu, mac: rec.mac },
        });
        link = linkGet(rt, veth);
        tl = linkGet(trt, rec.ifname);
        fixes++;
      }
      const alias = aliasOf(rec);
      const br = linkGet(rt, BRIDGE_NAME);
      if (!link.up || link.mtu !== mtu || link.master !== br.index || link.alias !== alias) {
        linkSet(rt, link.index, { master: br.index, mtu, up: true, alias });
        fixes++;
      }
      const pf = (flags ?? listPortFlags(rt)).get(link.index);
      if (!pf || pf.learning || pf.flood) {
        setPortFlags(rt, link.index, veth, { learning: false, flood: false });
        fixes++;
      }
      const statics = fdbList(rt, { dev: link.index }).filter(
        (f) => f.master !== undefined && f.state === NUD_NOARP,
      );
      if (!statics.some((f) => f.mac === rec.mac)) {
        rt.batchOrThrow(staticFdbItems(false, link.index, veth, [rec.mac]));
        fixes++;
      }

      // Task side.
      if (!linkGet(trt, 'lo').up) linkSet(trt, 'lo', { up: true });
      if (tl!.mtu !== mtu || !tl!.up || tl!.mac !== rec.mac) {
        linkSet(trt, tl!.index, { mtu, up: true, mac: rec.mac });
        fixes++;
      }
      const addrs = addrList(trt, { dev: tl!.index, family: AF_INET }).map((a) => a.cidr);
      if (!addrs.includes(rec.ip)) {
        addrAdd(trt, tl!.index, rec.ip, { replace: true });
        fixes++;
      }
      // Other subnets of the network share the L2 segment: on-link routes, no router needed.
      for (const s of spec.subnets) {
        if (inSubnet(rec.ip, s.subnet)) continue;
        routeAdd(trt, { dst: s.subnet, dev: tl!.index }, { replace: true });
      }
      if (rec.gateway)
        routeAdd(trt, { dst: 'default', via: rec.gateway, dev: tl!.index }, { replace: true });
      return fixes;
    } finally {
      trt.close();
      taskNs.close();
    }
  }

  /** mesh_gwbridge, its address, ip_forward and the NAT table; returns the number of fixes. */
  private ensureGwBridge(): number {
    const under = this.underlay();
    let fixes = 0;
    // A fixed MAC: a bridge without one takes the lowest of its ports' and changes it as tasks
    // come and go, and namespaces that cached the old one (the ingress namespace's default
    // route) then send to a port instead of the host: published ports went dark for seconds.
    const gwMac = macFromIp(bareIp(this.gwAddr));
    let br = linkFind(this.host, GW_BRIDGE);
    if (!br) {
      linkAdd(this.host, {
        kind: 'bridge',
        name: GW_BRIDGE,
        mtu: under.mtu,
        mac: gwMac,
        up: true,
        stp: false,
      });
      br = linkGet(this.host, GW_BRIDGE);
      fixes++;
    } else if (!br.up || br.mac !== gwMac) {
      linkSet(this.host, br.index, { up: true, mac: gwMac });
      fixes++;
    }
    if (
      !addrList(this.host, { dev: br.index, family: AF_INET }).some((a) => a.cidr === this.gwAddr)
    ) {
      addrAdd(this.host, br.index, this.gwAddr, { replace: true });
      fixes++;
    }
    fixes += this.inHost(() => {
      let n = 0;
      const path = '/proc/sys/net/ipv4/ip_forward';
      if (readFileSync(path, 'utf8').trim() !== '1') {
        writeFileSync(path, '1');
        n++;
      }
      const list = spawnSync('nft', ['list', 'table', 'ip', NAT_TABLE], {
        encoding: 'utf8',
        timeout: 10_000,
      });
      if (list.status !== 0 || !natRulesetPresent(list.stdout, this.gatewaySubnet, under.name)) {
        const r = spawnSync('nft', ['-f', '-'], {
          input: natRuleset(this.gatewaySubnet, under.name),
          encoding: 'utf8',
          timeout: 10_000,
        });
        if (r.error || r.status !== 0) {
          throw new MeshError(
            'EOVERLAY',
            `apply nft table ip ${NAT_TABLE}: ${r.error?.message ?? r.stderr.trim()}; is nftables (nft) installed and nf_tables available?`,
          );
        }
        n++;
      }
      return n;
    });
    return fixes;
  }

  private attachGw(veth: string, rec: GwRecord): number {
    const under = this.underlay();
    let fixes = 0;
    let link = linkFind(this.host, veth);
    const taskNs = nsHandle(rec.taskNs);
    const trt = NetlinkSocket.open(NETLINK_ROUTE, { netns: taskNs });
    try {
      let tl = linkFind(trt, GW_IFNAME);
      if (link && (!tl || (link.parent ?? link.index) !== tl.index)) {
        linkDel(this.host, link.index);
        link = undefined;
      }
      const mac = macFromIp(rec.ip);
      if (!link) {
        if (tl)
          throw new MeshError(
            'EEXIST',
            `link ${GW_IFNAME} in ${rec.taskNs}: exists and is not ours; remove it`,
          );
        linkAdd(this.host, {
          kind: 'veth',
          name: veth,
          mtu: under.mtu,
          peer: { name: GW_IFNAME, netns: taskNs, mtu: under.mtu, mac },
        });
        link = linkGet(this.host, veth);
        tl = linkGet(trt, GW_IFNAME);
        fixes++;
      }
      const br = linkGet(this.host, GW_BRIDGE);
      const alias = aliasOf(rec);
      if (!link.up || link.master !== br.index || link.alias !== alias) {
        linkSet(this.host, link.index, { master: br.index, up: true, alias });
        fixes++;
      }
      if (!linkGet(trt, 'lo').up) linkSet(trt, 'lo', { up: true });
      if (!tl!.up) {
        linkSet(trt, tl!.index, { up: true });
        fixes++;
      }
      if (!addrList(trt, { dev: tl!.index, family: AF_INET }).some((a) => a.cidr === rec.ip)) {
        addrAdd(trt, tl!.index, rec.ip, { replace: true });
        fixes++;
      }
      routeAdd(
        trt,
        { dst: 'default', via: bareIp(this.gwAddr), dev: tl!.index },
        { replace: true },
      );
      return fixes;
    } finally {
      trt.close();
      taskNs.close();
    }
  }

  /** Adopt: peers and attachments of a kept network as the kernel holds them. */
  private readBack(st: NetState): void {
    const vx = linkFind(st.rt, vxlanName(st.vni));
    if (vx) {
      const k = this.kernelPeers(st.rt, vx.index);
      const vtepOf = new Map(k.fdb.map((f) => [f.mac, f.dst]));
      st.peers = sortByIp(
        k.neigh
          .filter((n) => n.mac !== '' && vtepOf.has(n.mac))
          .map((n) => ({ ip: n.ip, mac: n.mac, vtep: vtepOf.get(n.mac)! })),
      );
    }
    for (const l of linkList(st.rt)) {
      if (l.kind !== 'veth' || !/^mesh-[0-9a-f]{8}$/.test(l.name)) continue;
      // A veth without a readable record stays as it is (detach still finds it by name).
      const rec = parseAlias<AttachRecord>(l.alias);
      if (rec && typeof rec.taskNs === 'string' && typeof rec.ip === 'string')
        st.attachments.set(l.name, rec);
    }
  }

  private readBackGws(): void {
    const br = linkFind(this.host, GW_BRIDGE);
    if (!br) return;
    for (const l of linkList(this.host)) {
      if (l.kind !== 'veth' || l.master !== br.index || !/^mesh-[0-9a-f]{8}$/.test(l.name))
        continue;
      const rec = parseAlias<GwRecord>(l.alias);
      if (rec && typeof rec.taskNs === 'string' && typeof rec.ip === 'string')
        this.gws.set(l.name, rec);
    }
  }
}

/**
 * The attachment record kept as the veth's alias (IFLA_IFALIAS, at most 255 bytes), so adopt()
 * can rebuild the driver's memory from the kernel alone. Too long a record is not stored.
 */
function aliasOf(rec: object): string | undefined {
  const s = ALIAS_TAG + JSON.stringify(rec);
  return Buffer.byteLength(s) < 256 ? s : undefined;
}

function parseAlias<T>(alias: string | undefined): T | undefined {
  if (!alias?.startsWith(ALIAS_TAG)) return undefined;
  try {
    return JSON.parse(alias.slice(ALIAS_TAG.length)) as T;
  } catch {
    return undefined;
  }
}

/** True if `e` is a kernel error with this errno name, wrapped or not. */
export function isOverlayErrno(e: unknown, name: string): boolean {
  return (e instanceof OverlayError && e.errnoName === name) || isErrno(e, name);
}
