/**
 * Errors of a KCM multiplexor: why a send failed, and why a transport left
 * the pool.
 *
 * A send fails with `KcmError`. Its reason says whether the message may
 * have reached the peer: only `MessageCutOff` means "perhaps"; every other
 * reason means the message was never started on any transport, so sending
 * it again cannot duplicate it (`retryable`).
 *
 * A transport that leaves the pool is reported on the multiplexor's event
 * stream with a `DetachReason`.
 *
 * @since 0.1.0
 */
import type * as Socket from "effect/socket/Socket"
import * as Schema from "effect/Schema"
import type { DelineationError as DelineationErrorModule } from "@plexus/core"

type DelineationError = DelineationErrorModule.DelineationError

/**
 * The multiplexor (or the message socket) is closed.
 *
 * @category reasons
 * @since 0.1.0
 */
export class MuxClosed extends Schema.TaggedError<MuxClosed>()("MuxClosed", {}) {
  override get message(): string {
    return "the multiplexor is closed"
  }
}

/**
 * No transport took the message from the queue within the send timeout.
 * The message was never started.
 *
 * @category reasons
 * @since 0.1.0
 */
export class SendTimeout extends Schema.TaggedError<SendTimeout>()("SendTimeout", {
  timeoutMillis: Schema.Number,
  attached: Schema.Number
}) {
  override get message(): string {
    return `no transport was free within ${this.timeoutMillis} ms (${this.attached} attached)`
  }
}

/**
 * The message cannot be framed by the delineation (too large, or it would
 * contain the delimiter). Nothing was written.
 *
 * @category reasons
 * @since 0.1.0
 */
export class Unframeable extends Schema.TaggedError<Unframeable>()("Unframeable", {
  detail: Schema.String
}) {
  override get message(): string {
    return `cannot frame the message: ${this.detail}`
  }
}

/**
 * The transport failed while the message was being written: part of it may
 * have reached the peer, which cannot have parsed it as a whole message
 * unless all of it did. It is not sent again.
 *
 * @category reasons
 * @since 0.1.0
 */
export class MessageCutOff extends Schema.TaggedError<MessageCutOff>()("MessageCutOff", {
  transportId: Schema.Number,
  detail: Schema.String
}) {
  override get message(): string {
    return `transport ${this.transportId} failed while the message was written: ${this.detail}`
  }
}

/**
 * @category models
 * @since 0.1.0
 */
export const KcmErrorReason = Schema.Union([MuxClosed, SendTimeout, Unframeable, MessageCutOff])

/**
 * @category models
 * @since 0.1.0
 */
export type KcmErrorReason = typeof KcmErrorReason.Type

/**
 * Why a send failed; see the module header for which reasons are safe to
 * retry.
 *
 * @category errors
 * @since 0.1.0
 */
export class KcmError extends Schema.TaggedError<KcmError>()("KcmError", {
  reason: KcmErrorReason
}) {
  override get message(): string {
    return this.reason.message
  }
  /** True when the message provably never left this side. */
  get retryable(): boolean {
    return this.reason._tag !== "MessageCutOff"
  }
}

/**
 * Why a transport left the pool.
 *
 * - `Requested`: `detach` (or the attaching scope closed); nothing lost.
 * - `PeerClosed`: the peer ended the byte stream at a message boundary.
 * - `TransportFailed`: the byte transport failed (reset, abort, write error).
 * - `Delineation`: the byte stream cannot be parsed any more (too large, a
 *   lying length, a parser failure, a partial message past its deadline,
 *   the stream ending mid-message).
 * - `PartialBudget`: this transport's incomplete message pushed the pool's
 *   partial bytes over their budget.
 * - `SendInterrupted`: a sender was interrupted while writing its message
 *   on it itself (not one queued, nor one in a batch being written), so
 *   the byte stream may hold part of a message.
 * - `MuxClosed`: the multiplexor closed.
 *
 * @category models
 * @since 0.1.0
 */
export type DetachReason =
  | { readonly _tag: "Requested" }
  | { readonly _tag: "PeerClosed" }
  | { readonly _tag: "TransportFailed"; readonly error: Socket.SocketError }
  | { readonly _tag: "Delineation"; readonly error: DelineationError }
  | { readonly _tag: "PartialBudget"; readonly buffered: number; readonly budget: number }
  | { readonly _tag: "SendInterrupted" }
  | { readonly _tag: "MuxClosed" }

/**
 * A short text for a detach reason.
 *
 * @category formatting
 * @since 0.1.0
 */
export const describeDetach = (reason: DetachReason): string => {
  switch (reason._tag) {
    case "Requested":
      return "detached on request"
    case "PeerClosed":
      return "the peer closed the connection"
    case "TransportFailed":
      return `transport failed: ${reason.error.message}`
    case "Delineation":
      return `unparseable byte stream: ${reason.error.message}`
    case "PartialBudget":
      return `partial messages over budget (${reason.buffered} > ${reason.budget} bytes)`
    case "SendInterrupted":
      return "a send was interrupted mid-message"
    case "MuxClosed":
      return "the multiplexor closed"
  }
}
