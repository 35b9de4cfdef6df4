// The README's first command must stay true: the demo builds an overlay across three hosts,
// every path answers, and nothing is left behind.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

if (process.getuid?.() !== 0) {
  t.plan(0, 'the demo needs root (it creates network namespaces)');
  process.exit(0);
}

t.test('demo', async (t) => {
  const root = fileURLToPath(new URL('../../../', import.meta.url));
  const r = spawnSync(process.execPath, [`${root}dist/scripts/demo.js`], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /== all 6 paths answered/);
  t.match(r.stdout, /vxlan id 4096 local 198\.18\.0\.1 dev eth0 .*dstport 4789 nolearning proxy/);
  t.match(r.stdout, /== cleaned up: no namespace left behind/);
});
