/**
 * What the task runtime reads from /proc: a process's state, group, session and start time
 * (proc(5), /proc/<pid>/stat), which processes live in a given network namespace (what
 * `ip netns pids` does) and which ports a namespace listens on. Synchronous, small reads; no
 * knowledge of tasks.
 * May import: node built-ins.
 */
import { closeSync, openSync, readFileSync, readSync, readdirSync, readlinkSync } from 'node:fs';

export interface ProcStat {
  /** Field 3: R, S, D, Z (zombie), X (dead), … */
  state: string;
  /** Field 4. */
  ppid: number;
  /** Field 5: process group id. */
  pgrp: number;
  /** Field 6: session id. */
  session: number;
  /**
   * Field 22: start time in clock ticks since boot, kept as the kernel's decimal text. Together
   * with the pid it names one process for the life of the boot: a reused pid has a later one.
   */
  startTime: string;
}

const statBuf = Buffer.alloc(4096);

/** Parse /proc/<pid>/stat; undefined when the process does not exist (or cannot be read). */
export function readProcStat(pid: number): ProcStat | undefined {
  let s: string;
  try {
    // open + one read into a reused buffer costs a fraction of readFileSync (which stats the
    // file and allocates per call): this runs for every adopted task at every poll. The line
    // is a few hundred bytes (comm is at most 64).
    const fd = openSync(`/proc/${pid}/stat`, 'r');
    try {
      const n = readSync(fd, statBuf, 0, statBuf.length, 0);
      s = statBuf.toString('latin1', 0, n);
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined;
  }
  // Field 2 (comm) is in parentheses and may itself hold spaces and ')': split after the last.
  const end = s.lastIndexOf(')');
  if (end < 0) return undefined;
  const f = s.slice(end + 2).split(' ');
  // f[0] is field 3, so field N is f[N - 3].
  const state = f[0];
  const startTime = f[19];
  if (state === undefined || startTime === undefined) return undefined;
  return {
    state,
    ppid: Number(f[1]),
    pgrp: Number(f[2]),
    session: Number(f[3]),
    startTime,
  };
}

/**
 * True when the process recorded as (pid, startTime) still runs: it exists, was started at
 * that tick (so the pid was not reused) and has not exited (a zombie has exited, it only
 * waits for its parent to collect the status).
 */
export function procAlive(pid: number, startTime: string): boolean {
  const st = readProcStat(pid);
  return st !== undefined && st.startTime === startTime && st.state !== 'Z' && st.state !== 'X';
}

/**
 * Pids of the processes in each of the network namespaces with inodes `inos` (the inode of
 * /run/netns/NAME), except ours. One pass over /proc: bounded by the number of processes.
 */
export function pidsByNetns(inos: ReadonlySet<number>): Map<number, number[]> {
  const out = new Map<number, number[]>();
  if (inos.size === 0) return out;
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const pid = Number(d);
    if (pid === process.pid) continue;
    let link: string;
    try {
      link = readlinkSync(`/proc/${d}/ns/net`);
    } catch {
      continue; // exited meanwhile, or a kernel thread
    }
    const m = /^net:\[(\d+)\]$/.exec(link);
    const ino = m ? Number(m[1]) : NaN;
    if (!inos.has(ino)) continue;
    const list = out.get(ino);
    if (list) list.push(pid);
    else out.set(ino, [pid]);
  }
  return out;
}

/** Pids of the processes in one network namespace (what `ip netns pids NAME` prints). */
export function pidsInNetns(ino: number): number[] {
  return pidsByNetns(new Set([ino])).get(ino) ?? [];
}

/** kill(2) that treats "no such process" as done; returns whether a signal was delivered. */
export function signal(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw e;
  }
}

/**
 * Ports on which a socket of the network namespace of process `pid` accepts `protocol` traffic:
 * TCP sockets in LISTEN, bound UDP sockets, IPv4 and IPv6. /proc/<pid>/net/{tcp,udp}[6] list
 * the sockets of that process's network namespace (proc(5)): one line per socket, the local
 * address as hex `ADDR:PORT`, the state as hex (0A is TCP_LISTEN, include/net/tcp_states.h).
 * Parsed here: two fields of a fixed kernel format (`ss` would cost a process per poll). Empty
 * when the process is gone.
 */
export function listeningPorts(pid: number, protocol: 'tcp' | 'udp'): Set<number> {
  const out = new Set<number>();
  for (const file of [protocol, `${protocol}6`]) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/net/${file}`, 'latin1');
    } catch {
      continue; // exited, or no IPv6 in this kernel
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      const port = f[1]?.split(':')[1];
      if (port === undefined || (protocol === 'tcp' && f[3] !== '0A')) continue;
      out.add(parseInt(port, 16));
    }
  }
  return out;
}
