/**
 * The cluster store: a pure, deterministic state machine fed with committed raft entries.
 *
 * Each entry carries one command `{client, seq, ops}` (JSON); its ops apply atomically (all or
 * none) and every object they touch gets the entry's index as its new `version`. The outcome is
 * a function of the log alone, so every replica reaches the same state and answers the same
 * result: no clock, no randomness, no I/O, and errors are results, never exceptions. Retried
 * proposals are applied once (client sessions, Raft thesis §6.3). Snapshots are canonical
 * bytes (same state, same bytes). Watchers see each committed command's changes in log order,
 * which is what the allocator, scheduler and dispatcher build on.
 *
 * May import src/api/objects.ts, src/raft/sessions.ts, ./entry.ts and src/util/errors.ts.
 */

import { SessionTable } from '../../raft/sessions.js';
import { decodeEntry, encodeEntry } from './entry.js';
import { MeshError, invariant } from '../../util/errors.js';
import {
  KINDS,
  NAMED_KINDS,
  TASK_STATES,
  isKind,
  taskStateMayMove,
  validateId,
  validateObject,
  type Kind,
  type NamedKind,
  type ObjectInput,
  type ObjectMap,
  type StoreObject,
  type Task,
  isPlain,
} from '../../api/objects.js';

export type Op =
  | { [K in Kind]: { op: 'create'; kind: K; value: ObjectInput<K> } }[Kind]
  | {
      [K in Kind]: {
        op: 'update';
        kind: K;
        value: ObjectInput<K>;
        /** If given, must equal the object's current version (optimistic concurrency). */
        version?: number;
      };
    }[Kind]
  | { op: 'delete'; kind: Kind; id: string; version?: number }
  /** Compare-and-set: `prev` null means "the key must be absent". */
  | { op: 'cas'; kind: 'kv'; id: string; prev: string | null; value: string }
  | { op: 'put'; kind: 'kv'; id: string; value: string };

export interface Command {
  /** Proposer's session id; one request outstanding per client. */
  client: string;
  /** 1, 2, 3… per client; a retry reuses its number. */
  seq: number;
  ops: readonly Op[];
}

export type StoreErrorCode = 'ECONFLICT' | 'ENOTFOUND' | 'EUSAGE';

export type ApplyResult =
  | { ok: true; versions: number[] }
  | { ok: false; error: { code: StoreErrorCode; message: string } };

export type WatchEvent = {
  [K in Kind]: {
    kind: K;
    op: 'create' | 'update' | 'delete';
    /** The object after the change; for a delete, as it was when deleted. */
    object: ObjectMap[K];
    /** For an update: the object before it. */
    prev?: ObjectMap[K];
    /** Raft index of the command. */
    index: number;
  };
}[Kind];

export type WatchCallback = (ev: WatchEvent) => void;

/** Limits on what a command may carry; past them the command is refused as a whole. */
export const COMMAND_LIMITS = Object.freeze({
  /** Nesting depth of the JSON (keeps every recursive walk far from the stack limit). */
  maxDepth: 64,
  maxOps: 10_000,
  maxClientLength: 256,
});

const SNAPSHOT_FORMAT = 'mesh-store/1';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** A command as the raft entry carries it (entry.ts): the header, then the ops as JSON. */
export function encodeCommand(cmd: Command): Uint8Array {
  return encodeEntry(cmd.client, cmd.seq, encodeOps(cmd.ops));
}

/** The command part of an entry: what RaftNode.propose takes. */
export function encodeOps(ops: readonly Op[]): Uint8Array {
  return encoder.encode(JSON.stringify(ops));
}

class OpError {
  constructor(
    readonly code: StoreErrorCode,
    readonly message: string,
  ) {}
}

/** False if `v` nests deeper than `max` (bails out early, so the walk itself stays shallow). */
function depthWithin(v: unknown, max: number): boolean {
  if (typeof v !== 'object' || v === null) return true;
  if (max <= 0) return false;
  const vals = Array.isArray(v) ? (v as unknown[]) : Object.values(v);
  for (const x of vals) if (!depthWithin(x, max - 1)) return false;
  return true;
}

