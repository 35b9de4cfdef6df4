/**
 * The cluster PKI: a root CA, node certificates signed from CSRs, and join tokens.
 *
 * ECDSA P-256 with SHA-256 throughout (what Swarm uses). Certificates, CSRs and keys travel as
 * PEM strings (keys are PKCS#8, which node:tls accepts as is). A node certificate says who a
 * peer is: CN = node ID, OU = role ('manager' | 'worker'), O = cluster ID (swarmkit's layout).
 * Validity windows start one hour in the past (swarmkit's CertBackdate) so that a node whose
 * clock lags the issuer's can use a fresh certificate at once.
 *
 * Not a protocol core: it draws randomness from node:crypto; the clock is injected (`now`),
 * defaulting to the wall clock. May import node:crypto, isIP from node:net, reflect-metadata,
 * @peculiar/x509 and ../util/errors.js.
 */

import 'reflect-metadata';

import {
  X509Certificate as NodeX509,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  createHash,
  randomBytes,
  timingSafeEqual,
  webcrypto,
} from 'node:crypto';
import { isIP } from 'node:net';

import * as x509 from '@peculiar/x509';

import { MeshError } from '../../util/errors.js';

x509.cryptoProvider.set(webcrypto);

export type NodeRole = 'manager' | 'worker';

export interface NodeIdentity {
  nodeId: string;
  role: NodeRole;
  clusterId: string;
  notBefore: Date;
  notAfter: Date;
}

export interface ParsedJoinToken {
  digest: string;
  secret: string;
}

export const CA_COMMON_NAME = 'mesh-root-ca';
const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;
const BACKDATE_MS = 3600_000;
const DAY_MS = 86_400_000;
const TOKEN_PREFIX = 'MESHTKN';
const TOKEN_VERSION = '1';
const DIGEST_LEN = 50; // 36^50 > 2^256
const SECRET_LEN = 25; // 36^25 > 2^128
const TOKEN_HELP = 'get one with `meshctl cluster join-token worker` on a manager';
// Node IDs become a DNS SAN, so they must be a DNS label; cluster IDs fit in an O attribute.
const NODE_ID_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;
const CLUSTER_ID_RE = /^[A-Za-z0-9][A-Za-z0-9-]{0,63}$/;

const base36 = (bytes: Uint8Array, width: number): string =>
  BigInt('0x' + Buffer.from(bytes).toString('hex'))
    .toString(36)
    .padStart(width, '0');

function newP256Key(): string {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
}

/** Imports a PKCS#8 PEM P-256 key as a WebCrypto key pair (signing key + its public half). */
async function importKeyPair(keyPem: string, what: string): Promise<webcrypto.CryptoKeyPair> {
  let key;
  try {
    key = createPrivateKey(keyPem);
  } catch (e) {
    throw new MeshError('EUSAGE', `load ${what}: not a PEM private key`, { cause: e });
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new MeshError('EUSAGE', `load ${what}: not an ECDSA P-256 key`);
  }
  const pkcs8 = key.export({ type: 'pkcs8', format: 'der' });
  const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
  const subtle = webcrypto.subtle;
  return {
    privateKey: await subtle.importKey('pkcs8', pkcs8, EC, false, ['sign']),
    publicKey: await subtle.importKey('spki', spki, EC, true, ['verify']),
  };
}

/** Creates the cluster's self-signed root CA (CN=mesh-root-ca, 20 years by default). */
export async function createCA(
  opts: { now?: Date; years?: number } = {},
): Promise<{ certPem: string; keyPem: string }> {
  const now = opts.now ?? new Date();
  const years = opts.years ?? 20;
  const keyPem = newP256Key();
  const keys = await importKeyPair(keyPem, 'ca key');
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomBytes(16).toString('hex'),
    name: [{ CN: [CA_COMMON_NAME] }],
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: new Date(now.getTime() + years * 365 * DAY_MS),
    signingAlgorithm: SIGN,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem };
}

/** sha256 of the CA certificate's DER, as 50 lower-case base36 characters. */
export function caDigest(caCertPem: string): string {
  const der = new NodeX509(caCertPem).raw;
  return base36(createHash('sha256').update(der).digest(), DIGEST_LEN);
}

/** A join token `MESHTKN-1-<ca digest>-<secret>`; each role has its own 128-bit secret. */
export function makeJoinToken(caCertPem: string, secret?: string): string {
  const s = secret ?? base36(randomBytes(16), SECRET_LEN);
  if (!/^[0-9a-z]{25}$/.test(s)) {
    throw new MeshError('EUSAGE', 'make join token: the secret must be 25 base36 characters');
  }
  return `${TOKEN_PREFIX}-${TOKEN_VERSION}-${caDigest(caCertPem)}-${s}`;
}

