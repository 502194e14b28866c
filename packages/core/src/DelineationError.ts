/**
 * Errors raised while cutting messages out of a byte stream (decoding) or
 * framing messages for sending (encoding).
 *
 * Every failure is a `DelineationError` whose `reason` says what went wrong.
 * A decoding failure means the byte stream can no longer be trusted: the
 * connection it came from must be closed, since the next message boundary is
 * unknown. Reasons carry enough detail to log and to test against, and never
 * hold the offending bytes themselves.
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"

/**
 * A length field, or a custom parser's answer, is not a usable message
 * length: negative, not an integer, not finite, or shorter than the header
 * that declared it.
 *
 * @category reasons
 * @since 0.1.0
 */
export class InvalidLength extends Schema.TaggedError<InvalidLength>()("InvalidLength", {
  value: Schema.String,
  detail: Schema.String
}) {
  override get message(): string {
    return `invalid message length ${this.value}: ${this.detail}`
  }
}

/**
 * A message (declared, or accumulated while looking for its end) is larger
 * than the configured maximum. Raised before anything of the declared size
 * is allocated.
 *
 * @category reasons
 * @since 0.1.0
 */
export class MessageTooLarge extends Schema.TaggedError<MessageTooLarge>()("MessageTooLarge", {
  size: Schema.Number,
  max: Schema.Number
}) {
  override get message(): string {
    return `message of ${this.size} bytes exceeds the maximum of ${this.max}`
  }
}

/**
 * A user-supplied parser threw, or answered something other than a length,
 * "need more" or a failure code.
 *
 * @category reasons
 * @since 0.1.0
 */
export class ParserFailed extends Schema.TaggedError<ParserFailed>()("ParserFailed", {
  detail: Schema.String,
  code: Schema.optional(Schema.Number),
  cause: Schema.optional(Schema.Defect())
}) {
  override get message(): string {
    return `custom parser failed: ${this.detail}`
  }
}

/**
 * The first byte of a message arrived, and the rest did not arrive before the
 * partial-message deadline.
 *
 * @category reasons
 * @since 0.1.0
 */
export class PartialMessageTimeout extends Schema.TaggedError<PartialMessageTimeout>()("PartialMessageTimeout", {
  buffered: Schema.Number,
  timeoutMillis: Schema.Number
}) {
  override get message(): string {
    return `partial message of ${this.buffered} bytes not completed within ${this.timeoutMillis} ms`
  }
}

/**
 * The byte stream ended cleanly in the middle of a message.
 *
 * @category reasons
 * @since 0.1.0
 */
export class TruncatedMessage extends Schema.TaggedError<TruncatedMessage>()("TruncatedMessage", {
  buffered: Schema.Number
}) {
  override get message(): string {
    return `stream ended with ${this.buffered} bytes of an incomplete message`
  }
}

/**
 * Encoding: a message that carries its own header declares a length that
 * does not match its actual size.
 *
 * @category reasons
 * @since 0.1.0
 */
export class LengthMismatch extends Schema.TaggedError<LengthMismatch>()("LengthMismatch", {
  declared: Schema.Number,
  actual: Schema.Number
}) {
  override get message(): string {
    return `message header declares ${this.declared} bytes but the message has ${this.actual}`
  }
}

/**
 * Encoding: a message contains the delimiter, so framing it would split it
 * in two on the receiving side.
 *
 * @category reasons
 * @since 0.1.0
 */
export class DelimiterInPayload extends Schema.TaggedError<DelimiterInPayload>()("DelimiterInPayload", {
  offset: Schema.Number
}) {
  override get message(): string {
    return `message contains the delimiter at offset ${this.offset}`
  }
}

/**
 * The union of every delineation failure.
 *
 * @category reasons
 * @since 0.1.0
 */
export const DelineationErrorReason = Schema.Union([
  InvalidLength,
  MessageTooLarge,
  ParserFailed,
  PartialMessageTimeout,
  TruncatedMessage,
  LengthMismatch,
  DelimiterInPayload
])

/**
 * @category reasons
 * @since 0.1.0
 */
export type DelineationErrorReason = typeof DelineationErrorReason.Type

/**
 * A delineation failure, with the reason.
 *
 * @category errors
 * @since 0.1.0
 */
export class DelineationError extends Schema.TaggedError<DelineationError>()("DelineationError", {
  reason: DelineationErrorReason
}) {
  override get message(): string {
    return `${this.reason._tag}: ${this.reason.message}`
  }
}
