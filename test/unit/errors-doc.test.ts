// docs/errors.md lists exactly the codes a MeshError can carry (ERROR_CODES, the type of `code`).
import t from 'tap';
import { readFileSync } from 'node:fs';
import { ERROR_CODES, errorCode } from '../../src/util/errors.js';

const doc = readFileSync(new URL('../../../docs/errors.md', import.meta.url), 'utf8');

t.test('docs/errors.md documents every code, and only those', async (t) => {
  const documented = new Set<string>();
  for (const line of doc.split('\n')) {
    const first = /^\| ([^|]+) \|/.exec(line)?.[1];
    for (const m of first?.matchAll(/`(E[A-Z_]+)`/g) ?? []) documented.add(m[1]!);
  }
  t.ok(documented.size > 20, `the table names ${documented.size} codes`);
  t.same(
    [...ERROR_CODES].filter((c) => !documented.has(c)),
    [],
    'every code is documented',
  );
  t.same(
    [...documented].filter((c) => !(ERROR_CODES as readonly string[]).includes(c)),
    [],
    'no stale row',
  );
  t.equal(new Set(ERROR_CODES).size, ERROR_CODES.length, 'no code listed twice');
});

t.test('a code from the wire is kept only if it is one of ours', async (t) => {
  t.equal(errorCode('ENOTFOUND', 'EPROTO'), 'ENOTFOUND');
  t.equal(errorCode('EBOGUS', 'EPROTO'), 'EPROTO');
  t.equal(errorCode(42, 'EINTERNAL'), 'EINTERNAL');
});
