/**
 * The IPVS load-balancer backend: makes the IPVS tables of one network namespace (the
 * per-network load-balancer namespace, or the ingress namespace) match a desired list of
 * services, through our own generic-netlink layer (src/netlink/ipvs.ts).
 *
 * Model (Docker's, see ../shared/REFERENCE.md): one IPVS service per front end, keyed by the
 * firewall mark that VIP/ingress traffic is given by an nft mangle rule (markRulesScript below
 * writes those rules); destinations are the tasks, masqueraded (NAT) by default; a draining
 * backend is a destination of weight 0, an unhealthy one is not programmed at all.
 *
 * Reconcile: apply() dumps the namespace's services and destinations, plans the difference
 * (planIpvs, pure) and sends only the needed NEW/SET/DEL messages, packed into as few
 * sendmsg calls as the batch API allows. IPVS has no transactions: the messages are applied one
 * by one, in an order that keeps every intermediate state valid (a service exists before its
 * destinations), and a failed message does not stop the others; the next apply repairs what is
 * left. "Ours" means fwmark services with a mark inside `fwmarkRange` (256 and up by default,
 * DESIGN.md); everything else in the namespace (address/port services, low marks that an
 * operator added with ipvsadm) is never touched, not even by flush().
 *
 * Timeouts are global to a namespace in IPVS, not per service: apply() programs the largest
 * value any desired service asks for (a connection is never cut earlier than its service
 * wanted) and leaves the kernel's values alone when no service asks.
 *
 * May import: netlink/, lb/types, util/, node built-ins.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import {
  IP_VS_SVC_F_HASHED,
  Ipvs,
  type IpvsDestInfo,
  type IpvsForward,
  type IpvsOp,
  type IpvsServiceInfo,
  type IpvsTimeouts,
} from '../netlink/ipvs.js';
import { withNetns, type Netns } from '../netlink/netns.js';
import { parseIp } from '../netlink/rt.js';
import { MeshError } from '../util/errors.js';
import { runTool } from '../util/exec.js';
import type { Scheduler } from '../api/lb.js';
import type { Backend, BackendStats, LbBackend, LbService } from './types.js';

const SCHEDULERS: ReadonlySet<string> = new Set(['rr', 'wrr', 'lc', 'sh', 'mh']);

export interface IpvsBackendOptions {
  /** Namespace whose IPVS tables this backend owns. Default: the caller's. */
  netns?: Netns;
  /** Forwarding method of every destination: NAT ('masq') or direct routing ('route'). @default 'masq' */
  forward?: Extract<IpvsForward, 'masq' | 'route'>;
  /** Firewall marks that are ours; services outside it are never touched. @default { min: 256, max: 0xffffffff } */
  fwmarkRange?: { min: number; max: number };
  /**
   * Also program the rules that give VIP/ingress traffic its mark (`table ip mesh-lb-mark`, via
   * `nft -f`), one atomic nft transaction whenever they change. @default false
   */
  markRules?: boolean;
  /** Set IPVS_SYSCTLS in the namespace on apply() where they differ (counted as changes). @default true */
  sysctls?: boolean;
}

/**
 * The IPVS sysctls Docker and kube-proxy set in a load-balancer namespace (per namespace,
 * Documentation/networking/ipvs-sysctl.rst), against stale-connection black holes:
 * - conntrack=1: keep conntrack entries for IPVS connections, so nft SNAT/masquerade and
 *   stateful rules see the replies;
 * - expire_nodest_conn=1: a connection whose destination was removed is dropped at its next
 *   packet (the client gets a reset and reconnects) instead of being sent nowhere until it
 *   times out;
 * - expire_quiescent_template=1: persistence templates of a weight-0 destination expire, so
 *   draining also stops persistent clients from sticking to it.
 */
export const IPVS_SYSCTLS: Readonly<Record<string, string>> = {
  'net/ipv4/vs/conntrack': '1',
  'net/ipv4/vs/expire_nodest_conn': '1',
  'net/ipv4/vs/expire_quiescent_template': '1',
};

