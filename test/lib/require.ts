/**
 * A test file's preconditions. A missing one fails the file (it throws while the file loads,
 * which tap reports as a failure with this message), saying what is missing and how to get it:
 * a suite that skips a file when its machine lacks something proves nothing (issue 13), and a
 * skip is easy to miss in a summary.
 */
import { spawnSync } from 'node:child_process';

/** Namespaced tests create network namespaces: they need root. */
export function requireRoot(what: string): void {
  if (process.getuid?.() === 0) return;
  throw new Error(
    `${what} cannot run: creating network namespaces needs root; run as root (e.g. sudo npm test)`,
  );
}

/** `cmd args…` must run and exit 0 (e.g. `nft --version`); `pkg` is what provides it. */
export function requireCommand(cmd: string, args: string[], pkg: string): void {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  if (r.status === 0) return;
  throw new Error(
    `${cmd} is missing or broken (${cmd} ${args.join(' ')}: ${r.error?.message ?? `exit ${r.status}`}): install ${pkg} (scripts/setup installs it)`,
  );
}

/** VM tests need the Debian kernel of the VM (IPVS, ESP): scripts/vm/suite runs them there. */
export function requireVm(file: string): void {
  if (process.env.MESH_VM === '1') return;
  throw new Error(
    `${file} runs only inside the kernel VM (MESH_VM=1 is unset): run scripts/vm/suite dist/test/vm/${file}.js`,
  );
}
