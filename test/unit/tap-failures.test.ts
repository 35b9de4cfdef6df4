// The failure digest run-tests prints at its end: what a CI log shows of a failed run.
import t from 'tap';
import { failures } from '../../scripts/tap-failures.js';

const OUT = `TAP version 14
# Subtest: dist/test/netns/x.test.js
    # Subtest: a scenario
        ok 1 - first
        # a comment long before the failure
        ok 2 - second
        # diagnostic line 1
        # diagnostic line 2
        not ok 3 - timed out after 5000 ms waiting for all 3 tasks
          ---
          stack: |
            until (test/lib/meshd.ts:108:33)
          tapCaught: returnedPromiseRejection
          ...
        not ok 4 - counts differ
          ---
          found: 2
          wanted: 3
          at:
            lineNumber: 7
          ...
        1..4
    not ok 1 - a scenario # time=37856.555ms
      ---
      at:
        lineNumber: 11
      ...
    1..1
not ok 1 - dist/test/netns/x.test.js # time=37882.895ms
ok 2 - dist/test/netns/y.test.js
`;

t.test('each failure with the comments before it and its found/wanted', async (t) => {
  t.same(failures(OUT), [
    '# diagnostic line 1',
    '# diagnostic line 2',
    'not ok 3 - timed out after 5000 ms waiting for all 3 tasks',
    '    tapCaught: returnedPromiseRejection',
    'not ok 4 - counts differ',
    '    found: 2',
    '    wanted: 3',
    'not ok 1 - a scenario # time=37856.555ms',
    'not ok 1 - dist/test/netns/x.test.js # time=37882.895ms',
  ]);
});

t.test('a passing run has no digest', async (t) => {
  t.same(failures('TAP version 14\nok 1 - a\n# { total: 1, pass: 1 }\n'), []);
});
