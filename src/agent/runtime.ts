/**
 * The embedded task runtime: a task is a process in its own network namespace
 * (`<prefix>mesh-t-<first 12 chars of the task id>`), started detached in its own session with
 * stdout and stderr appended to a log file, so it keeps running when meshd crashes or restarts
 * ("kill -9 of an agent leaves traffic flowing", issue 5). The agent creates a task, attaches
 * its networks with the overlay driver, then starts it. See docs/agent.md.
 *
 * State lives in `<stateDir>/tasks.json`, replaced atomically (temp file, fsync, rename, fsync of
 * the directory). A new runtime adopts what the previous meshd left: a recorded process still
 * alive (same pid AND same start time, so a reused pid is never taken for ours) is watched; one
 * that is gone is `exited` with an unknown exit code; `<prefix>mesh-t-*` namespaces with no
 * record are removed with whatever runs in them. Namespaces without our prefix are never touched.
 *
 * Exit detection: our own children report through the 'exit' event (exact code or signal).
 * Adopted processes are not our children, so no wait status reaches us; we poll /proc every
 * 500 ms (one small read per adopted task). pidfd_open would pin the identity too, but Node has
 * no way to wait for a pidfd on the event loop, so it would still be polled (or would park a
 * thread-pool thread per task), and it cannot give the exit code of a non-child either; the
 * start-time check already makes the /proc poll immune to pid reuse.
 * May import: netlink/, util/, ./proc, node built-ins.
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import {
  closeSync,
  existsSync,
  fstatSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  statSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  NETLINK_ROUTE,
  NETNS_RUN_DIR,
  NetlinkSocket,
  linkSetUp,
  netnsCreate,
  netnsDelete,
  netnsList,
  netnsOpen,
  spawnInNetns,
} from '../netlink/index.js';
import { MeshError } from '../util/errors.js';
import { createLogger, type Logger } from '../util/log.js';
import { pidsByNetns, pidsInNetns, procAlive, readProcStat, signal } from './proc.js';

export type TaskState = 'created' | 'running' | 'exited';

export interface TaskSpec {
  /** Task id (the store's): 1-128 of A-Z a-z 0-9 _ . -, starting with a letter or digit. */
  id: string;
  /** Human name, shown by `meshctl ps`. */
  name: string;
  /** argv; cmd[0] is looked up in PATH. */
  cmd: string[];
  /** Added to the task's environment (PATH defaults to the usual system directories). */
  env?: Record<string, string>;
  /** @default '/' */
  cwd?: string;
  /**
   * Contents of the task's /etc/resolv.conf (services: the embedded DNS at 127.0.0.11). When
   * set, the task gets a private mount namespace with this file bound over /etc/resolv.conf,
   * the way `ip netns exec` binds /etc/netns/NAME/resolv.conf.
   */
  resolvConf?: string;
}

export interface TaskInfo {
  id: string;
  name: string;
  state: TaskState;
  cmd: string[];
  /** Namespace name under /run/netns (`ip netns exec NAME …`). */
  netns: string;
  /** `/run/netns/NAME`: what the overlay driver's attach takes. */
  netnsPath: string;
  /** While running, and kept after exit for the record. */
  pid?: number;
  /** Exit status; 128 + signal number when killed by a signal; null when unknown. */
  exitCode?: number | null;
  /** The signal that ended it (`SIGKILL`), when known. */
  signal?: string | null;
  /** ISO times. */
  startedAt?: string;
  finishedAt?: string;
  /** Times start() ran the command again after an exit (restart policy). */
  restarts: number;
  /** True while this runtime watches a process started by an earlier meshd. */
  adopted: boolean;
}

export interface ExitEvent {
  id: string;
  exitCode: number | null;
  signal: string | null;
  finishedAt: string;
  /** The process was started by an earlier meshd: the exit code is not known. */
  adopted: boolean;
}

export interface TaskRuntimeOptions {
  /** Directory for tasks.json and logs/ (created, mode 0700). */
  stateDir: string;
  log?: Logger;
  /**
   * Prefix of the namespace names (`<prefix>mesh-t-…`). Named namespaces live in the file
   * system (/run/netns), shared by every namespaced test host on one machine, so tests give
   * each runtime its own; a real node keeps the default.
   * @default ''
   */
  netnsPrefix?: string;
  /** How often adopted processes are checked for exit, in ms. @default 500 */
  pollMs?: number;
}

