// The fault-test machinery (test/lib/faults.ts) without a cluster: the client pool and its
// recorder against a fake register served over HTTP on unix sockets (the same client code the
// meshd fault test uses). A correct register passes the linearizability checker; one that
// serves stale reads, or acknowledges writes it drops, fails it. Operations that time out are
// recorded as pending, refused connections are left out. The schedule generator is seeded and
// bounded, and runSchedule undoes every fault on real (sleep) processes.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import t from 'tap';
import { SeededRandom } from '../../src/raft/random.js';
import {
  ClientPool,
  ManagedProc,
  faultSchedule,
  historyStats,
  httpKv,
  lostWrites,
  missedKinds,
  runSchedule,
  type FaultEvent,
  type FaultKind,
} from '../lib/faults.js';
import { checkHistory, kvModel, type KvOp } from '../lib/linearizability.js';

const dir = mkdtempSync(join(tmpdir(), 'mesh-faults-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

type Bug = 'none' | 'stale' | 'lost';

/**
 * A register shared by several HTTP servers ("nodes"). Each request takes effect at one
 * instant inside its own lifetime, so a correct one is linearizable. `slowShare` of the
 * requests answer only after the client has given up (their effect happened or not).
 * Bugs: `stale` reads answer with the value of 300 ms ago; `lost` acknowledges every fourth
 * put without applying it.
 */
class FakeRegister {
  private readonly values = new Map<string, { at: number; value: string | null }[]>();
  private readonly r: SeededRandom;
  private puts = 0;
  readonly servers: Server[] = [];
  constructor(
    seed: number,
    private readonly bug: Bug,
    private readonly slowShare = 0.03,
  ) {
    this.r = new SeededRandom(seed);
  }

  private now(key: string): string | null {
    const l = this.values.get(key);
    return l?.[l.length - 1]?.value ?? null;
  }

  private before(key: string, at: number): string | null {
    const l = this.values.get(key) ?? [];
    let v: string | null = null;
    for (const e of l) if (e.at <= at) v = e.value;
    return v;
  }

  private set(key: string, value: string): void {
    let l = this.values.get(key);
    if (l === undefined) this.values.set(key, (l = []));
    l.push({ at: performance.now(), value });
  }

  async listen(path: string): Promise<void> {
    const srv = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (d: Buffer) => chunks.push(d));
      req.on('end', () => {
        void (async () => {
          await sleep(this.r.intn(6));
          const url = new URL(req.url ?? '/', 'http://x');
          let body: unknown;
          let status = 200;
          if (req.method === 'GET' && url.pathname === '/v1/debug/kv') {
            const key = url.searchParams.get('key') ?? '';
            const v =
              this.bug === 'stale' ? this.before(key, performance.now() - 300) : this.now(key);
            body = { value: v };
          } else if (req.method === 'POST' && url.pathname === '/v1/debug/kv') {
            const b = JSON.parse(Buffer.concat(chunks).toString()) as {
              key: string;
              value: string;
              prev?: string | null;
            };
            if (b.prev !== undefined) {
              const ok = this.now(b.key) === b.prev;
              if (ok) this.set(b.key, b.value);
              // As meshd: a failed expectation is 409 ECONFLICT.
              status = ok ? 200 : 409;
              body = ok
                ? { ok, value: b.value }
                : { error: { code: 'ECONFLICT', message: 'not the expected one' } };
            } else {
              if (this.bug !== 'lost' || ++this.puts % 4 !== 0) this.set(b.key, b.value);
              body = { ok: true, value: b.value };
            }
          } else {
            res.writeHead(404).end('{}');
            return;
          }
          await sleep(this.r.next() < this.slowShare ? 400 : this.r.intn(6));
          if (!res.destroyed) res.writeHead(status).end(JSON.stringify(body));
        })();
      });
    });
    this.servers.push(srv);
    await new Promise<void>((r) => srv.listen(path, r));
  }

  async close(): Promise<void> {
    for (const s of this.servers) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
  }
}

async function fakeRun(
  bug: Bug,
  seed: number,
  ms = 1_500,
): Promise<{ pool: ClientPool; finals: Map<string, string | null> }> {
  const reg = new FakeRegister(seed, bug);
  const socks = [0, 1, 2].map((i) => join(dir, `${bug}-${seed}-${i}.sock`));
  for (const s of socks) await reg.listen(s);
  try {
    const pool = new ClientPool({
      seed,
      nodes: socks.map((s) => httpKv(s, 200)),
      clients: 6,
      keys: ['a', 'b', 'c'],
      thinkMs: 5,
    });
    await pool.run(ms);
    const finals = await pool.finalReads([0, 1, 2], 5_000);
    return { pool, finals };
  } finally {
    await reg.close();
  }
}

