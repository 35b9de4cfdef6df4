// The linearizability checker (test/lib/linearizability.ts) on hand-made histories (stale read,
// lost write, a write visible then invisible, pending operations, compare-and-set) and on
// seeded random histories from a real register: they must pass, and must usually fail after
// one read is perturbed.
import { performance } from 'node:perf_hooks';
import t from 'tap';
import { checkHistory, kvModel, type KvInput, type KvOp } from '../lib/linearizability.js';

/** The model without its search-free shortcuts, to exercise the search itself. */
const searchOnly = { ...kvModel, impossible: undefined };

const put = (
  client: number,
  call: number,
  ret: number | undefined,
  key: string,
  value: string,
): KvOp => ({
  client,
  call,
  ret,
  input: { op: 'put', key, value },
});
const get = (
  client: number,
  call: number,
  ret: number | undefined,
  key: string,
  output: string | null,
): KvOp => ({
  client,
  call,
  ret,
  input: { op: 'get', key },
  ...(ret === undefined ? {} : { output }),
});
const cas = (
  client: number,
  call: number,
  ret: number | undefined,
  key: string,
  expect: string | null,
  value: string,
  output?: boolean,
): KvOp => ({ client, call, ret, input: { op: 'cas', key, expect, value }, output });

const check = (h: KvOp[]) => checkHistory(kvModel, h);

t.test('linearizable histories pass', async (t) => {
  t.equal(check([]).result, 'ok', 'empty');
  t.equal(check([get(1, 0, 1, 'x', null)]).result, 'ok', 'initial read of an absent key');
  // Sequential.
  t.equal(
    check([
      put(1, 0, 1, 'x', 'a'),
      get(2, 2, 3, 'x', 'a'),
      put(1, 4, 5, 'x', 'b'),
      get(2, 6, 7, 'x', 'b'),
    ]).result,
    'ok',
  );
  // A read concurrent with a write may see either value; two such reads may disagree.
  const h = [put(1, 0, 10, 'x', 'a'), get(2, 1, 2, 'x', 'a'), get(3, 3, 4, 'x', null)];
  t.equal(check(h).result, 'illegal', 'but not a then absent (visible then invisible)');
  t.equal(
    check([put(1, 0, 10, 'x', 'a'), get(2, 1, 2, 'x', null), get(3, 3, 4, 'x', 'a')]).result,
    'ok',
  );
  // Touching intervals count as concurrent.
  t.equal(check([put(1, 0, 5, 'x', 'a'), get(2, 5, 6, 'x', null)]).result, 'ok');
  // Keys are independent.
  t.equal(
    check([put(1, 0, 1, 'x', 'a'), get(2, 2, 3, 'y', null), get(2, 4, 5, 'x', 'a')]).result,
    'ok',
  );
});

t.test('stale read is caught and explained', async (t) => {
  const h = [
    put(1, 0, 1, 'x', 'a'),
    put(1, 2, 3, 'x', 'b'),
    get(9, 0, 1, 'y', null),
    get(2, 4, 5, 'x', 'a'),
    put(3, 6, 7, 'x', 'c'),
  ];
  const r = check(h);
  t.equal(r.result, 'illegal');
  if (r.result !== 'illegal') return;
  t.equal(r.partition, 'x');
  t.same(
    r.ops.map((o) => o.input),
    [h[0]!.input, h[1]!.input, h[3]!.input],
    'shrunk to the write, the overwrite and the stale read',
  );
  t.match(r.explanation, /put\(x, "a"\)[\s\S]*put\(x, "b"\)[\s\S]*get\(x\) -> "a"/);
  // The search alone (no shortcut) reaches the same verdict and shrinks to the same three.
  const deep = checkHistory(searchOnly, h);
  t.equal(deep.result, 'illegal');
  if (deep.result === 'illegal')
    t.same(
      deep.ops.map((o) => o.input),
      [h[0]!.input, h[1]!.input, h[3]!.input],
    );
});

t.test('lost write and a value from nowhere are caught', async (t) => {
  // Write acknowledged, later reads never see it (they see the older value).
  const lost = [
    put(1, 0, 1, 'x', 'a'),
    put(2, 2, 3, 'x', 'b'),
    get(3, 4, 5, 'x', 'a'),
    get(3, 6, 7, 'x', 'a'),
  ];
  t.equal(check(lost).result, 'illegal');
  // Written then the key reads as absent again.
  t.equal(check([put(1, 0, 1, 'x', 'a'), get(2, 2, 3, 'x', null)]).result, 'illegal');
  const r = check([put(1, 0, 1, 'x', 'a'), get(2, 2, 3, 'x', 'zz')]);
  t.equal(r.result, 'illegal');
  if (r.result === 'illegal') t.match(r.explanation, /no operation wrote/);
});

