/**
 * `npm test`'s runner (after build and lint): the tap suites that run on this machine (unit,
 * sim, netns, one tap run each), then the VM suite (IPVS/ESP paths under a Debian kernel in
 * qemu, one boot for the whole suite). Prints each tier's time and result, then one closing
 * line `tests: N passed, N failed, N skipped`.
 *
 * A precondition that fails is a failure, never a silent skip: a tier whose tap run reports
 * skipped or todo tests fails (test files fail themselves when they lack root or a tool, see
 * test/lib/require.ts), and so does a missing VM (qemu and the unpacked Debian kernel:
 * scripts/setup installs both). Leaving the VM out takes an explicit --no-vm.
 * Flags: --no-vm (leave the VM suite out, e.g. while iterating), --only unit|sim|netns|vm.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { failures } from './tap-failures.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const args = process.argv.slice(2);
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : undefined;
const wantVm = !args.includes('--no-vm') && (only === undefined || only === 'vm');

interface Counts {
  pass: number;
  fail: number;
  skip: number;
}

/** Run a command, echo its output, and hand back the output for parsing. */
function run(cmd: string, argv: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, argv, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      process.stdout.write(d);
    });
    child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), out }));
  });
}

/** tap's closing summary: `# { total: 93, pass: 90, fail: 3, skip: 1 }`. */
function tapCounts(out: string): Counts | undefined {
  const m = /^# \{ total: (\d+)(.*)\}$/m.exec(out);
  if (!m) return undefined;
  const get = (k: string): number => Number(new RegExp(`${k}: (\\d+)`).exec(m[2] ?? '')?.[1] ?? 0);
  return { pass: get('pass'), fail: get('fail'), skip: get('skip') + get('todo') };
}

const total: Counts = { pass: 0, fail: 0, skip: 0 };
let failed = false;
/** The failures of every suite, printed again at the very end (CI logs are read from the tail). */
const digest: string[] = [];

/** Compiled test files (`*.test.js`) under a directory; helpers beside them are not tests. */
function testFiles(dir: string): string[] {
  if (!existsSync(`${root}${dir}`)) return [];
  return readdirSync(`${root}${dir}`, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.test.js'))
    .map((f) => `${dir}/${f}`)
    .sort();
}

/** The slowest file of a tap run (`ok 3 - dist/test/x.test.js # time=123.4ms`), for the tier line. */
function slowestTap(out: string): string {
  let best = { file: '', ms: -1 };
  for (const m of out.matchAll(/^(?:not )?ok \d+ - (\S+\.test\.js) # time=([\d.]+)ms$/gm))
    if (Number(m[2]) > best.ms) best = { file: m[1]!.replace(/.*\//, ''), ms: Number(m[2]) };
  return best.ms < 0 ? '' : `; slowest ${best.file} ${(best.ms / 1000).toFixed(0)} s`;
}

/** Each tier's wall time and outcome, printed again at the end. */
const tiers: string[] = [];
const seconds = (t0: number): string => ((Date.now() - t0) / 1000).toFixed(0);

for (const tier of ['unit', 'sim', 'netns'].filter((d) => only === undefined || only === d)) {
  const files = testFiles(`dist/test/${tier}`);
  if (files.length === 0) {
    process.stdout.write(`${tier}: no test files under dist/test/${tier}; build first\n`);
    tiers.push(`${tier}: no test files (failed)`);
    failed = true;
    total.fail++;
    continue;
  }
  const t0 = Date.now();
  const r = await run(`${root}node_modules/.bin/tap`, files);
  const c = tapCounts(r.out);
  digest.push(...failures(r.out));
  if (c) {
    total.pass += c.pass;
    total.fail += c.fail;
    total.skip += c.skip;
  }
  let bad = r.code !== 0 || !c;
  if (c && c.skip > 0) {
    // tap lists them above (`# SKIP` / `# TODO`); a skip proves nothing and hides a lack.
    digest.push(`${tier}: ${c.skip} skipped or todo tests; a test must pass or fail`);
    bad = true;
  }
  if (bad) failed = true;
  tiers.push(
    `${tier}: ${seconds(t0)} s, ${c ? `${c.pass} passed, ${c.fail} failed, ${c.skip} skipped` : `no tap summary (exit ${r.code})`}${slowestTap(r.out)}${bad ? ' (failed)' : ''}`,
  );
}

if (wantVm) {
  const suite = `${root}scripts/vm/suite`;
  const missing = ['qemu-system-x86_64', 'busybox'].filter(
    (b) => !['/usr/bin/', '/bin/', '/usr/sbin/'].some((d) => existsSync(d + b)),
  );
  if (missing.length > 0 || !existsSync(suite)) {
    const why = missing.length
      ? `${missing.join(', ')} not installed (run scripts/setup)`
      : 'scripts/vm/suite missing';
    process.stdout.write(`vm: cannot run: ${why}; or leave the VM suite out with --no-vm\n`);
    tiers.push(`vm: cannot run: ${why} (failed)`);
    failed = true;
    total.fail++;
  } else {
    const t0 = Date.now();
    const r = await run(suite, []);
    const m = /^vm: (\d+) passed, (\d+) failed/m.exec(r.out);
    digest.push(...failures(r.out).map((l) => `vm: ${l}`));
    if (m) {
      total.pass += Number(m[1]);
      total.fail += Number(m[2]);
    }
    if (r.code !== 0 || !m) {
      failed = true;
      if (!m) total.fail++;
    }
    // The slowest file against its limit: the margin the suite has.
    const times = [...r.out.matchAll(/^vm: (?:not )?ok (\S+) \((?:.*, )?([\d.]+) s\)$/gm)]
      .map((x) => ({ file: x[1]!.replace(/.*\//, ''), s: Number(x[2]) }))
      .sort((a, b) => b.s - a.s);
    const slowest = times[0] ? `; slowest ${times[0].file} ${times[0].s} s` : '';
    tiers.push(
      `vm: ${seconds(t0)} s, ${m ? `${m[1]} passed, ${m[2]} failed` : `no total (exit ${r.code})`}${slowest}${r.code !== 0 || !m ? ' (failed)' : ''}`,
    );
  }
}

if (digest.length > 0) process.stdout.write(`\nfailures, again:\n${digest.join('\n')}\n`);
process.stdout.write(`\n${tiers.join('\n')}\n`);
process.stdout.write(
  `\ntests: ${total.pass} passed, ${total.fail} failed, ${total.skip} skipped\n`,
);
process.exitCode = failed || total.fail > 0 ? 1 : 0;
