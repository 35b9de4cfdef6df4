/**
 * bench/lb's IPVS half, run inside the kernel VM (`scripts/vm/run -- node dist/bench/lib/lb-ipvs.js
 * SERVICES BACKENDS`; this host's kernel has no IPVS, docs/vm.md): program SERVICES × BACKENDS
 * through IpvsBackend and `ipvsadm --restore` of the same content (src/lb/ipvs.ts
 * benchIpvsProgram), each into a fresh namespace, after a small warm-up round in two throwaway
 * namespaces (module loading, JIT, the first generic-netlink socket, as benchLbNft warms up);
 * then checks with `ipvsadm -Sn` that both namespaces hold every destination. Prints one JSON line
 * {services, backends, program_ms, peer_program_ms, noop_ms, add_one_ms, dests_ours, dests_peer}.
 * The guest is emulated (TCG): only the ratio of the two times means something.
 * May import: node built-ins, src/lb, src/netlink.
 */
import { execFileSync } from 'node:child_process';
import { benchIpvsProgram } from '../../src/lb/ipvs.js';
import {
  NETLINK_ROUTE,
  NetlinkSocket,
  linkSetUp,
  netnsCreate,
  netnsDelete,
  type Netns,
} from '../../src/netlink/index.js';

if (process.env.MESH_VM !== '1') {
  process.stderr.write(
    'lb-ipvs: runs only inside the kernel VM (scripts/vm/run); MESH_VM=1 is unset\n',
  );
  process.exit(2);
}

const services = Number(process.argv[2] ?? 1000);
const backends = Number(process.argv[3] ?? 10);
if (!Number.isInteger(services) || services < 1 || !Number.isInteger(backends) || backends < 1) {
  process.stderr.write('usage: lb-ipvs.js SERVICES BACKENDS (positive integers)\n');
  process.exit(2);
}

const made: Array<{ name: string; ns: Netns }> = [];
/** A fresh namespace with lo up (IPVS refuses masquerade destinations while lo is down). */
function fresh(what: string): Netns {
  const name = `mb-${process.pid}-${what}`;
  const ns = netnsCreate(name);
  made.push({ name, ns });
  const rt = NetlinkSocket.open(NETLINK_ROUTE, { netns: ns });
  try {
    linkSetUp(rt, 'lo');
  } finally {
    rt.close();
  }
  return ns;
}

/** Destinations `ipvsadm -Sn` lists in namespace `name`. */
function dests(name: string): number {
  const out = execFileSync('ip', ['netns', 'exec', name, 'ipvsadm', '-Sn'], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  return out.split('\n').filter((l) => l.startsWith('-a ')).length;
}

try {
  await benchIpvsProgram({ netns: fresh('wa'), peerNetns: fresh('wb'), services: 2, backends: 2 });
  const r = await benchIpvsProgram({
    netns: fresh('ours'),
    peerNetns: fresh('peer'),
    services,
    backends,
  });
  const round = (x: number | undefined): number | undefined =>
    x === undefined ? undefined : Math.round(x);
  process.stdout.write(
    JSON.stringify({
      services,
      backends,
      program_ms: round(r.program_ms),
      peer_program_ms: round(r.peer_program_ms),
      noop_ms: round(r.noop_ms),
      add_one_ms: round(r.add_one_ms),
      dests_ours: dests(`mb-${process.pid}-ours`),
      dests_peer: dests(`mb-${process.pid}-peer`),
    }) + '\n',
  );
} finally {
  for (const m of made) {
    m.ns.close();
    netnsDelete(m.name, { ifExists: true });
  }
}
