/**
 * Why a call failed below the RPC layer (docs/spec/rpc.md, Retry safety):
 * the carrier refused it, lost it, cut it off at its deadline, or could not
 * carry it. `retryable` is true only when the server provably never started
 * the call, so sending it again cannot run it twice.
 *
 * effect/rpc clients fail with `RpcClientError`, whose reasons are a closed
 * set; plexus puts its `RpcTransportError` inside one of them (a
 * `SocketOpenError` when the call never left, a `SocketReadError`
 * otherwise). `fromClientError(e)` unwraps it.
 *
 * @since 0.1.0
 */
import * as Predicate from "effect/Predicate"
import { RpcClientError } from "effect/rpc/RpcClientError"
import * as Schema from "effect/Schema"
import * as Socket from "effect/socket/Socket"

/**
 * The server refused the call before starting it: it is draining, over its
 * concurrent-call limit, or its session went away before the stream was
 * accepted.
 *
 * @category reasons
 * @since 0.1.0
 */
export class Refused extends Schema.TaggedError<Refused>()("Refused", {
  detail: Schema.String,
  /** The reset or GO_AWAY code that said so, on a session. */
  code: Schema.optional(Schema.Number)
}) {
  override get message(): string {
    return `call refused: ${this.detail}`
  }
}

/**
 * The call never left this side: no session or transport could take it.
 *
 * @category reasons
 * @since 0.1.0
 */
export class NotSent extends Schema.TaggedError<NotSent>()("NotSent", {
  detail: Schema.String,
  cause: Schema.optional(Schema.Defect())
}) {
  override get message(): string {
    return `call not sent: ${this.detail}`
  }
}

/**
 * The connection or stream failed after the request left: the handler may
 * have run.
 *
 * @category reasons
 * @since 0.1.0
 */
export class ConnectionLost extends Schema.TaggedError<ConnectionLost>()("ConnectionLost", {
  detail: Schema.String,
  /** The reset code, when the stream was reset. */
  code: Schema.optional(Schema.Number),
  cause: Schema.optional(Schema.Defect())
}) {
  override get message(): string {
    return `connection lost during the call: ${this.detail}`
  }
}

/**
 * The call's deadline passed: the server interrupted the handler (or the
 * client stopped waiting after the deadline and its grace period).
 *
 * @category reasons
 * @since 0.1.0
 */
export class DeadlineExceeded extends Schema.TaggedError<DeadlineExceeded>()("DeadlineExceeded", {
  timeoutMillis: Schema.Number,
  /** Whether the server said so (DEADLINE / DEADLINE_EXCEEDED), or only the client's backstop fired. */
  byServer: Schema.Boolean
}) {
  override get message(): string {
    return `deadline of ${this.timeoutMillis} ms exceeded${this.byServer ? "" : " (no answer from the server)"}`
  }
}

/**
 * The server ended the call without an answer: it shut down past its drain
 * deadline.
 *
 * @category reasons
 * @since 0.1.0
 */
export class Aborted extends Schema.TaggedError<Aborted>()("Aborted", {
  detail: Schema.String
}) {
  override get message(): string {
    return `call aborted by the server: ${this.detail}`
  }
}

/**
 * A message above the limit: the request (checked before sending) or a
 * response message (which resets the call).
 *
 * @category reasons
 * @since 0.1.0
 */
export class MessageTooLarge extends Schema.TaggedError<MessageTooLarge>()("MessageTooLarge", {
  size: Schema.Number,
  max: Schema.Number
}) {
  override get message(): string {
    return `RPC message of ${this.size} bytes exceeds ${this.max}`
  }
}

/**
 * The peer broke docs/spec/rpc.md: an unparseable message, a stream that
 * ended without an Exit.
 *
 * @category reasons
 * @since 0.1.0
 */
export class ProtocolViolation extends Schema.TaggedError<ProtocolViolation>()("ProtocolViolation", {
  detail: Schema.String
}) {
  override get message(): string {
    return `RPC protocol violation: ${this.detail}`
  }
}

/**
 * @category reasons
 * @since 0.1.0
 */
export const RpcTransportErrorReason = Schema.Union([
  Refused,
  NotSent,
  ConnectionLost,
  DeadlineExceeded,
  Aborted,
  MessageTooLarge,
  ProtocolViolation
])

/**
 * @category reasons
 * @since 0.1.0
 */
export type RpcTransportErrorReason = typeof RpcTransportErrorReason.Type

/**
 * A call failed in its carrier.
 *
 * @category errors
 * @since 0.1.0
 */
export class RpcTransportError extends Schema.TaggedError<RpcTransportError>()("RpcTransportError", {
  reason: RpcTransportErrorReason,
  /** The server provably never started the call. */
  retryable: Schema.Boolean
}) {
  override get message(): string {
    return `${this.reason._tag}: ${this.reason.message}${this.retryable ? " (safe to retry)" : ""}`
  }
}

/**
 * @category guards
 * @since 0.1.0
 */
export const isRpcTransportError = (u: unknown): u is RpcTransportError =>
  Predicate.isTagged(u, "RpcTransportError") && u instanceof RpcTransportError

/**
 * Wraps the error as effect/rpc's `RpcClientError`, which is what generated
 * clients fail with.
 *
 * @category conversions
 * @since 0.1.0
 */
export const toClientError = (error: RpcTransportError): RpcClientError =>
  new RpcClientError({
    reason: error.retryable
      ? new Socket.SocketOpenError({ kind: "Unknown", cause: error })
      : new Socket.SocketReadError({ cause: error })
  })

/**
 * The `RpcTransportError` inside an `RpcClientError` (or the error itself).
 *
 * @category conversions
 * @since 0.1.0
 */
export const fromClientError = (u: unknown): RpcTransportError | undefined => {
  if (isRpcTransportError(u)) return u
  if (!Predicate.isTagged(u, "RpcClientError")) return undefined
  const reason = (u as RpcClientError).reason
  if (reason._tag === "SocketOpenError" || reason._tag === "SocketReadError") {
    return isRpcTransportError(reason.cause) ? reason.cause : undefined
  }
  return undefined
}
