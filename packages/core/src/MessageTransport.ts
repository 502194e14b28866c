/**
 * A `MessageTransport` moves whole messages: `send` one, receive a `Stream`
 * of them, close. It is what KCM, Channels and RPC speak, whatever carries
 * the bytes underneath.
 *
 * Build one from a byte transport (an `effect/socket` `Socket`) plus a
 * `Delineation` that cuts the byte stream into messages, or from a Socket
 * whose frames already are messages (a WebSocket). A message transport lives
 * in the `Scope` it was made in: closing that scope closes it.
 *
 * The received stream has one consumer. It ends when the peer closes cleanly
 * at a message boundary, and fails with a typed error otherwise.
 *
 * @since 0.1.0
 */
import type { NonEmptyReadonlyArray } from "effect/Array"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Predicate from "effect/Predicate"
import type * as Pull from "effect/Pull"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import * as Stream from "effect/Stream"
import type { Delineation } from "./Delineation.ts"
import { DelineationError, PartialMessageTimeout } from "./DelineationError.ts"
import * as Transport from "./Transport.ts"

/**
 * @category type IDs
 * @since 0.1.0
 */
export const TypeId = "~@plexus/core/MessageTransport"

/**
 * @category type IDs
 * @since 0.1.0
 */
export type TypeId = typeof TypeId

/**
 * The errors of a message transport built on a Socket: the Socket's own, and
 * the delineation's.
 *
 * @category errors
 * @since 0.1.0
 */
export type MessageTransportError = Socket.SocketError | DelineationError

/**
 * Whole messages over some connection.
 *
 * @category models
 * @since 0.1.0
 */
export interface MessageTransport<E = MessageTransportError> {
  readonly [TypeId]: TypeId
  /**
   * Sends one message. Suspends while the transport applies backpressure.
   * Concurrent sends are never interleaved on the wire.
   */
  readonly send: (message: Uint8Array) => Effect.Effect<void, E>
  /**
   * Sends several messages, in order, in as few writes as the transport
   * allows.
   */
  readonly sendAll: (messages: ReadonlyArray<Uint8Array>) => Effect.Effect<void, E>
  /**
   * The next batch of received messages, in order. Fails with `Cause.Done`
   * when the peer closed cleanly at a message boundary. For hot loops;
   * `messages` is the same data as a `Stream`.
   */
  readonly pull: Pull.Pull<NonEmptyReadonlyArray<Uint8Array>, E>
  /**
   * Received messages. Single consumer: pulling from two places splits the
   * messages between them.
   */
  readonly messages: Stream.Stream<Uint8Array, E>
  /**
   * Ends the sending side: the peer's stream of messages ends after the
   * messages already sent, while messages from the peer keep arriving where
   * the transport can half-close (a byte stream); over a WebSocket it starts
   * the closing handshake. Idempotent.
   */
  readonly close: Effect.Effect<void>
  /**
   * Ends the transport with a close code, where the transport carries one
   * (a WebSocket: 1002 after a protocol error, say). Absent where it does
   * not: use `close`.
   */
  readonly closeWith?: ((code: number, reason?: string) => Effect.Effect<void>) | undefined
}

/**
 * @category guards
 * @since 0.1.0
 */
export const isMessageTransport = (u: unknown): u is MessageTransport<unknown> => Predicate.hasProperty(u, TypeId)

/**
 * Builds a message transport from its parts. `messages` is derived from
 * `pull`.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make = <E>(options: {
  readonly send: (message: Uint8Array) => Effect.Effect<void, E>
  readonly sendAll?: ((messages: ReadonlyArray<Uint8Array>) => Effect.Effect<void, E>) | undefined
  readonly pull: Pull.Pull<NonEmptyReadonlyArray<Uint8Array>, E>
  readonly close: Effect.Effect<void>
  readonly closeWith?: ((code: number, reason?: string) => Effect.Effect<void>) | undefined
}): MessageTransport<E> => ({
  [TypeId]: TypeId,
  send: options.send,
  sendAll: options.sendAll ?? ((messages) => Effect.forEach(messages, options.send, { discard: true })),
  pull: options.pull,
  messages: Stream.fromPull(Effect.succeed(options.pull)),
  close: options.close,
  closeWith: options.closeWith
})

/**
 * Cuts a byte transport into messages with a delineation, and frames sent
 * messages the same way.
 *
 * Copy-free where the bytes allow: a message that arrives inside one chunk
 * is handed on as a `subarray` of that chunk; only messages split across
 * chunks are copied, once. A decoding failure fails the stream and closes
 * the connection, since the next message boundary is unknown.
 *
 * @category constructors
 * @since 0.1.0
 */