/** On-disk record; fields are only ever added. */
interface TaskRecord {
  id: string;
  name: string;
  cmd: string[];
  env: Record<string, string>;
  cwd: string;
  netns: string;
  /** See TaskSpec.resolvConf. */
  resolvConf?: string;
  state: TaskState;
  pid?: number;
  /** /proc/<pid>/stat field 22 of `pid`, the identity check on adoption and before signals. */
  startTime?: string;
  startedAt?: string;
  finishedAt?: string;
  exitCode?: number | null;
  signal?: string | null;
  restarts: number;
}

interface StateFile {
  version: 1;
  tasks: TaskRecord[];
}

interface Task {
  rec: TaskRecord;
  /** Counts starts; an exit report for an earlier run is ignored. */
  run: number;
  /** Set while the process is our child. */
  child?: ChildProcess;
  adopted: boolean;
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** How long a SIGKILLed process may take to disappear before stop() gives up. */
const KILL_WAIT_MS = 5_000;
/** Poll period while stop() waits for an adopted process. */
const STOP_POLL_MS = 20;

export class TaskRuntime {
  readonly stateDir: string;
  private readonly file: string;
  private readonly logDir: string;
  private readonly prefix: string;
  private readonly log: Logger;
  private readonly pollMs: number;
  private readonly tasks = new Map<string, Task>();
  private readonly listeners = new Set<(e: ExitEvent) => void>();
  private readonly locks = new Map<string, Promise<void>>();
  private poller: NodeJS.Timeout | undefined;
  private closed = false;

  private constructor(opts: TaskRuntimeOptions) {
    this.stateDir = opts.stateDir;
    this.file = join(opts.stateDir, 'tasks.json');
    this.logDir = join(opts.stateDir, 'logs');
    this.prefix = opts.netnsPrefix ?? '';
    this.log = opts.log ?? createLogger('runtime');
    this.pollMs = opts.pollMs ?? 500;
  }

  /**
   * Load the state of a previous run and adopt it: live processes are watched, dead ones
   * become `exited` (code unknown), namespaces `<prefix>mesh-t-*` without a record are removed.
   * Tasks found dead here get no onExit call (nobody could have subscribed yet): list() shows
   * them as exited.
   */
  static async open(opts: TaskRuntimeOptions): Promise<TaskRuntime> {
    const rt = new TaskRuntime(opts);
    mkdirSync(rt.logDir, { recursive: true, mode: 0o700 });
    for (const rec of rt.load()) rt.tasks.set(rec.id, { rec, run: 0, adopted: false });
    rt.adopt();
    return Promise.resolve(rt);
  }

  /** The namespace name a task id gets. */
  netnsName(id: string): string {
    return `${this.prefix}mesh-t-${id.slice(0, 12)}`;
  }

  /**
   * Create the task's namespace (with `lo` up) and its record, state `created`. The caller
   * attaches networks to `netnsPath`, then calls start().
   * Equivalent to: `ip netns add mesh-t-ID; ip -n mesh-t-ID link set lo up`.
   */
  async create(spec: TaskSpec): Promise<{ netns: string; netnsPath: string }> {
    checkSpec(spec);
    return this.serial(spec.id, () => {
      const what = `create task ${spec.id}`;
      if (this.tasks.has(spec.id)) {
        throw new MeshError('ECONFLICT', `${what}: a task with this id exists; remove it first`);
      }
      const netns = this.netnsName(spec.id);
      for (const t of this.tasks.values()) {
        if (t.rec.netns === netns) {
          throw new MeshError(
            'ECONFLICT',
            `${what}: namespace ${netns} belongs to task ${t.rec.id} (ids share their first 12 characters); use distinct ids`,
          );
        }
      }
      // No record owns it, so it is ours and stale (a crash between create and save).
      if (existsSync(nsPath(netns))) this.destroyNetns(netns);
      const ns = netnsCreate(netns);
      try {
        const h = NetlinkSocket.open(NETLINK_ROUTE, { netns: ns });
        try {
          linkSetUp(h, 'lo');
        } finally {
          h.close();
        }
        const rec: TaskRecord = {
          id: spec.id,
          name: spec.name,
          cmd: [...spec.cmd],
          env: { ...(spec.env ?? {}) },
          cwd: spec.cwd ?? '/',
          netns,
          ...(spec.resolvConf !== undefined ? { resolvConf: spec.resolvConf } : {}),
          state: 'created',
          restarts: 0,
        };
        this.tasks.set(spec.id, { rec, run: 0, adopted: false });
        try {
          this.save();
        } catch (e) {
          this.tasks.delete(spec.id);
          throw e;
        }
      } catch (e) {
        ns.close();
        netnsDelete(netns, { ifExists: true });
        throw e;
      }
      ns.close();
      return Promise.resolve({ netns, netnsPath: nsPath(netns) });
    });
  }

