/**
 * The README's first command: a Mesh cluster on three namespaced hosts, end to end with real
 * meshd processes. Hosts on an underlay bridge (198.18.0.0/24); `cluster init` on the first,
 * the others join as managers with a token; an attachable overlay network; on every host a task
 * (a tiny HTTP server naming its task and node) attached to it; every task requests every other
 * across hosts over VXLAN; the programmed state read back with iproute2; one host's meshd is
 * killed with -9 and the overlay keeps answering (the data path does not depend on the daemon);
 * everything is removed. (Services with a published port on every node join when they exist.)
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { netnsList } from '../src/netlink/index.js';
import { MeshHosts, until } from '../test/lib/meshd.js';
import { TestNet, type TestHost } from '../test/lib/testnet.js';

const say = (s: string): boolean => process.stdout.write(`${s}\n`);

interface TaskView {
  name: string;
  netns: string;
  networks: { address: string }[];
}

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write('demo: needs root (it creates network namespaces); run it as root\n');
    return 1;
  }
  const net = TestNet.create({ hosts: 3, prefix: `mesh-demo-${process.pid}` });
  const dir = mkdtempSync(join(tmpdir(), 'mesh-demo-'));
  const mh = new MeshHosts(dir);
  const ctl = (h: TestHost, ...args: string[]): string => mh.ok(h, ...args);
  const show = (h: TestHost, ...args: string[]): void => {
    say(`$ meshctl ${args.join(' ')}    # on h${h.index}`);
    process.stdout.write(ctl(h, ...args));
  };
  const get = (task: TaskView, url: string): string =>
    spawnSync(
      'ip',
      [
        'netns',
        'exec',
        task.netns,
        process.execPath,
        '-e',
        `fetch(${JSON.stringify(url)},{signal:AbortSignal.timeout(1500)}).then(r=>r.text()).then(t=>process.stdout.write(t),()=>process.exit(1))`,
      ],
      { encoding: 'utf8', timeout: 5000 },
    ).stdout.trim();
  try {
    say(
      `== 3 hosts on an underlay bridge: ${net.hosts.map((h) => `${h.name} ${h.addr}`).join(', ')}`,
    );
    for (const h of net.hosts) mh.start(h);
    const [h1, h2, h3] = net.hosts as [TestHost, TestHost, TestHost];
    await until('meshd to start', () => mh.ready(net.hosts));
    say('\n== a cluster: init on h1, h2 and h3 join as managers with a token');
    show(h1, 'cluster', 'init');
    const token = ctl(h1, 'cluster', 'join-token', 'manager', '-q').trim();
    for (const h of [h2, h3]) show(h, 'cluster', 'join', '--token', token, `${h1.addr}:2377`);
    show(h2, 'node', 'ls');

    say('\n== an attachable overlay network, and a task on every host');
    show(h1, 'net', 'create', '--attachable', 'web');
    for (const h of net.hosts) {
      const name = `web${h.index}`;
      const js = `require('http').createServer((q,s)=>s.end('hello from task ${name} on node h${h.index}\\n')).listen(8080)`;
      ctl(h, 'run', '-d', '--name', name, '--network', 'web', '--', process.execPath, '-e', js);
    }
    const tasks = net.hosts.map((h) => (JSON.parse(ctl(h, 'ps', '--json')) as TaskView[])[0]!);
    show(h1, 'net', 'inspect', 'web');

    say('\n== every task requests every other, across hosts, over VXLAN (udp/4789)');
    let answered = 0;
    for (const [i, a] of tasks.entries()) {
      for (const [j, b] of tasks.entries()) {
        if (i === j) continue;
        const ip = b.networks[0]!.address.split('/')[0]!;
        let body = '';
        await until(`${a.name} to reach ${ip}`, () => (body = get(a, `http://${ip}:8080/`)) !== '');
        say(`${a.name} (h${i + 1}) -> http://${ip}:8080  ${body}`);
        answered++;
      }
    }
    say(`== all ${answered} paths answered`);

    say('\n== what meshd programmed on h1 (iproute2 reads it back)');
    const ovns = `${h1.name}-mesh-ov-4097`;
    for (const args of [
      ['-n', ovns, '-d', 'link', 'show', 'vx-4097'],
      ['-n', ovns, 'neigh', 'show', 'dev', 'vx-4097'],
    ]) {
      say(`$ ip ${args.join(' ')}`);
      process.stdout.write(spawnSync('ip', args, { encoding: 'utf8' }).stdout);
    }
    say(`$ bridge -n ${ovns} fdb show dev vx-4097`);
    process.stdout.write(
      spawnSync('bridge', ['-n', ovns, 'fdb', 'show', 'dev', 'vx-4097'], { encoding: 'utf8' })
        .stdout,
    );

    say('\n== kill -9 the meshd of h3: the data path keeps working without it');
    mh.procs.get(h3.index)!.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 300));
    const ip3 = tasks[2]!.networks[0]!.address.split('/')[0]!;
    say(`web1 (h1) -> http://${ip3}:8080  ${get(tasks[0]!, `http://${ip3}:8080/`) || 'NO ANSWER'}`);
    return 0;
  } finally {
    mh.killAll();
    // Task processes run in their own sessions (they outlive meshd by design): stop them too.
    for (const ns of netnsList().filter((n) => n.startsWith(`mesh-demo-${process.pid}`))) {
      spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' })
        .stdout.split('\n')
        .filter(Boolean)
        .forEach((pid) => {
          try {
            process.kill(Number(pid), 'SIGKILL');
          } catch {
            // gone
          }
        });
    }
    net.destroy();
    rmSync(dir, { recursive: true, force: true });
    const left = netnsList().filter((n) => n.startsWith(`mesh-demo-${process.pid}`));
    say(
      left.length === 0
        ? '\n== cleaned up: no namespace left behind'
        : `\n== clean-up left ${left.join(', ')}`,
    );
  }
}

process.exitCode = await main();
