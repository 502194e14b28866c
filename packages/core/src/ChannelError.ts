/**
 * Errors of labelled-message channels (docs/spec/channels.md).
 *
 * Every failure is a `ChannelError` whose `reason` says what happened. Each
 * reason that maps onto the wire carries the code sent or received, from
 * `Code`. A reason belongs to one of three reaches, which decide what the
 * connection does about it:
 *
 * - the whole connection (`ProtocolViolation`, `MessageTooLarge` of a control
 *   message, `GoneAway`, `TransportClosed`): GOAWAY with the code, then close;
 * - one channel (`ChannelClosed`, `FlowControlViolation`, `DecryptFailed`):
 *   that channel is aborted, the others go on;
 * - one request (`RequestRejected` to answer, `RequestFailed` received): an
 *   ERROR reply, nothing else changes.
 *
 * `retryable` is true only when the peer promised that the channel or the
 * request was never processed.
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"
import { ProtocolViolation, TransportClosed } from "./SessionError.ts"

/**
 * The codes of the spec's "Codes" table: u16 values carried by GOAWAY,
 * DESTROY and ERROR. 1000–4999 are WebSocket close codes, passed through by
 * DESTROY only.
 *
 * @category codes
 * @since 0.1.0
 */
export const Code = {
  NO_ERROR: 0x0000,
  PROTOCOL_ERROR: 0x0001,
  INTERNAL_ERROR: 0x0002,
  FLOW_CONTROL_ERROR: 0x0003,
  UNKNOWN_TYPE: 0x0004,
  INVALID_ID: 0x0005,
  UNKNOWN_CHANNEL: 0x0006,
  REFUSED: 0x0007,
  CHANNEL_LIMIT: 0x0008,
  EXTENSION_NOT_NEGOTIATED: 0x0009,
  BAD_EXTENSION_PARAMS: 0x000a,
  UNKNOWN_KEY: 0x000b,
  SCOPE_DENIED: 0x000c,
  UNKNOWN_FLOW: 0x000d,
  BAD_FILTER: 0x000e,
  ALREADY_MERGED: 0x000f,
  NOT_MERGED: 0x0010,
  INCOMPATIBLE_CHANNELS: 0x0011,
  MERGE_LIMIT: 0x0012,
  CONFLICT: 0x0013,
  NOT_LINKED: 0x0014,
  ALREADY_LINKED: 0x0015,
  DECRYPT_FAILED: 0x0016,
  KEY_EXHAUSTED: 0x0017,
  SLOW_CONSUMER: 0x0018,
  CANCEL: 0x0019,
  ENHANCE_YOUR_CALM: 0x001a,
  GOING_AWAY: 0x001b,
  KEEPALIVE_TIMEOUT: 0x001c
} as const

/**
 * @category codes
 * @since 0.1.0
 */
export type Code = typeof Code[keyof typeof Code]

const codeNames: ReadonlyArray<string> = (() => {
  const names: Array<string> = []
  for (const [name, code] of Object.entries(Code)) names[code] = name
  return names
})()

/**
 * The spec's name of a code: `REFUSED`, `ws:1000` for a WebSocket close code,
 * or `0x…` for one this version does not define.
 *
 * @category codes
 * @since 0.1.0
 */
export const codeName = (code: number): string =>
  codeNames[code] ?? (code >= 1000 && code <= 4999 ? `ws:${code}` : `0x${code.toString(16).padStart(4, "0")}`)

/**
 * The WebSocket close code that matches a channel code: 1000–4999 as they
 * are, NO_ERROR 1000, GOING_AWAY 1001, protocol, id and flow-control errors
 * 1002, DECRYPT_FAILED 1007, ENHANCE_YOUR_CALM and SLOW_CONSUMER 1008, the
 * rest 1011. Used when a connection over a WebSocket ends with GOAWAY, and
 * for a channel presented as a WebSocket.
 *
 * @category codes
 * @since 0.1.0
 */