/**
 * Set `values` (paths under /proc/sys) inside `netns` where they differ; returns how many were
 * changed. /proc/sys/net is resolved in the namespace of the thread that opens it, hence the
 * synchronous reads and writes inside withNetns. Equivalent to: `ip netns exec NS sysctl -w …`.
 */
export function setIpvsSysctls(
  netns: Netns | undefined,
  values: Readonly<Record<string, string>> = IPVS_SYSCTLS,
): number {
  const work = (): number => {
    let n = 0;
    for (const [k, v] of Object.entries(values)) {
      const path = `/proc/sys/${k}`;
      let cur: string;
      try {
        cur = readFileSync(path, 'utf8').trim();
      } catch (e) {
        throw new MeshError(
          'ELB',
          `read sysctl ${k.replaceAll('/', '.')}: ${(e as Error).message} (is ip_vs loaded? modprobe ip_vs)`,
        );
      }
      if (cur === v) continue;
      writeFileSync(path, v);
      n++;
    }
    return n;
  };
  return netns ? withNetns(netns, work) : work();
}

/** What the kernel holds for one of our services: the service and its destinations. */
export interface IpvsCurrent {
  svc: IpvsServiceInfo & { fwmark: number };
  dests: IpvsDestInfo[];
}

/** One service as IPVS will hold it. */
interface WantService {
  af: 'inet' | 'inet6';
  fwmark: number;
  scheduler: string;
  dests: Map<string, { addr: string; port: number; weight: number }>;
}

const destKey = (addr: string, port: number): string => `${addr}|${port}`;

function programmedWeight(b: Backend): number | undefined {
  if (b.state === 'unhealthy') return undefined;
  return b.state === 'draining' ? 0 : b.weight;
}

/** Check desired services and turn them into what IPVS should hold. Throws EUSAGE on bad input. */
export function wantedServices(
  desired: readonly LbService[],
  range: { min: number; max: number },
): Map<number, WantService> {
  const out = new Map<number, WantService>();
  for (const s of desired) {
    const where = `lb service ${s.key}`;
    if (!Number.isInteger(s.fwmark) || s.fwmark < range.min || s.fwmark > range.max) {
      throw new MeshError(
        'EUSAGE',
        `check ${where}: fwmark ${s.fwmark} is outside our range ${range.min}-${range.max}`,
      );
    }
    if (out.has(s.fwmark)) {
      throw new MeshError('EUSAGE', `check ${where}: fwmark ${s.fwmark} is used twice`);
    }
    if (!SCHEDULERS.has(s.scheduler)) {
      throw new MeshError(
        'EUSAGE',
        `check ${where}: unknown scheduler ${JSON.stringify(s.scheduler)} (rr, wrr, lc, sh, mh)`,
      );
    }
    let af: 'inet' | 'inet6' | undefined;
    const dests = new Map<string, { addr: string; port: number; weight: number }>();
    for (const b of s.backends) {
      const ip = parseIp(b.ip, `backend address of ${where}`);
      const baf = ip.family === 2 ? 'inet' : 'inet6';
      if (af && af !== baf) {
        throw new MeshError('EUSAGE', `check ${where}: backends mix IPv4 and IPv6`);
      }
      af = baf;
      const weight = programmedWeight(b);
      if (weight === undefined) continue;
      if (!Number.isInteger(weight) || weight < 0 || weight > 0x7fffffff) {
        throw new MeshError('EUSAGE', `check ${where}: backend ${b.ip} has weight ${weight}`);
      }
      const port = b.port || s.targetPort;
      const k = destKey(b.ip, port);
      if (dests.has(k)) {
        throw new MeshError('EUSAGE', `check ${where}: backend ${b.ip}:${port} is listed twice`);
      }
      dests.set(k, { addr: b.ip, port, weight });
    }
    out.set(s.fwmark, { af: af ?? 'inet', fwmark: s.fwmark, scheduler: s.scheduler, dests });
  }
  return out;
}

