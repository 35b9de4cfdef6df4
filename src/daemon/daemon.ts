/**
 * meshd: the per-node daemon, and the one place that wires the layers together. Runs in the
 * foreground (systemd's Type=simple), logs logfmt to stderr, stops cleanly on SIGTERM/SIGINT.
 * Today it owns the data directory and serves the API socket; the gossip, overlay, load
 * balancer and manager roles are added here as they are built. Usage errors exit 2.
 * May import: every layer.
 */
import { mkdirSync, openSync, readFileSync, rmSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { MeshError } from '../util/errors.js';
import { createLogger, setLogLevel } from '../util/log.js';
import { VERSION } from '../util/version.js';
import { ApiServer } from './api.js';
import { USAGE, parseDaemonArgs, type DaemonConfig } from './config.js';
import { AgentRole } from './agent.js';
import { ClusterRole } from './cluster.js';
import { GossipRole } from './gossip.js';
import type { WalFs } from '../raft/wal.js';

/**
 * What a test harness may swap in when it runs meshd through its own entry point (the
 * production entry, main.ts, passes none): the daemon itself reads no test switch.
 */
export interface DaemonDeps {
  /** File system under the raft WAL (a crash test's lossy one). @default node:fs */
  walFs?: WalFs;
}

const log = createLogger('meshd');

/**
 * Claim the data directory with a pid file: two daemons on one data dir would corrupt it.
 * A pid file naming a process that is gone is taken over.
 */
function lockDataDir(dir: string): () => void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const pidFile = join(dir, 'meshd.pid');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(pidFile, 'wx', 0o600);
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      return () => rmSync(pidFile, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number(readFileSync(pidFile, 'utf8').trim());
      let alive: boolean;
      try {
        process.kill(pid, 0);
        alive = pid > 0;
      } catch (err) {
        alive = (err as NodeJS.ErrnoException).code === 'EPERM';
      }
      if (alive) {
        throw new MeshError(
          'ECONFLICT',
          `lock data dir ${dir}: in use by meshd pid ${pid}; stop it first or pick another --data-dir`,
        );
      }
      rmSync(pidFile, { force: true }); // left by a crashed meshd
    }
  }
  throw new MeshError('ECONFLICT', `lock data dir ${dir}: could not take over ${pidFile}`);
}

async function serve(cfg: DaemonConfig, deps: DaemonDeps): Promise<number> {
  setLogLevel(cfg.logLevel);
  const unlock = lockDataDir(cfg.dataDir);
  const api = new ApiServer();
  const started = Date.now();
  api.route('GET', '/v1/version', () => ({
    version: VERSION,
    pid: process.pid,
    uptimeMs: Date.now() - started,
  }));
  api.route('GET', '/v1/health', () => ({ ok: true }));
  let gossip: GossipRole | undefined;
  let cluster: ClusterRole | undefined;
  let agent: AgentRole | undefined;
  try {
    gossip = await GossipRole.start(cfg, api);
    cluster = await ClusterRole.start(cfg, api, {
      forceNewCluster: cfg.forceNewCluster,
      ...(gossip ? { gossip } : {}),
      ...(deps.walFs ? { walFs: deps.walFs } : {}),
    });
    agent = await AgentRole.start(cfg, api, cluster, gossip);
    await api.listen(cfg.socket);
  } catch (e) {
    agent?.stop();
    await cluster?.stop();
    await gossip?.stop();
    unlock();
    throw e;
  }
  log.info('started', { version: VERSION, dataDir: cfg.dataDir, advertise: cfg.advertiseAddr });
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (sig: string): void => {
      if (stopping) return;
      stopping = true;
      log.info('stopping', { signal: sig });
      // Tasks keep running: they outlive meshd, and the next meshd adopts them.
      agent?.stop();
      void (cluster?.stop() ?? Promise.resolve())
        .catch((e: unknown) => log.error('cluster stop failed', { err: e }))
        .then(() => gossip?.stop())
        .catch((e: unknown) => log.error('gossip stop failed', { err: e }))
        .then(() => api.close())
        .then(() => {
          unlock();
          log.info('stopped');
          resolve(0);
        });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}

/** Parse the command line and run meshd until SIGTERM/SIGINT; resolves with the exit code. */
export async function run(argv: readonly string[], deps: DaemonDeps = {}): Promise<number> {
  let cfg;
  try {
    cfg = parseDaemonArgs(argv);
  } catch (e) {
    process.stderr.write(`meshd: ${(e as Error).message}; see meshd --help\n`);
    return 2;
  }
  if (cfg === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  if (cfg === 'version') {
    process.stdout.write(`meshd ${VERSION}\n`);
    return 0;
  }
  try {
    return await serve(cfg, deps);
  } catch (e) {
    process.stderr.write(`meshd: ${(e as Error).message}\n`);
    return 1;
  }
}
