/**
 * bench/lb's nftables half: program N services × M backends through NftBackend and, in the
 * same run, feed `nft -f` the very ruleset text NftBackend generates for that state (the
 * yardstick: nft parsing and the kernel transaction without our diffing). Also times a no-op
 * apply (read back and compare only) and an apply that adds one backend (read, diff, small
 * transaction). Everything happens in a throwaway test namespace, removed at the end.
 * May import: node built-ins, src/lb, test/lib/testnet.ts.
 */
import { performance } from 'node:perf_hooks';
import { NftBackend, normalizeServices, planServices, renderTable } from '../../src/lb/nft.js';
import type { LbService } from '../../src/lb/types.js';
import { TestNet } from '../../test/lib/testnet.js';

export interface LbNftResult {
  services: number;
  backends: number;
  /** NftBackend.apply() of the whole state into an empty namespace. */
  ours_ms: number;
  /** `nft -f` of the same ruleset text into an empty namespace. */
  nft_ms: number;
  /** apply() again with nothing changed, generation unchanged: compare with what we wrote. */
  noop_ms: number;
  /** The same after forget(): list the table, parse and compare (a full resync). */
  noop_full_ms: number;
  /** apply() with one backend added to one service (generation unchanged: no listing). */
  add_one_ms: number;
  /** The same after forget(). */
  add_one_full_ms: number;
  rules_bytes: number;
}

/** N services with M backends each: VIPs 10.128.x.y:80, backends 10.64.x.y:8080. */
export function lbState(services: number, backends: number): LbService[] {
  const out: LbService[] = [];
  let b = 0;
  for (let i = 0; i < services; i++) {
    const bs = [];
    for (let j = 0; j < backends; j++, b++)
      bs.push({
        ip: `10.${64 + (b >> 16)}.${(b >> 8) & 255}.${b & 255}`,
        port: 8080,
        weight: 1,
        state: 'active' as const,
        task: `svc${i}.${j + 1}`,
      });
    out.push({
      key: `vip:bench:svc${i}`,
      fwmark: 256 + i,
      protocol: 'tcp',
      vip: `10.128.${i >> 8}.${i & 255}`,
      port: 80,
      targetPort: 8080,
      scheduler: 'rr',
      backends: bs,
    });
  }
  return out;
}

export async function benchLbNft(
  opts: { services?: number; backends?: number } = {},
): Promise<LbNftResult> {
  const services = opts.services ?? 1000;
  const backends = opts.backends ?? 10;
  const net = TestNet.create({ hosts: 1 });
  try {
    const host = net.hosts[0]!;
    const lb = new NftBackend({ netns: host.ns });
    const desired = lbState(services, backends);
    // Warm up (module loading, JIT, the first netlink socket), as in a running meshd.
    await lb.apply(lbState(2, 2));
    await lb.flush();

    let t0 = performance.now();
    await lb.apply(desired);
    const ours = performance.now() - t0;

    t0 = performance.now();
    const noop = await lb.apply(desired);
    const noopMs = performance.now() - t0;
    if (noop.changes !== 0)
      throw new Error(`bench lb-nft: no-op apply made ${noop.changes} changes`);

    lb.forget();
    t0 = performance.now();
    const noopFull = await lb.apply(desired);
    const noopFullMs = performance.now() - t0;
    if (noopFull.changes !== 0)
      throw new Error(`bench lb-nft: full no-op made ${noopFull.changes} changes`);

    desired[0]!.backends.push({ ip: '10.127.0.1', port: 8080, weight: 1, state: 'active' });
    t0 = performance.now();
    await lb.apply(desired);
    const addOne = performance.now() - t0;
    desired[0]!.backends.push({ ip: '10.127.0.2', port: 8080, weight: 1, state: 'active' });
    lb.forget();
    t0 = performance.now();
    await lb.apply(desired);
    const addOneFull = performance.now() - t0;
    desired[0]!.backends.splice(-2, 2);

    await lb.flush();
    const text = renderTable(planServices(normalizeServices(desired)));
    t0 = performance.now();
    // Same spawn path as ours (setns, no `ip netns exec` overhead), so only the work differs.
    const r = await lb.run(['-f', '-'], text);
    const nftMs = performance.now() - t0;
    if (r.code !== 0) throw new Error(`bench lb-nft: nft -f failed: ${r.stderr.slice(0, 500)}`);
    await lb.flush();
    return {
      services,
      backends,
      ours_ms: Math.round(ours),
      nft_ms: Math.round(nftMs),
      noop_ms: Math.round(noopMs),
      noop_full_ms: Math.round(noopFullMs),
      add_one_ms: Math.round(addOne),
      add_one_full_ms: Math.round(addOneFull),
      rules_bytes: text.length,
    };
  } finally {
    net.destroy();
  }
}
