/**
 * meshctl's side of the API: one HTTP request over the daemon's unix socket.
 * `--host` / MESH_HOST: a socket path, or `unix:///path`. Errors say what failed and how to fix.
 * May import: util/, node built-ins.
 */
import { request } from 'node:http';
import { MeshError, UsageError, errorCode } from '../util/errors.js';

export const DEFAULT_SOCKET = '/run/meshd/meshd.sock';

/** Resolve --host / MESH_HOST to a socket path. */
export function socketPath(host: string | undefined): string {
  const h = host ?? process.env.MESH_HOST ?? DEFAULT_SOCKET;
  if (h.startsWith('unix://')) return h.slice('unix://'.length);
  if (h.startsWith('/')) return h;
  throw new UsageError(`--host ${JSON.stringify(h)}: want a socket path or unix:///path`);
}

export function call<T>(
  host: string | undefined,
  method: string,
  path: string,
  body?: unknown,
): Promise<T> {
  const socket = socketPath(host);
  return new Promise<T>((resolve, reject) => {
    const req = request(
      {
        socketPath: socket,
        method,
        path,
        headers: { 'content-type': 'application/json' },
        timeout: 30_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          let parsed: unknown;
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            reject(
              new MeshError(
                'EPROTO',
                `${method} ${path}: meshd answered with something that is not JSON`,
              ),
            );
            return;
          }
          const err = (parsed as { error?: { code: string; message: string } }).error;
          if (res.statusCode !== 200 || err)
            reject(
              new MeshError(
                errorCode(err?.code, 'EPROTO'),
                err?.message ?? `HTTP ${res.statusCode}`,
              ),
            );
          else resolve(parsed as T);
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('no answer in 30 s')));
    req.on('error', (e: NodeJS.ErrnoException) => {
      const why =
        e.code === 'ENOENT' || e.code === 'ECONNREFUSED'
          ? 'is meshd running? (`systemctl start meshd`, or point --host/MESH_HOST at its socket)'
          : e.code === 'EACCES'
            ? 'the socket is root-only: run meshctl as root'
            : e.message;
      reject(
        new MeshError(
          'EUNAVAILABLE',
          `cannot reach meshd at ${socket}: ${e.code ?? e.message}; ${why}`,
        ),
      );
    });
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}
