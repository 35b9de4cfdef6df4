/**
 * A linearizability checker in the style of Porcupine (Athalye, 2017): the Wing & Gong search
 * (1993) with Lowe's memoization of (linearized set, state) pairs ("Testing for
 * linearizability", 2017), run separately on each partition of a P-compositional model
 * (Herlihy & Wing 1990, §3.3: a history is linearizable iff each per-object sub-history is).
 * A key-value register model (put, get, compare-and-set) is provided.
 *
 * Operations that never returned (timed out, crashed client) have `ret` undefined: they may
 * take effect at any point after their call, or never (they are given a return time after
 * every other event, so the search may also place them last, where they change nothing seen).
 * Two operations are concurrent unless one's return is strictly before the other's call.
 *
 * The search is bounded in steps and wall time: past the bound the answer is "unknown", never
 * a hang. On a violation the offending partition is shrunk (delta debugging, bounded too) to a
 * small set of operations that is still not linearizable.
 *
 * Test library: may import node:perf_hooks only.
 */

import { performance } from 'node:perf_hooks';

export interface Operation<I, O> {
  client: number;
  /** Invocation time (any monotonic unit, e.g. ms). */
  call: number;
  /** Response time; undefined when the operation never returned. */
  ret?: number | undefined;
  input: I;
  /** The response; undefined when the operation never returned. */
  output?: O | undefined;
}

export interface Model<S, I, O> {
  /** Split a history into independent sub-histories (e.g. by key); default: one. */
  partition?(ops: Operation<I, O>[]): Map<string, Operation<I, O>[]>;
  init(): S;
  /**
   * Apply `input` to `s` if it can have produced `output` (undefined output: the operation never
   * returned, any outcome is allowed). Returns the new state, or undefined when impossible.
   */
  step(s: S, input: I, output: O | undefined): S | undefined;
  /** A string identifying the state, for memoization. */
  key(s: S): string;
  /**
   * While shrinking a counterexample: whether `sub` (a subset of the partition `original`)
   * being illegal implies that `original` is. Default: always (true for models where removing
   * operations only removes constraints).
   */
  wellFormed?(sub: Operation<I, O>[], original: Operation<I, O>[]): boolean;
  /** `sub` plus the operations of `all` it needs to make sense (used to localize shrinking). */
  support?(sub: Operation<I, O>[], all: Operation<I, O>[]): Operation<I, O>[];
  /** Whether an operation observes without changing the state (shrinking drops these first). */
  readOnly?(op: Operation<I, O>): boolean;
  /** A fast check for an obviously impossible operation (e.g. a read of a value never written). */
  impossible?(ops: Operation<I, O>[]): { ops: Operation<I, O>[]; why: string } | null;
  describe?(op: Operation<I, O>): string;
}

export interface CheckOptions {
  /** Give up (result "unknown") after this many search steps in total. @default 5_000_000 */
  maxSteps?: number;
  /** Give up (result "unknown") after this many milliseconds in total. @default 10_000 */
  timeoutMs?: number;
  /** Time budget for shrinking a counterexample. @default 500 */
  shrinkMs?: number;
}

export type CheckResult<I, O> =
  | { result: 'ok'; partitions: number; steps: number; ms: number }
  | {
      result: 'illegal';
      partition: string;
      /** A small set of operations of that partition that has no linearization. */
      ops: Operation<I, O>[];
      explanation: string;
      steps: number;
      ms: number;
    }
  | { result: 'unknown'; partition: string; reason: string; steps: number; ms: number };

interface Ev {
  op: number;
  call: boolean;
  time: number;
  match: Ev | null;
  prev: Ev | null;
  next: Ev | null;
}

type Single = 'ok' | 'illegal' | 'unknown';

/**
 * Wing–Gong search with memoization over one partition. Operations that never returned need
 * not be linearized at all (they may take effect last, or never), and one that would leave
 * the state unchanged is never tried (it may as well go last): without this every pending
 * compare-and-set that fails would double the states a failing search must rule out.
 */
