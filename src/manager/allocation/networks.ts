/**
 * Overlay networks on the manager side: plans that turn `net create`/`net rm`/`run --network`/
 * `rm` into store ops, and the inspect view. Each plan reads the store (a leader's view, maybe
 * stale) and returns ops the caller commits as one transaction; the ops carry the checks that
 * make a stale plan fail with ECONFLICT instead of doing harm, so the caller re-plans and retries:
 * - an address allocation updates its network with `version` (two plans from the same state
 *   cannot both commit, so no address is handed out twice, also across leader changes);
 * - a network creation compare-and-sets the kv key NETWORK_ALLOC_KEY (two creations from the same
 *   state cannot both take the same VNI or overlapping subnets);
 * - a network removal deletes with `version` (a concurrent attachment makes it fail).
 * Invariant for every future writer (services, VIPs): adding an address to a network must update
 * that network with its version, as planAttach does.
 *
 * Pure: reads the store, never writes it; no clock, no randomness, no I/O.
 * May import src/api/objects.ts, ./ipam.ts, src/manager/store/ and src/util/errors.ts.
 */

import type { NetworkRow, NetworkSpec } from '../../api/networks.js';
import { isPlain } from '../../api/objects.js';
import { MeshError } from '../../util/errors.js';
import {
  allocateAddress,
  allocateSubnet,
  cidrHas,
  isIpv4,
  parseCidr,
  parseIpv4,
  usableAddresses,
  validateGateway,
  validateIpRange,
  validateSubnet,
  allocateVni,
  type SubnetOwner,
} from './ipam.js';
import type { Json, Network, Subnet, Task } from '../../api/objects.js';
import type { Op, Store } from '../store/store.js';

/** kv key whose value (a counter) every network creation compare-and-sets; see the header. */
export const NETWORK_ALLOC_KEY = 'mesh/network-alloc';
export const INGRESS_NAME = 'ingress';
export const MTU_MIN = 576;
export const MTU_MAX = 9216;
/** Like a DNS label (RFC 1123 §2.1), plus `_` inside, which compose-style names use. */
const NAME_RE = /^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$/;

/** A network as `createNetwork` ops write it (the store adds version and createdIndex). */
export type NetworkValue = Omit<Network, 'version' | 'createdIndex'>;

export interface Attachment {
  networkId: string;
  /** CIDR notation: the task's address with its subnet's prefix, e.g. 10.0.1.5/24. */
  addresses: string[];
}

export interface AttachRequest {
  /** Network name, id, or unique id prefix. */
  networkRef: string;
  taskId: string;
  nodeId: string;
  taskName: string;
}

const usage = (m: string): MeshError => new MeshError('EUSAGE', m);

/** Rethrow a MeshError from ipam with `<op> <object>: ` in front. */
function within<T>(at: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof MeshError) throw new MeshError(e.code, `${at}: ${e.message}`, { cause: e });
    throw e;
  }
}

/** By exact id, then exact name, then unique id prefix (as `docker network inspect` does). */
export function findNetwork(store: Store, ref: string): Network | undefined {
  const byId = store.get('network', ref);
  if (byId !== undefined) return byId;
  const byName = store.findByName('network', ref);
  if (byName !== undefined) return byName;
  if (ref === '') return undefined;
  const hits = store.list('network', (n) => n.id.startsWith(ref));
  return hits.length === 1 ? hits[0] : undefined;
}

function mustFind(store: Store, ref: string, at: string): Network {
  const n = findNetwork(store, ref);
  if (n === undefined) {
    throw new MeshError('ENOTFOUND', `${at}: no such network; \`meshctl net ls\` lists them`);
  }
  return n;
}

function isIpv4Cidr(x: string): boolean {
  const [ip, prefix, extra] = x.split('/');
  return (
    extra === undefined &&
    prefix !== undefined &&
    /^(?:[0-9]|[12][0-9]|3[0-2])$/.test(prefix) &&
    ip !== undefined &&
    isIpv4(ip)
  );
}

/** The network attachments a task's spec carries (tolerates specs written by others). */
export function taskAttachments(task: Task): Attachment[] {
  const spec = task.spec;
  if (!isPlain(spec) || !Array.isArray(spec['attachments'])) return [];
  const out: Attachment[] = [];
  for (const a of spec['attachments'] as unknown[]) {
    if (!isPlain(a) || typeof a['networkId'] !== 'string' || !Array.isArray(a['addresses'])) {
      continue;
    }
    // Only well-formed IPv4 CIDRs count: a malformed entry written by another build must not
    // make every allocation on the network throw.
    const addresses = (a['addresses'] as unknown[]).filter(
      (x): x is string => typeof x === 'string' && isIpv4Cidr(x),
    );
    out.push({ networkId: a['networkId'], addresses });
  }
  return out;
}