/** The namespace-wide timeouts the desired services ask for: the largest per kind, if any. */
export function wantedTimeouts(desired: readonly LbService[]): Partial<IpvsTimeouts> {
  const t: Partial<IpvsTimeouts> = {};
  for (const s of desired) {
    const o = s.timeouts;
    if (!o) continue;
    if (o.tcp !== undefined) t.tcp = Math.max(t.tcp ?? 0, o.tcp);
    if (o.tcpFin !== undefined) t.tcpFin = Math.max(t.tcpFin ?? 0, o.tcpFin);
    if (o.udp !== undefined) t.udp = Math.max(t.udp ?? 0, o.udp);
  }
  return t;
}

/**
 * Plan the IPVS messages that turn `current` (our services as dumped) into `want`. Pure.
 * Order: timeouts, deletions (services, then destinations), new and changed services, then
 * destinations, so each message is valid when the kernel reaches it.
 */
export function planIpvs(
  want: ReadonlyMap<number, WantService>,
  current: readonly IpvsCurrent[],
  forward: IpvsForward,
  timeouts: { want: Partial<IpvsTimeouts>; have?: IpvsTimeouts },
): IpvsOp[] {
  const cfg: Partial<IpvsTimeouts> = {};
  for (const k of ['tcp', 'tcpFin', 'udp'] as const) {
    const v = timeouts.want[k];
    if (v !== undefined && v !== timeouts.have?.[k]) cfg[k] = v;
  }
  const delSvc: IpvsOp[] = [];
  const delDest: IpvsOp[] = [];
  const newSvc: IpvsOp[] = [];
  const setSvc: IpvsOp[] = [];
  const setDest: IpvsOp[] = [];
  const newDest: IpvsOp[] = [];
  const have = new Map<string, IpvsCurrent>();
  for (const c of current) have.set(`${c.svc.af}/${c.svc.fwmark}`, c);

  for (const c of current) {
    const w = want.get(c.svc.fwmark);
    if (!w || w.af !== c.svc.af) {
      delSvc.push({ kind: 'delService', svc: { af: c.svc.af, fwmark: c.svc.fwmark } });
    }
  }
  for (const w of want.values()) {
    const id = { af: w.af, fwmark: w.fwmark };
    const full = { ...id, scheduler: w.scheduler, flags: 0, timeout: 0 };
    const c = have.get(`${w.af}/${w.fwmark}`);
    const addDest = (d: { addr: string; port: number; weight: number }): void => {
      newDest.push({ kind: 'newDest', svc: id, dest: { ...d, forward } });
    };
    if (!c) {
      newSvc.push({ kind: 'newService', svc: full });
      for (const d of w.dests.values()) addDest(d);
      continue;
    }
    // The kernel reports IP_VS_SVC_F_HASHED on every live service; it is not ours to set.
    const flags = c.svc.flags & ~IP_VS_SVC_F_HASHED;
    if (c.svc.scheduler !== w.scheduler || flags !== 0 || c.svc.timeout !== 0) {
      setSvc.push({ kind: 'setService', svc: full });
    }
    const seen = new Set<string>();
    for (const d of c.dests) {
      const k = destKey(d.addr, d.port);
      const wd = w.dests.get(k);
      if (!wd) {
        delDest.push({ kind: 'delDest', svc: id, dest: { addr: d.addr, port: d.port } });
        continue;
      }
      seen.add(k);
      if (
        d.weight !== wd.weight ||
        d.forward !== forward ||
        d.upperThreshold !== 0 ||
        d.lowerThreshold !== 0
      ) {
        setDest.push({ kind: 'setDest', svc: id, dest: { ...wd, forward } });
      }
    }
    for (const [k, d] of w.dests) if (!seen.has(k)) addDest(d);
  }
  const ops: IpvsOp[] = [];
  if (Object.keys(cfg).length > 0) ops.push({ kind: 'setConfig', timeouts: cfg });
  return ops.concat(delSvc, delDest, newSvc, setSvc, setDest, newDest);
}

