/**
 * `ipvsadm -Ln` and `meshctl lb show` (ServiceLb.show()) reduced to the same comparable lines:
 * `MARK SCHEDULER` per firewall-mark service and `MARK ADDR:PORT wWEIGHT` per destination,
 * sorted. The VM tests check that the kernel holds exactly what show reports.
 */
import { execFileSync } from 'node:child_process';
import type { LbShowEntry } from '../../src/api/lb.js';

/** `ipvsadm -Ln` inside namespace `ns`, as comparable lines. */
export function ipvsadmLines(ns: string): string[] {
  const out = execFileSync('ip', ['netns', 'exec', ns, 'ipvsadm', '-Ln'], { encoding: 'utf8' });
  const lines: string[] = [];
  let mark = '';
  for (const l of out.split('\n')) {
    const s = /^FWM\s+(\d+)\s+(\S+)/.exec(l);
    if (s) {
      mark = s[1]!;
      lines.push(`${mark} ${s[2]}`);
      continue;
    }
    const d = /^\s+->\s+(\S+):(\d+)\s+\S+\s+(\d+)/.exec(l);
    if (d && mark) lines.push(`${mark} ${d[1]}:${d[2]} w${d[3]}`);
  }
  return lines.sort();
}

/** show() entries (of one namespace) as comparable lines; entries without a mark are skipped. */
export function showLines(entries: readonly LbShowEntry[]): string[] {
  const lines: string[] = [];
  for (const e of entries) {
    if (e.fwmark === undefined) continue;
    lines.push(`${e.fwmark} ${e.scheduler}`);
    for (const b of e.backends) lines.push(`${e.fwmark} ${b.address}:${b.port} w${b.weight}`);
  }
  return lines.sort();
}
