/**
 * Helpers for gossip tests in namespaces: run Debian's `serf agent` or our gossip-agent
 * (dist/src/gossip/agent-main.js) inside a test host, read their member lists, poll with a
 * bound. Each host has its own loopback, so serf's RPC on 127.0.0.1:7373 is per host.
 * Processes are started with `host.spawn`, so TestNet.destroy() kills them whatever happens.
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import type { TestHost } from './testnet.js';

export const RPC = '127.0.0.1:7373';

/** A fresh AES-256 gossip key, base64 (what `serf agent -encrypt` takes). */
export function newKey(): string {
  return randomBytes(32).toString('base64');
}

export interface Agent {
  name: string;
  host: TestHost;
  proc: ChildProcess;
  /** Everything the process printed so far (stdout and stderr). */
  log(): string;
  /** SIGKILL: a crash, no leave. */
  kill(): void;
}

function capture(proc: ChildProcess): () => string {
  const chunks: string[] = [];
  let size = 0;
  const add = (b: Buffer) => {
    if (size > 4_000_000) return;
    size += b.length;
    chunks.push(b.toString('utf8'));
  };
  proc.stdout?.on('data', add);
  proc.stderr?.on('data', add);
  return () => chunks.join('');
}

/** `serf agent` bound to the host's underlay address, RPC on the host's loopback. */
export function startSerf(
  host: TestHost,
  name: string,
  o: { join?: string; key?: string } = {},
): Agent {
  const args = ['agent', '-node', name, '-bind', `${host.addr}:7946`, '-rpc-addr', RPC];
  if (o.key) args.push('-encrypt', o.key);
  if (o.join) args.push('-join', `${o.join}:7946`);
  const proc = host.spawn('serf', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  return { name, host, proc, log: capture(proc), kill: () => proc.kill('SIGKILL') };
}

export interface SerfMember {
  name: string;
  addr: string;
  status: string;
}

/** `serf members -format json` inside the host; [] if the agent does not answer. */
export function serfMembers(host: TestHost): SerfMember[] {
  const r = host.exec('serf', ['members', '-rpc-addr', RPC, '-format', 'json'], {
    timeoutMs: 5000,
  });
  if (r.status !== 0) return [];
  try {
    return (JSON.parse(r.stdout) as { members: SerfMember[] }).members;
  } catch {
    return [];
  }
}

/** `serf keys -install|-use|-remove KEY` inside the host: exit status and output. */
export function serfKeys(
  host: TestHost,
  op: 'install' | 'use' | 'remove',
  key: string,
): { status: number | null; out: string } {
  const r = host.exec('serf', ['keys', '-rpc-addr', RPC, `-${op}`, key], { timeoutMs: 15_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}`.trim() };
}

export interface OurMember {
  name: string;
  addr: string;
  state: string;
  incarnation: number;
}

export interface OurAgent extends Agent {
  statusFile: string;
  /** Members from the status file ([] before the first write). */
  members(): OurMember[];
  /** Sends one JSON command on stdin and waits (bounded) for its reply line. */
  command(cmd: object, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Full status object from the status file. */
  status(): Record<string, unknown> | null;
}

const AGENT = fileURLToPath(new URL('../../src/gossip/agent-main.js', import.meta.url));

/** Our gossip-agent in the host, bound to its underlay address. */
export function startOurs(
  host: TestHost,
  name: string,
  o: { join?: string[]; key?: string; port?: number; extra?: string[] } = {},
): OurAgent {
  const dir = mkdtempSync(join(tmpdir(), 'mesh-gossip-'));
  const statusFile = join(dir, 'status.json');
  const args = [AGENT, '--name', name, '--bind', `${host.addr}:${o.port ?? 7946}`];
  for (const j of o.join ?? []) args.push('--join', j);
  if (o.key) args.push('--key', o.key);
  args.push('--status-file', statusFile, ...(o.extra ?? []));
  const proc = host.spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  proc.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const log = capture(proc);
  const waiters: { op: string; fn: (v: Record<string, unknown>) => void }[] = [];
  if (proc.stdout) {
    createInterface({ input: proc.stdout }).on('line', (line) => {
      let v: Record<string, unknown>;
      try {
        v = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      if (typeof v.reply !== 'string') return;
      const i = waiters.findIndex((w) => w.op === v.reply || v.reply === 'error');
      if (i >= 0) waiters.splice(i, 1)[0]?.fn(v);
    });
  }
  const status = (): Record<string, unknown> | null => {
    try {
      return JSON.parse(readFileSync(statusFile, 'utf8')) as Record<string, unknown>;
    } catch {
      return null;
    }
  };
  return {
    name,
    host,
    proc,
    log,
    statusFile,
    kill: () => proc.kill('SIGKILL'),
    status,
    members: () => (status()?.members as OurMember[] | undefined) ?? [],
    command: (cmd, timeoutMs = 5000) =>
      new Promise((resolve, reject) => {
        const op = (cmd as { op: string }).op;
        const t = setTimeout(
          () => reject(new Error(`gossip-agent ${name}: no reply to ${op}`)),
          timeoutMs,
        );
        waiters.push({
          op,
          fn: (v) => {
            clearTimeout(t);
            resolve(v);
          },
        });
        proc.stdin?.write(`${JSON.stringify(cmd)}\n`);
      }),
  };
}

/** Polls `check` every `everyMs` until it returns true or `timeoutMs` passes; returns ms taken or -1. */
export async function waitFor(
  check: () => boolean,
  timeoutMs: number,
  everyMs = 100,
): Promise<number> {
  const t0 = Date.now();
  for (let i = 0; i < Math.ceil(timeoutMs / everyMs) + 1; i++) {
    let ok: boolean;
    try {
      ok = check();
    } catch {
      ok = false;
    }
    if (ok) return Date.now() - t0;
    if (Date.now() - t0 >= timeoutMs) break;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return -1;
}

/** `name → state` from a member list (serf's `status` or ours' `state`). */
export function stateMap(
  ms: readonly { name: string; status?: string; state?: string }[],
): Map<string, string> {
  return new Map(ms.map((m) => [m.name, m.status ?? m.state ?? '?']));
}

/** True when every name in `names` is in `ms` with `state`. */
export function allIn(
  ms: readonly { name: string; status?: string; state?: string }[],
  names: readonly string[],
  state: string,
): boolean {
  const m = stateMap(ms);
  return names.every((n) => m.get(n) === state);
}

/**
 * Run inside a test host (`node -e`): garbage at a gossip node, then one valid TCP ping
 * written a byte at a time. Prints one JSON line: what was sent and whether the ping's ack came
 * back. Proves the node survives garbage and reassembles a stream from tiny segments.
 */
export async function abuse(host: string, port: number, target: string): Promise<void> {
  const dgram = await import('node:dgram');
  const net = await import('node:net');
  const { encodeMessage, MessageType } = await import('../../src/gossip/wire.js');
  const { sealStream, openStream } = await import('../../src/gossip/packet.js');
  const { encodeStreamMessage, decodeStreamMessage } = await import('../../src/gossip/stream.js');
  const udp = dgram.createSocket('udp4');
  const ping = encodeMessage({
    type: MessageType.ping,
    body: { seqNo: 7, node: target, sourceAddr: new Uint8Array(0), sourcePort: 0, sourceNode: '' },
  });
  let sent = 0;
  for (let i = 0; i < 2000; i++) {
    let b: Buffer;
    if (i % 2 === 0) {
      b = randomBytes(i % 1400);
    } else {
      b = Buffer.from(ping);
      for (let j = 0; j < 1 + (i % 4); j++) {
        const k = (i * 7 + j * 13) % b.length;
        b[k] = (b[k] ?? 0) ^ (1 << (i % 8));
      }
      if (i % 3 === 0) b = Buffer.concat([Buffer.from([7, 2, 0, 200, 0, 1]), b]);
    }
    await new Promise<void>((r) => udp.send(b, port, host, () => r()));
    sent++;
    // Paced so the receiver's socket buffer does not overflow: we want every packet decoded.
    if (i % 50 === 49) await new Promise((r) => setTimeout(r, 10));
  }
  udp.close();
  let tcpGarbage = 0;
  for (let i = 0; i < 20; i++) {
    await new Promise<void>((r) => {
      const c = net.connect({ host, port }, () => c.end(randomBytes(1 + i * 50)));
      c.on('error', () => r());
      c.on('close', () => r());
    });
    tcpGarbage++;
  }
  const req = sealStream(
    encodeStreamMessage({
      type: MessageType.ping,
      body: {
        seqNo: 42,
        node: target,
        sourceAddr: new Uint8Array(0),
        sourcePort: 0,
        sourceNode: '',
      },
    }),
  );
  const ack = await new Promise<string>((resolve) => {
    const c = net.connect({ host, port });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      c.destroy();
      resolve('timeout');
    }, 5000);
    c.on('data', (d: Buffer) => chunks.push(d));
    c.on('error', (e) => resolve(`error ${e.message}`));
    c.on('close', () => {
      clearTimeout(timer);
      try {
        const o = openStream(Buffer.concat(chunks));
        const m = decodeStreamMessage(o.type, o.body);
        resolve(m.type === MessageType.ackResp ? `ack ${m.body.seqNo}` : `type ${m.type}`);
      } catch (e) {
        resolve(`bad reply ${(e as Error).message}`);
      }
    });
    c.on('connect', () => {
      let i = 0;
      const step = () => {
        if (i >= req.length) return;
        c.write(req.subarray(i, i + 1));
        i++;
        setTimeout(step, 2);
      };
      step();
    });
  });
  process.stdout.write(`${JSON.stringify({ sent, tcpGarbage, ack })}\n`);
}

/**
 * Run inside a test host: opens a stream to a gossip node, writes the first bytes of a message
 * and stalls. Prints how long the node took to close it (its per-stream deadline), capped.
 */
export async function stall(host: string, port: number, capMs: number): Promise<void> {
  const net = await import('node:net');
  const t0 = Date.now();
  const how = await new Promise<string>((resolve) => {
    const c = net.connect({ host, port }, () => c.write(Buffer.from([0, 0x86])));
    const timer = setTimeout(() => {
      c.destroy();
      resolve('still open');
    }, capMs);
    c.on('error', () => undefined);
    c.on('close', () => {
      clearTimeout(timer);
      resolve('closed');
    });
    c.resume();
  });
  process.stdout.write(`${JSON.stringify({ how, ms: Date.now() - t0 })}\n`);
}