/** Deep copy with object keys inserted in sorted order, frozen: stored objects are immutable. */
function frozenCopy(v: unknown): unknown {
  if (Array.isArray(v)) return Object.freeze(v.map(frozenCopy));
  if (isPlain(v)) {
    const keys = Object.keys(v).sort();
    // fromEntries defines own properties, so a "__proto__" key stays a plain key.
    return Object.freeze(Object.fromEntries(keys.map((k) => [k, frozenCopy(v[k])])));
  }
  return v;
}

/** How an object is named in messages: its name for named kinds, else its id; quoted if odd. */
function label(s: unknown): string {
  if (typeof s !== 'string' || s === '') return '?';
  if (/^[A-Za-z0-9_.:@/-]{1,80}$/.test(s)) return s;
  const cut = s.length > 80 ? s.slice(0, 80) + '…' : s;
  return JSON.stringify(cut);
}

const byId = (a: StoreObject, b: StoreObject): number => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

const TASK_ORDER = `${TASK_STATES.slice(0, 8).join(' → ')} → ${TASK_STATES.slice(8).join('|')}`;

interface Watcher {
  kinds: ReadonlySet<Kind> | null;
  cb: WatchCallback;
  active: boolean;
}

export class Store {
  private tables = new Map<Kind, Map<string, StoreObject>>(KINDS.map((k) => [k, new Map()]));
  /** name → id for kinds whose names are unique. */
  private names = new Map<Kind, Map<string, string>>(NAMED_KINDS.map((k) => [k, new Map()]));
  private sessions = new SessionTable();
  private applied = 0;
  private watchers: Watcher[] = [];
  private applying = false;

  /** Index of the last entry handed to apply() (or restored from a snapshot). */
  get appliedIndex(): number {
    return this.applied;
  }

  /**
   * Apply the committed entry at `index`. Never throws on bad input: undecodable data, a bad
   * op or a refused op gives an error result and changes no object. Empty data (raft's no-op
   * entry) changes nothing. Entries must come in increasing index order; one at or below
   * appliedIndex is refused (already applied). A watcher that throws is a bug in the watcher:
   * the command stays applied, every other watcher still sees it, then the error is rethrown.
   */
  apply(index: number, data: Uint8Array): ApplyResult {
    invariant(!this.applying, 'store.apply called from inside a watcher');
    if (!Number.isSafeInteger(index) || index < 1) {
      return fail('EUSAGE', `apply entry ${String(index)}: the index must be a positive integer`);
    }
    if (index <= this.applied) {
      return fail(
        'EUSAGE',
        `apply entry ${index}: already applied (applied index ${this.applied}); entries apply once, in order`,
      );
    }
    this.applied = index;
    if (!(data instanceof Uint8Array)) {
      return fail('EUSAGE', `apply entry ${index}: the data is not bytes`);
    }
    if (data.length === 0) return { ok: true, versions: [] };

    const cmd = decode(index, data);
    if (cmd instanceof OpError) return fail(cmd.code, cmd.message);

    if (!this.sessions.admit(cmd.client, cmd.seq)) {
      const last = this.sessions.lastApplied(cmd.client);
      if (last !== undefined && last.seq === cmd.seq && last.result !== undefined) {
        return JSON.parse(last.result) as ApplyResult;
      }
      return fail(
        'ECONFLICT',
        `apply command ${label(cmd.client)}#${cmd.seq}: request ${last?.seq ?? '?'} of this client was applied already, so this older one was dropped; a client must wait for each answer before sending its next request`,
      );
    }

    const undo: (() => void)[] = [];
    const events: WatchEvent[] = [];
    const versions: number[] = [];
    let result: ApplyResult;
    let failed: OpError | null = null;
    for (let i = 0; i < cmd.ops.length && failed === null; i++) {
      const r = this.exec(cmd.ops[i], index, undo, events);
      if (r instanceof OpError) failed = r;
      else versions.push(r);
    }
    if (failed !== null) {
      for (let i = undo.length - 1; i >= 0; i--) undo[i]!();
      const note = cmd.ops.length > 1 ? ' (no op of this command was applied)' : '';
      result = fail(failed.code, failed.message + note);
    } else {
      result = { ok: true, versions };
    }
    this.sessions.setResult(cmd.client, JSON.stringify(result));
    if (failed === null && events.length > 0) this.emit(events);
    return result;
  }