/** The marking rules for `services`, as one `nft -f` transaction that replaces the table. */
export function markRulesScript(
  services: readonly Pick<LbService, 'fwmark' | 'protocol' | 'vip' | 'port'>[],
  table = 'mesh-lb-mark',
): string {
  const rules = services.map((s) => {
    const dst = s.vip ? `ip daddr ${s.vip}` : 'fib daddr type local';
    // Port 0 = every port of the front end (the destinations' port 0 keeps the packet's).
    const ports = s.port === 0 ? `meta l4proto ${s.protocol}` : `${s.protocol} dport ${s.port}`;
    return `    ${dst} ${ports} meta mark set 0x${s.fwmark.toString(16)}`;
  });
  const body = rules.join('\n');
  // "table …; delete table …" first: a delete of a missing table would fail the transaction.
  return [
    `table ip ${table}`,
    `delete table ip ${table}`,
    `table ip ${table} {`,
    '  chain prerouting {',
    '    type filter hook prerouting priority mangle; policy accept;',
    body,
    '  }',
    '  chain output {',
    '    type route hook output priority mangle; policy accept;',
    body,
    '  }',
    '}',
    '',
  ].join('\n');
}

/** Run `CMD ARGS` inside `netns` (or here) with `input` on stdin; rejects with its stderr. */
export async function runIn(
  netns: Netns | undefined,
  cmd: string,
  args: readonly string[],
  input: string,
): Promise<void> {
  const r = await runTool(cmd, args, { ...(netns ? { netns } : {}), input });
  if (r.code !== 0) {
    throw new MeshError(
      'ELB',
      `run ${cmd} ${args.join(' ')}: exit ${r.code}: ${r.stderr.trim() || 'no message'}`,
    );
  }
}

/** LbService with stats; backends replaced rather than intersected, so `.map` sees the stats. */
export type ReadService = Omit<LbService, 'backends'> & { backends: Array<Backend & BackendStats> };

export class IpvsBackend implements LbBackend {
  readonly name = 'ipvs' as const;
  private readonly netns: Netns | undefined;
  private readonly forward: Extract<IpvsForward, 'masq' | 'route'>;
  private readonly range: { min: number; max: number };
  private readonly markRules: boolean;
  private readonly sysctls: boolean;
  private handle: Ipvs | undefined;
  /** The last desired services by mark: IPVS keeps no key, VIP, port or task names. */
  private known = new Map<number, LbService>();
  /** The marking script last installed (markRules), to skip unchanged rewrites. */
  private lastMarks: string | undefined;

  constructor(opts: IpvsBackendOptions = {}) {
    this.netns = opts.netns;
    this.forward = opts.forward ?? 'masq';
    this.range = opts.fwmarkRange ?? { min: 256, max: 0xffffffff };
    this.markRules = opts.markRules ?? false;
    this.sysctls = opts.sysctls ?? true;
  }

  /**
   * True if IPVS answers in `netns` (the runtime probe for `--lb-backend auto`): the kernel
   * autoloads ip_vs on the first family lookup where module loading works.
   */
  static available(netns?: Netns): boolean {
    try {
      Ipvs.open(netns ? { netns } : {}).close();
      return true;
    } catch {
      return false;
    }
  }

  private ipvs(): Ipvs {
    this.handle ??= Ipvs.open(this.netns ? { netns: this.netns } : {});
    return this.handle;
  }

  /** Close the netlink socket (a later call reopens it). */
  close(): void {
    this.handle?.close();
    this.handle = undefined;
  }

  private ours(s: IpvsServiceInfo): s is IpvsServiceInfo & { fwmark: number } {
    return 'fwmark' in s && s.fwmark >= this.range.min && s.fwmark <= this.range.max;
  }

  /** Our services and their destinations as the kernel holds them (counters only with `stats`). */
  dumpOurs(stats = false): IpvsCurrent[] {
    const h = this.ipvs();
    return h
      .services({ stats })
      .filter((s) => this.ours(s))
      .map((svc) => ({ svc, dests: h.dests({ af: svc.af, fwmark: svc.fwmark }, { stats }) }));
  }

  /** The messages apply(desired) would send now, without sending them. */
  plan(desired: readonly LbService[]): IpvsOp[] {
    const want = wantedServices(desired, this.range);
    const t = wantedTimeouts(desired);
    const have = Object.keys(t).length > 0 ? this.ipvs().getConfig() : undefined;
    return planIpvs(want, this.dumpOurs(), this.forward, have ? { want: t, have } : { want: t });
  }