/** Tasks attached to network `id`, with their addresses on it. */
export function tasksOn(store: Store, id: string): { task: Task; addresses: string[] }[] {
  const out: { task: Task; addresses: string[] }[] = [];
  for (const task of store.list('task')) {
    const mine = taskAttachments(task).filter((a) => a.networkId === id);
    if (mine.length > 0) out.push({ task, addresses: mine.flatMap((a) => a.addresses) });
  }
  return out;
}

/** Service VIPs (CIDR) on network `id`, with the service holding each. */
export function serviceVipsOn(store: Store, id: string): { service: string; addr: string }[] {
  const out: { service: string; addr: string }[] = [];
  for (const svc of store.list('service')) {
    const ep = isPlain(svc.spec) ? svc.spec['endpoint'] : undefined;
    const vips = isPlain(ep) ? ep['vips'] : undefined;
    if (!Array.isArray(vips)) continue;
    for (const v of vips as unknown[]) {
      if (isPlain(v) && v['networkId'] === id && typeof v['addr'] === 'string') {
        if (isIpv4Cidr(v['addr'])) out.push({ service: svc.name, addr: v['addr'] });
      }
    }
  }
  return out;
}

/** Names of services using network `id` (attached to it, or holding a VIP on it). */
export function servicesOn(store: Store, id: string): string[] {
  const names = new Set(serviceVipsOn(store, id).map((v) => v.service));
  for (const svc of store.list('service')) {
    const inner = isPlain(svc.spec) ? svc.spec['spec'] : undefined;
    const nets = isPlain(inner) ? inner['networks'] : undefined;
    if (Array.isArray(nets) && nets.some((n) => isPlain(n) && n['network'] === id)) {
      names.add(svc.name);
    }
  }
  return [...names].sort();
}

/** Nodes' load-balancer addresses (CIDR) on network `id` (Node.lbAddrs). */
export function lbAddrsOn(store: Store, id: string): { nodeId: string; addr: string }[] {
  const out: { nodeId: string; addr: string }[] = [];
  for (const n of store.list('node')) {
    const a = n.lbAddrs?.[id];
    if (typeof a === 'string' && isIpv4Cidr(a)) out.push({ nodeId: n.id, addr: a });
  }
  return out;
}

/** Plain addresses (no prefix) held on network `id`: tasks, service VIPs, nodes' LB addresses. */
export function addressesInUse(store: Store, id: string): Set<string> {
  const s = new Set<string>();
  for (const { addresses } of tasksOn(store, id)) {
    for (const a of addresses) s.add(a.split('/')[0]!);
  }
  for (const v of serviceVipsOn(store, id)) s.add(v.addr.split('/')[0]!);
  for (const l of lbAddrsOn(store, id)) s.add(l.addr.split('/')[0]!);
  return s;
}

function allocGuard(store: Store): Op {
  const cur = store.get('kv', NETWORK_ALLOC_KEY);
  const gen = cur === undefined ? 0 : Number(cur.value);
  return {
    op: 'cas',
    kind: 'kv',
    id: NETWORK_ALLOC_KEY,
    prev: cur === undefined ? null : cur.value,
    value: String((Number.isSafeInteger(gen) ? gen : 0) + 1),
  };
}

/**
 * Ops creating network `newId` from a `net create` spec: validates the name, driver, options,
 * subnets (user ones must not overlap another network's, nor 10.255.0.0/16), allocates a /24 from
 * the default pool when none is given and the lowest free VNI ≥ 4096.
 */