  get<K extends Kind>(kind: K, id: string): ObjectMap[K] | undefined {
    return this.tables.get(kind)?.get(id) as ObjectMap[K] | undefined;
  }

  /** Objects of `kind` sorted by id, optionally filtered. */
  list<K extends Kind>(kind: K, filter?: (o: ObjectMap[K]) => boolean): ObjectMap[K][] {
    const all = [...(this.tables.get(kind)?.values() ?? [])] as ObjectMap[K][];
    const out = filter === undefined ? all : all.filter(filter);
    return out.sort(byId);
  }

  /** Number of objects of `kind`. */
  count(kind: Kind): number {
    return this.tables.get(kind)?.size ?? 0;
  }

  findByName<K extends NamedKind>(kind: K, name: string): ObjectMap[K] | undefined {
    const id = this.names.get(kind)?.get(name);
    return id === undefined ? undefined : this.get(kind, id);
  }

  /**
   * Call `cb` synchronously for each change of a committed command, in log order and, within a
   * command, in op order, after the whole command is applied (reads inside `cb` see all of it).
   * Returns the function that stops the watch.
   */
  watch(kinds: readonly Kind[] | '*', cb: WatchCallback): () => void {
    const w: Watcher = { kinds: kinds === '*' ? null : new Set(kinds), cb, active: true };
    this.watchers.push(w);
    return () => {
      w.active = false;
      this.watchers = this.watchers.filter((x) => x !== w);
    };
  }

  /** Canonical bytes of the whole state (objects, sessions, applied index). */
  snapshot(): Uint8Array {
    const objects: Record<string, StoreObject[]> = {};
    for (const k of KINDS) objects[k] = this.list(k);
    const sessions = this.sessions
      .toJSON()
      .map(([client, e]) => [client, e.seq, e.result ?? null] as const);
    return encoder.encode(
      JSON.stringify({ format: SNAPSHOT_FORMAT, appliedIndex: this.applied, sessions, objects }),
    );
  }

  /**
   * Replace the whole state with a snapshot's, in place (raft installed one sent by the leader).
   * Watchers stay and see the difference as ordinary events at the snapshot's index: first the
   * deletes, then creates and updates (an object whose id, version and createdIndex are
   * unchanged is the same object, since versions are log indices, and stays the same reference).
   * Bad bytes throw MeshError('ESNAPSHOT') and change nothing.
   */
  load(bytes: Uint8Array): void {
    invariant(!this.applying, 'store.load called from inside a watcher');
    const next = Store.restore(bytes);
    const index = next.applied;
    const gone: WatchEvent[] = [];
    const changed: WatchEvent[] = [];
    for (const k of KINDS) {
      const before = this.tables.get(k)!;
      const after = next.tables.get(k)!;
      for (const o of [...before.values()].sort(byId)) {
        if (!after.has(o.id)) gone.push({ kind: k, op: 'delete', object: o, index } as WatchEvent);
      }
      for (const o of next.list(k)) {
        const p = before.get(o.id);
        if (p === undefined) {
          changed.push({ kind: k, op: 'create', object: o, index } as WatchEvent);
        } else if (p.version !== o.version || p.createdIndex !== o.createdIndex) {
          changed.push({ kind: k, op: 'update', object: o, prev: p, index } as WatchEvent);
        } else {
          after.set(o.id, p);
        }
      }
    }
    this.tables = next.tables;
    this.names = next.names;
    this.sessions = next.sessions;
    this.applied = next.applied;
    const events = [...gone, ...changed];
    if (events.length > 0) this.emit(events);
  }

