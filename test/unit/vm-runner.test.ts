// Host-side checks of the kernel VM runner that need no VM: scripts/vm/run's argument checks
// (they must fail fast, before preparing or booting anything) and scripts/vm/guest-suite's
// per-file accounting, fed with small TAP-printing files run by the host's node.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

// Compiled to dist/test/unit/, so the repository root is three levels up.
const root = fileURLToPath(new URL('../../../', import.meta.url));
const run = join(root, 'scripts/vm/run');
const guestSuite = join(root, 'scripts/vm/guest-suite');

function sh(cmd: string, args: string[], cwd = root) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 20_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

t.test('run rejects bad usage with exit 2 before doing anything', async (t) => {
  const cases: [string[], RegExp][] = [
    [[], /no command given/],
    [['--'], /no command given/],
    [['--mem', 'lots', '--', 'true'], /--mem wants megabytes/],
    [['--mem', '64', '--', 'true'], /--mem wants megabytes >= 256/],
    [['--timeout', '0', '--', 'true'], /--timeout wants whole seconds/],
    [['--smp'], /--smp wants a cpu count/],
    [['--cwd', '/nonexistent-mesh-dir', '--', 'true'], /no such directory/],
    [['--cwd', '/run', '--', 'true'], /cwd \/run is hidden inside the guest/],
    [['true'], /unknown option 'true' \(put the command after --\)/],
  ];
  for (const [args, msg] of cases) {
    const r = sh(run, args);
    t.equal(r.code, 2, `run ${args.join(' ')} exits 2`);
    t.match(r.err, msg);
    t.match(r.err, /^usage: scripts\/vm\/run /m);
  }
});

t.test('guest-suite counts files and fails skipped, failing and plan-less ones', async (t) => {
  const dir = t.testdir({});
  const file = (name: string, body: string): string => {
    const p = join(dir, name);
    writeFileSync(p, body);
    return p;
  };
  const tap = (lines: string[], code = 0) =>
    `console.log(${JSON.stringify(['TAP version 14', ...lines].join('\n'))});process.exit(${code});`;
  const ok = file('ok.mjs', tap(['ok 1 - fine', '1..1']));
  const bad = file('bad.mjs', tap(['not ok 1 - broken', '1..1'], 1));
  const skipped = file('skipped.mjs', tap(['1..0 # SKIP not here']));
  const noPlan = file('noplan.mjs', tap(['ok 1 - fine']));

  const all = sh(guestSuite, [ok, bad, skipped, noPlan], dir);
  t.equal(all.code, 1);
  const lines = all.out.trimEnd().split('\n');
  t.equal(lines.at(-1), 'vm: 1 passed, 3 failed', 'the last line is the total, in files');
  t.match(all.out, new RegExp(`^vm: ok ${ok} \\(\\d+\\.\\d s\\)$`, 'm'));
  t.match(all.out, new RegExp(`^vm: not ok ${bad} \\(exit 1, \\d+\\.\\d s\\)$`, 'm'));
  t.match(all.out, new RegExp(`^vm: not ok ${skipped} \\(skipped entirely, `, 'm'));
  t.match(all.out, new RegExp(`^vm: not ok ${noPlan} \\(no TAP plan, `, 'm'));
  t.match(all.out, /^not ok 1 - broken$/m, "each file's TAP is passed through");

  // A file's own limit (`// vm-timeout: SEC`), however it ends: by SIGTERM, or by SIGKILL 5 s
  // later when it ignores SIGTERM.
  const slow = file('slow.mjs', `// vm-timeout: 1\nsetTimeout(() => {}, 20_000);`);
  const stubborn = file(
    'stubborn.mjs',
    `// vm-timeout: 1\nprocess.on('SIGTERM', () => {});\nsetTimeout(() => {}, 20_000);`,
  );
  const limited = sh(guestSuite, [slow, stubborn], dir);
  t.match(limited.out, new RegExp(`^# vm: ${slow} \\(limit 1 s\\)$`, 'm'));
  t.match(
    limited.out,
    new RegExp(`^vm: not ok ${slow} \\(timed out after 1 s, 1\\.\\d s\\)$`, 'm'),
  );
  t.match(
    limited.out,
    new RegExp(`^vm: not ok ${stubborn} \\(timed out after 1 s, 6\\.\\d s\\)$`, 'm'),
  );

  const good = sh(guestSuite, [ok, ok], dir);
  t.equal(good.code, 0);
  t.equal(good.out.trimEnd().split('\n').at(-1), 'vm: 2 passed, 0 failed');
});
