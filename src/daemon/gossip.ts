/**
 * The daemon's gossip role: one memberlist-compatible agent bound to --advertise-addr on
 * --gossip-port, joined to --join seeds, encrypted with --gossip-key-file's keys, and its
 * diagnostics on the API (`GET /v1/debug/gossip`, what `meshctl debug gossip` shows).
 * May import: gossip/, util/, ./api.
 */
import { readFileSync } from 'node:fs';
import { Keyring } from '../gossip/keyring.js';
import { Memberlist, keyFromBase64 } from '../gossip/memberlist.js';
import type { SwimEvent } from '../gossip/swim.js';
import { MeshError, UsageError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import type { ApiServer } from './api.js';
import type { DaemonConfig } from './config.js';

const log = createLogger('gossip');

function loadKeyring(file: string): Keyring {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new UsageError(
      `read --gossip-key-file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
  const keys = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map(keyFromBase64);
  if (keys.length === 0)
    throw new UsageError(`--gossip-key-file ${file}: no keys in it (one base64 key per line)`);
  return new Keyring(keys[0], keys.slice(1));
}

export class GossipRole {
  private constructor(readonly ml: Memberlist) {}

  /** Start gossip if the configuration asks for it (an --advertise-addr); undefined otherwise. */
  static async start(cfg: DaemonConfig, api: ApiServer): Promise<GossipRole | undefined> {
    api.route('GET', '/v1/debug/gossip', () => {
      throw new MeshError(
        'EUNAVAILABLE',
        'gossip is off on this node: start meshd with --advertise-addr',
      );
    });
    if (cfg.advertiseAddr === undefined) return undefined;
    const ml = await Memberlist.create({
      name: cfg.nodeName,
      bindAddr: cfg.advertiseAddr,
      port: cfg.gossipPort,
      keyring: cfg.gossipKeyFile ? loadKeyring(cfg.gossipKeyFile) : null,
    });
    const role = new GossipRole(ml);
    ml.on('event', (e: SwimEvent) => {
      if (e.type === 'join' || e.type === 'leave' || e.type === 'update') {
        log.info(`member ${e.type}`, { member: e.node.name });
      }
    });
    api.route('GET', '/v1/debug/gossip', () => ml.status());
    log.info('gossip started', { name: cfg.nodeName, addr: ml.address });
    if (cfg.join.length > 0) {
      const seeds = cfg.join.map((j) => (j.includes(':') ? j : `${j}:${cfg.gossipPort}`));
      // Seeds may not be up yet (a whole cluster starting at once): retry in the background,
      // bounded, and say so in the log rather than fail the daemon.
      void role.joinWithRetry(seeds);
    }
    return role;
  }

  private async joinWithRetry(seeds: string[]): Promise<void> {
    for (let attempt = 1; attempt <= 30; attempt++) {
      const r = await this.ml.join(seeds);
      if (r.contacted > 0) {
        log.info('joined', { contacted: r.contacted, seeds: seeds.join(',') });
        return;
      }
      log.warn('join failed, retrying', { attempt, errors: r.errors.join('; ') });
      await new Promise((res) => setTimeout(res, Math.min(1000 * attempt, 5000)));
    }
    log.error('gave up joining: no seed answered', { seeds: seeds.join(',') });
  }

  /** Alive members other than this node. */
  peerCount(): number {
    return this.ml.members().filter((m) => m.state === 'alive' && m.name !== this.ml.name).length;
  }

  /** Join these `ip:port` seeds once (the cluster role hands them out from the managers). */
  async joinSeeds(seeds: string[]): Promise<number> {
    if (seeds.length === 0) return 0;
    const r = await this.ml.join(seeds);
    if (r.contacted > 0)
      log.info('joined gossip through cluster seeds', { seeds: seeds.join(',') });
    return r.contacted;
  }

  /** Leave gracefully (others see `left`, not `failed`), then close the sockets. */
  async stop(): Promise<void> {
    const ok = await this.ml.leave(2000);
    if (!ok) log.warn('leave was not acknowledged in time');
    await this.ml.shutdown();
  }
}
