/**
 * Errors of the WebSocket transport: the opening handshake (status,
 * sub-protocol and extension negotiation, deadline), the secondary handshake
 * over the open socket (docs/spec/handshake.md), and message limits.
 *
 * Every failure is a `WsError` whose `reason` says what happened. Reasons
 * that end a connection on the wire carry the WebSocket close code sent to
 * the peer (`closeCode`). On a Socket's reader a `WsError` arrives wrapped
 * as the cause of a `SocketReadError`; `WsError.fromSocketError` unwraps it.
 *
 * @since 0.1.0
 */
import * as Predicate from "effect/Predicate"
import * as Schema from "effect/Schema"
import * as Socket from "effect/socket/Socket"

/**
 * A received message is larger than `maxPayload` (checked on every frame
 * header before the payload is read, and on the inflated size when
 * permessage-deflate is on). The connection is closed with 1009.
 *
 * @category reasons
 * @since 0.1.0
 */
export class PayloadTooLarge extends Schema.TaggedError<PayloadTooLarge>()("PayloadTooLarge", {
  max: Schema.Number,
  size: Schema.optional(Schema.Number),
  closeCode: Schema.Number
}) {
  override get message(): string {
    return this.size === undefined
      ? `message exceeds the maximum payload of ${this.max} bytes`
      : `message of ${this.size} bytes exceeds the maximum payload of ${this.max} bytes`
  }
}

/**
 * A reader that cannot pause its source (a browser WebSocket) holds more
 * unread bytes than its bound. The connection is closed with 1008.
 *
 * @category reasons
 * @since 0.1.0
 */
export class BufferOverflow extends Schema.TaggedError<BufferOverflow>()("BufferOverflow", {
  buffered: Schema.Number,
  max: Schema.Number,
  closeCode: Schema.Number
}) {
  override get message(): string {
    return `${this.buffered} unread bytes exceed the reader's bound of ${this.max}`
  }
}

/**
 * The server answered the opening handshake with something other than 101:
 * 403 (origin not allowed), 503 (connection cap), 400 (bad negotiation
 * headers), 431 (headers too large or too many), …
 *
 * @category reasons
 * @since 0.1.0
 */
export class HandshakeRejected extends Schema.TaggedError<HandshakeRejected>()("HandshakeRejected", {
  status: Schema.Number,
  detail: Schema.String
}) {
  override get message(): string {
    return `handshake rejected with status ${this.status}: ${this.detail}`
  }
}

/**
 * The server selected a sub-protocol the client did not offer, or none
 * although the client requires one (`selected` absent).
 *
 * @category reasons
 * @since 0.1.0
 */
export class ProtocolNotOffered extends Schema.TaggedError<ProtocolNotOffered>()("ProtocolNotOffered", {
  selected: Schema.optional(Schema.String),
  offered: Schema.Array(Schema.String)
}) {
  override get message(): string {
    return this.selected === undefined
      ? `the server selected no sub-protocol (offered: ${this.offered.join(", ")})`
      : `the server selected sub-protocol "${this.selected}", which was not offered (offered: ${
        this.offered.join(", ")
      })`
  }
}

/**
 * The server accepted an extension (or a per-channel extension of
 * `plexus-channels`) the client did not offer.
 *
 * @category reasons
 * @since 0.1.0
 */
export class ExtensionNotOffered extends Schema.TaggedError<ExtensionNotOffered>()("ExtensionNotOffered", {
  extension: Schema.String
}) {
  override get message(): string {
    return `the server accepted extension "${this.extension}", which was not offered`
  }
}

/**
 * A negotiation header or value does not follow its grammar, or exceeds its
 * limits (length, number of entries).
 *
 * @category reasons
 * @since 0.1.0
 */
export class InvalidNegotiation extends Schema.TaggedError<InvalidNegotiation>()("InvalidNegotiation", {
  field: Schema.String,
  detail: Schema.String
}) {
  override get message(): string {
    return `invalid ${this.field}: ${this.detail}`
  }
}

/**
 * A handshake did not complete within its deadline.
 *
 * @category reasons
 * @since 0.1.0
 */
export class HandshakeTimeout extends Schema.TaggedError<HandshakeTimeout>()("HandshakeTimeout", {
  phase: Schema.Literals(["opening", "secondary"]),
  timeoutMillis: Schema.Number,
  closeCode: Schema.optional(Schema.Number)
}) {
  override get message(): string {
    return `${this.phase} handshake not completed within ${this.timeoutMillis} ms`
  }
}

/**
 * The secondary handshake broke docs/spec/handshake.md: a message that is
 * not a request or answer (application data before completion, garbage), a
 * message over the size limit, too many header lines, a bad status. The
 * connection is closed with 1002.
 *
 * @category reasons
 * @since 0.1.0
 */
export class MalformedHandshake extends Schema.TaggedError<MalformedHandshake>()("MalformedHandshake", {
  detail: Schema.String,
  closeCode: Schema.Number
}) {
  override get message(): string {
    return `malformed secondary handshake: ${this.detail}`
  }
}

/**
 * The secondary handshake ended without acceptance: the server answered 401
 * and the client has no (more) credentials to try, or the server refused
 * (403), or the attempts cap was reached. Closed with 1008.
 *
 * @category reasons
 * @since 0.1.0
 */
export class AuthenticationFailed extends Schema.TaggedError<AuthenticationFailed>()("AuthenticationFailed", {
  status: Schema.Number,
  attempts: Schema.Number,
  detail: Schema.String,
  closeCode: Schema.Number
}) {
  override get message(): string {
    return `authentication failed after ${this.attempts} attempt(s) (status ${this.status}): ${this.detail}`
  }
}

/**
 * @category reasons
 * @since 0.1.0
 */
export const WsErrorReason = Schema.Union([
  PayloadTooLarge,
  BufferOverflow,
  HandshakeRejected,
  ProtocolNotOffered,
  ExtensionNotOffered,
  InvalidNegotiation,
  HandshakeTimeout,
  MalformedHandshake,
  AuthenticationFailed
])

/**
 * @category reasons
 * @since 0.1.0
 */
export type WsErrorReason = typeof WsErrorReason.Type

/**
 * A WebSocket transport failure, with the reason.
 *
 * @category errors
 * @since 0.1.0
 */
export class WsError extends Schema.TaggedError<WsError>()("WsError", {
  reason: WsErrorReason
}) {
  override get message(): string {
    return `${this.reason._tag}: ${this.reason.message}`
  }
}

/**
 * @category guards
 * @since 0.1.0
 */
export const isWsError = (u: unknown): u is WsError => Predicate.isTagged(u, "WsError")

/**
 * The `WsError` carried by a Socket's `SocketReadError` / `SocketWriteError`,
 * or the error itself when it already is one.
 *
 * @category accessors
 * @since 0.1.0
 */
export const fromSocketError = (u: unknown): WsError | undefined => {
  if (isWsError(u)) return u
  if (Socket.isSocketError(u)) {
    const reason = u.reason
    if ((reason._tag === "SocketReadError" || reason._tag === "SocketWriteError") && isWsError(reason.cause)) {
      return reason.cause
    }
  }
  return undefined
}

/** Wraps a reason. @internal */
export const make = (reason: WsErrorReason): WsError => new WsError({ reason })

/** A WsError as a reader failure. @internal */
export const asReadError = (error: WsError): Socket.SocketError =>
  new Socket.SocketError({ reason: new Socket.SocketReadError({ cause: error }) })
