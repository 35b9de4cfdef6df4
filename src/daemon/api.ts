/**
 * The daemon's API: HTTP/1.1 with JSON bodies on a unix socket (default /run/meshd/meshd.sock,
 * mode 0600, so only root may drive the node). HTTP because every tool speaks it:
 * `curl --unix-socket /run/meshd/meshd.sock http://meshd/v1/version` works for debugging.
 *
 * Components register routes; a handler returns a JSON-able value or throws. MeshErrors become
 * `{"error":{"code","message"}}` with 400 (EUSAGE) or 409/500; anything else is a bug: 500 and
 * logged, and the daemon carries on (bad input never crashes it).
 * May import: util/, node built-ins.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { chmodSync, mkdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { MeshError } from '../util/errors.js';
import { createLogger } from '../util/log.js';

const log = createLogger('api');

/** Largest request body accepted, bytes. */
const MAX_BODY = 1 << 20;

export type Handler = (req: { body: unknown; query: URLSearchParams }) => unknown;

const STATUS: Record<string, number> = {
  EUSAGE: 400,
  ENOTFOUND: 404,
  ECONFLICT: 409,
  EUNAVAILABLE: 503,
};

/** Is something accepting connections on this unix socket? */
function socketLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export class ApiServer {
  private readonly routes = new Map<string, Handler>();
  private server: Server | undefined;
  private path: string | undefined;

  /** Register `METHOD /path` (e.g. `GET /v1/version`). */
  route(method: 'GET' | 'POST' | 'DELETE', path: string, h: Handler): void {
    this.routes.set(`${method} ${path}`, h);
  }

  /**
   * Listen on a unix socket. A socket file left by a dead meshd is removed; a live one means
   * another meshd owns it, which is refused.
   */
  async listen(path: string): Promise<void> {
    mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
    if (await socketLive(path)) {
      throw new MeshError(
        'ECONFLICT',
        `listen on ${path}: another meshd is serving it; stop it first or pick another --socket`,
      );
    }
    try {
      unlinkSync(path); // stale socket from a crash
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    const server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      // The socket must never be reachable by non-root users, even for an instant: create it
      // under a restrictive umask, then make the mode explicit.
      const old = process.umask(0o177);
      server.listen(path, () => {
        process.umask(old);
        resolve();
      });
    });
    chmodSync(path, 0o600);
    this.server = server;
    this.path = path;
    log.info('listening', { socket: path });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://meshd');
    const send = (status: number, body: unknown): void => {
      const text = JSON.stringify(body) + '\n';
      res.writeHead(status, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(text),
      });
      res.end(text);
    };
    const h = this.routes.get(`${req.method ?? 'GET'} ${url.pathname}`);
    if (!h) {
      send(404, {
        error: {
          code: 'ENOTFOUND',
          message: `${req.method} ${url.pathname}: no such API call (meshctl and meshd versions differ?)`,
        },
      });
      return;
    }
    try {
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const c of req) {
        size += (c as Buffer).length;
        if (size > MAX_BODY) throw new MeshError('EUSAGE', `request body over ${MAX_BODY} bytes`);
        chunks.push(c as Buffer);
      }
      let body: unknown = undefined;
      if (size > 0) {
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch {
          throw new MeshError('EUSAGE', 'request body is not JSON');
        }
      }
      send(200, await h({ body, query: url.searchParams }));
    } catch (e) {
      if (e instanceof MeshError) {
        send(STATUS[e.code] ?? 500, { error: { code: e.code, message: e.message } });
      } else {
        log.error('handler failed', { route: url.pathname, err: e });
        send(500, {
          error: {
            code: 'EINTERNAL',
            message: `${url.pathname}: internal error (see meshd's log)`,
          },
        });
      }
    }
  }

  /** Stop listening and remove the socket file. */
  async close(): Promise<void> {
    const s = this.server;
    if (!s) return;
    this.server = undefined;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
    try {
      if (this.path) unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}