t.test('pending operations may take effect at any time after their call, or never', async (t) => {
  // A write that never returned, seen later.
  t.equal(check([put(1, 0, undefined, 'x', 'a'), get(2, 100, 101, 'x', 'a')]).result, 'ok');
  // ...or never seen.
  t.equal(check([put(1, 0, undefined, 'x', 'a'), get(2, 100, 101, 'x', null)]).result, 'ok');
  // Seen, then not seen: impossible either way.
  t.equal(
    check([put(1, 0, undefined, 'x', 'a'), get(2, 100, 101, 'x', 'a'), get(2, 102, 103, 'x', null)])
      .result,
    'illegal',
  );
  // It cannot take effect before its call.
  t.equal(check([get(2, 0, 1, 'x', 'a'), put(1, 5, undefined, 'x', 'a')]).result, 'illegal');
  // A pending write may land after a later acknowledged one.
  t.equal(
    check([put(1, 0, undefined, 'x', 'a'), put(2, 10, 11, 'x', 'b'), get(3, 20, 21, 'x', 'a')])
      .result,
    'ok',
  );
  // Pending reads are ignored.
  t.equal(check([get(1, 0, undefined, 'x', null), put(2, 1, 2, 'x', 'a')]).result, 'ok');
});

t.test('compare-and-set', async (t) => {
  t.equal(
    check([put(1, 0, 1, 'x', 'a'), cas(2, 2, 3, 'x', 'a', 'b', true), get(3, 4, 5, 'x', 'b')])
      .result,
    'ok',
  );
  t.equal(
    check([put(1, 0, 1, 'x', 'a'), cas(2, 2, 3, 'x', 'a', 'b', false)]).result,
    'illegal',
    'must succeed',
  );
  t.equal(
    check([put(1, 0, 1, 'x', 'a'), cas(2, 2, 3, 'x', 'z', 'b', true)]).result,
    'illegal',
    'must fail',
  );
  // Two concurrent swaps from the same value: only one may win.
  t.equal(
    check([
      put(1, 0, 1, 'x', 'a'),
      cas(2, 2, 5, 'x', 'a', 'b', true),
      cas(3, 2, 5, 'x', 'a', 'c', true),
    ]).result,
    'illegal',
  );
  t.equal(
    check([
      put(1, 0, 1, 'x', 'a'),
      cas(2, 2, 5, 'x', 'a', 'b', true),
      cas(3, 2, 5, 'x', 'a', 'c', false),
    ]).result,
    'ok',
  );
  // A pending swap whose effect is seen.
  t.equal(
    check([put(1, 0, 1, 'x', 'a'), cas(2, 2, undefined, 'x', 'a', 'b'), get(3, 9, 10, 'x', 'b')])
      .result,
    'ok',
  );
});

