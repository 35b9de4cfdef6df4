/**
 * The nftables load-balancer backend, for kernels without IPVS: the same semantics as IPVS
 * (src/lb/types.ts) in one table of our own, `ip mesh-lb`, shaped like kube-proxy's nftables
 * mode (kubernetes pkg/proxy/nftables/README.md):
 *
 *   prerouting/output (nat, dstnat) → services:
 *     ip daddr . meta l4proto . th dport vmap @services          (VIPs)
 *     fib daddr type local … meta l4proto . th dport vmap @ingress (published ports, no VIP)
 *   → svc-<h>: mark the packet and its conntrack entry with the service's fwmark, attach the
 *     service's `ct timeout` object, then `numgen`/`jhash` … vmap → be-<h>-<ip>-<port>
 *   → be-<h>-<ip>-<port>: counter, dnat to ip:port
 *   postrouting (nat, srcnat): meta mark @marks masquerade (replies come back through us)
 *   mark-in/mark-out (mangle): ct mark @marks → meta mark, so every packet of a balanced
 *     connection carries the fwmark, not only the first one (nat chains see first packets only).
 *
 * Draining backends keep their chain (conntrack keeps existing connections on them) but are not
 * in the vmap; unhealthy ones are not programmed. What nftables cannot express (the service key,
 * scheduler, target port, timeouts, weights, task and node) rides in rule comments, so read()
 * works from the kernel alone, after a restart too.
 *
 * apply() reads the table back (`nft -j list table`), compares it chain by chain and element by
 * element with the desired state, and sends only the differences as one `nft -f -` transaction
 * (the kernel applies a batch atomically or not at all). A table that is missing or whose
 * skeleton is wrong is rebuilt whole, in the same single transaction.
 *
 * Reading the table back costs about as much as writing it (≈2 s for 1,000 services × 10
 * backends), so apply() skips the read when the namespace's nftables generation (NFT_MSG_GETGEN,
 * bumped by every committed transaction, anyone's) is still the one our last commit produced:
 * the kernel then holds exactly what we wrote. A hand edit is a commit, so it forces a read.
 *
 * May import: node built-ins, netlink/ (netns, socket, nl), util/, ./types.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { netnsOpen, withNetns, type Netns } from '../netlink/netns.js';
import { NETLINK_NETFILTER, NLM_F_REQUEST } from '../netlink/nl.js';
import { NetlinkSocket } from '../netlink/socket.js';
import { MeshError, UsageError } from '../util/errors.js';
import { runTool } from '../util/exec.js';
import type { Scheduler } from '../api/lb.js';
import type { Backend, BackendStats, LbBackend, LbService } from './types.js';

export const NFT_TABLE = 'mesh-lb';
const T = `ip ${NFT_TABLE}`;

/** nft refuses longer comments (NFTNL_UDATA_COMMENT_MAXLEN). */
const COMMENT_MAX = 128;
/** Fixed seed for sh/mh, so a client keeps its backend across rebuilds of the chain. */
const JHASH_SEED = 0x4d455348;
/** include/uapi/linux/netfilter/nfnetlink.h, nf_tables.h */
const NFNL_SUBSYS_NFTABLES = 10;
const NFT_MSG_GETGEN = 16;
const NFTA_GEN_ID = 1;
const SCHEDULERS: readonly Scheduler[] = ['rr', 'wrr', 'lc', 'sh', 'mh'];

export interface NftBackendOptions {
  /** Run `nft` inside this namespace (a handle, or a name under /run/netns). @default the caller's */
  netns?: Netns | string;
  /** The nft binary. @default 'nft' */
  nft?: string;
  /** Kill an nft run that takes longer than this. @default 120000 (ms) */
  timeoutMs?: number;
}

/** What read() adds per backend: IPVS-like counts from conntrack plus our chain counter. */
export interface NftBackendStats extends BackendStats {
  /** New connections this backend was chosen for (the counter in its chain; first packets). */
  scheduledConns?: number;
}

export type NftService = Omit<LbService, 'backends'> & {
  backends: Array<Backend & NftBackendStats>;
};

// ---------------------------------------------------------------------------------------------
// Desired state → plan (pure)

interface BackendPlan {
  chain: string;
  ip: string;
  port: number;
  weight: number;
  active: boolean;
  comment: string;
  /** Canonical content of the chain, comparable with what parseChain() makes of the kernel's. */
  canon: string;
  rules: string[];
}

interface ServicePlan {
  svc: LbService;
  hash: string;
  chain: string;
  /** `services` or `ingress` element key, in nft syntax. */
  mapName: MapName;
  elemKey: string;
  timeoutObj?: { name: string; protocol: 'tcp' | 'udp'; policy: Record<string, number> };
  backends: BackendPlan[];
  canon: string;
  rules: string[];
}

export interface Plan {
  services: ServicePlan[];
  marks: number[];
}

type MapName = 'services' | 'vips' | 'ingress';
const MAPS: readonly MapName[] = ['services', 'vips', 'ingress'];

const enc = (s: string): string => encodeURIComponent(s);

function hashKey(key: string): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 12);
}

function ipNum(ip: string): number {
  return ip.split('.').reduce((a, b) => a * 256 + Number(b), 0);
}

function validPort(p: unknown): p is number {
  return typeof p === 'number' && Number.isInteger(p) && p >= 1 && p <= 65535;
}

/**
 * The desired state as the kernel will hold it: unhealthy backends dropped, draining (or weight
 * 0) backends as `draining` with weight 0, backends sorted by address, services by key.
 * Throws UsageError naming the bad field.
 */