t.test('a correct register passes, with pending operations recorded', async (t) => {
  const { pool, finals } = await fakeRun('none', 1);
  const h = historyStats(pool.history);
  t.ok(h.ops > 50, `${h.ops} operations recorded`);
  t.ok(h.pending > 0, `${h.pending} timed out and are pending`);
  t.ok(pool.stats.casSwapped > 0 && pool.stats.casFailed > 0, 'swaps both succeed and fail');
  t.ok(h.reads > 0 && h.writes > 0);
  const r = checkHistory(kvModel, pool.history, { timeoutMs: 20_000 });
  t.equal(r.result, 'ok', r.result === 'illegal' ? r.explanation : `${Math.round(r.ms)} ms`);
  t.same(lostWrites(pool.history, finals), [], 'no acknowledged write lost');
  t.equal(finals.size, 3);
});

t.test('stale reads are caught', async (t) => {
  const { pool } = await fakeRun('stale', 2);
  const r = checkHistory(kvModel, pool.history, { timeoutMs: 20_000 });
  t.equal(r.result, 'illegal');
  if (r.result === 'illegal') {
    t.ok(r.ops.length <= 6, `explained by ${r.ops.length} operations`);
    t.comment(r.explanation);
  }
});

t.test('acknowledged writes that were dropped are caught', async (t) => {
  const { pool } = await fakeRun('lost', 3);
  const r = checkHistory(kvModel, pool.history, { timeoutMs: 20_000 });
  t.equal(r.result, 'illegal');
  if (r.result === 'illegal') t.comment(r.explanation);
});

t.test('lostWrites on hand-made histories', async (t) => {
  const put = (v: string, call: number, ret?: number): KvOp => ({
    client: 1,
    call,
    ret,
    input: { op: 'put', key: 'k', value: v },
  });
  const finals = (v: string | null) => new Map([['k', v]]);
  t.same(lostWrites([put('a', 0, 1), put('b', 2, 3)], finals('b')), []);
  t.equal(lostWrites([put('a', 0, 1), put('b', 2, 3)], finals('a')).length, 1, 'b lost');
  t.same(lostWrites([put('a', 0, 4), put('b', 2, 3)], finals('a')), [], 'concurrent: either');
  t.same(lostWrites([put('a', 0), put('b', 2, 3)], finals('a')), [], 'a pending may land last');
  t.equal(lostWrites([put('a', 0, 1)], finals(null)).length, 1, 'absent at the end');
  t.equal(lostWrites([put('a', 0, 1)], finals('zz')).length, 1, 'never written');
  const swap: KvOp = {
    client: 2,
    call: 5,
    ret: 6,
    input: { op: 'cas', key: 'k', expect: 'b', value: 'c' },
    output: true,
  };
  t.equal(lostWrites([put('a', 0, 1), put('b', 2, 3), swap], finals('b')).length, 1, 'swap lost');
});

t.test('a refused connection is not in the history; a time-out is pending', async (t) => {
  const pool = new ClientPool({
    seed: 1,
    nodes: [httpKv(join(dir, 'nobody.sock'), 100)],
    clients: 1,
    keys: ['k'],
  });
  t.equal(await pool.op(0, 0, 'put', 'k'), null);
  t.equal(pool.stats.notSent, 1);
  t.equal(pool.history.length, 0);
  const srv = createServer(() => undefined); // accepts, never answers
  const path = join(dir, 'mute.sock');
  await new Promise<void>((r) => srv.listen(path, r));
  const slow = new ClientPool({ seed: 1, nodes: [httpKv(path, 100)], clients: 1, keys: ['k'] });
  const op = await slow.op(0, 0, 'put', 'k');
  t.equal(op?.ret, undefined, 'no return time');
  t.equal(slow.history.length, 1);
  t.equal(await slow.op(0, 0, 'get', 'k'), null, 'a failed read observes nothing');
  t.equal(slow.history.length, 1);
  srv.closeAllConnections();
  await new Promise((r) => srv.close(r));
});

t.test('schedules are seeded and bounded', async (t) => {
  const o = { seed: 7, nodes: 5, durationMs: 30_000, maxFaults: 100 };
  t.same(faultSchedule(o), faultSchedule(o), 'same seed, same schedule');
  t.not(JSON.stringify(faultSchedule(o)), JSON.stringify(faultSchedule({ ...o, seed: 8 })));
  const seen = new Set<FaultKind>();
  for (let seed = 1; seed <= 50; seed++) {
    const s = faultSchedule({ ...o, seed });
    if (new Set(s.map((e) => e.kind)).size !== 5) t.fail(`seed ${seed}: not every kind`);
    let last = 0;
    for (const e of s) {
      seen.add(e.kind);
      if (e.at < last) t.fail('episodes overlap');
      last = e.at + e.holdMs;
      if (last > o.durationMs) t.fail('episode past the duration');
      if (e.kind === 'crash-all' && e.nodes.length !== 5) t.fail('crash-all hits every node');
      if (e.kind !== 'crash-all' && (e.nodes.length < 1 || e.nodes.length > 4)) {
        t.fail(`${e.kind} on ${e.nodes.length} nodes`);
      }
    }
  }
  t.same([...seen].sort(), ['crash-all', 'kill', 'oneway', 'partition', 'stop']);
  t.equal(faultSchedule({ ...o, maxFaults: 3 }).length, 3, 'at most maxFaults');
});

