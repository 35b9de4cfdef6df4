// The layering of src/ (DESIGN.md "Dependencies point one way"), kept true by reading every
// import: a room may import only the rooms listed for it, and the protocol cores never reach for
// the clock, timers, randomness or node's I/O (that is what lets the simulators run them).
// docs/architecture.md draws the same table; change both together.
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const src = fileURLToPath(new URL('../../../src/', import.meta.url));

/** Who may import whom (besides itself). Lower layers never import higher ones. */
const ALLOWED: Record<string, readonly string[]> = {
  util: [],
  api: ['util'],
  netlink: ['util'],
  gossip: ['util'],
  raft: ['util'],
  overlay: ['netlink', 'util'],
  netdb: ['gossip', 'util'],
  dns: ['api', 'netlink', 'util'],
  lb: ['api', 'netlink', 'overlay', 'util'],
  agent: ['api', 'dns', 'lb', 'netdb', 'netlink', 'overlay', 'util'],
  // The manager's rooms (src/manager/<room>/): the store at the bottom, plans above it, and
  // manager.ts (room `manager`) wiring them together.
  'manager/ca': ['util'],
  'manager/store': ['api', 'raft', 'util', 'manager/ca'],
  'manager/allocation': ['api', 'util', 'manager/store'],
  'manager/orchestration': ['api', 'util', 'manager/store', 'manager/allocation'],
  'manager/dispatch': ['api', 'raft', 'util', 'manager/store', 'manager/allocation'],
  manager: [
    'api',
    'raft',
    'util',
    'manager/ca',
    'manager/store',
    'manager/allocation',
    'manager/orchestration',
    'manager/dispatch',
  ],
  daemon: [
    'agent',
    'api',
    'dns',
    'gossip',
    'lb',
    'manager',
    'netdb',
    'netlink',
    'overlay',
    'raft',
    'util',
    // A node that is not a manager still joins (ca: its key, certificate and state files),
    // talks to the managers (dispatch: RpcClient) and may force a new cluster (store: recovery).
    'manager/ca',
    'manager/dispatch',
    'manager/store',
  ],
  // The CLI speaks to meshd only through the API's contracts.
  cli: ['api', 'util'],
};

/** Protocol cores and planners: input through step()/tick(), output as values; no I/O. */
const CORES = [
  'gossip/swim.ts',
  'gossip/suspicion.ts',
  'gossip/awareness.ts',
  'gossip/broadcast.ts',
  'raft/raft.ts',
  'raft/rawnode.ts',
  'raft/log.ts',
  'raft/progress.ts',
  'raft/confchange.ts',
  'netdb/core.ts',
  'manager/orchestration/orchestrator.ts',
  'manager/orchestration/scheduler.ts',
];

const files = readdirSync(src, { recursive: true, encoding: 'utf8' })
  .filter((f) => f.endsWith('.ts'))
  .sort();

/** Source without comments, so a header that names `Date.now` does not count as using it. */
const code = (f: string) =>
  readFileSync(src + f, 'utf8')
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/(^|[^:'"`])\/\/.*$/gm, '$1');

/** A file's room: its top folder under src/, or `manager/<room>` inside the manager. */
function roomOf(f: string): string {
  const parts = f.split('/');
  return parts[0] === 'manager' && parts.length > 2 ? `manager/${parts[1]}` : parts[0]!;
}

/** Rooms a file imports (static `from '…'`, `import '…'` and dynamic `import('…')`). */
function importedRooms(f: string): string[] {
  const room = roomOf(f);
  const out = new Set<string>();
  for (const m of code(f).matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)'/g)) {
    const target = new URL(m[1]!, `file:///src/${f}`).pathname.slice('/src/'.length);
    const r = roomOf(target);
    if (r !== room) out.add(r);
  }
  return [...out];
}

t.test('every room imports only the rooms below it', async (t) => {
  t.ok(files.length > 100, `read ${files.length} files under src/`);
  const bad: string[] = [];
  for (const f of files) {
    const room = roomOf(f);
    const allowed = ALLOWED[room];
    if (!allowed) {
      bad.push(
        `${f}: room ${room}/ is not in the layering table (add it here and to docs/architecture.md)`,
      );
      continue;
    }
    for (const r of importedRooms(f))
      if (!allowed.includes(r))
        bad.push(
          `${f} imports ${r}/ (${room}/ may import: ${allowed.join(', ') || 'nothing of ours'})`,
        );
  }
  t.same(bad, [], 'no upward or sideways imports');
});

t.test('the check sees an upward import', async (t) => {
  // Guard against a check that cannot fail: a known import must be found.
  t.ok(importedRooms('daemon/daemon.ts').length > 0, 'daemon/daemon.ts imports other rooms');
  t.ok(importedRooms('agent/agent.ts').includes('overlay'), 'agent/agent.ts imports overlay/');
});

t.test('protocol cores do no I/O and read no clock or randomness', async (t) => {
  for (const f of CORES) {
    const c = code(f);
    const hits = [
      /\bDate\.now\b/,
      /\bnew Date\(/,
      /\bsetTimeout\b/,
      /\bsetInterval\b/,
      /\bMath\.random\b/,
      /\bperformance\.now\b/,
      /from\s+'node:/,
      /\bprocess\./,
    ].filter((re) => re.test(c));
    t.same(hits.map(String), [], `${f} is pure`);
  }
});
