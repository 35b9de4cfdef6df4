/** Process helpers the benchmarks share. */
import type { ChildProcess } from 'node:child_process';

/** SIGTERM each live process, SIGKILL after 5 s; resolves when all have exited. */
export async function stopProcs(procs: readonly (ChildProcess | undefined)[]): Promise<void> {
  await Promise.all(
    procs.map(async (p) => {
      if (!p || p.exitCode !== null || p.signalCode !== null) return;
      const gone = new Promise<void>((r) => p.once('exit', () => r()));
      p.kill('SIGTERM');
      const t = setTimeout(() => p.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(t);
    }),
  );
}
