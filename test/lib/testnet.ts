/**
 * Namespaced test hosts: N network namespaces ("hosts") each with an `eth0` on a shared bridge
 * that lives in its own "switch" namespace, underlay addresses in 198.18.0.0/15. Nothing is
 * created in the caller's namespace, so tests cannot disturb the machine or each other.
 *
 * Clean-up is guaranteed three ways: `destroy()` (tests call it from t.teardown), a process
 * exit hook for nets still alive when the process ends, and `sweepStale()` which removes the
 * namespaces (and kills the processes inside) of earlier test processes that died without
 * cleaning up: test namespace names carry the owning pid (`mt-<pid>-<n>-…`).
 * Used by tests and by scripts/testnet and the demo.
 */
import {
  spawnSync,
  type ChildProcess,
  type SpawnOptions,
  type SpawnSyncReturns,
} from 'node:child_process';
import { readdirSync, readlinkSync, statSync } from 'node:fs';
import {
  NETLINK_ROUTE,
  NetlinkSocket,
  addrAdd,
  linkAdd,
  linkSet,
  linkSetUp,
  netnsCreate,
  netnsDelete,
  netnsList,
  spawnInNetns,
  type Netns,
} from '../../src/netlink/index.js';

export interface TestHost {
  /** Namespace name (`ip netns exec NAME …`). */
  name: string;
  /** 1-based host number. */
  index: number;
  ns: Netns;
  /** Underlay address of eth0, e.g. 198.18.0.1. */
  addr: string;
  /** The same with its prefix length. */
  cidr: string;
  /** A NETLINK_ROUTE socket inside the host. */
  rt: NetlinkSocket;
  /** Run a command inside the host and wait for it (`ip netns exec`). */
  exec(
    cmd: string,
    args?: readonly string[],
    opts?: { input?: string; timeoutMs?: number },
  ): SpawnSyncReturns<string>;
  /** Run a command inside the host; throw with its stderr unless it exits 0. Returns stdout. */
  run(cmd: string, args?: readonly string[], opts?: { input?: string; timeoutMs?: number }): string;
  /** Start a long-running process inside the host; destroy() kills it if still running. */
  spawn(cmd: string, args: readonly string[], opts?: SpawnOptions): ChildProcess;
}

export interface TestNetOptions {
  hosts: number;
  /** Name prefix. Default: `mt-<pid>-<n>` (swept when this process is gone). */
  prefix?: string;
  /** Underlay MTU. @default 1500 */
  mtu?: number;
}

const live = new Set<TestNet>();
let counter = 0;
let hooked = false;

function installExitHook(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const n of [...live]) n.destroy();
  });
}

/** Inode of a namespace file, to find the processes inside it. */
function nsInode(path: string): number | undefined {
  try {
    return statSync(path).ino;
  } catch {
    return undefined;
  }
}

/** Kill every process whose network namespace is `path` (what `ip netns pids` finds). */
export function killNetnsProcs(path: string): number {
  const ino = nsInode(path);
  if (ino === undefined) return 0;
  const want = `net:[${ino}]`;
  let killed = 0;
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      if (readlinkSync(`/proc/${d}/ns/net`) === want) {
        process.kill(Number(d), 'SIGKILL');
        killed++;
      }
    } catch {
      // raced with exit, or not ours to read
    }
  }
  return killed;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Remove test namespaces left by test processes that no longer exist. Returns how many. */
export function sweepStale(): number {
  let n = 0;
  for (const name of netnsList()) {
    const m = /^mt-(\d+)-\d+-/.exec(name);
    if (!m || pidAlive(Number(m[1]))) continue;
    killNetnsProcs(`/run/netns/${name}`);
    netnsDelete(name, { ifExists: true });
    n++;
  }
  return n;
}

/** Remove every namespace with this prefix (`PREFIX-…`), killing what runs inside. */
export function destroyByPrefix(prefix: string): number {
  let n = 0;
  for (const name of netnsList()) {
    if (!name.startsWith(`${prefix}-`)) continue;
    killNetnsProcs(`/run/netns/${name}`);
    netnsDelete(name, { ifExists: true });
    n++;
  }
  return n;
}

export class TestNet {
  readonly prefix: string;
  readonly hosts: TestHost[] = [];
  readonly switchName: string;
  private readonly switchNs: Netns;
  private readonly sw: NetlinkSocket;
  private readonly mtu: number;
  private readonly children = new Set<ChildProcess>();
  private destroyed = false;

