/**
 * The overlay's pure parts: names of the kernel objects a network owns, MACs derived from IPs,
 * MTU arithmetic, and the peer planner that diffs the desired remote endpoints against what
 * the kernel holds and says which ARP/FDB entries to add and remove. No I/O, no clock.
 * May import: util/ and node:crypto (hashing only).
 */
import { createHash } from 'node:crypto';
import { MeshError } from '../util/errors.js';

/** VXLAN header overhead on IPv4: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14 (RFC 7348 §5). */
export const VXLAN_OVERHEAD = 50;
/** ESP transport overhead Docker reserves for encrypted overlays (SPI, seq, IV, pad, ICV). */
export const ESP_OVERHEAD = 26;

/** Name of the namespace holding a network's bridge and vxlan device. */
export function netnsNameFor(prefix: string, vni: number): string {
  return `${prefix}mesh-ov-${vni}`;
}

/** The vxlan device of a network. */
export function vxlanName(vni: number): string {
  return `vx-${vni}`;
}

export const BRIDGE_NAME = 'br0';
export const GW_BRIDGE = 'mesh_gwbridge';
export const GW_IFNAME = 'gw0';
export const NAT_TABLE = 'mesh-nat';

/**
 * The network-side name of a task's veth: `mesh-` + 8 hex digits of a hash of what identifies
 * the attachment, so attach/detach/adopt find it again without any stored state.
 */
export function vethName(key: string): string {
  return `mesh-${createHash('sha256').update(key).digest('hex').slice(0, 8)}`;
}

