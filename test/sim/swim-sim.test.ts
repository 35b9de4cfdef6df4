// Seeded SWIM cluster simulation (test/sim/lib/swim-sim.ts): clusters formed by real joins,
// a join reaching everyone, a crash declared dead by everyone, partitions, graceful leave,
// restart with a higher incarnation, Lifeguard under isolation; invariants checked every
// 500 ms of simulated time. SWIM_SIM_FULL=1 prints the convergence table for
// N = 10, 100, 1000 × loss 0/5/10 % (LAN preset, simulated time). SWIM_SIM_SEED=S replays one
// N=10 seed.
import t, { type Test } from 'tap';
import { LAN_CONFIG } from '../../src/gossip/config.js';
import { NodeState } from '../../src/gossip/wire.js';
import { runScenario, SwimSim, type ScenarioResult } from './lib/swim-sim.js';

const full = process.env.SWIM_SIM_FULL === '1';
const replay = process.env.SWIM_SIM_SEED;

function describe(r: ScenarioResult): string {
  const fp = r.falsePositives.map((f) => `${f.observer}→${f.subject}@${f.t.toFixed(0)}`);
  return (
    `seed ${r.seed} n=${r.n} loss=${r.loss}: form ${r.formMs} join ${r.joinMs} dead ${r.deadMs} ` +
    `heal ${r.healMs} fp [${fp.join(' ')}] violation ${r.violation}`
  );
}

function checkRun(t: Test, r: ScenarioResult, opts: { scratch: boolean; partition: boolean }) {
  const d = describe(r);
  t.equal(r.violation, null, `no invariant violated (${d})`);
  if (opts.scratch) t.not(r.formMs, null, `cluster formed by joins (${d})`);
  t.not(r.joinMs, null, `join reached every node (${d})`);
  t.not(r.deadMs, null, `crashed node declared dead by all (${d})`);
  t.equal(r.falsePositives.length, 0, `no live node declared dead (${d})`);
  if (opts.partition) {
    t.ok(r.partitionDeaths > 0, `both sides of the partition declared the other dead (${d})`);
    t.not(r.healMs, null, `reconverged after the partition healed (${d})`);
  }
}

const small = (seed: number) => ({
  seed,
  n: 10,
  loss: [0, 0.05, 0.1][seed % 3]!,
  fromScratch: true,
  wire: seed % 4 === 0,
  partitionMs: seed % 3 === 1 ? 12_000 : 0,
});

