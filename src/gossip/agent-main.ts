#!/usr/bin/env node
/**
 * gossip-agent: one gossip node as a process, for tests and benchmarks (next to serf agents in
 * network namespaces). Not the daemon: meshd will wire Memberlist in itself.
 *
 *   node dist/src/gossip/agent-main.js --name N --bind IP[:PORT] [--join IP[:PORT]]…
 *        [--key BASE64]… [--status-file F] [--preset lan|local|wan] [--reconnect-ms MS]
 *
 * stdout: one JSON object per line: `{"ev":"ready",…}`, then every core event (`state`,
 * `join`, `leave`, `joinDone`, …) and the replies to commands. stdin: one JSON command per line:
 * `{"op":"status"}`, `{"op":"install"|"use"|"remove","key":"BASE64"}`, `{"op":"leave"}` (graceful
 * leave, then exit 0). SIGINT = leave and exit; SIGTERM = exit without leaving (as serf).
 * The status file (written atomically on every membership change and every second) holds
 * `status()`: members with state and incarnation, health, key ids, counters.
 * May import node:* and the gossip modules.
 */

import { realpathSync, renameSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { MeshError, UsageError } from '../util/errors.js';
import { LAN_CONFIG, LOCAL_CONFIG, WAN_CONFIG, type SwimConfig } from './config.js';
import { Keyring } from './keyring.js';
import { Memberlist, keyFromBase64 } from './memberlist.js';
import type { SwimEvent } from './swim.js';

interface Args {
  name: string;
  host: string;
  port: number;
  join: string[];
  keys: Uint8Array[];
  statusFile: string | null;
  config: SwimConfig;
  reconnectMs: number;
}

function hostPort(s: string, what: string): { host: string; port: number } {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})(?::(\d{1,5}))?$/.exec(s);
  if (!m) throw new UsageError(`parse ${what} ${JSON.stringify(s)}: want IPv4[:PORT]`);
  const port = m[2] === undefined ? 7946 : Number(m[2]);
  if (port > 65535) throw new UsageError(`parse ${what} ${JSON.stringify(s)}: port above 65535`);
  return { host: m[1] as string, port };
}

export function parseArgs(argv: readonly string[]): Args {
  const a: Args = {
    name: '',
    host: '',
    port: 7946,
    join: [],
    keys: [],
    statusFile: null,
    config: LAN_CONFIG,
    reconnectMs: 10_000,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i] as string;
    const val = argv[i + 1];
    if (val === undefined) throw new UsageError(`gossip-agent: ${flag} needs a value`);
    i++;
    switch (flag) {
      case '--name':
        a.name = val;
        break;
      case '--bind': {
        const hp = hostPort(val, '--bind');
        a.host = hp.host;
        a.port = hp.port;
        break;
      }
      case '--join': {
        const hp = hostPort(val, '--join');
        a.join.push(`${hp.host}:${hp.port}`);
        break;
      }
      case '--key':
        a.keys.push(keyFromBase64(val));
        break;
      case '--status-file':
        a.statusFile = val;
        break;
      case '--preset':
        if (val === 'lan') a.config = LAN_CONFIG;
        else if (val === 'local') a.config = LOCAL_CONFIG;
        else if (val === 'wan') a.config = WAN_CONFIG;
        else throw new UsageError(`gossip-agent: --preset ${val}: want lan, local or wan`);
        break;
      case '--reconnect-ms':
        a.reconnectMs = Number(val);
        if (!Number.isInteger(a.reconnectMs) || a.reconnectMs < 0)
          throw new UsageError(`gossip-agent: --reconnect-ms ${val}: want an integer >= 0`);
        break;
      default:
        throw new UsageError(`gossip-agent: unknown flag ${flag}`);
    }
  }
  if (a.name === '' || a.host === '')
    throw new UsageError('gossip-agent: --name and --bind are required');
  return a;
}

