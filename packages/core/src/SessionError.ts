/**
 * Errors of a multiplexed session and of its streams (docs/spec/mux.md).
 *
 * `SessionError` ends a whole session or refuses an operation on it;
 * `StreamError` ends one stream. A stream is an `effect/socket` Socket, so
 * on its reader and writer a `StreamError` arrives wrapped in the Socket's
 * own `SocketError` (as the cause of a `SocketReadError` or
 * `SocketWriteError`): `MuxStream.streamError(e)` unwraps it. Reasons that
 * go on the wire carry the code sent or received.
 *
 * `retryable` is true only when the peer provably never processed the
 * stream: it was refused before the application saw it, or it was above the
 * last stream id of a GO_AWAY, or it never left this side.
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"

/**
 * The peer broke the wire protocol: the session ends with PROTOCOL_ERROR
 * (or the code given).
 *
 * @category reasons
 * @since 0.1.0
 */
export class ProtocolViolation extends Schema.TaggedError<ProtocolViolation>()("ProtocolViolation", {
  detail: Schema.String,
  offset: Schema.optional(Schema.Number),
  code: Schema.Number
}) {
  override get message(): string {
    return this.offset === undefined ? this.detail : `${this.detail} (at byte ${this.offset})`
  }
}

/**
 * A limit was exceeded: by the peer (a flood, a queue it made us fill) or by
 * the application (too many streams).
 *
 * @category reasons
 * @since 0.1.0
 */
export class LimitExceeded extends Schema.TaggedError<LimitExceeded>()("LimitExceeded", {
  limit: Schema.String,
  value: Schema.Number,
  max: Schema.Number
}) {
  override get message(): string {
    return `${this.limit}: ${this.value} exceeds ${this.max}`
  }
}

/**
 * The peer sent GO_AWAY, or this side is closing: no new streams.
 *
 * @category reasons
 * @since 0.1.0
 */
export class GoneAway extends Schema.TaggedError<GoneAway>()("GoneAway", {
  code: Schema.Number,
  lastStreamId: Schema.optional(Schema.Number),
  byPeer: Schema.Boolean,
  reason: Schema.optional(Schema.String)
}) {
  override get message(): string {
    return `session ${this.byPeer ? "closed by the peer" : "closing"} (code ${this.code}${
      this.reason ? `: ${this.reason}` : ""
    })`
  }
}

/**
 * No answer to a keepalive ping within the deadline: the peer is gone.
 *
 * @category reasons
 * @since 0.1.0
 */
export class KeepaliveTimeout extends Schema.TaggedError<KeepaliveTimeout>()("KeepaliveTimeout", {
  timeoutMillis: Schema.Number
}) {
  override get message(): string {
    return `no ping answer within ${this.timeoutMillis} ms`
  }
}

/**
 * A stream could not be opened in time (the peer's backlog stayed full, or
 * the concurrent stream limit was reached).
 *
 * @category reasons
 * @since 0.1.0
 */
export class OpenTimeout extends Schema.TaggedError<OpenTimeout>()("OpenTimeout", {
  timeoutMillis: Schema.Number
}) {
  override get message(): string {
    return `stream not opened within ${this.timeoutMillis} ms`
  }
}

/**
 * This side has used its last stream id; it sent GO_AWAY.
 *
 * @category reasons
 * @since 0.1.0
 */
export class StreamIdsExhausted extends Schema.TaggedError<StreamIdsExhausted>()("StreamIdsExhausted", {
  lastStreamId: Schema.Number
}) {
  override get message(): string {
    return `no stream ids left after ${this.lastStreamId}`
  }
}

/**
 * The codec cannot carry what was asked (a stream type over yamux).
 *
 * @category reasons
 * @since 0.1.0
 */
export class UnsupportedByCodec extends Schema.TaggedError<UnsupportedByCodec>()("UnsupportedByCodec", {
  codec: Schema.String,
  feature: Schema.String
}) {
  override get message(): string {
    return `the ${this.codec} codec cannot carry ${this.feature}`
  }
}

/**
 * The transport under the session failed or closed.
 *
 * @category reasons
 * @since 0.1.0
 */
export class TransportClosed extends Schema.TaggedError<TransportClosed>()("TransportClosed", {
  detail: Schema.String,
  cause: Schema.optional(Schema.Defect())
}) {
  override get message(): string {
    return `transport closed: ${this.detail}`
  }
}

/**
 * @category reasons
 * @since 0.1.0
 */
export const SessionErrorReason = Schema.Union([
  ProtocolViolation,
  LimitExceeded,
  GoneAway,
  KeepaliveTimeout,
  OpenTimeout,
  StreamIdsExhausted,
  UnsupportedByCodec,
  TransportClosed
])

/**
 * @category reasons
 * @since 0.1.0
 */
export type SessionErrorReason = typeof SessionErrorReason.Type

/**
 * A session ended, or refused an operation.
 *
 * @category errors
 * @since 0.1.0
 */
export class SessionError extends Schema.TaggedError<SessionError>()("SessionError", {
  reason: SessionErrorReason,
  retryable: Schema.Boolean
}) {
  override get message(): string {
    return `${this.reason._tag}: ${this.reason.message}${this.retryable ? " (safe to retry)" : ""}`
  }
}

/**
 * The stream was reset, by the peer or locally, with a code.
 *
 * @category reasons
 * @since 0.1.0
 */
export class StreamReset extends Schema.TaggedError<StreamReset>()("StreamReset", {
  code: Schema.Number,
  byPeer: Schema.Boolean
}) {
  override get message(): string {
    return `stream reset ${this.byPeer ? "by the peer" : "locally"} with code ${this.code}`
  }
}

/**
 * The peer refused the stream before processing it.
 *
 * @category reasons
 * @since 0.1.0
 */
export class StreamRefused extends Schema.TaggedError<StreamRefused>()("StreamRefused", {
  code: Schema.Number
}) {
  override get message(): string {
    return `stream refused with code ${this.code}`
  }
}

/**
 * The session ended under the stream.
 *
 * @category reasons
 * @since 0.1.0
 */
export class SessionEnded extends Schema.TaggedError<SessionEnded>()("SessionEnded", {
  error: SessionError
}) {
  override get message(): string {
    return this.error.message
  }
}

/**
 * @category reasons
 * @since 0.1.0
 */
export const StreamErrorReason = Schema.Union([StreamReset, StreamRefused, SessionEnded])

/**
 * @category reasons
 * @since 0.1.0
 */
export type StreamErrorReason = typeof StreamErrorReason.Type

/**
 * A stream ended abruptly.
 *
 * @category errors
 * @since 0.1.0
 */
export class StreamError extends Schema.TaggedError<StreamError>()("StreamError", {
  streamId: Schema.Number,
  reason: StreamErrorReason,
  retryable: Schema.Boolean
}) {
  override get message(): string {
    return `stream ${this.streamId}: ${this.reason.message}${this.retryable ? " (safe to retry)" : ""}`
  }
}
