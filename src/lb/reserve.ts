/**
 * Port reservations: a socket bound to 0.0.0.0:PORT (never listening) in a given network
 * namespace, so no other program on the node can bind a published port. Traffic to the port is
 * DNATed before local delivery, so the socket never sees a packet. Sockets are created with
 * libc under withNetns because Node cannot bind a TCP socket without listening, nor choose the
 * namespace a socket lives in.
 *
 * May import: netlink/ (libc, netns), util/.
 */
import { SyscallError, close, inet4BoundSocket } from '../netlink/libc.js';
import { withNetns, type Netns } from '../netlink/netns.js';
import { MeshError } from '../util/errors.js';

const EADDRINUSE = 98;

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
    try {
      return inet4BoundSocket(port, protocol);
    } catch (e) {
      const inUse = e instanceof SyscallError && e.errno === EADDRINUSE;
      throw new MeshError(
        inUse ? 'EADDRINUSE' : 'ELB',
        `reserve port ${port}/${protocol}: ${inUse ? 'another program on this node has it bound; stop it or publish another port' : (e as Error).message}`,
      );
    }
  };
  let fd = netns ? withNetns(netns, work) : work();
  return {
    port,
    protocol,
    close() {
      if (fd >= 0) close(fd);
      fd = -1;
    },
  };
}
