/**
 * `npm test`'s runner (after build and lint): the tap suites that run on this machine (unit,
 * sim, netns), then the VM suite (IPVS/ESP paths under a Debian kernel in qemu, one boot for
 * the whole suite). Prints one closing line `tests: N passed, N failed, N skipped`.
 *
 * The VM suite needs qemu and the unpacked Debian kernel (scripts/setup installs both). Where
 * they are missing it is skipped with the reason — except under CI=true or MESH_REQUIRE_VM=1,
 * where a skipped VM suite is a failure: CI must prove those paths.
 * Flags: --no-vm (skip the VM suite, e.g. while iterating), --only unit|sim|netns|vm.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { failures } from './tap-failures.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const args = process.argv.slice(2);
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : undefined;
const wantVm = !args.includes('--no-vm') && (only === undefined || only === 'vm');
const requireVm = process.env.CI === 'true' || process.env.MESH_REQUIRE_VM === '1';

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

const files = ['unit', 'sim', 'netns']
  .filter((d) => only === undefined || only === d)
  .flatMap((d) => testFiles(`dist/test/${d}`));
if (files.length > 0) {
  const r = await run(`${root}node_modules/.bin/tap`, files);
  const c = tapCounts(r.out);
  digest.push(...failures(r.out));
  if (c) {
    total.pass += c.pass;
    total.fail += c.fail;
    total.skip += c.skip;
  }
  if (r.code !== 0 || !c) failed = true;
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
    process.stdout.write(`vm: skipped: ${why}\n`);
    total.skip++;
    if (requireVm) {
      process.stdout.write('vm: CI requires the VM suite to run; failing\n');
      failed = true;
      total.fail++;
    }
  } else {
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
  }
}

if (digest.length > 0) process.stdout.write(`\nfailures, again:\n${digest.join('\n')}\n`);
process.stdout.write(
  `\ntests: ${total.pass} passed, ${total.fail} failed, ${total.skip} skipped\n`,
);
process.exitCode = failed || total.fail > 0 ? 1 : 0;
