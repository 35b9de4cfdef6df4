#!/usr/bin/env node
/**
 * meshd's entry point (package.json `bin`): run the daemon with the real dependencies.
 * May import: ./daemon.
 */
import { run } from './daemon.js';

process.exitCode = await run(process.argv.slice(2));