function checkSingle<S, I, O>(
  model: Model<S, I, O>,
  ops: Operation<I, O>[],
  budget: { steps: number; deadline: number },
  progress?: { depth: number; op: number },
): Single {
  const n = ops.length;
  if (n === 0) return 'ok';
  const evs: Ev[] = [];
  let nDone = 0;
  for (let i = 0; i < n; i++) {
    const o = ops[i]!;
    if (o.ret !== undefined) nDone++;
    const c: Ev = { op: i, call: true, time: o.call, match: null, prev: null, next: null };
    const r: Ev = {
      op: i,
      call: false,
      time: o.ret ?? Infinity,
      match: null,
      prev: null,
      next: null,
    };
    c.match = r;
    evs.push(c, r);
  }
  // Calls before returns at equal times: touching operations count as concurrent.
  evs.sort((a, b) => a.time - b.time || (a.call === b.call ? 0 : a.call ? -1 : 1));
  const head: Ev = { op: -1, call: false, time: -Infinity, match: null, prev: null, next: null };
  let prev = head;
  for (const e of evs) {
    prev.next = e;
    e.prev = prev;
    prev = e;
  }
  const bits = new Uint32Array((Math.ceil(n / 32) + 1) & ~1);
  const words = new Uint16Array(bits.buffer);
  const flip = (op: number): void => {
    bits[op >>> 5]! ^= 1 << (op & 31);
  };
  const bitKey = (): string => {
    let s = '';
    for (let i = 0; i < words.length; i += 4096) {
      s += String.fromCharCode(...words.subarray(i, i + 4096));
    }
    return s;
  };
  const cache = new Set<string>();
  const stack: { ev: Ev; state: S }[] = [];
  let state = model.init();
  let e = head.next;
  let doneLifted = 0;
  for (;;) {
    if (doneLifted === nDone) return 'ok';
    if (--budget.steps < 0) return 'unknown';
    if ((budget.steps & 1023) === 0 && performance.now() > budget.deadline) return 'unknown';
    if (e === null || !e.call) {
      if (progress !== undefined && e !== null && stack.length >= progress.depth) {
        progress.depth = stack.length;
        progress.op = e.op;
      }
      // An operation returned before it could be linearized: undo the last choice.
      const top = stack.pop();
      if (top === undefined) return 'illegal';
      state = top.state;
      flip(top.ev.op);
      if (ops[top.ev.op]!.ret !== undefined) doneLifted--;
      unlift(top.ev);
      e = top.ev.next;
      continue;
    }
    const o = ops[e.op]!;
    const pending = o.ret === undefined;
    const next = model.step(state, o.input, pending ? undefined : o.output);
    if (next === undefined) {
      e = e.next;
      continue;
    }
    const sk = model.key(next);
    if (pending && sk === model.key(state)) {
      e = e.next;
      continue;
    }
    flip(e.op);
    const k = `${bitKey()}\u0001${sk}`;
    if (cache.has(k)) {
      flip(e.op);
      e = e.next;
      continue;
    }
    cache.add(k);
    if (!pending) doneLifted++;
    stack.push({ ev: e, state });
    state = next;
    lift(e);
    e = head.next;
  }
}

function lift(c: Ev): void {
  const r = c.match!;
  c.prev!.next = c.next;
  c.next!.prev = c.prev;
  r.prev!.next = r.next;
  if (r.next !== null) r.next.prev = r.prev;
}

function unlift(c: Ev): void {
  const r = c.match!;
  r.prev!.next = r;
  if (r.next !== null) r.next.prev = r;
  c.prev!.next = c;
  c.next!.prev = c;
}

/** Check `history` against `model`. */
export function checkHistory<S, I, O>(
  model: Model<S, I, O>,
  history: Operation<I, O>[],
  opts: CheckOptions = {},
): CheckResult<I, O> {
  const t0 = performance.now();
  const budget = {
    steps: opts.maxSteps ?? 5_000_000,
    deadline: t0 + (opts.timeoutMs ?? 10_000),
  };
  const total = budget.steps;
  const parts = model.partition?.(history) ?? new Map([['', history]]);
  let unknown: string | null = null;
  for (const [name, ops] of parts) {
    const bad = model.impossible?.(ops) ?? null;
    if (bad !== null) {
      return {
        result: 'illegal',
        partition: name,
        ops: bad.ops,
        explanation: `${bad.why}:\n${describeAll(model, bad.ops)}`,
        steps: total - budget.steps,
        ms: performance.now() - t0,
      };
    }
    const progress = { depth: -1, op: -1 };
    const r = checkSingle(model, ops, budget, progress);
    if (r === 'illegal') {
      const steps = total - budget.steps;
      const small = shrink(model, ops, opts.shrinkMs ?? 500, progress.op);
      return {
        result: 'illegal',
        partition: name,
        ops: small,
        explanation:
          `no order of these ${small.length} operations (of ${ops.length} on ` +
          `${JSON.stringify(name)}) respects both real time and the model:\n` +
          describeAll(model, small),
        steps,
        ms: performance.now() - t0,
      };
    }
    if (r === 'unknown') {
      unknown = name;
      if (budget.steps < 0 || performance.now() > budget.deadline) break;
    }
  }
  const steps = total - Math.max(0, budget.steps);
  const ms = performance.now() - t0;
  if (unknown !== null) {
    return {
      result: 'unknown',
      partition: unknown,
      reason: `search bound reached (${steps} steps, ${Math.round(ms)} ms)`,
      steps,
      ms,
    };
  }
  return { result: 'ok', partitions: parts.size, steps, ms };
}

