// Manager wire on loopback: ControlServer + RaftTransport + RpcClient with real TLS. Certificates
// (ECDSA P-256) come from the openssl CLI into a temporary directory: a cluster CA, three manager
// certificates, a worker, a manager of another cluster, and a manager signed by a foreign CA.
import { execFileSync } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';

import t from 'tap';

import { chainProblem, ControlServer, RpcClient } from '../../src/manager/dispatch/server.js';
import { encodeFrame, FrameDecoder, FrameKind } from '../../src/raft/codec.js';
import { encodeJsonFrame, RaftTransport, type TlsCredentials } from '../../src/raft/transport.js';
import { EntryType, MessageType, type Message } from '../../src/raft/types.js';
import { MeshError } from '../../src/util/errors.js';
import { setLogSink } from '../../src/util/log.js';

const CLUSTER = 'c0ffee';
const dir = mkdtempSync(join(tmpdir(), 'mesh-raft-transport-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const logLines: string[] = [];
setLogSink((line) => {
  logLines.push(line);
  if (process.env.MESH_TEST_LOG) process.stderr.write(line);
});

function ossl(...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

function makeCA(name: string): void {
  ossl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`);
  ossl(
    'req', '-x509', '-new', '-key', `${name}.key`, '-subj', '/CN=mesh-root-ca', '-days', '2',
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-out', `${name}.crt`,
  ); // prettier-ignore
}

function makeNode(name: string, subj: string, ca: string): TlsCredentials {
  ossl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`);
  ossl('req', '-new', '-key', `${name}.key`, '-subj', subj, '-out', `${name}.csr`);
  writeFileSync(
    join(dir, `${name}.ext`),
    'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n' +
      `extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:${name},IP:127.0.0.1\n`,
  );
  ossl(
    'x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`,
    '-CAcreateserial', '-days', '1', '-extfile', `${name}.ext`, '-out', `${name}.crt`,
  ); // prettier-ignore
  return {
    key: readFileSync(join(dir, `${name}.key`), 'utf8'),
    cert: readFileSync(join(dir, `${name}.crt`), 'utf8'),
    ca: readFileSync(join(dir, `${ca}.crt`), 'utf8'),
  };
}

makeCA('ca');
makeCA('evilca');
const creds = new Map<number, TlsCredentials>();
for (const id of [1, 2, 3])
  creds.set(id, makeNode(`m${id}`, `/O=${CLUSTER}/OU=manager/CN=m${id}`, 'ca'));
const worker = makeNode('w1', `/O=${CLUSTER}/OU=worker/CN=w1`, 'ca');
const otherCluster = makeNode('x1', '/O=other/OU=manager/CN=x1', 'ca');
const foreign = makeNode('f1', `/O=${CLUSTER}/OU=manager/CN=f1`, 'evilca');
const CA_PEM = creds.get(1)!.ca;

async function waitFor(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function app(from: number, to: number, index: number, payload = 'x'): Message {
  return {
    type: MessageType.App,
    from,
    to,
    term: 3,
    logTerm: 3,
    index,
    entries: [{ term: 3, index: index + 1, type: EntryType.Normal, data: Buffer.from(payload) }],
    commit: index,
    reject: false,
    rejectHint: 0,
  };
}

interface Node {
  id: number;
  server: ControlServer;
  transport: RaftTransport;
  got: Message[];
  unreachable: number[];
  snaps: [number, boolean][];
  port: number;
}

const live = new Set<Node>();

async function startNode(id: number, port = 0, tlsCreds = creds.get(id)!): Promise<Node> {
  const got: Message[] = [];
  const unreachable: number[] = [];
  const snaps: [number, boolean][] = [];
  const transport = new RaftTransport({
    selfId: id,
    clusterId: CLUSTER,
    tls: () => tlsCreds,
    onMessages: (msgs) => got.push(...msgs),
    onUnreachable: (to) => unreachable.push(to),
    onSnapshotStatus: (to, ok) => snaps.push([to, ok]),
    backoffMinMs: 20,
    backoffMaxMs: 100,
  });
  const server = await ControlServer.listen({
    host: '127.0.0.1',
    port,
    clusterId: CLUSTER,
    ...tlsCreds,
    raft: transport,
  });
  const n = { id, server, transport, got, unreachable, snaps, port: server.address().port };
  live.add(n);
  return n;
}

async function stopNode(n: Node): Promise<void> {
  live.delete(n);
  n.transport.close();
  await n.server.close();
}

t.teardown(async () => {
  for (const n of [...live]) await stopNode(n);
});

function connectAll(nodes: Node[]): void {
  for (const a of nodes) {
    for (const b of nodes) if (a !== b) a.transport.setPeer(b.id, `127.0.0.1:${b.port}`);
  }
}

t.test('three transports exchange batches, one frame per peer per turn', async (t) => {
  const nodes = [await startNode(1), await startNode(2), await startNode(3)];
  connectAll(nodes);
  await waitFor('streams up', () =>
    nodes.every((a) => nodes.every((b) => a === b || a.transport.isConnected(b.id))),
  );
  const before = nodes.map((n) => n.transport.stats.framesOut);
  for (const a of nodes) {
    const batch: Message[] = [];
    for (const b of nodes) {
      if (a === b) continue;
      for (let i = 0; i < 100; i++) batch.push(app(a.id, b.id, i, `${a.id}->${b.id}#${i}`));
    }
    a.transport.send(batch);
  }
  await waitFor('all delivered', () => nodes.every((n) => n.got.length === 200));
  nodes.forEach((n, i) => {
    t.equal(n.transport.stats.framesOut - before[i]!, 2, `node ${n.id}: one frame per peer`);
    for (const from of [1, 2, 3].filter((x) => x !== n.id)) {
      const mine = n.got.filter((m) => m.from === from);
      t.same(
        mine.map((m) => Buffer.from(m.entries[0]!.data).toString()),
        Array.from({ length: 100 }, (_, i) => `${from}->${n.id}#${i}`),
        `node ${n.id} got ${from}'s messages in order`,
      );
    }
  });
  // Messages claiming another sender or addressed elsewhere never reach raft.
  const n1 = nodes[0]!;
  const n2 = nodes[1]!;
  n2.got.length = 0;
  n1.transport.send([app(3, 2, 1), app(1, 2, 2)]);
  await waitFor('honest message', () => n2.got.length === 1);
  t.equal(n2.got[0]!.from, 1, 'spoofed sender dropped by the receiver');
  for (const n of nodes) await stopNode(n);
  t.end();
});

/** Dial `server` on the raft channel as `as` and report what the server did. */
async function dialRaft(port: number, as: TlsCredentials, ca = CA_PEM): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({
      host: '127.0.0.1',
      port,
      key: as.key,
      cert: as.cert,
      ca,
      checkServerIdentity: () => undefined,
    });
    const d = new FrameDecoder(65536);
    let reason = '';
    sock.on('secureConnect', () => {
      sock.write(
        encodeJsonFrame(FrameKind.Hello, { channel: 'raft', from: 7, clusterId: CLUSTER }),
      );
      sock.write(encodeFrame(FrameKind.RaftBatch, new Uint8Array([1, 0])));
    });
    sock.on('data', (c: Buffer) => {
      d.push(c);
      for (let f = d.next(); f; f = d.next()) {
        if (f.kind === FrameKind.Close) reason = Buffer.from(f.payload).toString();
      }
    });
    sock.on('error', reject);
    sock.on('close', () => resolve(reason));
    setTimeout(() => sock.destroy(), 3000).unref();
  });
}

