// vm-timeout: 90
// (a whole run: 35 s in the VM under host load 10–20; a normal run takes at most half of it)
// Runs inside the Debian kernel VM (scripts/vm): our own generic-netlink lookup finds the IPVS
// family once ip_vs is loaded, from the host namespace and from a fresh one. Fails (never
// skips) when IPVS is missing: this file only runs in the VM.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import {
  NETLINK_GENERIC,
  NetlinkSocket,
  genlFamily,
  netnsCreate,
  netnsDelete,
} from '../../src/netlink/index.js';

t.test('IPVS generic-netlink family resolves through our layer', async (t) => {
  execFileSync('modprobe', ['ip_vs']);
  const g = NetlinkSocket.open(NETLINK_GENERIC);
  t.teardown(() => g.close());
  const fam = genlFamily(g, 'IPVS');
  t.equal(fam.name, 'IPVS');
  t.equal(fam.version, 1, 'IPVS_GENL_VERSION');
  t.ok(fam.id >= 0x10, `dynamic family id ${fam.id}`);
  const cmds = new Set(fam.ops.map((o) => o.cmd));
  // NEW/SET/DEL/GET_SERVICE 1-4, NEW/SET/DEL/GET_DEST 5-8, GET_INFO 15, FLUSH 17.
  for (const c of [1, 2, 3, 4, 5, 6, 7, 8, 15, 17]) t.ok(cmds.has(c), `command ${c} offered`);

  const name = `mt-${process.pid}-0-vmgenl`;
  const ns = netnsCreate(name);
  t.teardown(() => {
    ns.close();
    netnsDelete(name, { ifExists: true });
  });
  const inner = NetlinkSocket.open(NETLINK_GENERIC, { netns: ns });
  t.teardown(() => inner.close());
  t.equal(genlFamily(inner, 'IPVS').id, fam.id, 'same family from inside a fresh namespace');
});
