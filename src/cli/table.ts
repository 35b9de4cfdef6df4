/**
 * meshctl's one table layout, like docker's: left-aligned columns two spaces apart, the last
 * column unpadded, no trailing blanks. May import nothing.
 */

/** The rows laid out as lines (no newline at the end of each). */
export function tableLines(rows: readonly (readonly string[])[]): string[] {
  const w: number[] = [];
  for (const r of rows) r.forEach((c, i) => (w[i] = Math.max(w[i] ?? 0, c.length)));
  return rows.map((r) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(w[i] ?? 0)))
      .join('  ')
      .trimEnd(),
  );
}

/** The rows laid out, one line each, ending in a newline. */
export function table(rows: readonly (readonly string[])[]): string {
  return tableLines(rows).join('\n') + '\n';
}