t.test('raft channel admits only managers of our cluster signed by our CA', async (t) => {
  const n1 = await startNode(1);
  const refusedBefore = n1.server.stats.refused;
  t.match(await dialRaft(n1.port, worker), /certificate of w1 is for a worker/);
  t.match(await dialRaft(n1.port, otherCluster), /x1 belongs to cluster other/);
  t.match(await dialRaft(n1.port, foreign), /no certificate signed by our CA/);
  t.match(
    await dialRaft(n1.port, { ...worker, key: '', cert: '' }),
    /no certificate signed by our CA/,
    'no client certificate at all',
  );
  t.equal(n1.server.stats.refused - refusedBefore, 4);
  t.ok(
    logLines.some((l) => /control connection closed/.test(l) && /worker/.test(l)),
    'refusal logged with its reason',
  );

  // A transport holding a worker certificate gets nowhere either, and says why in its log.
  const w = new RaftTransport({
    selfId: 9,
    clusterId: CLUSTER,
    tls: () => worker,
    onMessages: () => {},
    onUnreachable: () => {},
    onSnapshotStatus: () => {},
  });
  w.setPeer(1, `127.0.0.1:${n1.port}`);
  await waitFor('worker stream refused', () =>
    logLines.some((l) => /raft peer closed our stream/.test(l) && /worker/.test(l)),
  );
  w.send([app(9, 1, 1)]);
  await new Promise((r) => setTimeout(r, 100));
  t.equal(n1.got.length, 0, 'nothing from the worker reached raft');
  w.close();

  // The dialling side pins the CA too: a server with a foreign certificate is not trusted.
  const evil = await ControlServer.listen({
    host: '127.0.0.1',
    port: 0,
    clusterId: CLUSTER,
    ...foreign,
  });
  const unreachable: number[] = [];
  const d = new RaftTransport({
    selfId: 1,
    clusterId: CLUSTER,
    tls: () => creds.get(1)!,
    onMessages: () => {},
    onUnreachable: (id) => unreachable.push(id),
    onSnapshotStatus: () => {},
    backoffMinMs: 20,
  });
  d.setPeer(5, `127.0.0.1:${evil.address().port}`);
  await waitFor('dial to a foreign server fails', () => {
    d.send([app(1, 5, 1)]);
    return unreachable.length > 0;
  });
  t.notOk(d.isConnected(5), 'no stream to a server outside our CA');
  d.close();
  await evil.close();
  await stopNode(n1);
  t.end();
});

