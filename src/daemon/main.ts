#!/usr/bin/env node
/**
 * meshd: the per-node daemon. The agent, gossip and manager roles are wired in here by the
 * issues that build them; today it answers --version and --help and refuses to start, since
 * there is nothing yet for it to run. Usage errors exit 2.
 * May import: every layer (this is the one place that wires them together).
 */
import { VERSION } from '../util/version.js';

const HELP = `meshd — the Mesh networking daemon (one per node, runs as root)

Usage:
  meshd --version     print the version
  meshd --help        print this help

The daemon itself (gossip, overlay, load balancing, manager roles) is not
implemented yet; see docs/ and the project's issues for the plan.
`;

export function run(argv: readonly string[]): number {
  const [first] = argv;
  if (first === '--version' || first === '-v') {
    process.stdout.write(`meshd ${VERSION}\n`);
    return 0;
  }
  if (first === '--help' || first === '-h') {
    process.stdout.write(HELP);
    return 0;
  }
  process.stderr.write(
    first === undefined
      ? 'meshd: nothing to run yet: the daemon is not implemented in this version; see meshd --help\n'
      : `meshd: unknown option ${JSON.stringify(first)}; see meshd --help\n`,
  );
  return 2;
}

process.exitCode = run(process.argv.slice(2));