  /** Rebuild a store from snapshot() bytes; throws MeshError('ESNAPSHOT') if they are not. */
  static restore(bytes: Uint8Array): Store {
    const bad = (detail: string): MeshError =>
      new MeshError('ESNAPSHOT', `restore store: ${detail}; the snapshot is damaged or not ours`);
    let raw: unknown;
    try {
      raw = JSON.parse(decoder.decode(bytes));
    } catch {
      throw bad('not JSON');
    }
    if (!isPlain(raw) || raw['format'] !== SNAPSHOT_FORMAT) throw bad('unknown format');
    const applied = raw['appliedIndex'];
    if (typeof applied !== 'number' || !Number.isSafeInteger(applied) || applied < 0) {
      throw bad('bad appliedIndex');
    }
    const s = new Store();
    s.applied = applied;

    const rows = raw['sessions'];
    if (!Array.isArray(rows)) throw bad('sessions missing');
    const sess: [string, { seq: number; result?: string }][] = [];
    for (const row of rows as unknown[]) {
      const r = row as unknown[];
      if (
        !Array.isArray(row) ||
        typeof r[0] !== 'string' ||
        typeof r[1] !== 'number' ||
        !Number.isSafeInteger(r[1]) ||
        (typeof r[2] !== 'string' && r[2] !== null)
      ) {
        throw bad('bad session row');
      }
      const [client, seq, result] = r as [string, number, string | null];
      sess.push([client, result === null ? { seq } : { seq, result }]);
    }
    s.sessions = SessionTable.fromJSON(sess);

    const objects = raw['objects'];
    if (!isPlain(objects)) throw bad('objects missing');
    for (const k of KINDS) {
      const arr = objects[k];
      if (!Array.isArray(arr)) throw bad(`objects.${k} missing`);
      const table = s.tables.get(k)!;
      const names = s.names.get(k);
      for (const o of arr as unknown[]) {
        if (!depthWithin(o, COMMAND_LIMITS.maxDepth)) throw bad(`a ${k} nests too deep`);
        const e = validateObject(k, o);
        if (e !== null) throw bad(`a ${k}: ${e}`);
        const m = o as StoreObject;
        if (
          m.version === undefined ||
          m.createdIndex === undefined ||
          m.createdIndex > m.version ||
          m.version > applied
        ) {
          throw bad(`${k} ${label(m.id)}: bad version or createdIndex`);
        }
        if (table.has(m.id)) throw bad(`${k} ${label(m.id)} appears twice`);
        table.set(m.id, frozenCopy(o) as StoreObject);
        if (names !== undefined) {
          const name = (m as { name: string }).name;
          if (names.has(name)) throw bad(`two ${k}s named ${label(name)}`);
          names.set(name, m.id);
        }
      }
    }
    return s;
  }

  // ---- ops ------------------------------------------------------------------------------------

  /** Apply one op in place, recording how to undo it; returns the new version or an error. */
  private exec(
    op: unknown,
    index: number,
    undo: (() => void)[],
    events: WatchEvent[],
  ): number | OpError {
    if (!isPlain(op)) return new OpError('EUSAGE', `apply entry ${index}: an op is not an object`);
    const verb = op['op'];
    const kind = op['kind'];
    const verbs = ['create', 'update', 'delete', 'cas', 'put'];
    if (typeof verb !== 'string' || !verbs.includes(verb)) {
      return new OpError(
        'EUSAGE',
        `apply entry ${index}: unknown op ${label(verb)}; ops are ${verbs.join(', ')}`,
      );
    }
    if (!isKind(kind)) {
      return new OpError(
        'EUSAGE',
        `${verb} ${label(kind)}: unknown kind; kinds are ${KINDS.join(', ')}`,
      );
    }
    const version = op['version'];
    if (version !== undefined && (typeof version !== 'number' || !Number.isSafeInteger(version))) {
      return new OpError(
        'EUSAGE',
        `${verb} ${kind} ${label(op['id'])}: version must be an integer`,
      );
    }
    switch (verb) {
      case 'create':
      case 'update':
        return this.write(verb, kind, op['value'], version, index, undo, events);
      case 'delete':
        return this.remove(kind, op['id'], version, index, undo, events);
      default:
        return this.kvWrite(verb, kind, op, index, undo, events);
    }
  }

