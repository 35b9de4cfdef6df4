/**
 * Typed errors shared by every layer.
 *
 * Callers match on `code` (stable, listed in docs/errors.md), never on the message. Messages
 * are lower-case, `<op> <object>: <detail>`, and say how to fix the problem when the user can.
 * May import nothing but node built-ins.
 */

/**
 * Every code a MeshError may carry: a closed list, each one documented in docs/errors.md (a unit
 * test compares the two). Add a code here and there together; never reuse or rename one.
 */
export const ERROR_CODES = [
  'EUSAGE',
  'ENETLINK',
  'ENLDECODE',
  'ENETNS',
  'ESYSCALL',
  'ETIMEDOUT',
  'EAGAIN',
  'EWIRE',
  'EKEYRING',
  'EGOSSIP',
  'EAUTH',
  'ETOKEN',
  'ENOCLUSTER',
  'ENOTMANAGER',
  'ENOTLEADER',
  'ENOQUORUM',
  'ECONFLICT',
  'ENOTFOUND',
  'EDATA',
  'EINTERNAL',
  'EEXHAUSTED',
  'EOVERLAY',
  'ELB',
  'ENFT',
  'ETASK',
  'ECONN',
  'ESNAPSHOT',
  'EUNAVAILABLE',
  'EUNSUPPORTED',
  'EPROTO',
  'ECLOSED',
  'EADDRINUSE',
  'EEXIST',
  'EDNS',
  'EWAL_FAILED',
  'EWAL_CORRUPT',
  'ESNAP_CORRUPT',
  'ERAFT_PROPOSAL_DROPPED',
  'ERAFT_CONF_CHANGE',
  'ERAFT_STEP',
  'ERAFT_COMPACTED',
  'ERAFT_UNAVAILABLE',
  'ERAFT_SNAP_OUT_OF_DATE',
  'ERAFT_SNAP_UNAVAILABLE',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** A code that came over the wire (an API or RPC answer): one of ours, or `fallback`. */
export function errorCode(v: unknown, fallback: ErrorCode): ErrorCode {
  return (ERROR_CODES as readonly unknown[]).includes(v) ? (v as ErrorCode) : fallback;
}

export class MeshError extends Error {
  /** Stable machine-readable code, e.g. `ENETLINK`, `EUSAGE` (see ERROR_CODES). */
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A bad command line or bad API input: the CLI exits 2 on it. */
export class UsageError extends MeshError {
  constructor(message: string) {
    super('EUSAGE', message);
  }
}

/** Broken invariant: a bug in Mesh, never an expected outcome. Crash, do not catch. */
export function invariant(cond: unknown, what: string): asserts cond {
  if (!cond) throw new Error(`invariant violated: ${what}`);
}
