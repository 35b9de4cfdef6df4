/**
 * Network namespaces: create named ones the way iproute2 does (so `ip netns` lists them), open
 * by name, path or pid, delete, and run synchronous work or spawn a process "inside" one.
 *
 * How we stay safe with setns from Node: setns(2) switches the namespace of the calling thread
 * only. `withNetns()` switches the main thread, runs a *synchronous* function and switches back
 * in a `finally`, so no other JavaScript runs in the window (there is no await inside it; a
 * function that returns a promise is refused). What the function creates keeps its namespace:
 * a socket stays in the namespace it was created in, and a child forked during the window
 * (child_process.spawn forks from the calling thread) starts in it. Work done on libuv's thread
 * pool or koffi's async calls never sees the switch, so neither is ever used inside the window.
 * May import: ./libc, node built-ins, util/.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, unlinkSync } from 'node:fs';
import { MeshError } from '../util/errors.js';
import {
  Errno,
  MNT_DETACH,
  MS_BIND,
  MS_REC,
  MS_SHARED,
  O_CREAT,
  O_EXCL,
  O_RDONLY,
  SyscallError,
  close,
  errnoText,
  mount,
  open,
  setnsNet,
  tryMount,
  umount2,
  unshareNet,
} from './libc.js';

/** Where iproute2 keeps named namespaces (bind mounts of /proc/<pid>/ns/net). */
export const NETNS_RUN_DIR = '/run/netns';

/** Namespace names follow iproute2's rule: a file name, not `.`/`..`, no `/`. */
const NAME_RE = /^[A-Za-z0-9_.-]{1,64}$/;

export class NetnsError extends MeshError {
  readonly errno: number;
  constructor(op: string, what: string, errno: number, hint = '') {
    super('ENETNS', `${op} netns ${what}: ${errnoText(errno)}${hint ? ` (${hint})` : ''}`);
    this.errno = errno;
  }
}

/** An open reference (file descriptor) to a network namespace. Close it when done. */
export class Netns {
  private closed = false;
  constructor(
    readonly fd: number,
    /** What it was opened from, for messages: a name, a path or `pid N`. */
    readonly label: string,
  ) {}

  /** `withNetns(this, fn)`: run `fn` synchronously with the calling thread in this namespace. */
  run<T>(fn: () => T): T {
    return withNetns(this, fn);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    close(this.fd);
  }
}

function pathFor(name: string): string {
  if (!NAME_RE.test(name) || name === '.' || name === '..') {
    throw new MeshError(
      'EUSAGE',
      `open netns ${JSON.stringify(name)}: invalid name (use letters, digits, '.', '_', '-')`,
    );
  }
  return `${NETNS_RUN_DIR}/${name}`;
}

function openPath(path: string, label: string): Netns {
  try {
    return new Netns(open(path, O_RDONLY), label);
  } catch (e) {
    if (e instanceof SyscallError) {
      const hint = e.errno === Errno.ENOENT ? 'no such namespace; see `ip netns list`' : '';
      throw new NetnsError('open', label, e.errno, hint);
    }
    throw e;
  }
}

/**
 * Open a namespace by name (`/run/netns/NAME`), by path, or by process id.
 * Equivalent to: `ip netns exec NAME …` resolving NAME, or `nsenter --net=PATH` / `-t PID`.
 */
export function netnsOpen(ref: string | { path: string } | { pid: number }): Netns {
  if (typeof ref === 'string') return openPath(pathFor(ref), ref);
  if ('path' in ref) return openPath(ref.path, ref.path);
  return openPath(`/proc/${ref.pid}/ns/net`, `pid ${ref.pid}`);
}

/** The namespace of the calling thread (normally the host's, for meshd). */
export function netnsCurrent(): Netns {
  return openPath('/proc/thread-self/ns/net', 'current');
}

/**
 * Run `fn` synchronously with the calling thread inside `ns`, then switch back.
 * `fn` must not be async (see the module header for why); a returned promise is refused.
 */