export function planCreateNetwork(
  store: Store,
  spec: NetworkSpec,
  newId: string,
): { ops: Op[]; network: NetworkValue } {
  const name = spec.name;
  const at = `create network ${typeof name === 'string' && name !== '' ? name : '?'}`;
  if (typeof name !== 'string' || !NAME_RE.test(name)) {
    throw usage(
      `${at}: the name must be 1-63 letters, digits, '-' or '_', starting and ending with a letter or digit`,
    );
  }
  const dup = store.findByName('network', name);
  if (dup !== undefined) {
    throw new MeshError(
      'ECONFLICT',
      `${at}: a network named ${name} exists (id ${dup.id}); pick another name or remove it first`,
    );
  }
  const driver = spec.driver ?? 'overlay';
  if (driver !== 'overlay') {
    throw usage(`${at}: driver ${driver} is not supported; use -d overlay`);
  }
  const ingress = spec.ingress === true;
  const attachable = spec.attachable === true;
  const internal = spec.internal === true;
  if (ingress) {
    if (attachable) throw usage(`${at}: an ingress network cannot be attachable`);
    if (internal) throw usage(`${at}: an ingress network cannot be internal`);
    const other = store.list('network', (n) => n.options.ingress)[0];
    if (other !== undefined) {
      throw new MeshError(
        'ECONFLICT',
        `${at}: network ${other.name} (id ${other.id}) is the ingress network already; there is one per cluster`,
      );
    }
  }
  if (spec.encrypted === true) {
    // Fail closed (CVE-2023-28840/41/42 were Docker's cleartext leaks of "encrypted" overlays):
    // until the agents program ESP for a network's VXLAN traffic, accepting the option would
    // promise an encryption nobody performs.
    throw usage(
      `${at}: --opt encrypted is not available yet: this version of Mesh cannot program ESP (XFRM) for overlay traffic and will not carry it in cleartext; create the network without --opt encrypted and protect the traffic at the application (TLS)`,
    );
  }
  if (spec.mtu !== undefined) {
    if (!Number.isInteger(spec.mtu) || spec.mtu < MTU_MIN || spec.mtu > MTU_MAX) {
      throw usage(`${at}: mtu ${String(spec.mtu)} must be an integer in [${MTU_MIN}, ${MTU_MAX}]`);
    }
  }
  const labelList = Object.entries(spec.labels ?? {});
  for (const [k, v] of labelList) {
    if (k === '' || typeof v !== 'string') {
      throw usage(`${at}: label ${JSON.stringify(k)} must have a non-empty key and a string value`);
    }
  }
  // fromEntries keeps a "__proto__" key a plain key, as the store does.
  const labels = Object.fromEntries(labelList) as Record<string, string>;

  const networks = store.list('network');
  const owners: SubnetOwner[] = networks.flatMap((n) =>
    n.subnets.map((s) => ({ subnet: s.subnet, network: n.name })),
  );
  const subnets: Subnet[] = [];
  const requested = spec.subnets ?? [];
  if (requested.length > 256) throw usage(`${at}: at most 256 subnets per network`);
  for (const r of requested) {
    if (r.subnet === undefined || r.subnet === '') {
      if (r.gateway !== undefined || r.ipRange !== undefined) {
        throw usage(`${at}: --gateway and --ip-range need a --subnet they belong to`);
      }
      continue;
    }
    const subnet = r.subnet;
    within(at, () => validateSubnet(subnet, owners));
    const gateway = within(at, () => validateGateway(subnet, r.gateway));
    const s: Subnet =
      r.ipRange === undefined || r.ipRange === ''
        ? { subnet, gateway }
        : {
            subnet,
            gateway,
            ipRange: within(at, () => validateIpRange(subnet, r.ipRange!, gateway)),
          };
    subnets.push(s);
    owners.push({ subnet, network: name });
  }
  if (subnets.length === 0) {
    const subnet = within(at, () => allocateSubnet(owners.map((o) => o.subnet)));
    subnets.push({ subnet, gateway: validateGateway(subnet) });
  }
  const vni = within(at, () => allocateVni(networks.map((n) => n.vni)));

  const network: NetworkValue = {
    id: newId,
    name,
    driver: 'overlay',
    subnets,
    vni,
    options: {
      encrypted: false, // refused above until ESP is programmed
      ...(spec.mtu !== undefined ? { mtu: spec.mtu } : {}),
      internal,
      attachable,
      ingress,
    },
    labels,
    ipam: { last: {} },
  };
  return { ops: [allocGuard(store), { op: 'create', kind: 'network', value: network }], network };
}

/** The `ingress` network every cluster gets at init: 10.0.0.0/24 and VNI 4096 unless taken. */
export function planIngressNetwork(
  store: Store,
  newId: string,
): { ops: Op[]; network: NetworkValue } {
  return planCreateNetwork(
    store,
    { name: INGRESS_NAME, ingress: true, attachable: false, internal: false, encrypted: false },
    newId,
  );
}

function describeHolder(store: Store, t: Task): string {
  const node = t.nodeId === undefined ? undefined : store.get('node', t.nodeId);
  const where = node?.hostname ?? t.nodeId;
  return where === undefined ? `${t.name} (not placed)` : `${t.name} on ${where}`;
}

