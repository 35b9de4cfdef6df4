// netdb cores (src/netdb/core.ts) in a discrete-event simulation: a fake clock (each core woken
// exactly at its nextDeadline()), a seeded fake network (per-packet loss on UDP, 0.5-2.5 ms
// one-way delay; the reliable path never loses but fails across partitions and to crashed
// nodes), and a fake failure detector (a crashed or cut-off node is reported failed to each
// observer 3-6 s later, alive again 0.2-1 s after it is back). The harness keeps the ground
// truth of every write and checks: every participant of a network converges to exactly the
// live entries of that network (and nobody else receives them), deletes converge, a failed
// node's entries are hidden then restored, tombstones and failed nodes are reaped, a restarted
// node's stale entries are cleaned, and every core's watcher events replay to what it reads.
// NETDB_SIM_TABLE=1 prints the convergence table of docs/netdb.md.
import t, { type Test } from 'tap';
import { Sim, joinRace, lossyWrites } from './lib/netdb-sim.js';

/** Writes: every node creates `perNode` entries in each of its networks at random times within 1 s. */
function writeBurst(sim: Sim, perNode: number, tag: string): void {
  for (const [net, m] of sim.members) {
    for (const name of [...m]) {
      for (let i = 0; i < perNode; i++) {
        sim.at(sim.now + sim.rng.next() * 1000, () => {
          if (!sim.nodes.get(name)!.up || !sim.members.get(net)!.has(name)) return;
          sim.write(name, net, `${name}-${tag}-${i}`, `v-${tag}-${i}`);
        });
      }
    }
  }
}

interface RunResult {
  createMs: number | null;
  changeMs: number | null;
  failOk: boolean;
  restoreMs: number | null;
  partitionHealMs: number | null;
  /** From the failure detector's last "alive again" report to convergence. */
  reportToRestoreMs: number | null;
  reportToHealMs: number | null;
  watchers: string | null;
  notInNetwork: number;
  bytesPerNode: number;
}

