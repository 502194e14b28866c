/**
 * A `MuxStream` is one full-duplex byte stream of a `Session`. It is an
 * `effect/socket` `Socket`, so any code written for a Socket (effect/rpc's
 * socket protocol among it) runs over it unchanged, and
 * `NodeDuplex.fromMuxStream` (from `@plexus/core/node`) adapts it to a Node
 * `Duplex` for Node libraries.
 *
 * It follows plexus's byte transport conventions: releasing the writer's
 * scope half-closes (FIN); the peer's FIN ends the reader with close code
 * 1000 after the data; `write(CloseEvent(1000))` closes both ways
 * gracefully; any other close code resets the stream. A reset, a refusal or
 * the end of the session fail the reader and writer with a `SocketError`
 * whose cause is a typed `StreamError`: `streamError(e)` unwraps it, and its
 * `retryable` says whether the peer provably never processed the stream.
 * The stream belongs to the Scope it was opened or accepted in: closing that
 * scope resets it (code CANCEL) if its write side is still open, and
 * otherwise lets it finish (queued data and FIN go out; what the peer still
 * sends is dropped). To cancel a stream whose write side is closed, `reset`.
 *
 * @since 0.1.0
 */
import type { NonEmptyReadonlyArray } from "effect/Array"
import * as Effect from "effect/Effect"
import * as Predicate from "effect/Predicate"
import * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import { CODE_CANCEL, type Engine, type StreamFailure, type StreamState } from "./internal/muxEngine.ts"
import { type SessionError, SessionEnded, StreamError, StreamRefused, StreamReset } from "./SessionError.ts"
import * as Transport from "./Transport.ts"

/**
 * @category type IDs
 * @since 0.1.0
 */
export const TypeId = "~@plexus/core/MuxStream"

/**
 * @category models
 * @since 0.1.0
 */
export interface MuxStream extends Socket.Socket {
  readonly [TypeId]: typeof TypeId
  /** The stream id on the wire. */
  readonly id: number
  /** The stream type it was opened with (0: untyped). */
  readonly type: number
  /** Whether this side opened it. */
  readonly outbound: boolean
  /** Resets the stream with a code (default CANCEL): both directions end now. */
  readonly reset: (code?: number) => Effect.Effect<void>
  /** Half-closes: sends FIN after what is queued. */
  readonly closeWrite: Effect.Effect<void>
  /** Changes the stream's urgency (0 most urgent … 7), RFC 9218 style. */
  readonly setPriority: (urgency: number, incremental?: boolean) => Effect.Effect<void>
  /** How the stream failed, if it did. */
  readonly failure: Effect.Effect<StreamError | undefined>
  /**
   * Waits until the stream fails (a reset by either side, a refusal, the
   * end of the session) and answers how; at once if it already has. Works
   * whatever the read and write sides do, so a side that read the peer's
   * FIN still learns of a later reset (a server running a request whose
   * client cancelled it). Never completes for a stream that ends cleanly:
   * interrupt it.
   */
  readonly failed: Effect.Effect<StreamError>
  /**
   * Reads into memory of the caller's: copies what has arrived, up to
   * `target.length` bytes, into `target` (waiting until something has) and
   * answers how many; 0 at the end of the stream (the peer's FIN, once
   * everything before it was read), and at once for an empty `target`. A
   * reset, a refusal or the end of the session fail it as they fail the
   * reader. Where the reader hands over fresh memory for every chunk, a
   * loop over one reused `target` allocates nothing per read: the way to
   * move bulk data. From the first call on, the stream keeps what arrives
   * in a buffer of its own (the size of its receive window); the reader
   * still works, and gets copies.
   */
  readonly readInto: (target: Uint8Array) => Effect.Effect<number, Socket.SocketError>
}

/**
 * @category guards
 * @since 0.1.0
 */
export const isMuxStream = (u: unknown): u is MuxStream => Predicate.hasProperty(u, TypeId)

/**
 * The typed stream error inside a stream's `SocketError`, if there is one.
 *
 * @category errors
 * @since 0.1.0
 */
export const streamError = (u: unknown): StreamError | undefined => {
  if (u instanceof StreamError) return u
  if (!Socket.isSocketError(u)) return undefined
  const reason = u.reason
  if ((reason._tag === "SocketReadError" || reason._tag === "SocketWriteError") && reason.cause instanceof StreamError) {
    return reason.cause
  }
  return undefined
}

const encoder = new TextEncoder()

