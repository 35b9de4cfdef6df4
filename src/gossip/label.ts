/**
 * memberlist labels (label.go, memberlist >= 0.3.0): `[244][len u8][label]` in front of a
 * packet or a stream, so clusters sharing a network can reject each other's traffic. Off by
 * default; serf 0.9.4 (memberlist 0.2.2) predates labels and cannot parse them. With
 * encryption, the label is also the GCM additional data. Pure; may import ./msgpack.js.
 */

import { WireError, bytesToText, textToBytes } from './msgpack.js';
import { MessageType } from './wire.js';

export const LabelMaxSize = 255;

/** Bytes a label header adds (0 when there is no label). */
export function labelOverhead(label: string): number {
  return label === '' ? 0 : 2 + textToBytes(label).length;
}

/** Prefixes `buf` with the label header; an empty label adds nothing. */
export function addLabel(buf: Uint8Array, label: string): Uint8Array {
  if (label === '') return buf;
  const lb = textToBytes(label);
  if (lb.length > LabelMaxSize) {
    throw new WireError(`add label: label is ${lb.length} bytes, at most ${LabelMaxSize} allowed`);
  }
  const out = new Uint8Array(2 + lb.length + buf.length);
  out[0] = MessageType.hasLabel;
  out[1] = lb.length;
  out.set(lb, 2);
  out.set(buf, 2 + lb.length);
  return out;
}

/**
 * Strips a label header if present (RemoveLabelHeaderFromPacket); `label` is '' when there was
 * none. An empty or cut-off header throws (truncated, so a stream reader may wait for more).
 */
export function removeLabel(buf: Uint8Array): { label: string; rest: Uint8Array } {
  if (buf.length === 0 || buf[0] !== MessageType.hasLabel) return { label: '', rest: buf };
  if (buf.length < 2) throw new WireError('remove label: header is truncated', true);
  const size = buf[1] as number;
  if (size < 1) throw new WireError('remove label: label header cannot be empty when present');
  if (buf.length < 2 + size) throw new WireError('remove label: header is truncated', true);
  return { label: bytesToText(buf.subarray(2, 2 + size)), rest: buf.subarray(2 + size) };
}

export interface LabelPolicy {
  /** Our label; '' (the default) means unlabeled. */
  label: string;
  /** memberlist's SkipInboundLabelCheck: accept unlabeled traffic as if it had our label. */
  skipInboundLabelCheck?: boolean;
}

/**
 * Strips and checks the label as ingestPacket/handleConn do, returning the label to use as
 * additional data for decryption and the rest of the bytes.
 */
export function checkLabel(
  buf: Uint8Array,
  policy: LabelPolicy,
): { label: string; rest: Uint8Array } {
  const removed = removeLabel(buf);
  const rest = removed.rest;
  let label = removed.label;
  if (policy.skipInboundLabelCheck) {
    if (label !== '') throw new WireError('check label: unexpected double label header');
    label = policy.label;
  }
  if (label !== policy.label) {
    throw new WireError(
      `check label: discarding traffic with label ${JSON.stringify(label)}, ours is ${JSON.stringify(policy.label)}`,
    );
  }
  return { label, rest };
}