  private write(
    verb: 'create' | 'update',
    kind: Kind,
    value: unknown,
    version: number | undefined,
    index: number,
    undo: (() => void)[],
    events: WatchEvent[],
  ): number | OpError {
    const named = this.names.get(kind);
    const who = isPlain(value) ? label(named !== undefined ? value['name'] : value['id']) : '?';
    const at = `${verb} ${kind} ${who}`;
    const invalid = validateObject(kind, value);
    if (invalid !== null) return new OpError('EUSAGE', `${at}: ${invalid}`);
    const v = value as Record<string, unknown> & { id: string };
    const cur = this.tables.get(kind)!.get(v.id);
    if (verb === 'create' && cur !== undefined) {
      return new OpError(
        'ECONFLICT',
        kind === 'cluster'
          ? `${at}: the cluster object exists (created at index ${cur.createdIndex}); update it instead`
          : `${at}: a ${kind} with id ${label(v.id)} exists; pick another id or remove it first`,
      );
    }
    if (verb === 'update') {
      if (cur === undefined) {
        return new OpError(
          'ENOTFOUND',
          `${at}: no ${kind} with id ${label(v.id)}; create it first or check the id`,
        );
      }
      if (version !== undefined && version !== cur.version) {
        return stale(at, version, cur.version);
      }
      if (kind === 'task') {
        const from = (cur as Task).state;
        const to = v['state'] as Task['state'];
        if (!taskStateMayMove(from, to)) {
          return new OpError(
            'ECONFLICT',
            `${at}: state cannot go from ${from} to ${to}; task states only move forward (${TASK_ORDER})`,
          );
        }
      }
    }
    if (named !== undefined) {
      const name = v['name'] as string;
      const holder = named.get(name);
      if (holder !== undefined && holder !== v.id) {
        return new OpError(
          'ECONFLICT',
          `${at}: a ${kind} named ${label(name)} exists (id ${label(holder)}); pick another name or remove it first`,
        );
      }
    }
    const obj = frozenCopy({
      ...v,
      version: index,
      createdIndex: cur?.createdIndex ?? index,
    }) as StoreObject;
    this.put(kind, v.id, obj, undo);
    events.push({
      kind,
      op: verb,
      object: obj,
      ...(cur !== undefined ? { prev: cur } : {}),
      index,
    } as WatchEvent);
    return index;
  }

  private remove(
    kind: Kind,
    id: unknown,
    version: number | undefined,
    index: number,
    undo: (() => void)[],
    events: WatchEvent[],
  ): number | OpError {
    const bad = validateId(kind, id);
    if (bad !== null) return new OpError('EUSAGE', `delete ${kind} ${label(id)}: ${bad}`);
    const cur = this.tables.get(kind)!.get(id as string);
    const named = cur !== undefined && this.names.has(kind) && 'name' in cur;
    const at = `delete ${kind} ${label(named ? cur.name : id)}`;
    if (kind === 'cluster')
      return new OpError('EUSAGE', `${at}: the cluster object cannot be removed`);
    if (cur === undefined) {
      return new OpError(
        'ENOTFOUND',
        `${at}: no ${kind} with id ${label(id)}; it may be gone already`,
      );
    }
    if (version !== undefined && version !== cur.version) return stale(at, version, cur.version);
    this.put(kind, cur.id, undefined, undo);
    events.push({ kind, op: 'delete', object: cur, index } as WatchEvent);
    return index;
  }

