/**
 * The handful of libc calls Node cannot make by itself (netlink sockets, setns, unshare, mount),
 * bound through koffi. Every wrapper is synchronous, checks the return value and throws a
 * `SyscallError` carrying errno; nothing here knows about netlink messages.
 *
 * Why koffi and not a native addon: koffi is named by the product card, ships prebuilt binaries
 * inside its npm package (no compiler at install time) and a call costs ~0.2 µs here, so a
 * netlink request/response made synchronously costs tens of microseconds end to end.
 *
 * Thread rule: koffi's synchronous calls run on the calling (main) thread. setns/unshare change
 * only that thread's namespaces, which is exactly what `withNetns()` relies on.
 * May import: koffi, node built-ins, util/.
 */
import koffi from 'koffi';
import { MeshError } from '../util/errors.js';

const libc = koffi.load('libc.so.6');

type Ptr = Uint8Array | null;
/** The bindings, typed: koffi returns `any`, so each signature is restated for TypeScript. */
const c = {
  socket: libc.func('int socket(int domain, int type, int protocol)') as (
    d: number,
    t: number,
    p: number,
  ) => number,
  bind: libc.func('int bind(int fd, const void *addr, uint32_t addrlen)') as (
    fd: number,
    a: Ptr,
    l: number,
  ) => number,
  setsockopt: libc.func(
    'int setsockopt(int fd, int level, int name, const void *val, uint32_t len)',
  ) as (fd: number, level: number, name: number, v: Ptr, l: number) => number,
  getsockname: libc.func('int getsockname(int fd, void *addr, _Inout_ uint32_t *addrlen)') as (
    fd: number,
    a: Ptr,
    l: number[],
  ) => number,
  send: libc.func('intptr_t send(int fd, const void *buf, size_t len, int flags)') as (
    fd: number,
    b: Ptr,
    l: number,
    f: number,
  ) => number | bigint,
  recv: libc.func('intptr_t recv(int fd, void *buf, size_t len, int flags)') as (
    fd: number,
    b: Ptr,
    l: number,
    f: number,
  ) => number | bigint,
  close: libc.func('int close(int fd)') as (fd: number) => number,
  open: libc.func('int open(const char *path, int flags, uint32_t mode)') as (
    p: string,
    f: number,
    m: number,
  ) => number,
  setns: libc.func('int setns(int fd, int nstype)') as (fd: number, t: number) => number,
  unshare: libc.func('int unshare(int flags)') as (f: number) => number,
  mount: libc.func(
    'int mount(const char *src, const char *target, const char *fstype, unsigned long flags, const void *data)',
  ) as (
    src: string | null,
    target: string,
    fstype: string | null,
    flags: number,
    data: Ptr,
  ) => number,
  umount2: libc.func('int umount2(const char *target, int flags)') as (
    t: string,
    f: number,
  ) => number,
  poll: libc.func('int poll(void *fds, unsigned long nfds, int timeout)') as (
    fds: Ptr,
    n: number,
    t: number,
  ) => number,
  strerror: libc.func('const char *strerror(int errnum)') as (e: number) => string | null,
};

/** errno numbers by name, from the platform (Linux values). */
export const Errno = koffi.os.errno as Readonly<Record<string, number>>;
const errnoNames = new Map<number, string>(
  Object.entries(koffi.os.errno).map(([name, num]) => [num, name]),
);

/** `EEXIST`-style name for an errno number. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

/** The C library's text for an errno, lower-cased as our messages are ("file exists"). */
export function errnoText(errno: number): string {
  const s = c.strerror(errno);
  return (s ?? `errno ${errno}`).toLowerCase();
}

/** A failed system call: `errno` is the positive errno number. */
export class SyscallError extends MeshError {
  readonly errno: number;
  readonly syscall: string;
  constructor(syscall: string, errno: number, what: string) {
    super('ESYSCALL', `${syscall} ${what}: ${errnoText(errno)}`);
    this.errno = errno;
    this.syscall = syscall;
  }
}

function check(ret: number | bigint, syscall: string, what: string): number {
  const n = Number(ret);
  if (n < 0) throw new SyscallError(syscall, koffi.errno(), what);
  return n;
}

// Linux x86_64/aarch64 constants (uapi: linux/socket.h, linux/netlink.h, linux/sched.h,
// linux/mount.h, asm-generic/fcntl.h, poll.h).
export const AF_NETLINK = 16;
export const SOCK_RAW = 3;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const SO_SNDBUFFORCE = 32;
export const SO_RCVBUFFORCE = 33;
export const SOL_NETLINK = 270;
export const MSG_PEEK = 0x2;
export const MSG_TRUNC = 0x20;
export const MSG_DONTWAIT = 0x40;
export const CLONE_NEWNET = 0x40000000;
export const O_RDONLY = 0;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_CLOEXEC = 0o2000000;
export const MS_BIND = 0x1000;
export const MS_REC = 0x4000;
export const MS_SHARED = 1 << 20;
export const MNT_DETACH = 2;
const POLLIN = 0x1;

/** socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, protocol). */
export function netlinkSocket(protocol: number): number {
  return check(c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol), 'socket', 'netlink');
}

