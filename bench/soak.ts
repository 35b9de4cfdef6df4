/**
 * Soak: the routing mesh under churn, every request counted. On 3–5 namespaced hosts with real
 * meshd (h1 the manager, the others workers; nftables backend) each cycle runs, one step at a
 * time, each step waited on until the cluster has converged:
 *
 *   create (3 replicas, port 8080) → scale 5 → scale 3 → kill a task (SIGKILL) → kill -9 a
 *   worker's meshd and restart it → drain that worker → activate it → service update → rm
 *
 * while a client on every host requests every node's published port, round robin, back to back
 * (a new connection each, 1 s deadline, 50 ms apart), and a client inside a task (service
 * `probe`, pinned to h1) requests the service's VIP. Requests count from the moment
 * `service create` returned to the moment `service rm` is issued.
 *
 * Converged (each step's end, its time is the step's convergence time): the desired replicas
 * run (none on a drained node) and on every live node `meshctl lb show` lists, for every entry of
 * the service, exactly the running tasks as backends (after rm: no entry and no task namespace).
 *
 * Failure-detection window: only a task kill is a failure the cluster has to detect. Its window
 * runs from the SIGKILL until no live node's `lb show` lists the task as an active backend
 * (polled, so it ends up to one poll — about a second here — late). A request sent inside a
 * window that gets no answer is lost inside detection; every other unanswered request is lost
 * outside detection and must not happen (the meshd kill -9 and restart has no window: the kernel
 * state outlives the process, so requests keep being answered).
 *
 * Stale backend: a backend `lb show` still lists (any node, any state) whose task is gone
 * (terminal or unknown to the managers) when its step timed out converging.
 *
 * `npm run soak -- [--cycles N] [--hosts 3..5]` or `npm run bench -- soak …`; ends with one JSON
 * line `{"bench":"soak","ours":{…},"peer":{}}`; exits 1 when a request was lost outside
 * detection or a stale backend was seen. Everything runs in namespaces it creates and removes.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LbShow } from '../src/api/lb.js';
import { netnsList } from '../src/netlink/index.js';
import { MeshHosts, until } from '../test/lib/meshd.js';
import {
  CLIENT_DEADLINE_MS,
  HttpClients,
  NAMING_SERVER,
  RequestCount,
  type ClientLine,
} from '../test/lib/requests.js';
import { meshDiag, type TaskRow } from '../test/lib/services-scenario.js';
import { TestNet, killNetnsProcs, type TestHost } from '../test/lib/testnet.js';

const STEPS = [
  'create',
  'scale up',
  'scale down',
  'task kill',
  'meshd kill -9 + restart',
  'drain',
  'activate',
  'update',
  'rm',
] as const;
type Step = (typeof STEPS)[number];

export interface SoakOptions {
  cycles: number;
  hosts: number;
  /** Progress and diagnostics (stderr by default). */
  log?: (line: string) => void;
}

export interface SoakResult {
  cycles: number;
  requests: number;
  answered: number;
  lost_outside_detection: number;
  lost_inside_detection: number;
  stale_backends: number;
  /** Steps that did not converge within their limit. */
  unconverged: string[];
  converge_ms: Record<string, { n: number; p50: number; p99: number }>;
  converge_p99_ms: number;
  /** answered/sent per (from, to) pair. */
  pairs: string[];
  /** One line per lost request outside detection (first 50), with the step it was sent in. */
  lost: string[];
  /** Lost outside detection, by the step they were sent in. */
  lost_by_step: Record<string, number>;
}

type Rec = ClientLine;

const pct = (xs: number[], p: number): number => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

const GONE = new Set(['shutdown', 'failed', 'complete', 'rejected', 'orphaned', 'remove']);