/**
 * Shrink an illegal partition to a small illegal subset. Removing operations can make a
 * history *less* legal (drop the write a failed compare-and-set depended on), so a subset
 * explains the original only if the model says it does (`wellFormed(sub, original)`).
 * First cut everything called after the operation whose return the search could not get past,
 * then delta debugging (Zeller & Hildebrandt 2002, simplified): drop chunks while the rest stays
 * well formed and illegal, halving the chunk size down to single operations. Bounded in time.
 */
function shrink<S, I, O>(
  model: Model<S, I, O>,
  ops: Operation<I, O>[],
  ms: number,
  stuck: number,
): Operation<I, O>[] {
  const deadline = performance.now() + ms;
  const illegal = (cand: Operation<I, O>[]): boolean =>
    cand.length > 0 &&
    (model.wellFormed?.(cand, ops) ?? true) &&
    checkSingle(model, cand, { steps: 200_000, deadline }) === 'illegal';
  // Phase 0 drops operations that observe without changing the state (always safe), phase 1
  // the rest: once the observers are gone, the model allows more writes to go.
  const ro = (o: Operation<I, O>): boolean => model.readOnly?.(o) ?? true;
  let cur = ops;
  const cutAt = stuck >= 0 ? ops[stuck]!.ret : undefined;
  if (stuck >= 0 && model.support !== undefined) {
    // Localize: the operations just before the one the search could not get past, plus what
    // the model needs to keep them meaningful (e.g. the writers of the values they read).
    const byCall = [...ops].sort((a, b) => a.call - b.call);
    const at = byCall.indexOf(ops[stuck]!);
    for (let w = 4; w < ops.length && performance.now() < deadline; w *= 4) {
      const near = byCall.filter((o, i) => i >= at - w && o.call <= cutAt!);
      const cand = model.support(near, ops);
      if (cand.length < cur.length && illegal(cand)) {
        cur = cand;
        break;
      }
    }
  }
  for (const phase of [0, 1]) {
    const movable = (o: Operation<I, O>): boolean => ro(o) === (phase === 0);
    if (cutAt !== undefined) {
      const cand = cur.filter((o) => o.call <= cutAt || !movable(o));
      if (cand.length < cur.length && illegal(cand)) cur = cand;
    }
    const fixed = cur.filter((o) => !movable(o));
    let moving = cur.filter(movable);
    for (let size = Math.max(1, moving.length >> 1); performance.now() < deadline; size >>= 1) {
      for (let i = 0; i < moving.length && performance.now() < deadline;) {
        const rest = [...moving.slice(0, i), ...moving.slice(i + size)];
        if (illegal([...fixed, ...rest].sort((a, b) => a.call - b.call))) moving = rest;
        else i += size;
      }
      if (size === 1) break;
    }
    cur = [...fixed, ...moving].sort((a, b) => a.call - b.call);
  }
  return [...cur].sort((a, b) => a.call - b.call);
}

function describeAll<S, I, O>(model: Model<S, I, O>, ops: Operation<I, O>[]): string {
  const d = (o: Operation<I, O>): string =>
    model.describe !== undefined
      ? model.describe(o)
      : `client ${o.client} [${o.call}, ${o.ret ?? '…'}] ${JSON.stringify(o.input)} -> ` +
        `${o.ret === undefined ? 'no reply' : JSON.stringify(o.output)}`;
  return ops.map((o) => `  ${d(o)}`).join('\n');
}