export const webSocketCloseCode = (code: number): number => {
  if (code >= 1000 && code <= 4999) return code
  switch (code) {
    case Code.NO_ERROR:
      return 1000
    case Code.GOING_AWAY:
      return 1001
    case Code.PROTOCOL_ERROR:
    case Code.INVALID_ID:
    case Code.FLOW_CONTROL_ERROR:
      return 1002
    case Code.DECRYPT_FAILED:
      return 1007
    case Code.ENHANCE_YOUR_CALM:
    case Code.SLOW_CONSUMER:
      return 1008
    default:
      return 1011
  }
}

/**
 * Codes whose refusal promises that nothing was processed: the operation is
 * safe to retry, here or on another connection.
 *
 * @category codes
 * @since 0.1.0
 */
export const isRetryableCode = (code: number): boolean =>
  code === Code.REFUSED || code === Code.CHANNEL_LIMIT || code === Code.GOING_AWAY || code === Code.CONFLICT

/**
 * The peer broke the wire protocol: a runt message, a malformed control
 * message, a bad channel id, data for an idle channel. The connection ends
 * with GOAWAY and `code` (PROTOCOL_ERROR or INVALID_ID). `offset` is the byte
 * of the control message (after the channel id) where it was found. The same
 * reason as a session's.
 *
 * @category reasons
 * @since 0.1.0
 */
export { ProtocolViolation } from "./SessionError.ts"

/**
 * A message larger than its limit: a control message above 4096 bytes
 * (received: a protocol violation, rejected before it is read; to send:
 * nothing is sent), or a data message larger than the channel's base window.
 *
 * @category reasons
 * @since 0.1.0
 */
export class MessageTooLarge extends Schema.TaggedError<MessageTooLarge>()("MessageTooLarge", {
  size: Schema.Number,
  max: Schema.Number,
  code: Schema.Number
}) {
  override get message(): string {
    return `message of ${this.size} bytes exceeds the maximum of ${this.max}`
  }
}

/**
 * A well-formed request this side must refuse (an unknown request type, an
 * extension that was not negotiated, unknown parameters): answer ERROR with
 * `code` to `requestId`; the connection goes on.
 *
 * @category reasons
 * @since 0.1.0
 */
export class RequestRejected extends Schema.TaggedError<RequestRejected>()("RequestRejected", {
  controlType: Schema.Number,
  requestId: Schema.Number,
  code: Schema.Number,
  detail: Schema.String
}) {
  override get message(): string {
    return `request ${this.requestId} (type 0x${this.controlType.toString(16)}) refused with ${
      codeName(this.code)
    }: ${this.detail}`
  }
}

/**
 * Encoding: a value the wire cannot carry (a label above 255 bytes, a field
 * out of range, too many members). Nothing is sent.
 *
 * @category reasons
 * @since 0.1.0
 */
export class InvalidMessage extends Schema.TaggedError<InvalidMessage>()("InvalidMessage", {
  detail: Schema.String
}) {
  override get message(): string {
    return `cannot encode: ${this.detail}`
  }
}

/**
 * The peer answered a request of ours with ERROR.
 *
 * @category reasons
 * @since 0.1.0
 */
export class RequestFailed extends Schema.TaggedError<RequestFailed>()("RequestFailed", {
  controlType: Schema.Number,
  code: Schema.Number,
  detail: Schema.String
}) {
  override get message(): string {
    return `request (type 0x${this.controlType.toString(16)}) failed with ${codeName(this.code)}${
      this.detail ? `: ${this.detail}` : ""
    }`
  }
}

/**
 * The channel was destroyed, gracefully or by abort, by the peer or locally.
 *
 * @category reasons
 * @since 0.1.0
 */
export class ChannelClosed extends Schema.TaggedError<ChannelClosed>()("ChannelClosed", {
  code: Schema.Number,
  reason: Schema.String,
  byPeer: Schema.Boolean,
  aborted: Schema.Boolean
}) {
  override get message(): string {
    return `channel ${this.aborted ? "aborted" : "closed"} ${this.byPeer ? "by the peer" : "locally"} with ${
      codeName(this.code)
    }${this.reason ? `: ${this.reason}` : ""}`
  }
}