export async function runSoak(opts: SoakOptions): Promise<SoakResult> {
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const net = TestNet.create({ hosts: opts.hosts });
  const dir = mkdtempSync(join(tmpdir(), 'mesh-soak-'));
  const mh = new MeshHosts(dir);
  const extra = ['--lb-backend', 'nftables', '--dns-upstream', '198.18.0.254'];
  const hosts = net.hosts;
  const h1 = hosts[0]!;
  const workers = hosts.slice(1);
  let live = [...hosts];

  const count = new RequestCount();
  const pending: Rec[] = [];
  /** When requests count: from create returned to rm issued. */
  const counting: [number, number][] = [];
  /** Failure-detection windows (task kills). */
  const windows: [number, number][] = [];
  let lostInside = 0;
  const lost: Rec[] = [];
  let stale = 0;
  const unconverged: string[] = [];
  const converge = new Map<Step, number[]>();
  let snapshots = 0;
  /** Every step's start, to say in which step a request was sent. */
  const started: { at: number; label: string }[] = [];
  const stepAt = (at: number): string => {
    const s = started.filter((x) => x.at <= at).at(-1);
    return s ? `${s.label} +${at - s.at} ms` : 'before the first step';
  };
  const lostByStep = new Map<string, number>();

  const result = (cycles: number): SoakResult => {
    const all = [...converge.values()].flat();
    return {
      cycles,
      requests: count.sent,
      answered: count.answered,
      lost_outside_detection: lost.length,
      lost_inside_detection: lostInside,
      stale_backends: stale,
      unconverged,
      converge_ms: Object.fromEntries(
        STEPS.filter((s) => converge.has(s)).map((s) => {
          const xs = converge.get(s)!;
          return [s, { n: xs.length, p50: pct(xs, 50), p99: pct(xs, 99) }];
        }),
      ),
      converge_p99_ms: all.length > 0 ? pct(all, 99) : 0,
      pairs: count.lines(),
      lost_by_step: Object.fromEntries(lostByStep),
      lost: lost
        .slice(0, 50)
        .map(
          (r) =>
            `${new Date(r.at).toISOString()} ${stepAt(r.at)}: ${r.from} → ${r.to} (${r.error ?? '?'})`,
        ),
    };
  };

  /** Count the requests that started before `upTo`; those outside counting are not requests. */
  const classify = (upTo: number): number => {
    pending.push(...clients.read());
    let newLost = 0;
    for (let i = 0; i < pending.length;) {
      const r = pending[i]!;
      if (r.at >= upTo) {
        i++;
        continue;
      }
      pending.splice(i, 1);
      if (!counting.some(([a, b]) => r.at >= a && r.at <= b)) continue;
      count.record(r.from, r.to, r.answer);
      if (r.answer !== null) continue;
      if (windows.some(([a, b]) => r.at >= a && r.at <= b)) lostInside++;
      else {
        lost.push(r);
        newLost++;
        const s =
          started
            .filter((x) => x.at <= r.at)
            .at(-1)
            ?.label.replace(/^cycle \d+ /, '') ?? '-';
        lostByStep.set(s, (lostByStep.get(s) ?? 0) + 1);
      }
    }
    return newLost;
  };

  const clients = new HttpClients(dir);
  const startClient = (from: string, ns: string, urls: string[]): ChildProcess =>
    clients.start(from, ns, urls, 50);

  const ps = (service = 'web'): TaskRow[] => {
    const r = mh.ctl(h1, 'service', 'ps', service, '--json');
    return r.status === 0 ? (JSON.parse(r.stdout) as TaskRow[]) : [];
  };
  const running = (rows = ps()) =>
    rows.filter((r) => r.desired === 'running' && r.state === 'running');
  const lbShow = (h: TestHost): LbShow | null => {
    const r = mh.ctl(h, 'lb', 'show', '--json');
    return r.status === 0 ? (JSON.parse(r.stdout) as LbShow) : null;
  };
  const webEntries = (lb: LbShow) => lb.entries.filter((e) => e.service === 'web');

  /**
   * Converged for `replicas` running tasks of web (none on `avoid`): every live node's lb show
   * lists exactly those as the backends of each of web's entries, and has the published port.
   */
  const servesExactly = (replicas: number, avoid?: string): boolean => {
    const run = running();
    if (run.length !== replicas || run.some((r) => r.node === avoid)) return false;
    const want = run.map((r) => r.name).sort();
    for (const h of live) {
      const lb = lbShow(h);
      if (lb === null) return false;
      const es = webEntries(lb);
      if (!es.some((e) => e.kind === 'ingress' && e.port === 8080)) return false;
      for (const e of es) {
        const got = e.backends.map((b) => b.task ?? '?').sort();
        if (got.join(' ') !== want.join(' ')) return false;
      }
    }
    return true;
  };
  /** Backends whose task is gone (terminal or unknown), on every live node. */
  const staleBackends = (): string[] => {
    const rows = ps();
    const out: string[] = [];
    for (const h of live) {
      const lb = lbShow(h);
      for (const e of lb ? webEntries(lb) : []) {
        for (const b of e.backends) {
          const t = rows.find((r) => r.name === b.task);
          if (t === undefined || GONE.has(t.state)) {
            out.push(`h${h.index} ${e.kind}:${e.port} ${b.task ?? '?'}@${b.address} (${b.state})`);
          }
        }
      }
    }
    return out;
  };

  let stepStart = 0;
  const step = async (
    cycle: number,
    name: Step,
    act: () => void | Promise<void>,
    converged: () => boolean,
    limitMs = 60_000,
  ): Promise<void> => {
    stepStart = Date.now();
    started.push({ at: stepStart, label: `cycle ${cycle} ${name}` });
    await act();
    const ok = await until(`${name} converged`, converged, limitMs).then(
      () => true,
      () => false,
    );
    const ms = Date.now() - stepStart;
    if (ok) converge.set(name, [...(converge.get(name) ?? []), ms]);
    else {
      unconverged.push(`cycle ${cycle} ${name}`);
      const st = name === 'rm' ? [] : staleBackends();
      stale += st.length;
      log(
        `cycle ${cycle} ${name}: NOT converged after ${ms} ms; stale backends: ${st.join(', ') || 'none'}`,
      );
      for (const l of meshDiag(mh, live, hosts)) log(`  ${l}`);
    }
    // Requests in flight at the step's end are counted with the next step.
    const fresh = classify(Date.now() - 1_500);
    log(
      `cycle ${cycle} ${name}: ${ok ? `converged in ${ms} ms` : 'not converged'}${fresh > 0 ? `; ${fresh} requests LOST outside detection` : ''}`,
    );
    if (fresh > 0) {
      const recent = lost.slice(-fresh);
      const pairs = new Map<string, number>();
      for (const r of recent)
        pairs.set(`${r.from} → ${r.to}`, (pairs.get(`${r.from} → ${r.to}`) ?? 0) + 1);
      log(
        `  sent ${stepAt(recent[0]!.at)} .. ${stepAt(recent.at(-1)!.at)}: ${[...pairs].map(([k, v]) => `${k} x${v}`).join(', ')}`,
      );
      // The state while it happens (a few per run: each is dozens of lines).
      if (snapshots++ < 3) for (const l of meshDiag(mh, live, hosts)) log(`  ${l}`);
    }
  };

  try {
    for (const h of hosts) mh.start(h, extra);
    await until('API sockets', () => mh.ready(hosts), 60_000);
    mh.ok(h1, 'cluster', 'init');
    const wtoken = mh.ok(h1, 'cluster', 'join-token', 'worker', '-q').trim();
    for (const h of workers) mh.ok(h, 'cluster', 'join', '--token', wtoken, h1.addr);
    await until('every node ready', () => {
      const r = mh.ctl(h1, 'node', 'ls', '--json');
      if (r.status !== 0) return false;
      const ns = JSON.parse(r.stdout) as { status: { state: string } }[];
      return ns.length === hosts.length && ns.every((n) => n.status.state === 'ready');
    });
    mh.ok(h1, 'net', 'create', 'app');
    // The client inside a task: an idle task on h1 (never drained or killed here).
    mh.ok(
      h1,
      'service',
      'create',
      '--name',
      'probe',
      '--replicas',
      '1',
      '--network',
      'app',
      '--constraint',
      'node.hostname==h1',
      '--',
      'node',
      '-e',
      'setInterval(()=>{},1<<30)',
    );
    const probe = running(ps('probe'))[0];
    if (probe === undefined) throw new Error('soak: the probe task is not running');
    const probeNs = `${mh.prefix(h1)}mesh-t-${probe.id.slice(0, 12)}`;
    for (const h of hosts) {
      startClient(
        `h${h.index}`,
        h.name,
        hosts.map((x) => `http://${x.addr}:8080/`),
      );
    }

    let done = 0;
    for (let c = 1; c <= opts.cycles; c++) {
      const w = workers[(c - 1) % workers.length]!;
      let vipClient: ChildProcess | undefined;
      await step(
        c,
        'create',
        () => {
          const create = 'service create --name web --replicas 3 --network app -p 8080:80 --';
          mh.ok(h1, ...create.split(' '), ...NAMING_SERVER);
          counting.push([Date.now(), Infinity]);
          const v = JSON.parse(mh.ok(h1, 'service', 'inspect', 'web', '--json')) as {
            endpoint: { vips: Record<string, string> };
          };
          const vip = (v.endpoint.vips['app'] ?? '').split('/')[0]!;
          vipClient = startClient(`task ${probe.name}`, probeNs, [`http://${vip}:80/`]);
        },
        () => servesExactly(3),
      );
      await step(
        c,
        'scale up',
        () => void mh.ok(h1, 'service', 'scale', 'web', '5'),
        () => servesExactly(5),
      );
      await step(
        c,
        'scale down',
        () => void mh.ok(h1, 'service', 'scale', 'web', '3'),
        () => servesExactly(3),
      );
      let victim: TaskRow | undefined;
      await step(
        c,
        'task kill',
        async () => {
          const run = running();
          victim = run[(c - 1) % run.length]!;
          const vh = hosts.find((h) => `h${h.index}` === victim!.node)!;
          const at = Date.now();
          const killed = killNetnsProcs(
            `/run/netns/${mh.prefix(vh)}mesh-t-${victim.id.slice(0, 12)}`,
          );
          if (killed === 0) log(`cycle ${c} task kill: no process found for ${victim.name}`);
          // Requests in flight when the task died count too: sent up to one client deadline
          // before the kill.
          const win: [number, number] = [at - CLIENT_DEADLINE_MS, Infinity];
          windows.push(win);
          await until(
            `no node lists ${victim.name} as an active backend`,
            () =>
              live.every((h) => {
                const lb = lbShow(h);
                return (
                  lb !== null &&
                  webEntries(lb).every((e) =>
                    e.backends.every((b) => b.task !== victim!.name || b.state !== 'active'),
                  )
                );
              }),
            60_000,
          ).catch(() =>
            log(`cycle ${c} task kill: ${victim!.name} still an active backend after 60 s`),
          );
          win[1] = Date.now();
          log(
            `cycle ${c} task kill: detection window ${win[1] - at} ms (${victim.name} on ${victim.node})`,
          );
        },
        () => servesExactly(3) && !running().some((r) => r.id === victim!.id),
      );
      await step(
        c,
        'meshd kill -9 + restart',
        async () => {
          mh.procs.get(w.index)?.kill('SIGKILL');
          await until(
            `meshd of ${w.name} gone`,
            () =>
              mh.procs.get(w.index)?.exitCode !== null ||
              mh.procs.get(w.index)?.signalCode !== null,
          );
          live = hosts.filter((h) => h !== w);
          mh.start(w, extra);
          await until(`meshd of h${w.index} back`, () => mh.ready([w]), 30_000);
          live = [...hosts];
        },
        () => servesExactly(3),
      );
      await step(
        c,
        'drain',
        () => void mh.ok(h1, 'node', 'update', '--availability', 'drain', `h${w.index}`),
        () => servesExactly(3, `h${w.index}`),
      );
      await step(
        c,
        'activate',
        () => void mh.ok(h1, 'node', 'update', '--availability', 'active', `h${w.index}`),
        () => servesExactly(3),
      );
      await step(
        c,
        'update',
        () => void mh.ok(h1, 'service', 'update', '-e', `SOAK=${c}`, 'web'),
        () => servesExactly(3),
      );
      await step(
        c,
        'rm',
        () => {
          counting.at(-1)![1] = Date.now();
          vipClient?.kill('SIGKILL');
          mh.ok(h1, 'service', 'rm', 'web');
        },
        () =>
          ps('probe').length > 0 &&
          !netnsList().some(
            (n) =>
              /mesh-t-/.test(n) && hosts.some((h) => n.startsWith(mh.prefix(h))) && n !== probeNs,
          ) &&
          hosts.every((h) => {
            const lb = lbShow(h);
            return lb !== null && webEntries(lb).length === 0;
          }),
      );
      done = c;
      const r = result(done);
      log(
        `cycle ${c}/${opts.cycles}: ${r.answered}/${r.requests} answered, lost outside detection ${r.lost_outside_detection}, inside ${r.lost_inside_detection}, stale ${r.stale_backends}`,
      );
    }
    await new Promise((r) => setTimeout(r, 1_500));
    classify(Infinity);
    return result(done);
  } finally {
    clients.stop();
    mh.killAll();
    // Task processes run in their own sessions (they outlive meshd by design): stop them too.
    for (const h of hosts) {
      for (const n of netnsList())
        if (n.startsWith(mh.prefix(h))) killNetnsProcs(`/run/netns/${n}`);
    }
    net.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

function arg(args: string[], name: string, def: number, min: number, max: number): number {
  const i = args.indexOf(name);
  if (i < 0) return def;
  const v = Number(args[i + 1]);
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    process.stderr.write(`soak: ${name} wants a whole number from ${min} to ${max}\n`);
    process.exit(2);
  }
  return v;
}

export async function main(args: string[]): Promise<void> {
  const cycles = arg(args, '--cycles', 3, 1, 1000);
  const hosts = arg(args, '--hosts', 3, 3, 5);
  const started = Date.now();
  const r = await runSoak({ cycles, hosts });
  const log = (l: string) => process.stderr.write(`${l}\n`);
  log(
    `\nsoak: ${r.cycles} cycles on ${hosts} hosts in ${Math.round((Date.now() - started) / 1000)} s`,
  );
  for (const l of r.pairs) log(`  ${l}`);
  log(
    `requests ${r.requests}, answered ${r.answered}, lost outside detection ${r.lost_outside_detection}, lost inside detection ${r.lost_inside_detection}, stale backends ${r.stale_backends}`,
  );
  if (r.unconverged.length > 0) log(`not converged: ${r.unconverged.join(', ')}`);
  log('convergence per step (ms): step  n  p50  p99');
  for (const [s, v] of Object.entries(r.converge_ms)) log(`  ${s}  ${v.n}  ${v.p50}  ${v.p99}`);
  if (r.lost_outside_detection > 0) {
    log(`lost outside detection by step: ${JSON.stringify(r.lost_by_step)}`);
  }
  for (const l of r.lost) log(`  lost: ${l}`);
  process.stdout.write(
    JSON.stringify({
      bench: 'soak',
      ours: {
        cycles: r.cycles,
        requests: r.requests,
        lost_outside_detection: r.lost_outside_detection,
        stale_backends: r.stale_backends,
        converge_p99_ms: r.converge_p99_ms,
        lost_inside_detection: r.lost_inside_detection,
        unconverged_steps: r.unconverged.length,
      },
      peer: {},
    }) + '\n',
  );
  if (r.lost_outside_detection > 0 || r.stale_backends > 0 || r.unconverged.length > 0) {
    process.exitCode = 1;
  }
}
