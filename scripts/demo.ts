/**
 * The README's first command: a Mesh cluster on three namespaced hosts, end to end with real
 * meshd processes. Hosts on an underlay bridge (198.18.0.0/24); `cluster init` on the first,
 * the others join as managers with a token; an overlay network; a 6-replica HTTP service whose
 * answers name the task and node, published on port 8080; port 8080 requested from every host
 * on every host and answered by tasks on all hosts (the routing mesh); `meshctl lb show`; host
 * h3 killed (its meshd and tasks, kill -9) and the service answering again at 6 replicas from h1
 * and h2; everything removed. Every request of a verdict is counted (answered/sent per pair):
 * one unanswered request and the demo says FAILED and exits 1.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { netnsList } from '../src/netlink/index.js';
import { MeshHosts, until } from '../test/lib/meshd.js';
import { RequestCount, httpGet, type Client } from '../test/lib/requests.js';
import { TestNet, killNetnsProcs, type TestHost } from '../test/lib/testnet.js';

const say = (s: string): boolean => process.stdout.write(`${s}\n`);

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
  // Every request of a verdict is counted per (from host, to address); the answers name the
  // node whose task answered.
  const count = new RequestCount((body) => body.replace(/.* on node /, ''));
  const client = (h: TestHost): Client => ({ label: `h${h.index}`, ns: h.name });
  /**
   * 12 requests (new connections) from each of `froms` to port 8080 of each of `tos`: one line
   * per pair with answered/sent, then the nodes whose tasks answered.
   */
  const showAnswers = (froms: TestHost[], tos: TestHost[]): void => {
    const r = count.round(
      froms.map(client),
      tos.map((h) => `${h.addr}:8080`),
      12,
    );
    for (const l of r.lines()) say(`   ${l}`);
    say(`== answers came from tasks on ${[...r.answersTo().keys()].sort().join(', ')}`);
  };
  /** Port 8080 of every one of `tos` answers from h1 (a wait: retried, not a verdict). */
  const answering = (tos: TestHost[]) =>
    tos.every((h) => httpGet(h1.name, `http://${h.addr}:8080/`, 1500) !== null);
  const [h1, h2, h3] = net.hosts as [TestHost, TestHost, TestHost];
  try {
    say(
      `== 3 hosts on an underlay bridge: ${net.hosts.map((h) => `${h.name} ${h.addr}`).join(', ')}`,
    );
    for (const h of net.hosts) mh.start(h);
    await until('meshd to start', () => mh.ready(net.hosts));
    say('\n== a cluster: init on h1, h2 and h3 join as managers with a token');
    show(h1, 'cluster', 'init');
    const token = ctl(h1, 'cluster', 'join-token', 'manager', '-q').trim();
    for (const h of [h2, h3]) show(h, 'cluster', 'join', '--token', token, `${h1.addr}:2377`);
    show(h2, 'node', 'ls');

    say('\n== an overlay network and a 6-replica HTTP service published on port 8080');
    show(h1, 'net', 'create', 'app');
    const server = `require('http').createServer((q,s)=>s.end('hello from '+process.env.MESH_TASK_NAME+' on node '+process.env.MESH_NODE_NAME+'\\n')).listen(80)`;
    show(
      h1,
      'service',
      'create',
      '--name',
      'web',
      '--replicas',
      '6',
      '--network',
      'app',
      '-p',
      '8080:80',
      '--',
      process.execPath,
      '-e',
      server,
    );
    show(h1, 'service', 'ps', 'web');

    say(
      '\n== port 8080 on every host answers requests from every host, from tasks on every host (the routing mesh)',
    );
    await until('port 8080 answering on every host', () => answering(net.hosts));
    showAnswers(net.hosts, net.hosts);

    say('\n== the load balancer on h1, as meshctl lb show explains it');
    show(h1, 'lb', 'show', '--service', 'web');

    say('\n== kill -9 host h3 (its meshd and its tasks): the service answers again from h1 and h2');
    const killedAt = Date.now();
    mh.procs.get(h3.index)!.kill('SIGKILL');
    for (const ns of netnsList().filter((n) => n.startsWith(`${h3.name}`))) {
      killNetnsProcs(`/run/netns/${ns}`);
    }
    await until(
      '6 replicas running on h1 and h2',
      () =>
        (
          JSON.parse(ctl(h1, 'service', 'ps', 'web', '--json')) as {
            node: string;
            desired: string;
            state: string;
          }[]
        ).filter((r) => r.desired === 'running' && r.state === 'running' && r.node !== 'h3')
          .length === 6,
      60_000,
    );
    say(
      `== 6 replicas running again ${((Date.now() - killedAt) / 1000).toFixed(1)} s after the kill`,
    );
    show(h1, 'service', 'ps', 'web');
    // The survivors' load balancers drop h3's tasks once it is found dead (a wait, retried).
    await until('every request answered on h1 and h2', () => {
      for (let i = 0; i < 6; i++) if (!answering([h1, h2])) return false;
      return true;
    });
    showAnswers([h1, h2], [h1, h2]);
    if (count.lost > 0) {
      say(
        `\n== FAILED: ${count.lost} of ${count.sent} requests went unanswered (${count
          .failed()
          .map((p) => `${p.from} → ${p.to}`)
          .join(', ')})`,
      );
      return 1;
    }
    say(`\n== ${count.answered}/${count.sent} requests answered`);
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