export const fromSocket = (
  socket: Socket.Socket,
  delineation: Delineation
): Effect.Effect<MessageTransport, Socket.SocketError, Scope.Scope> =>
  Effect.gen(function*() {
    const reader = yield* socket.reader
    // The writer lives in a scope of its own so that `close` can release it
    // alone: a half-close, while messages from the peer keep arriving.
    const writeScope = yield* Scope.fork(yield* Effect.scope)
    const writer = yield* Scope.provide(socket.writer, writeScope)
    const decoder = delineation.decoder()
    const timeout = delineation.partialTimeout === undefined
      ? undefined
      : Duration.toMillis(delineation.partialTimeout)
    let partialSince = 0
    let failure: MessageTransportError | undefined
    let ended = false
    let closed = false

    const fail = (error: MessageTransportError) => {
      failure = error
      if (!closed) {
        closed = true
        return Effect.andThen(
          Effect.ignore(writer.write(new Socket.CloseEvent(1002, error.message))),
          Effect.fail(error)
        )
      }
      return Effect.fail(error)
    }

    const readChunk: Effect.Effect<NonEmptyReadonlyArray<Uint8Array | string>, Socket.SocketError | DelineationError> =
      Effect.suspend(() => {
        if (timeout === undefined || !decoder.partial) return reader.pull
        return Effect.flatMap(Clock.currentTimeMillis, (now) => {
          const remaining = partialSince + timeout - now
          const timedOut = () =>
            new DelineationError({
              reason: new PartialMessageTimeout({ buffered: decoder.buffered, timeoutMillis: timeout })
            })
          if (remaining <= 0) return Effect.fail(timedOut())
          return Effect.timeoutOrElse(reader.pull, {
            duration: Duration.millis(remaining),
            orElse: () => Effect.fail(timedOut())
          })
        })
      })

    const pull: Pull.Pull<NonEmptyReadonlyArray<Uint8Array>, MessageTransportError> = Effect.suspend(() => {
      if (failure !== undefined) return Effect.fail(failure)
      if (ended) return Cause.done()
      const out: Array<Uint8Array> = []
      const loop: Pull.Pull<NonEmptyReadonlyArray<Uint8Array>, MessageTransportError> = Effect.matchEffect(readChunk, {
        onFailure: (error): Pull.Pull<never, MessageTransportError> => {
          if (Transport.isCleanClose(error)) {
            const truncated = decoder.end()
            if (truncated !== undefined) return fail(truncated)
            ended = true
            return Cause.done()
          }
          return fail(error)
        },
        onSuccess: (chunks) => Effect.suspend(() => {
          const wasPartial = decoder.partial
          for (let i = 0; i < chunks.length; i++) {
            const chunk = chunks[i]
            const error = decoder.push(typeof chunk === "string" ? Transport.encodeText(chunk) : chunk, out)
            if (error !== undefined) return fail(error)
          }
          // A message in progress starts its deadline at its first byte.
          const fresh = timeout !== undefined && decoder.partial && (!wasPartial || out.length > 0)
          const next = out.length > 0 ? Effect.succeed(out as unknown as NonEmptyReadonlyArray<Uint8Array>) : loop
          return fresh ? Effect.andThen(markPartial, next) : next
        })
      })
      return loop
    })

    const markPartial = Effect.map(Clock.currentTimeMillis, (now) => {
      partialSince = now
    })

    const send = (message: Uint8Array): Effect.Effect<void, MessageTransportError> => {
      const frames = delineation.encode([message])
      return frames instanceof DelineationError ? Effect.fail(frames) : writer.writeAll(frames)
    }
    const sendAll = (messages: ReadonlyArray<Uint8Array>): Effect.Effect<void, MessageTransportError> => {
      if (messages.length === 0) return Effect.void
      const frames = delineation.encode(messages)
      return frames instanceof DelineationError ? Effect.fail(frames) : writer.writeAll(frames)
    }
    const close = Effect.suspend(() => {
      if (closed) return Effect.void
      closed = true
      return Scope.close(writeScope, Exit.void)
    })

    return make({ send, sendAll, pull, close })
  })

/**
 * A message transport over a Socket whose frames are whole messages (a
 * WebSocket): each frame is one message; text frames are encoded as UTF-8.
 * Frames larger than `maxMessageSize` fail the stream.
 *
 * @category constructors
 * @since 0.1.0
 */
export const fromFramedSocket = (
  socket: Socket.Socket,
  options?: { readonly maxMessageSize?: number | undefined }
): Effect.Effect<MessageTransport<Socket.SocketError | DelineationError>, Socket.SocketError, Scope.Scope> =>
  Effect.gen(function*() {
    const reader = yield* socket.reader
    const writer = yield* socket.writer
    const max = options?.maxMessageSize ?? Number.MAX_SAFE_INTEGER
    let ended = false
    let closed = false
    const pull: Pull.Pull<NonEmptyReadonlyArray<Uint8Array>, MessageTransportError> = Effect.suspend(() =>
      ended ? Cause.done() : Effect.matchEffect(reader.pull, {
        onFailure: (error): Pull.Pull<never, MessageTransportError> => {
          if (Transport.isCleanClose(error)) {
            ended = true
            return Cause.done()
          }
          return Effect.fail(error)
        },
        onSuccess: (frames) => {
          const out = new Array<Uint8Array>(frames.length)
          for (let i = 0; i < frames.length; i++) {
            const frame = frames[i]
            const bytes = typeof frame === "string" ? Transport.encodeText(frame) : frame
            if (bytes.length > max) return Effect.fail(Transport.tooLarge(bytes.length, max))
            out[i] = bytes
          }
          return Effect.succeed(out as unknown as NonEmptyReadonlyArray<Uint8Array>)
        }
      })
    )
    const send = (message: Uint8Array) => writer.write(message)
    const sendAll = (messages: ReadonlyArray<Uint8Array>) =>
      messages.length === 0 ? Effect.void : writer.writeAll(messages as NonEmptyReadonlyArray<Uint8Array>)
    const closeWith = (code: number, reason?: string) =>
      Effect.suspend(() => {
        if (closed) return Effect.void
        closed = true
        return Effect.ignore(writer.write(new Socket.CloseEvent(code, reason)))
      })
    return make({ send, sendAll, pull, close: closeWith(1000), closeWith })
  })
