/**
 * Running a tool (nft, ipvsadm) with a script on stdin, optionally inside a network namespace.
 * One place for what every caller needs: the tool may exit before reading its stdin (a bad
 * flag, a killed child), which makes the write fail with EPIPE; that is reported by its exit
 * status, and must never reach the process as an unhandled 'error' event (it killed meshd once).
 */
import { spawn, type ChildProcess } from 'node:child_process';

/**
 * A network namespace the tool is spawned from. util/ imports nothing of ours, so it names only
 * the one thing it needs; netlink's `Netns` is one (`run` = withNetns).
 */
export interface SpawnNamespace {
  /** Run `fn` synchronously with the calling thread inside the namespace. */
  run<T>(fn: () => T): T;
}

export interface ToolResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** Killed at `timeoutMs`. */
  timedOut: boolean;
}

export interface ToolOptions {
  /** Run the tool inside this namespace (spawned from it: the child inherits it). */
  netns?: SpawnNamespace;
  /** Fed on stdin, which is then closed. */
  input?: string;
  /** SIGKILL the tool after this long (its result then has code null). */
  timeoutMs?: number;
}

/** Run `cmd args`; resolves with its exit status and output, rejects only if it cannot start. */
export function runTool(
  cmd: string,
  args: readonly string[],
  opts: ToolOptions = {},
): Promise<ToolResult> {
  const start = (): ChildProcess => spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  return collectChild(opts.netns ? opts.netns.run(start) : start(), opts);
}

/**
 * Feed a spawned child its input and gather its output until it closes (SIGKILL at
 * `timeoutMs`); rejects only if it could not start.
 */
export function collectChild(
  child: ChildProcess,
  opts: Omit<ToolOptions, 'netns'> = {},
): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, opts.timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({
        code,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        timedOut,
      });
    });
    child.stdin?.on('error', () => {
      // The tool exited before reading all of its input; its exit status says why.
    });
    child.stdin?.end(opts.input ?? '');
  });
}
