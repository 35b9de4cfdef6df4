// The cluster PKI: CA and node certificates, join tokens, verification, renewal, and the PEMs
// working with node:tls (loopback only).
import 'reflect-metadata';

import {
  X509Certificate,
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  webcrypto,
} from 'node:crypto';
import tls from 'node:tls';

import * as x509 from '@peculiar/x509';
import t from 'tap';

import {
  caDigest,
  certIdentity,
  createCA,
  createCsr,
  generateNodeKey,
  issueNodeCert,
  makeJoinToken,
  needsRenewal,
  parseJoinToken,
  tokenMatches,
  verifyNodeCert,
  type NodeRole,
} from '../../src/manager/ca/pki.js';
import { MeshError } from '../../src/util/errors.js';

const NOW = new Date('2026-11-22T07:00:00Z');
const DAY = 86_400_000;

async function rejects(p: Promise<unknown> | (() => unknown)): Promise<MeshError> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    if (e instanceof MeshError) return e;
    throw e;
  }
  throw new Error('expected a MeshError, got success');
}

async function node(
  ca: { certPem: string; keyPem: string },
  nodeId: string,
  role: NodeRole,
  extra: { ips?: string[]; now?: Date; days?: number } = {},
): Promise<{ keyPem: string; certPem: string }> {
  const { keyPem, csrPem } = await generateNodeKey(nodeId);
  const certPem = await issueNodeCert({
    caCertPem: ca.certPem,
    caKeyPem: ca.keyPem,
    csrPem,
    nodeId,
    role,
    clusterId: 'c0ffee',
    ...extra,
  });
  return { keyPem, certPem };
}

