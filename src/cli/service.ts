/**
 * `meshctl service …`: create, ls, ps, inspect, scale, update, rollback, logs, rm. Options use
 * Docker's names. create/update/scale/rollback wait until the service converges (every desired
 * replica running at the new spec version, then every node's load balancer serving them),
 * printing progress to stderr, unless --detach.
 * May import: util/, ./client.
 */
import { MeshError, UsageError } from '../util/errors.js';
import { call } from './client.js';
import { table } from './table.js';

export const SERVICE_HELP = `  service create --name N [--replicas N | --mode global] [--network NET[:ALIAS,…]]...
                 [-p PUB:TARGET[/udp] | --publish published=,target=,protocol=,mode=]...
                 [--endpoint-mode vip|dnsrr] [--constraint EXPR]... [-e K=V]... [--label K=V]...
                 [--restart-condition any|on-failure|none] [--restart-delay 5s]
                 [--restart-max-attempts N] [--restart-window 0s] [--update-parallelism N]
                 [--update-delay 0s] [--update-failure-action pause|continue|rollback]
                 [--update-monitor 5s] [--update-max-failure-ratio R] [--rollback-parallelism N]
                 [--rollback-delay 0s] [--health-cmd CMD] [--health-interval 5s]
                 [--health-timeout 3s] [--health-retries 3] [--health-start-period 0s]
                 [--stop-grace-period 10s] [--detach] [--timeout 60s] -- CMD ARGS...
                 run CMD as a service; waits until all replicas run and every node's
                 load balancer serves them (or fails with why)
  service ls     services with mode, replicas running/desired, published ports
  service ps [SERVICE]   every task: node, desired and current state, error
  service inspect SERVICE  spec, VIPs per network, ports, update status
  service scale SERVICE=N|SERVICE N [--detach]
  service update [create's options] [--force] [--detach] SERVICE [-- CMD ARGS...]
                 rolling update (the given options replace those fields)
  service rollback [--detach] SERVICE   back to the spec before the last update
  service logs [--tail N] SERVICE        output of the service's tasks
  service rm SERVICE...
`;

interface Args {
  host?: string;
  json: boolean;
  words: string[];
}

const usage = (m: string): UsageError => new UsageError(m);

/** `500ms`, `5s`, `1m`, `2h` → ms. */
export function parseDuration(s: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(s);
  if (m === null) throw usage(`${what} ${JSON.stringify(s)}: want a duration like 500ms, 5s, 1m`);
  const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
  return Math.round(Number(m[1]) * mult);
}

function whole(s: string, what: string): number {
  if (!/^\d+$/.test(s)) throw usage(`${what} ${JSON.stringify(s)}: want a whole number`);
  return Number(s);
}

function kv(s: string, what: string): [string, string] {
  const i = s.indexOf('=');
  if (i <= 0) throw usage(`${what} ${JSON.stringify(s)}: want KEY=VALUE`);
  return [s.slice(0, i), s.slice(i + 1)];
}

/** `-p 8080:80`, `-p 8080:80/udp`, `-p 80` (auto), or `published=,target=,protocol=,mode=`. */
export function parsePort(s: string): Record<string, unknown> {
  if (s.includes('=')) {
    const o: Record<string, unknown> = {};
    for (const part of s.split(',')) {
      const [k, v] = kv(part, '--publish');
      if (k === 'published' || k === 'target') o[k] = whole(v, `--publish ${k}`);
      else if (k === 'protocol' || k === 'mode') o[k] = v;
      else throw usage(`--publish ${s}: unknown key ${k} (published, target, protocol, mode)`);
    }
    return o;
  }
  const m = /^(?:(\d+):)?(\d+)(?:\/(tcp|udp))?$/.exec(s);
  if (m === null) throw usage(`-p ${JSON.stringify(s)}: want PUBLISHED:TARGET[/udp]`);
  return {
    ...(m[1] !== undefined ? { published: Number(m[1]) } : {}),
    target: Number(m[2]),
    ...(m[3] !== undefined ? { protocol: m[3] } : {}),
  };
}

interface Parsed {
  body: Record<string, unknown>;
  positional: string[];
  detach: boolean;
  timeoutMs: number;
  tail: number;
}

