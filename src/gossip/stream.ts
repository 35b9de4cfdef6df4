/**
 * Stream (TCP) messages of the SWIM core to and from bytes: the driver writes
 * `encodeStreamMessage(m)` through sealStream, and turns openStream's result back into a
 * message with `decodeStreamMessage`. Pure; may import the gossip wire modules and swim types.
 */

import { WireError, type EncodeOptions } from './msgpack.js';
import type { StreamMessage } from './swim.js';
import {
  MessageType,
  decodeAckResp,
  decodeErrResp,
  decodePing,
  decodePushPullBody,
  decodeStreamUserMsgBody,
  encodeMessage,
  encodePushPull,
  encodeStreamUserMsg,
  messageTypeName,
} from './wire.js';

/** `[type][body]…` as memberlist writes it on a stream (before compression and encryption). */
export function encodeStreamMessage(m: StreamMessage, o?: EncodeOptions): Uint8Array {
  switch (m.type) {
    case MessageType.pushPull:
      return encodePushPull(m.body, o);
    case MessageType.user:
      return encodeStreamUserMsg(m.body, o);
    default:
      return encodeMessage(m, o);
  }
}

/** The message after the type byte (openStream's `type` and `body`). */
export function decodeStreamMessage(type: number, body: Uint8Array): StreamMessage {
  switch (type) {
    case MessageType.pushPull:
      return { type, body: decodePushPullBody(body).value };
    case MessageType.ping:
      return { type, body: decodePing(body) };
    case MessageType.ackResp:
      return { type, body: decodeAckResp(body) };
    case MessageType.user:
      return { type, body: decodeStreamUserMsgBody(body).value };
    case MessageType.err:
      return { type, body: decodeErrResp(body) };
    default:
      throw new WireError(
        `decode stream message: ${messageTypeName(type)} is not a stream message`,
      );
  }
}