/** The main scenario; returns times (simulated ms) and checks for one seed. */
function scenario(
  seed: number,
  n: number,
  loss: number,
  extras = true,
  aliveJitterMs = 800,
): RunResult {
  const sim = new Sim(seed, n);
  sim.aliveJitterMs = aliveJitterMs;
  sim.loss = loss;
  const names = [...sim.nodes.keys()];
  // Everyone in "a"; about half in "b"; join times spread over 500 ms.
  for (const name of names) {
    sim.at(sim.rng.next() * 500, () => sim.join(name, 'a'));
    if (sim.rng.next() < 0.5 || name === 'n0' || name === 'n1')
      sim.at(sim.rng.next() * 500, () => sim.join(name, 'b'));
  }
  sim.run(600);
  writeBurst(sim, 2, 'c');
  sim.run(sim.now + 1000);
  const c0 = sim.runUntil(sim.now + 60_000, () => sim.converged());
  // From the last write (the burst spreads writes over a second).
  const createMs = c0 === null ? null : Math.round(sim.now - sim.lastWrite);
  // Updates and deletes of random entries by their owners.
  for (const [net, tr] of sim.truth) {
    const keys = [...tr.keys()];
    for (let i = 0; i < Math.max(2, keys.length / 4); i++) {
      const k = keys[sim.rng.intn(keys.length)]!;
      const cur = tr.get(k);
      if (!cur) continue;
      sim.write(cur.owner, net, k, sim.rng.next() < 0.5 ? null : `u${i}`);
    }
  }
  const changeMs = sim.runUntil(sim.now + 60_000, () => sim.converged());
  const r: RunResult = {
    createMs,
    changeMs,
    failOk: true,
    restoreMs: null,
    partitionHealMs: null,
    reportToRestoreMs: null,
    reportToHealMs: null,
    watchers: sim.watchersAgree(),
    notInNetwork: 0,
    bytesPerNode: sim.sum((c) => c.bytesSent) / n,
  };
  if (extras) {
    // A node fails: its entries are hidden everywhere (not deleted), then restored.
    const x = names[1 + sim.rng.intn(n - 1)]!;
    sim.crash(x);
    sim.runUntil(sim.now + 20_000, () => sim.converged());
    r.failOk = sim.converged() && sim.sum((c) => c.hidden) > 0;
    sim.revive(x);
    r.restoreMs = sim.runUntil(
      sim.now + 60_000,
      () => sim.converged() && sim.sum((c) => c.hidden) === 0,
    );
    r.reportToRestoreMs = r.restoreMs === null ? null : Math.round(sim.now - sim.lastAliveReport);
    // A partition in two with writes on both sides, then heal.
    const half = names.slice(0, Math.floor(n / 2));
    sim.partition([half, names.slice(Math.floor(n / 2))]);
    sim.run(sim.now + 8000);
    writeBurst(sim, 1, 'p');
    sim.run(sim.now + 3000);
    sim.heal();
    r.partitionHealMs = sim.runUntil(
      sim.now + 90_000,
      () => sim.converged() && sim.sum((c) => c.hidden) === 0,
    );
    r.reportToHealMs =
      r.partitionHealMs === null ? null : Math.round(sim.now - sim.lastAliveReport);
    r.watchers ??= sim.watchersAgree();
  }
  r.notInNetwork = sim.sum((c) => c.notInNetwork);
  if (process.env.NETDB_SIM_DEBUG) {
    const keys = [
      'messagesSent',
      'bulkSyncsSent',
      'stateSyncsSent',
      'eventsApplied',
      'duplicates',
      'staleDropped',
      'bytesSent',
    ] as const;
    console.error(n, sim.now, keys.map((k) => `${k}=${sim.sum((c) => c[k])}`).join(' '));
  }
  return r;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

t.test(
  'entries, updates and deletes converge to exactly the participants (N = 3..20, loss 0-10 %)',
  async (t) => {
    let runs = 0;
    for (let seed = 1; seed <= 24; seed++) {
      const n = 3 + (seed % 6) * 3;
      const loss = [0, 0.05, 0.1][seed % 3]!;
      const r = scenario(seed, n, loss);
      const what = `seed ${seed} N=${n} loss ${loss * 100}%`;
      if (r.createMs === null) t.fail(`${what}: creates did not converge`);
      if (r.changeMs === null) t.fail(`${what}: updates/deletes did not converge`);
      if (!r.failOk) t.fail(`${what}: failed node's entries not hidden`);
      if (r.restoreMs === null) t.fail(`${what}: failed node's entries not restored`);
      if (r.partitionHealMs === null) t.fail(`${what}: partition did not heal`);
      // The detector reports returns within 1 s; the resync adds 300 ms and a round trip.
      else if (r.partitionHealMs > 1500) t.fail(`${what}: heal took ${r.partitionHealMs} ms`);
      if (r.restoreMs !== null && r.restoreMs > 1100)
        t.fail(`${what}: restore took ${r.restoreMs} ms`);
      if (r.watchers) t.fail(`${what}: watchers disagree with reads: ${r.watchers}`);
      if (r.notInNetwork !== 0)
        t.fail(`${what}: ${r.notInNetwork} table events reached non-participants`);
      runs++;
    }
    t.equal(runs, 24, 'all runs checked');
  },
);

t.test('N = 50 converges at 10 % loss, failure and partition included', async (t) => {
  const r = scenario(7, 50, 0.1);
  t.ok(
    r.createMs !== null && r.changeMs !== null,
    `creates ${r.createMs} ms, changes ${r.changeMs} ms`,
  );
  t.ok(r.failOk, 'failed node hidden');
  t.ok(r.restoreMs !== null, `restored in ${r.restoreMs} ms`);
  t.ok(
    r.partitionHealMs !== null && r.partitionHealMs <= 1500,
    `partition healed in ${r.partitionHealMs} ms (detector reports within 1 s)`,
  );
  t.equal(r.watchers, null, 'watchers agree with reads');
  t.equal(r.notInNetwork, 0, 'no table event reached a non-participant');
});

/** Diagnostics on demand, registered only when `env` is set: not tests, and a skip would count. */
function diagnostic(name: string, env: string, fn: (t: Test) => Promise<void>): void {
  if (process.env[env]) t.test(name, fn);
}

diagnostic('per-seed times', 'NETDB_SIM_DEBUG', async (t) => {
  for (let seed = 1; seed <= 6; seed++) t.comment(JSON.stringify(scenario(seed, 10, 0.05)));
  t.pass();
});

t.test('same seed, same run (determinism)', async (t) => {
  const a = scenario(99, 10, 0.05);
  const b = scenario(99, 10, 0.05);
  t.same(a, b);
});

t.test('tombstones and failed nodes are reaped', async (t) => {
  const sim = new Sim(5, 6, { reapEntryMs: 20_000, reapNodeMs: 60_000 });
  for (const n of sim.nodes.keys()) sim.join(n, 'a');
  sim.run(1000);
  for (const n of sim.nodes.keys()) {
    sim.write(n, 'a', `${n}-1`, 'x');
    sim.write(n, 'a', `${n}-2`, 'y');
  }
  t.ok(sim.runUntil(sim.now + 10_000, () => sim.converged()) !== null, 'converged');
  for (const n of sim.nodes.keys()) sim.write(n, 'a', `${n}-1`, null);
  t.ok(sim.runUntil(sim.now + 10_000, () => sim.converged()) !== null, 'deletes converged');
  t.equal(
    sim.sum((c) => c.tombstones),
    36,
    'every node holds the 6 tombstones',
  );
  sim.run(sim.now + 25_000);
  t.equal(
    sim.sum((c) => c.tombstones),
    0,
    'tombstones reaped after reapEntryMs',
  );
  t.ok(sim.converged(), 'still converged (no resurrection)');
  sim.crash('n5');
  sim.run(sim.now + 10_000);
  t.equal(
    sim.sum((c) => c.hidden),
    5,
    "n5's entry hidden on the 5 others",
  );
  t.ok(sim.converged(), 'readers do not see it');
  sim.run(sim.now + 65_000);
  t.equal(
    sim.sum((c) => c.hidden),
    0,
    'hidden entries reaped after reapNodeMs',
  );
  t.equal(
    sim.sum((c) => c.reapedEntries),
    5,
    'counted as reaped',
  );
  for (const n of ['n0', 'n1', 'n2', 'n3', 'n4'])
    t.notOk(sim.nodes.get(n)!.core.peers('a').includes('n5'), `${n}: n5 no longer a peer`);
  sim.run(sim.now + 40_000);
  t.ok(sim.converged(), 'no resurrection by bulk syncs after reaping');
  t.equal(sim.watchersAgree(), null, 'watchers agree');
});

t.test(
  'graceful leave deletes the node entries; network leave deletes them in that network',
  async (t) => {
    const sim = new Sim(11, 8);
    for (const n of sim.nodes.keys()) {
      sim.join(n, 'a');
      sim.join(n, 'b');
    }
    sim.run(1000);
    for (const n of sim.nodes.keys()) {
      sim.write(n, 'a', `${n}-a`, '1');
      sim.write(n, 'b', `${n}-b`, '1');
    }
    t.ok(sim.runUntil(sim.now + 10_000, () => sim.converged()) !== null, 'converged');
    // n3 leaves network b only.
    sim.leaveNet('n3', 'b');
    t.ok(sim.runUntil(sim.now + 10_000, () => sim.converged()) !== null, 'n3 entries gone from b');
    t.same(sim.shown('n3', 'b'), [], 'n3 holds nothing of b');
    for (const n of sim.nodes.keys())
      t.notOk(sim.nodes.get(n)!.core.peers('b').includes('n3'), `${n}: n3 not a peer of b`);
    // n4 leaves the cluster gracefully.
    const x = sim.nodes.get('n4')!;
    x.up = false;
    for (const o of sim.nodes.values()) {
      if (!o.up) continue;
      o.core.nodeLeft(sim.now, 'n4');
      sim.pump(o);
    }
    for (const net of ['a', 'b']) {
      sim.members.get(net)!.delete('n4');
      sim.truth.get(net)!.delete(`n4-${net}`);
    }
    sim.touchAll();
    t.ok(sim.converged(), 'n4 entries deleted at once');
    t.equal(
      sim.sum((c) => c.hidden),
      0,
      'deleted, not hidden',
    );
    t.ok(sim.sum((c) => c.tombstones) >= 14, 'as tombstones');
    t.equal(sim.watchersAgree(), null, 'watchers agree');
  },
);

t.test('a node restarted with empty state: its old entries are deleted everywhere', async (t) => {
  const sim = new Sim(21, 6);
  for (const n of sim.nodes.keys()) sim.join(n, 'a');
  sim.run(1000);
  for (const n of sim.nodes.keys())
    for (let i = 0; i < 3; i++) sim.write(n, 'a', `${n}-${i}`, 'old');
  t.ok(sim.runUntil(sim.now + 10_000, () => sim.converged()) !== null, 'converged');
  sim.restartFresh('n2', ['a']);
  // Same key as before plus a new one, written right after the restart (fresh clock at 1).
  sim.write('n2', 'a', 'n2-0', 'new');
  sim.write('n2', 'a', 'n2-9', 'new');
  const ms = sim.runUntil(sim.now + 60_000, () => sim.converged(true));
  t.ok(ms !== null, `old entries gone and new ones everywhere after ${ms} ms`);
  if (ms === null) {
    t.comment(`want ${sim.allTruth('a').join(' ')}`);
    for (const n of sim.nodes.keys()) t.comment(`${n}: ${sim.shown(n, 'a').join(' ')}`);
    for (const n of sim.nodes.values())
      t.comment(
        `${n.name}: ${JSON.stringify(n.core.counters())} ${JSON.stringify(n.core.clocks())} ${n.core.peers('a').join()}`,
      );
  }
  t.ok(sim.nodes.get('n2')!.core.counters().ownerCorrections > 0, 'by owner corrections');
  t.equal(sim.watchersAgree(), null, 'watchers agree');
});

diagnostic('convergence table', 'NETDB_SIM_TABLE', async (t) => {
  const rows: string[] = [];
  for (const n of [10, 50]) {
    for (const loss of [0, 0.05, 0.1]) {
      const c: number[] = [];
      const u: number[] = [];
      const h: number[] = [];
      const b: number[] = [];
      const rs: number[] = [];
      const hc: number[] = [];
      const hq: number[] = [];
      for (let seed = 1; seed <= 10; seed++) {
        const r = scenario(1000 + seed, n, loss);
        // Every observer told at the same instant: what netdb itself adds to a heal.
        const q = scenario(1000 + seed, n, loss, true, 0);
        if (q.reportToHealMs !== null) hq.push(q.reportToHealMs);
        if (r.createMs !== null) c.push(r.createMs);
        if (r.changeMs !== null) u.push(r.changeMs);
        if (r.reportToHealMs !== null) h.push(r.reportToHealMs);
        if (r.partitionHealMs !== null) hc.push(r.partitionHealMs);
        if (r.reportToRestoreMs !== null) rs.push(r.reportToRestoreMs);
        b.push(Math.round(r.bytesPerNode / 1024));
      }
      const f = (xs: number[]) => `${median(xs)} (${Math.min(...xs)}–${Math.max(...xs)})`;
      rows.push(
        `| ${n} | ${loss * 100} % | ${f(c)} | ${f(u)} | ${f(rs)} | ${f(hc)} | ${f(h)} | ${f(hq)} | ${f(b)} | ${c.length}/${u.length}/${rs.length}/${h.length}/${hq.length} |`,
      );
    }
  }
  t.comment('\n' + rows.join('\n'));
  t.pass();
});

t.test(
  'joins and writes at the same instant (first task on a network) converge without the periodic bulk sync (N = 2..5, loss 0-10 %)',
  async (t) => {
    const times: number[] = [];
    const slow: string[] = [];
    for (let seed = 1; seed <= 1000; seed++) {
      const n = 2 + (seed % 4);
      const sim = new Sim(seed, n);
      sim.loss = (seed % 5) * 0.025;
      for (const name of sim.nodes.keys()) {
        sim.at(sim.rng.next() * 50, () => {
          sim.join(name, 'ingress');
          sim.write(name, 'ingress', `${name}-ep`, 'x');
        });
      }
      sim.run(60);
      const ms = sim.runUntil(sim.now + 60_000, () => sim.converged());
      if (ms === null || ms > 3_000) slow.push(`seed ${seed} N=${n} loss ${sim.loss}: ${ms} ms`);
      if (ms !== null) times.push(ms);
    }
    times.sort((a, b) => a - b);
    t.comment(
      `converged: median ${times[times.length >> 1]} ms, p99 ${times[Math.floor(times.length * 0.99)]} ms, max ${times[times.length - 1]} ms`,
    );
    t.same(slow, [], 'every run converges within 3 s');
  },
);

const pct = (xs: number[], q: number) => xs[Math.min(xs.length - 1, Math.floor(xs.length * q))];

// issue 13: on real nodes a service create left one node's entries missing on the others
// until the periodic bulk sync (the old core fails this: 22 of 1,200 cycles of seeds 1..400
// never converged). NETDB_SIM_RACE_SEEDS=N runs more seeds.
t.test(
  'service create race: joins spread over 1.5 s, writes at join, messages reordered (N = 2..5, loss 0-10 %, no periodic bulk sync)',
  async (t) => {
    const seeds = Number(process.env.NETDB_SIM_RACE_SEEDS ?? 1000);
    const times: number[] = [];
    const slow: string[] = [];
    let held = 0;
    let heldApplied = 0;
    for (let seed = 1; seed <= seeds; seed++) {
      const n = 2 + (seed % 4);
      const loss = (seed % 5) * 0.025;
      const { times: ts, sim, dumps } = joinRace(seed, n, loss);
      held += sim.sum((c) => c.held);
      heldApplied += sim.sum((c) => c.heldApplied);
      ts.forEach((ms, c) => {
        if (ms === null || ms > 5_000)
          slow.push(
            `seed ${seed} N=${n} loss ${Math.round(loss * 1000) / 10}% cycle ${c}: ${ms} ms`,
          );
        if (ms !== null) times.push(ms);
      });
      if (dumps.length > 0 && slow.length <= 1) t.comment(`seed ${seed}: ${dumps.join('\n')}`);
    }
    times.sort((a, b) => a - b);
    t.comment(
      `${seeds} seeds, ${times.length} create cycles: converged ${pct(times, 0.5)} ms p50, ${pct(times, 0.99)} ms p99, ${times[times.length - 1]} ms max after the last write; ${held} events held, ${heldApplied} applied on join`,
    );
    t.same(slow.slice(0, 20), [], `every cycle converges within 5 s (${slow.length} did not)`);
    t.equal(times.length, seeds * 3, 'every cycle measured');
  },
);

t.test(
  'writes at 30 % loss: what gossip lost is repaired by digests within seconds (N = 2..5, no periodic bulk sync)',
  async (t) => {
    const times: number[] = [];
    const slow: string[] = [];
    let repairs = 0;
    for (let seed = 1; seed <= 1000; seed++) {
      const n = 2 + (seed % 4);
      const { ms, sim } = lossyWrites(seed, n);
      repairs += sim.sum((c) => c.digestRepairs);
      if (ms === null || ms > 5_000) slow.push(`seed ${seed} N=${n}: ${ms} ms`);
      if (ms !== null) times.push(ms);
    }
    times.sort((a, b) => a - b);
    t.comment(
      `converged ${pct(times, 0.5)} ms p50, ${pct(times, 0.99)} ms p99, ${times[times.length - 1]} ms max; ${repairs} digest repairs`,
    );
    t.same(slow, [], 'every run converges within 5 s');
    t.ok(repairs > 0, 'some runs needed a digest repair (the test exercises them)');
  },
);