/** Create/update options → request body (only the fields given). */
export function parseServiceArgs(words: readonly string[]): Parsed {
  const b: Record<string, unknown> = {};
  const out: Parsed = { body: b, positional: [], detach: false, timeoutMs: 60_000, tail: 0 };
  const sub = (k: string): Record<string, unknown> => (b[k] ??= {}) as Record<string, unknown>;
  const list = (k: string): unknown[] => (b[k] ??= []) as unknown[];
  const map = (k: string): Record<string, string> => (b[k] ??= {}) as Record<string, string>;
  for (let i = 0; i < words.length; i++) {
    let w = words[i]!;
    if (w === '--') {
      b['cmd'] = words.slice(i + 1);
      break;
    }
    let inline: string | undefined;
    if (w.startsWith('--') && w.includes('=')) {
      inline = w.slice(w.indexOf('=') + 1);
      w = w.slice(0, w.indexOf('='));
    }
    const val = (): string => {
      if (inline !== undefined) return inline;
      const v = words[++i];
      if (v === undefined) throw usage(`${w} needs a value`);
      return v;
    };
    switch (w) {
      case '--name':
        b['name'] = val();
        break;
      case '--replicas':
        b['replicas'] = whole(val(), '--replicas');
        break;
      case '--mode':
        b['mode'] = val();
        break;
      case '--network': {
        const [net, aliases] = val().split(':') as [string, string | undefined];
        list('networks').push({
          network: net,
          aliases: aliases === undefined || aliases === '' ? [] : aliases.split(','),
        });
        break;
      }
      case '-p':
      case '--publish':
        list('ports').push(parsePort(val()));
        break;
      case '--endpoint-mode':
        b['endpointMode'] = val();
        break;
      case '--constraint':
        list('constraints').push(val());
        break;
      case '-e':
      case '--env': {
        const [k, v] = kv(val(), '-e');
        map('env')[k] = v;
        break;
      }
      case '--label': {
        const [k, v] = kv(val(), '--label');
        map('labels')[k] = v;
        break;
      }
      case '--restart-condition':
        sub('restart')['condition'] = val();
        break;
      case '--restart-delay':
        sub('restart')['delayMs'] = parseDuration(val(), w);
        break;
      case '--restart-max-attempts':
        sub('restart')['maxAttempts'] = whole(val(), w);
        break;
      case '--restart-window':
        sub('restart')['windowMs'] = parseDuration(val(), w);
        break;
      case '--update-parallelism':
      case '--rollback-parallelism':
        sub(w.slice(2, w.indexOf('-', 2)))['parallelism'] = whole(val(), w);
        break;
      case '--update-delay':
      case '--rollback-delay':
        sub(w.slice(2, w.indexOf('-', 2)))['delayMs'] = parseDuration(val(), w);
        break;
      case '--update-failure-action':
      case '--rollback-failure-action':
        sub(w.slice(2, w.indexOf('-', 2)))['failureAction'] = val();
        break;
      case '--update-monitor':
      case '--rollback-monitor':
        sub(w.slice(2, w.indexOf('-', 2)))['monitorMs'] = parseDuration(val(), w);
        break;
      case '--update-max-failure-ratio':
      case '--rollback-max-failure-ratio': {
        const v = val();
        if (!/^(0(\.\d+)?|1(\.0+)?)$/.test(v)) throw usage(`${w} ${v}: want a number in [0, 1]`);
        sub(w.slice(2, w.indexOf('-', 2)))['maxFailureRatio'] = Number(v);
        break;
      }
      case '--health-cmd':
        sub('health')['cmd'] = ['sh', '-c', val()];
        break;
      case '--health-interval':
        sub('health')['intervalMs'] = parseDuration(val(), w);
        break;
      case '--health-timeout':
        sub('health')['timeoutMs'] = parseDuration(val(), w);
        break;
      case '--health-retries':
        sub('health')['retries'] = whole(val(), w);
        break;
      case '--health-start-period':
        sub('health')['startPeriodMs'] = parseDuration(val(), w);
        break;
      case '--stop-grace-period':
        b['stopGraceMs'] = parseDuration(val(), w);
        break;
      case '--force':
        b['force'] = true;
        break;
      case '-d':
      case '--detach':
        out.detach = true;
        break;
      case '--timeout':
        out.timeoutMs = parseDuration(val(), w);
        break;
      case '--tail':
        out.tail = whole(val(), w);
        break;
      default:
        if (w.startsWith('-')) throw usage(`service: unknown option ${w}`);
        out.positional.push(w);
    }
  }
  const h = b['health'] as Record<string, unknown> | undefined;
  if (h !== undefined && h['cmd'] === undefined) {
    throw usage('--health-interval/--health-retries/… need --health-cmd');
  }
  return out;
}

