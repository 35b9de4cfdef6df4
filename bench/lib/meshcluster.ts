/**
 * Our side of bench/raft: 3 meshd managers, one per namespaced host, data dirs under the
 * caller's tmp dir. The first runs `meshctl cluster init`, the others join it with a manager
 * token. Writes are `POST /v1/debug/kv {key, value}` on a member's API socket (a linearizable
 * write through the raft log); `GET /v1/raft/status` says who leads. Requests go through the
 * load worker like etcd's, so both sides are driven by the same client from the same place.
 * May import: node built-ins, test/lib/testnet.ts, bench/lib/load.ts (types and the worker).
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestHost } from '../../test/lib/testnet.js';
import type { BenchCluster, HttpReply, LoadWorker, Target } from './load.js';
import { stopProcs } from './proc.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const MESHD = `${root}dist/src/daemon/main.js`;
const MESHCTL = `${root}dist/src/cli/main.js`;
const RAFT_PORT = 2377;

/** A put on meshd's debug register; acknowledged on 200 with `ok` not false. */
export function meshPut(
  key: string,
  value: string,
): { path: string; body: unknown; check(r: HttpReply): void } {
  return {
    path: '/v1/debug/kv',
    body: { key, value },
    check(r) {
      if (r.status !== 200 || (JSON.parse(r.body) as { ok?: boolean }).ok === false)
        throw new Error(`meshd put: ${r.status} ${r.body.slice(0, 200)}`);
    },
  };
}

interface RaftStatus {
  role: string;
  leader: number | string | null;
}

export class MeshCluster implements BenchCluster {
  readonly side = 'ours';
  readonly targets: Target[];
  private readonly procs: (ChildProcess | undefined)[];
  private readonly names: string[];

  constructor(
    private readonly hosts: TestHost[],
    private readonly dir: string,
    private readonly worker: LoadWorker,
  ) {
    this.names = hosts.map((_, i) => `m${i + 1}`);
    this.targets = this.names.map((n) => ({ api: 'mesh', socketPath: join(dir, `${n}.sock`) }));
    this.procs = hosts.map(() => undefined);
  }

  private socket(i: number): string {
    return (this.targets[i] as { socketPath: string }).socketPath;
  }

  private spawnMember(i: number): void {
    const h = this.hosts[i]!;
    const name = this.names[i]!;
    const args = [
      MESHD,
      '--node-name',
      name,
      '--data-dir',
      join(this.dir, name),
      '--socket',
      this.socket(i),
      '--advertise-addr',
      h.addr,
      '--listen-addr',
      `${h.addr}:${RAFT_PORT}`,
      '--log-level',
      'warn',
    ];
    const log = openSync(join(this.dir, `${name}.log`), 'a');
    try {
      this.procs[i] = h.spawn(process.execPath, args, { stdio: ['ignore', 'ignore', log] });
    } finally {
      closeSync(log);
    }
  }

  /** Run meshctl against member i's socket (meshctl only talks to the socket: host namespace). */
  private meshctl(i: number, args: string[]): string {
    const r = spawnSync(process.execPath, [MESHCTL, '--host', this.socket(i), ...args], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    if (r.status !== 0)
      throw new Error(
        `meshctl ${args.join(' ')} on ${this.names[i]!}: exited ${r.status ?? r.signal}: ${(r.stderr || r.stdout).trim()}`,
      );
    return r.stdout.trim();
  }

  private async waitSocket(i: number, limitMs: number): Promise<void> {
    const end = Date.now() + limitMs;
    while (Date.now() < end) {
      const p = this.procs[i];
      if (p && (p.exitCode !== null || p.signalCode !== null))
        throw new Error(
          `meshd ${this.names[i]!}: exited (${p.exitCode ?? p.signalCode}) before its API socket was up`,
        );
      if (existsSync(this.socket(i))) {
        try {
          const r = await this.worker.request(this.targets[i]!, 'GET', '/v1/health');
          if (r.status === 200) return;
        } catch {
          // not listening yet
        }
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`meshd ${this.names[i]!}: API socket not up within ${limitMs} ms`);
  }

  async start(): Promise<void> {
    for (let i = 0; i < this.hosts.length; i++) this.spawnMember(i);
    for (let i = 0; i < this.hosts.length; i++) await this.waitSocket(i, 20_000);
    const first = this.hosts[0]!;
    this.meshctl(0, [
      'cluster',
      'init',
      '--advertise-addr',
      first.addr,
      '--listen-addr',
      `${first.addr}:${RAFT_PORT}`,
    ]);
    const token = this.meshctl(0, ['cluster', 'join-token', 'manager'])
      .split(/\s+/)
      .find((w) => w.startsWith('MESHTKN-'));
    if (!token) throw new Error('meshctl cluster join-token manager: no MESHTKN- token printed');
    for (let i = 1; i < this.hosts.length; i++)
      this.meshctl(i, [
        'cluster',
        'join',
        '--token',
        token,
        '--advertise-addr',
        this.hosts[i]!.addr,
        '--listen-addr',
        `${this.hosts[i]!.addr}:${RAFT_PORT}`,
        `${first.addr}:${RAFT_PORT}`,
      ]);
    await this.waitHealthy(60_000);
  }

  private async status(i: number): Promise<RaftStatus | undefined> {
    try {
      const r = await this.worker.request(this.targets[i]!, 'GET', '/v1/raft/status');
      return r.status === 200 ? (JSON.parse(r.body) as RaftStatus) : undefined;
    } catch {
      return undefined;
    }
  }

  async leader(): Promise<number> {
    const st = await Promise.all(this.targets.map((_, i) => this.status(i)));
    const i = st.findIndex((s) => s?.role === 'leader');
    if (i < 0) throw new Error('meshd: no member says it is the leader');
    return i;
  }

  pid(i: number): number {
    const p = this.procs[i];
    if (!p?.pid || p.exitCode !== null || p.signalCode !== null)
      throw new Error(`meshd ${this.names[i]!}: not running`);
    return p.pid;
  }

  async restart(i: number): Promise<void> {
    const p = this.procs[i];
    if (p && p.exitCode === null && p.signalCode === null)
      await new Promise<void>((r) => p.once('exit', () => r()));
    this.spawnMember(i);
    await this.waitSocket(i, 20_000);
  }

  async waitHealthy(limitMs: number): Promise<void> {
    const end = Date.now() + limitMs;
    let why = 'no status yet';
    while (Date.now() < end) {
      const dead = this.procs.findIndex((p) => p && (p.exitCode !== null || p.signalCode !== null));
      if (dead >= 0)
        throw new Error(
          `meshd ${this.names[dead]!}: exited (${this.procs[dead]!.exitCode ?? this.procs[dead]!.signalCode})`,
        );
      const st = await Promise.all(this.targets.map((_, i) => this.status(i)));
      const leaders = new Set(st.map((s) => String(s?.leader ?? '')));
      if (st.some((s) => !s)) why = 'a member does not answer /v1/raft/status';
      else if (leaders.size !== 1 || leaders.has('') || leaders.has('0'))
        why = `members disagree on the leader (${[...leaders].join(', ')})`;
      else if (st.filter((s) => s!.role === 'leader').length !== 1) why = 'no single leader';
      else {
        try {
          for (const t of this.targets) {
            const p = meshPut('bench/health', 'ok');
            p.check(await this.worker.request(t, 'POST', p.path, p.body, 3000));
          }
          return;
        } catch (e) {
          why = (e as Error).message;
        }
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`meshd: cluster not healthy within ${limitMs} ms: ${why}`);
  }

  async stop(): Promise<void> {
    await stopProcs(this.procs);
  }
}
