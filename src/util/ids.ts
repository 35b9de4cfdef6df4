/**
 * Object ids: 25 lower-case base36 characters from 128 random bits, like Swarm's ids. Nodes,
 * clusters, services, networks and tasks use the same form.
 * May import node built-ins only.
 */
import { randomBytes } from 'node:crypto';

/** A new random id (25 lower-case base36 characters). */
export function newId(): string {
  const b = randomBytes(16);
  let n = 0n;
  for (const x of b) n = (n << 8n) | BigInt(x);
  return n.toString(36).padStart(25, '0').slice(-25);
}