  /**
   * Equivalent to a minimal sequence of `ipvsadm -A/-E/-D/-a/-e/-d` (and `--set` for timeouts)
   * that makes our services equal `desired`. Returns how many kernel changes were needed (0
   * when the kernel already matched: drift repaired is drift counted).
   */
  async apply(desired: LbService[]): Promise<{ changes: number }> {
    const ops = this.plan(desired);
    if (ops.length > 0) this.ipvs().batchOrThrow(ops);
    this.known = new Map(desired.map((s) => [s.fwmark, s]));
    let changes = ops.length;
    if (this.sysctls) changes += setIpvsSysctls(this.netns);
    if (this.markRules) {
      const script = markRulesScript(desired);
      if (script !== this.lastMarks) {
        await runIn(this.netns, 'nft', ['-f', '-'], script);
        this.lastMarks = script;
        changes++;
      }
    }
    return { changes };
  }

  /**
   * Our services as the kernel holds them, with per-destination connection counts and traffic
   * (packets and bytes both ways). Key, VIP, ports and task names come from the last apply;
   * a service this process did not apply shows as `fwmark:<mark>`. Weight and state are the
   * kernel's: a weight-0 destination is reported as draining. Timeouts are the namespace's.
   * Equivalent to: `ipvsadm -Ln --stats --exact` plus `ipvsadm -L --timeout`.
   */
  read(): Promise<ReadService[]> {
    const cfg = this.ipvs().getConfig();
    return Promise.resolve(this.readNow(cfg));
  }

  private readNow(cfg: IpvsTimeouts): ReadService[] {
    return this.dumpOurs(true).map(({ svc, dests }) => {
      const k = this.known.get(svc.fwmark);
      const byAddr = new Map(
        (k?.backends ?? []).map((b) => [destKey(b.ip, b.port || (k?.targetPort ?? 0)), b]),
      );
      const backends = dests.map((d): Backend & BackendStats => {
        const b = byAddr.get(destKey(d.addr, d.port));
        const out: Backend & BackendStats = {
          ip: d.addr,
          port: d.port,
          weight: d.weight,
          state: d.weight === 0 ? 'draining' : 'active',
          activeConns: d.activeConns,
          inactiveConns: d.inactiveConns,
          packets: d.stats.inPkts + d.stats.outPkts,
          bytes: d.stats.inBytes + d.stats.outBytes,
        };
        if (b?.task !== undefined) out.task = b.task;
        if (b?.node !== undefined) out.node = b.node;
        return out;
      });
      const s: ReadService = {
        key: k?.key ?? `fwmark:${svc.fwmark}`,
        fwmark: svc.fwmark,
        protocol: k?.protocol ?? 'tcp',
        port: k?.port ?? 0,
        targetPort: k?.targetPort ?? dests[0]?.port ?? 0,
        scheduler: svc.scheduler as Scheduler,
        timeouts: { tcp: cfg.tcp, tcpFin: cfg.tcpFin, udp: cfg.udp },
        backends,
      };
      if (k?.vip !== undefined) s.vip = k.vip;
      return s;
    });
  }

  /**
   * Delete our services (marks in our range) one by one; never `ipvsadm -C`, which would also
   * remove services that are not ours. Removes the marking table too when markRules is on.
   */
  async flush(): Promise<void> {
    const ops: IpvsOp[] = this.ipvs()
      .services({ stats: false })
      .filter((s) => this.ours(s))
      .map((s) => ({
        kind: 'delService',
        svc: { af: s.af, fwmark: (s as { fwmark: number }).fwmark },
      }));
    // A service someone else removed meanwhile (ESRCH) is already what we want.
    const err = this.ipvs()
      .batch(ops)
      .find((e) => e !== null && e.errnoName !== 'ESRCH');
    if (err) throw err;
    this.known.clear();
    if (this.markRules) {
      await runIn(
        this.netns,
        'nft',
        ['-f', '-'],
        'table ip mesh-lb-mark\ndelete table ip mesh-lb-mark\n',
      );
      this.lastMarks = undefined;
    }
  }
}

