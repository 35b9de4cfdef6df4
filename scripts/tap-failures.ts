// The failures of a tap run, for the digest run-tests prints at its end (CI logs are read from
// the tail, and a failure's explanation is otherwise far above it).

/**
 * Each `not ok` line of a tap output with what explains it: the comment lines just before it
 * (tests print their diagnostics there before they throw) and the found/wanted/message lines of
 * its YAML block. Subtests that fail only because a child failed are listed too, briefly.
 */
export function failures(out: string): string[] {
  const lines = out.split('\n');
  const res: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    if (!/^\s*not ok \d+/.test(l)) continue;
    const before: string[] = [];
    for (let j = i - 1; j >= 0 && before.length < 40 && /^\s*# /.test(lines[j]!); j--)
      before.unshift(lines[j]!.trim());
    res.push(...before, l.trim());
    for (let j = i + 1; j < lines.length && j < i + 80 && !/^\s*\.\.\.$/.test(lines[j]!); j++) {
      if (/^\s*(found|wanted|message|error|code|signal|tapCaught):/.test(lines[j]!))
        res.push(`    ${lines[j]!.trim().slice(0, 400)}`);
    }
  }
  return res;
}
