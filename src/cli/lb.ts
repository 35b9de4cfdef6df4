/**
 * `meshctl lb show [--service S] [--json]`: this node's load balancer as the kernel holds it
 * (GET /v1/lb), per VIP, published port and host-mode port, with backends and connection counts.
 * May import: cli/client, lb/mesh (types), util/, node built-ins.
 */
import type { LbShow, LbShowEntry } from '../api/lb.js';
import { UsageError } from '../util/errors.js';
import { call } from './client.js';
import { tableLines } from './table.js';

export const LB_HELP = `  lb show [--service S]
                 this node's load balancer: backend (ipvs or nftables), per VIP and
                 published port the service, network, mark, scheduler and backends (task,
                 node, address, weight, state, active/inactive connections), last reconcile;
                 a backend the self-check finds no data path to is marked
                 \`unreachable since …\` (out of rotation until the path is back)
`;

function ago(ms: number | undefined, now: number): string {
  if (ms === undefined) return 'never';
  const s = Math.max(0, Math.round((now - ms) / 1000));
  return s < 120 ? `${s}s ago` : `${Math.round(s / 60)}m ago`;
}

function front(e: LbShowEntry): string {
  const port = e.port === 0 ? '*' : String(e.port);
  if (e.kind === 'vip') return `${e.vip ?? '?'}:${port}/${e.protocol}`;
  return `:${port}/${e.protocol} (${e.kind})`;
}

/** The text `lb show` prints (pure). */
export function formatLbShow(s: LbShow, now: number): string {
  const out: string[] = [
    `node ${s.node}  backend ${s.backend}  last apply ${ago(s.lastApply, now)}  last reconcile ${ago(s.lastReconcile, now)}  drift repaired ${s.driftRepaired}`,
  ];
  if (s.reach)
    out.push(
      `self-check: ${s.reach.current} unreachable now, ${s.reach.unreachable} found unreachable and ${s.reach.restored} restored since start`,
    );
  if (s.entries.length === 0) out.push('no load-balanced services on this node');
  for (const e of s.entries) {
    const target = e.targetPort === 0 ? 'same port' : `-> ${e.targetPort}`;
    const parts = [
      `${front(e)} ${target}`,
      `service ${e.service}`,
      e.network !== undefined ? `network ${e.network}` : '',
      e.fwmark !== undefined ? `mark ${e.fwmark}` : '',
      e.scheduler !== undefined ? `scheduler ${e.scheduler}` : '',
      e.programmed ? '' : 'NOT PROGRAMMED',
    ].filter(Boolean);
    out.push('', parts.join('  '));
    if (e.backends.length === 0) {
      out.push('  (no backends)');
      continue;
    }
    const rows = [['  TASK', 'NODE', 'ADDRESS', 'WEIGHT', 'STATE', 'ACTIVE', 'INACTIVE']];
    for (const b of e.backends)
      rows.push([
        `  ${b.task ?? '-'}`,
        b.node ?? '-',
        b.port === 0 ? b.address : `${b.address}:${b.port}`,
        String(b.weight),
        b.unreachableSince === undefined
          ? b.state
          : `${b.state}, unreachable since ${new Date(b.unreachableSince).toISOString()} (${ago(b.unreachableSince, now)})`,
        b.activeConns === undefined ? '-' : String(b.activeConns),
        b.inactiveConns === undefined ? '-' : String(b.inactiveConns),
      ]);
    out.push(...tableLines(rows));
  }
  return out.join('\n') + '\n';
}

export async function lbCmd(a: { host?: string; json: boolean; words: string[] }): Promise<number> {
  const [sub, ...rest] = a.words;
  if (sub !== 'show')
    throw new UsageError(
      `lb ${sub ?? ''}: unknown command (meshctl lb show [--service S] [--json])`.replace(
        'lb :',
        'lb:',
      ),
    );
  let service: string | undefined;
  let json = a.json;
  for (let i = 0; i < rest.length; i++) {
    const w = rest[i]!;
    if (w === '--json') json = true;
    else if (w === '--service') {
      service = rest[++i];
      if (service === undefined || service === '')
        throw new UsageError('lb show --service: want a service name or id');
    } else if (w.startsWith('--service=')) service = w.slice('--service='.length);
    else throw new UsageError(`lb show: unknown argument ${JSON.stringify(w)}`);
  }
  const path = service === undefined ? '/v1/lb' : `/v1/lb?service=${encodeURIComponent(service)}`;
  const r = await call<LbShow>(a.host, 'GET', path);
  process.stdout.write(json ? JSON.stringify(r, null, 2) + '\n' : formatLbShow(r, Date.now()));
  return 0;
}