t.test('a restarted peer is reconnected', async (t) => {
  const n1 = await startNode(1);
  let n2 = await startNode(2);
  connectAll([n1, n2]);
  n1.transport.send([app(1, 2, 1)]);
  await waitFor('first delivery', () => n2.got.length === 1);
  const port = n2.port;
  await stopNode(n2);
  await waitFor('loss noticed', () => !n1.transport.isConnected(2));
  n1.transport.send([app(1, 2, 2)]);
  t.ok(n1.unreachable.includes(2), 'send to the stopped peer reported unreachable');
  n2 = await startNode(2, port);
  await waitFor('reconnected', () => n1.transport.isConnected(2));
  n1.transport.send([app(1, 2, 3)]);
  await waitFor('delivery after restart', () => n2.got.length === 1);
  t.equal(n2.got[0]!.index, 3);
  await stopNode(n1);
  await stopNode(n2);
  t.end();
});

t.test('a stalled stream (frozen peer) is noticed and dialled again', async (t) => {
  const n2 = await startNode(2);
  let frozen = false;
  const pairs = new Set<net.Socket>();
  const held: (() => void)[] = [];
  // A TCP relay that can stop forwarding without closing anything, like a SIGSTOPped peer.
  const relay = net.createServer((down) => {
    const up = net.connect(n2.port, '127.0.0.1');
    pairs.add(down).add(up);
    const fwd = (from: net.Socket, to: net.Socket): void => {
      from.on('data', (c) => (frozen ? held.push(() => to.write(c)) : to.write(c)));
      from.on('close', () => to.destroy());
      from.on('error', () => {});
    };
    fwd(down, up);
    fwd(up, down);
  });
  await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
  const unreachable: number[] = [];
  const tr = new RaftTransport({
    selfId: 1,
    clusterId: CLUSTER,
    tls: () => creds.get(1)!,
    onMessages: () => {},
    onUnreachable: (id) => unreachable.push(id),
    onSnapshotStatus: () => {},
    stallMs: 400,
    dialTimeoutMs: 300,
    backoffMinMs: 20,
    backoffMaxMs: 100,
  });
  tr.setPeer(2, `127.0.0.1:${(relay.address() as net.AddressInfo).port}`);
  tr.send([app(1, 2, 1)]);
  await waitFor('first delivery', () => n2.got.length === 1);
  frozen = true;
  tr.send([app(1, 2, 2)]);
  await waitFor('stall noticed', () => logLines.some((l) => /raft stream stalled/.test(l)));
  await waitFor('loss of the stream reported', () => unreachable.includes(2));
  t.notOk(tr.isConnected(2), 'stream closed');
  frozen = false;
  held.length = 0;
  const dials = tr.stats.dials;
  await waitFor('delivery on a new stream', () => {
    tr.send([app(1, 2, 3)]);
    return n2.got.some((m) => m.index === 3);
  });
  t.ok(tr.stats.dials > dials || dials > 1, `dialled again (${tr.stats.dials} dials)`);
  t.notOk(
    n2.got.some((m) => m.index === 2),
    'the frame held by the frozen stream was dropped',
  );
  tr.close();
  for (const s of pairs) s.destroy();
  await new Promise<void>((r) => relay.close(() => r()));
  await stopNode(n2);
  t.end();
});

