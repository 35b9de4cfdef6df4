/**
 * The spread scheduler: which node a new service task goes to. Only nodes that are `ready` and
 * `active` and satisfy the placement constraints qualify; nodes where a live task already holds
 * one of the task's host-mode ports are filtered out. Among the rest: nodes where this service
 * is not crash-looping (fewer than MAX_RECENT_FAILURES failures in FAILURE_WINDOW_MS) first, then fewest tasks of this service, then fewest tasks overall,
 * then node id (so equal inputs give equal answers).
 *
 * Pure: no clock (callers pass `now`), no randomness, no I/O.
 * May import src/api/ and src/util/errors.ts.
 */

import { MeshError } from '../../util/errors.js';
import type { Node } from '../../api/objects.js';
import type { PortSpec } from '../../api/services.js';

/**
 * This many failures of a service on a node within FAILURE_WINDOW_MS push the node back for
 * that service (as Swarm does with 5): one crash must not send every later task elsewhere.
 */
export const MAX_RECENT_FAILURES = 3;
export const FAILURE_WINDOW_MS = 5 * 60_000;

export interface Constraint {
  /** `labels.K`, `role`, `hostname` or `id`. */
  field: string;
  op: '==' | '!=';
  value: string;
}

const CONSTRAINT_RE = /^\s*node\.(labels\.[^=!\s]+|role|hostname|id)\s*(==|!=)\s*(\S.*?)\s*$/;

/** `node.labels.K==V` and friends; throws EUSAGE naming the expression when it is not one. */
export function parseConstraint(expr: string): Constraint {
  const m = typeof expr === 'string' ? CONSTRAINT_RE.exec(expr) : null;
  if (m === null) {
    throw new MeshError(
      'EUSAGE',
      `constraint ${JSON.stringify(expr)}: want node.labels.KEY==VALUE, node.labels.KEY!=VALUE, node.role==manager|worker, node.hostname==H or node.id==ID`,
    );
  }
  return { field: m[1]!, op: m[2] as '==' | '!=', value: m[3]! };
}

function fieldOf(node: Node, field: string): string | undefined {
  if (field.startsWith('labels.')) return node.labels[field.slice('labels.'.length)];
  if (field === 'role') return node.role;
  if (field === 'hostname') return node.hostname;
  if (field === 'id') return node.id;
  return undefined;
}

export function matchesConstraints(node: Node, constraints: readonly string[]): boolean {
  for (const expr of constraints) {
    const c = parseConstraint(expr);
    const v = fieldOf(node, c.field);
    const eq = v === c.value;
    if (c.op === '==' ? !eq : eq) return false;
  }
  return true;
}

/** Whether a node may receive new tasks at all (state and availability). */
export function nodeAcceptsTasks(node: Node): boolean {
  return node.status.state === 'ready' && node.availability === 'active';
}

const portKey = (p: PortSpec): string => `${p.published}/${p.protocol}`;

/** What the scheduler knows about a node's load; the caller builds it and keeps it current. */
export interface NodeLoad {
  /** Live tasks (desired running, not terminal) of every service. */
  total: number;
  /** Live tasks per service id. */
  perService: Map<string, number>;
  /** Times (ms) of failures per service id. */
  failures: Map<string, number[]>;
  /** `port/proto` of host-mode ports held by live tasks. */
  hostPorts: Set<string>;
}

export function emptyLoad(): NodeLoad {
  return { total: 0, perService: new Map(), failures: new Map(), hostPorts: new Set() };
}

export interface PlacementRequest {
  serviceId: string;
  constraints: readonly string[];
  hostPorts: readonly PortSpec[];
}

/**
 * The node for one task, or why none fits (a message for the task's status). On success the
 * chosen node's load is updated, so placing several tasks in a row spreads them.
 */
export function pickNode(
  nodes: readonly Node[],
  load: Map<string, NodeLoad>,
  req: PlacementRequest,
  now: number,
): { node: Node } | { error: string } {
  let best: { node: Node; key: [number, number, number] } | undefined;
  let eligible = 0;
  let portBlocked = 0;
  for (const node of nodes) {
    if (!nodeAcceptsTasks(node) || !matchesConstraints(node, req.constraints)) continue;
    eligible++;
    const l = load.get(node.id) ?? emptyLoad();
    if (req.hostPorts.some((p) => l.hostPorts.has(portKey(p)))) {
      portBlocked++;
      continue;
    }
    const recent =
      (l.failures.get(req.serviceId) ?? []).filter((at) => now - at < FAILURE_WINDOW_MS).length >=
      MAX_RECENT_FAILURES;
    const key: [number, number, number] = [
      recent ? 1 : 0,
      l.perService.get(req.serviceId) ?? 0,
      l.total,
    ];
    if (best === undefined || lessKey(key, best.key, node.id, best.node.id)) best = { node, key };
  }
  if (best === undefined) {
    const why =
      eligible === 0
        ? req.constraints.length > 0
          ? `no ready, active node satisfies the constraints ${req.constraints.join(', ')}`
          : 'no ready, active node'
        : `host port ${req.hostPorts.map(portKey).join(', ')} is taken on all ${portBlocked} eligible nodes`;
    return { error: why };
  }
  addLoad(load, best.node.id, req.serviceId, req.hostPorts);
  return { node: best.node };
}

function lessKey(a: number[], b: number[], aId: string, bId: string): boolean {
  for (let i = 0; i < a.length; i++) {
    if (a[i]! !== b[i]!) return a[i]! < b[i]!;
  }
  return aId < bId;
}

/** Count one more live task on a node. */
export function addLoad(
  load: Map<string, NodeLoad>,
  nodeId: string,
  serviceId: string,
  hostPorts: readonly PortSpec[],
): void {
  let l = load.get(nodeId);
  if (l === undefined) load.set(nodeId, (l = emptyLoad()));
  l.total++;
  l.perService.set(serviceId, (l.perService.get(serviceId) ?? 0) + 1);
  for (const p of hostPorts) l.hostPorts.add(portKey(p));
}

/** Count one live task fewer on a node (it was told to stop in the same plan). */
export function removeLoad(
  load: Map<string, NodeLoad>,
  nodeId: string,
  serviceId: string,
  hostPorts: readonly PortSpec[],
): void {
  const l = load.get(nodeId);
  if (l === undefined) return;
  l.total = Math.max(0, l.total - 1);
  l.perService.set(serviceId, Math.max(0, (l.perService.get(serviceId) ?? 0) - 1));
  for (const p of hostPorts) l.hostPorts.delete(portKey(p));
}

export function addFailure(
  load: Map<string, NodeLoad>,
  nodeId: string,
  serviceId: string,
  at: number,
): void {
  let l = load.get(nodeId);
  if (l === undefined) load.set(nodeId, (l = emptyLoad()));
  const f = l.failures.get(serviceId) ?? [];
  f.push(at);
  l.failures.set(serviceId, f);
}