function out(obj: object): void {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function eventLine(e: SwimEvent): object {
  switch (e.type) {
    case 'join':
    case 'leave':
    case 'update':
      return { ev: e.type, name: e.node.name, incarnation: e.node.incarnation };
    case 'user':
    case 'remoteState':
      return {
        ev: e.type,
        from: e.from,
        bytes: e.type === 'user' ? e.payload.length : e.state.length,
      };
    case 'conflict':
      return { ev: e.type, name: e.existing.name };
    default:
      return { ev: e.type, ...e, type: undefined };
  }
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const [primary, ...others] = args.keys;
  const keyring = primary ? new Keyring(primary, others) : null;
  const ml = await Memberlist.create({
    name: args.name,
    bindAddr: args.host,
    port: args.port,
    config: args.config,
    keyring,
  });
  const writeStatus = () => {
    if (!args.statusFile) return;
    const tmp = `${args.statusFile}.tmp`;
    writeFileSync(tmp, JSON.stringify(ml.status()));
    renameSync(tmp, args.statusFile);
  };
  ml.on('event', (e: SwimEvent) => {
    // Gossip user messages (serf's own protocol) arrive several times a second: not logged.
    if (e.type !== 'user' && e.type !== 'pingComplete' && e.type !== 'remoteState')
      out(eventLine(e));
    if (e.type === 'state' || e.type === 'join' || e.type === 'leave') writeStatus();
  });
  out({ ev: 'ready', name: args.name, addr: ml.address });
  writeStatus();
  const statusTimer = setInterval(writeStatus, 1000);

  let exiting = false;
  const exit = async (leave: boolean, code: number) => {
    if (exiting) return;
    exiting = true;
    clearInterval(statusTimer);
    clearInterval(reconnect);
    if (leave) out({ ev: 'left', complete: await ml.leave(5000) });
    writeStatus();
    await ml.shutdown();
    rl.close();
    // libuv frees closed handles on a later loop turn; look after that.
    await new Promise((r) => setTimeout(r, 50));
    // What is still open after shutdown: tests assert no socket or timer of ours is left.
    const open = process
      .getActiveResourcesInfo()
      .filter((r) => r !== 'TTYWrap' && r !== 'PipeWrap' && r !== 'FSReqCallback');
    out({ ev: 'exit', open, streams: ml.transport.openStreams });
    process.exit(code);
  };
  process.on('SIGINT', () => void exit(true, 0));
  process.on('SIGTERM', () => void exit(false, 0));

  // Like serf's reconnect loop: a failed member is only found again by joining it
  // (docs/gossip.md, "partition that lasts until both sides have declared each other dead").
  const reconnect = setInterval(() => {
    if (args.reconnectMs === 0) return;
    const dead = ml.members().filter((m) => m.state === 'dead' && m.name !== args.name);
    const pick = dead[Math.floor(Math.random() * dead.length)];
    if (pick) void ml.join([pick.addr]);
  }, args.reconnectMs || 1_000_000);

  const rl = createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    let cmd: { op?: string; key?: string };
    try {
      cmd = JSON.parse(line) as typeof cmd;
    } catch {
      out({ reply: 'error', error: 'gossip-agent: command is not JSON' });
      return;
    }
    try {
      switch (cmd.op) {
        case 'status':
          out({ reply: 'status', ...ml.status() });
          break;
        case 'install':
        case 'use':
        case 'remove': {
          if (!keyring) throw new UsageError('gossip-agent: no keyring (start with --key)');
          const k = keyFromBase64(cmd.key ?? '');
          keyring[cmd.op](k);
          out({ reply: cmd.op, ok: true, keys: keyring.ids() });
          writeStatus();
          break;
        }
        case 'leave':
          void exit(true, 0);
          break;
        default:
          out({ reply: 'error', error: `gossip-agent: unknown op ${JSON.stringify(cmd.op)}` });
      }
    } catch (e) {
      out({ reply: cmd.op ?? 'error', ok: false, error: (e as Error).message });
    }
  });

  if (args.join.length > 0) {
    // Retry until one seed answers (bounded: 30 attempts a second apart), as serf -retry-join.
    for (let i = 0; i < 30 && !exiting; i++) {
      const r = await ml.join(args.join);
      out({ ev: 'joined', contacted: r.contacted, errors: r.errors });
      if (r.contacted > 0) break;
      await new Promise((res) => setTimeout(res, 1000));
    }
  }
  return 0;
}

// Run only as a program, so tests can import parseArgs.
const entry = process.argv[1];
if (entry !== undefined && realpathSync(entry) === fileURLToPath(import.meta.url)) {
  main().catch((e: unknown) => {
    const m = (e as Error).message;
    process.stderr.write(`${m.startsWith('gossip-agent') ? m : `gossip-agent: ${m}`}\n`);
    process.exit(e instanceof MeshError && e.code === 'EUSAGE' ? 2 : 1);
  });
}