/** Ops removing a network; refused while a task is attached or for the ingress network. */
export function planRemoveNetwork(store: Store, nameOrId: string): Op[] {
  const at = `remove network ${nameOrId}`;
  const net = mustFind(store, nameOrId, at);
  if (net.options.ingress) {
    throw new MeshError(
      'ECONFLICT',
      `${at}: it is the ingress network, which carries the published ports of services (the routing mesh); it cannot be removed`,
    );
  }
  const services = servicesOn(store, net.id);
  if (services.length > 0) {
    throw new MeshError(
      'ECONFLICT',
      `${at}: in use by service${services.length === 1 ? '' : 's'} ${services.join(', ')}; remove ${services.length === 1 ? 'it' : 'them'} (or update ${services.length === 1 ? 'it' : 'them'} off the network) first`,
    );
  }
  const users = tasksOn(store, net.id).map((u) => u.task);
  if (users.length > 0) {
    const shown = users.slice(0, 5).map((t) => describeHolder(store, t));
    const more = users.length > shown.length ? `, and ${users.length - shown.length} more` : '';
    throw new MeshError(
      'ECONFLICT',
      `${at}: in use by ${users.length} task${users.length === 1 ? '' : 's'} (${shown.join(', ')}${more}); remove them first`,
    );
  }
  const ops: Op[] = [{ op: 'delete', kind: 'network', id: net.id, version: net.version }];
  for (const { nodeId } of lbAddrsOn(store, net.id)) {
    const node = store.get('node', nodeId)!;
    const { version: _v, createdIndex: _c, lbAddrs, ...value } = node;
    const rest = Object.fromEntries(Object.entries(lbAddrs ?? {}).filter(([k]) => k !== net.id));
    ops.push({
      op: 'update',
      kind: 'node',
      value: { ...value, lbAddrs: rest },
      version: node.version,
    });
  }
  return ops;
}

/**
 * Ops attaching standalone task `taskId` on `nodeId` to a network: the next address (serial, per
 * subnet in order, the first with room), the task created in state `assigned` or, if it exists,
 * given one more attachment, and the network's `ipam.last` updated WITH its version.
 */
export function planAttach(
  store: Store,
  req: AttachRequest,
): { ops: Op[]; address: string; network: Network } {
  const at = `attach network ${req.networkRef}`;
  const net = mustFind(store, req.networkRef, at);
  const atNet = `attach network ${net.name}`;
  if (net.options.ingress) {
    throw usage(
      `${atNet}: the ingress network carries published ports of services; tasks cannot join it`,
    );
  }
  if (!net.options.attachable) {
    throw usage(
      `${atNet}: the network is not attachable; standalone tasks (meshctl run) need a network created with --attachable`,
    );
  }
  if (store.get('node', req.nodeId) === undefined) {
    throw new MeshError('ENOTFOUND', `${atNet}: node ${req.nodeId} is not in the cluster`);
  }
  const task = store.get('task', req.taskId);
  if (task !== undefined) {
    if (task.serviceId !== undefined) {
      throw new MeshError(
        'ECONFLICT',
        `${atNet}: task ${task.name} belongs to service ${task.serviceId}; its networks come from the service`,
      );
    }
    if (task.nodeId !== undefined && task.nodeId !== req.nodeId) {
      throw new MeshError(
        'ECONFLICT',
        `${atNet}: task ${task.name} runs on node ${task.nodeId}, not ${req.nodeId}`,
      );
    }
    if (taskAttachments(task).some((a) => a.networkId === net.id)) {
      throw new MeshError('ECONFLICT', `${atNet}: task ${task.name} is attached to it already`);
    }
  }

  const inUse = addressesInUse(store, net.id);
  const last = net.ipam?.last ?? {};
  const full: string[] = [];
  let picked: { subnet: Subnet; ip: string } | undefined;
  for (const s of net.subnets) {
    try {
      picked = {
        subnet: s,
        ip: allocateAddress(s.subnet, s.ipRange, s.gateway, inUse, last[s.subnet]),
      };
      break;
    } catch (e) {
      if (!(e instanceof MeshError) || e.code !== 'EEXHAUSTED') throw e;
      full.push(e.message.replace(/^no free address in /, ''));
    }
  }
  if (picked === undefined) {
    throw new MeshError(
      'EEXHAUSTED',
      `${atNet}: no free address in ${full.join(', ')}; remove tasks from it, or create a network with a larger --subnet (or several)`,
    );
  }
  const address = `${picked.ip}/${parseCidr(picked.subnet.subnet).prefix}`;
  const attachment: Attachment = { networkId: net.id, addresses: [address] };
  const { version: _v, createdIndex: _c, ...netValue } = net;
  const ops: Op[] = [
    {
      op: 'update',
      kind: 'network',
      value: { ...netValue, ipam: { last: { ...last, [picked.subnet.subnet]: picked.ip } } },
      version: net.version,
    },
  ];
  if (task === undefined) {
    ops.push({
      op: 'create',
      kind: 'task',
      value: {
        id: req.taskId,
        name: req.taskName,
        nodeId: req.nodeId,
        state: 'assigned',
        spec: { attachments: [attachment as unknown as Json] },
      },
    });
  } else {
    const spec = isPlain(task.spec) ? task.spec : {};
    const prev = taskAttachments(task) as unknown as Json[];
    const { version: _tv, createdIndex: _tc, ...taskValue } = task;
    ops.push({
      op: 'update',
      kind: 'task',
      value: {
        ...taskValue,
        nodeId: req.nodeId,
        spec: { ...spec, attachments: [...prev, attachment as unknown as Json] },
      },
      version: task.version,
    });
  }
  return { ops, address, network: net };
}

