/**
 * How a channel's end reads as a WebSocket close event: the close code, the
 * reason and whether the close was clean, from the graceful DESTROY's code
 * or from the `ChannelError` that ended the channel.
 *
 * Channel codes 1000–4999 are WebSocket close codes passed through
 * (docs/spec/channels.md, "Codes"); the spec's own codes map onto the
 * nearest WebSocket meaning, and the event keeps the exact one as
 * `channelCode`.
 *
 * @internal
 */
import { ChannelError, type Channels } from "@plexus/core"

/** @internal */
export interface CloseInfo {
  readonly code: number
  readonly reason: string
  readonly wasClean: boolean
  /** The channel code as sent or received (spec "Codes"), when there was one. */
  readonly channelCode: number | undefined
}


/** The WebSocket limit on a close reason, in UTF-8 bytes. @internal */
export const MAX_REASON_BYTES = 123

const encoder = new TextEncoder()

/** Cuts `text` to at most `MAX_REASON_BYTES` of UTF-8 on a character boundary. @internal */
export const clipReason = (text: string): string => {
  if (encoder.encode(text).length <= MAX_REASON_BYTES) return text
  let out = ""
  let bytes = 0
  for (const ch of text) {
    const size = encoder.encode(ch).length
    if (bytes + size > MAX_REASON_BYTES) break
    out += ch
    bytes += size
  }
  return out
}

/**
 * The code and reason of a graceful end (`Channel.closing`): the peer's
 * DESTROY when the peer closed first, this side's otherwise; without one
 * the end reads as 1005 (no status), as WebSocket reports a close frame
 * without a code.
 *
 * @internal
 */
export const gracefulInfo = (channel: Channels.Channel): CloseInfo => {
  const closing = channel.closing
  if (closing === undefined) return { code: 1005, reason: "", wasClean: true, channelCode: undefined }
  return { code: ChannelError.webSocketCloseCode(closing.code), reason: closing.reason, wasClean: true, channelCode: closing.code }
}

/** The close event of a channel that ended with `error`. @internal */
export const failureInfo = (error: ChannelError.ChannelError): CloseInfo => {
  const reason = error.reason
  switch (reason._tag) {
    case "ChannelClosed":
      return {
        code: ChannelError.webSocketCloseCode(reason.code),
        reason: clipReason(reason.reason !== "" ? reason.reason : ChannelError.codeName(reason.code)),
        wasClean: !reason.aborted,
        channelCode: reason.code
      }
    case "TransportClosed":
      return { code: 1006, reason: clipReason(reason.message), wasClean: false, channelCode: undefined }
    case "GoneAway":
      return { code: 1001, reason: clipReason(reason.message), wasClean: false, channelCode: reason.code }
    case "MessageTooLarge":
      return { code: 1009, reason: clipReason(reason.message), wasClean: false, channelCode: reason.code }
    default: {
      const channelCode = "code" in reason && typeof reason.code === "number" ? reason.code : undefined
      return {
        code: channelCode === undefined ? 1011 : ChannelError.webSocketCloseCode(channelCode),
        reason: clipReason(reason.message),
        wasClean: false,
        channelCode
      }
    }
  }
}
