/**
 * Benchmark entry: `npm run bench -- NAME [args]` runs bench/NAME. Each benchmark measures
 * ours and the peer side by side in one run and ends with one JSON line
 * `{"bench":NAME,"ours":{…},"peer":{…}}`. Benchmarks are never part of `npm test`.
 */
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const available = readdirSync(here)
  .filter((f) => f.endsWith('.js') && f !== 'run.js')
  .map((f) => f.slice(0, -3))
  .sort();

const name = process.argv[2];
if (!name || name === '--help' || name === '-h') {
  process.stdout.write(`usage: npm run bench -- NAME [args]\navailable: ${available.join(', ')}\n`);
  process.exit(name ? 0 : 2);
}
if (!available.includes(name)) {
  process.stderr.write(
    `bench: no benchmark named ${JSON.stringify(name)}; available: ${available.join(', ')}\n`,
  );
  process.exit(2);
}
const mod = (await import(`./${name}.js`)) as { main(args: string[]): Promise<void> };
await mod.main(process.argv.slice(3));
