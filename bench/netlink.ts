/**
 * Programming rate of the netlink layer: 10,000 permanent neighbour entries and 10,000 FDB
 * entries on a VXLAN device, through our layer vs iproute2's batch mode (`ip -batch`,
 * `bridge -batch`, one process each, the fastest way to drive iproute2), in a namespace of its
 * own. Both sides do the same `replace` operations on a fresh device; the peer's time includes
 * starting the two iproute2 processes, as a user of iproute2 would pay it. Medians of several
 * alternating rounds. Target: ours no slower (ratio ours/peer ≤ 1.0).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  fdbAddMany,
  fdbList,
  linkAdd,
  linkDel,
  neighAddMany,
  neighList,
} from '../src/netlink/index.js';
import { TestNet } from '../test/lib/testnet.js';

const N = 10_000;
const ROUNDS = 5;

function entries(): Array<{ ip: string; mac: string; vtep: string }> {
  return Array.from({ length: N }, (_, i) => ({
    ip: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
    mac: `02:42:0a:${((i >> 16) & 255).toString(16).padStart(2, '0')}:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`,
    vtep: `198.18.${1 + ((i >> 8) & 127)}.${i & 255}`,
  }));
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

export async function main(): Promise<void> {
  await Promise.resolve();
  const net = TestNet.create({ hosts: 1 });
  const tmp = mkdtempSync(join(tmpdir(), 'mesh-bench-'));
  try {
    const host = net.hosts[0]!;
    const h = host.rt;
    const es = entries();
    const ipBatch = join(tmp, 'ip.batch');
    const brBatch = join(tmp, 'bridge.batch');
    writeFileSync(
      ipBatch,
      es.map((e) => `neigh replace ${e.ip} lladdr ${e.mac} dev vx-peer nud permanent\n`).join(''),
    );
    writeFileSync(
      brBatch,
      es.map((e) => `fdb replace ${e.mac} dev vx-peer dst ${e.vtep} self permanent\n`).join(''),
    );

    const ours = { neigh: [] as number[], fdb: [] as number[], total: [] as number[] };
    const peer = { neigh: [] as number[], fdb: [] as number[], total: [] as number[] };
    for (let r = 0; r < ROUNDS; r++) {
      for (const dev of ['vx-ours', 'vx-peer']) {
        linkDel(h, dev, { ifExists: true });
        linkAdd(h, {
          kind: 'vxlan',
          name: dev,
          vni: dev === 'vx-ours' ? 4096 : 4097,
          local: host.addr,
          dev: 'eth0',
          up: true,
        });
      }
      // Ours: encoding included, as a caller would pay it.
      let t0 = performance.now();
      neighAddMany(h, 'vx-ours', es);
      const t1 = performance.now();
      fdbAddMany(
        h,
        'vx-ours',
        es.map((e) => ({ mac: e.mac, dst: e.vtep })),
      );
      const t2 = performance.now();
      ours.neigh.push(t1 - t0);
      ours.fdb.push(t2 - t1);
      ours.total.push(t2 - t0);

      t0 = performance.now();
      const a = spawnSync('ip', ['-n', host.name, '-batch', ipBatch], { encoding: 'utf8' });
      const t3 = performance.now();
      const b = spawnSync('bridge', ['-n', host.name, '-batch', brBatch], { encoding: 'utf8' });
      const t4 = performance.now();
      if (a.status !== 0 || b.status !== 0)
        throw new Error(`iproute2 batch failed: ${a.stderr}${b.stderr}`);
      peer.neigh.push(t3 - t0);
      peer.fdb.push(t4 - t3);
      peer.total.push(t4 - t0);

      // Both sides really programmed everything.
      for (const dev of ['vx-ours', 'vx-peer']) {
        const n = neighList(h, { dev }).length;
        const f = fdbList(h, { dev }).filter((x) => x.ip).length;
        if (n !== N || f !== N)
          throw new Error(`${dev}: ${n} neighbours and ${f} fdb entries, want ${N} each`);
      }
    }
    const res = {
      bench: 'netlink',
      entries: { neigh: N, fdb: N },
      ours: {
        total_ms: +median(ours.total).toFixed(1),
        neigh_ms: +median(ours.neigh).toFixed(1),
        fdb_ms: +median(ours.fdb).toFixed(1),
      },
      peer: {
        total_ms: +median(peer.total).toFixed(1),
        neigh_ms: +median(peer.neigh).toFixed(1),
        fdb_ms: +median(peer.fdb).toFixed(1),
      },
      ratio: +(median(ours.total) / median(peer.total)).toFixed(3),
    };
    process.stdout.write(
      `netlink: ${N} neigh + ${N} fdb entries, median of ${ROUNDS}\n` +
        `  ours (one process, batched sendmsg): ${res.ours.total_ms} ms (neigh ${res.ours.neigh_ms}, fdb ${res.ours.fdb_ms})\n` +
        `  iproute2 -batch:                     ${res.peer.total_ms} ms (neigh ${res.peer.neigh_ms}, fdb ${res.peer.fdb_ms})\n` +
        `  ratio ours/peer: ${res.ratio} (target <= 1.0)\n`,
    );
    process.stdout.write(JSON.stringify(res) + '\n');
  } finally {
    rmSync(tmp, { recursive: true, force: true });
    net.destroy();
  }
}
