// The README's first command must stay true: the demo makes a cluster of three meshd hosts, a
// 6-replica service published on 8080 answers every request from every host on every host, from
// tasks on every host (answered/sent per pair; exit 1 on one lost), lb show explains it, a
// killed host's replicas come back on the others, and nothing is left behind.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { requireRoot } from '../lib/require.js';

requireRoot('the demo test');

t.test('demo', async (t) => {
  const root = fileURLToPath(new URL('../../../', import.meta.url));
  const r = spawnSync(process.execPath, [`${root}dist/scripts/demo.js`], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /joined cluster \w+ as a manager/);
  t.match(r.stdout, /h3 +ready +active +reachable/);
  t.match(r.stdout, /web\.6\.\w+ +h\d +running +running/, 'six replicas running');
  t.match(
    r.stdout,
    /== answers came from tasks on h1, h2, h3\n/,
    'port 8080 on every host answered by tasks on every host',
  );
  t.match(
    r.stdout,
    /h1 → 198\.18\.0\.2:8080 {2}12\/12 answered/,
    'answered/sent per (from, to) pair',
  );
  t.notMatch(r.stdout, /LOST|FAILED/, 'no request unanswered');
  t.match(r.stdout, /== 156\/156 requests answered\n/, 'every request counted and answered');
  t.match(r.stdout, /backend nftables/, 'lb show names the backend');
  t.match(
    r.stdout,
    /:8080\/tcp \(ingress\) -> 80 +service web/,
    'lb show lists the published port',
  );
  t.match(r.stdout, /== 6 replicas running again [\d.]+ s after the kill/);
  t.match(r.stdout, /kill -9 host h3[\s\S]*== answers came from tasks on h1, h2\n/);
  t.match(r.stdout, /== cleaned up: no namespace left behind/);
});