/** The `ipvsadm --restore` text that programs the same services (the bench's peer). */
export function ipvsadmRestoreText(
  desired: readonly LbService[],
  forward: 'masq' | 'route' = 'masq',
): string {
  const flag = forward === 'route' ? '-g' : '-m';
  const lines: string[] = [];
  for (const s of desired) {
    lines.push(`-A -f ${s.fwmark} -s ${s.scheduler}`);
    for (const b of s.backends) {
      const w = programmedWeight(b);
      if (w === undefined) continue;
      lines.push(`-a -f ${s.fwmark} -r ${b.ip}:${b.port || s.targetPort} ${flag} -w ${w}`);
    }
  }
  return lines.join('\n') + '\n';
}

/** `n` services × `m` backends with marks from 256 and backends in 10.128.0.0/9 (bench content). */
export function syntheticServices(n: number, m: number): LbService[] {
  const out: LbService[] = [];
  for (let i = 0; i < n; i++) {
    const backends: Backend[] = [];
    for (let j = 0; j < m; j++) {
      const k = i * m + j + 1;
      backends.push({
        ip: `10.${128 + ((k >> 16) & 127)}.${(k >> 8) & 255}.${k & 255}`,
        port: 8080,
        weight: 1,
        state: 'active',
      });
    }
    out.push({
      key: `bench:${i}`,
      fwmark: 256 + i,
      protocol: 'tcp',
      vip: `10.${(i >> 16) & 127}.${(i >> 8) & 255}.${i & 255}`,
      port: 80,
      targetPort: 8080,
      scheduler: 'rr',
      backends,
    });
  }
  return out;
}

export interface IpvsBenchResult {
  services: number;
  backends: number;
  /** apply() of everything into an empty namespace, ms. */
  program_ms: number;
  /** The same apply() again (dump + diff, no change), ms. */
  noop_ms: number;
  /** One backend added to one service afterwards, ms. */
  add_one_ms: number;
  /** `ipvsadm --restore` of the same content into a second empty namespace (process start included), ms. */
  peer_program_ms?: number;
}

/**
 * Program `n` services × `m` backends through IpvsBackend and time it; with `peerNetns`, also
 * `ipvsadm --restore` of the same content there. Both namespaces must be fresh (lo up) and are
 * left with the services in place; the caller removes the namespaces.
 */
export async function benchIpvsProgram(opts: {
  netns: Netns;
  peerNetns?: Netns;
  services: number;
  backends: number;
}): Promise<IpvsBenchResult> {
  const desired = syntheticServices(opts.services, opts.backends);
  const lb = new IpvsBackend({ netns: opts.netns, sysctls: false });
  try {
    lb.dumpOurs(); // open the socket and resolve the family outside the timed part
    let t0 = performance.now();
    const first = await lb.apply(desired);
    const program_ms = performance.now() - t0;
    const want = opts.services * (1 + opts.backends);
    if (first.changes !== want) {
      throw new MeshError('ELB', `bench ipvs: ${first.changes} changes, expected ${want}`);
    }
    t0 = performance.now();
    await lb.apply(desired);
    const noop_ms = performance.now() - t0;
    desired[0]?.backends.push({ ip: '10.127.255.254', port: 8080, weight: 1, state: 'active' });
    t0 = performance.now();
    await lb.apply(desired);
    const add_one_ms = performance.now() - t0;
    desired[0]?.backends.pop();
    await lb.apply(desired); // both namespaces end with the same content
    const r: IpvsBenchResult = {
      services: opts.services,
      backends: opts.backends,
      program_ms,
      noop_ms,
      add_one_ms,
    };
    if (opts.peerNetns) {
      const text = ipvsadmRestoreText(desired);
      t0 = performance.now();
      await runIn(opts.peerNetns, 'ipvsadm', ['--restore'], text);
      r.peer_program_ms = performance.now() - t0;
    }
    return r;
  } finally {
    lb.close();
  }
}