t.test('the search is bounded: unknown, not a hang', async (t) => {
  // Concurrent writes of distinct values and concurrent reads, then two later reads that see
  // two different values with no write between them: illegal, but only a wide search shows it.
  const wide = (n: number): KvOp[] => {
    const h: KvOp[] = [];
    for (let i = 0; i < n; i++) h.push(put(i, 0, 100, 'x', `v${i}`));
    for (let i = 0; i < n; i++) h.push(get(100 + i, 0, 100, 'x', `v${(i * 5) % n}`));
    h.push(get(200, 101, 102, 'x', 'v0'), get(200, 103, 104, 'x', 'v1'));
    return h;
  };
  const bySteps = checkHistory(kvModel, wide(14), { maxSteps: 500 });
  t.equal(bySteps.result, 'unknown');
  if (bySteps.result === 'unknown') t.match(bySteps.reason, /search bound reached \(500 steps/);
  const t0 = performance.now();
  const byTime = checkHistory(kvModel, wide(14), { timeoutMs: 100 });
  t.equal(byTime.result, 'unknown');
  t.ok(performance.now() - t0 < 1000, 'stopped near its time bound');
  const small = checkHistory(kvModel, wide(6));
  t.equal(small.result, 'illegal', 'a smaller instance is decided');
});

/** mulberry32: a small seeded generator for reproducible histories. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A history from a real register: each client issues operations one after another; each takes
 * effect at a random instant inside its interval, in that order. Some never return (their
 * client is replaced by a new one); they take effect or not.
 */
function randomHistory(seed: number, nOps: number, clients: number, keys: string[]): KvOp[] {
  const r = rng(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)]!;
  const lin: { at: number; op: KvOp; applies: boolean }[] = [];
  const clock = new Array<number>(clients).fill(0);
  const id = Array.from({ length: clients }, (_, i) => i);
  let nextId = clients;
  const recent = new Map<string, string[]>();
  for (let n = 0; n < nOps; n++) {
    const c = Math.floor(r() * clients);
    const call = clock[c]! + Math.floor(r() * 4);
    const ret = call + 1 + Math.floor(r() * 30);
    clock[c] = ret + 1;
    const key = pick(keys);
    const x = r();
    const value = `${id[c]}.${n}`;
    const seen = recent.get(key) ?? [];
    const input: KvInput =
      x < 0.45
        ? { op: 'get', key }
        : x < 0.85
          ? { op: 'put', key, value }
          : { op: 'cas', key, expect: seen.length > 0 && r() < 0.8 ? pick(seen) : null, value };
    if (input.op !== 'get') recent.set(key, [...seen.slice(-3), value]);
    const pending = r() < 0.02;
    const op: KvOp = { client: id[c]!, call, ret: pending ? undefined : ret, input };
    if (pending) id[c] = nextId++;
    lin.push({ at: call + r() * (ret - call), op, applies: !pending || r() < 0.5 });
  }
  lin.sort((a, b) => a.at - b.at);
  const reg = new Map<string, string>();
  for (const { op, applies } of lin) {
    if (!applies) continue;
    const i = op.input;
    const cur = reg.get(i.key) ?? null;
    if (i.op === 'get') op.output = cur;
    else if (i.op === 'put') {
      reg.set(i.key, i.value);
      op.output = true;
    } else {
      const ok = cur === i.expect;
      if (ok) reg.set(i.key, i.value);
      op.output = ok;
    }
    if (op.ret === undefined) delete op.output;
  }
  return lin.map((l) => l.op).sort((a, b) => a.call - b.call);
}

t.test('random register histories pass; one perturbed read usually fails', async (t) => {
  let failed = 0;
  let tried = 0;
  let maxMs = 0;
  let searchMaxMs = 0;
  const deepSizes: number[] = [];
  let ops = 0;
  for (let seed = 1; seed <= 30; seed++) {
    const h = randomHistory(seed, 3000, 8, ['a', 'b', 'c', 'd', 'e']);
    ops += h.length;
    const ok = checkHistory(kvModel, h);
    maxMs = Math.max(maxMs, ok.ms);
    if (ok.result !== 'ok') {
      t.fail(`seed ${seed}: ${ok.result} ${ok.result === 'illegal' ? ok.explanation : ''}`);
      continue;
    }
    // Perturb one completed read to another value written to its key.
    const r = rng(seed * 7919);
    const reads = h.filter((o) => o.input.op === 'get' && o.ret !== undefined);
    const victim = reads[Math.floor(r() * reads.length)]!;
    const values = h
      .filter((o) => o.input.key === victim.input.key && o.input.op !== 'get')
      .map((o) => (o.input as { value: string }).value)
      .filter((v) => v !== victim.output);
    if (values.length === 0) continue;
    const wrong = values[Math.floor(r() * values.length)]!;
    const bad = h.map((o) => (o === victim ? { ...o, output: wrong } : o));
    const res = checkHistory(kvModel, bad);
    maxMs = Math.max(maxMs, res.ms);
    // The search alone must reach the same verdict, within its default bounds.
    if (seed <= 10) {
      const deep = checkHistory(searchOnly, bad);
      searchMaxMs = Math.max(searchMaxMs, deep.ms);
      if (deep.result !== res.result) {
        t.fail(`seed ${seed}: search says ${deep.result}, shortcut ${res.result}`);
      }
      if (deep.result === 'illegal') {
        deepSizes.push(deep.ops.length);
        // Reads of a value nobody wrote cannot shrink (no subset keeps them meaningful); the
        // shortcut reports those. Everything else must shrink to a handful.
        const unwritten = res.result === 'illegal' && /no operation wrote/.test(res.explanation);
        if (!unwritten && deep.ops.length > 8) {
          t.fail(`seed ${seed}: the search's explanation has ${deep.ops.length} operations`);
        }
      }
    }
    tried++;
    if (res.result === 'unknown') t.fail(`seed ${seed}: perturbed history unknown`);
    if (res.result === 'illegal') {
      failed++;
      if (!res.ops.some((o) => o.call === victim.call && o.client === victim.client)) {
        t.fail(`seed ${seed}: explanation lacks the perturbed read`);
      }
      if (res.ops.length > 8) t.fail(`seed ${seed}: explanation has ${res.ops.length} operations`);
    }
  }
  t.ok(tried >= 25, `${tried} perturbations`);
  t.ok(failed >= 0.8 * tried, `${failed}/${tried} perturbed histories rejected`);
  t.ok(maxMs < 1000, `slowest check ${maxMs.toFixed(1)} ms (${ops / 30} operations each)`);
  t.comment(
    `explanations found by the search alone (after shrinking): ${deepSizes.join(', ')} ops`,
  );
  t.comment(
    `perturbed rejected ${failed}/${tried}; slowest check ${maxMs.toFixed(1)} ms; ` +
      `slowest search without shortcuts ${searchMaxMs.toFixed(1)} ms`,
  );
});