/** Splits a join token; the error never echoes the token (it is a credential). */
export function parseJoinToken(token: string): ParsedJoinToken {
  const bad = (detail: string): MeshError =>
    new MeshError('EUSAGE', `parse join token: ${detail}, ${TOKEN_HELP}`);
  const parts = token.trim().split('-');
  if (parts[0] !== TOKEN_PREFIX) throw bad(`it does not start with ${TOKEN_PREFIX}-`);
  if (parts.length !== 4) throw bad(`it has ${parts.length} dash-separated parts, want 4`);
  const [, version, digest = '', secret = ''] = parts;
  if (version !== TOKEN_VERSION) throw bad(`version ${version} is not supported (want 1)`);
  if (!new RegExp(`^[0-9a-z]{${DIGEST_LEN}}$`).test(digest)) {
    throw bad(`the CA digest is not ${DIGEST_LEN} base36 characters (truncated?)`);
  }
  if (!new RegExp(`^[0-9a-z]{${SECRET_LEN}}$`).test(secret)) {
    throw bad(`the secret is not ${SECRET_LEN} base36 characters (truncated?)`);
  }
  return { digest, secret };
}

/** True when `token` names this CA and carries `secret`; the secret is compared in constant time. */
export function tokenMatches(token: string, caCertPem: string, secret: string): boolean {
  let parsed;
  try {
    parsed = parseJoinToken(token);
  } catch {
    return false;
  }
  const got = Buffer.from(parsed.secret);
  const want = Buffer.from(secret);
  const secretOk = got.length === want.length && timingSafeEqual(got, want);
  return secretOk && parsed.digest === caDigest(caCertPem);
}

/**
 * A fresh P-256 node key (PKCS#8 PEM) and a CSR for it. The key never leaves the node. The CSR's
 * subject is informational only (the issuer sets the identity), hence the placeholder default.
 */
export async function generateNodeKey(
  nodeId = 'mesh-node',
): Promise<{ keyPem: string; csrPem: string }> {
  const keyPem = newP256Key();
  return { keyPem, csrPem: await createCsr(keyPem, nodeId) };
}

/** A PKCS#10 request (CN=nodeId) signed with `keyPem`, proving possession of the key. */
export async function createCsr(keyPem: string, nodeId: string): Promise<string> {
  checkNodeId(nodeId);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [nodeId] }],
    keys: await importKeyPair(keyPem, 'node key'),
    signingAlgorithm: SIGN,
  });
  return csr.toString('pem');
}

export interface IssueParams {
  caCertPem: string;
  caKeyPem: string;
  csrPem: string;
  nodeId: string;
  role: NodeRole;
  clusterId: string;
  /** IP SANs, e.g. the advertise address. */
  ips?: string[];
  now?: Date;
  /** @default 90 */
  days?: number;
}

/**
 * Signs a node certificate for the key in `csrPem`. The identity comes from the parameters (the
 * manager decides it); the CSR's subject and requested extensions are ignored.
 */