// --- key-value register model ---

export type KvInput =
  | { op: 'put'; key: string; value: string }
  | { op: 'get'; key: string }
  | { op: 'cas'; key: string; expect: string | null; value: string };

/** get: the value read (null: absent); cas: whether it swapped; put: anything (ignored). */
export type KvOutput = string | null | boolean | undefined;

export type KvOp = Operation<KvInput, KvOutput>;

/** One register per key, initially absent (null). */
export const kvModel: Model<string | null, KvInput, KvOutput> = {
  partition(ops) {
    const m = new Map<string, KvOp[]>();
    for (const o of ops) {
      // A get that never returned observed nothing and changes nothing.
      if (o.input.op === 'get' && o.ret === undefined) continue;
      let l = m.get(o.input.key);
      if (l === undefined) m.set(o.input.key, (l = []));
      l.push(o);
    }
    for (const [k, l] of m) m.set(k, dropUnobservedPending(l));
    return m;
  },
  init: () => null,
  step(s, input, output) {
    switch (input.op) {
      case 'put':
        return input.value;
      case 'get':
        return output === undefined || output === s ? s : undefined;
      case 'cas':
        if (output === undefined) return s === input.expect ? input.value : s;
        if (output === true) return s === input.expect ? input.value : undefined;
        return s !== input.expect ? s : undefined;
    }
  },
  key: (s) => (s === null ? '\u0000' : s),
  wellFormed(sub, original) {
    return unwritten(sub) === null && unshieldedWrites(sub, original).length === 0;
  },
  support(sub, all) {
    // Add the writers of the values read, then the writes a kept failed swap may depend on,
    // a few rounds (each round can only add operations).
    let cur = sub;
    for (let round = 0; round < 4; round++) {
      const need = new Set<string | null>();
      for (const o of cur) {
        if (o.input.op === 'get' && o.ret !== undefined) need.add(o.output as string | null);
        if (o.input.op === 'cas' && o.output === true) need.add(o.input.expect);
      }
      const have = new Set(cur);
      const extra = all.filter(
        (o) => !have.has(o) && o.input.op !== 'get' && need.has(o.input.value),
      );
      const more = [...cur, ...extra];
      const shield = unshieldedWrites(more, all);
      if (extra.length === 0 && shield.length === 0) break;
      cur = [...more, ...shield];
    }
    return [...cur].sort((a, b) => a.call - b.call);
  },
  readOnly: (o) =>
    o.input.op === 'get' || (o.input.op === 'cas' && o.ret !== undefined && o.output === false),
  impossible: (ops) => kvImpossible(ops),
  describe(o) {
    const i = o.input;
    const what =
      i.op === 'put'
        ? `put(${i.key}, ${JSON.stringify(i.value)})`
        : i.op === 'get'
          ? `get(${i.key})`
          : `cas(${i.key}, ${JSON.stringify(i.expect)} -> ${JSON.stringify(i.value)})`;
    const res = o.ret === undefined ? 'no reply' : i.op === 'put' ? 'ok' : JSON.stringify(o.output);
    return `client ${o.client} [${o.call}, ${o.ret ?? '…'}] ${what} -> ${res}`;
  },
};

/**
 * Pending writes are what makes a failing search expensive: each may apply at any point after
 * its call or never, doubling the states the search must rule out. One whose value nobody
 * observed (no get returned it, no swap expected it) can only hide the value before it, so a
 * legal order with it stays legal without it (and it may always go last); the exception is a
 * failed swap after its call, which it might explain. Such writes are dropped.
 */
function dropUnobservedPending(ops: KvOp[]): KvOp[] {
  const observed = new Set<string | null>();
  let lastFailedSwap = -Infinity;
  for (const o of ops) {
    if (o.input.op === 'get' && o.ret !== undefined) observed.add(o.output as string | null);
    if (o.input.op === 'cas') {
      observed.add(o.input.expect);
      if (o.ret !== undefined && o.output === false) {
        lastFailedSwap = Math.max(lastFailedSwap, o.ret);
      }
    }
  }
  return ops.filter(
    (o) =>
      o.ret !== undefined ||
      o.input.op === 'get' ||
      observed.has(o.input.value) ||
      lastFailedSwap >= o.call,
  );
}