// Made once: building a SocketError (a validated Schema error with a stack)
// on every end of stream cost more than the stream itself.
const endOfStream = Transport.closedError(Transport.CLOSE_NORMAL)
const readerClosed = Transport.closedError(Transport.CLOSE_ABNORMAL, "reader closed")

/** @internal */
export const toStreamError = (
  id: number,
  failure: StreamFailure,
  sessionError: () => SessionError | undefined
): StreamError => {
  if (failure.kind === "session") {
    const error = sessionError()
    if (error !== undefined) {
      return new StreamError({
        streamId: id,
        reason: new SessionEnded({ error }),
        retryable: failure.retryable || error.retryable
      })
    }
  }
  const reason = failure.kind === "refused"
    ? new StreamRefused({ code: failure.code })
    : new StreamReset({ code: failure.code, byPeer: failure.byPeer })
  return new StreamError({ streamId: id, reason, retryable: failure.retryable })
}

/** @internal */
export class MuxStreamImpl implements MuxStream {
  get [TypeId](): typeof TypeId {
    return TypeId
  }
  get [Socket.TypeId](): typeof Socket.TypeId {
    return Socket.TypeId
  }
  readonly state: StreamState
  readonly engine: Engine
  private readonly sessionError: () => SessionError | undefined
  private error: StreamError | undefined = undefined

  constructor(state: StreamState, engine: Engine, sessionError: () => SessionError | undefined) {
    this.state = state
    this.engine = engine
    this.sessionError = sessionError
  }

  get id(): number {
    return this.state.id
  }

  get type(): number {
    return this.state.type
  }

  get outbound(): boolean {
    return this.state.outbound
  }

  /** The typed error for the stream's failure (made once). */
  typedError(): StreamError | undefined {
    const failure = this.state.failure
    if (failure === undefined) return undefined
    return this.error ??= toStreamError(this.state.id, failure, this.sessionError)
  }

  private readFailure(): Socket.SocketError {
    return new Socket.SocketError({ reason: new Socket.SocketReadError({ cause: this.typedError() }) })
  }

  private writeFailure(): Socket.SocketError {
    return new Socket.SocketError({ reason: new Socket.SocketWriteError({ cause: this.typedError() }) })
  }

  // Reading ---------------------------------------------------------------
  // Effects are built on demand, not held per stream: an idle stream is
  // just its state.

  private waitRead(): Effect.Effect<void> {
    return Effect.callback<void>((resume) => {
      this.state.readWaker = () => resume(Effect.void)
      return Effect.sync(() => {
        this.state.readWaker = undefined
      })
    })
  }

  /** The next batch of bytes, or the end. */
  pull(): Effect.Effect<NonEmptyReadonlyArray<Uint8Array>, Socket.SocketError> {
    return Effect.suspend(() => {
      const state = this.state
      const chunks = this.engine.takeReceived(state)
      if (chunks !== undefined) return Effect.succeed(chunks as unknown as NonEmptyReadonlyArray<Uint8Array>)
      if (this.closedReader) {
        this.closedReader = false
        return Effect.fail(readerClosed)
      }
      if (state.failure !== undefined) return Effect.fail(this.readFailure())
      if (state.remoteFin || state.readClosed) return Effect.fail(endOfStream)
      return Effect.andThen(this.waitRead(), this.pull())
    })
  }

  readInto(target: Uint8Array): Effect.Effect<number, Socket.SocketError> {
    return Effect.suspend(() => {
      if (target.length === 0) return Effect.succeed(0)
      const state = this.state
      const n = this.engine.readInto(state, target)
      if (n > 0) return Effect.succeed(n)
      if (state.failure !== undefined) return Effect.fail(this.readFailure())
      if (state.remoteFin || state.readClosed) return Effect.succeed(0)
      return Effect.andThen(this.waitRead(), this.readInto(target))
    })
  }

  private closedReader = false

  get reader(): Effect.Effect<Socket.Reader, Socket.SocketError, Scope.Scope> {
    return Effect.flatMap(Effect.scope, (scope) =>
      Effect.as(
        Scope.addFinalizer(
          scope,
          Effect.sync(() => {
            // Closing the reader's scope fails a pull that is waiting.
            const waker = this.state.readWaker
            this.state.readWaker = undefined
            if (waker !== undefined) {
              this.closedReader = true
              waker()
            }
          })
        ),
        { pull: this.pull(), upgrade: Socket.SocketUpgradeError.unsupported }
      ))
  }

  // Writing ---------------------------------------------------------------

