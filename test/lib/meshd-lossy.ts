// meshd run with the lossy WAL file system (src/raft/lossyfs.ts): unsynced writes stay in
// memory, so a kill -9 loses exactly what a power cut could. Crash tests spawn this entry point
// instead of the real one; the product itself has no switch for it.
import { run } from '../../src/daemon/daemon.js';
import { lossyFs } from '../../src/raft/lossyfs.js';

process.exitCode = await run(process.argv.slice(2), { walFs: lossyFs() });
