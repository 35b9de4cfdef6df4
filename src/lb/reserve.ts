/**
 * Port reservations: a socket bound to 0.0.0.0:PORT (never listening) in a given network
 * namespace, so no other program on the node can bind a published port. Traffic to the port is
 * DNATed before local delivery, so the socket never sees a packet. Sockets are created with
 * libc under withNetns because Node cannot bind a TCP socket without listening, nor choose the
 * namespace a socket lives in.
 *
 * May import: koffi, netlink/ (netns), util/.
 */
import koffi from 'koffi';
import { withNetns, type Netns } from '../netlink/netns.js';
import { MeshError } from '../util/errors.js';

const libc = koffi.load('libc.so.6');
const c = {
  socket: libc.func('int socket(int domain, int type, int protocol)') as (
    d: number,
    t: number,
    p: number,
  ) => number,
  bind: libc.func('int bind(int fd, const void *addr, uint32_t addrlen)') as (
    fd: number,
    a: Uint8Array,
    l: number,
  ) => number,
  close: libc.func('int close(int fd)') as (fd: number) => number,
};

const AF_INET = 2;
const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;

/** One reserved port: close() releases it. */
export interface Reservation {
  readonly port: number;
  readonly protocol: 'tcp' | 'udp';
  close(): void;
}

/**
 * Bind `protocol` port `port` on every address of `netns` (or the caller's namespace).
 * Throws EADDRINUSE-coded MeshError when something else holds the port.
 */
export function reservePort(port: number, protocol: 'tcp' | 'udp', netns?: Netns): Reservation {
  const work = (): number => {
    const fd = c.socket(AF_INET, (protocol === 'tcp' ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0);
    if (fd < 0)
      throw new MeshError(
        'ELB',
        `reserve port ${port}/${protocol}: socket: errno ${koffi.errno()}`,
      );
    const sa = new Uint8Array(16);
    sa[0] = AF_INET;
    sa[2] = (port >> 8) & 0xff;
    sa[3] = port & 0xff;
    if (c.bind(fd, sa, sa.length) < 0) {
      const errno = koffi.errno();
      c.close(fd);
      throw new MeshError(
        errno === 98 ? 'EADDRINUSE' : 'ELB',
        `reserve port ${port}/${protocol}: ${errno === 98 ? 'another program on this node has it bound; stop it or publish another port' : `bind: errno ${errno}`}`,
      );
    }
    return fd;
  };
  let fd = netns ? withNetns(netns, work) : work();
  return {
    port,
    protocol,
    close() {
      if (fd >= 0) c.close(fd);
      fd = -1;
    },
  };
}
