// Three real meshd processes on namespaced hosts form a gossip cluster; `meshctl debug gossip`
// on each shows the others; a kill -9 is seen as dead and a SIGTERM as a graceful leave.
import t from 'tap';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { testnet, type TestHost } from '../lib/testnet.js';
import { requireRoot } from '../lib/require.js';

requireRoot('netns tests');

const root = fileURLToPath(new URL('../../../', import.meta.url));
const meshd = `${root}dist/src/daemon/main.js`;
const meshctl = `${root}dist/src/cli/main.js`;

interface Status {
  name: string;
  members: Array<{ name: string; state: string; addr: string }>;
  keys: { primary: string | null; keys: string[] } | null;
}

function status(dir: string, host: TestHost): Status | undefined {
  const r = spawnSync(
    process.execPath,
    [meshctl, '--host', join(dir, `${host.index}.sock`), 'debug', 'gossip', '--json'],
    {
      encoding: 'utf8',
    },
  );
  return r.status === 0 ? (JSON.parse(r.stdout) as Status) : undefined;
}

/** Wait (bounded) until every listed host sees `want` (name → state). */
async function converge(
  dir: string,
  hosts: TestHost[],
  want: Record<string, string>,
  limitMs: number,
): Promise<number> {
  const t0 = Date.now();
  while (Date.now() - t0 < limitMs) {
    const ok = hosts.every((h) => {
      const s = status(dir, h);
      return (
        s &&
        Object.entries(want).every(([n, st]) => s.members.find((m) => m.name === n)?.state === st)
      );
    });
    if (ok) return Date.now() - t0;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(
    `no convergence to ${JSON.stringify(want)} in ${limitMs} ms: ${JSON.stringify(hosts.map((h) => status(dir, h)?.members))}`,
  );
}

for (const encrypted of [false, true]) {
  t.test(`meshd gossip cluster (${encrypted ? 'encrypted' : 'plaintext'})`, async (t) => {
    const net = testnet(t, { hosts: 3 });
    const dir = mkdtempSync(join(tmpdir(), 'meshd-gossip-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const keyFile = join(dir, 'keys');
    writeFileSync(keyFile, `${Buffer.alloc(32, 7).toString('base64')}\n`);
    const procs: ChildProcess[] = [];
    for (const h of net.hosts) {
      const args = [
        meshd,
        '--node-name',
        `n${h.index}`,
        '--advertise-addr',
        h.addr,
        '--data-dir',
        join(dir, `data${h.index}`),
        '--socket',
        join(dir, `${h.index}.sock`),
      ];
      if (h.index > 1) args.push('--join', net.hosts[0]!.addr);
      if (encrypted) args.push('--gossip-key-file', keyFile);
      procs.push(h.spawn(process.execPath, args, { stdio: 'ignore' }));
    }
    const [h1, h2, h3] = net.hosts as [TestHost, TestHost, TestHost];
    const joinMs = await converge(
      dir,
      [h1, h2, h3],
      { n1: 'alive', n2: 'alive', n3: 'alive' },
      20_000,
    );
    t.pass(`all three see each other alive (${joinMs} ms)`);
    const s1 = status(dir, h1)!;
    t.equal(s1.members.find((m) => m.name === 'n2')?.addr, `${h2.addr}:7946`);
    if (encrypted) t.equal(s1.keys?.keys.length, 1, 'one key installed');
    else t.equal(s1.keys, null, 'plaintext');

    // The human table names every member and this node.
    const table = spawnSync(
      process.execPath,
      [meshctl, '--host', join(dir, '1.sock'), 'debug', 'gossip'],
      { encoding: 'utf8' },
    );
    t.match(table.stdout, /^NAME +ADDRESS +STATE +INCARNATION +SINCE\n/);
    t.match(table.stdout, /n1 \(self\) +198\.18\.0\.1:7946 +alive/);

    procs[2]!.kill('SIGKILL'); // `ip netns exec` execs node, so this is meshd itself
    const deadMs = await converge(dir, [h1, h2], { n3: 'dead' }, 30_000);
    t.pass(`a killed node is declared dead by the others (${deadMs} ms)`);

    procs[1]!.kill('SIGTERM');
    const leftMs = await converge(dir, [h1], { n2: 'left' }, 15_000);
    t.pass(`a stopped node is seen as left, not failed (${leftMs} ms)`);
  });
}
