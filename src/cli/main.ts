#!/usr/bin/env node
/**
 * meshctl: the command-line client. Noun-verb commands (cluster, node, net, service, lb) arrive
 * with the issues that build them; today it answers --version and --help. Usage errors exit 2,
 * stdout carries only what was asked, errors go to stderr.
 * May import: util/ (and the daemon's API client, once it exists).
 */
import { VERSION } from '../util/version.js';

const HELP = `meshctl — drive the Mesh networking daemon

Usage:
  meshctl --version     print the version
  meshctl --help        print this help

The cluster, node, net, service and lb commands are not implemented yet
(see docs/cli.md for what is planned and what works today).
`;

export function run(argv: readonly string[]): number {
  const [first] = argv;
  if (first === '--version' || first === '-v' || first === 'version') {
    process.stdout.write(`meshctl ${VERSION}\n`);
    return 0;
  }
  if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
    (first === undefined ? process.stderr : process.stdout).write(HELP);
    return first === undefined ? 2 : 0;
  }
  process.stderr.write(`meshctl: unknown command ${JSON.stringify(first)}; see meshctl --help\n`);
  return 2;
}

process.exitCode = run(process.argv.slice(2));
