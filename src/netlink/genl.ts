/**
 * Generic netlink: message framing (genlmsghdr) and family resolution through the nlctrl
 * family (CTRL_CMD_GETFAMILY), which is how IPVS ("IPVS"), and others, are found at run time.
 * An absent family answers ENOENT: that is our runtime probe for IPVS support.
 * May import: ./nl, ./socket, util/.
 */
import { Attrs, NLM_F_REQUEST, NlWriter } from './nl.js';
import type { NetlinkSocket } from './socket.js';

// linux/genetlink.h — on the wire.
export const GENL_ID_CTRL = 0x10;
export const CTRL_CMD_GETFAMILY = 3;
export const CTRL_ATTR_FAMILY_ID = 1;
export const CTRL_ATTR_FAMILY_NAME = 2;
export const CTRL_ATTR_VERSION = 3;
export const CTRL_ATTR_HDRSIZE = 4;
export const CTRL_ATTR_MAXATTR = 5;
export const CTRL_ATTR_OPS = 6;
export const CTRL_ATTR_MCAST_GROUPS = 7;
export const CTRL_ATTR_OP_ID = 1;
export const CTRL_ATTR_OP_FLAGS = 2;
export const CTRL_ATTR_MCAST_GRP_NAME = 1;
export const CTRL_ATTR_MCAST_GRP_ID = 2;
export const GENL_HDRLEN = 4;

export interface GenlFamily {
  id: number;
  name: string;
  version: number;
  hdrSize: number;
  maxAttr: number;
  ops: Array<{ cmd: number; flags: number }>;
  mcastGroups: Array<{ name: string; id: number }>;
}

/** Start a generic-netlink message: nlmsghdr (type = family id) + genlmsghdr. Add attributes, then finish(). */
export function genlWriter(
  familyId: number,
  cmd: number,
  version: number,
  flags = NLM_F_REQUEST,
): NlWriter {
  const w = new NlWriter(familyId, flags);
  w.raw(Buffer.from([cmd, version, 0, 0]));
  return w;
}

/** Attributes of a generic-netlink message (after genlmsghdr and the family's own header). */
export function genlAttrs(payload: Buffer, hdrSize = 0): Attrs {
  return new Attrs(payload, GENL_HDRLEN + hdrSize);
}

/** The command byte of a received generic-netlink message. */
export function genlCmd(payload: Buffer): number {
  return payload.readUInt8(0);
}

/**
 * Look up a generic-netlink family by name. Throws NetlinkError ENOENT when the kernel has no
 * such family (module not loaded and not autoloadable).
 * Equivalent to: `genl ctrl get name NAME`.
 */
export function genlFamily(h: NetlinkSocket, name: string, hint?: string): GenlFamily {
  const w = genlWriter(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 2);
  w.str(CTRL_ATTR_FAMILY_NAME, name);
  const desc = {
    op: 'resolve',
    object: `generic netlink family ${name}`,
    hint: (errno: number) =>
      errno === 2 ? (hint ?? 'the kernel module providing it is not loaded') : undefined,
  };
  const replies = h.request(w.finish(), desc);
  const m = replies.find((r) => r.type === GENL_ID_CTRL);
  if (!m) throw new Error(`genl: no CTRL_CMD_NEWFAMILY answer for ${name}`);
  const a = genlAttrs(m.payload);
  const fam: GenlFamily = {
    id: a.u16(CTRL_ATTR_FAMILY_ID) ?? 0,
    name: a.str(CTRL_ATTR_FAMILY_NAME) ?? name,
    version: a.u32(CTRL_ATTR_VERSION) ?? 0,
    hdrSize: a.u32(CTRL_ATTR_HDRSIZE) ?? 0,
    maxAttr: a.u32(CTRL_ATTR_MAXATTR) ?? 0,
    ops: [],
    mcastGroups: [],
  };
  for (const [, op] of a.nested(CTRL_ATTR_OPS)?.all() ?? []) {
    const o = new Attrs(op);
    fam.ops.push({ cmd: o.u32(CTRL_ATTR_OP_ID) ?? 0, flags: o.u32(CTRL_ATTR_OP_FLAGS) ?? 0 });
  }
  for (const [, g] of a.nested(CTRL_ATTR_MCAST_GROUPS)?.all() ?? []) {
    const o = new Attrs(g);
    fam.mcastGroups.push({
      name: o.str(CTRL_ATTR_MCAST_GRP_NAME) ?? '',
      id: o.u32(CTRL_ATTR_MCAST_GRP_ID) ?? 0,
    });
  }
  return fam;
}
