/**
 * bench/lb's traffic processes, run as their own node processes inside the bench's namespaces
 * (never in the bench's own process, so the parent's work does not steal their event loop):
 *
 *   node lb-http.js server NAME PORT
 *     An HTTP/1.1 server answering every request with NAME (so the client sees which backend
 *     took it); prints `ready` once listening.
 *   node lb-http.js load HOSTS PORT SECONDS MAX_REQUESTS CONCURRENCY WARMUP_MS
 *     A closed-loop load generator: CONCURRENCY loops, each sending GET / one after another
 *     (HOSTS is one address, or several separated by commas, taken in turn request by request),
 *     every request on a new TCP connection (no keep-alive, as kube-proxy benchmarks do: the
 *     load balancer's per-connection work is what is measured). A warm-up of WARMUP_MS is not
 *     counted; then requests started in the next SECONDS (at most MAX_REQUESTS of them) are
 *     measured from just before connect to the end of the response. Prints one JSON line:
 *     {ok, errors, window_ms, req_per_s, p50_ms, p99_ms, by: {NAME: n}, first_error, lat_ms: […]}.
 *
 * Everything is bounded: a request has 5 s, the whole run SECONDS + WARMUP_MS + 15 s.
 * May import: node built-ins only.
 */
import { createServer, request } from 'node:http';
import { performance } from 'node:perf_hooks';

const REQUEST_TIMEOUT_MS = 5000;

function server(name: string, port: number): void {
  const body = Buffer.from(name);
  const srv = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length });
    res.end(body);
  });
  srv.on('clientError', (_e, sock) => sock.destroy());
  srv.listen(port, () => process.stdout.write('ready\n'));
}

/** One request on a fresh connection; resolves with the body, rejects on error or timeout. */
function once(host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    // agent: false = a new Agent without keep-alive for this request: `Connection: close`,
    // the server closes after the response, so every request pays a TCP handshake.
    const req = request({ host, port, path: '/', method: 'GET', agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        if (res.statusCode === 200) resolve(Buffer.concat(chunks).toString('utf8'));
        else reject(new Error(`status ${res.statusCode}`));
      });
      res.on('error', reject);
    });
    req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

async function load(
  hosts: string[],
  port: number,
  seconds: number,
  maxRequests: number,
  concurrency: number,
  warmupMs: number,
): Promise<void> {
  const hardStop = setTimeout(
    () => {
      process.stderr.write('lb-http load: hard time limit reached\n');
      process.exit(3);
    },
    seconds * 1000 + warmupMs + 15_000,
  );
  const t0 = performance.now() + warmupMs;
  const tEnd = t0 + seconds * 1000;
  const lat: number[] = [];
  const by: Record<string, number> = {};
  let started = 0;
  let errors = 0;
  let firstError: string | undefined;
  let lastDone = t0;
  let next = 0;
  const loop = async (): Promise<void> => {
    for (;;) {
      const now = performance.now();
      if (now >= tEnd || started >= maxRequests) return;
      const measured = now >= t0;
      if (measured) started++;
      try {
        const name = await once(hosts[next++ % hosts.length]!, port);
        const done = performance.now();
        if (!measured) continue;
        lat.push(done - now);
        by[name] = (by[name] ?? 0) + 1;
        lastDone = done;
      } catch (e) {
        if (!measured) continue;
        errors++;
        firstError ??= (e as Error).message;
        lastDone = performance.now();
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  clearTimeout(hardStop);
  const windowMs = lastDone - t0;
  const sorted = [...lat].sort((a, b) => a - b);
  const pct = (p: number): number =>
    sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]! : NaN;
  const r2 = (x: number): number => Math.round(x * 100) / 100;
  process.stdout.write(
    JSON.stringify({
      ok: lat.length,
      errors,
      window_ms: Math.round(windowMs),
      req_per_s: windowMs > 0 ? Math.round((lat.length * 1000) / windowMs) : 0,
      p50_ms: r2(pct(0.5)),
      p99_ms: r2(pct(0.99)),
      by,
      first_error: firstError,
      lat_ms: lat.map(r2),
    }) + '\n',
  );
}

const [mode, ...rest] = process.argv.slice(2);
const num = (s: string | undefined, what: string): number => {
  const v = Number(s);
  if (s === undefined || !Number.isFinite(v) || v < 0) {
    process.stderr.write(`lb-http: ${what} wants a number, got ${s}\n`);
    process.exit(2);
  }
  return v;
};
if (mode === 'server') {
  server(rest[0] ?? 'backend', num(rest[1], 'PORT'));
} else if (mode === 'load') {
  await load(
    (rest[0] ?? '').split(','),
    num(rest[1], 'PORT'),
    num(rest[2], 'SECONDS'),
    num(rest[3], 'MAX_REQUESTS'),
    Math.max(1, num(rest[4], 'CONCURRENCY')),
    num(rest[5], 'WARMUP_MS'),
  );
} else {
  process.stderr.write(
    'usage: lb-http.js server NAME PORT | load HOST[,HOST…] PORT SECONDS MAX CONCURRENCY WARMUP_MS\n',
  );
  process.exit(2);
}
