/**
 * RPC messages over one session stream (docs/spec/rpc.md, Calls over a
 * session): cut out of the byte stream by a 4-byte length prefix, checked
 * against the receiver's limit before anything of the declared size is held.
 */
import type { NonEmptyReadonlyArray } from "effect/Array"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import { Delineation, type DelineationError, type MuxStream, Transport } from "@plexus/core"

/** Parts up to this size are copied into the write in front of them rather than written on their own. */
const SMALL_PART = 256

/** Why reading a stream's next message failed. */
export type ReadFailure =
  | { readonly _tag: "TooLarge"; readonly size: number; readonly max: number }
  | { readonly _tag: "Malformed"; readonly detail: string }
  | { readonly _tag: "Stream"; readonly error: Socket.SocketError }

export interface FramedStream {
  /** The next message, or undefined at the peer's FIN. */
  readonly next: Effect.Effect<Uint8Array | undefined, ReadFailure>
  readonly send: (message: Uint8Array) => Effect.Effect<void, Socket.SocketError>
  /** Sends one message made of parts: the first is copied behind the length prefix, the rest go by reference. */
  readonly sendParts: (parts: ReadonlyArray<Uint8Array>) => Effect.Effect<void, Socket.SocketError>
}

const toFailure = (error: DelineationError.DelineationError): ReadFailure =>
  error.reason._tag === "MessageTooLarge"
    ? { _tag: "TooLarge", size: error.reason.size, max: error.reason.max }
    : { _tag: "Malformed", detail: error.message }

/**
 * Frames the stream, with its reader and writer acquired in the caller's
 * Scope (closing it half-closes the stream, as `closeWrite` does).
 */
export const make = (
  stream: MuxStream.MuxStream,
  maxMessageSize: number
): Effect.Effect<FramedStream, Socket.SocketError, Scope.Scope> =>
  Effect.gen(function*() {
    const delineation = Delineation.lengthPrefix({ maxMessageSize })
    const decoder = delineation.decoder()
    const reader = yield* stream.reader
    const writer = yield* stream.writer
    const queued: Array<Uint8Array> = []
    let ended = false
    const next: Effect.Effect<Uint8Array | undefined, ReadFailure> = Effect.suspend(() => {
      if (queued.length > 0) return Effect.succeed(queued.shift())
      if (ended) return Effect.succeed(undefined)
      return Effect.matchEffect(reader.pull, {
        onFailure: (error): Effect.Effect<Uint8Array | undefined, ReadFailure> => {
          if (Transport.isCleanClose(error)) {
            ended = true
            const truncated = decoder.end()
            return truncated === undefined ? Effect.succeed(undefined) : Effect.fail(toFailure(truncated))
          }
          return Effect.fail({ _tag: "Stream", error })
        },
        onSuccess: (chunks) => {
          for (let i = 0; i < chunks.length; i++) {
            const chunk = chunks[i]
            const failure = decoder.push(typeof chunk === "string" ? Transport.encodeText(chunk) : chunk, queued)
            if (failure !== undefined) return Effect.fail(toFailure(failure))
          }
          return next
        }
      })
    })
    const send = (message: Uint8Array): Effect.Effect<void, Socket.SocketError> =>
      Effect.suspend(() => {
        const frames = delineation.encode([message])
        // The sender checks sizes before it gets here; the prefix holds any
        // length below the limit.
        if (!Array.isArray(frames)) return Effect.die(frames)
        return writer.writeAll(frames as unknown as NonEmptyReadonlyArray<Uint8Array>)
      })
    const sendParts = (parts: ReadonlyArray<Uint8Array>): Effect.Effect<void, Socket.SocketError> =>
      Effect.suspend(() => {
        let length = 0
        for (let i = 0; i < parts.length; i++) length += parts[i].length
        // The small parts in front (the head, a frame header) are copied
        // behind the 4-byte prefix of docs/spec/delineation.md's lengthPrefix.
        let small = 0
        let headLength = 0
        while (small < parts.length && (small === 0 || parts[small].length <= SMALL_PART)) {
          headLength += parts[small].length
          small++
        }
        const first = new Uint8Array(4 + headLength)
        first[0] = length >>> 24
        first[1] = (length >>> 16) & 0xff
        first[2] = (length >>> 8) & 0xff
        first[3] = length & 0xff
        let at = 4
        for (let i = 0; i < small; i++) {
          first.set(parts[i], at)
          at += parts[i].length
        }
        const chunks: Array<Uint8Array> = [first]
        for (let i = small; i < parts.length; i++) chunks.push(parts[i])
        return writer.writeAll(chunks as unknown as NonEmptyReadonlyArray<Uint8Array>)
      })
    return { next, send, sendParts }
  })