  private waitWrite(): Effect.Effect<void> {
    return Effect.callback<void>((resume) => {
      const waker = () => resume(Effect.void)
      const list = this.state.writeWakers ??= []
      list.push(waker)
      return Effect.sync(() => {
        const i = list.indexOf(waker)
        if (i >= 0) list.splice(i, 1)
      })
    })
  }

  private canWrite(): Socket.SocketError | undefined {
    const state = this.state
    if (state.failure !== undefined) return this.writeFailure()
    if (state.localFin) {
      return new Socket.SocketError({ reason: new Socket.SocketWriteError({ cause: new Error("write side closed") }) })
    }
    return undefined
  }

  /** Waits while the stream's send buffer is full. */
  private backpressure(): Effect.Effect<void, Socket.SocketError> {
    return Effect.suspend(() => {
      const state = this.state
      if (state.failure !== undefined) return Effect.fail(this.writeFailure())
      if (state.sendBytes < this.engine.config.sendBufferBytes) return Effect.void
      return Effect.andThen(this.waitWrite(), this.backpressure())
    })
  }

  write(chunk: Uint8Array | string | Socket.CloseEvent): Effect.Effect<void, Socket.SocketError> {
    return Effect.suspend(() => {
      if (Socket.isCloseEvent(chunk)) {
        if (chunk.code === Transport.CLOSE_NORMAL) {
          this.engine.closeWrite(this.state)
          this.engine.closeRead(this.state)
        } else {
          this.engine.resetStream(this.state, CODE_CANCEL)
        }
        return Effect.void
      }
      const error = this.canWrite()
      if (error !== undefined) return Effect.fail(error)
      const full = this.engine.write(this.state, typeof chunk === "string" ? encoder.encode(chunk) : chunk)
      return full ? this.backpressure() : Effect.void
    })
  }

  writeAll(chunks: NonEmptyReadonlyArray<Uint8Array | string>): Effect.Effect<void, Socket.SocketError> {
    return Effect.suspend(() => {
      const error = this.canWrite()
      if (error !== undefined) return Effect.fail(error)
      let full = false
      for (let i = 0; i < chunks.length; i++) {
        const chunk = chunks[i]
        full = this.engine.write(this.state, typeof chunk === "string" ? encoder.encode(chunk) : chunk) || full
      }
      return full ? this.backpressure() : Effect.void
    })
  }

  get writer(): Effect.Effect<Socket.Writer, never, Scope.Scope> {
    return Effect.acquireRelease(
      Effect.sync((): Socket.Writer => ({
        write: (chunk) => this.write(chunk),
        writeAll: (chunks) => this.writeAll(chunks)
      })),
      () => this.closeWrite
    )
  }

  // Control ---------------------------------------------------------------

  get closeWrite(): Effect.Effect<void> {
    return Effect.sync(() => this.engine.closeWrite(this.state))
  }

  reset(code: number = CODE_CANCEL): Effect.Effect<void> {
    return Effect.sync(() => this.engine.resetStream(this.state, code))
  }

  setPriority(urgency: number, incremental: boolean = true): Effect.Effect<void> {
    return Effect.sync(() => {
      this.engine.setPriority(this.state, urgency, incremental)
      this.engine.encoder.priority(this.state.id, this.state.urgency, incremental)
      this.engine.hooks.wakeWriter()
    })
  }

  get failure(): Effect.Effect<StreamError | undefined> {
    return Effect.sync(() => this.typedError())
  }

  get failed(): Effect.Effect<StreamError> {
    return Effect.callback<StreamError>((resume) => {
      const error = this.typedError()
      if (error !== undefined) return resume(Effect.succeed(error))
      const waker = () => resume(Effect.succeed(this.typedError()!))
      const list = this.state.failureWakers ??= []
      list.push(waker)
      return Effect.sync(() => {
        const i = list.indexOf(waker)
        if (i >= 0) list.splice(i, 1)
      })
    })
  }

  /**
   * Closing the owning scope. A stream whose write side the application left
   * open was abandoned mid-way: reset it (CANCEL), so the peer never takes a
   * cut-off message for a whole one. One whose write side was closed ends
   * gracefully: queued data and FIN still go out, and whatever the peer
   * still sends is credited back unread.
   */
  release(): void {
    const state = this.state
    if (state.failure !== undefined || state.done) return
    if (!state.localFin) return this.engine.resetStream(state, CODE_CANCEL)
    this.engine.closeRead(state)
  }
}
