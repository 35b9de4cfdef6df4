#!/usr/bin/env node
/**
 * meshctl: the command-line client. Noun-verb commands (cluster, node, net, service, lb) arrive
 * with the issues that build them. stdout carries only what was asked; errors go to stderr;
 * usage errors exit 2, failures 1.
 * May import: util/, ./client.
 */
import { MeshError, UsageError } from '../util/errors.js';
import { VERSION } from '../util/version.js';
import { call } from './client.js';

const HELP = `meshctl — drive the Mesh networking daemon

Usage: meshctl [--host SOCKET] COMMAND [--json]

Commands:
  version        client and daemon versions
  debug gossip   this node's view of gossip: members (address, state, incarnation,
                 time since the last change), health score, keys, packet counters
  help           this help

Global options:
  --host SOCKET  meshd's API socket (default /run/meshd/meshd.sock, or MESH_HOST)
  --json         machine-readable output (stable; fields are only ever added)
  --version      print the client version
  --help         print this help

The cluster, node, net, service and lb commands are being built; see docs/cli.md.
`;

interface Args {
  host: string | undefined;
  json: boolean;
  words: string[];
}

function parse(argv: readonly string[]): Args | 'help' | 'version' {
  const a: Args = { host: undefined, json: false, words: [] };
  for (let i = 0; i < argv.length; i++) {
    const w = argv[i]!;
    if (w === '--host') {
      const v = argv[++i];
      if (v === undefined) throw new UsageError('--host needs a socket path');
      a.host = v;
    } else if (w.startsWith('--host=')) a.host = w.slice(7);
    else if (w === '--json') a.json = true;
    else if (w === '--help' || w === '-h') return 'help';
    else if (w === '--version' || w === '-v') return 'version';
    else if (w.startsWith('-')) throw new UsageError(`unknown option ${JSON.stringify(w)}`);
    else a.words.push(w);
  }
  return a;
}

async function version(a: Args): Promise<void> {
  const server = await call<{ version: string; pid: number; uptimeMs: number }>(
    a.host,
    'GET',
    '/v1/version',
  );
  if (a.json) {
    process.stdout.write(JSON.stringify({ client: { version: VERSION }, server }) + '\n');
  } else {
    process.stdout.write(
      `meshctl ${VERSION}\nmeshd   ${server.version} (pid ${server.pid}, up ${Math.round(server.uptimeMs / 1000)} s)\n`,
    );
  }
}

interface GossipStatus {
  name: string;
  addr: string;
  health: number;
  incarnation: number;
  keys: { primary: string | null; keys: string[] } | null;
  members: Array<{
    name: string;
    addr: string;
    state: string;
    incarnation: number;
    sinceMs: number;
  }>;
  counters: Record<string, number>;
}

/** Left-aligned columns, two spaces apart (like docker's tables). */
function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return (
    rows
      .map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  '))
      .join('\n') + '\n'
  );
}

async function debugGossip(a: Args): Promise<void> {
  const s = await call<GossipStatus>(a.host, 'GET', '/v1/debug/gossip');
  if (a.json) {
    process.stdout.write(JSON.stringify(s) + '\n');
    return;
  }
  const rows = [['NAME', 'ADDRESS', 'STATE', 'INCARNATION', 'SINCE']];
  for (const m of [...s.members].sort((x, y) => x.name.localeCompare(y.name))) {
    rows.push([
      m.name + (m.name === s.name ? ' (self)' : ''),
      m.addr,
      m.state,
      String(m.incarnation),
      `${(m.sinceMs / 1000).toFixed(1)}s`,
    ]);
  }
  const keys = s.keys
    ? `${s.keys.keys.length} installed, primary ${s.keys.primary ?? 'none'} (ids: ${s.keys.keys.join(', ')})`
    : 'none (plaintext)';
  const bad = Object.entries(s.counters)
    .filter(([k, v]) => /bad|drop|error|invalid/i.test(k) && v > 0)
    .map(([k, v]) => `${k}=${v}`);
  process.stdout.write(
    table(rows) +
      `\nhealth: ${s.health} (0 is healthy)\nkeys: ${keys}\ndropped/bad: ${bad.length ? bad.join(' ') : 'none'}\n`,
  );
}

export async function run(argv: readonly string[]): Promise<number> {
  try {
    const a = parse(argv);
    if (a === 'version') {
      process.stdout.write(`meshctl ${VERSION}\n`);
      return 0;
    }
    if (a === 'help' || a.words[0] === 'help') {
      process.stdout.write(HELP);
      return 0;
    }
    switch (a.words[0]) {
      case 'version':
        await version(a);
        return 0;
      case 'debug':
        if (a.words[1] !== 'gossip')
          throw new UsageError(`debug ${a.words[1] ?? ''}: want \`meshctl debug gossip\``);
        await debugGossip(a);
        return 0;
      case undefined:
        throw new UsageError('no command given');
      default:
        throw new UsageError(`unknown command ${JSON.stringify(a.words[0])}`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`meshctl: ${e.message}; see meshctl --help\n`);
      return 2;
    }
    process.stderr.write(`meshctl: ${e instanceof MeshError ? e.message : String(e)}\n`);
    return 1;
  }
}

process.exitCode = await run(process.argv.slice(2));