/** Brute force: some subset of the pending operations plus all completed ones, in some order
 * that respects real time, replays through the model. Only for a handful of operations. */
function bruteForce(h: KvOp[]): boolean {
  const done = h.filter(
    (o) => o.ret !== undefined && !(o.input.op === 'get' && o.ret === undefined),
  );
  const pend = h.filter((o) => o.ret === undefined);
  const tryOrder = (ops: KvOp[]): boolean => {
    const used = new Array<boolean>(ops.length).fill(false);
    const rec = (state: string | null, k: number): boolean => {
      if (k === ops.length) return true;
      for (let i = 0; i < ops.length; i++) {
        if (used[i]) continue;
        const o = ops[i]!;
        // Every unused operation that returned before o was called must come first.
        if (ops.some((p, j) => !used[j] && j !== i && p.ret !== undefined && p.ret < o.call))
          continue;
        const next = kvModel.step(state, o.input, o.ret === undefined ? undefined : o.output);
        if (next === undefined) continue;
        used[i] = true;
        if (rec(next, k + 1)) return true;
        used[i] = false;
      }
      return false;
    };
    return rec(null, 0);
  };
  for (let mask = 0; mask < 1 << pend.length; mask++) {
    const chosen = pend.filter((_, i) => (mask >> i) & 1);
    if (tryOrder([...done, ...chosen])) return true;
  }
  return false;
}

t.test('agrees with brute force on small random histories', async (t) => {
  const r = rng(2024);
  let legal = 0;
  let illegal = 0;
  for (let n = 0; n < 3000; n++) {
    const unique = n % 2 === 0;
    const size = 2 + Math.floor(r() * 5);
    const vals = ['a', 'b', 'c'];
    const h: KvOp[] = [];
    for (let i = 0; i < size; i++) {
      const call = Math.floor(r() * 10);
      const ret = r() < 0.15 ? undefined : call + Math.floor(r() * 6);
      const value = unique ? `v${i}` : vals[Math.floor(r() * 3)]!;
      const seen =
        r() < 0.2 ? null : unique ? `v${Math.floor(r() * size)}` : vals[Math.floor(r() * 3)]!;
      const x = r();
      if (x < 0.45) h.push(get(i, call, ret, 'k', seen));
      else if (x < 0.8) h.push(put(i, call, ret, 'k', value));
      else h.push(cas(i, call, ret, 'k', seen, value, ret === undefined ? undefined : r() < 0.5));
    }
    const want = bruteForce(h);
    const got = check(h);
    if (want) legal++;
    else illegal++;
    if (got.result !== (want ? 'ok' : 'illegal')) {
      t.fail(
        `history ${n}: checker ${got.result}, brute force ${want ? 'ok' : 'illegal'}: ${JSON.stringify(h)}`,
      );
      break;
    }
    // A shrunk explanation must itself be illegal by brute force.
    if (got.result === 'illegal' && bruteForce(got.ops)) {
      t.fail(`history ${n}: explanation is linearizable: ${JSON.stringify(got.ops)}`);
      break;
    }
  }
  t.ok(legal > 300 && illegal > 300, `${legal} legal, ${illegal} illegal`);
});