export function withNetns<T>(ns: Netns, fn: () => T): T {
  const home = openPath('/proc/thread-self/ns/net', 'current');
  try {
    setnsNet(ns.fd, `netns ${ns.label}`);
    try {
      const r = fn();
      if (
        r !== null &&
        typeof r === 'object' &&
        typeof (r as { then?: unknown }).then === 'function'
      ) {
        throw new Error(
          'withNetns: the function returned a promise; only synchronous work may run inside a namespace switch',
        );
      }
      return r;
    } finally {
      // Failing to return home would leave every later socket in the wrong namespace: crash.
      setnsNet(home.fd, 'back to the original netns');
    }
  } finally {
    home.close();
  }
}

/** Make /run/netns a shared mount point as iproute2 does, so namespaces mounted later propagate. */
function prepareRunDir(): void {
  mkdirSync(NETNS_RUN_DIR, { recursive: true, mode: 0o755 });
  let e = tryMount('', NETNS_RUN_DIR, 'none', MS_SHARED | MS_REC);
  if (e === Errno.EINVAL) {
    // Not a mount point yet: bind it onto itself, then make it shared.
    mount(NETNS_RUN_DIR, NETNS_RUN_DIR, 'none', MS_BIND | MS_REC);
    e = tryMount('', NETNS_RUN_DIR, 'none', MS_SHARED | MS_REC);
  }
  if (e !== 0)
    throw new NetnsError('prepare', NETNS_RUN_DIR, e, 'meshd needs root (CAP_SYS_ADMIN)');
}

/**
 * Create a named network namespace and return an open handle to it. Its `lo` is down, as with
 * iproute2; bring it up with `linkSetUp(h, 'lo')` (tasks and load-balancer namespaces need it).
 * Equivalent to: `ip netns add NAME`.
 */
export function netnsCreate(name: string): Netns {
  const path = pathFor(name);
  prepareRunDir();
  let fd: number;
  try {
    fd = open(path, O_RDONLY | O_CREAT | O_EXCL, 0);
  } catch (e) {
    if (e instanceof SyscallError) {
      const hint =
        e.errno === Errno.EEXIST
          ? 'a namespace of that name exists; delete it with `ip netns del`'
          : '';
      throw new NetnsError('create', name, e.errno, hint);
    }
    throw e;
  }
  close(fd);
  const home = openPath('/proc/thread-self/ns/net', 'current');
  try {
    unshareNet();
    try {
      mount('/proc/thread-self/ns/net', path, 'none', MS_BIND);
    } finally {
      setnsNet(home.fd, 'back to the original netns');
    }
  } catch (e) {
    try {
      unlinkSync(path);
    } catch {
      // best effort: the mount point file may already be gone
    }
    if (e instanceof SyscallError) throw new NetnsError('create', name, e.errno);
    throw e;
  } finally {
    home.close();
  }
  return openPath(path, name);
}

/**
 * Delete a named namespace: unmount and remove its file. Processes still inside keep it alive
 * until they exit. Missing namespaces are not an error when `ifExists` is set.
 * Equivalent to: `ip netns del NAME`.
 */
export function netnsDelete(name: string, opts: { ifExists?: boolean } = {}): void {
  const path = pathFor(name);
  if (!existsSync(path)) {
    if (opts.ifExists) return;
    throw new NetnsError(
      'delete',
      name,
      Errno.ENOENT ?? 2,
      'no such namespace; see `ip netns list`',
    );
  }
  const e = umount2(path, MNT_DETACH);
  if (e !== 0 && e !== Errno.EINVAL) throw new NetnsError('delete', name, e);
  try {
    unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** Names of the namespaces under /run/netns. Equivalent to: `ip netns list`. */
export function netnsList(): string[] {
  try {
    return readdirSync(NETNS_RUN_DIR).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/**
 * Start a process inside `ns`. The child is forked while the main thread is switched into the
 * namespace, so it starts there; /sys and /etc/netns are not remounted (unlike
 * `ip netns exec`): tools that read sysfs see the host's view.
 * Equivalent to: `ip netns exec NAME CMD ARGS…` (without the sysfs remount).
 */
export function spawnInNetns(
  ns: Netns,
  cmd: string,
  args: readonly string[],
  opts: SpawnOptions = {},
): ChildProcess {
  return withNetns(ns, () => spawn(cmd, args, opts));
}