interface View {
  id: string;
  name: string;
  mode: string;
  specVersion: number;
  endpoint: { mode: string; vips: Record<string, string>; ports: PortRow[] };
  updateStatus?: { state: string; message: string };
  replicas: { running: number; desired: number };
}
interface PortRow {
  published: number;
  target: number;
  protocol: string;
  mode: string;
}
interface Row {
  id: string;
  name: string;
  node: string;
  desired: string;
  state: string;
  specVersion: number;
  message: string;
  error?: string;
  ageMs: number;
  nodeState?: string;
  stale?: true;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const q = encodeURIComponent;

function age(ms: number): string {
  const s = Math.round(ms / 1000);
  return s < 60 ? `${s} s` : s < 3600 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`;
}

/** Poll until every desired replica runs at the service's spec version; 0, or 1 with why. */
async function converge(a: Args, id: string, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let lastLine = '';
  for (let i = 0; ; i++) {
    const v = await call<View>(a.host, 'GET', `/v1/service?id=${q(id)}`);
    const rows = await call<Row[]>(a.host, 'GET', `/v1/service/tasks?id=${q(id)}`);
    const live = rows.filter((r) => r.desired === 'running');
    const ok = live.filter((r) => r.state === 'running' && r.specVersion === v.specVersion);
    const st = v.updateStatus?.state;
    const line = `${v.name}: ${ok.length}/${v.replicas.desired} running${st !== undefined && st !== 'completed' ? ` (${st})` : ''}`;
    if (line !== lastLine) process.stderr.write(line + '\n');
    lastLine = line;
    if (st === 'paused' || st === 'rollback_paused') {
      process.stderr.write(`${v.name}: ${v.updateStatus!.message}\n`);
      return 1;
    }
    const updating = st === 'updating' || st === 'rollback_started';
    if (!updating && ok.length === v.replicas.desired && live.length === ok.length) return 0;
    if (Date.now() >= deadline) {
      const bad = rows.filter(
        (r) => r.error !== undefined || (r.desired === 'running' && r.state !== 'running'),
      );
      process.stderr.write(
        `${v.name}: not converged after ${Math.round(timeoutMs / 1000)} s (${ok.length}/${v.replicas.desired} running)\n` +
          bad
            .slice(0, 10)
            .map((r) => `  ${r.name} on ${r.node || '-'}: ${r.state}: ${r.error ?? r.message}\n`)
            .join(''),
      );
      return 1;
    }
    await sleep(Math.min(500, 100 * (i + 1)));
  }
}

/**
 * After converge: wait until every node's load balancer has applied the view holding the
 * service's latest task change (the dispatcher's lbWait), so that a request through any node
 * reaches the new tasks once the command returns. Running alone is not enough: nodes apply
 * views a poll later (~1.5 s measured).
 */
async function served(a: Args, v: View, timeoutMs: number): Promise<number> {
  const r = await call<{ waitedMs: number; pending: string[] }>(
    a.host,
    'POST',
    '/v1/service/served',
    // Below the client's 30 s idle limit: a longer lag is a fault to report, not to wait out.
    { id: v.id, timeoutMs: Math.min(25_000, Math.max(0, timeoutMs)) },
  );
  if (r.pending.length === 0) {
    process.stderr.write(`${v.name}: served by every node's load balancer\n`);
    return 0;
  }
  process.stderr.write(
    `${v.name}: running, but the load balancers of ${r.pending.join(', ')} have not applied it after ${Math.round(r.waitedMs / 1000)} s; see \`meshctl node ls\` and \`meshctl lb show\` on those nodes\n`,
  );
  return 1;
}

async function finish(a: Args, v: View, p: Parsed): Promise<number> {
  let rc = 0;
  if (!p.detach) {
    const start = Date.now();
    rc = await converge(a, v.id, p.timeoutMs);
    if (rc === 0) rc = await served(a, v, p.timeoutMs - (Date.now() - start));
  }
  process.stdout.write(a.json ? JSON.stringify(v) + '\n' : `${v.id}\n`);
  return rc;
}

function one(p: Parsed, verb: string): string {
  if (p.positional.length !== 1) throw usage(`service ${verb}: want exactly one SERVICE`);
  return p.positional[0]!;
}

