// The two entry points behave as a user expects: --version, --help, usage errors exit 2.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const pkg = JSON.parse(readFileSync(`${root}package.json`, 'utf8')) as {
  version: string;
  bin: Record<string, string>;
};

for (const bin of ['meshd', 'meshctl']) {
  t.test(bin, async (t) => {
    const run = (...args: string[]) =>
      spawnSync(process.execPath, [`${root}${pkg.bin[bin]}`, ...args], { encoding: 'utf8' });
    const v = run('--version');
    t.equal(v.status, 0);
    t.equal(v.stdout, `${bin} ${pkg.version}\n`);
    t.equal(v.stderr, '');
    const h = run('--help');
    t.equal(h.status, 0);
    t.match(h.stdout, new RegExp(`^${bin} — `));
    const bad = run('--no-such-flag');
    t.equal(bad.status, 2, 'usage error exits 2');
    t.equal(bad.stdout, '', 'nothing on stdout');
    t.match(bad.stderr, /see .* --help/);
  });
}

t.test(
  'meshctl: every command refuses unknown options and stray arguments before calling meshd',
  async (t) => {
    // --host points nowhere: a command that reached the network would fail with exit 1 instead.
    const run = (...args: string[]) =>
      spawnSync(
        process.execPath,
        [`${root}${pkg.bin.meshctl}`, '--host', '/nonexistent.sock', ...args],
        {
          encoding: 'utf8',
        },
      );
    for (const args of [
      ['version', '--bogus'],
      ['version', 'extra'],
      ['debug', 'gossip', '--x'],
      ['debug', 'raft', 'y'],
      ['debug', 'overlay', '--nope'],
      ['ps', '--nope'],
    ]) {
      const r = run(...args);
      t.equal(r.status, 2, `meshctl ${args.join(' ')} exits 2`);
      t.equal(r.stdout, '', 'nothing on stdout');
      t.match(r.stderr, /see meshctl --help/);
    }
    t.equal(run('version').status, 1, 'without a bad flag it does try to reach meshd');
  },
);