t.test('a 5 MiB snapshot arrives intact in chunks, beside ordinary traffic', async (t) => {
  const n1 = await startNode(1);
  const n2 = await startNode(2);
  connectAll([n1, n2]);
  await waitFor('stream up', () => n1.transport.isConnected(2));
  const data = new Uint8Array(5 * 1024 * 1024 + 123);
  for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
  const snap: Message = {
    type: MessageType.Snap,
    from: 1,
    to: 2,
    term: 4,
    logTerm: 0,
    index: 0,
    entries: [],
    commit: 0,
    reject: false,
    rejectHint: 0,
    snapshot: {
      metadata: { index: 500, term: 4, confState: { voters: [1, 2], learners: [], removed: [9] } },
      data,
    },
  };
  const framesBefore = n1.transport.stats.framesOut;
  const hb = (i: number): Message => ({
    ...app(1, 2, i),
    type: MessageType.Heartbeat,
    entries: [],
  });
  n1.transport.send([hb(1), snap, hb(2)]);
  await waitFor('snapshot delivered', () => n2.got.some((m) => m.type === MessageType.Snap));
  await waitFor('snapshot status', () => n1.snaps.length === 1);
  await waitFor(
    'heartbeats',
    () => n2.got.filter((m) => m.type === MessageType.Heartbeat).length === 2,
  );
  const got = n2.got.find((m) => m.type === MessageType.Snap)!;
  t.same(n1.snaps, [[2, true]], 'reported sent');
  t.equal(got.snapshot!.data.length, data.length);
  t.equal(
    createHash('sha256').update(got.snapshot!.data).digest('hex'),
    createHash('sha256').update(data).digest('hex'),
    'same bytes',
  );
  t.same(got.snapshot!.metadata, snap.snapshot!.metadata);
  t.equal(got.term, 4);
  const frames = n1.transport.stats.framesOut - framesBefore;
  t.ok(frames >= 8, `${frames} frames: 6 chunks and the heartbeat batches`);
  t.equal(n2.transport.stats.snapshotsIn, 1);

  // To a peer that is down, a snapshot fails at once.
  n1.transport.setPeer(4, '127.0.0.1:1');
  await new Promise((r) => setTimeout(r, 100));
  n1.transport.send([{ ...snap, to: 4 }]);
  await waitFor('failed snapshot reported', () => n1.snaps.length === 2);
  t.same(n1.snaps[1], [4, false]);
  await stopNode(n1);
  await stopNode(n2);
  t.end();
});

t.test('unreachable: unknown peer, peer down, queue full', async (t) => {
  const n1 = await startNode(1);
  n1.transport.send([app(1, 8, 1)]);
  t.same(n1.unreachable, [8], 'unknown peer');
  const closed = net.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const deadPort = (closed.address() as net.AddressInfo).port;
  await new Promise<void>((r) => closed.close(() => r()));
  n1.transport.setPeer(2, `127.0.0.1:${deadPort}`);
  await waitFor('peer 2 reported unreachable', () => {
    n1.transport.send([app(1, 2, 1)]);
    return n1.unreachable.includes(2);
  });
  t.notOk(n1.transport.isConnected(2));

  // A peer that accepts TCP but never finishes TLS: messages queue up to the bound, then drop.
  const silent = net.createServer(() => {});
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  const small = new RaftTransport({
    selfId: 1,
    clusterId: CLUSTER,
    tls: () => creds.get(1)!,
    onMessages: () => {},
    onUnreachable: (id) => n1.unreachable.push(id),
    onSnapshotStatus: () => {},
    maxQueueMessages: 10,
  });
  small.setPeer(3, `127.0.0.1:${(silent.address() as net.AddressInfo).port}`);
  small.send(Array.from({ length: 15 }, (_, i) => app(1, 3, i)));
  t.ok(n1.unreachable.includes(3), 'queue full reported');
  t.equal(small.stats.dropped, 5, 'the five beyond the bound dropped');
  small.close();
  await new Promise<void>((r) => silent.close(() => r()));
  await stopNode(n1);
  t.end();
});