  /**
   * Run the task's command inside its namespace: own session (setsid), stdin /dev/null,
   * stdout and stderr appended to the task's log file. Works on `created` and `exited` tasks
   * (again on an exited one is a restart: same namespace, same attachments, log appended).
   */
  async start(id: string): Promise<TaskInfo> {
    return this.serial(id, async () => {
      const task = this.must(id, 'start');
      const rec = task.rec;
      const what = `start task ${id}`;
      if (rec.state === 'running') {
        throw new MeshError('ECONFLICT', `${what}: already running (pid ${rec.pid})`);
      }
      if (!existsSync(nsPath(rec.netns))) {
        throw new MeshError(
          'ETASK',
          `${what}: namespace ${rec.netns} is gone (deleted by hand, or the host rebooted); remove the task and create it again`,
        );
      }
      let [cmd, ...args] = rec.cmd;
      if (cmd === undefined) throw new MeshError('EINTERNAL', `${what}: empty command`);
      if (rec.resolvConf !== undefined) {
        // unshare(1) and sh exec in place, so the pid we record is the task's own.
        const file = join(this.stateDir, `${id}.resolv.conf`);
        writeFileSync(file, rec.resolvConf, { mode: 0o644 });
        args = [
          '--mount',
          '--propagation',
          'private',
          '--',
          '/bin/sh',
          '-c',
          'mount --bind "$0" /etc/resolv.conf && exec "$@"',
          file,
          cmd,
          ...args,
        ];
        cmd = 'unshare';
      }
      const logFd = openSync(this.logPath(id), 'a', 0o600);
      let child: ChildProcess;
      try {
        const ns = netnsOpen(rec.netns);
        try {
          child = spawnInNetns(ns, cmd, args, {
            detached: true,
            stdio: ['ignore', logFd, logFd],
            env: { PATH: DEFAULT_PATH, ...rec.env },
            cwd: rec.cwd,
          });
        } finally {
          ns.close();
        }
      } finally {
        // The child holds its own copies of the descriptor; meshd needs none.
        closeSync(logFd);
      }
      const pid = child.pid;
      if (pid === undefined) {
        // spawn reports exec failures (ENOENT, EACCES, bad cwd) as an 'error' event.
        const [err] = (await once(child, 'error')) as [NodeJS.ErrnoException];
        throw new MeshError(
          'ETASK',
          `${what}: run ${JSON.stringify(cmd)} in ${rec.cwd}: ${err.code ?? err.message} (check that the command exists in PATH and the working directory exists)`,
          { cause: err },
        );
      }
      const run = ++task.run;
      child.on('error', (e) => this.log.warn('task process error', { task: id, err: e }));
      child.on('exit', (code, sig) => {
        if (this.closed || task.run !== run) return;
        if (task.child === child) task.child = undefined;
        this.exited(task, run, code ?? (sig ? 128 + (osConstants.signals[sig] ?? 0) : null), sig);
      });
      // The child exists (at worst as a zombie, reaped only on a later loop turn), so its stat
      // is readable now.
      const st = readProcStat(pid);
      if (rec.state === 'exited') rec.restarts++;
      rec.state = 'running';
      rec.pid = pid;
      rec.startTime = st?.startTime ?? '';
      rec.startedAt = new Date().toISOString();
      delete rec.finishedAt;
      delete rec.exitCode;
      delete rec.signal;
      task.child = child;
      task.adopted = false;
      this.save();
      this.log.info('task started', { task: id, pid, netns: rec.netns });
      return info(task);
    });
  }

  /**
   * Stop a running task: SIGTERM to its process group, SIGKILL to the group after `graceMs`,
   * then SIGKILL to anything left in its namespace (children that left the group). Resolves
   * once the process is gone; a task that is not running is left as it is.
   * Equivalent to: `kill -TERM -PGID; sleep GRACE; kill -KILL -PGID`.
   */
  async stop(id: string, opts: { graceMs?: number } = {}): Promise<TaskInfo> {
    const graceMs = opts.graceMs ?? 10_000;
    return this.serial(id, async () => {
      const task = this.must(id, 'stop');
      await this.stopLocked(task, graceMs);
      return info(task);
    });
  }

