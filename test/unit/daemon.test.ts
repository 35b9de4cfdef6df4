// meshd serves its API on a root-only unix socket, refuses a second daemon on the same socket or
// data dir, takes over after a crash, and stops cleanly on SIGTERM; meshctl talks to it.
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const meshd = `${root}dist/src/daemon/main.js`;
const meshctl = `${root}dist/src/cli/main.js`;

async function waitFor(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

function start(dir: string, extra: string[] = []): ChildProcess {
  return spawn(
    process.execPath,
    [meshd, '--data-dir', join(dir, 'data'), '--socket', join(dir, 'run', 'meshd.sock'), ...extra],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
}

const ctl = (dir: string, ...args: string[]) =>
  spawnSync(process.execPath, [meshctl, '--host', join(dir, 'run', 'meshd.sock'), ...args], {
    encoding: 'utf8',
  });

t.test('serve, answer meshctl, refuse a second daemon, stop on SIGTERM', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'meshd-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const d = start(dir);
  t.teardown(() => d.kill('SIGKILL'));
  let log = '';
  d.stderr!.on('data', (c: Buffer) => (log += c.toString()));
  const sock = join(dir, 'run', 'meshd.sock');
  await waitFor(() => existsSync(sock), 'the API socket');
  t.equal(statSync(sock).mode & 0o777, 0o600, 'socket is root-only');

  const v = ctl(dir, 'version');
  t.equal(v.status, 0, v.stderr);
  t.match(v.stdout, /^meshctl \S+\nmeshd {3}\S+ \(pid \d+, up \d+ s\)\n$/);
  const j = ctl(dir, 'version', '--json');
  t.equal(JSON.parse(j.stdout).server.pid, d.pid);

  // A second daemon on the same socket (and data dir) is refused with the reason.
  const second = spawnSync(
    process.execPath,
    [meshd, '--data-dir', join(dir, 'data2'), '--socket', sock],
    { encoding: 'utf8', timeout: 10_000 },
  );
  t.equal(second.status, 1);
  t.match(second.stderr, /another meshd is serving it/);
  const third = spawnSync(
    process.execPath,
    [meshd, '--data-dir', join(dir, 'data'), '--socket', join(dir, 'other.sock')],
    { encoding: 'utf8', timeout: 10_000 },
  );
  t.equal(third.status, 1);
  t.match(third.stderr, new RegExp(`in use by meshd pid ${d.pid}`));

  d.kill('SIGTERM');
  const [code] = await once(d, 'exit');
  t.equal(code, 0, 'clean exit on SIGTERM');
  t.notOk(existsSync(sock), 'socket removed');
  t.notOk(existsSync(join(dir, 'data', 'meshd.pid')), 'data dir released');
  t.match(log, /level=info component=meshd msg=stopped/);

  const gone = ctl(dir, 'version');
  t.equal(gone.status, 1);
  t.match(gone.stderr, /cannot reach meshd at .*: ENOENT; is meshd running\?/);
});

t.test('takes over a stale socket and pid file left by a crash', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'meshd-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const first = start(dir);
  const sock = join(dir, 'run', 'meshd.sock');
  await waitFor(() => existsSync(sock), 'the API socket');
  first.kill('SIGKILL');
  await once(first, 'exit');
  t.ok(existsSync(sock), 'a crash leaves the socket behind');
  writeFileSync(join(dir, 'data', 'meshd.pid'), '999999999\n');
  const d = start(dir);
  t.teardown(() => d.kill('SIGKILL'));
  await waitFor(() => ctl(dir, 'version').status === 0, 'the new daemon to answer');
  t.pass('the new daemon took over');
});

t.test('usage errors exit 2 and name the flag', async (t) => {
  for (const [args, re] of [
    [['--gossip-port', '0'], /--gossip-port "0": want a port/],
    [['--advertise-addr', 'nope'], /--advertise-addr "nope": want an IP address/],
    [['--listen-addr', '1.2.3.4'], /--listen-addr "1.2.3.4": want IP:PORT/],
    [['--data-dir', 'relative'], /--data-dir "relative": must be an absolute path/],
    [['--log-level', 'loud'], /--log-level "loud"/],
    [['extra'], /unexpected argument/i],
  ] as Array<[string[], RegExp]>) {
    const r = spawnSync(process.execPath, [meshd, ...args], { encoding: 'utf8' });
    t.equal(r.status, 2, args.join(' '));
    t.match(r.stderr, re);
    t.equal(r.stdout, '');
  }
  const c = spawnSync(process.execPath, [meshctl, 'frobnicate'], { encoding: 'utf8' });
  t.equal(c.status, 2);
  t.match(c.stderr, /unknown command "frobnicate"; see meshctl --help/);
  const h = spawnSync(process.execPath, [meshctl, '--host', 'tcp://x', 'version'], {
    encoding: 'utf8',
  });
  t.equal(h.status, 2);
  t.match(h.stderr, /--host "tcp:\/\/x": want a socket path/);
});