/** bind() to a sockaddr_nl with the kernel choosing our port id; returns the port id. */
export function netlinkBind(fd: number, groups = 0): number {
  const sa = Buffer.alloc(12);
  sa.writeUInt16LE(AF_NETLINK, 0);
  sa.writeUInt32LE(0, 4); // nl_pid 0: let the kernel assign
  sa.writeUInt32LE(groups >>> 0, 8);
  check(c.bind(fd, sa, sa.length), 'bind', 'netlink socket');
  const out = Buffer.alloc(12);
  const len = [12];
  check(c.getsockname(fd, out, len), 'getsockname', 'netlink socket');
  return out.readUInt32LE(4);
}

const AF_INET = 2;
const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;

/**
 * A TCP or UDP socket bound to 0.0.0.0:`port` and never listening (a port reservation): Node
 * cannot bind a TCP socket without listening. Returns its fd; throws SyscallError (errno 98,
 * EADDRINUSE, when another program holds the port).
 */
export function inet4BoundSocket(port: number, protocol: 'tcp' | 'udp'): number {
  const what = `0.0.0.0:${port}/${protocol}`;
  const fd = check(
    c.socket(AF_INET, (protocol === 'tcp' ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0),
    'socket',
    what,
  );
  const sa = new Uint8Array(16); // struct sockaddr_in: family, port (big-endian), address 0
  sa[0] = AF_INET;
  sa[2] = (port >> 8) & 0xff;
  sa[3] = port & 0xff;
  if (c.bind(fd, sa, sa.length) < 0) {
    const errno = koffi.errno();
    c.close(fd);
    throw new SyscallError('bind', errno, what);
  }
  return fd;
}

/** setsockopt with a 32-bit integer value. */
export function setsockoptInt(fd: number, level: number, name: number, value: number): void {
  const v = Buffer.alloc(4);
  v.writeInt32LE(value, 0);
  check(c.setsockopt(fd, level, name, v, 4), 'setsockopt', `level ${level} option ${name}`);
}

/** Like setsockoptInt, but reports failure as a boolean (for optional features). */
export function trySetsockoptInt(fd: number, level: number, name: number, value: number): boolean {
  const v = Buffer.alloc(4);
  v.writeInt32LE(value, 0);
  return Number(c.setsockopt(fd, level, name, v, 4)) === 0;
}

/** send(); retries EINTR. */
export function send(fd: number, buf: Uint8Array, flags = 0): number {
  for (;;) {
    const n = Number(c.send(fd, buf, buf.length, flags));
    if (n >= 0) return n;
    const e = koffi.errno();
    if (e === Errno.EINTR) continue;
    throw new SyscallError('send', e, 'netlink socket');
  }
}

/**
 * recv() into `buf`; returns the datagram's full length (which exceeds buf.length when MSG_TRUNC
 * is passed and the datagram did not fit), or -errno for EAGAIN/ENOBUFS so callers can treat
 * those as outcomes rather than failures. Retries EINTR; throws on any other error.
 */
export function recv(fd: number, buf: Uint8Array, flags: number): number {
  for (;;) {
    const n = Number(c.recv(fd, buf, buf.length, flags));
    if (n >= 0) return n;
    const e = koffi.errno();
    if (e === Errno.EINTR) continue;
    if (e === Errno.EAGAIN || e === Errno.ENOBUFS) return -e;
    throw new SyscallError('recv', e, 'netlink socket');
  }
}

/** Block up to `timeoutMs` until fd is readable; true if readable. Retries EINTR. */
export function pollIn(fd: number, timeoutMs: number): boolean {
  const pfd = Buffer.alloc(8); // struct pollfd { int fd; short events; short revents; }
  pfd.writeInt32LE(fd, 0);
  pfd.writeInt16LE(POLLIN, 4);
  for (;;) {
    const n = Number(c.poll(pfd, 1, timeoutMs));
    if (n >= 0) return n > 0;
    const e = koffi.errno();
    if (e !== Errno.EINTR) throw new SyscallError('poll', e, 'netlink socket');
  }
}

export function close(fd: number): void {
  c.close(fd);
}

/** open() returning the fd; O_CLOEXEC is always added. */
export function open(path: string, flags: number, mode = 0): number {
  return check(c.open(path, flags | O_CLOEXEC, mode), 'open', path);
}

/** setns(fd, CLONE_NEWNET) for the calling thread. */
export function setnsNet(fd: number, what: string): void {
  check(c.setns(fd, CLONE_NEWNET), 'setns', what);
}

/** unshare(CLONE_NEWNET) for the calling thread. */
export function unshareNet(): void {
  check(c.unshare(CLONE_NEWNET), 'unshare', 'network namespace');
}

export function mount(
  src: string | null,
  target: string,
  fstype: string | null,
  flags: number,
): void {
  check(c.mount(src, target, fstype, flags, null), 'mount', target);
}

/** mount() returning errno instead of throwing (0 on success). */
export function tryMount(
  src: string | null,
  target: string,
  fstype: string | null,
  flags: number,
): number {
  return Number(c.mount(src, target, fstype, flags, null)) === 0 ? 0 : koffi.errno();
}

/** umount2(); returns errno (0 on success) so callers can ignore EINVAL/ENOENT as they choose. */
export function umount2(target: string, flags: number): number {
  return Number(c.umount2(target, flags)) === 0 ? 0 : koffi.errno();
}
