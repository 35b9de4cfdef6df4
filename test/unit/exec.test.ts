// runTool: a tool that exits without reading its stdin must give its exit status, never an
// unhandled EPIPE (which killed meshd when nft exited early under load).
import t from 'tap';
import { runTool } from '../../src/util/exec.js';

t.test('a tool that ignores a large stdin and exits', async (t) => {
  const input = 'x'.repeat(4 << 20); // far more than a pipe buffer
  for (let i = 0; i < 20; i++) {
    const r = await runTool('sh', ['-c', 'echo out; echo err >&2; exit 3'], { input });
    t.equal(r.code, 3);
    t.equal(r.stdout, 'out\n');
    t.equal(r.stderr, 'err\n');
  }
});

t.test('stdin reaches the tool', async (t) => {
  const r = await runTool('cat', [], { input: 'hello' });
  t.same(r, { code: 0, stdout: 'hello', stderr: '', timedOut: false });
});

t.test('a tool that does not exist rejects', async (t) => {
  await t.rejects(runTool('/nonexistent/tool', []), { code: 'ENOENT' });
});

t.test('timeoutMs kills the tool', async (t) => {
  const r = await runTool('sleep', ['30'], { timeoutMs: 100 });
  t.equal(r.code, null);
  t.equal(r.timedOut, true);
});
