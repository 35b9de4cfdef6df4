#!/usr/bin/env node
/**
 * meshctl: the command-line client. Noun-verb commands (cluster, node, net, service, lb) arrive
 * with the issues that build them. stdout carries only what was asked; errors go to stderr;
 * usage errors exit 2, failures 1.
 * May import: util/, ./client.
 */
import { parseArgs } from 'node:util';
import { MeshError, UsageError } from '../util/errors.js';
import { VERSION } from '../util/version.js';
import type { NetworkRow } from '../api/networks.js';
import { table } from './table.js';
import { call } from './client.js';
import { LB_HELP, lbCmd } from './lb.js';
import { SERVICE_HELP, parseDuration, serviceCmd } from './service.js';

const helpText = (): string => HELP_HEAD + SERVICE_HELP + LB_HELP + HELP_TAIL;

const HELP_HEAD = `meshctl — drive the Mesh networking daemon

Usage: meshctl [--host SOCKET] COMMAND [--json]

Commands:
  cluster init [--advertise-addr IP] [--listen-addr IP:PORT] [--dispatcher-heartbeat 2s]
                 make this node the first manager of a new cluster; nodes report every
                 heartbeat period and are marked down after 2.5 periods of silence
  cluster join --token TOKEN [--advertise-addr IP] [--listen-addr IP:PORT] MANAGER[:2377]
                 join the cluster MANAGER belongs to (as worker or manager: the token says)
  cluster join-token worker|manager [--rotate] [--quiet]
                 print (or replace, invalidating the old one) a join token
  cluster leave [--force]
                 leave the cluster (a manager must be demoted first, or --force)
  cluster info   this node's cluster, role, managers and raft state
  node ls        nodes with role, availability, status, manager status
  node inspect NODE
  node promote NODE...         make workers managers
  node demote NODE...          make managers workers
  node update [--availability active|pause|drain] [--label-add K=V]... [--label-rm K]... NODE
  node rm [--force] NODE...    remove nodes that left (or, with --force, are down)
  net create [-d overlay] [--subnet CIDR]... [--gateway IP]... [--ip-range CIDR]...
             [--attachable] [--internal] [--opt mtu=N] [--label K=V]... NAME
                 (--opt encrypted is refused: ESP is not programmed yet, and Mesh never
                  carries a network asked to be encrypted in cleartext)
  net ls         networks with driver, VNI, subnets, tasks
  net inspect NET  subnets (size, used), VNI, MTU, options, attachments
  net rm NET...    remove networks (refused while tasks use them, saying which)
  run [--name N] [--network NET]... [-e K=V]... [-d] [--rm] -- CMD ARGS...
                 run a task on this node attached to networks (attachable overlays);
                 without -d wait for it to exit, print its output, exit with its status
  ps             tasks on this node: name, state, networks and addresses
  rm TASK...     stop and remove tasks (addresses go back to the network)
  logs TASK      a task's output
`;

const HELP_TAIL = `  version        client and daemon versions
  debug gossip   this node's view of gossip: members (address, state, incarnation,
                 time since the last change), health score, keys, packet counters
  debug raft     this manager's raft state and counters
  debug overlay  this node's overlay networks, peers, reconcile repairs, netdb counters
  help           this help

Global options:
  --host SOCKET  meshd's API socket (default /run/meshd/meshd.sock, or MESH_HOST)
  --json         machine-readable output (stable; fields are only ever added)
  --version      print the client version
  --help         print this help

NODE is a node id, a unique id prefix or a host name; see docs/cli.md.
`;

interface Args {
  host: string | undefined;
  json: boolean;
  words: string[];
}

function parse(argv: readonly string[]): Args | 'help' | 'version' {
  const a: Args = { host: undefined, json: false, words: [] };
  for (let i = 0; i < argv.length; i++) {
    const w = argv[i]!;
    if (w === '--') {
      // Everything after -- belongs to the task's command (meshctl run), verbatim.
      a.words.push(...argv.slice(i));
      break;
    }
    if (w === '--host') {
      const v = argv[++i];
      if (v === undefined) throw new UsageError('--host needs a socket path');
      a.host = v;
    } else if (w.startsWith('--host=')) a.host = w.slice(7);
    else if (w === '--json') a.json = true;
    else if ((w === '--help' || w === '-h') && a.words.length === 0) return 'help';
    else if ((w === '--version' || w === '-v') && a.words.length === 0) return 'version';
    else if (w.startsWith('-') && a.words.length === 0)
      throw new UsageError(`unknown option ${JSON.stringify(w)}`);
    else a.words.push(w);
  }
  return a;
}

