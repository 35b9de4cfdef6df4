/**
 * Typed errors shared by every layer.
 *
 * Callers match on `code` (stable, listed in docs/errors.md), never on the message. Messages
 * are lower-case, `<op> <object>: <detail>`, and say how to fix the problem when the user can.
 * May import nothing but node built-ins.
 */

export class MeshError extends Error {
  /** Stable machine-readable code, e.g. `ENETLINK`, `EUSAGE`. */
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
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
