/**
 * The two bridge-port requests the overlay needs that the netlink layer does not offer:
 * per-port flags (learning, unicast flooding) and static bridge FDB entries (`master static`,
 * which forward to a port, unlike `permanent`, which the bridge treats as its own address).
 * May import: netlink/ (codec and socket), util/.
 */
import {
  Attrs,
  NLM_F_ACK,
  NLM_F_CREATE,
  NLM_F_DUMP,
  NLM_F_REPLACE,
  NLM_F_REQUEST,
  NlWriter,
} from '../netlink/nl.js';
import {
  AF_BRIDGE,
  NDA_LLADDR,
  NTF_MASTER,
  NUD_NOARP,
  RTM_DELNEIGH,
  RTM_GETLINK,
  RTM_NEWLINK,
  RTM_NEWNEIGH,
  RTM_SETLINK,
  ifinfomsg,
  ndmsg,
  parseMac,
} from '../netlink/rt.js';
import type { BatchItem, NetlinkSocket } from '../netlink/socket.js';

// include/uapi/linux/if_link.h: IFLA_PROTINFO carries the bridge port attributes
// (enum IFLA_BRPORT_*) for AF_BRIDGE link messages.
const IFLA_PROTINFO = 12;
const IFLA_BRPORT_LEARNING = 8;
const IFLA_BRPORT_UNICAST_FLOOD = 9;

export interface PortFlags {
  learning: boolean;
  flood: boolean;
}

/**
 * Set a bridge port's learning and unicast-flood flags.
 * Equivalent to: `bridge link set dev DEV learning on|off flood on|off`.
 */
export function setPortFlags(h: NetlinkSocket, index: number, name: string, f: PortFlags): void {
  const w = new NlWriter(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK);
  w.raw(ifinfomsg(AF_BRIDGE, index));
  w.nest(IFLA_PROTINFO, (p) => {
    p.u8(IFLA_BRPORT_LEARNING, f.learning ? 1 : 0);
    p.u8(IFLA_BRPORT_UNICAST_FLOOD, f.flood ? 1 : 0);
  });
  h.request(w.finish(), { op: 'set', object: `bridge port ${name} learning/flood` });
}

/** Learning and flood flags of every bridge port in the socket's namespace, by ifindex. */
export function listPortFlags(h: NetlinkSocket): Map<number, PortFlags> {
  const w = new NlWriter(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP);
  w.raw(ifinfomsg(AF_BRIDGE, 0));
  const out = new Map<number, PortFlags>();
  for (const m of h.dump(w.finish(), { op: 'list', object: 'bridge ports' })) {
    if (m.type !== RTM_NEWLINK) continue;
    const index = m.payload.readInt32LE(4);
    const info = new Attrs(m.payload, 16).nested(IFLA_PROTINFO);
    if (!info) continue;
    out.set(index, {
      learning: info.u8(IFLA_BRPORT_LEARNING) === 1,
      flood: info.u8(IFLA_BRPORT_UNICAST_FLOOD) === 1,
    });
  }
  return out;
}

/** Encode `bridge fdb replace MAC dev PORT master static` (add) or its `del`. */
export function staticFdbMsg(type: number, port: number, mac: string): Buffer {
  const flags =
    type === RTM_NEWNEIGH ? NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE : NLM_F_REQUEST;
  const w = new NlWriter(type, flags, 48);
  // NUD_NOARP alone is "static": forwarded to the port, never aged. NUD_PERMANENT would make
  // the bridge take the MAC as its own and deliver such frames locally (br_fdb.c).
  w.raw(ndmsg(AF_BRIDGE, port, NUD_NOARP, NTF_MASTER));
  w.bytes(NDA_LLADDR, parseMac(mac));
  return w.finish();
}

/** Batch items adding (or deleting) static bridge FDB entries on one port. */
export function staticFdbItems(
  del: boolean,
  port: number,
  portName: string,
  macs: readonly string[],
): BatchItem[] {
  return macs.map((mac) => ({
    msg: staticFdbMsg(del ? RTM_DELNEIGH : RTM_NEWNEIGH, port, mac),
    desc: () => ({ op: del ? 'del' : 'add', object: `fdb ${mac} dev ${portName} master static` }),
  }));
}