  private constructor(opts: TestNetOptions) {
    this.prefix = opts.prefix ?? `mt-${process.pid}-${++counter}`;
    this.mtu = opts.mtu ?? 1500;
    this.switchName = `${this.prefix}-sw`;
    this.switchNs = netnsCreate(this.switchName);
    this.sw = NetlinkSocket.open(NETLINK_ROUTE, { netns: this.switchNs });
    linkSetUp(this.sw, 'lo');
    linkAdd(this.sw, { kind: 'bridge', name: 'br-underlay', up: true, mtu: this.mtu });
  }

  /** Create a net of `opts.hosts` hosts. Call destroy() when done (testnet() does it for tap). */
  static create(opts: TestNetOptions): TestNet {
    installExitHook();
    sweepStale();
    const net = new TestNet(opts);
    live.add(net);
    try {
      for (let i = 0; i < opts.hosts; i++) net.addHost();
    } catch (e) {
      net.destroy();
      throw e;
    }
    return net;
  }

  /** Add one more host on the same bridge; returns it. */
  addHost(): TestHost {
    const index = this.hosts.length + 1;
    if (index > 250) throw new Error('testnet: at most 250 hosts per net');
    const name = `${this.prefix}-h${index}`;
    const ns = netnsCreate(name);
    const rt = NetlinkSocket.open(NETLINK_ROUTE, { netns: ns });
    linkSetUp(rt, 'lo');
    // The switch end stays in the switch namespace; the host end is created directly inside
    // the host as eth0.
    linkAdd(this.sw, {
      kind: 'veth',
      name: `h${index}`,
      mtu: this.mtu,
      master: 'br-underlay',
      up: true,
      peer: { name: 'eth0', netns: ns, mtu: this.mtu },
    });
    const addr = `198.18.0.${index}`;
    const cidr = `${addr}/24`;
    addrAdd(rt, 'eth0', cidr);
    linkSet(rt, 'eth0', { up: true });
    const exec = (
      cmd: string,
      args: readonly string[] = [],
      o: { input?: string; timeoutMs?: number } = {},
    ) =>
      spawnSync('ip', ['netns', 'exec', name, cmd, ...args], {
        encoding: 'utf8',
        input: o.input,
        timeout: o.timeoutMs ?? 30_000,
      });
    const host: TestHost = {
      name,
      index,
      ns,
      addr,
      cidr,
      rt,
      exec,
      run: (cmd, args = [], o = {}) => {
        const r = exec(cmd, args, o);
        if (r.status !== 0) {
          throw new Error(
            `${name}: ${cmd} ${args.join(' ')} exited ${r.status ?? r.signal}: ${r.stderr.trim()}`,
          );
        }
        return r.stdout;
      },
      spawn: (cmd, args, o = {}) => {
        // setns(2) only, not `ip netns exec`: that also unshares the mount namespace, and
        // namespaces a meshd creates (bind mounts under /run/netns) would then be invisible
        // outside it.
        const child = spawnInNetns(ns, cmd, args, o);
        this.children.add(child);
        child.on('exit', () => this.children.delete(child));
        return child;
      },
    };
    this.hosts.push(host);
    return host;
  }

  /** Take a host off the network (its eth0 goes down on the switch side) without deleting it. */
  cut(host: TestHost): void {
    linkSet(this.sw, `h${host.index}`, { up: false });
  }

  /** Reconnect a host cut by cut(). */
  heal(host: TestHost): void {
    linkSet(this.sw, `h${host.index}`, { up: true });
  }

  /** Keep the namespaces after this process ends (scripts/testnet): close our handles only. */
  release(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    live.delete(this);
    this.closeHandles();
  }

  private closeHandles(): void {
    for (const h of this.hosts) {
      h.rt.close();
      h.ns.close();
    }
    this.sw.close();
    this.switchNs.close();
  }

  /** Kill everything running in the hosts and remove every namespace. Safe to call twice. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    live.delete(this);
    for (const c of this.children) c.kill('SIGKILL');
    this.closeHandles();
    destroyByPrefix(this.prefix);
  }
}

/** A TestNet torn down when the tap test `t` ends, however it ends. */
export function testnet(t: { teardown(fn: () => void): void }, opts: TestNetOptions): TestNet {
  const net = TestNet.create(opts);
  t.teardown(() => net.destroy());
  return net;
}