/** Ops removing standalone task `taskId`; its addresses are free again once committed. */
export function planDetach(store: Store, taskId: string): Op[] {
  const at = `remove task ${taskId}`;
  const task = store.get('task', taskId);
  if (task === undefined) {
    throw new MeshError('ENOTFOUND', `${at}: no such task; \`meshctl ps\` lists them`);
  }
  if (task.serviceId !== undefined) {
    throw new MeshError(
      'ECONFLICT',
      `${at}: it belongs to service ${task.serviceId}; scale or remove the service instead`,
    );
  }
  return [{ op: 'delete', kind: 'task', id: task.id }];
}

export interface NetworkView {
  id: string;
  name: string;
  driver: 'overlay';
  vni: number;
  ingress: boolean;
  attachable: boolean;
  internal: boolean;
  encrypted: boolean;
  /** The network's `mtu` option; null when the agent derives it from the underlay. */
  mtu: number | null;
  labels: Record<string, string>;
  subnets: {
    subnet: string;
    gateway: string;
    ipRange?: string;
    /** Addresses tasks may get (network, broadcast and gateway excluded). */
    size: number;
    /** Of those, held by tasks. */
    used: number;
    /** Address handed out last (allocation continues after it). */
    last?: string;
  }[];
  attachments: {
    taskId: string;
    taskName: string;
    nodeId?: string;
    /** The node's hostname when known. */
    node?: string;
    state: string;
    address: string;
  }[];
  createdIndex: number;
  version: number;
}

/** What `net inspect` shows, from the store (peers and VTEPs come from netdb, not from here). */
export function describeNetwork(store: Store, net: Network | string): NetworkView {
  const n = typeof net === 'string' ? mustFind(store, net, `inspect network ${net}`) : net;
  const holders = tasksOn(store, n.id);
  const attachments: NetworkView['attachments'] = [];
  for (const { task, addresses } of holders) {
    const node = task.nodeId === undefined ? undefined : store.get('node', task.nodeId);
    for (const address of addresses) {
      attachments.push({
        taskId: task.id,
        taskName: task.name,
        ...(task.nodeId !== undefined ? { nodeId: task.nodeId } : {}),
        ...(node !== undefined ? { node: node.hostname } : {}),
        state: task.state,
        address,
      });
    }
  }
  const subnets = n.subnets.map((s) => {
    const c = parseCidr(s.subnet);
    const range = s.ipRange === undefined ? c : parseCidr(s.ipRange);
    const used = attachments.filter((a) =>
      cidrHas(range, parseIpv4(a.address.split('/')[0]!)),
    ).length;
    const last = n.ipam?.last[s.subnet];
    return {
      subnet: s.subnet,
      gateway: s.gateway,
      ...(s.ipRange !== undefined ? { ipRange: s.ipRange } : {}),
      size: usableAddresses(s.subnet, s.ipRange, s.gateway),
      used,
      ...(last !== undefined ? { last } : {}),
    };
  });
  return {
    id: n.id,
    name: n.name,
    driver: n.driver,
    vni: n.vni,
    ingress: n.options.ingress,
    attachable: n.options.attachable,
    internal: n.options.internal,
    encrypted: n.options.encrypted,
    mtu: n.options.mtu ?? null,
    labels: { ...n.labels },
    subnets,
    attachments,
    createdIndex: n.createdIndex,
    version: n.version,
  };
}

/** One row per network for `net ls`. */
export function listNetworks(store: Store): NetworkRow[] {
  return store.list('network').map((n) => ({
    id: n.id,
    name: n.name,
    driver: n.driver,
    vni: n.vni,
    subnets: n.subnets.map((s) => s.subnet),
    attachable: n.options.attachable,
    internal: n.options.internal,
    ingress: n.options.ingress,
    encrypted: n.options.encrypted,
    tasks: tasksOn(store, n.id).length,
  }));
}