t.test('rpc: results, errors, identities, CA pinning', async (t) => {
  const n1 = await startNode(1);
  n1.server.register('echo', (params, peer) => Promise.resolve({ params, peer }));
  n1.server.register('fail', () => Promise.reject(new MeshError('ECONFLICT', 'rpc fail: nope')));
  n1.server.register('boom', () => {
    throw new TypeError('bug');
  });
  const port = n1.port;

  const c = await RpcClient.connect({ host: '127.0.0.1', port, ...creds.get(2)! });
  t.same(await c.call('echo', { a: 1 }), {
    params: { a: 1 },
    peer: { nodeId: 'm2', role: 'manager', clusterId: CLUSTER },
  });
  const errOf = (p: Promise<unknown>): Promise<unknown> =>
    p.then(
      () => 'resolved',
      (e) => e,
    );
  const e1 = (await errOf(c.call('fail'))) as MeshError;
  t.equal(e1.code, 'ECONFLICT');
  t.equal(e1.message, 'rpc fail: nope');
  const e2 = (await errOf(c.call('boom'))) as MeshError;
  t.equal(e2.code, 'EINTERNAL');
  t.ok(
    logLines.some((l) => /rpc handler failed/.test(l) && /bug/.test(l)),
    'bug logged',
  );
  t.equal(((await errOf(c.call('nosuch'))) as MeshError).code, 'EUSAGE');
  const many = await Promise.all(Array.from({ length: 200 }, (_, i) => c.call('echo', i)));
  t.same(
    many.map((r) => (r as { params: number }).params),
    Array.from({ length: 200 }, (_, i) => i),
    '200 concurrent calls answered by id',
  );
  c.close();
  t.equal(((await errOf(c.call('echo'))) as MeshError).code, 'ECONN');

  // A joiner: no certificate, no CA, pins the root by digest.
  const caDer = new X509Certificate(CA_PEM).raw;
  const digest = createHash('sha256').update(caDer).digest('hex');
  const j = await RpcClient.connect({
    host: '127.0.0.1',
    port,
    checkServer: (chain) => {
      const root = chain[chain.length - 1]!;
      if (createHash('sha256').update(root).digest('hex') !== digest)
        throw new Error('CA mismatch');
    },
  });
  const chain = j.peerCertificateChain();
  t.equal(chain.length, 2, 'leaf and root');
  t.ok(chain[1]!.equals(caDer), 'root last');
  t.same(((await j.call('echo', 1)) as { peer: unknown }).peer, null, 'anonymous peer');
  j.close();
  const bad = await errOf(
    RpcClient.connect({
      host: '127.0.0.1',
      port,
      checkServer: () => {
        throw new Error('CA mismatch');
      },
    }),
  );
  t.equal((bad as MeshError).code, 'EAUTH');
  t.match((bad as Error).message, /CA mismatch/);
  t.equal(
    ((await errOf(RpcClient.connect({ host: '127.0.0.1', port }))) as MeshError).code,
    'EUSAGE',
    'neither a CA nor a pin',
  );
  // An impostor sends its own leaf followed by our (public) CA certificate: the pin matches the
  // root, but the leaf is not signed by it, so the joiner must refuse.
  const impostor = await ControlServer.listen({
    host: '127.0.0.1',
    port: 0,
    clusterId: CLUSTER,
    key: foreign.key,
    cert: foreign.cert + CA_PEM,
    ca: foreign.ca,
  });
  let pinned = false;
  const fooled = (await errOf(
    RpcClient.connect({
      host: '127.0.0.1',
      port: impostor.address().port,
      checkServer: (chain) => {
        pinned =
          createHash('sha256')
            .update(chain[chain.length - 1]!)
            .digest('hex') === digest;
      },
    }),
  )) as MeshError;
  t.equal(fooled.code, 'EAUTH', 'impostor refused');
  t.match(fooled.message, /not signed by the next|no CA certificate/);
  t.notOk(pinned, 'refused before the pin is even consulted');
  await impostor.close();
  const der = (pem: string): Buffer => new X509Certificate(pem).raw;
  const now = new Date();
  t.equal(chainProblem([der(creds.get(1)!.cert), caDer], now), undefined, 'our chain verifies');
  t.match(chainProblem([der(foreign.cert), caDer], now), /not signed by the next/);
  t.match(chainProblem([der(creds.get(1)!.cert), caDer], new Date(Date.now() + 9e9)), /not valid/);
  t.match(chainProblem([der(creds.get(1)!.cert), der(creds.get(2)!.cert)], now), /not signed/);
  // A client trusting another CA refuses our server.
  const evil = (await errOf(
    RpcClient.connect({ host: '127.0.0.1', port, ca: foreign.ca }),
  )) as MeshError;
  t.equal(evil.code, 'EAUTH');
  await stopNode(n1);
  t.end();
});

