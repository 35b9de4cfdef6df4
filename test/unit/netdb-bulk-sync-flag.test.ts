// meshd's --netdb-bulk-sync flag: parsed as whole seconds, bad values refused (exit 2).
import t from 'tap';
import { parseDaemonArgs, DEFAULTS } from '../../src/daemon/config.js';
import { UsageError } from '../../src/util/errors.js';

t.test('--netdb-bulk-sync', async (t) => {
  t.equal(DEFAULTS.netdbBulkSyncSec, 30, "default: networkdb's 30 s");
  const c = parseDaemonArgs(['--netdb-bulk-sync', '600'], {});
  t.equal(typeof c === 'object' && c.netdbBulkSyncSec, 600, 'whole seconds');
  for (const bad of ['0', '10m', '-1', '86401', '1.5'])
    t.throws(() => parseDaemonArgs(['--netdb-bulk-sync', bad], {}), UsageError, `${bad} refused`);
});