/**
 * Violations visible without a search, each explained by two or three operations: a read of
 * a value no operation wrote (a failed swap writes nothing); and, when every value has one
 * writer (as it should: make written values unique), a read of a value written only after the
 * read returned, or of a value that a later write certainly replaced before the read began
 * (null included: there are no deletes).
 */
/**
 * Writes of `original` missing from `sub` that a failed swap kept in `sub` may depend on.
 * Dropping gets and failed swaps only removes constraints. Dropping a write W is safe when
 * every value still observed keeps its writer (checked by `unwritten`; values must be unique
 * per write, as Jepsen's generators make them) and every failed swap F that W might explain
 * (F returned after W's call) is shielded by a kept write that certainly ran between them
 * (called after W returned, returned before F was called).
 */
function unshieldedWrites(sub: KvOp[], original: KvOp[]): KvOp[] {
  const failedSwaps = sub.filter(
    (o) => o.input.op === 'cas' && o.ret !== undefined && o.output === false,
  );
  if (failedSwaps.length === 0) return [];
  const kept = new Set(sub);
  const definite = sub.filter(
    (o) =>
      o.ret !== undefined && (o.input.op === 'put' || (o.input.op === 'cas' && o.output === true)),
  );
  const barrier = failedSwaps.map((f) => {
    let b = -Infinity;
    for (const w of definite) if (w.ret! < f.call) b = Math.max(b, w.call);
    return { f, b };
  });
  const out: KvOp[] = [];
  for (const w of original) {
    if (w.input.op === 'get' || kept.has(w)) continue;
    if (w.input.op === 'cas' && w.ret !== undefined && w.output === false) continue;
    const wRet = w.ret ?? Infinity;
    if (barrier.some(({ f, b }) => f.ret! >= w.call && !(wRet < b))) out.push(w);
  }
  return out;
}

/** A read (or successful swap) of a value that no operation wrote, if any. */
function unwritten(ops: KvOp[]): KvOp | null {
  const written = new Set<string | null>([null]);
  for (const o of ops) {
    if (o.input.op === 'put') written.add(o.input.value);
    else if (o.input.op === 'cas' && (o.ret === undefined || o.output === true)) {
      written.add(o.input.value);
    }
  }
  for (const o of ops) {
    if (o.ret === undefined) continue;
    if (o.input.op === 'get' && !written.has(o.output as string | null)) return o;
    if (o.input.op === 'cas' && o.output === true && !written.has(o.input.expect)) return o;
  }
  return null;
}

function kvImpossible(ops: KvOp[]): { ops: KvOp[]; why: string } | null {
  const writers = new Map<string | null, KvOp[]>();
  for (const o of ops) {
    if (
      o.input.op === 'get' ||
      (o.input.op === 'cas' && o.output === false && o.ret !== undefined)
    ) {
      continue;
    }
    const l = writers.get(o.input.value);
    if (l === undefined) writers.set(o.input.value, [o]);
    else l.push(o);
  }
  const observed = (o: KvOp): string | null | undefined =>
    o.ret === undefined
      ? undefined
      : o.input.op === 'get'
        ? (o.output as string | null)
        : o.input.op === 'cas' && o.output === true
          ? o.input.expect
          : undefined;
  const reads = ops.filter((o) => observed(o) !== undefined);
  const none = unwritten(ops);
  if (none !== null) return { ops: [none], why: 'observed a value that no operation wrote' };
  let unique = true;
  for (const l of writers.values()) if (l.length > 1) unique = false;
  if (writers.has(null) || !unique) return null;
  const definite = ops
    .filter(
      (o) =>
        o.ret !== undefined &&
        (o.input.op === 'put' || (o.input.op === 'cas' && o.output === true)),
    )
    .sort((a, b) => a.ret! - b.ret!);
  for (const r of reads) {
    const v = observed(r)!;
    const w = v === null ? undefined : writers.get(v)![0]!;
    if (w !== undefined && w.call > r.ret!) {
      return { ops: [r, w], why: 'read a value written only after the read returned' };
    }
    const wRet = w === undefined ? -Infinity : (w.ret ?? Infinity);
    for (const w2 of definite) {
      if (w2.ret! >= r.call) break;
      if (w2 !== w && w2.call > wRet) {
        return {
          ops: w === undefined ? [w2, r] : [w, w2, r],
          why: 'read a value that a later write had certainly replaced before the read began',
        };
      }
    }
  }
  return null;
}
