// The store on raft: three replicas, each applying its own committed log to its own Store,
// under leader changes, isolated nodes and clients that retry through other nodes (so the same
// command often commits twice). Every replica must give the same result for every index and end
// byte-identical; every retried command must take effect once. STORE_SIM_SEEDS=N sets the runs.
import { decodeEntry } from '../../src/manager/store/entry.js';
import t from 'tap';
import { EntryType, ProposalDroppedError, SeededRandom } from '../../src/raft/index.js';
import { Store, encodeCommand, type Op } from '../../src/manager/store/store.js';
import { RaftNet } from './lib/raft-net.js';

const seeds = Number(process.env.STORE_SIM_SEEDS ?? 30);
const IDS = [1, 2, 3];

interface Replica {
  store: Store;
  cursor: number;
}

interface Slot {
  client: string;
  seq: number;
  /** The command in flight (proposed, result not yet seen), or null. */
  pending: Uint8Array | null;
}

function randomOp(r: SeededRandom, slot: Slot): Op {
  const id = `k${r.intn(6)}`;
  switch (r.intn(4)) {
    case 0:
      return { op: 'put', kind: 'kv', id, value: `${slot.client}.${slot.seq}` };
    case 1:
      return { op: 'cas', kind: 'kv', id, prev: r.intn(2) ? null : `w0.${r.intn(5)}`, value: 'c' };
    case 2:
      return {
        op: 'create',
        kind: 'service',
        value: { id: `s${r.intn(5)}`, name: `svc${r.intn(5)}`, spec: {} },
      };
    default:
      return { op: 'delete', kind: 'service', id: `s${r.intn(5)}` };
  }
}

function run(seed: number): { error: string | null; commits: number; dupCommits: number } {
  const r = new SeededRandom(seed);
  const net = new RaftNet(IDS, {}, seed);
  const reps = new Map<number, Replica>(IDS.map((id) => [id, { store: new Store(), cursor: 0 }]));
  const results = new Map<number, string>();
  /** Command bytes (base64) → index of its first commit, and how often it committed. */
  const firstAt = new Map<string, number>();
  const commitCount = new Map<string, number>();
  const slots: Slot[] = [0, 1, 2, 3].map((i) => ({ client: `w${i}`, seq: 0, pending: null }));
  let error: string | null = null;

  const feed = (): void => {
    for (const [id, rep] of reps) {
      const n = net.node(id);
      while (rep.cursor < n.applied.length) {
        const e = n.applied[rep.cursor++]!;
        if (e.type !== EntryType.Normal) continue;
        const res = JSON.stringify(rep.store.apply(e.index, e.data));
        const seen = results.get(e.index);
        if (seen === undefined) {
          results.set(e.index, res);
          const key = Buffer.from(e.data).toString('base64');
          if (key !== '') {
            if (!firstAt.has(key)) firstAt.set(key, e.index);
            commitCount.set(key, (commitCount.get(key) ?? 0) + 1);
          }
        } else if (seen !== res) {
          error ??= `index ${e.index}: node ${id} answered ${res}, another node ${seen}`;
        }
      }
    }
    for (const s of slots) {
      if (s.pending !== null && firstAt.has(Buffer.from(s.pending).toString('base64')))
        s.pending = null;
    }
  };
  const propose = (via: number, data: Uint8Array): void => {
    try {
      net.node(via).rn.propose(data);
    } catch (e) {
      if (!(e instanceof ProposalDroppedError)) throw e;
    }
  };

  net.campaign(1);
  feed();
  for (let step = 0; step < 400 && error === null; step++) {
    const roll = r.intn(100);
    const via = IDS[r.intn(IDS.length)]!;
    const slot = slots[r.intn(slots.length)]!;
    if (roll < 45) {
      if (slot.pending === null) {
        slot.seq++;
        const ops = Array.from({ length: 1 + r.intn(2) }, () => randomOp(r, slot));
        // A marker written only by this command: its version tells when the command took effect.
        ops.push({ op: 'put', kind: 'kv', id: `log.${slot.client}.${slot.seq}`, value: '1' });
        slot.pending = encodeCommand({ client: slot.client, seq: slot.seq, ops });
      }
      propose(via, slot.pending);
    } else if (roll < 70) {
      // A retry through some node, whether or not the first copy made it.
      if (slot.pending !== null) propose(via, slot.pending);
    } else if (roll < 75) {
      net.isolate(via);
    } else if (roll < 82) {
      net.heal();
    }
    net.tickAll(1 + r.intn(3));
    feed();
  }
  net.heal();
  for (let round = 0; round < 20 && slots.some((s) => s.pending !== null); round++) {
    for (const s of slots) if (s.pending !== null) propose(IDS[round % 3]!, s.pending);
    net.tickAll(15);
    feed();
  }
  // Settle: a leader, and every replica at the same applied index (bounded).
  const settled = (): boolean => {
    const st = IDS.map((id) => net.node(id).rn.status());
    const a = IDS.map((id) => reps.get(id)!.store.appliedIndex);
    return st.some((x) => x.lead !== 0) && new Set(a).size === 1;
  };
  for (let i = 0; i < 300 && !settled(); i++) {
    net.tickAll(1);
    feed();
  }
  if (error === null && slots.some((s) => s.pending !== null)) error = 'a command never committed';
  const snaps = IDS.map((id) => Buffer.from(reps.get(id)!.store.snapshot()).toString('base64'));
  if (error === null && new Set(snaps).size !== 1) {
    const at = IDS.map((id) => {
      const st = net.node(id).rn.status();
      return `${id}: applied ${reps.get(id)!.store.appliedIndex}, commit ${st.commit}, last ${st.lastIndex}, term ${st.term}, lead ${st.lead}`;
    });
    error = `replicas differ after healing (${at.join('; ')})`;
  }
  const applied = IDS.map((id) => reps.get(id)!.store.appliedIndex);
  if (error === null && new Set(applied).size !== 1)
    error = `applied indices differ: ${applied.join(', ')}`;
  const dupCommits = [...commitCount.values()].filter((c) => c > 1).length;
  // Each command took effect at most once, at its first commit: a re-application would have
  // moved its marker's version to a later index (or created it, had the first attempt failed).
  for (const rep of reps.values()) {
    for (const [text, first] of firstAt) {
      const cmd = decodeEntry(Buffer.from(text, 'base64'))!;
      const okFirst = (JSON.parse(results.get(first)!) as { ok: boolean }).ok;
      const marker = rep.store.get('kv', `log.${cmd.client}.${cmd.seq}`);
      if (error === null && (okFirst ? marker?.version !== first : marker !== undefined)) {
        error = `command ${cmd.client}#${cmd.seq} first committed at ${first} (ok: ${okFirst}) but its marker is ${JSON.stringify(marker)}`;
      }
    }
  }
  return { error, commits: results.size, dupCommits };
}

t.test(`store replicas on raft agree (${seeds} seeds)`, (t) => {
  let commits = 0;
  let dups = 0;
  for (let seed = 1; seed <= seeds; seed++) {
    const res = run(seed);
    commits += res.commits;
    dups += res.dupCommits;
    if (res.error !== null) {
      t.fail(`seed ${seed}: ${res.error}`);
      break;
    }
  }
  t.ok(commits > seeds * 50, `${commits} entries committed`);
  t.ok(dups > seeds, `${dups} commands committed more than once, applied once`);
  t.end();
});
