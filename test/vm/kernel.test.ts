// vm-timeout: 120
// (a whole run: 54 s in the VM under host load 10–20; a normal run takes at most half of it)
// Proves the kernel features Mesh needs are present in the VM kernel (scripts/vm/run): IPVS
// (module, /proc, an fwmark service with a masquerade destination in a fresh namespace), ESP
// with rfc4106(gcm(aes)) (needs crypto module autoload) and VXLAN links. These run only inside
// the VM, where a missing feature is a failure, never a skip.
// Uses iproute2/ipvsadm on purpose: it checks the kernel, independently of src/netlink.
import t from 'tap';
import type { Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { requireVm } from '../lib/require.js';

requireVm('kernel.test');

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A fresh named network namespace (lo up), deleted in teardown. */
function freshNetns(t: Test, what: string): string {
  const name = `mvm-${process.pid}-${what}`;
  run('ip', ['netns', 'add', name]);
  t.teardown(() => {
    try {
      run('ip', ['netns', 'del', name]);
    } catch {
      // already gone
    }
  });
  // A fresh namespace has lo down; IPVS refuses masquerade destinations until it is up.
  run('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return name;
}

t.comment(`kernel ${release()}`);

t.test('modprobe ip_vs loads IPVS and /proc/net/ip_vs appears', async (t) => {
  run('modprobe', ['ip_vs']);
  t.ok(existsSync('/sys/module/ip_vs'), 'ip_vs module is loaded');
  t.ok(existsSync('/proc/net/ip_vs'), '/proc/net/ip_vs exists');
  t.match(readFileSync('/proc/net/ip_vs', 'utf8'), /IP Virtual Server version/);
});

t.test('an fwmark service with a masquerade destination in a fresh namespace', async (t) => {
  const ns = freshNetns(t, 'ipvs');
  const inNs = (args: string[]): string => run('ip', ['netns', 'exec', ns, 'ipvsadm', ...args]);
  inNs(['-A', '-f', '256', '-s', 'rr']);
  inNs(['-a', '-f', '256', '-r', '10.0.0.2:80', '-m']);
  const out = inNs(['-Ln']);
  t.match(out, /^FWM\s+256\s+rr\s*$/m, 'ipvsadm -Ln shows the service');
  t.match(out, /^\s+->\s+10\.0\.0\.2:80\s+Masq\s+1\s/m, 'and its masquerade destination');
  t.notMatch(run('ipvsadm', ['-Ln']), /FWM\s+256/, 'the root namespace does not see it');
});

t.test('an ESP transport SA with rfc4106(gcm(aes)) is accepted', async (t) => {
  const ns = freshNetns(t, 'esp');
  // 16-byte AES key + 4-byte salt, 64-bit ICV: the shape Docker's encrypted overlay uses.
  const key = '0x' + '0123456789abcdef'.repeat(2) + '01234567';
  run('ip', [
    ...['-n', ns, 'xfrm', 'state', 'add', 'src', '198.18.0.1', 'dst', '198.18.0.2'],
    ...['proto', 'esp', 'spi', '0x00001000', 'reqid', '1', 'mode', 'transport'],
    ...['aead', 'rfc4106(gcm(aes))', key, '64'],
  ]);
  const out = run('ip', ['-n', ns, 'xfrm', 'state', 'list']);
  t.match(out, /proto esp spi 0x00001000 reqid 1 mode transport/);
  t.match(out, /aead rfc4106\(gcm\(aes\)\) 0x0123456789abcdef0123456789abcdef01234567 64/);
});

t.test('a vxlan link can be created', async (t) => {
  const ns = freshNetns(t, 'vxlan');
  run('ip', [
    ...['-n', ns, 'link', 'add', 'vx-4096', 'type', 'vxlan', 'id', '4096'],
    ...['dstport', '4789', 'local', '198.18.0.1', 'nolearning'],
  ]);
  const links = JSON.parse(run('ip', ['-n', ns, '-j', '-d', 'link', 'show', 'vx-4096']));
  const info = links[0]?.linkinfo;
  t.equal(info?.info_kind, 'vxlan');
  t.equal(info?.info_data?.id, 4096);
  t.equal(info?.info_data?.port, 4789);
  t.equal(info?.info_data?.local, '198.18.0.1');
  t.equal(info?.info_data?.learning, false);
});
