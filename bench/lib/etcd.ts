/**
 * The peer side of bench/raft: a 3-member etcd cluster (Debian's etcd 3.4, /usr/bin/etcd),
 * one member per namespaced host, default tuning (heartbeat 100 ms, election 1000 ms, fsync on),
 * data dirs under the caller's tmp dir. The client is etcd's v3 JSON gateway (grpc-gateway,
 * served on the client port): `POST /v3/kv/put` with base64 key and value, and
 * `POST /v3/maintenance/status` for the leader (uint64 fields arrive as decimal strings).
 * Every request goes through the load worker, which runs inside the test net.
 * May import: node built-ins, test/lib/testnet.ts, bench/lib/load.ts (types and the worker).
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { connect, constants as h2, type ClientHttp2Session } from 'node:http2';
import { join } from 'node:path';
import type { TestHost } from '../../test/lib/testnet.js';
import type { BenchCluster, HttpReply, LoadWorker, Target } from './load.js';
import { stopProcs } from './proc.js';

export const ETCD = '/usr/bin/etcd';
const CLIENT_PORT = 2379;
const PEER_PORT = 2380;

const b64 = (s: string): string => Buffer.from(s).toString('base64');

/** A put on etcd's JSON gateway; acknowledged when etcd answers 200 with a response header. */
export function etcdPut(
  key: string,
  value: string,
): { path: string; body: unknown; check(r: HttpReply): void } {
  return {
    path: '/v3/kv/put',
    body: { key: b64(key), value: b64(value) },
    check(r) {
      if (r.status !== 200 || !r.body.includes('"header"'))
        throw new Error(`etcd put: ${r.status} ${r.body.slice(0, 200)}`);
    },
  };
}

/** Protobuf varint (the wire's base-128 little-endian integer). */
function varint(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

/**
 * A gRPC message carrying etcdserverpb.PutRequest {key = 1, value = 2} (both bytes): a 5-byte
 * prefix (uncompressed flag, u32 BE length) then the protobuf fields (gRPC over HTTP/2 spec,
 * "Length-Prefixed-Message").
 */
function grpcPutMessage(key: string, value: string): Buffer {
  const k = Buffer.from(key);
  const v = Buffer.from(value);
  const pb = Buffer.concat([
    Buffer.from([0x0a, ...varint(k.length)]),
    k,
    Buffer.from([0x12, ...varint(v.length)]),
    v,
  ]);
  const head = Buffer.alloc(5);
  head.writeUInt32BE(pb.length, 1);
  return Buffer.concat([head, pb]);
}

/**
 * A put over etcd's native gRPC API on an HTTP/2 session (what etcd's own clients and its
 * `benchmark put` use), for comparing the gateway's cost. Acknowledged on grpc-status 0, which
 * arrives in the trailers (or in the headers of a trailers-only error reply).
 */
export function etcdGrpcPut(
  session: ClientHttp2Session,
  key: string,
  value: string,
  timeoutMs: number,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let status: string | undefined;
    let message = '';
    const stream = session.request({
      [h2.HTTP2_HEADER_METHOD]: 'POST',
      [h2.HTTP2_HEADER_PATH]: '/etcdserverpb.KV/Put',
      [h2.HTTP2_HEADER_CONTENT_TYPE]: 'application/grpc',
      te: 'trailers',
    });
    const timer = setTimeout(() => stream.close(h2.NGHTTP2_CANCEL), timeoutMs);
    const take = (h: Record<string, string | string[] | undefined>): void => {
      const st = h['grpc-status'];
      const msg = h['grpc-message'];
      if (st !== undefined) status = String(st);
      if (msg !== undefined) message = decodeURIComponent(String(msg));
    };
    stream.on('response', take);
    stream.on('trailers', take);
    stream.on('data', () => undefined);
    stream.on('error', (e: Error) => {
      clearTimeout(timer);
      reject(e);
    });
    stream.on('close', () => {
      clearTimeout(timer);
      if (status === '0') resolve();
      else reject(new Error(`etcd grpc put: status ${status ?? 'none'} ${message}`.trim()));
    });
    stream.end(grpcPutMessage(key, value));
  });
}

/** One HTTP/2 session to an etcd member's client port. */
export function etcdGrpcSession(host: string, port: number): ClientHttp2Session {
  const s = connect(`http://${host}:${port}`);
  s.on('error', () => undefined); // each stream reports its own failure
  return s;
}

interface EtcdStatus {
  header: { member_id: string };
  leader: string;
  raftIndex: string;
  raftAppliedIndex?: string;
}

/** Debian's etcd present and the expected 3.4 line; throws with how to install it otherwise. */
export function checkEtcd(): string {
  const r = spawnSync(ETCD, ['--version'], { encoding: 'utf8' });
  const m = /etcd Version: (\S+)/.exec(r.stdout ?? '');
  if (r.status !== 0 || !m)
    throw new Error(`bench raft: ${ETCD} not found or not runnable (apt-get install etcd-server)`);
  return m[1]!;
}