async function version(a: Args): Promise<void> {
  const server = await call<{ version: string; pid: number; uptimeMs: number }>(
    a.host,
    'GET',
    '/v1/version',
  );
  if (a.json) {
    process.stdout.write(JSON.stringify({ client: { version: VERSION }, server }) + '\n');
  } else {
    process.stdout.write(
      `meshctl ${VERSION}\nmeshd   ${server.version} (pid ${server.pid}, up ${Math.round(server.uptimeMs / 1000)} s)\n`,
    );
  }
}

interface GossipStatus {
  name: string;
  addr: string;
  health: number;
  incarnation: number;
  keys: { primary: string | null; keys: string[] } | null;
  members: Array<{
    name: string;
    addr: string;
    state: string;
    incarnation: number;
    sinceMs: number;
  }>;
  counters: Record<string, number>;
}

async function debugGossip(a: Args): Promise<void> {
  const s = await call<GossipStatus>(a.host, 'GET', '/v1/debug/gossip');
  if (a.json) {
    process.stdout.write(JSON.stringify(s) + '\n');
    return;
  }
  const rows = [['NAME', 'ADDRESS', 'STATE', 'INCARNATION', 'SINCE']];
  for (const m of [...s.members].sort((x, y) => x.name.localeCompare(y.name))) {
    rows.push([
      m.name + (m.name === s.name ? ' (self)' : ''),
      m.addr,
      m.state,
      String(m.incarnation),
      `${(m.sinceMs / 1000).toFixed(1)}s`,
    ]);
  }
  const keys = s.keys
    ? `${s.keys.keys.length} installed, primary ${s.keys.primary ?? 'none'} (ids: ${s.keys.keys.join(', ')})`
    : 'none (plaintext)';
  const bad = Object.entries(s.counters)
    .filter(([k, v]) => /bad|drop|error|invalid/i.test(k) && v > 0)
    .map(([k, v]) => `${k}=${v}`);
  process.stdout.write(
    table(rows) +
      `\nhealth: ${s.health} (0 is healthy)\nkeys: ${keys}\ndropped/bad: ${bad.length ? bad.join(' ') : 'none'}\n`,
  );
}

type OptSpec = Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }>;