/** 02:42:<4 bytes of the IPv4 address>, as Docker derives container MACs. */
export function macFromIp(ip: string): string {
  const v = ipv4ToInt(bareIp(ip));
  const b = [v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
  return ['02', '42', ...b.map((x) => x.toString(16).padStart(2, '0'))].join(':');
}

/** `10.0.1.5/24` → `10.0.1.5`. */
export function bareIp(cidrOrIp: string): string {
  const i = cidrOrIp.indexOf('/');
  return i < 0 ? cidrOrIp : cidrOrIp.slice(0, i);
}

export function ipv4ToInt(ip: string): number {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(ip);
  if (!m) throw new MeshError('EUSAGE', `parse address ${JSON.stringify(ip)}: not an IPv4 address`);
  const parts = m.slice(1).map(Number);
  if (parts.some((p) => p > 255)) {
    throw new MeshError('EUSAGE', `parse address ${JSON.stringify(ip)}: not an IPv4 address`);
  }
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

export function intToIpv4(v: number): string {
  return [v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff].join('.');
}

/** Peers sorted by address (keys computed once: this runs on every reconcile of every peer). */
export function sortByIp(peers: Peer[]): Peer[] {
  return peers
    .map((p) => ({ p, k: ipv4ToInt(p.ip) }))
    .sort((a, b) => a.k - b.k)
    .map((x) => x.p);
}

/** Parse `10.0.0.0/24` into network address and prefix length; throws EUSAGE. */
export function parseV4Cidr(cidr: string, what: string): { net: number; len: number } {
  const i = cidr.indexOf('/');
  const len = i < 0 ? NaN : Number(cidr.slice(i + 1));
  if (i < 0 || !Number.isInteger(len) || len < 0 || len > 32) {
    throw new MeshError(
      'EUSAGE',
      `parse ${what} ${JSON.stringify(cidr)}: want IPv4 CIDR like 10.0.1.0/24`,
    );
  }
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  return { net: (ipv4ToInt(cidr.slice(0, i)) & mask) >>> 0, len };
}

/** True if `ip` (bare or CIDR) lies inside `cidr`. */
export function inSubnet(ip: string, cidr: string): boolean {
  const { net, len } = parseV4Cidr(cidr, 'subnet');
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  return (ipv4ToInt(bareIp(ip)) & mask) >>> 0 === net;
}

/** The overlay MTU: underlay − 50 (VXLAN), − 26 more with ESP; an explicit `mtu` wins. */
export function overlayMtu(underlayMtu: number, encrypted: boolean, explicit?: number): number {
  if (explicit !== undefined) return explicit;
  return underlayMtu - VXLAN_OVERHEAD - (encrypted ? ESP_OVERHEAD : 0);
}

/** A remote endpoint as the peers table carries it. */
export interface Peer {
  /** Endpoint address, bare or CIDR (`10.0.1.5/24`). */
  ip: string;
  mac: string;
  /** Underlay IPv4 of the node hosting it. */
  vtep: string;
}

/** The peer entries the kernel holds on one vxlan device. */
export interface KernelPeers {
  /** Permanent ARP entries on the vxlan device (what its ARP proxy answers from). */
  neigh: ReadonlyArray<{ ip: string; mac: string }>;
  /** The vxlan device's own FDB (`self`): MAC → remote VTEP. */
  fdb: ReadonlyArray<{ mac: string; dst: string }>;
  /** Static entries in the bridge FDB pointing at the vxlan port (`master`). */
  bridge: readonly string[];
}

export interface PeerPlan {
  neighAdd: Array<{ ip: string; mac: string }>;
  neighDel: string[];
  fdbAdd: Array<{ mac: string; dst: string }>;
  /** Stale self entries, with the destination they have (deleted by MAC + dst). */
  fdbDel: Array<{ mac: string; dst: string }>;
  bridgeAdd: string[];
  bridgeDel: string[];
  /** Desired peers dropped because another peer claims the same IP or MAC differently. */
  conflicts: Peer[];
  /** The de-duplicated desired state the plan converges to. */
  desired: Peer[];
}

/** Kernel text forms: lower-case MAC, bare IP. */
function normMac(mac: string): string {
  return mac.toLowerCase();
}

/**
 * Reduce a desired peer list to what the kernel should hold: local endpoints (on `ownVtep`) are
 * skipped (they sit on this bridge already); duplicates collapse, which is the reference
 * counting — an FDB entry stays while any desired endpoint needs it. When two peers claim the
 * same IP with different MACs, or the same MAC behind different VTEPs (a stale entry of a node
 * that has not been reaped yet), the later one in the list wins and the other is reported.
 */
export function desiredPeers(
  peers: readonly Peer[],
  ownVtep: string,
): { keep: Peer[]; conflicts: Peer[] } {
  const byIp = new Map<string, Peer>();
  const conflicts: Peer[] = [];
  for (const p of peers) {
    if (p.vtep === ownVtep) continue;
    const q: Peer = { ip: bareIp(p.ip), mac: normMac(p.mac), vtep: p.vtep };
    const old = byIp.get(q.ip);
    if (old && (old.mac !== q.mac || old.vtep !== q.vtep)) conflicts.push(old);
    byIp.set(q.ip, q);
  }
  const byMac = new Map<string, Peer>();
  const keep: Peer[] = [];
  for (const q of byIp.values()) {
    const old = byMac.get(q.mac);
    if (old && old.vtep !== q.vtep) {
      conflicts.push(old);
      keep.splice(keep.indexOf(old), 1);
    }
    byMac.set(q.mac, q);
    keep.push(q);
  }
  return { keep: sortByIp(keep), conflicts };
}

/** Diff the desired peers against the kernel's entries. */
export function planPeers(peers: readonly Peer[], ownVtep: string, kernel: KernelPeers): PeerPlan {
  const { keep, conflicts } = desiredPeers(peers, ownVtep);
  const wantNeigh = new Map(keep.map((p) => [p.ip, p.mac]));
  const wantFdb = new Map(keep.map((p) => [p.mac, p.vtep]));
  const plan: PeerPlan = {
    neighAdd: [],
    neighDel: [],
    fdbAdd: [],
    fdbDel: [],
    bridgeAdd: [],
    bridgeDel: [],
    conflicts,
    desired: keep,
  };
  const haveNeigh = new Map(kernel.neigh.map((n) => [n.ip, normMac(n.mac)]));
  for (const [ip, mac] of wantNeigh) if (haveNeigh.get(ip) !== mac) plan.neighAdd.push({ ip, mac });
  for (const ip of haveNeigh.keys()) if (!wantNeigh.has(ip)) plan.neighDel.push(ip);

  // A MAC may carry several self entries (appended destinations): keep exactly the wanted one.
  const haveFdb = new Map<string, string[]>();
  for (const f of kernel.fdb) {
    const mac = normMac(f.mac);
    haveFdb.set(mac, [...(haveFdb.get(mac) ?? []), f.dst]);
  }
  for (const [mac, dst] of wantFdb) {
    const have = haveFdb.get(mac) ?? [];
    if (!have.includes(dst) || have.length !== 1) plan.fdbAdd.push({ mac, dst });
    for (const d of have) if (d !== dst) plan.fdbDel.push({ mac, dst: d });
  }
  for (const [mac, dsts] of haveFdb) {
    if (!wantFdb.has(mac)) for (const dst of dsts) plan.fdbDel.push({ mac, dst });
  }

  const haveBridge = new Set(kernel.bridge.map(normMac));
  for (const mac of wantFdb.keys()) if (!haveBridge.has(mac)) plan.bridgeAdd.push(mac);
  for (const mac of haveBridge) if (!wantFdb.has(mac)) plan.bridgeDel.push(mac);
  return plan;
}

/** Number of kernel changes a plan makes. */
export function planSize(p: PeerPlan): number {
  return (
    p.neighAdd.length +
    p.neighDel.length +
    p.fdbAdd.length +
    p.fdbDel.length +
    p.bridgeAdd.length +
    p.bridgeDel.length
  );
}

/**
 * The egress masquerade ruleset for the local gateway bridge, applied with `nft -f` as one
 * transaction: creating the table first makes the delete valid on a fresh host, so the same
 * text both installs and repairs (idempotent), and it only ever touches our own table.
 */
export function natRuleset(subnet: string, underlayDev: string): string {
  return [
    `table ip ${NAT_TABLE} {}`,
    `delete table ip ${NAT_TABLE}`,
    `table ip ${NAT_TABLE} {`,
    `  chain postrouting {`,
    `    type nat hook postrouting priority srcnat; policy accept;`,
    `    ip saddr ${subnet} oifname "${underlayDev}" masquerade`,
    `  }`,
    `}`,
    '',
  ].join('\n');
}

/** True if `nft list table ip mesh-nat` output holds the masquerade rule natRuleset makes. */
export function natRulesetPresent(listing: string, subnet: string, underlayDev: string): boolean {
  return listing.includes(`ip saddr ${subnet} oifname "${underlayDev}" masquerade`);
}