export function normalizeServices(
  desired: readonly LbService[],
  opts: { timeouts?: boolean } = {},
): LbService[] {
  const keys = new Set<string>();
  const fronts = new Set<string>();
  const out: LbService[] = [];
  for (const s of desired) {
    const what = `lb service ${JSON.stringify(s.key)}`;
    if (typeof s.key !== 'string' || s.key === '') throw new UsageError(`apply lb: empty key`);
    if (keys.has(s.key)) throw new UsageError(`apply ${what}: duplicate key`);
    keys.add(s.key);
    if (!Number.isInteger(s.fwmark) || s.fwmark < 256 || s.fwmark > 0xffffffff)
      throw new UsageError(`apply ${what}: fwmark ${s.fwmark} out of range (256..2^32-1)`);
    if (s.protocol !== 'tcp' && s.protocol !== 'udp')
      throw new UsageError(`apply ${what}: protocol must be tcp or udp`);
    // Port 0 (both ports) = every port of the VIP: DNAT keeps the destination port.
    const allPorts = s.port === 0 && s.targetPort === 0 && s.vip !== undefined;
    if (!allPorts && (!validPort(s.port) || !validPort(s.targetPort)))
      throw new UsageError(
        `apply ${what}: port and targetPort must be 1..65535 (both 0 = all ports, VIP services only)`,
      );
    if (s.vip !== undefined && !isIPv4(s.vip))
      throw new UsageError(`apply ${what}: vip ${s.vip} is not an IPv4 address`);
    if (!SCHEDULERS.includes(s.scheduler))
      throw new UsageError(`apply ${what}: unknown scheduler ${String(s.scheduler)}`);
    const front = `${s.vip ?? '*'} ${s.protocol} ${s.port}`;
    if (fronts.has(front)) throw new UsageError(`apply ${what}: front end ${front} used twice`);
    fronts.add(front);
    const seen = new Set<string>();
    const backends: Backend[] = [];
    for (const b of s.backends) {
      if (!isIPv4(b.ip) || !(allPorts ? b.port === 0 : validPort(b.port)))
        throw new UsageError(`apply ${what}: backend ${b.ip}:${b.port} is not IPv4 address:port`);
      if (!Number.isInteger(b.weight) || b.weight < 0 || b.weight > 65535)
        throw new UsageError(`apply ${what}: backend ${b.ip} weight must be 0..65535`);
      if (b.state === 'unhealthy') continue;
      const id = `${b.ip}:${b.port}`;
      if (seen.has(id)) throw new UsageError(`apply ${what}: backend ${id} listed twice`);
      seen.add(id);
      const draining = b.state === 'draining' || b.weight === 0;
      const nb: Backend = {
        ip: b.ip,
        port: b.port,
        weight: draining ? 0 : b.weight,
        state: draining ? 'draining' : 'active',
      };
      if (b.task !== undefined) nb.task = b.task;
      if (b.node !== undefined) nb.node = b.node;
      backends.push(nb);
    }
    backends.sort((a, b) => ipNum(a.ip) - ipNum(b.ip) || a.port - b.port);
    const ns: LbService = {
      key: s.key,
      fwmark: s.fwmark,
      protocol: s.protocol,
      port: s.port,
      targetPort: s.targetPort,
      scheduler: s.scheduler,
      backends,
    };
    if (s.vip !== undefined) ns.vip = s.vip;
    const to = opts.timeouts === false ? undefined : cleanTimeouts(s);
    if (to) ns.timeouts = to;
    out.push(ns);
  }
  return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/** Keep only the timeouts that apply to the service's protocol; undefined when none. */
function cleanTimeouts(s: LbService): LbService['timeouts'] {
  const t = s.timeouts;
  if (!t) return undefined;
  const ok = (v: number | undefined): v is number =>
    v !== undefined && Number.isInteger(v) && v >= 1 && v <= 0x7fffffff;
  for (const v of [t.tcp, t.tcpFin, t.udp]) {
    if (v !== undefined && !ok(v))
      throw new UsageError(
        `apply lb service ${JSON.stringify(s.key)}: timeouts must be 1..2^31-1 s`,
      );
  }
  const r: NonNullable<LbService['timeouts']> = {};
  if (s.protocol === 'tcp') {
    if (ok(t.tcp)) r.tcp = t.tcp;
    if (ok(t.tcpFin)) r.tcpFin = t.tcpFin;
  } else if (ok(t.udp)) r.udp = t.udp;
  return Object.keys(r).length ? r : undefined;
}

/**
 * Conntrack timeout policy for a service. IPVS's tcp timeout is the established state; its tcpfin
 * timeout covers the states after a FIN; its udp timeout is the one UDP timeout (conntrack has
 * two: before and after a reply).
 */
function timeoutPolicy(s: LbService): Record<string, number> | undefined {
  const t = s.timeouts;
  if (!t) return undefined;
  const p: Record<string, number> = {};
  if (s.protocol === 'tcp') {
    if (t.tcp !== undefined) p['established'] = t.tcp;
    if (t.tcpFin !== undefined)
      for (const k of ['fin_wait', 'close_wait', 'last_ack', 'time_wait']) p[k] = t.tcpFin;
  } else if (t.udp !== undefined) {
    p['unreplied'] = t.udp;
    p['replied'] = t.udp;
  }
  return Object.keys(p).length ? p : undefined;
}

function serviceComment(s: LbService): string {
  const parts = [`k=${enc(s.key)}`, `s=${s.scheduler}`, `t=${s.targetPort}`];
  const t = s.timeouts;
  if (t) parts.push(`to=${t.tcp ?? ''},${t.tcpFin ?? ''},${t.udp ?? ''}`);
  const c = parts.join(';');
  if (c.length > COMMENT_MAX)
    throw new UsageError(
      `apply lb service ${JSON.stringify(s.key)}: key too long for an nft comment (at most about 90 characters)`,
    );
  return c;
}

/** Backend metadata; task and node are dropped (node first) when the comment would not fit. */
function backendComment(b: Backend): string {
  const base = `w=${b.weight}`;
  const task = b.task !== undefined ? `;task=${enc(b.task)}` : '';
  const node = b.node !== undefined ? `;node=${enc(b.node)}` : '';
  for (const c of [base + task + node, base + task, base]) if (c.length <= COMMENT_MAX) return c;
  return base;
}

interface Slot {
  lo: number;
  hi: number;
  chain: string;
}

/** The vmap of a service chain: which numbers go to which backend, and what picks the number. */
function selector(
  s: LbService,
  active: BackendPlan[],
): { key: string; canonKey: string; slots: Slot[] } {
  const weighted = s.scheduler !== 'rr';
  const slots: Slot[] = [];
  let n = 0;
  for (const b of active) {
    const w = weighted ? b.weight : 1;
    slots.push({ lo: n, hi: n + w - 1, chain: b.chain });
    n += w;
  }
  // rr: a per-rule counter (numgen inc) is round-robin, as IPVS rr; wrr/lc: random with weights
  // (nftables keeps no per-backend connection counts, so lc is approximated by wrr); sh/mh: a
  // hash of the client address (mh's minimal disruption on backend changes is not kept).
  if (s.scheduler === 'rr')
    return { key: `numgen inc mod ${n}`, canonKey: `numgen inc ${n}`, slots };
  if (s.scheduler === 'sh' || s.scheduler === 'mh')
    return {
      key: `jhash ip saddr mod ${n} seed 0x${JHASH_SEED.toString(16)}`,
      canonKey: `jhash saddr ${n} ${JHASH_SEED}`,
      slots,
    };
  return { key: `numgen random mod ${n}`, canonKey: `numgen random ${n}`, slots };
}

function canonSlots(slots: readonly Slot[]): string {
  return slots.map((x) => `${x.lo}-${x.hi}>${x.chain}`).join(',');
}

function quote(c: string): string {
  return `"${c}"`;
}

export function planServices(services: readonly LbService[]): Plan {
  const plans: ServicePlan[] = [];
  const chains = new Map<string, string>();
  const marks = new Set<number>();
  for (const s of services) {
    const hash = hashKey(s.key);
    const chain = `svc-${hash}`;
    const other = chains.get(chain);
    if (other !== undefined)
      throw new MeshError('EINTERNAL', `apply lb: keys ${other} and ${s.key} hash alike`);
    chains.set(chain, s.key);
    marks.add(s.fwmark);
    const backends: BackendPlan[] = s.backends.map((b) => {
      const bchain = `be-${hash}-${b.ip}-${b.port}`;
      const comment = backendComment(b);
      return {
        chain: bchain,
        ip: b.ip,
        port: b.port,
        weight: b.weight,
        active: b.state === 'active',
        comment,
        canon: `${s.protocol} dnat ${b.ip}:${b.port} #${comment}`,
        rules: [
          `meta l4proto ${s.protocol} counter dnat to ${b.port === 0 ? b.ip : `${b.ip}:${b.port}`} comment ${quote(comment)}`,
        ],
      };
    });
    const policy = timeoutPolicy(s);
    const timeoutObj = policy ? { name: `to-${hash}`, protocol: s.protocol, policy } : undefined;
    const comment = serviceComment(s);
    const hex = `0x${s.fwmark.toString(16).padStart(8, '0')}`;
    const head =
      `meta mark set ${hex} ct mark set ${hex}` +
      (timeoutObj ? ` ct timeout set ${quote(timeoutObj.name)}` : '') +
      ` comment ${quote(comment)}`;
    const headCanon = `mark ${s.fwmark} ${s.fwmark} ${timeoutObj?.name ?? '-'} #${comment}`;
    const active = backends.filter((b) => b.active);
    let pick: string;
    let pickCanon: string;
    if (active.length === 0) {
      // Like kube-proxy for a service without endpoints: refuse rather than black-hole.
      pick = 'reject';
      pickCanon = 'reject';
    } else {
      const sel = selector(s, active);
      const entries = sel.slots
        .map((x) => `${x.lo === x.hi ? x.lo : `${x.lo}-${x.hi}`} : goto ${x.chain}`)
        .join(', ');
      pick = `${sel.key} vmap { ${entries} }`;
      pickCanon = `${sel.canonKey} ${canonSlots(sel.slots)}`;
    }
    const plan: ServicePlan = {
      svc: s,
      hash,
      chain,
      mapName: s.vip === undefined ? 'ingress' : s.port === 0 ? 'vips' : 'services',
      elemKey:
        s.vip === undefined
          ? `${s.protocol} . ${s.port}`
          : s.port === 0
            ? `${s.vip} . ${s.protocol}`
            : `${s.vip} . ${s.protocol} . ${s.port}`,
      backends,
      canon: `${headCanon}\n${pickCanon}`,
      rules: [head, pick],
    };
    if (timeoutObj) plan.timeoutObj = timeoutObj;
    plans.push(plan);
  }
  return { services: plans, marks: [...marks].sort((a, b) => a - b) };
}

// ---------------------------------------------------------------------------------------------
// The fixed skeleton. Every fixed rule carries a comment naming it, which is how drift in these
// chains is recognised (their expressions are not compared).

interface FixedChain {
  name: string;
  /** `type … hook … priority …` or undefined for a regular chain. */
  base?: { type: string; hook: string; prio: number; text: string };
  rules: Array<{ tag: string; text: string }>;
}

const FIXED: readonly FixedChain[] = [
  {
    name: 'services',
    rules: [
      { tag: 'mesh-lb:vip', text: 'ip daddr . meta l4proto . th dport vmap @services' },
      // All-ports VIPs (port 0) after the per-port ones: a VIP:port entry wins.
      { tag: 'mesh-lb:vip-all', text: 'ip daddr . meta l4proto vmap @vips' },
      {
        tag: 'mesh-lb:ingress',
        // Published ports answer on every local address but loopback (like kube-proxy's
        // nodeports: loopback would need route_localnet).
        text: 'fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @ingress',
      },
    ],
  },
  {
    name: 'prerouting',
    base: {
      type: 'nat',
      hook: 'prerouting',
      prio: -100,
      text: 'type nat hook prerouting priority -100; policy accept;',
    },
    rules: [{ tag: 'mesh-lb:dnat-in', text: 'jump services' }],
  },
  {
    name: 'output',
    base: {
      type: 'nat',
      hook: 'output',
      prio: -100,
      text: 'type nat hook output priority -100; policy accept;',
    },
    rules: [{ tag: 'mesh-lb:dnat-out', text: 'jump services' }],
  },
  {
    name: 'postrouting',
    base: {
      type: 'nat',
      hook: 'postrouting',
      prio: 100,
      text: 'type nat hook postrouting priority 100; policy accept;',
    },
    rules: [{ tag: 'mesh-lb:masq', text: 'meta mark @marks masquerade' }],
  },
  {
    name: 'mark-in',
    base: {
      type: 'filter',
      hook: 'prerouting',
      prio: -150,
      text: 'type filter hook prerouting priority -150; policy accept;',
    },
    rules: [{ tag: 'mesh-lb:mark-in', text: 'ct mark @marks meta mark set ct mark' }],
  },
  {
    name: 'mark-out',
    base: {
      type: 'route',
      hook: 'output',
      prio: -150,
      text: 'type route hook output priority -150; policy accept;',
    },
    rules: [{ tag: 'mesh-lb:mark-out', text: 'ct mark @marks meta mark set ct mark' }],
  },
];

const MAP_TYPES: Record<MapName, string> = {
  services: 'ipv4_addr . inet_proto . inet_service : verdict',
  vips: 'ipv4_addr . inet_proto : verdict',
  ingress: 'inet_proto . inet_service : verdict',
};

function fixedCanon(f: FixedChain): string {
  return f.rules.map((r) => `#${r.tag}`).join('\n');
}

function ruleLine(chain: string, r: string): string {
  return `add rule ${T} ${chain} ${r}`;
}

function timeoutText(o: NonNullable<ServicePlan['timeoutObj']>): string {
  const pol = Object.entries(o.policy)
    .map(([k, v]) => `${k}: ${v}`)
    .join(', ');
  return `{ protocol ${o.protocol}; l3proto ip; policy = { ${pol} }; }`;
}

/**
 * The whole table as one `nft -f` text: what apply() sends when the table is missing, and what
 * the benchmark feeds to `nft -f` directly. `replace` deletes an existing table first, in the
 * same transaction (`table …` before `delete table` makes the delete safe when there is none).
 */
export function renderTable(plan: Plan, opts: { replace?: boolean } = {}): string {
  const out: string[] = [];
  if (opts.replace) out.push(`table ${T}`, `delete table ${T}`);
  out.push(`table ${T} {`);
  for (const s of plan.services)
    if (s.timeoutObj) out.push(`  ct timeout ${s.timeoutObj.name} ${timeoutText(s.timeoutObj)}`);
  out.push(`  set marks { type mark; }`);
  for (const m of MAPS) out.push(`  map ${m} { type ${MAP_TYPES[m]}; }`);
  for (const s of plan.services) {
    for (const b of s.backends) {
      out.push(`  chain ${b.chain} {`);
      for (const r of b.rules) out.push(`    ${r}`);
      out.push('  }');
    }
    out.push(`  chain ${s.chain} {`);
    for (const r of s.rules) out.push(`    ${r}`);
    out.push('  }');
  }
  for (const f of FIXED) {
    out.push(`  chain ${f.name} {`);
    if (f.base) out.push(`    ${f.base.text}`);
    for (const r of f.rules) out.push(`    ${r.text} comment ${quote(r.tag)}`);
    out.push('  }');
  }
  out.push('}');
  for (const m of MAPS) {
    const els = plan.services.filter((s) => s.mapName === m);
    if (els.length)
      out.push(
        `add element ${T} ${m} { ${els.map((s) => `${s.elemKey} : goto ${s.chain}`).join(', ')} }`,
      );
  }
  if (plan.marks.length) out.push(`add element ${T} marks { ${plan.marks.join(', ')} }`);
  return out.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------
// Kernel JSON (`nft -j list table`) → comparable state (pure)

type J = Record<string, unknown>;

interface KChain {
  name: string;
  /** Set when the chain is synthesized from a plan (planView): its canonical content. */
  canon?: string;
  base?: { type: string; hook: string; prio: number; policy: string };
  rules: Array<{ comment?: string; expr: J[] }>;
}

export interface KernelState {
  chains: Map<string, KChain>;
  maps: Map<string, { type: string; elems: Map<string, string> }>;
  marks: Set<number> | undefined;
  marksType: string | undefined;
  timeouts: Map<string, { protocol: string; policy: Record<string, number> }>;
}

function obj(v: unknown): J | undefined {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as J) : undefined;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

/** Key of a map element as nft prints it in text (`10.0.9.10 . tcp . 80`). */
function elemKeyText(k: unknown): string {
  const c = obj(k)?.['concat'];
  if (Array.isArray(c)) return c.map((x) => String(x)).join(' . ');
  return String(JSON.stringify(k));
}

function verdictTarget(v: unknown): string {
  const o = obj(v);
  const g = obj(o?.['goto']) ?? obj(o?.['jump']);
  const t = str(g?.['target']);
  return t !== undefined ? (o?.['goto'] ? `goto ${t}` : `jump ${t}`) : String(JSON.stringify(v));
}

export function parseKernel(json: string): KernelState {
  const st: KernelState = {
    chains: new Map(),
    maps: new Map(),
    marks: undefined,
    marksType: undefined,
    timeouts: new Map(),
  };
  const root = obj(JSON.parse(json) as unknown);
  const list = root?.['nftables'];
  if (!Array.isArray(list)) throw new MeshError('ENFT', 'read nft table: unexpected json from nft');
  for (const item of list) {
    const o = obj(item);
    if (!o) continue;
    const chain = obj(o['chain']);
    if (chain) {
      const name = String(chain['name']);
      const c: KChain = { name, rules: [] };
      if (chain['hook'] !== undefined)
        c.base = {
          type: String(chain['type']),
          hook: str(chain['hook']) ?? '',
          prio: Number(chain['prio']),
          policy: String(chain['policy']),
        };
      st.chains.set(name, c);
      continue;
    }
    const rule = obj(o['rule']);
    if (rule) {
      const c = st.chains.get(String(rule['chain']));
      const expr = Array.isArray(rule['expr'])
        ? (rule['expr'] as unknown[]).map((e) => obj(e) ?? {})
        : [];
      const r: KChain['rules'][number] = { expr };
      const cm = str(rule['comment']);
      if (cm !== undefined) r.comment = cm;
      c?.rules.push(r);
      continue;
    }
    const map = obj(o['map']);
    if (map) {
      const elems = new Map<string, string>();
      const el = map['elem'];
      if (Array.isArray(el))
        for (const e of el) if (Array.isArray(e)) elems.set(elemKeyText(e[0]), verdictTarget(e[1]));
      const type = Array.isArray(map['type'])
        ? (map['type'] as unknown[]).join(' . ')
        : String(map['type']);
      st.maps.set(String(map['name']), { type: `${type} : ${String(map['map'])}`, elems });
      continue;
    }
    const set = obj(o['set']);
    if (set && set['name'] === 'marks') {
      st.marksType = String(set['type']);
      st.marks = new Set();
      const el = set['elem'];
      if (Array.isArray(el)) for (const e of el) if (typeof e === 'number') st.marks.add(e);
      continue;
    }
    const to = obj(o['ct timeout']);
    if (to) {
      const policy: Record<string, number> = {};
      const p = obj(to['policy']);
      if (p) for (const [k, v] of Object.entries(p)) if (typeof v === 'number') policy[k] = v;
      st.timeouts.set(String(to['name']), { protocol: String(to['protocol']), policy });
    }
  }
  return st;
}

interface ParsedService {
  fwmark?: number;
  ctmark?: number;
  timeout?: string;
  comment?: string;
  /** Backend chain names in the vmap, and the vmap as a canonical string. */
  inVmap: Set<string>;
}

/**
 * A kernel chain in the canonical form planServices() produces for ours; anything we do not
 * recognise becomes its JSON, which never equals a plan's canonical form (so it is repaired).
 * Counters are left out (they change with traffic).
 */
function canonChain(c: KChain): {
  canon: string;
  svc?: ParsedService;
  packets?: number;
  dnat?: { ip: string; port: number };
} {
  const lines: string[] = [];
  let svc: ParsedService | undefined;
  let packets: number | undefined;
  let dnat: { ip: string; port: number } | undefined;
  for (const r of c.rules) {
    const comment = r.comment !== undefined ? ` #${r.comment}` : '';
    const e = r.expr;
    const e0 = e[0];
    // Head of a service chain: meta mark set N ct mark set N [ct timeout set "x"].
    const m0 = obj(e0?.['mangle']);
    const m1 = obj(e[1]?.['mangle']);
    if (
      m0 &&
      m1 &&
      obj(obj(m0['key'])?.['meta'])?.['key'] === 'mark' &&
      obj(obj(m1['key'])?.['ct'])?.['key'] === 'mark'
    ) {
      const to = e.length === 3 ? str(e[2]?.['ct timeout']) : undefined;
      if (e.length === 2 || to !== undefined) {
        svc ??= { inVmap: new Set() };
        svc.fwmark = Number(m0['value']);
        svc.ctmark = Number(m1['value']);
        if (to !== undefined) svc.timeout = to;
        if (r.comment !== undefined) svc.comment = r.comment;
        lines.push(`mark ${String(m0['value'])} ${String(m1['value'])} ${to ?? '-'}${comment}`);
        continue;
      }
    }
    // The pick: numgen/jhash … vmap { n[-m] : goto chain, … }.
    const vm = e.length === 1 ? obj(e0?.['vmap']) : undefined;
    const data = obj(vm?.['data'])?.['set'];
    if (vm && Array.isArray(data)) {
      const key = obj(vm['key']);
      const ng = obj(key?.['numgen']);
      const jh = obj(key?.['jhash']);
      let k: string | undefined;
      if (ng && (ng['offset'] ?? 0) === 0) k = `numgen ${String(ng['mode'])} ${String(ng['mod'])}`;
      else if (
        jh &&
        obj(obj(jh['expr'])?.['payload'])?.['field'] === 'saddr' &&
        (jh['offset'] ?? 0) === 0
      )
        k = `jhash saddr ${String(jh['mod'])} ${Number(jh['seed'] ?? 0)}`;
      if (k !== undefined) {
        svc ??= { inVmap: new Set() };
        const slots: Slot[] = [];
        for (const d of data) {
          if (!Array.isArray(d)) continue;
          const rg = obj(d[0])?.['range'];
          const [lo, hi] = Array.isArray(rg)
            ? [Number(rg[0]), Number(rg[1])]
            : [Number(d[0]), Number(d[0])];
          const t = verdictTarget(d[1]);
          const chain = t.startsWith('goto ') ? t.slice(5) : t;
          svc.inVmap.add(chain);
          slots.push({ lo, hi, chain });
        }
        slots.sort((a, b) => a.lo - b.lo);
        lines.push(`${k} ${canonSlots(slots)}${comment}`);
        continue;
      }
    }
    if (e.length === 1 && obj(e0?.['reject'])) {
      svc ??= { inVmap: new Set() };
      lines.push(`reject${comment}`);
      continue;
    }
    // Backend: meta l4proto P counter dnat to ip:port.
    const l4 = obj(e0?.['match']);
    const ctr = obj(e[1]?.['counter']);
    const dn = obj(e[2]?.['dnat']);
    if (
      e.length === 3 &&
      l4 &&
      obj(obj(l4['left'])?.['meta'])?.['key'] === 'l4proto' &&
      ctr &&
      dn
    ) {
      packets = Number(ctr['packets']);
      dnat = { ip: String(dn['addr']), port: Number(dn['port'] ?? 0) };
      lines.push(`${String(l4['right'])} dnat ${dnat.ip}:${dnat.port}${comment}`);
      continue;
    }
    // Fixed chains are recognised by their tag only.
    if (r.comment?.startsWith('mesh-lb:')) {
      lines.push(`#${r.comment}`);
      continue;
    }
    lines.push(JSON.stringify(e) + comment);
  }
  const res: ReturnType<typeof canonChain> = { canon: lines.join('\n') };
  if (svc) res.svc = svc;
  if (packets !== undefined) res.packets = packets;
  if (dnat) res.dnat = dnat;
  return res;
}

// ---------------------------------------------------------------------------------------------
// Diff (pure): the commands that turn `k` into `plan`, and how many objects differ.

export interface Diff {
  changes: number;
  /** nft script (one transaction), empty when nothing differs. */
  script: string;
}

const canonOf = (c: KChain): string => c.canon ?? canonChain(c).canon;

/**
 * The kernel state a successful apply of `plan` leaves behind, in the form diff() compares;
 * used instead of listing the table when nothing was committed since (see NftBackend.apply).
 */
export function planView(plan: Plan): KernelState {
  const chains = new Map<string, KChain>();
  for (const f of FIXED) {
    const c: KChain = { name: f.name, rules: [], canon: fixedCanon(f) };
    if (f.base)
      c.base = { type: f.base.type, hook: f.base.hook, prio: f.base.prio, policy: 'accept' };
    chains.set(f.name, c);
  }
  const maps: KernelState['maps'] = new Map();
  for (const m of MAPS) maps.set(m, { type: MAP_TYPES[m], elems: new Map() });
  const timeouts: KernelState['timeouts'] = new Map();
  for (const s of plan.services) {
    chains.set(s.chain, { name: s.chain, rules: [], canon: s.canon });
    for (const b of s.backends) chains.set(b.chain, { name: b.chain, rules: [], canon: b.canon });
    maps.get(s.mapName)?.elems.set(s.elemKey, `goto ${s.chain}`);
    if (s.timeoutObj)
      timeouts.set(s.timeoutObj.name, {
        protocol: s.timeoutObj.protocol,
        policy: s.timeoutObj.policy,
      });
  }
  return { chains, maps, marks: new Set(plan.marks), marksType: 'mark', timeouts };
}

function skeletonOk(k: KernelState): boolean {
  for (const f of FIXED) {
    const c = k.chains.get(f.name);
    if (!c) return false;
    if (f.base) {
      const b = c.base;
      if (
        !b ||
        b.type !== f.base.type ||
        b.hook !== f.base.hook ||
        b.prio !== f.base.prio ||
        b.policy !== 'accept'
      )
        return false;
    } else if (c.base) return false;
  }
  for (const m of MAPS)
    if (k.maps.get(m)?.type.replace(/ /g, '') !== MAP_TYPES[m].replace(/ /g, '')) return false;
  return k.marksType === 'mark';
}

function policyMatches(want: Record<string, number>, have: Record<string, number>): boolean {
  // nft prints only the values that differ from the kernel's defaults, so a missing value is
  // taken as equal (a value set to the default is indistinguishable from one left alone).
  for (const [k, v] of Object.entries(have)) if (want[k] !== v) return false;
  return true;
}

/** Count of the objects a full build creates: what a rebuild reports as changes. */
function fullCount(plan: Plan): number {
  let n = 1 + FIXED.length + MAPS.length + 1;
  for (const s of plan.services) n += 2 + s.backends.length + (s.timeoutObj ? 1 : 0);
  return n + plan.marks.length;
}

export function diff(plan: Plan, k: KernelState | null): Diff {
  if (!k) return { changes: fullCount(plan), script: renderTable(plan) };
  if (!skeletonOk(k))
    return { changes: fullCount(plan), script: renderTable(plan, { replace: true }) };

  const pre: string[] = []; // deletions of elements, flushes
  const del: string[] = []; // chain and object deletions
  const add: string[] = [];
  const tail: string[] = []; // element additions: after the chains they point to exist
  let changes = 0;

  for (const f of FIXED) {
    const c = k.chains.get(f.name);
    if (c && canonOf(c) !== fixedCanon(f)) {
      changes++;
      add.push(`flush chain ${T} ${f.name}`);
      for (const r of f.rules) add.push(ruleLine(f.name, `${r.text} comment ${quote(r.tag)}`));
    }
  }

  const wantChains = new Set<string>(FIXED.map((f) => f.name));
  const wantTimeouts = new Set<string>();
  const flushed = new Set<string>();
  const flush = (chain: string) => {
    if (!flushed.has(chain) && k.chains.has(chain)) {
      flushed.add(chain);
      pre.push(`flush chain ${T} ${chain}`);
    }
  };

  // Map elements: delete what is stale or points elsewhere, add what is missing.
  for (const m of MAPS) {
    const have = k.maps.get(m)?.elems ?? new Map<string, string>();
    const want = new Map<string, string>();
    for (const s of plan.services) if (s.mapName === m) want.set(s.elemKey, `goto ${s.chain}`);
    for (const [key, v] of have) {
      if (want.get(key) === v) continue;
      changes++;
      pre.unshift(`delete element ${T} ${m} { ${key} }`);
    }
    for (const [key, v] of want) {
      if (have.get(key) === v) continue;
      if (!have.has(key)) changes++;
      tail.push(`add element ${T} ${m} { ${key} : ${v} }`);
    }
  }
  const haveMarks = k.marks ?? new Set<number>();
  const wantMarks = new Set(plan.marks);
  for (const m of haveMarks)
    if (!wantMarks.has(m)) {
      changes++;
      pre.push(`delete element ${T} marks { ${m} }`);
    }
  for (const m of wantMarks)
    if (!haveMarks.has(m)) {
      changes++;
      tail.push(`add element ${T} marks { ${m} }`);
    }

  for (const s of plan.services) {
    wantChains.add(s.chain);
    let svcChanged = false;
    if (s.timeoutObj) {
      wantTimeouts.add(s.timeoutObj.name);
      const have = k.timeouts.get(s.timeoutObj.name);
      const ok =
        have !== undefined &&
        have.protocol === s.timeoutObj.protocol &&
        policyMatches(s.timeoutObj.policy, have.policy);
      if (!ok) {
        changes++;
        svcChanged = true; // its rule references the object: flush it before replacing it
        if (have) del.push(`delete ct timeout ${T} ${s.timeoutObj.name}`);
        add.unshift(`add ct timeout ${T} ${s.timeoutObj.name} ${timeoutText(s.timeoutObj)}`);
      }
    }
    for (const b of s.backends) {
      wantChains.add(b.chain);
      const have = k.chains.get(b.chain);
      if (have && canonOf(have) === b.canon) continue;
      changes++;
      if (have) add.push(`flush chain ${T} ${b.chain}`);
      else add.push(`add chain ${T} ${b.chain}`);
      for (const r of b.rules) add.push(ruleLine(b.chain, r));
    }
    const have = k.chains.get(s.chain);
    if (!have) {
      changes++;
      add.push(`add chain ${T} ${s.chain}`);
      for (const r of s.rules) add.push(ruleLine(s.chain, r));
    } else if (svcChanged || canonOf(have) !== s.canon) {
      if (canonOf(have) !== s.canon) changes++;
      flush(s.chain);
      for (const r of s.rules) add.push(ruleLine(s.chain, r));
    }
  }

  // Stale chains: flush service chains first (they hold the jumps), then delete.
  const stale = [...k.chains.keys()].filter((c) => !wantChains.has(c));
  for (const c of stale) if (c.startsWith('svc-')) flush(c);
  for (const c of stale.filter((x) => x.startsWith('svc-'))) {
    changes++;
    del.push(`delete chain ${T} ${c}`);
  }
  for (const c of stale.filter((x) => !x.startsWith('svc-'))) {
    changes++;
    del.push(`delete chain ${T} ${c}`);
  }
  for (const name of k.timeouts.keys())
    if (!wantTimeouts.has(name)) {
      changes++;
      // The rule that references it is in a stale or changed service chain, flushed above.
      const svcChain = `svc-${name.slice(3)}`;
      flush(svcChain);
      del.push(`delete ct timeout ${T} ${name}`);
    }

  if (changes === 0) return { changes: 0, script: '' };
  return { changes, script: [...pre, ...del, ...add, ...tail].join('\n') + '\n' };
}

/** Conntrack counts per (mark, backend): active = TCP established, as ipvsadm counts them. */
export function conntrackCounts(text: string): Map<string, { active: number; inactive: number }> {
  const out = new Map<string, { active: number; inactive: number }>();
  for (const line of text.split('\n')) {
    const mark = /\bmark=(\d+)/.exec(line);
    if (!mark) continue;
    const srcs = [...line.matchAll(/\bsrc=(\S+)/g)];
    const sports = [...line.matchAll(/\bsport=(\d+)/g)];
    const rsrc = srcs[1]?.[1];
    const rsport = sports[1]?.[1];
    if (rsrc === undefined || rsport === undefined) continue;
    const key = `${mark[1]} ${rsrc}:${rsport}`;
    const c = out.get(key) ?? { active: 0, inactive: 0 };
    if (/\btcp\b/.test(line) && /\bESTABLISHED\b/.test(line)) c.active++;
    else c.inactive++;
    out.set(key, c);
  }
  return out;
}

function parseComment(c: string | undefined): Map<string, string> {
  const m = new Map<string, string>();
  if (!c) return m;
  for (const part of c.split(';')) {
    const i = part.indexOf('=');
    if (i > 0) {
      try {
        m.set(part.slice(0, i), decodeURIComponent(part.slice(i + 1)));
      } catch {
        // not one of ours
      }
    }
  }
  return m;
}

/** The services the kernel holds, rebuilt from our chains, maps and comments. */
export function servicesFromKernel(
  k: KernelState,
  conns?: Map<string, { active: number; inactive: number }>,
): NftService[] {
  const fronts = new Map<string, { vip?: string; protocol: string; port: number }>();
  for (const m of MAPS) {
    for (const [key, v] of k.maps.get(m)?.elems ?? []) {
      if (!v.startsWith('goto ')) continue;
      const p = key.split(' . ');
      const f =
        m === 'services'
          ? { vip: p[0] ?? '', protocol: p[1] ?? '', port: Number(p[2]) }
          : m === 'vips'
            ? { vip: p[0] ?? '', protocol: p[1] ?? '', port: 0 }
            : { protocol: p[0] ?? '', port: Number(p[1]) };
      fronts.set(v.slice(5), f);
    }
  }
  const out: NftService[] = [];
  for (const c of k.chains.values()) {
    if (!c.name.startsWith('svc-')) continue;
    const parsed = canonChain(c).svc;
    const meta = parseComment(parsed?.comment);
    const key = meta.get('k');
    const front = fronts.get(c.name);
    if (!parsed || key === undefined || !front || parsed.fwmark === undefined) continue;
    const sched = meta.get('s') as Scheduler | undefined;
    const svc: NftService = {
      key,
      fwmark: parsed.fwmark,
      protocol: front.protocol === 'udp' ? 'udp' : 'tcp',
      port: front.port,
      targetPort: Number(meta.get('t')),
      scheduler: sched && SCHEDULERS.includes(sched) ? sched : 'rr',
      backends: [],
    };
    if (front.vip !== undefined) svc.vip = front.vip;
    const to = meta.get('to');
    if (to !== undefined) {
      const [tcp, fin, udp] = to.split(',').map((x) => (x === '' ? undefined : Number(x)));
      const t: NonNullable<LbService['timeouts']> = {};
      if (tcp !== undefined) t.tcp = tcp;
      if (fin !== undefined) t.tcpFin = fin;
      if (udp !== undefined) t.udp = udp;
      svc.timeouts = t;
    }
    const prefix = `be-${c.name.slice(4)}-`;
    for (const b of k.chains.values()) {
      if (!b.name.startsWith(prefix)) continue;
      const bc = canonChain(b);
      if (!bc.dnat) continue;
      const bm = parseComment(b.rules[0]?.comment);
      const active = parsed.inVmap.has(b.name);
      const be: Backend & NftBackendStats = {
        ip: bc.dnat.ip,
        port: bc.dnat.port,
        weight: active ? Number(bm.get('w') ?? 1) : 0,
        state: active ? 'active' : 'draining',
      };
      const task = bm.get('task');
      const node = bm.get('node');
      if (task !== undefined) be.task = task;
      if (node !== undefined) be.node = node;
      if (bc.packets !== undefined) be.scheduledConns = bc.packets;
      const cc = conns?.get(`${svc.fwmark} ${be.ip}:${be.port}`);
      if (conns) {
        be.activeConns = cc?.active ?? 0;
        be.inactiveConns = cc?.inactive ?? 0;
      }
      svc.backends.push(be);
    }
    svc.backends.sort((a, b) => ipNum(a.ip) - ipNum(b.ip) || a.port - b.port);
    out.push(svc);
  }
  return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

// ---------------------------------------------------------------------------------------------
// The backend (I/O: runs nft)

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export class NftBackend implements LbBackend {
  readonly name = 'nftables' as const;
  private readonly nftBin: string;
  private readonly timeoutMs: number;
  private readonly netns: Netns | string | undefined;
  private timeoutsProbe: boolean | undefined;
  /** What our last commit left, and the generation it produced (see the module header). */
  private cache: { gen: number; plan: Plan } | undefined;

  constructor(opts: NftBackendOptions = {}) {
    this.netns = opts.netns;
    this.nftBin = opts.nft ?? 'nft';
    this.timeoutsProbe = undefined;
    this.timeoutMs = opts.timeoutMs ?? 120_000;
  }

  /** Run nft with `args`, feeding `input` on stdin, inside our namespace. */
  async run(args: readonly string[], input?: string): Promise<RunResult> {
    const opened = typeof this.netns === 'string' ? netnsOpen(this.netns) : undefined;
    const netns = opened ?? (this.netns as Netns | undefined);
    try {
      return await runTool(this.nftBin, args, {
        ...(netns ? { netns } : {}),
        input: input ?? '',
        timeoutMs: this.timeoutMs,
      });
    } catch (e) {
      throw new MeshError(
        'ENFT',
        `run ${this.nftBin}: ${(e as Error).message} (is nftables installed?)`,
        { cause: e },
      );
    } finally {
      opened?.close();
    }
  }

  /** Whether the kernel has conntrack timeout objects (nf_conntrack_timeout); probed once. */
  async timeoutsSupported(): Promise<boolean> {
    if (this.timeoutsProbe === undefined) {
      // -c sends the batch to the kernel and aborts it: nothing is created.
      const r = await this.run(
        ['-c', '-f', '-'],
        `table ip ${NFT_TABLE}-probe {\n  ct timeout t { protocol tcp; l3proto ip; policy = { established: 60 }; }\n}\n`,
      );
      this.timeoutsProbe = r.code === 0;
    }
    return this.timeoutsProbe;
  }

  /** Drop what we remember of the kernel: the next apply() lists the table (full resync). */
  forget(): void {
    this.cache = undefined;
  }

  /** The nftables ruleset generation of our namespace, or undefined if it cannot be read. */
  generation(): number | undefined {
    const ns = typeof this.netns === 'string' ? netnsOpen(this.netns) : this.netns;
    try {
      const sock = NetlinkSocket.open(NETLINK_NETFILTER, ns ? { netns: ns } : {});
      try {
        // nlmsghdr + nfgenmsg (AF_UNSPEC, NFNETLINK_V0, res_id 0).
        const msg = Buffer.alloc(20);
        msg.writeUInt32LE(20, 0);
        msg.writeUInt16LE((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, 4);
        msg.writeUInt16LE(NLM_F_REQUEST, 6);
        for (const m of sock.request(msg, { op: 'get', object: 'nftables generation' })) {
          const p = m.payload;
          for (let off = 4; off + 4 <= p.length;) {
            const len = p.readUInt16LE(off);
            if (len < 4) break;
            if ((p.readUInt16LE(off + 2) & 0x3fff) === NFTA_GEN_ID && len >= 8)
              return p.readUInt32BE(off + 4);
            off += (len + 3) & ~3;
          }
        }
        return undefined;
      } finally {
        sock.close();
      }
    } catch {
      return undefined;
    } finally {
      if (typeof this.netns === 'string') ns?.close();
    }
  }

  private async listJson(): Promise<string | null> {
    const r = await this.run(['-j', 'list', 'table', 'ip', NFT_TABLE]);
    if (r.code === 0) return r.stdout;
    if (/No such file or directory/.test(r.stderr)) return null;
    throw new MeshError('ENFT', `list nft table ${T}: ${r.stderr.trim() || `exit ${r.code}`}`);
  }

  /** The kernel's view, or null when our table does not exist. */
  async kernelState(): Promise<KernelState | null> {
    const j = await this.listJson();
    return j === null ? null : parseKernel(j);
  }

  async apply(desired: LbService[]): Promise<{ changes: number }> {
    const wantsTimeouts = desired.some((s) => s.timeouts !== undefined);
    const timeouts = wantsTimeouts ? await this.timeoutsSupported() : true;
    const plan = planServices(normalizeServices(desired, { timeouts }));
    const g0 = this.generation();
    const cached = g0 !== undefined && this.cache?.gen === g0 ? this.cache.plan : undefined;
    const d = diff(plan, cached ? planView(cached) : await this.kernelState());
    if (d.changes === 0) {
      if (g0 !== undefined) this.cache = { gen: g0, plan };
      return { changes: 0 };
    }
    this.cache = undefined;
    const r = await this.run(['-f', '-'], d.script);
    // Exactly one commit since g0 means it was ours: remember what it left.
    const g1 = r.code === 0 ? this.generation() : undefined;
    if (g0 !== undefined && g1 === (g0 + 1) >>> 0) this.cache = { gen: g1, plan };
    if (r.code !== 0) {
      const msg = r.stderr.trim().split('\n').slice(0, 6).join('; ');
      throw new MeshError('ENFT', `apply nft table ${T}: ${msg || `exit ${r.code}`}`);
    }
    return { changes: d.changes };
  }

  async read(): Promise<NftService[]> {
    const k = await this.kernelState();
    if (!k) return [];
    return servicesFromKernel(k, this.readConntrack());
  }

  /** /proc/net/nf_conntrack of our namespace (per-namespace view), if the kernel exposes it. */
  private readConntrack(): Map<string, { active: number; inactive: number }> | undefined {
    const readIt = (): string | undefined => {
      try {
        return readFileSync('/proc/thread-self/net/nf_conntrack', 'utf8');
      } catch {
        return undefined;
      }
    };
    let text: string | undefined;
    if (this.netns === undefined) text = readIt();
    else if (typeof this.netns === 'string') {
      const ns = netnsOpen(this.netns);
      try {
        text = withNetns(ns, readIt);
      } finally {
        ns.close();
      }
    } else text = withNetns(this.netns, readIt);
    return text === undefined ? undefined : conntrackCounts(text);
  }

  async flush(): Promise<void> {
    this.cache = undefined;
    // `table …` first makes the delete a no-op when the table is already gone.
    const r = await this.run(['-f', '-'], `table ${T}\ndelete table ${T}\n`);
    if (r.code !== 0)
      throw new MeshError('ENFT', `flush nft table ${T}: ${r.stderr.trim() || `exit ${r.code}`}`);
  }
}
