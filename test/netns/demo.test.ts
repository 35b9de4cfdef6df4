// The README's first command must stay true: the demo makes a cluster of three meshd hosts,
// an overlay with a task on each, every path answers (also with one meshd killed), and nothing
// is left behind.
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
    timeout: 120_000,
  });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /joined cluster \w+ as a manager/);
  t.match(r.stdout, /h3 +ready +active +reachable/);
  t.match(r.stdout, /== all 6 paths answered/);
  t.match(r.stdout, /web1 \(h1\) -> http:\/\/10\.0\.1\.3:8080 {2}hello from task web2 on node h2/);
  t.match(r.stdout, /vxlan id 4097 local 198\.18\.0\.1 .*dstport 4789 nolearning proxy/);
  t.match(r.stdout, /10\.0\.1\.3 lladdr 02:42:0a:00:01:03 PERMANENT/);
  t.match(
    r.stdout,
    /kill -9 the meshd of h3[^\n]*\nweb1 \(h1\) -> http:\/\/10\.0\.1\.4:8080 {2}hello from task web3/,
  );
  t.match(r.stdout, /== cleaned up: no namespace left behind/);
});