  /** Stop the task if it runs, delete its namespace and log, forget it. */
  async remove(id: string, opts: { graceMs?: number } = {}): Promise<void> {
    const graceMs = opts.graceMs ?? 10_000;
    return this.serial(id, async () => {
      const task = this.must(id, 'remove');
      await this.stopLocked(task, graceMs);
      this.destroyNetns(task.rec.netns);
      for (const f of [this.logPath(id), join(this.stateDir, `${id}.resolv.conf`)]) {
        try {
          unlinkSync(f);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        }
      }
      this.tasks.delete(id);
      this.save();
      this.log.info('task removed', { task: id });
    });
  }

  list(): TaskInfo[] {
    return [...this.tasks.values()].map(info).sort((a, b) => a.id.localeCompare(b.id));
  }

  get(id: string): TaskInfo | undefined {
    const t = this.tasks.get(id);
    return t ? info(t) : undefined;
  }

  /** Where the task's stdout and stderr go (for followers: `tail -f`). */
  logPath(id: string): string {
    return join(this.logDir, `${id}.log`);
  }

  /** The task's output so far, or its last `tailBytes` bytes. */
  logs(id: string, opts: { tailBytes?: number } = {}): string {
    this.must(id, 'read logs of');
    let fd: number;
    try {
      fd = openSync(this.logPath(id), 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return '';
      throw e;
    }
    try {
      const size = fstatSync(fd).size;
      const want = Math.min(size, opts.tailBytes ?? size);
      const buf = Buffer.alloc(want);
      let got = 0;
      while (got < want) {
        const n = readSync(fd, buf, got, want - got, size - want + got);
        if (n === 0) break;
        got += n;
      }
      return buf.subarray(0, got).toString('utf8');
    } finally {
      closeSync(fd);
    }
  }

  /** Call `cb` once for every exit this runtime observes. Returns an unsubscribe function. */
  onExit(cb: (e: ExitEvent) => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  /** Stop watching. Tasks keep running (they outlive meshd by design); the next open adopts them. */
  close(): void {
    this.closed = true;
    if (this.poller) clearInterval(this.poller);
    this.poller = undefined;
    this.listeners.clear();
    // While open, watched children keep the event loop alive (an exit is an event we owe to
    // listeners); once closed, meshd may exit while they run.
    for (const t of this.tasks.values()) t.child?.unref();
  }

  // ---- internals ----------------------------------------------------------------------------

  private must(id: string, op: string): Task {
    const t = this.tasks.get(id);
    if (!t) {
      throw new MeshError('ENOTFOUND', `${op} task ${id}: no such task on this node`);
    }
    if (this.closed) throw new MeshError('EINTERNAL', `${op} task ${id}: runtime is closed`);
    return t;
  }

  /** Run `fn` after every earlier operation on the same task has settled. */
  private serial<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(id) ?? Promise.resolve();
    const next = prev.then(fn);
    const tail = next.then(
      () => undefined,
      () => undefined,
    );
    this.locks.set(id, tail);
    void tail.then(() => {
      if (this.locks.get(id) === tail) this.locks.delete(id);
    });
    return next;
  }

  private async stopLocked(task: Task, graceMs: number): Promise<void> {
    const rec = task.rec;
    if (rec.state !== 'running' || rec.pid === undefined) return;
    const pid = rec.pid;
    const run = task.run;
    // Never signal a pid we cannot prove is still ours.
    if (!this.stillOurs(task)) {
      this.exited(task, run, null, null);
      return;
    }
    signal(-pid, 'SIGTERM');
    if (!(await this.waitGone(task, run, graceMs))) {
      this.log.warn('task ignored SIGTERM; killing it', { task: rec.id, pid, graceMs });
      if (this.stillOurs(task)) signal(-pid, 'SIGKILL');
      if (!(await this.waitGone(task, run, KILL_WAIT_MS))) {
        throw new MeshError(
          'ETASK',
          `stop task ${rec.id}: process ${pid} still exists ${KILL_WAIT_MS} ms after SIGKILL (stuck in the kernel? see /proc/${pid}/stack)`,
        );
      }
    }
  }

  /** The recorded process of a running task still exists and is the one we started. */
  private stillOurs(task: Task): boolean {
    const { pid, startTime } = task.rec;
    if (pid === undefined || startTime === undefined) return false;
    if (task.child && task.child.exitCode === null && task.child.signalCode === null) {
      // Our unreaped child: the pid cannot have been reused.
      return true;
    }
    return procAlive(pid, startTime);
  }

  /** Wait (bounded) until run `run` of the task has exited; true if it has. */
  private async waitGone(task: Task, run: number, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    for (let i = 0; i <= ms / STOP_POLL_MS + 1; i++) {
      if (task.run !== run || task.rec.state !== 'running') return true;
      if (!task.child && !this.stillOurs(task)) {
        this.exited(task, run, null, null);
        return true;
      }
      if (Date.now() >= deadline) return false;
      await sleep(STOP_POLL_MS);
    }
    return false;
  }

  private exited(task: Task, run: number, exitCode: number | null, sig: string | null): void {
    const rec = task.rec;
    if (task.run !== run || rec.state !== 'running') return;
    rec.state = 'exited';
    rec.exitCode = exitCode;
    rec.signal = sig;
    rec.finishedAt = new Date().toISOString();
    const adopted = task.adopted;
    task.adopted = false;
    task.child = undefined;
    // The task is its main process. What it started and left behind (a shell's background
    // job, a daemon that left the group) is still in its namespace, where nothing else runs:
    // it goes too, so a restart never runs beside remnants of the previous run.
    this.killNetnsProcs(rec.netns);
    try {
      this.save();
    } catch (e) {
      this.log.error('cannot save task state', { task: rec.id, err: e });
    }
    this.log.info('task exited', { task: rec.id, pid: rec.pid, exitCode, signal: sig });
    const ev: ExitEvent = {
      id: rec.id,
      exitCode,
      signal: sig,
      finishedAt: rec.finishedAt,
      adopted,
    };
    for (const cb of [...this.listeners]) {
      try {
        cb(ev);
      } catch (e) {
        this.log.error('exit listener failed', { task: rec.id, err: e });
      }
    }
    this.updatePoller();
  }

  private adopt(): void {
    let changed = false;
    const owned = new Set<string>();
    /** Namespaces of tasks with no live process: nothing may run in them. */
    const idle: string[] = [];
    for (const task of this.tasks.values()) {
      const rec = task.rec;
      owned.add(rec.netns);
      if (rec.state !== 'running') {
        // `created` with a process inside: meshd died between spawn and saving the pid.
        idle.push(rec.netns);
        continue;
      }
      if (rec.pid !== undefined && rec.startTime && procAlive(rec.pid, rec.startTime)) {
        task.adopted = true;
        this.log.info('task adopted', { task: rec.id, pid: rec.pid });
        continue;
      }
      rec.state = 'exited';
      rec.exitCode = null;
      rec.signal = null;
      rec.finishedAt = new Date().toISOString();
      idle.push(rec.netns);
      changed = true;
      this.log.info('task exited while meshd was away', { task: rec.id, pid: rec.pid });
    }
    const head = `${this.prefix}mesh-t-`;
    const stale = netnsList().filter((n) => n.startsWith(head) && !owned.has(n));
    // One pass over /proc for every namespace that must be empty.
    const inos = new Map<number, string>();
    for (const name of [...idle, ...stale]) {
      try {
        inos.set(statSync(nsPath(name)).ino, name);
      } catch {
        // namespace gone (a reboot): start() says so
      }
    }
    for (const [ino, pids] of pidsByNetns(new Set(inos.keys()))) {
      let n = 0;
      for (const pid of pids) if (signal(pid, 'SIGKILL')) n++;
      this.log.info('killed leftover processes', { netns: inos.get(ino), count: n });
    }
    for (const name of stale) {
      this.log.info('removing stale task namespace', { netns: name });
      netnsDelete(name, { ifExists: true });
    }
    if (changed) this.save();
    this.updatePoller();
  }

  private updatePoller(): void {
    const need = !this.closed && [...this.tasks.values()].some((t) => t.adopted);
    if (need && !this.poller) {
      this.poller = setInterval(() => this.poll(), this.pollMs);
    } else if (!need && this.poller) {
      clearInterval(this.poller);
      this.poller = undefined;
    }
  }

  private poll(): void {
    for (const task of this.tasks.values()) {
      if (task.adopted && task.rec.state === 'running' && !this.stillOurs(task)) {
        this.exited(task, task.run, null, null);
      }
    }
  }

  /** SIGKILL every process in one of our namespaces. */
  private killNetnsProcs(name: string): number {
    let ino: number;
    try {
      ino = statSync(nsPath(name)).ino;
    } catch {
      return 0;
    }
    let n = 0;
    for (const pid of pidsInNetns(ino)) if (signal(pid, 'SIGKILL')) n++;
    if (n > 0) this.log.info('killed leftover processes', { netns: name, count: n });
    return n;
  }

  private destroyNetns(name: string): void {
    this.killNetnsProcs(name);
    netnsDelete(name, { ifExists: true });
  }

  private load(): TaskRecord[] {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    const bad = (detail: string): MeshError =>
      new MeshError(
        'EDATA',
        `open task state ${this.file}: ${detail}; move the file aside to start with no tasks (their namespaces and processes are then removed as stale)`,
      );
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch {
      throw bad('not valid JSON');
    }
    const f = v as Partial<StateFile> | null;
    if (!f || f.version !== 1 || !Array.isArray(f.tasks)) throw bad('unknown format');
    for (const r of f.tasks) {
      if (
        !r ||
        typeof r.id !== 'string' ||
        !ID_RE.test(r.id) ||
        typeof r.netns !== 'string' ||
        !Array.isArray(r.cmd) ||
        !['created', 'running', 'exited'].includes(r.state)
      ) {
        throw bad(`bad task record ${JSON.stringify(r)}`);
      }
      r.env ??= {};
      r.cwd ??= '/';
      r.restarts ??= 0;
    }
    return f.tasks;
  }

  /** Replace tasks.json atomically: a crash leaves the old or the new file, never a mix. */
  private save(): void {
    const f: StateFile = { version: 1, tasks: [...this.tasks.values()].map((t) => t.rec) };
    const tmp = `${this.file}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      const buf = Buffer.from(JSON.stringify(f, null, 1) + '\n');
      let off = 0;
      while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.file);
    const dfd = openSync(this.stateDir, 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  }
}

function nsPath(name: string): string {
  return `${NETNS_RUN_DIR}/${name}`;
}

function checkSpec(spec: TaskSpec): void {
  const id = typeof spec?.id === 'string' ? spec.id : '?';
  const bad = (detail: string): MeshError =>
    new MeshError('EUSAGE', `create task ${id}: ${detail}`);
  if (typeof spec?.id !== 'string' || !ID_RE.test(spec.id)) {
    throw bad('id must be 1-128 characters of A-Z a-z 0-9 _ . - (starting with a letter or digit)');
  }
  if (typeof spec.name !== 'string') throw bad('name must be a string');
  if (
    !Array.isArray(spec.cmd) ||
    spec.cmd.length === 0 ||
    !spec.cmd.every((a) => typeof a === 'string') ||
    spec.cmd[0] === ''
  ) {
    throw bad('cmd must be a non-empty list of strings (the program, then its arguments)');
  }
  for (const [k, v] of Object.entries(spec.env ?? {})) {
    if (k === '' || k.includes('=') || k.includes('\0') || typeof v !== 'string') {
      throw bad(`env ${JSON.stringify(k)}: want NAME=string without '=' or NUL in NAME`);
    }
  }
  if (spec.cwd !== undefined && (typeof spec.cwd !== 'string' || !spec.cwd.startsWith('/'))) {
    throw bad(`cwd ${JSON.stringify(spec.cwd)}: want an absolute path`);
  }
}

function info(t: Task): TaskInfo {
  const r = t.rec;
  const out: TaskInfo = {
    id: r.id,
    name: r.name,
    state: r.state,
    cmd: [...r.cmd],
    netns: r.netns,
    netnsPath: nsPath(r.netns),
    restarts: r.restarts,
    adopted: t.adopted,
  };
  if (r.pid !== undefined) out.pid = r.pid;
  if (r.exitCode !== undefined) out.exitCode = r.exitCode;
  if (r.signal !== undefined) out.signal = r.signal;
  if (r.startedAt !== undefined) out.startedAt = r.startedAt;
  if (r.finishedAt !== undefined) out.finishedAt = r.finishedAt;
  return out;
}