/**
 * The peer sent beyond the channel's window, or granted credit above
 * 2^32−1: the channel is aborted with FLOW_CONTROL_ERROR.
 *
 * @category reasons
 * @since 0.1.0
 */
export class FlowControlViolation extends Schema.TaggedError<FlowControlViolation>()("FlowControlViolation", {
  detail: Schema.String
}) {
  override get message(): string {
    return `flow control: ${this.detail}`
  }
}

/**
 * A message of an encrypted channel failed authentication (tampered,
 * replayed, reordered, reflected, or shorter than its tag): the channel is
 * aborted with DECRYPT_FAILED; other channels go on.
 *
 * @category reasons
 * @since 0.1.0
 */
export class DecryptFailed extends Schema.TaggedError<DecryptFailed>()("DecryptFailed", {
  counter: Schema.Number
}) {
  override get message(): string {
    return `message ${this.counter} of the channel failed authentication`
  }
}

/**
 * A limit was exceeded: by the peer (a flood, too many requests) or by the
 * application (too many channels).
 *
 * @category reasons
 * @since 0.1.0
 */
export class LimitExceeded extends Schema.TaggedError<LimitExceeded>()("LimitExceeded", {
  limit: Schema.String,
  value: Schema.Number,
  max: Schema.Number,
  code: Schema.Number
}) {
  override get message(): string {
    return `${this.limit}: ${this.value} exceeds ${this.max}`
  }
}

/**
 * This side has no free channel id of its parity left. Nothing was sent.
 *
 * @category reasons
 * @since 0.1.0
 */
export class ChannelIdsExhausted extends Schema.TaggedError<ChannelIdsExhausted>()("ChannelIdsExhausted", {
  side: Schema.Literals(["client", "server"])
}) {
  override get message(): string {
    return `no free ${this.side === "client" ? "odd" : "even"} channel ids`
  }
}

/**
 * The peer sent GOAWAY, or this side is closing: no new channels.
 *
 * @category reasons
 * @since 0.1.0
 */
export class GoneAway extends Schema.TaggedError<GoneAway>()("GoneAway", {
  code: Schema.Number,
  byPeer: Schema.Boolean,
  reason: Schema.optional(Schema.String)
}) {
  override get message(): string {
    return `connection ${this.byPeer ? "closed by the peer" : "closing"} (${codeName(this.code)}${
      this.reason ? `: ${this.reason}` : ""
    })`
  }
}

/**
 * The message transport under the channels closed or failed: the same
 * reason as a session's.
 *
 * @category reasons
 * @since 0.1.0
 */
export { TransportClosed } from "./SessionError.ts"

/**
 * @category reasons
 * @since 0.1.0
 */
export const ChannelErrorReason = Schema.Union([
  ProtocolViolation,
  MessageTooLarge,
  RequestRejected,
  InvalidMessage,
  RequestFailed,
  ChannelClosed,
  FlowControlViolation,
  DecryptFailed,
  LimitExceeded,
  ChannelIdsExhausted,
  GoneAway,
  TransportClosed
])

/**
 * @category reasons
 * @since 0.1.0
 */
export type ChannelErrorReason = typeof ChannelErrorReason.Type

/**
 * A channel, a request on the connection, or the connection itself failed.
 * `channelId` is set when one channel is concerned.
 *
 * @category errors
 * @since 0.1.0
 */
export class ChannelError extends Schema.TaggedError<ChannelError>()("ChannelError", {
  reason: ChannelErrorReason,
  channelId: Schema.optional(Schema.Number)
}) {
  /** True when the peer promised the channel or request was never processed. */
  get retryable(): boolean {
    const reason = this.reason
    return reason._tag === "RequestFailed" && isRetryableCode(reason.code)
  }

  override get message(): string {
    return `${this.channelId === undefined ? "" : `channel ${this.channelId}: `}${this.reason._tag}: ${
      this.reason.message
    }${this.retryable ? " (safe to retry)" : ""}`
  }
}