export async function issueNodeCert(p: IssueParams): Promise<string> {
  checkNodeId(p.nodeId);
  if (!CLUSTER_ID_RE.test(p.clusterId)) {
    throw new MeshError(
      'EUSAGE',
      `issue node certificate: bad cluster id ${JSON.stringify(p.clusterId)}`,
    );
  }
  if (p.role !== 'manager' && p.role !== 'worker') {
    throw new MeshError('EUSAGE', `issue node certificate: bad role ${JSON.stringify(p.role)}`);
  }
  const badIp = (p.ips ?? []).find((ip) => isIP(ip) === 0);
  if (badIp !== undefined) {
    throw new MeshError('EUSAGE', `issue node certificate: ${JSON.stringify(badIp)} is not an ip`);
  }
  let csr;
  try {
    csr = new x509.Pkcs10CertificateRequest(p.csrPem);
  } catch (e) {
    throw new MeshError('EUSAGE', 'issue node certificate: the CSR does not parse', { cause: e });
  }
  const alg = csr.publicKey.algorithm as Partial<webcrypto.EcKeyAlgorithm>;
  if (alg.name !== 'ECDSA' || alg.namedCurve !== 'P-256') {
    throw new MeshError(
      'EUSAGE',
      `issue node certificate: the CSR's key is ${alg.namedCurve ?? alg.name ?? 'unknown'}, ` +
        'want ECDSA P-256 (make the request with generateNodeKey)',
    );
  }
  // verify() throws on a malformed signature value rather than returning false.
  const signed = await csr.verify().catch(() => false);
  if (!signed) {
    throw new MeshError('EUSAGE', 'issue node certificate: the CSR signature does not verify');
  }
  const ca = new x509.X509Certificate(p.caCertPem);
  const caKeys = await importKeyPair(p.caKeyPem, 'ca key');
  const caSpki = Buffer.from(await webcrypto.subtle.exportKey('spki', caKeys.publicKey));
  if (!caSpki.equals(Buffer.from(ca.publicKey.rawData))) {
    throw new MeshError(
      'EUSAGE',
      'issue node certificate: the CA key does not belong to the CA certificate',
    );
  }
  const now = p.now ?? new Date();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomBytes(16).toString('hex'),
    subject: [{ O: [p.clusterId] }, { OU: [p.role] }, { CN: [p.nodeId] }],
    issuer: ca.subjectName,
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: new Date(now.getTime() + (p.days ?? 90) * DAY_MS),
    signingAlgorithm: SIGN,
    publicKey: csr.publicKey,
    signingKey: caKeys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
        true,
      ),
      new x509.ExtendedKeyUsageExtension([
        x509.ExtendedKeyUsage.serverAuth,
        x509.ExtendedKeyUsage.clientAuth,
      ]),
      new x509.SubjectAlternativeNameExtension([
        { type: 'dns', value: p.nodeId },
        ...(p.ips ?? []).map((ip) => ({ type: 'ip' as const, value: ip })),
      ]),
      await x509.SubjectKeyIdentifierExtension.create(csr.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });
  return cert.toString('pem');
}

/** Reads who a node certificate names (no verification: see verifyNodeCert). */
export function certIdentity(cert: string | Buffer): NodeIdentity {
  let c;
  try {
    c = new x509.X509Certificate(cert);
  } catch (e) {
    throw new MeshError('EAUTH', 'read node certificate: it does not parse', { cause: e });
  }
  const one = (field: string): string | undefined => {
    const values = c.subjectName.getField(field);
    return values.length === 1 ? values[0] : undefined;
  };
  const nodeId = one('CN');
  const role = one('OU');
  const clusterId = one('O');
  if (
    nodeId === undefined ||
    clusterId === undefined ||
    (role !== 'manager' && role !== 'worker')
  ) {
    throw new MeshError(
      'EAUTH',
      `read node certificate: subject "${c.subject}" is not a mesh node`,
    );
  }
  return { nodeId, role, clusterId, notBefore: c.notBefore, notAfter: c.notAfter };
}

/**
 * Checks that `certPem` is a node certificate issued by this CA and valid at `now`; returns its
 * identity. Run on every peer certificate in addition to node:tls's own chain check, since the
 * listener accepts certificate-less joiners (rejectUnauthorized: false).
 */
export function verifyNodeCert(
  cert: string | Buffer,
  caCertPem: string,
  now = new Date(),
): NodeIdentity {
  const fail = (detail: string): MeshError =>
    new MeshError('EAUTH', `verify node certificate: ${detail}`);
  const id = certIdentity(cert);
  const leaf = new NodeX509(cert);
  const ca = new NodeX509(caCertPem);
  if (leaf.ca) throw fail(`${id.nodeId} is a CA certificate, not a node certificate`);
  // checkIssued compares the issuer name and key identifiers; verify checks the signature.
  if (!leaf.checkIssued(ca) || !leaf.verify(ca.publicKey)) {
    throw fail(`${id.nodeId} was not issued by this cluster's CA`);
  }
  if (now < id.notBefore) {
    throw fail(`${id.nodeId} is not valid before ${id.notBefore.toISOString()} (clock skew?)`);
  }
  if (now > id.notAfter) {
    throw fail(`${id.nodeId} expired at ${id.notAfter.toISOString()}; rejoin the node`);
  }
  return id;
}

/** True once `now` is past the middle of the certificate's validity (renew then). */
export function needsRenewal(certPem: string, now: Date): boolean {
  const { notBefore, notAfter } = certIdentity(certPem);
  return now.getTime() > (notBefore.getTime() + notAfter.getTime()) / 2;
}

function checkNodeId(nodeId: string): void {
  if (!NODE_ID_RE.test(nodeId)) {
    throw new MeshError(
      'EUSAGE',
      `node certificate: bad node id ${JSON.stringify(nodeId)} (want lower-case letters, digits, dashes)`,
    );
  }
}
