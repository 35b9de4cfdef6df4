// meshctl's one table layout (src/cli/table.ts): columns as wide as their widest cell, two
// spaces apart, the last column unpadded, no trailing blanks, rows of any length.
import t from 'tap';
import { table, tableLines } from '../../src/cli/table.js';

t.test('columns line up; nothing trails', async (t) => {
  t.equal(
    table([
      ['ID', 'NAME', 'STATE'],
      ['a1', 'web.1', 'running'],
      ['b22222', 'w', ''],
    ]),
    'ID      NAME   STATE\na1      web.1  running\nb22222  w\n',
  );
  t.same(tableLines([['x', 'yy'], ['longer']]), ['x       yy', 'longer']);
  t.same(tableLines([]), []);
});
