/**
 * Per-component loggers writing logfmt lines to stderr (journald keeps them; `grep` reads them):
 *   ts=2026-11-22T05:00:00.000Z level=info component=api msg="listening" socket=/run/meshd/meshd.sock
 * Cores never log: they emit events that drivers may log. May import: node built-ins.
 */

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

let threshold: number = ORDER.info;
let sink: (line: string) => void = (line) => process.stderr.write(line);

/** Set the lowest level written (from --log-level or MESH_LOG). */
export function setLogLevel(level: LogLevel): void {
  threshold = ORDER[level];
}

/** Redirect log output (tests). */
export function setLogSink(fn: (line: string) => void): void {
  sink = fn;
}

export function isLogLevel(s: string): s is LogLevel {
  return s in ORDER;
}

function fmt(v: unknown): string {
  const s = v instanceof Error ? v.message : typeof v === 'string' ? v : JSON.stringify(v);
  return /^[^\s"=]+$/.test(s ?? '') ? (s ?? '') : JSON.stringify(s);
}

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export function createLogger(component: string): Logger {
  const write = (level: LogLevel, msg: string, fields: Record<string, unknown> = {}): void => {
    if (ORDER[level] < threshold) return;
    let line = `ts=${new Date().toISOString()} level=${level} component=${component} msg=${fmt(msg)}`;
    for (const [k, v] of Object.entries(fields)) if (v !== undefined) line += ` ${k}=${fmt(v)}`;
    sink(line + '\n');
  };
  return {
    debug: (m, f) => write('debug', m, f),
    info: (m, f) => write('info', m, f),
    warn: (m, f) => write('warn', m, f),
    error: (m, f) => write('error', m, f),
  };
}