function procState(pid: number): string {
  return readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '')[0]!;
}

t.test('runSchedule injects and undoes faults on real processes', async (t) => {
  const procs = [0, 1, 2].map(
    (i) => new ManagedProc(`p${i}`, () => spawn('sleep', ['60'], { stdio: 'ignore' })),
  );
  t.teardown(async () => {
    for (const p of procs) await p.kill9();
  });
  for (const p of procs) p.start();
  const splits: string[] = [];
  let heals = 0;
  let observed = '';
  const net = {
    split: (a: readonly number[], b: readonly number[], o?: { oneWay?: boolean }) => {
      splits.push(`${a.join(',')}${o?.oneWay === true ? '->' : '<>'}${b.join(',')}`);
    },
    heal: () => heals++,
  };
  const pid0 = procs[1]!.pid!;
  const events = [
    { kind: 'stop', at: 0, holdMs: 150, nodes: [1], leader: false, reverse: false },
    { kind: 'kill', at: 200, holdMs: 100, nodes: [1], leader: false, reverse: false },
    { kind: 'partition', at: 350, holdMs: 50, nodes: [0], leader: true, reverse: false },
    { kind: 'oneway', at: 450, holdMs: 50, nodes: [2], leader: false, reverse: true },
  ] as const;
  const probe = setInterval(() => {
    const pid = procs[1]!.pid;
    if (pid !== undefined) {
      try {
        observed += procState(pid);
      } catch {
        observed += 'x';
      }
    } else observed += '-';
  }, 20);
  const st = await runSchedule(
    events.map((e) => ({ ...e, nodes: [...e.nodes] })),
    { net, procs, leader: () => Promise.resolve(2) },
  );
  clearInterval(probe);
  t.match(observed, /T/, 'the process was seen stopped');
  t.match(observed, /T+S/, 'then running again');
  t.not(procs[1]!.pid, pid0, 'killed and started again');
  t.equal(procs[1]!.starts, 2);
  t.ok(
    procs.every((p) => p.running && !p.stopped),
    'all running at the end',
  );
  t.same(splits, ['2<>0,1', '0,1->2'], 'the leader joined the partitioned side');
  t.ok(heals >= 4, 'healed after every episode');
  t.same(st.byKind, { partition: 1, oneway: 1, kill: 1, stop: 1, 'crash-all': 0 });
  t.equal(st.leaderHits, 2);
  t.same(
    procs.flatMap((p) => p.unexpectedExits),
    [],
  );
});

t.test('runSchedule skips episodes it has fallen too far behind to fit', async (t) => {
  const procs = [new ManagedProc('p', () => spawn('sleep', ['60'], { stdio: 'ignore' }))];
  t.teardown(() => procs[0]!.kill9());
  procs[0]!.start();
  const splits: number[][] = [];
  const net = { split: (a: readonly number[]) => splits.push([...a]), heal: () => undefined };
  const ev = (at: number, holdMs: number): FaultEvent => ({
    kind: 'stop',
    at,
    holdMs,
    nodes: [0],
    leader: false,
    reverse: false,
  });
  const st = await runSchedule([ev(0, 300), ev(100, 300), ev(450, 50)], {
    net,
    procs,
    leader: () => Promise.resolve(undefined),
  });
  t.equal(st.episodes, 2, 'the first and the last ran');
  t.equal(st.skipped, 1, 'the second started too late to end in time');
  t.ok(procs[0]!.running && !procs[0]!.stopped);
});

t.test('runSchedule plays the last episode of a kind not yet played, however late', async (t) => {
  const procs = [new ManagedProc('p', () => spawn('sleep', ['60'], { stdio: 'ignore' }))];
  t.teardown(() => procs[0]!.kill9());
  procs[0]!.start();
  const splits: number[][] = [];
  const net = { split: (a: readonly number[]) => splits.push([...a]), heal: () => undefined };
  const ev = (kind: FaultKind, at: number, holdMs: number): FaultEvent => ({
    kind,
    at,
    holdMs,
    nodes: [0],
    leader: false,
    reverse: false,
  });
  // Both late episodes start after the first ends and would overrun the 300 ms plan.
  const events = [ev('stop', 0, 300), ev('stop', 100, 300), ev('partition', 150, 300)];
  const st = await runSchedule(events, {
    net,
    procs,
    leader: () => Promise.resolve(undefined),
  });
  t.equal(st.skipped, 1, 'the second stop was skipped (a stop had been played)');
  t.equal(st.byKind.partition, 1, 'the only partition was played although late');
  t.same(missedKinds(events, st), [], 'no scheduled kind missed');
  t.same(missedKinds(events, { ...st, byKind: { ...st.byKind, partition: 0 } }), ['partition']);
});