if (replay !== undefined) {
  const o = small(Number(replay));
  const r = runScenario(o);
  console.log(describe(r));
  checkRun(t, r, { scratch: true, partition: o.partitionMs > 0 });
} else {
  t.test(
    'N=10: 36 seeds, loss 0/5/10 %, a third with partitions, a quarter over the wire codecs',
    (t) => {
      const start = performance.now();
      let deadSum = 0;
      let joinSum = 0;
      let sus = 0;
      let selfHealed = 0;
      for (let seed = 1; seed <= 36; seed++) {
        const o = small(seed);
        const r = runScenario(o);
        checkRun(t, r, { scratch: true, partition: o.partitionMs > 0 });
        deadSum += r.deadMs ?? 0;
        joinSum += r.joinMs ?? 0;
        sus += r.suspicionsOfLive;
        if (r.selfHealed) selfHealed++;
      }
      t.comment(
        `mean join ${(joinSum / 36).toFixed(0)} ms, mean detect ${(deadSum / 36).toFixed(0)} ms ` +
          `(simulated), ${sus} suspicions of live nodes refuted, ${selfHealed}/12 partitions healed ` +
          `without a rejoin, ${(performance.now() - start).toFixed(0)} ms wall`,
      );
      t.end();
    },
  );

  t.test(
    'N=10, UDP only (no TCP fallback), 10 % loss: suspicions are refuted, none turns fatal',
    (t) => {
      let sus = 0;
      for (let seed = 1; seed <= 12; seed++) {
        const r = runScenario({
          seed,
          n: 10,
          loss: 0.1,
          config: { ...LAN_CONFIG, tcpPings: false },
        });
        checkRun(t, r, { scratch: false, partition: false });
        sus += r.suspicionsOfLive;
      }
      t.ok(sus > 0, `${sus} suspicions of live nodes raised and refuted`);
      t.end();
    },
  );

  t.test(
    'N=100: formed by joins at 0 % loss, bootstrapped at 10 % loss, partitioned over the wire codecs',
    (t) => {
      const a = runScenario({ seed: 101, n: 100, loss: 0, fromScratch: true });
      checkRun(t, a, { scratch: true, partition: false });
      const b = runScenario({ seed: 102, n: 100, loss: 0.1 });
      checkRun(t, b, { scratch: false, partition: false });
      const c = runScenario({ seed: 4, n: 100, loss: 0.1, wire: true, partitionMs: 15_000 });
      checkRun(t, c, { scratch: false, partition: true });
      t.comment(describe(a));
      t.comment(describe(b));
      t.comment(describe(c));
      t.end();
    },
  );

  t.test('a run is a pure function of its seed', (t) => {
    const a = runScenario({ seed: 7, n: 10, loss: 0.05, fromScratch: true });
    const b = runScenario({ seed: 7, n: 10, loss: 0.05, fromScratch: true });
    t.same(
      { ...a, falsePositives: a.falsePositives.length },
      { ...b, falsePositives: b.falsePositives.length },
    );
    const c = runScenario({ seed: 8, n: 10, loss: 0.05, fromScratch: true });
    t.not(c.packets, a.packets, 'another seed gives another run');
    t.end();
  });

  t.test('graceful leave: everyone records left, nobody counts it as a failure', (t) => {
    const sim = new SwimSim({ seed: 21, loss: 0.05 });
    sim.checkEvery(500);
    sim.bootstrap(10);
    sim.runUntil(2000);
    const leaver = sim.nodes[3]!;
    let done = false;
    sim.onEvent = (n, e) => {
      if (n === leaver && e.type === 'leaveDone') done = true;
    };
    sim.leave(leaver);
    const tl = sim.runUntilTrue(() => sim.allSee(leaver.name, [NodeState.left]), 10_000, 5);
    t.not(tl, null, `all see ${leaver.name} left`);
    const td = sim.runUntilTrue(() => done, 10_000, 5);
    t.not(td, null, `leaveDone once the broadcast went out (${td} ms after ${tl})`);
    sim.kill(leaver);
    sim.runUntil(sim.now + 20_000);
    t.ok(sim.allSee(leaver.name, [NodeState.left], true), 'still left (or reaped), never dead');
    t.equal(sim.falsePositives.length, 0);
    t.equal(sim.violation, null);
    t.end();
  });

  t.test('a restarted node rejoins above the incarnation it died with', (t) => {
    const sim = new SwimSim({ seed: 31 });
    sim.checkEvery(500);
    sim.bootstrap(8);
    sim.runUntil(2000);
    const v = sim.nodes[2]!;
    // Bump its incarnation first (as after a refuted suspicion), then crash it.
    v.core.setMeta(sim.now, new Uint8Array([1]));
    sim.runUntil(sim.now + 3000);
    const before = v.core.localIncarnation;
    sim.kill(v);
    t.not(
      sim.runUntilTrue(() => sim.allSee(v.name, [NodeState.dead]), 60_000),
      null,
      'declared dead',
    );
    const r = sim.restart(v);
    t.equal(r.core.localIncarnation, 1, 'a fresh process starts at incarnation 1');
    sim.join(r, sim.nodes[0]!);
    const ok = sim.runUntilTrue(() => sim.converged(), 30_000);
    t.not(ok, null, 'everyone sees it alive again');
    t.ok(r.core.localIncarnation > before, `refuted to ${r.core.localIncarnation} > ${before}`);
    t.equal(sim.violation, null);
    t.end();
  });

  t.test('Lifeguard: an isolated node raises its own health score and is declared dead', (t) => {
    const sim = new SwimSim({ seed: 41 });
    sim.checkEvery(500);
    sim.bootstrap(10);
    sim.runUntil(2000);
    const iso = sim.nodes[5]!;
    sim.partition((n) => (n === iso ? 1 : 0));
    let maxScore = 0;
    sim.onEvent = (n, e) => {
      if (n === iso && e.type === 'health') maxScore = Math.max(maxScore, e.score);
    };
    sim.runUntil(sim.now + 20_000);
    t.ok(maxScore >= 3, `isolated node's health score rose to ${maxScore}`);
    t.ok(sim.allSee(iso.name, [NodeState.dead]), 'the others declared it dead');
    const healthy = sim.nodes.filter((n) => n !== iso).map((n) => n.core.healthScore);
    t.ok(Math.max(...healthy) <= 1, `the others stay healthy (${healthy.join(',')})`);
    t.end();
  });

  t.test('N=1000 bootstrapped, 5 % loss: one run', (t) => {
    const start = performance.now();
    const r = runScenario({ seed: 1001, n: 1000, loss: 0.05, sample: 20 });
    checkRun(t, r, { scratch: false, partition: false });
    t.comment(`${describe(r)}, ${(performance.now() - start).toFixed(0)} ms wall`);
    t.end();
  });

  if (full) {
    t.test('convergence table (LAN preset, simulated ms)', (t) => {
      const rows: string[] = [
        '| N | loss | join reaches all (ms) | crash dead everywhere (ms) | false positives | suspicions of live nodes | UDP only: dead everywhere (ms) | UDP only: false positives | UDP only: suspicions | steady packets/node/s | steady bytes/node/s | runs |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
      ];
      for (const n of [10, 100, 1000]) {
        for (const loss of [0, 0.05, 0.1]) {
          const runs = n === 10 ? 10 : n === 100 ? 4 : 1;
          const rs: ScenarioResult[] = [];
          const udp: ScenarioResult[] = [];
          for (let i = 0; i < runs; i++) {
            const o = { seed: 5000 + n + i, n, loss, sample: n > 100 ? 20 : Infinity };
            rs.push(runScenario(o));
            udp.push(runScenario({ ...o, config: { ...LAN_CONFIG, tcpPings: false } }));
          }
          for (const r of rs) checkRun(t, r, { scratch: false, partition: false });
          for (const r of udp) {
            t.equal(r.violation, null, describe(r));
            t.not(r.deadMs, null, describe(r));
          }
          const stat = (xs: number[]) => {
            xs.sort((a, b) => a - b);
            const med = xs[Math.floor(xs.length / 2)]!;
            return runs > 1 ? `${med} (${xs[0]}–${xs[xs.length - 1]})` : `${med}`;
          };
          rows.push(
            `| ${n} | ${loss * 100} % | ${stat(rs.map((r) => r.joinMs ?? NaN))} | ` +
              `${stat(rs.map((r) => r.deadMs ?? NaN))} | ` +
              `${rs.reduce((a, r) => a + r.falsePositives.length, 0)} | ` +
              `${rs.reduce((a, r) => a + r.suspicionsOfLive, 0)} | ` +
              `${stat(udp.map((r) => r.deadMs ?? NaN))} | ` +
              `${udp.reduce((a, r) => a + r.falsePositives.length, 0)} | ` +
              `${udp.reduce((a, r) => a + r.suspicionsOfLive, 0)} | ` +
              `${stat(rs.map((r) => Math.round(r.steadyPackets * 10) / 10))} | ` +
              `${stat(rs.map((r) => Math.round(r.steadyBytes)))} | ${runs} |`,
          );
        }
      }
      console.log(rows.join('\n'));
      t.end();
    });
  }
}
