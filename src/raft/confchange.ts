/**
 * One-at-a-time membership changes: the entry encoding of a ConfChange and the rules that
 * decide whether a change may be proposed and what membership it yields.
 *
 * Encoding (on disk, in ConfChange entries): u8 type, u32 BE node id, then the context bytes.
 * May import ./types.js, ./errors.js.
 */

import { ConfChangeRejectedError } from './errors.js';
import { ConfChangeType, type ConfChange, type ConfState } from './types.js';

export function encodeConfChange(cc: ConfChange): Uint8Array {
  const ctx = cc.context ?? new Uint8Array(0);
  const out = new Uint8Array(5 + ctx.length);
  const dv = new DataView(out.buffer);
  dv.setUint8(0, cc.type);
  dv.setUint32(1, cc.nodeId);
  out.set(ctx, 5);
  return out;
}

export function decodeConfChange(b: Uint8Array): ConfChange {
  if (b.length < 5) throw new ConfChangeRejectedError(`entry of ${b.length} bytes is too short`);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const type = dv.getUint8(0);
  if (!(type in ConfChangeType)) throw new ConfChangeRejectedError(`unknown type ${type}`);
  return { type: type, nodeId: dv.getUint32(1), context: b.slice(5) };
}

/**
 * Membership after `cc`, or a ConfChangeRejectedError saying why it is refused. Applying the
 * same committed change on every node gives the same result, so a refused change that got
 * committed anyway (proposed under an older membership) is a no-op everywhere.
 */
export function nextConfState(cs: ConfState, cc: ConfChange): ConfState | ConfChangeRejectedError {
  const id = cc.nodeId;
  if (!Number.isSafeInteger(id) || id <= 0) return new ConfChangeRejectedError(`bad node id ${id}`);
  const voters = new Set(cs.voters);
  const learners = new Set(cs.learners);
  const removed = new Set(cs.removed);
  if (removed.has(id) && cc.type !== ConfChangeType.RemoveNode)
    return new ConfChangeRejectedError(
      `node ${id} was removed; ids are never reused, pick a new id`,
    );
  switch (cc.type) {
    case ConfChangeType.AddVoter:
      if (voters.has(id)) return new ConfChangeRejectedError(`node ${id} is already a voter`);
      learners.delete(id);
      voters.add(id);
      break;
    case ConfChangeType.AddLearner:
      if (voters.has(id) || learners.has(id))
        return new ConfChangeRejectedError(`node ${id} is already a member`);
      learners.add(id);
      break;
    case ConfChangeType.PromoteLearner:
      if (!learners.has(id)) return new ConfChangeRejectedError(`node ${id} is not a learner`);
      learners.delete(id);
      voters.add(id);
      break;
    case ConfChangeType.RemoveNode:
      if (!voters.has(id) && !learners.has(id))
        return new ConfChangeRejectedError(`node ${id} is not a member`);
      if (voters.has(id) && voters.size === 1)
        return new ConfChangeRejectedError(`node ${id} is the last voter`);
      voters.delete(id);
      learners.delete(id);
      removed.add(id);
      break;
  }
  const sort = (s: Set<number>): number[] => [...s].sort((a, b) => a - b);
  return { voters: sort(voters), learners: sort(learners), removed: sort(removed) };
}
