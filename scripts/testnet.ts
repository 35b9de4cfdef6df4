/**
 * scripts/testnet: namespaced test hosts by hand, for poking at things with ip/bridge/ping.
 *
 *   scripts/testnet up N [--name NAME] [--mtu MTU]   create hosts NAME-h1..hN (default NAME mesh-tn)
 *   scripts/testnet down [--name NAME]               remove them, killing what runs inside
 *   scripts/testnet ls [--name NAME]                 list them with their underlay addresses
 *
 * Host i has eth0 = 198.18.0.i/24 on a bridge in the namespace NAME-sw. Exit 2 on usage errors.
 */
import { netnsList } from '../src/netlink/index.js';
import { TestNet, destroyByPrefix } from '../test/lib/testnet.js';

const USAGE =
  'usage: scripts/testnet up N [--name NAME] [--mtu MTU] | down [--name NAME] | ls [--name NAME]\n';

function usage(msg?: string): number {
  if (msg) process.stderr.write(`testnet: ${msg}\n`);
  process.stderr.write(USAGE);
  return 2;
}

function main(argv: string[]): number {
  const [cmd, ...rest] = argv;
  let name = 'mesh-tn';
  let mtu = 1500;
  const pos: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (a === '--name') name = rest[++i] ?? '';
    else if (a === '--mtu') mtu = Number(rest[++i]);
    else pos.push(a);
  }
  if (!/^[a-z][a-z0-9-]{0,40}$/.test(name))
    return usage(`--name ${JSON.stringify(name)}: use lower-case letters, digits and '-'`);
  if (!Number.isInteger(mtu) || mtu < 1280 || mtu > 65535) return usage('--mtu wants 1280..65535');
  if (cmd === '--help' || cmd === '-h') {
    process.stdout.write(USAGE);
    return 0;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('testnet: run as root (it creates network namespaces)\n');
    return 1;
  }
  switch (cmd) {
    case 'up': {
      const n = Number(pos[0]);
      if (!Number.isInteger(n) || n < 1 || n > 250) return usage('up wants a host count 1..250');
      if (netnsList().some((x) => x.startsWith(`${name}-`))) {
        process.stderr.write(
          `testnet: hosts named ${name}-* exist; run \`scripts/testnet down --name ${name}\` first\n`,
        );
        return 1;
      }
      const net = TestNet.create({ hosts: n, prefix: name, mtu });
      for (const h of net.hosts) process.stdout.write(`${h.name} ${h.cidr}\n`);
      net.release(); // keep the namespaces after we exit
      return 0;
    }
    case 'down':
      process.stdout.write(`removed ${destroyByPrefix(name)} namespaces\n`);
      return 0;
    case 'ls':
      for (const x of netnsList().filter((n) => n.startsWith(`${name}-h`))) {
        process.stdout.write(`${x} 198.18.0.${x.slice(name.length + 2)}\n`);
      }
      return 0;
    default:
      return usage(cmd ? `unknown command ${JSON.stringify(cmd)}` : undefined);
  }
  return 0;
}

process.exitCode = main(process.argv.slice(2));