  private kvWrite(
    verb: string,
    kind: Kind,
    op: Record<string, unknown>,
    index: number,
    undo: (() => void)[],
    events: WatchEvent[],
  ): number | OpError {
    const id = op['id'];
    const at = `${verb} ${kind} ${label(id)}`;
    if (kind !== 'kv')
      return new OpError('EUSAGE', `${at}: ${verb} works on kind kv only; use create/update`);
    const bad = validateId('kv', id);
    if (bad !== null) return new OpError('EUSAGE', `${at}: ${bad}`);
    const value = op['value'];
    if (typeof value !== 'string') return new OpError('EUSAGE', `${at}: value must be a string`);
    const cur = this.tables.get('kv')!.get(id as string) as ObjectMap['kv'] | undefined;
    if (verb === 'cas') {
      const prev = op['prev'];
      if (typeof prev !== 'string' && prev !== null) {
        return new OpError('EUSAGE', `${at}: prev must be a string, or null for "absent"`);
      }
      if ((cur?.value ?? null) !== prev) {
        return new OpError(
          'ECONFLICT',
          `${at}: ${cur === undefined ? 'the key is absent' : 'the key holds another value'}, not the expected one; read it and retry`,
        );
      }
    }
    return this.write(
      cur === undefined ? 'create' : 'update',
      'kv',
      { id, value },
      undefined,
      index,
      undo,
      events,
    );
  }

  /** Set (or with `next` undefined, delete) one object, keeping the name index; push the undo. */
  private put(kind: Kind, id: string, next: StoreObject | undefined, undo: (() => void)[]): void {
    const table = this.tables.get(kind)!;
    const names = this.names.get(kind);
    const prev = table.get(id);
    const nameOf = (o: StoreObject | undefined): string | undefined =>
      o !== undefined && 'name' in o ? o.name : undefined;
    const prevName = nameOf(prev);
    const nextName = nameOf(next);
    if (next === undefined) table.delete(id);
    else table.set(id, next);
    if (names !== undefined) {
      if (prevName !== undefined) names.delete(prevName);
      if (nextName !== undefined) names.set(nextName, id);
    }
    undo.push(() => {
      if (names !== undefined) {
        if (nextName !== undefined) names.delete(nextName);
        if (prevName !== undefined) names.set(prevName, id);
      }
      if (prev === undefined) table.delete(id);
      else table.set(id, prev);
    });
  }

  private emit(events: WatchEvent[]): void {
    const ws = this.watchers;
    let first: { err: unknown } | null = null;
    this.applying = true;
    try {
      for (const ev of events) {
        for (const w of ws) {
          if (!w.active || (w.kinds !== null && !w.kinds.has(ev.kind))) continue;
          try {
            w.cb(ev);
          } catch (err) {
            first ??= { err };
          }
        }
      }
    } finally {
      this.applying = false;
    }
    if (first !== null) throw first.err;
  }
}

function fail(code: StoreErrorCode, message: string): ApplyResult {
  return { ok: false, error: { code, message } };
}

function stale(at: string, given: number, current: number): OpError {
  return new OpError(
    'ECONFLICT',
    `${at}: version ${given} is not the current one (${current}): the object changed since it was read; read it again and retry`,
  );
}

/** Bytes → a structurally valid command, or why not (ops are checked one by one later). */
function decode(
  index: number,
  data: Uint8Array,
): { client: string; seq: number; ops: unknown[] } | OpError {
  const at = `apply entry ${index}`;
  const entry = decodeEntry(data);
  if (entry === null) {
    return new OpError(
      'EUSAGE',
      `${at}: not a store command (no entry header); build commands with encodeCommand()`,
    );
  }
  const { client, seq } = entry;
  if (client === '' || client.length > COMMAND_LIMITS.maxClientLength) {
    return new OpError(
      'EUSAGE',
      `${at}: client must be a string of 1-${COMMAND_LIMITS.maxClientLength} characters`,
    );
  }
  let ops: unknown;
  try {
    ops = JSON.parse(decoder.decode(entry.cmd));
  } catch {
    return new OpError(
      'EUSAGE',
      `${at}: the ops are not UTF-8 JSON; build commands with encodeCommand()`,
    );
  }
  if (!depthWithin(ops, COMMAND_LIMITS.maxDepth)) {
    return new OpError(
      'EUSAGE',
      `${at}: the command nests deeper than ${COMMAND_LIMITS.maxDepth} levels`,
    );
  }
  if (!Array.isArray(ops) || ops.length > COMMAND_LIMITS.maxOps) {
    return new OpError(
      'EUSAGE',
      `${at}: ops must be an array of at most ${COMMAND_LIMITS.maxOps} ops`,
    );
  }
  return { client, seq, ops: ops as unknown[] };
}
