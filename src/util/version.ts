/**
 * The package version, read once from package.json (the single source of truth).
 * May import: node built-ins.
 */
import { readFileSync } from 'node:fs';

// dist/src/util/version.js → ../../../package.json; src/util/version.ts → ../../package.json.
function find(): string {
  for (const rel of ['../../../package.json', '../../package.json']) {
    try {
      const p = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (p.name === 'mesh' && p.version) return p.version;
    } catch {
      // try the next candidate
    }
  }
  return '0.0.0-unknown';
}

export const VERSION = find();
