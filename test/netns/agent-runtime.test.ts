// The task runtime against the real kernel: tasks are processes in their own namespaces, with
// logs, exit codes, stop escalation, and adoption by a later runtime (a meshd restart or crash).
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  NETLINK_ROUTE,
  NetlinkSocket,
  linkList,
  netnsCreate,
  netnsList,
  netnsOpen,
  spawnInNetns,
} from '../../src/netlink/index.js';
import { listeningPorts, pidsInNetns, readProcStat } from '../../src/agent/proc.js';
import { TaskRuntime, type ExitEvent, type TaskInfo } from '../../src/agent/runtime.js';
import { setLogSink } from '../../src/util/log.js';
import { destroyByPrefix, sweepStale } from '../lib/testnet.js';
import { requireRoot } from '../lib/require.js';

requireRoot('runtime tests');

setLogSink(() => {});
sweepStale();

let counter = 0;

interface Ctx {
  stateDir: string;
  /** Namespace prefix `mt-<pid>-<n>-`: testnet's sweepStale removes leftovers of dead runs. */
  nsPrefix: string;
  open(): Promise<TaskRuntime>;
  /** Processes started outside the runtime, killed at teardown. */
  extra: ChildProcess[];
}

/** A state dir and namespace prefix of this test; teardown removes all it made, even on failure. */
function ctx(t: Test): Ctx {
  const base = `mt-${process.pid}-${++counter}`;
  const stateDir = mkdtempSync(join(tmpdir(), 'mesh-rt-'));
  const runtimes: TaskRuntime[] = [];
  const c: Ctx = {
    stateDir,
    nsPrefix: `${base}-`,
    extra: [],
    open: async () => {
      const rt = await TaskRuntime.open({ stateDir, netnsPrefix: `${base}-`, pollMs: 100 });
      runtimes.push(rt);
      return rt;
    },
  };
  t.teardown(() => {
    for (const rt of runtimes) rt.close();
    for (const p of c.extra) if (p.pid !== undefined) killQuietly(p.pid);
    // Kills every process inside our namespaces (the tasks) and deletes the namespaces.
    destroyByPrefix(base);
    rmSync(stateDir, { recursive: true, force: true });
  });
  return c;
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** Inode of a namespace as /proc/<pid>/ns/net names it. */
function nsId(path: string): string {
  return `net:[${statSync(path).ino}]`;
}

/** Wait (bounded) for a condition checked every 20 ms. */
async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  for (let i = 0; i < ms / 20; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

function nextExit(rt: TaskRuntime, id: string): Promise<ExitEvent> {
  return new Promise((resolve) => {
    const off = rt.onExit((e) => {
      if (e.id !== id) return;
      off();
      resolve(e);
    });
  });
}

function alive(pid: number): boolean {
  const st = readProcStat(pid);
  return st !== undefined && st.state !== 'Z';
}

t.test('a task runs in its own namespace, detached, with its output in its log', async (t) => {
  const c = ctx(t);
  const rt = await c.open();
  const { netns, netnsPath } = await rt.create({
    id: 'aaaabbbbccccdddd0001',
    name: 'sleeper',
    cmd: ['sleep', '600'],
  });
  t.equal(netns, `${c.nsPrefix}mesh-t-aaaabbbbcccc`, 'named mesh-t-<12 chars of the id>');
  t.equal(netnsPath, `/run/netns/${netns}`);
  t.ok(netnsList().includes(netns), 'ip netns lists it');
  const ns = netnsOpen(netns);
  const h = NetlinkSocket.open(NETLINK_ROUTE, { netns: ns });
  const links = linkList(h);
  h.close();
  ns.close();
  t.same(
    links.map((l) => [l.name, l.up]),
    [['lo', true]],
    'only lo, and it is up',
  );
  t.equal(rt.get('aaaabbbbccccdddd0001')?.state, 'created');

  const info = await rt.start('aaaabbbbccccdddd0001');
  t.equal(info.state, 'running');
  const pid = info.pid!;
  t.ok(pid > 0);
  t.equal(readlinkSync(`/proc/${pid}/ns/net`), nsId(netnsPath), 'the process is in the task ns');
  t.not(readlinkSync(`/proc/${pid}/ns/net`), readlinkSync('/proc/self/ns/net'), 'not in ours');
  const st = readProcStat(pid)!;
  t.equal(st.session, pid, 'leads its own session (setsid)');
  t.equal(st.pgrp, pid, 'and its own process group');
  t.equal(readlinkSync(`/proc/${pid}/fd/0`), '/dev/null', 'stdin is /dev/null');
  const logPath = rt.logPath('aaaabbbbccccdddd0001');
  t.equal(readlinkSync(`/proc/${pid}/fd/1`), logPath, 'stdout is the log file');
  t.equal(readlinkSync(`/proc/${pid}/fd/2`), logPath, 'stderr too');
  t.equal(
    JSON.parse(readFileSync(join(c.stateDir, 'tasks.json'), 'utf8')).tasks[0].pid,
    pid,
    'the pid is on disk',
  );

  // A shell task: env, cwd, both streams, exit status.
  await rt.create({
    id: 'shell0000001',
    name: 'sh',
    cmd: ['sh', '-c', 'echo "out $FOO $(pwd)"; echo err >&2; exit 3'],
    env: { FOO: 'bar' },
    cwd: '/tmp',
  });
  let calls = 0;
  rt.onExit((e) => {
    if (e.id === 'shell0000001') calls++;
  });
  const exit = nextExit(rt, 'shell0000001');
  await rt.start('shell0000001');
  const ev = await exit;
  t.same(
    { exitCode: ev.exitCode, signal: ev.signal, adopted: ev.adopted },
    { exitCode: 3, signal: null, adopted: false },
    'exit code reported',
  );
  const done = rt.get('shell0000001')!;
  t.equal(done.state, 'exited');
  t.equal(done.exitCode, 3);
  t.ok(done.finishedAt! >= done.startedAt!);
  t.equal(rt.logs('shell0000001'), 'out bar /tmp\nerr\n', 'stdout and stderr in the log');
  t.equal(rt.logs('shell0000001', { tailBytes: 4 }), 'err\n', 'tail');

  // A restart appends to the same log, in the same namespace.
  const again = nextExit(rt, 'shell0000001');
  const r2 = await rt.start('shell0000001');
  t.equal(r2.restarts, 1);
  t.equal((await again).exitCode, 3);
  t.equal(rt.logs('shell0000001'), 'out bar /tmp\nerr\nout bar /tmp\nerr\n');
  t.equal(calls, 2, 'onExit called once per exit');

  // stop: SIGTERM is enough for sleep.
  const t0 = Date.now();
  const stopped = await rt.stop('aaaabbbbccccdddd0001', { graceMs: 5000 });
  t.ok(Date.now() - t0 < 2000, 'stopped without waiting for the grace period');
  t.equal(stopped.state, 'exited');
  t.equal(stopped.signal, 'SIGTERM');
  t.equal(stopped.exitCode, 143, '128 + SIGTERM');
  t.notOk(alive(pid), 'process gone');

  await rt.remove('aaaabbbbccccdddd0001');
  await rt.remove('shell0000001');
  t.notOk(existsSync(netnsPath), 'namespace deleted');
  t.notOk(existsSync(logPath), 'log deleted');
  t.same(rt.list(), []);
  t.same(
    netnsList().filter((n) => n.startsWith(c.nsPrefix)),
    [],
  );
});

t.test('stop escalates to SIGKILL for a task that ignores SIGTERM', async (t) => {
  const c = ctx(t);
  const rt = await c.open();
  await rt.create({
    id: 'stubborn0001',
    name: 'stubborn',
    // The ignored disposition is inherited by sleep, so the whole group ignores TERM. A
    // background job also stays behind in the namespace if only the leader died.
    cmd: ['sh', '-c', 'trap "" TERM; sleep 600 & echo ready; while :; do sleep 0.05; done'],
  });
  const { pid } = await rt.start('stubborn0001');
  await until('the trap to be set', () => rt.logs('stubborn0001').includes('ready'));
  const t0 = Date.now();
  const info = await rt.stop('stubborn0001', { graceMs: 300 });
  const took = Date.now() - t0;
  t.ok(took >= 300, `waited the grace period (${took} ms)`);
  t.ok(took < 3000, 'then killed it');
  t.equal(info.state, 'exited');
  t.equal(info.signal, 'SIGKILL');
  t.equal(info.exitCode, 137);
  t.notOk(alive(pid!), 'leader gone');
  t.same(
    pidsInNetns(statSync(info.netnsPath).ino),
    [],
    'nothing left in the task namespace (the background sleep was killed too)',
  );
  // stop of a stopped task is a no-op.
  t.equal((await rt.stop('stubborn0001')).state, 'exited');
});

t.test('errors say what failed on which task', async (t) => {
  const c = ctx(t);
  const rt = await c.open();
  await t.rejects(rt.start('nope'), { code: 'ENOTFOUND', message: /start task nope: no such/ });
  await t.rejects(rt.create({ id: '../x', name: 'x', cmd: ['true'] }), { code: 'EUSAGE' });
  await t.rejects(rt.create({ id: 'okid', name: 'x', cmd: [] }), { code: 'EUSAGE' });
  await rt.create({ id: 'samefirst12chars-a', name: 'a', cmd: ['/nonexistent/prog'] });
  await t.rejects(rt.create({ id: 'samefirst12chars-a', name: 'a', cmd: ['true'] }), {
    code: 'ECONFLICT',
  });
  await t.rejects(rt.create({ id: 'samefirst12chars-b', name: 'b', cmd: ['true'] }), {
    code: 'ECONFLICT',
    message: /share their first 12 characters/,
  });
  await t.rejects(rt.start('samefirst12chars-a'), {
    code: 'ETASK',
    message: /start task samefirst12chars-a: run "\/nonexistent\/prog" in \/: ENOENT/,
  });
  t.equal(rt.get('samefirst12chars-a')?.state, 'created', 'a failed start leaves it created');
});

t.test('a task outlives a crashed meshd and the next runtime adopts it', async (t) => {
  const c = ctx(t);
  // "meshd": another Node process runs a runtime, starts a task, and is killed with -9.
  const runtimeUrl = new URL('../../src/agent/runtime.js', import.meta.url).href;
  const script = `
    import { TaskRuntime } from ${JSON.stringify(runtimeUrl)};
    const rt = await TaskRuntime.open({ stateDir: process.env.SD, netnsPrefix: process.env.NP, log: { debug() {}, info() {}, warn() {}, error() {} } });
    await rt.create({ id: 'crashtask0001', name: 'c', cmd: ['sh', '-c', 'echo up; exec sleep 600'] });
    const i = await rt.start('crashtask0001');
    process.stdout.write(JSON.stringify(i) + '\\n');
    setInterval(() => {}, 1000);
  `;
  const meshd = spawn(process.execPath, ['--input-type=module', '-e', script], {
    env: { ...process.env, SD: c.stateDir, NP: c.nsPrefix },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  c.extra.push(meshd);
  let out = '';
  meshd.stdout.on('data', (d: Buffer) => (out += d.toString()));
  await until('the task to start', () => out.includes('\n'), 10_000);
  const started = JSON.parse(out) as TaskInfo;
  const pid = started.pid!;
  t.equal(readProcStat(pid)?.ppid, meshd.pid, 'the task is the first meshd child');
  meshd.kill('SIGKILL');
  await once(meshd, 'exit');
  await until('the task to be reparented', () => readProcStat(pid)?.ppid !== meshd.pid);
  t.ok(alive(pid), 'the task survives kill -9 of meshd');

  const rt = await c.open();
  const adopted = rt.get('crashtask0001')!;
  t.equal(adopted.state, 'running', 'adopted as running');
  t.equal(adopted.pid, pid);
  t.equal(adopted.adopted, true);
  t.equal(rt.logs('crashtask0001'), 'up\n', 'its log is still there');

  const exit = nextExit(rt, 'crashtask0001');
  const t0 = Date.now();
  process.kill(pid, 'SIGKILL'); // killed by someone else
  const ev = await exit;
  t.same(
    { exitCode: ev.exitCode, adopted: ev.adopted },
    { exitCode: null, adopted: true },
    'exit seen, code unknown',
  );
  t.ok(Date.now() - t0 < 2000, `seen within the poll period (${Date.now() - t0} ms)`);
  t.equal(rt.get('crashtask0001')?.state, 'exited');
  rt.close();

  // And that is on disk: a third runtime does not resurrect it.
  const rt3 = await c.open();
  t.equal(rt3.get('crashtask0001')?.state, 'exited');
  t.equal(rt3.get('crashtask0001')?.exitCode, null);
  await rt3.remove('crashtask0001');
});

t.test(
  'a closed runtime leaves its tasks running; the next one adopts and stops them',
  async (t) => {
    const c = ctx(t);
    const rt1 = await c.open();
    await rt1.create({ id: 'keepgoing001', name: 'k', cmd: ['sleep', '600'] });
    const { pid } = await rt1.start('keepgoing001');
    rt1.close();
    t.ok(alive(pid!), 'close() does not kill tasks');

    const rt2 = await c.open();
    t.equal(rt2.get('keepgoing001')?.state, 'running');
    t.equal(rt2.get('keepgoing001')?.adopted, true);
    const info = await rt2.stop('keepgoing001', { graceMs: 2000 });
    t.equal(info.state, 'exited');
    t.equal(info.exitCode, null, 'not our child: exit code unknown');
    t.notOk(alive(pid!), 'an adopted task is stopped too');
    await rt2.remove('keepgoing001');
    t.notOk(existsSync(info.netnsPath));
  },
);

t.test('open removes our namespaces that have no record, and nothing else', async (t) => {
  const c = ctx(t);
  const stale = `${c.nsPrefix}mesh-t-stale0000000`;
  const other = `${c.nsPrefix}other`;
  const unprefixed = `${c.nsPrefix}x-mesh-t-notours00`;
  for (const n of [stale, other, unprefixed]) netnsCreate(n).close();
  const ns = netnsOpen(stale);
  const orphan = spawnInNetns(ns, 'sleep', ['600'], { stdio: 'ignore' });
  ns.close();
  c.extra.push(orphan);
  await until('the orphan to run', () => alive(orphan.pid!));

  const rt = await c.open();
  t.notOk(existsSync(`/run/netns/${stale}`), 'stale task namespace removed');
  await once(orphan, 'exit');
  t.pass('the process left in it was killed');
  t.ok(existsSync(`/run/netns/${other}`), 'a namespace of another kind is left alone');
  t.ok(existsSync(`/run/netns/${unprefixed}`), 'one under another prefix too');
  t.same(rt.list(), []);
});

t.test('a live pid with another start time is not adopted (pid reuse)', async (t) => {
  const c = ctx(t);
  const netns = `${c.nsPrefix}mesh-t-reused000000`;
  netnsCreate(netns).close();
  // An unrelated process that happens to hold the recorded pid now.
  const stranger = spawn('sleep', ['600'], { stdio: 'ignore' });
  c.extra.push(stranger);
  const realStart = readProcStat(stranger.pid!)!.startTime;
  const rec = {
    id: 'reused000000',
    name: 'r',
    cmd: ['sleep', '600'],
    env: {},
    cwd: '/',
    netns,
    state: 'running',
    pid: stranger.pid,
    startTime: String(BigInt(realStart) - 1n),
    startedAt: new Date().toISOString(),
    restarts: 0,
  };
  writeFileSync(join(c.stateDir, 'tasks.json'), JSON.stringify({ version: 1, tasks: [rec] }));

  const rt = await c.open();
  const info = rt.get('reused000000')!;
  t.equal(info.state, 'exited', 'recorded process counted as gone');
  t.equal(info.exitCode, null, 'with an unknown exit code');
  t.equal(info.adopted, false);
  await rt.stop('reused000000', { graceMs: 100 });
  await rt.remove('reused000000');
  t.ok(alive(stranger.pid!), 'and the stranger was never signalled');
  t.notOk(existsSync(`/run/netns/${netns}`));
});

t.test('nothing of a task outlives its main process', async (t) => {
  const c = ctx(t);
  const rt = await c.open();
  // A background job left behind when the main process exits goes with it.
  await rt.create({ id: 'leaver000001', name: 'l', cmd: ['sh', '-c', 'sleep 600 & echo $!'] });
  const exit = nextExit(rt, 'leaver000001');
  await rt.start('leaver000001');
  t.equal((await exit).exitCode, 0);
  const bg = Number(rt.logs('leaver000001').trim());
  t.ok(bg > 0, `background job ${bg}`);
  await until('the background job to be killed', () => !alive(bg));
  t.pass('killed');

  // A `created` task with a process in its namespace (meshd died between spawn and saving
  // the pid): the next open kills that process; the task stays created.
  rt.close();
  const rt2 = await c.open();
  await rt2.create({ id: 'halfstart001', name: 'h', cmd: ['sleep', '600'] });
  rt2.close();
  const ns = netnsOpen(`${c.nsPrefix}mesh-t-halfstart001`);
  const ghost = spawnInNetns(ns, 'sleep', ['600'], { stdio: 'ignore' });
  ns.close();
  c.extra.push(ghost);
  const rt3 = await c.open();
  await once(ghost, 'exit');
  t.pass('the unrecorded process was killed');
  t.equal(rt3.get('halfstart001')?.state, 'created');
  t.ok(rt3.get('leaver000001'), 'records kept');
});

t.test('a damaged tasks.json is refused with a way out', async (t) => {
  const c = ctx(t);
  writeFileSync(join(c.stateDir, 'tasks.json'), '{"version":1,"tasks":[');
  await t.rejects(c.open(), { code: 'EDATA', message: /move the file aside/ });
});

t.test('listeningPorts reads the ports a task namespace listens on, not ours', async (t) => {
  const c = ctx(t);
  const rt = await c.open();
  const id = 'aaaabbbbccccdddd0009';
  // Listens on TCP 8081 and binds UDP 5353 a second after it starts (IPv6 and IPv4 sockets).
  const server =
    "setTimeout(()=>{require('net').createServer().listen(8081,'::');require('dgram').createSocket('udp4').bind(5353)},1000);setInterval(()=>{},1<<30)";
  await rt.create({ id, name: 'late-listener', cmd: [process.execPath, '-e', server] });
  const pid = (await rt.start(id)).pid!;
  // A listener of this process (another namespace) on the same port must not count.
  const ours = createServer().listen(8081, '127.0.0.1');
  t.teardown(() => void ours.close());
  await once(ours, 'listening');
  t.notOk(listeningPorts(pid, 'tcp').has(8081), 'not yet listening: 8081/tcp absent');
  await until('8081/tcp listening', () => listeningPorts(pid, 'tcp').has(8081));
  await until('5353/udp bound', () => listeningPorts(pid, 'udp').has(5353));
  t.notOk(listeningPorts(pid, 'udp').has(8081), 'a TCP listener is no UDP port');
  t.notOk(listeningPorts(pid, 'tcp').has(5353), 'a UDP socket is no TCP listener');
  await rt.stop(id, { graceMs: 1000 });
  t.same([...listeningPorts(pid, 'tcp')], [], 'nothing once the process is gone');
});