export async function serviceCmd(a: Args): Promise<number> {
  const [verb, ...rest] = a.words;
  const p = parseServiceArgs(rest);
  switch (verb) {
    case 'create': {
      if (p.positional.length > 0) {
        throw usage(`service create: unexpected ${p.positional[0]}; put the command after --`);
      }
      const v = await call<View>(a.host, 'POST', '/v1/services', p.body);
      return finish(a, v, p);
    }
    case 'update': {
      const id = one(p, 'update');
      const v = await call<View>(a.host, 'POST', '/v1/service/update', { ...p.body, id });
      return finish(a, v, p);
    }
    case 'scale': {
      let pairs: [string, number][];
      if (p.positional.length === 2 && /^\d+$/.test(p.positional[1]!)) {
        pairs = [[p.positional[0]!, Number(p.positional[1])]];
      } else {
        if (p.positional.length === 0) throw usage('service scale: want SERVICE=N');
        pairs = p.positional.map((s) => {
          const [k, n] = kv(s, 'service scale');
          return [k, whole(n, 'service scale')];
        });
      }
      let rc = 0;
      for (const [id, replicas] of pairs) {
        const v = await call<View>(a.host, 'POST', '/v1/service/scale', { id, replicas });
        rc = Math.max(rc, await finish(a, v, p));
      }
      return rc;
    }
    case 'rollback': {
      const id = one(p, 'rollback');
      const v = await call<View>(a.host, 'POST', '/v1/service/rollback', { id });
      return finish(a, v, p);
    }
    case 'rm': {
      if (p.positional.length === 0) throw usage('service rm: want SERVICE...');
      for (const id of p.positional) {
        await call(a.host, 'POST', '/v1/service/rm', { id });
        process.stdout.write(`${id}\n`);
      }
      return 0;
    }
    case 'ls': {
      const rows = await call<
        {
          id: string;
          name: string;
          mode: string;
          running: number;
          desired: number;
          ports: string[];
        }[]
      >(a.host, 'GET', '/v1/services');
      if (a.json) process.stdout.write(JSON.stringify(rows) + '\n');
      else
        process.stdout.write(
          table([
            ['ID', 'NAME', 'MODE', 'REPLICAS', 'PORTS'],
            ...rows.map((r) => [
              r.id.slice(0, 12),
              r.name,
              r.mode,
              `${r.running}/${r.desired}`,
              r.ports.join(', '),
            ]),
          ]),
        );
      return 0;
    }
    case 'ps': {
      if (p.positional.length > 1) throw usage('service ps: want at most one SERVICE');
      const id = p.positional[0];
      const rows = await call<Row[]>(
        a.host,
        'GET',
        `/v1/service/tasks${id === undefined ? '' : `?id=${q(id)}`}`,
      );
      if (a.json) process.stdout.write(JSON.stringify(rows) + '\n');
      else
        process.stdout.write(
          table([
            ['ID', 'NAME', 'NODE', 'DESIRED', 'CURRENT', 'ERROR'],
            ...rows.map((r) => [
              r.id.slice(0, 12),
              r.name,
              r.node || '-',
              r.desired,
              `${r.state} ${age(r.ageMs)} ago${r.stale ? ` (node ${r.nodeState ?? '?'})` : ''}`,
              r.error ?? (r.state === 'pending' ? r.message : ''),
            ]),
          ]),
        );
      return 0;
    }
    case 'inspect': {
      const v = await call<View>(a.host, 'GET', `/v1/service?id=${q(one(p, 'inspect'))}`);
      process.stdout.write(JSON.stringify(v, null, a.json ? 0 : 2) + '\n');
      return 0;
    }
    case 'logs': {
      const id = one(p, 'logs');
      const r = await call<{ logs: Record<string, string>; missing?: string[] }>(
        a.host,
        'GET',
        `/v1/service/logs?id=${q(id)}&tail=${p.tail}`,
      );
      if (a.json) {
        process.stdout.write(JSON.stringify(r) + '\n');
        return 0;
      }
      for (const [task, text] of Object.entries(r.logs).sort()) {
        for (const line of text.split('\n'))
          if (line !== '') process.stdout.write(`${task} | ${line}\n`);
      }
      for (const m of r.missing ?? []) process.stderr.write(`no logs from ${m}\n`);
      return 0;
    }
    default:
      throw new MeshError(
        'EUSAGE',
        `service ${verb ?? ''}: want create, ls, ps, inspect, scale, update, rollback, logs or rm`,
      );
  }
}
