// Seeded raft simulation: thousands of runs with drops, duplicates, reordering, partitions
// (one-way too) and crashes that lose unpersisted state; safety checked after every step,
// every acknowledged value on every node after healing. RAFT_SIM_SEEDS=N sets the run count;
// RAFT_SIM_STEPS=N sets the chaos length; RAFT_SIM_SEED=S replays one seed with a full trace.
import t from 'tap';
import { runRaftSim, type SimResult } from './lib/raft-sim.js';

const replay = process.env.RAFT_SIM_SEED;
const seeds = Number(process.env.RAFT_SIM_SEEDS ?? 2000);
// Longer histories per seed for the long profile (default 600 time units of chaos).
const chaosSteps = Number(process.env.RAFT_SIM_STEPS ?? 600);

function report(r: SimResult): string {
  return [
    `seed ${r.seed} failed: ${r.error}`,
    `replay: RAFT_SIM_SEED=${r.seed} RAFT_SIM_STEPS=${chaosSteps} npx tap dist/test/sim/raft-sim.test.js`,
    'last events:',
    ...r.trace.slice(-40),
  ].join('\n');
}

if (replay !== undefined) {
  const seed = Number(replay);
  const nodes = seed % 2 === 0 ? 3 : 5;
  const r = runRaftSim(seed, { nodes, chaosSteps, verbose: true });
  t.ok(r.ok, r.ok ? `seed ${seed} ok` : report(r));
  if (!r.ok) console.log(r.trace.join('\n'));
} else {
  for (const nodes of [3, 5]) {
    t.test(`${nodes}-node clusters, ${Math.ceil(seeds / 2)} seeds`, (t) => {
      const start = process.hrtime.bigint();
      let steps = 0;
      let acked = 0;
      let crashes = 0;
      let leaders = 0;
      let snaps = 0;
      let reads = 0;
      let confs = 0;
      let transfers = 0;
      let failures = 0;
      for (let i = 0; i < Math.ceil(seeds / 2); i++) {
        const seed = i * 2 + (nodes === 3 ? 0 : 1);
        const r = runRaftSim(seed, { nodes, chaosSteps });
        steps += r.steps;
        acked += r.acked;
        crashes += r.crashes;
        leaders += r.leaders;
        snaps += r.snapshotsSent;
        reads += r.readsChecked;
        confs += r.confChanges;
        transfers += r.transfers;
        if (!r.ok) {
          failures++;
          t.fail(report(r));
          if (failures >= 3) break;
        }
      }
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      t.equal(failures, 0, 'no invariant violated');
      t.ok(acked > seeds, `clients got values acknowledged (${acked})`);
      t.ok(
        crashes > 0 && snaps > 0,
        `faults exercised: ${crashes} crashes, ${snaps} snapshots sent`,
      );
      t.ok(reads > 0 && confs > 0 && transfers > 0, 'reads, membership changes and transfers ran');
      t.comment(
        `${nodes} nodes: ${Math.ceil(seeds / 2)} seeds, ${steps} steps, ${acked} acked, ` +
          `${leaders} terms with a leader, ${crashes} crashes, ${snaps} snapshots, ` +
          `${reads} reads checked, ${confs} conf changes, ${transfers} transfers, ${ms.toFixed(0)} ms`,
      );
      t.end();
    });
  }
}
