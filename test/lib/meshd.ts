/**
 * Real meshd processes on namespaced test hosts, and meshctl against them: what the end-to-end
 * tests, the demo and the benchmarks share. Each host's meshd gets its own data dir, socket and
 * --netns-prefix `<host name>-` (so the test net's teardown also sweeps the namespaces it makes),
 * and is started with setns only (host.spawn), never `ip netns exec` (see docs/daemon.md).
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestHost } from './testnet.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
export const MESHD = `${root}dist/src/daemon/main.js`;
/** meshd whose raft WAL loses unsynced writes on kill -9 (test/lib/meshd-lossy.ts). */
export const MESHD_LOSSY = `${root}dist/test/lib/meshd-lossy.js`;
export const MESHCTL = `${root}dist/src/cli/main.js`;

/** meshd's command line for host `h` (after `node`). */
export function meshdArgs(
  h: TestHost,
  dataDir: string,
  sock: string,
  extra: string[] = [],
): string[] {
  return [
    MESHD,
    '--node-name',
    `h${h.index}`,
    '--advertise-addr',
    h.addr,
    '--listen-addr',
    `${h.addr}:2377`,
    '--data-dir',
    dataDir,
    '--socket',
    sock,
    // Namespaces a meshd creates carry the host's name: the test net's teardown sweeps them.
    '--netns-prefix',
    `${h.name}-`,
    ...extra,
  ];
}

export class MeshHosts {
  readonly procs = new Map<number, ChildProcess>();

  /** `dir` holds every host's data dir and socket. */
  constructor(readonly dir: string) {}

  sock(h: TestHost): string {
    return join(this.dir, `${h.index}.sock`);
  }

  prefix(h: TestHost): string {
    return `${h.name}-`;
  }

  /** Where h's meshd log goes: MESH_TEST_LOGS=DIR keeps it after the run, else the test dir. */
  logFile(h: TestHost): string {
    return join(process.env.MESH_TEST_LOGS ?? this.dir, `${h.name}.log`);
  }

  /**
   * Start (or restart) h's meshd; it listens for managers on h's address, port 2377. Its log is
   * appended to logFile(h) unless a file descriptor is given.
   */
  start(h: TestHost, extra: string[] = [], stderr?: number): ChildProcess {
    const p = h.spawn(
      process.execPath,
      meshdArgs(h, join(this.dir, `data${h.index}`), this.sock(h), extra),
      { stdio: ['ignore', 'ignore', stderr ?? openSync(this.logFile(h), 'a')] },
    );
    this.procs.set(h.index, p);
    return p;
  }

  /** The last `n` warn/error lines of h's meshd log (for a failed test's output). */
  warnings(h: TestHost, n = 8): string[] {
    let text: string;
    try {
      text = readFileSync(this.logFile(h), 'utf8');
    } catch {
      return [];
    }
    return text
      .split('\n')
      .filter((l) => / level=(warn|error) /.test(l))
      .slice(-n);
  }

  ctl(h: TestHost, ...args: string[]) {
    return spawnSync(process.execPath, [MESHCTL, '--host', this.sock(h), ...args], {
      encoding: 'utf8',
      timeout: 60_000,
    });
  }

  /** meshctl that must succeed; its stdout. */
  ok(h: TestHost, ...args: string[]): string {
    const r = this.ctl(h, ...args);
    if (r.status !== 0) throw new Error(`meshctl ${args.join(' ')} on h${h.index}: ${r.stderr}`);
    return r.stdout;
  }

  /** Every host's API answers. */
  ready(hosts: readonly TestHost[]): boolean {
    for (const h of hosts) {
      const p = this.procs.get(h.index);
      if (p && p.exitCode !== null)
        throw new Error(
          `meshd on h${h.index} exited with code ${p.exitCode} before its API was up`,
        );
    }
    // The socket file first: a meshctl run costs a node start (seconds in the VM's emulated CPU).
    return (
      hosts.every((h) => existsSync(this.sock(h))) &&
      hosts.every((h) => this.ctl(h, 'version').status === 0)
    );
  }

  killAll(): void {
    for (const p of this.procs.values()) p.kill('SIGKILL');
  }
}

/**
 * Poll `f` (bounded) until it gives something truthy; throws naming `what` on time-out.
 *
 * Between two checks it waits twice as long as the last check took (at least 100 ms): a check
 * is usually a meshctl run, a whole node start, which under the kernel VM's emulation takes
 * 1.3–1.7 s and 2.2 s of CPU (node's own threads included), so polling back to back held more
 * than one of the VM's two CPUs while the meshd processes it waited for needed them. Polling
 * now takes about a third of the time; on a native host checks take milliseconds.
 */
export async function until<T>(
  what: string,
  f: () => T | undefined | false | null,
  ms = 20_000,
): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const t0 = Date.now();
    const v = f();
    if (v) return v;
    const now = Date.now();
    if (now > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, Math.min(Math.max(100, 2 * (now - t0)), end - now + 1)));
  }
}