/** Options of one command (after the noun and verb); unknown options are usage errors. */
function cmdArgs(a: Args, skip: number, options: OptSpec, what: string) {
  try {
    return parseArgs({ args: a.words.slice(skip), options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError(`${what}: ${(e as Error).message.replace(/^./, (c) => c.toLowerCase())}`);
  }
}

/** A command that takes no options and no arguments: anything after it is a usage error. */
function noArgs(a: Args, skip: number, what: string): void {
  const { positionals } = cmdArgs(a, skip, {}, what);
  if (positionals.length > 0)
    throw new UsageError(`${what}: unexpected argument ${JSON.stringify(positionals[0])}`);
}

const out = (s: string): void => void process.stdout.write(s);

interface NodeView {
  id: string;
  hostname: string;
  role: string;
  addr: string;
  managerAddr?: string;
  raftId?: number;
  availability: string;
  labels: Record<string, string>;
  status: { state: string; message?: string };
  desiredRole?: string;
  leader: boolean;
  managerStatus?: string;
  certificate: { notAfter: number };
}

async function clusterCmd(a: Args): Promise<void> {
  const verb = a.words[1];
  switch (verb) {
    case 'init': {
      const { values, positionals } = cmdArgs(
        a,
        2,
        {
          'advertise-addr': { type: 'string' },
          'listen-addr': { type: 'string' },
          'dispatcher-heartbeat': { type: 'string' },
        },
        'cluster init',
      );
      if (positionals.length > 0) throw new UsageError('cluster init takes no arguments');
      const hb = values['dispatcher-heartbeat'];
      const heartbeatMs =
        typeof hb === 'string' ? parseDuration(hb, '--dispatcher-heartbeat') : undefined;
      const r = await call<{ clusterId: string; nodeId: string; managerAddr: string }>(
        a.host,
        'POST',
        '/v1/cluster/init',
        {
          advertiseAddr: values['advertise-addr'],
          listenAddr: values['listen-addr'],
          ...(heartbeatMs !== undefined ? { heartbeatMs } : {}),
        },
      );
      if (a.json) return out(JSON.stringify(r) + '\n');
      return out(
        `cluster ${r.clusterId} initialized; this node (${r.nodeId}) is its manager at ${r.managerAddr}\n` +
          `add nodes with the token from \`meshctl cluster join-token worker\` (or manager)\n`,
      );
    }
    case 'join': {
      const { values, positionals } = cmdArgs(
        a,
        2,
        {
          token: { type: 'string' },
          'advertise-addr': { type: 'string' },
          'listen-addr': { type: 'string' },
        },
        'cluster join',
      );
      if (!values.token) throw new UsageError('cluster join: --token TOKEN is required');
      if (positionals.length !== 1)
        throw new UsageError('cluster join: give one manager address, IP[:2377]');
      const r = await call<{ clusterId: string; nodeId: string; role: string }>(
        a.host,
        'POST',
        '/v1/cluster/join',
        {
          token: values.token,
          addr: positionals[0],
          advertiseAddr: values['advertise-addr'],
          listenAddr: values['listen-addr'],
        },
      );
      if (a.json) return out(JSON.stringify(r) + '\n');
      return out(`this node (${r.nodeId}) joined cluster ${r.clusterId} as a ${r.role}\n`);
    }
    case 'join-token': {
      const { values, positionals } = cmdArgs(
        a,
        2,
        { rotate: { type: 'boolean' }, quiet: { type: 'boolean', short: 'q' } },
        'cluster join-token',
      );
      const role = positionals[0];
      if (positionals.length !== 1 || (role !== 'worker' && role !== 'manager'))
        throw new UsageError('cluster join-token: say worker or manager');
      const q = new URLSearchParams({ role });
      if (values.rotate) q.set('rotate', '1');
      const r = await call<{ token: string }>(
        a.host,
        'GET',
        `/v1/cluster/join-token?${q.toString()}`,
      );
      if (a.json) return out(JSON.stringify(r) + '\n');
      if (values.quiet) return out(r.token + '\n');
      return out(
        (values.rotate ? `the ${role} token was replaced; the old one no longer works\n` : '') +
          `to add a ${role} to this cluster, run on it:\n\n  meshctl cluster join --token ${r.token} <this manager's IP>:2377\n`,
      );
    }
    case 'leave': {
      const { values, positionals } = cmdArgs(
        a,
        2,
        { force: { type: 'boolean' } },
        'cluster leave',
      );
      if (positionals.length > 0) throw new UsageError('cluster leave takes no arguments');
      const r = await call<{ left: string }>(a.host, 'POST', '/v1/cluster/leave', {
        force: values.force === true,
      });
      if (a.json) return out(JSON.stringify(r) + '\n');
      return out(`this node left cluster ${r.left}\n`);
    }
    case 'info': {
      cmdArgs(a, 2, {}, 'cluster info');
      const r = await call<Record<string, unknown>>(a.host, 'GET', '/v1/cluster');
      return out(JSON.stringify(r, null, a.json ? 0 : 2) + '\n');
    }
    default:
      throw new UsageError(
        `cluster ${verb ?? ''}: want init, join, join-token, leave or info`.replace('  ', ' '),
      );
  }
}

function nodeRow(n: NodeView): string[] {
  const mgr = n.managerStatus ?? '';
  return [
    n.id,
    n.hostname,
    n.status.state,
    n.availability,
    mgr + (n.desiredRole && n.desiredRole !== n.role ? ` (→ ${n.desiredRole})` : ''),
    n.addr,
  ];
}

async function nodeCmd(a: Args): Promise<void> {
  const verb = a.words[1];
  switch (verb) {
    case 'ls': {
      cmdArgs(a, 2, {}, 'node ls');
      const nodes = await call<NodeView[]>(a.host, 'GET', '/v1/nodes');
      if (a.json) return out(JSON.stringify(nodes) + '\n');
      const rows = [['ID', 'HOSTNAME', 'STATUS', 'AVAILABILITY', 'MANAGER STATUS', 'ADDRESS']];
      for (const n of [...nodes].sort((x, y) => x.hostname.localeCompare(y.hostname)))
        rows.push(nodeRow(n));
      return out(table(rows));
    }
    case 'inspect': {
      const { positionals } = cmdArgs(a, 2, {}, 'node inspect');
      if (positionals.length !== 1) throw new UsageError('node inspect: give one NODE');
      const n = await call<NodeView>(
        a.host,
        'GET',
        `/v1/node?${new URLSearchParams({ id: positionals[0]! }).toString()}`,
      );
      return out(JSON.stringify(n, null, a.json ? 0 : 2) + '\n');
    }
    case 'promote':
    case 'demote': {
      const { positionals } = cmdArgs(a, 2, {}, `node ${verb}`);
      if (positionals.length === 0) throw new UsageError(`node ${verb}: give at least one NODE`);
      for (const id of positionals) {
        const n = await call<NodeView>(a.host, 'POST', `/v1/node/${verb}`, { id });
        if (!a.json)
          out(
            `node ${n.hostname} (${n.id}) ${verb === 'promote' ? 'promoted to manager' : 'demoted to worker'}` +
              (n.desiredRole ? ' (in progress: see `meshctl node ls`)' : '') +
              '\n',
          );
        else out(JSON.stringify(n) + '\n');
      }
      return;
    }
    case 'update': {
      const { values, positionals } = cmdArgs(
        a,
        2,
        {
          availability: { type: 'string' },
          'label-add': { type: 'string', multiple: true },
          'label-rm': { type: 'string', multiple: true },
        },
        'node update',
      );
      if (positionals.length !== 1) throw new UsageError('node update: give one NODE');
      const labelAdd: Record<string, string> = {};
      for (const kv of (values['label-add'] as string[] | undefined) ?? []) {
        const i = kv.indexOf('=');
        if (i <= 0) throw new UsageError(`node update --label-add ${kv}: want KEY=VALUE`);
        labelAdd[kv.slice(0, i)] = kv.slice(i + 1);
      }
      const n = await call<NodeView>(a.host, 'POST', '/v1/node/update', {
        id: positionals[0],
        availability: values.availability,
        labelAdd,
        labelRm: (values['label-rm'] as string[] | undefined) ?? [],
      });
      if (a.json) return out(JSON.stringify(n) + '\n');
      return out(`node ${n.hostname} (${n.id}) updated\n`);
    }
    case 'rm': {
      const { values, positionals } = cmdArgs(a, 2, { force: { type: 'boolean' } }, 'node rm');
      if (positionals.length === 0) throw new UsageError('node rm: give at least one NODE');
      for (const id of positionals) {
        await call(a.host, 'POST', '/v1/node/rm', { id, force: values.force === true });
        if (!a.json) out(`node ${id} removed\n`);
      }
      return;
    }
    default:
      throw new UsageError(`node ${verb ?? ''}: want ls, inspect, promote, demote, update or rm`);
  }
}

async function netCmd(a: Args): Promise<void> {
  const verb = a.words[1];
  switch (verb) {
    case 'create': {
      const { values, positionals } = cmdArgs(
        a,
        2,
        {
          driver: { type: 'string', short: 'd' },
          subnet: { type: 'string', multiple: true },
          gateway: { type: 'string', multiple: true },
          'ip-range': { type: 'string', multiple: true },
          attachable: { type: 'boolean' },
          internal: { type: 'boolean' },
          opt: { type: 'string', multiple: true, short: 'o' },
          label: { type: 'string', multiple: true },
        },
        'net create',
      );
      if (positionals.length !== 1) throw new UsageError('net create: give one NAME');
      const driver = (values.driver as string | undefined) ?? 'overlay';
      if (driver !== 'overlay')
        throw new UsageError(`net create -d ${driver}: only the overlay driver exists`);
      const list = (k: string) => (values[k] as string[] | undefined) ?? [];
      const subnets = list('subnet');
      const gateways = list('gateway');
      const ranges = list('ip-range');
      if (gateways.length > subnets.length || ranges.length > subnets.length)
        throw new UsageError(
          'net create: each --gateway/--ip-range goes with a --subnet before it',
        );
      let encrypted = false;
      let mtu: number | undefined;
      for (const o of list('opt')) {
        if (o === 'encrypted' || o === 'encrypted=true') encrypted = true;
        else if (/^mtu=\d+$/.test(o)) mtu = Number(o.slice(4));
        else throw new UsageError(`net create --opt ${o}: want encrypted or mtu=N`);
      }
      const labels: Record<string, string> = {};
      for (const kv of list('label')) {
        const i = kv.indexOf('=');
        labels[i < 0 ? kv : kv.slice(0, i)] = i < 0 ? '' : kv.slice(i + 1);
      }
      const n = await call<{
        id: string;
        name: string;
        vni: number;
        subnets: { subnet: string }[];
      }>(a.host, 'POST', '/v1/networks', {
        name: positionals[0],
        driver,
        ...(subnets.length > 0
          ? {
              subnets: subnets.map((subnet, i) => ({
                subnet,
                ...(gateways[i] ? { gateway: gateways[i] } : {}),
                ...(ranges[i] ? { ipRange: ranges[i] } : {}),
              })),
            }
          : {}),
        attachable: values.attachable === true,
        internal: values.internal === true,
        encrypted,
        ...(mtu !== undefined ? { mtu } : {}),
        labels,
      });
      if (a.json) return out(JSON.stringify(n) + '\n');
      return out(n.id + '\n');
    }
    case 'ls': {
      cmdArgs(a, 2, {}, 'net ls');
      const nets = await call<NetworkRow[]>(a.host, 'GET', '/v1/networks');
      if (a.json) return out(JSON.stringify(nets) + '\n');
      const rows = [['ID', 'NAME', 'DRIVER', 'VNI', 'SUBNETS', 'OPTIONS', 'TASKS']];
      for (const n of [...nets].sort((x, y) => x.name.localeCompare(y.name))) {
        const opts = [
          n.ingress && 'ingress',
          n.attachable && 'attachable',
          n.internal && 'internal',
          n.encrypted && 'encrypted',
        ].filter(Boolean);
        rows.push([
          n.id.slice(0, 12),
          n.name,
          n.driver,
          String(n.vni),
          n.subnets.join(','),
          opts.join(',') || '-',
          String(n.tasks),
        ]);
      }
      return out(table(rows));
    }
    case 'inspect': {
      const { positionals } = cmdArgs(a, 2, {}, 'net inspect');
      if (positionals.length !== 1) throw new UsageError('net inspect: give one NET');
      const n = await call<unknown>(
        a.host,
        'GET',
        `/v1/network?${new URLSearchParams({ id: positionals[0]! }).toString()}`,
      );
      return out(JSON.stringify(n, null, a.json ? 0 : 2) + '\n');
    }
    case 'rm': {
      const { positionals } = cmdArgs(a, 2, {}, 'net rm');
      if (positionals.length === 0) throw new UsageError('net rm: give at least one NET');
      for (const id of positionals) {
        await call(a.host, 'POST', '/v1/network/rm', { id });
        if (!a.json) out(`${id}\n`);
      }
      return;
    }
    default:
      throw new UsageError(`net ${verb ?? ''}: want create, ls, inspect or rm`);
  }
}

interface TaskView {
  id: string;
  name: string;
  state: string;
  exitCode?: number | null;
  cmd: string[];
  networks: { network: string; address: string; ifname: string }[];
}

async function runCmd(a: Args): Promise<number> {
  const dash = a.words.indexOf('--');
  if (dash < 0) throw new UsageError('run: give the command after --, e.g. run -- sleep 60');
  const cmd = a.words.slice(dash + 1);
  if (cmd.length === 0) throw new UsageError('run: no command after --');
  const { values, positionals } = (() => {
    try {
      return parseArgs({
        args: a.words.slice(1, dash),
        options: {
          name: { type: 'string' },
          network: { type: 'string', multiple: true },
          env: { type: 'string', multiple: true, short: 'e' },
          detach: { type: 'boolean', short: 'd' },
          rm: { type: 'boolean' },
        },
        allowPositionals: true,
        strict: true,
      });
    } catch (e) {
      throw new UsageError(`run: ${(e as Error).message.replace(/^./, (c) => c.toLowerCase())}`);
    }
  })();
  if (positionals.length > 0)
    throw new UsageError(`run: unexpected ${positionals[0]}; put the command after --`);
  const detach = values.detach === true;
  const t = await call<TaskView>(a.host, 'POST', '/v1/tasks', {
    name: values.name,
    networks: values.network ?? [],
    env: values.env ?? [],
    cmd,
    autoRemove: detach && values.rm === true,
  });
  if (detach) {
    out(a.json ? JSON.stringify(t) + '\n' : `${t.id}\n`);
    return 0;
  }
  // Attached: wait (bounded by the task's own life), print its output, mirror its status.
  let cur = t;
  while (cur.state !== 'exited') {
    await new Promise((r) => setTimeout(r, 200));
    cur = await call<TaskView>(
      a.host,
      'GET',
      `/v1/task?${new URLSearchParams({ id: t.id }).toString()}`,
    );
  }
  const { logs } = await call<{ logs: string }>(
    a.host,
    'GET',
    `/v1/task/logs?${new URLSearchParams({ id: t.id }).toString()}`,
  );
  out(logs);
  if (values.rm) await call(a.host, 'POST', '/v1/task/rm', { id: t.id });
  return typeof cur.exitCode === 'number' ? cur.exitCode : 1;
}

async function psCmd(a: Args): Promise<void> {
  cmdArgs(a, 1, {}, 'ps');
  const tasks = await call<TaskView[]>(a.host, 'GET', '/v1/tasks');
  if (a.json) return out(JSON.stringify(tasks) + '\n');
  const rows = [['ID', 'NAME', 'STATE', 'NETWORKS', 'COMMAND']];
  for (const t of tasks) {
    rows.push([
      t.id.slice(0, 12),
      t.name,
      t.state + (t.state === 'exited' ? ` (${t.exitCode ?? '?'})` : ''),
      t.networks.map((n) => `${n.network}=${n.address}`).join(',') || '-',
      t.cmd.join(' '),
    ]);
  }
  out(table(rows));
}

async function rmCmd(a: Args): Promise<void> {
  const { positionals } = cmdArgs(a, 1, {}, 'rm');
  if (positionals.length === 0) throw new UsageError('rm: give at least one TASK');
  for (const id of positionals) {
    await call(a.host, 'POST', '/v1/task/rm', { id });
    if (!a.json) out(`${id}\n`);
  }
}

async function logsCmd(a: Args): Promise<void> {
  const { positionals } = cmdArgs(a, 1, {}, 'logs');
  if (positionals.length !== 1) throw new UsageError('logs: give one TASK');
  const { logs } = await call<{ logs: string }>(
    a.host,
    'GET',
    `/v1/task/logs?${new URLSearchParams({ id: positionals[0]! }).toString()}`,
  );
  out(logs);
}

export async function run(argv: readonly string[]): Promise<number> {
  try {
    const a = parse(argv);
    if (a === 'version') {
      process.stdout.write(`meshctl ${VERSION}\n`);
      return 0;
    }
    if (a === 'help' || a.words[0] === 'help') {
      process.stdout.write(helpText());
      return 0;
    }
    switch (a.words[0]) {
      case 'version':
        noArgs(a, 1, 'version');
        await version(a);
        return 0;
      case 'debug':
        if (['raft', 'overlay', 'gossip'].includes(a.words[1] ?? ''))
          noArgs(a, 2, `debug ${a.words[1]}`);
        if (a.words[1] === 'raft') {
          process.stdout.write(
            JSON.stringify(await call(a.host, 'GET', '/v1/raft/status'), null, a.json ? 0 : 2) +
              '\n',
          );
          return 0;
        }
        if (a.words[1] === 'overlay') {
          process.stdout.write(
            JSON.stringify(await call(a.host, 'GET', '/v1/debug/overlay'), null, a.json ? 0 : 2) +
              '\n',
          );
          return 0;
        }
        if (a.words[1] !== 'gossip')
          throw new UsageError(
            `debug ${a.words[1] ?? ''}: want \`meshctl debug gossip|raft|overlay\``,
          );
        await debugGossip(a);
        return 0;
      case 'cluster':
        await clusterCmd(a);
        return 0;
      case 'node':
        await nodeCmd(a);
        return 0;
      case 'net':
      case 'network':
        await netCmd(a);
        return 0;
      case 'service':
        return await serviceCmd({ host: a.host, json: a.json, words: a.words.slice(1) });
      case 'lb':
        return await lbCmd({ host: a.host, json: a.json, words: a.words.slice(1) });
      case 'run':
        return await runCmd(a);
      case 'ps':
        await psCmd(a);
        return 0;
      case 'rm':
        await rmCmd(a);
        return 0;
      case 'logs':
        await logsCmd(a);
        return 0;
      case undefined:
        throw new UsageError('no command given');
      default:
        throw new UsageError(`unknown command ${JSON.stringify(a.words[0])}`);
    }
  } catch (e) {
    if (e instanceof MeshError && e.code === 'EUSAGE') {
      process.stderr.write(`meshctl: ${e.message}; see meshctl --help\n`);
      return 2;
    }
    process.stderr.write(`meshctl: ${e instanceof MeshError ? e.message : String(e)}\n`);
    return 1;
  }
}

process.exitCode = await run(process.argv.slice(2));