export class EtcdCluster implements BenchCluster {
  readonly side = 'etcd';
  readonly targets: Target[];
  private readonly procs: (ChildProcess | undefined)[];
  private readonly names: string[];

  constructor(
    private readonly hosts: TestHost[],
    private readonly dir: string,
    private readonly worker: LoadWorker,
    /** Benchmark puts over gRPC instead of the JSON gateway (status and health stay on the gateway). */
    grpc = false,
  ) {
    this.names = hosts.map((_, i) => `m${i + 1}`);
    this.targets = hosts.map((h) => ({ api: 'etcd', host: h.addr, port: CLIENT_PORT, grpc }));
    this.procs = hosts.map(() => undefined);
  }

  private spawnMember(i: number): void {
    const h = this.hosts[i]!;
    const name = this.names[i]!;
    const initial = this.hosts
      .map((x, j) => `${this.names[j]!}=http://${x.addr}:${PEER_PORT}`)
      .join(',');
    // On a restart etcd reads its membership from the data dir and ignores the --initial-* flags.
    const args = [
      '--name',
      name,
      '--data-dir',
      join(this.dir, name),
      '--listen-client-urls',
      `http://${h.addr}:${CLIENT_PORT}`,
      '--advertise-client-urls',
      `http://${h.addr}:${CLIENT_PORT}`,
      '--listen-peer-urls',
      `http://${h.addr}:${PEER_PORT}`,
      '--initial-advertise-peer-urls',
      `http://${h.addr}:${PEER_PORT}`,
      '--initial-cluster',
      initial,
      '--initial-cluster-token',
      'mesh-bench',
      '--initial-cluster-state',
      'new',
      '--logger',
      'zap',
      '--log-outputs',
      'stderr',
      '--log-level',
      'warn',
    ];
    const log = openSync(join(this.dir, `${name}.log`), 'a');
    try {
      this.procs[i] = h.spawn(ETCD, args, { stdio: ['ignore', 'ignore', log] });
    } finally {
      closeSync(log);
    }
  }

  async start(): Promise<void> {
    for (let i = 0; i < this.hosts.length; i++) this.spawnMember(i);
    await this.waitHealthy(30_000);
  }

  private async status(i: number): Promise<EtcdStatus | undefined> {
    try {
      const r = await this.worker.request(this.targets[i]!, 'POST', '/v3/maintenance/status', {});
      return r.status === 200 ? (JSON.parse(r.body) as EtcdStatus) : undefined;
    } catch {
      return undefined;
    }
  }

  async leader(): Promise<number> {
    const st = await Promise.all(this.targets.map((_, i) => this.status(i)));
    for (let i = 0; i < st.length; i++) {
      const s = st[i];
      if (s && s.leader !== '0' && s.leader === s.header.member_id) return i;
    }
    throw new Error('etcd: no member says it is the leader');
  }

  pid(i: number): number {
    const p = this.procs[i];
    if (!p?.pid || p.exitCode !== null || p.signalCode !== null)
      throw new Error(`etcd ${this.names[i]!}: not running`);
    return p.pid;
  }

  async restart(i: number): Promise<void> {
    const p = this.procs[i];
    if (p && p.exitCode === null && p.signalCode === null)
      await new Promise<void>((r) => p.once('exit', () => r()));
    this.spawnMember(i);
  }

  /** All members up, agreeing on one leader, and a put through each of them acknowledged. */
  async waitHealthy(limitMs: number): Promise<void> {
    const end = Date.now() + limitMs;
    let why = 'no status yet';
    while (Date.now() < end) {
      const dead = this.procs.findIndex((p) => p && (p.exitCode !== null || p.signalCode !== null));
      if (dead >= 0)
        throw new Error(
          `etcd ${this.names[dead]!}: exited (${this.procs[dead]!.exitCode ?? this.procs[dead]!.signalCode})`,
        );
      const st = await Promise.all(this.targets.map((_, i) => this.status(i)));
      const leaders = new Set(st.map((s) => s?.leader));
      if (st.some((s) => !s)) why = 'a member does not answer';
      else if (leaders.size !== 1 || leaders.has('0')) why = 'members disagree on the leader';
      else {
        try {
          for (const t of this.targets) {
            const p = etcdPut('bench/health', 'ok');
            p.check(await this.worker.request(t, 'POST', p.path, p.body, 3000));
          }
          return;
        } catch (e) {
          why = (e as Error).message;
        }
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`etcd: cluster not healthy within ${limitMs} ms: ${why}`);
  }

  async stop(): Promise<void> {
    await stopProcs(this.procs);
  }
}