t.test('certificate renewal: setCredentials serves the new certificate', async (t) => {
  const n1 = await startNode(1);
  const renewed = makeNode('m1b', `/O=${CLUSTER}/OU=manager/CN=m1`, 'ca');
  n1.server.setCredentials(renewed);
  n1.server.register('ping', () => Promise.resolve('pong'));
  const c = await RpcClient.connect({ host: '127.0.0.1', port: n1.port, ca: CA_PEM });
  t.ok(c.peerCertificateChain()[0]!.equals(new X509Certificate(renewed.cert).raw), 'new leaf');
  t.equal(await c.call('ping'), 'pong');
  c.close();
  await stopNode(n1);
  t.end();
});

t.test('oversize frames and silent clients close the connection', async (t) => {
  const server = await ControlServer.listen({
    host: '127.0.0.1',
    port: 0,
    clusterId: CLUSTER,
    ...creds.get(1)!,
    maxFrameBytes: 64 * 1024,
    maxAnonFrameBytes: 1024,
    helloTimeoutMs: 200,
  });
  const port = server.address().port;
  const probe = (as: TlsCredentials | undefined, frames: Uint8Array[]): Promise<string> =>
    new Promise((resolve, reject) => {
      const sock = tls.connect({
        host: '127.0.0.1',
        port,
        ...(as ? { key: as.key, cert: as.cert } : {}),
        ca: CA_PEM,
        checkServerIdentity: () => undefined,
      });
      const d = new FrameDecoder(65536);
      let reason = '';
      sock.on('secureConnect', () => frames.forEach((f) => sock.write(f)));
      sock.on('data', (c: Buffer) => {
        d.push(c);
        for (let f = d.next(); f; f = d.next()) reason = Buffer.from(f.payload).toString();
      });
      sock.on('error', reject);
      sock.on('close', () => resolve(reason));
      setTimeout(() => sock.destroy(), 3000).unref();
    });
  const rpcHello = encodeJsonFrame(FrameKind.Hello, { channel: 'rpc' });
  const header = (len: number): Uint8Array => {
    const b = Buffer.alloc(5);
    b.writeUInt32BE(len + 1);
    b[4] = FrameKind.Rpc;
    return b;
  };
  t.match(
    await probe(creds.get(2), [rpcHello, header(64 * 1024)]),
    /65537 bytes exceeds the limit of 65536/,
    'verified peer over maxFrameBytes',
  );
  t.match(
    await probe(undefined, [rpcHello, header(2000)]),
    /2001 bytes exceeds the limit of 1024/,
    'anonymous peer over maxAnonFrameBytes',
  );
  t.match(await probe(undefined, [header(5000)]), /exceeds the limit of 4096/, 'before HELLO');
  t.match(await probe(undefined, []), /no HELLO in time/);
  t.match(
    await probe(undefined, [encodeFrame(FrameKind.Rpc, Buffer.from('{}'))]),
    /first frame is not a HELLO/,
  );
  t.ok(
    logLines.some((l) => /exceeds the limit of 65536/.test(l)),
    'reason logged',
  );
  // close() does not wait for a client stuck before or inside the TLS handshake.
  const stuck = net.connect(port, '127.0.0.1');
  stuck.on('error', () => {});
  await new Promise((r) => stuck.once('connect', r));
  const t0 = Date.now();
  await server.close();
  t.ok(Date.now() - t0 < 1000, `closed in ${Date.now() - t0} ms with a stuck client`);
  stuck.destroy();
  t.end();
});