// Re-encodes a PEM after changing the first occurrence of `from` in its DER.
function patchPem(pem: string, from: string, to: string, label: string): string {
  const der = Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  const at = der.indexOf(from);
  if (at < 0) throw new Error(`${from} not in ${label}`);
  der.write(to, at, 'latin1');
  const b64 = der
    .toString('base64')
    .match(/.{1,64}/g)!
    .join('\n');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

t.test(
  'root CA: self-signed P-256 CA, CN=mesh-root-ca, 20 years, cert and CRL signing only',
  async (t) => {
    const ca = await createCA({ now: NOW });
    const c = new X509Certificate(ca.certPem);
    t.equal(c.subject, 'CN=mesh-root-ca');
    t.equal(c.issuer, 'CN=mesh-root-ca');
    t.ok(c.ca);
    t.ok(c.verify(c.publicKey), 'self-signed');
    t.equal(c.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    const years = (Date.parse(c.validTo) - NOW.getTime()) / (365 * DAY);
    t.equal(Math.round(years), 20);
    const ku = new x509.X509Certificate(ca.certPem).getExtension(x509.KeyUsagesExtension);
    t.equal(ku?.usages, x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
    t.match(ca.keyPem, /^-----BEGIN PRIVATE KEY-----/);
    const short = new X509Certificate((await createCA({ now: NOW, years: 1 })).certPem);
    t.equal(Math.round((Date.parse(short.validTo) - NOW.getTime()) / DAY), 365);
  },
);

t.test('caDigest: sha256 of the DER in 50 base36 characters, distinct per CA', async (t) => {
  const a = await createCA();
  const b = await createCA();
  const d = caDigest(a.certPem);
  t.match(d, /^[0-9a-z]{50}$/);
  // Independent conversion: base36 digits by repeated division of the hex value.
  let n = BigInt(
    '0x' + createHash('sha256').update(new X509Certificate(a.certPem).raw).digest('hex'),
  );
  let want = '';
  for (let i = 0; i < 50; i++) {
    want = '0123456789abcdefghijklmnopqrstuvwxyz'[Number(n % 36n)]! + want;
    n /= 36n;
  }
  t.equal(n, 0n, 'fits in 50 digits');
  t.equal(d, want);
  t.not(caDigest(b.certPem), d);
});

t.test('join tokens: format, per-role secrets, parse errors, constant-time match', async (t) => {
  const ca = await createCA();
  const other = await createCA();
  const worker = makeJoinToken(ca.certPem);
  const manager = makeJoinToken(ca.certPem);
  t.match(worker, /^MESHTKN-1-[0-9a-z]{50}-[0-9a-z]{25}$/);
  t.not(worker, manager, 'each call draws a new secret');
  const { digest, secret } = parseJoinToken(worker);
  t.equal(digest, caDigest(ca.certPem));
  t.equal(makeJoinToken(ca.certPem, secret), worker);
  t.equal(parseJoinToken(`  ${worker}\n`).secret, secret, 'surrounding blanks ignored');

  t.ok(tokenMatches(worker, ca.certPem, secret));
  t.notOk(tokenMatches(manager, ca.certPem, secret), 'the other role secret');
  const flipped = worker.slice(0, -1) + (worker.endsWith('a') ? 'b' : 'a');
  t.notOk(tokenMatches(flipped, ca.certPem, secret), 'one secret character changed');
  t.notOk(tokenMatches(worker, other.certPem, secret), 'another cluster CA');
  t.notOk(tokenMatches(worker.slice(0, -3), ca.certPem, secret), 'truncated');

  const cases: [string, RegExp][] = [
    ['SWMTKN-1-abc-def', /does not start with MESHTKN-/],
    [worker.replace('-1-', '-2-'), /version 2 is not supported/],
    [worker + '-x', /5 dash-separated parts, want 4/],
    [worker.replace(digest, digest.slice(1)), /CA digest is not 50 base36/],
    [worker.replace(secret, secret.toUpperCase()), /secret is not 25 base36/],
    [worker.slice(0, -1), /secret is not 25 base36/],
    ['', /does not start/],
  ];
  for (const [token, why] of cases) {
    const e = await rejects(() => parseJoinToken(token));
    t.equal(e.code, 'EUSAGE');
    t.match(e.message, why);
    t.match(
      e.message,
      /^parse join token: .*get one with `meshctl cluster join-token worker` on a manager$/,
    );
    t.notOk(e.message.includes(secret), 'the error does not echo the secret');
  }
  t.equal((await rejects(() => makeJoinToken(ca.certPem, 'short'))).code, 'EUSAGE');
});

t.test(
  'node certificate: identity, SANs, usages, fresh serials, 90 days backdated 1 h',
  async (t) => {
    const ca = await createCA({ now: NOW });
    const m = await node(ca, 'n0de1', 'manager', { ips: ['198.18.0.1', '::1'], now: NOW });
    const w = await node(ca, 'n0de2', 'worker', { now: NOW });
    const c = new X509Certificate(m.certPem);
    t.equal(c.subject, 'O=c0ffee\nOU=manager\nCN=n0de1');
    t.equal(c.subjectAltName, 'DNS:n0de1, IP Address:198.18.0.1, IP Address:0:0:0:0:0:0:0:1');
    t.same(c.keyUsage, ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'], 'serverAuth + clientAuth');
    t.notOk(c.ca);
    t.ok(c.checkIssued(new X509Certificate(ca.certPem)));
    const ku = new x509.X509Certificate(m.certPem).getExtension(x509.KeyUsagesExtension);
    t.equal(ku?.usages, x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment);
    t.not(c.serialNumber, new X509Certificate(w.certPem).serialNumber);
    t.ok(c.serialNumber.length >= 30, `serial ${c.serialNumber} is ~128 bits`);

    const id = certIdentity(m.certPem);
    t.same(id, {
      nodeId: 'n0de1',
      role: 'manager',
      clusterId: 'c0ffee',
      notBefore: new Date(NOW.getTime() - 3600_000),
      notAfter: new Date(NOW.getTime() + 90 * DAY),
    });
    t.equal(certIdentity(c.raw).role, 'manager', 'DER buffer accepted');
    t.equal(certIdentity(w.certPem).role, 'worker');
    t.equal(
      (await rejects(() => certIdentity(ca.certPem))).code,
      'EAUTH',
      'the CA certificate is not a node',
    );
    const d7 = await node(ca, 'n0de3', 'worker', { now: NOW, days: 7 });
    t.same(certIdentity(d7.certPem).notAfter, new Date(NOW.getTime() + 7 * DAY));
  },
);

t.test('verifyNodeCert: accepts its own CA only, inside the validity window', async (t) => {
  const ca = await createCA({ now: NOW });
  const other = await createCA({ now: NOW });
  const m = await node(ca, 'n0de1', 'manager', { now: NOW });
  const foreign = await node(other, 'n0de1', 'manager', { now: NOW });
  const id = verifyNodeCert(m.certPem, ca.certPem, NOW);
  t.equal(id.nodeId, 'n0de1');

  const code = async (f: () => unknown, why: RegExp): Promise<void> => {
    const e = await rejects(f);
    t.equal(e.code, 'EAUTH');
    t.match(e.message, why);
  };
  await code(
    () => verifyNodeCert(foreign.certPem, ca.certPem, NOW),
    /not issued by this cluster's CA/,
  );
  await code(() => verifyNodeCert(m.certPem, other.certPem, NOW), /not issued/);
  const after = new Date(id.notAfter.getTime() + 1000);
  await code(() => verifyNodeCert(m.certPem, ca.certPem, after), /expired/);
  t.ok(verifyNodeCert(m.certPem, ca.certPem, id.notAfter), 'valid through notAfter');
  const before = new Date(id.notBefore.getTime() - 1000);
  await code(() => verifyNodeCert(m.certPem, ca.certPem, before), /not valid before/);
  // Same issuer name and key identifiers, a different subject: the signature no longer matches.
  const tampered = patchPem(m.certPem, 'n0de1', 'n0de9', 'CERTIFICATE');
  t.equal(certIdentity(tampered).nodeId, 'n0de9');
  await code(() => verifyNodeCert(tampered, ca.certPem, NOW), /n0de9 was not issued/);
  await code(() => verifyNodeCert(ca.certPem, ca.certPem, NOW), /not a mesh node/);

  // A CA-flagged certificate with a node subject, signed by the real CA key, is still refused.
  const caKey = await webcrypto.subtle.importKey(
    'pkcs8',
    createPrivateKey(ca.keyPem).export({ type: 'pkcs8', format: 'der' }),
    { name: 'ECDSA', namedCurve: 'P-256' },
    false,
    ['sign'],
  );
  const sub = await x509.X509CertificateGenerator.create({
    subject: 'O=c0ffee, OU=manager, CN=sub',
    issuer: new x509.X509Certificate(ca.certPem).subjectName,
    notBefore: new Date(NOW.getTime() - DAY),
    notAfter: new Date(NOW.getTime() + DAY),
    publicKey: new x509.PublicKey(
      createPublicKey(createPrivateKey(m.keyPem)).export({ type: 'spki', format: 'der' }),
    ),
    signingKey: caKey,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    extensions: [new x509.BasicConstraintsExtension(true, undefined, true)],
  });
  t.ok(new X509Certificate(sub.toString('pem')).checkIssued(new X509Certificate(ca.certPem)));
  await code(() => verifyNodeCert(sub.toString('pem'), ca.certPem, NOW), /sub is a CA certificate/);
});

t.test('issueNodeCert checks the CSR and the CA key', async (t) => {
  const ca = await createCA();
  const other = await createCA();
  const { keyPem, csrPem } = await generateNodeKey();
  const base = {
    caCertPem: ca.certPem,
    caKeyPem: ca.keyPem,
    nodeId: 'n1',
    role: 'worker' as const,
  };
  t.equal(
    certIdentity(await issueNodeCert({ ...base, csrPem, clusterId: 'c' })).nodeId,
    'n1',
    'CSR subject ignored',
  );

  const csr = await createCsr(keyPem, 'abcdef');
  const forged = patchPem(csr, 'abcdef', 'abcdeg', 'CERTIFICATE REQUEST');
  let e = await rejects(issueNodeCert({ ...base, csrPem: forged, clusterId: 'c' }));
  t.equal(e.code, 'EUSAGE');
  t.match(e.message, /CSR signature does not verify/);

  const p384 = await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, [
    'sign',
    'verify',
  ]);
  const bigCsr = await x509.Pkcs10CertificateRequestGenerator.create(
    { name: 'CN=n1', keys: p384, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-384' } },
    webcrypto,
  );
  e = await rejects(issueNodeCert({ ...base, csrPem: bigCsr.toString('pem'), clusterId: 'c' }));
  t.match(e.message, /CSR's key is P-384, want ECDSA P-256/);

  e = await rejects(issueNodeCert({ ...base, csrPem: 'junk', clusterId: 'c' }));
  t.match(e.message, /CSR does not parse/);
  e = await rejects(issueNodeCert({ ...base, caKeyPem: other.keyPem, csrPem, clusterId: 'c' }));
  t.match(e.message, /CA key does not belong to the CA certificate/);
  e = await rejects(issueNodeCert({ ...base, nodeId: 'CN=x,O=y', csrPem, clusterId: 'c' }));
  t.match(e.message, /bad node id/);
  e = await rejects(issueNodeCert({ ...base, csrPem, clusterId: 'c', ips: ['198.18.0.300'] }));
  t.match(e.message, /"198.18.0.300" is not an ip/);
  e = await rejects(issueNodeCert({ ...base, csrPem, clusterId: 'a,b' }));
  t.match(e.message, /bad cluster id/);
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  e = await rejects(createCsr(rsa.export({ type: 'pkcs8', format: 'pem' }).toString(), 'n1'));
  t.match(e.message, /not an ECDSA P-256 key/);
});

t.test('needsRenewal: false up to the middle of the validity, true after', async (t) => {
  const ca = await createCA({ now: NOW });
  const { certPem } = await node(ca, 'n1', 'worker', { now: NOW });
  const { notBefore, notAfter } = certIdentity(certPem);
  const mid = (notBefore.getTime() + notAfter.getTime()) / 2;
  t.notOk(needsRenewal(certPem, NOW));
  t.notOk(needsRenewal(certPem, new Date(mid - 1)));
  t.notOk(needsRenewal(certPem, new Date(mid)));
  t.ok(needsRenewal(certPem, new Date(mid + 1)));
  t.ok(needsRenewal(certPem, new Date(notAfter.getTime() + DAY)));
  t.equal(mid - NOW.getTime(), 45 * DAY - 1800_000, '45 days less half the backdate');
});

interface Side {
  authorized: boolean;
  error: string | undefined;
  peer: Buffer | undefined;
}

// One handshake on 127.0.0.1 with verification left to the caller (rejectUnauthorized: false,
// as the manager listener runs), reporting what each side concluded about the other.
async function handshake(
  server: tls.TlsOptions,
  client: tls.ConnectionOptions,
): Promise<{ server: Side; client: Side }> {
  const srv = tls.createServer({ ...server, requestCert: true, rejectUnauthorized: false });
  const sockets: tls.TLSSocket[] = [];
  const side = (s: tls.TLSSocket): Side => ({
    authorized: s.authorized,
    error: s.authorizationError?.toString(),
    peer: s.getPeerCertificate().raw,
  });
  try {
    const serverSide = new Promise<Side>((resolve) =>
      srv.on('secureConnection', (s) => {
        sockets.push(s);
        resolve(side(s));
        s.end('ok');
      }),
    );
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
    const { port } = srv.address() as { port: number };
    const clientSide = new Promise<Side>((resolve, reject) => {
      const s = tls.connect({ ...client, host: '127.0.0.1', port, rejectUnauthorized: false });
      sockets.push(s);
      s.on('error', reject);
      s.on('secureConnect', () => resolve(side(s)));
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('handshake timed out')), 5000);
    });
    try {
      const [c, s] = await Promise.race([Promise.all([clientSide, serverSide]), timeout]);
      return { server: s, client: c };
    } finally {
      clearTimeout(timer);
    }
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => srv.close(() => resolve()));
  }
}

t.test('node:tls accepts the PEMs: mutual auth within a CA, refusal across CAs', async (t) => {
  const ca = await createCA();
  const other = await createCA();
  const m = await node(ca, 'mgr1', 'manager', { ips: ['127.0.0.1'] });
  const w = await node(ca, 'wrk1', 'worker');
  const stranger = await node(other, 'wrk1', 'worker', { ips: ['127.0.0.1'] });

  const ok = await handshake(
    { key: m.keyPem, cert: m.certPem, ca: [ca.certPem] },
    { key: w.keyPem, cert: w.certPem, ca: [ca.certPem] },
  );
  t.equal(ok.server.authorized, true, `server: ${ok.server.error}`);
  t.equal(ok.client.authorized, true, `client: ${ok.client.error}`);
  t.equal(verifyNodeCert(ok.server.peer!, ca.certPem).nodeId, 'wrk1', 'server sees the worker');
  t.equal(verifyNodeCert(ok.client.peer!, ca.certPem).role, 'manager', 'client sees the manager');

  const bad = await handshake(
    { key: m.keyPem, cert: m.certPem, ca: [ca.certPem] },
    { key: stranger.keyPem, cert: stranger.certPem, ca: [ca.certPem] },
  );
  t.equal(bad.server.authorized, false, 'client cert from another CA');
  t.ok(bad.server.error);
  t.equal(bad.client.authorized, true);
  t.equal((await rejects(() => verifyNodeCert(bad.server.peer!, ca.certPem))).code, 'EAUTH');

  const badServer = await handshake(
    { key: stranger.keyPem, cert: stranger.certPem, ca: [other.certPem] },
    { key: w.keyPem, cert: w.certPem, ca: [ca.certPem] },
  );
  t.equal(badServer.client.authorized, false, 'server cert from another CA');
  t.equal(badServer.server.authorized, false);

  const anon = await handshake(
    { key: m.keyPem, cert: m.certPem, ca: [ca.certPem] },
    { ca: [ca.certPem] },
  );
  t.equal(anon.server.authorized, false, 'a joiner without a certificate is let in unauthorized');
  t.equal(anon.server.peer, undefined);
});
