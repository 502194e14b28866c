/**
 * The adapter from one open WebSocket to `effect/socket` Sockets that follow
 * plexus's byte transport conventions (`@plexus/core` `Transport`). It is
 * platform-free: a `Driver` wraps the `ws` library (Node) or the global
 * `WebSocket` (browsers) and feeds events in.
 *
 * Reading: each received message is one chunk, handed on as received (no
 * copies). Chunks queue up to the high-water mark; then a driver that can
 * pause (ws) stops reading the TCP socket, and one that cannot (browsers)
 * fails with `BufferOverflow` at `maxBuffered`. A waiting pull is resumed
 * with an effect that takes the queue when the fiber runs, so messages that
 * arrive meanwhile ride along. Resuming a fiber runs it at once, inside the
 * driver's event, so a driver that can `defer` (Node: `setImmediate`) has
 * the wake-up put off to the end of the event-loop turn: every message read
 * in that turn (often dozens per TCP read) goes out in one batch, one fiber
 * resumption instead of one per message. A batch that grows past
 * `WAKE_BYTES` wakes the reader at once.
 *
 * Writing: each write is one message in the framed view; the byte view cuts
 * writes larger than `splitSize` into several messages (views, not copies).
 * A write resolves once the driver took the message, and waits while the
 * driver's buffered amount is above the write high-water mark.
 *
 * Closing: `CloseEvent(1000)` and releasing the writer start the closing
 * handshake (the reader keeps delivering until the peer's close arrives);
 * other codes close with that code, or abort the connection (1006 and codes
 * the platform cannot send), and end the local reader at once.
 *
 * @internal
 */
import type { NonEmptyReadonlyArray } from "effect/Array"
import * as Effect from "effect/Effect"
import * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import { Transport } from "@plexus/core"
import { asReadError, BufferOverflow, make as wsError, PayloadTooLarge } from "../WsError.ts"

/** What the adapter needs from a platform's WebSocket. @internal */
export interface Driver {
  /** Sends one message; `done`, when given, runs once it left the driver's buffers (or failed). */
  readonly send: (data: Uint8Array | string, done: ((error?: Error | null) => void) | undefined) => void
  /** Whether `send` calls `done`; when not, the adapter polls `bufferedAmount`. */
  readonly sendCallbacks: boolean
  readonly bufferedAmount: () => number
  /** Starts the closing handshake; throws when the platform cannot send the code. */
  readonly close: (code: number, reason: string | undefined) => void
  /** Ends the connection without a closing handshake. */
  readonly terminate: () => void
  readonly pause: (() => void) | undefined
  readonly resume: (() => void) | undefined
  /**
   * Runs a callback later in the same event-loop turn, after the pending
   * I/O events (Node: `setImmediate`). When absent, a waiting reader is
   * woken by each message.
   */
  readonly defer?: ((f: () => void) => void) | undefined
}

/** @internal */
export interface AdapterOptions {
  /** Unread bytes above which a pausable driver is paused. */
  readonly highWaterMark?: number | undefined
  /** Unread bytes above which a driver that cannot pause fails the connection. */
  readonly maxBuffered?: number | undefined
  /** Checked here when the driver does not enforce it itself (browsers). */
  readonly maxPayload?: number | undefined
  /** Driver buffered bytes above which writers wait. */
  readonly writeHighWaterMark?: number | undefined
  /** How long a closing handshake may take before the connection is aborted. */
  readonly closeTimeoutMillis?: number | undefined
}

/** @internal */
export const DEFAULT_HIGH_WATER_MARK = 1024 * 1024
/** @internal */
export const DEFAULT_WRITE_HIGH_WATER_MARK = 1024 * 1024
/** @internal */
export const DEFAULT_MAX_BUFFERED = 16 * 1024 * 1024
/** @internal */
export const DEFAULT_CLOSE_TIMEOUT_MS = 3_000
/** A waiting pull is woken at once when this much arrived in one turn. @internal */
export const WAKE_BYTES = 256 * 1024
/** Messages of the byte view are at most this large. @internal */
export const DEFAULT_SPLIT_SIZE = 256 * 1024

const CLOSE_POLICY = 1008
const CLOSE_TOO_BIG = 1009
/** Sent by platforms that cannot abort (browsers) in place of an abort. */
const CLOSE_RESET = 4000

type Batch = NonEmptyReadonlyArray<Uint8Array>
type ReadResume = (effect: Effect.Effect<Batch, Socket.SocketError>) => void

interface ReaderHandle {
  closed: boolean
  /** Takes one message at a time (the secondary handshake) instead of everything queued. */
  readonly one: boolean
  pull: Effect.Effect<Batch, Socket.SocketError>
}

const writeFailure = (cause: unknown): Socket.SocketError =>
  new Socket.SocketError({ reason: new Socket.SocketWriteError({ cause }) })
const writeSideClosed = writeFailure(new Error("write side closed"))
const readerClosed = Transport.closedError(Transport.CLOSE_NORMAL, "reader closed")
const encoder = new TextEncoder()

const unref = (timer: unknown) => {
  if (typeof timer === "object" && timer !== null && "unref" in timer && typeof timer.unref === "function") {
    timer.unref()
  }
}

/** Close codes an endpoint may send (RFC 6455 section 7.4). @internal */
export const isSendableCode = (code: number): boolean =>
  (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999)

/** @internal */
export class Adapter {
  readonly driver: Driver
  readonly highWaterMark: number
  readonly maxBuffered: number
  readonly maxPayload: number
  readonly writeHighWaterMark: number
  readonly closeTimeoutMillis: number
  readonly wakeBytes: number
  chunks: Array<Uint8Array> = []
  buffered = 0
  /** Paused until the first reader, and at the high-water mark. */
  paused = true
  started = false
  discard = false
  /** A deferred wake-up is pending. */
  wakeScheduled = false
  waiter: ReadResume | undefined = undefined
  waiterReader: ReaderHandle | undefined = undefined
  readError: Socket.SocketError | undefined = undefined
  writeError: Socket.SocketError | undefined = undefined
  /** "open" until this side closed, "closing" during our closing handshake, "done" after the close. */
  state: "open" | "closing" | "done" = "open"
  closeTimer: ReturnType<typeof setTimeout> | undefined = undefined
  /** Received messages and bytes, for counters. */
  messagesIn = 0
  bytesIn = 0

  constructor(driver: Driver, options?: AdapterOptions) {
    this.driver = driver
    this.highWaterMark = Math.max(1, options?.highWaterMark ?? DEFAULT_HIGH_WATER_MARK)
    this.maxBuffered = options?.maxBuffered ?? DEFAULT_MAX_BUFFERED
    this.maxPayload = options?.maxPayload ?? Number.MAX_SAFE_INTEGER
    this.writeHighWaterMark = options?.writeHighWaterMark ?? DEFAULT_WRITE_HIGH_WATER_MARK
    this.closeTimeoutMillis = options?.closeTimeoutMillis ?? DEFAULT_CLOSE_TIMEOUT_MS
    this.wakeBytes = Math.min(WAKE_BYTES, Math.ceil(this.highWaterMark / 2))
    driver.pause?.()
  }

  // ------------------------------------------------------------- driver events

  readonly onMessage = (data: Uint8Array | string): void => {
    if (this.discard) return
    const bytes = typeof data === "string" ? encoder.encode(data) : data
    if (bytes.byteLength > this.maxPayload) {
      this.failWith(wsError(new PayloadTooLarge({ max: this.maxPayload, size: bytes.byteLength, closeCode: CLOSE_TOO_BIG })), CLOSE_TOO_BIG)
      return
    }
    this.messagesIn++
    this.bytesIn += bytes.byteLength
    this.chunks.push(bytes)
    this.buffered += bytes.byteLength
    if (this.buffered >= this.highWaterMark) {
      if (this.driver.pause !== undefined) {
        if (!this.paused) {
          this.paused = true
          this.driver.pause()
        }
      } else if (this.buffered > this.maxBuffered) {
        this.failWith(wsError(new BufferOverflow({ buffered: this.buffered, max: this.maxBuffered, closeCode: CLOSE_POLICY })), CLOSE_POLICY)
        return
      }
    }
    if (this.waiter === undefined) return
    const defer = this.driver.defer
    if (defer === undefined || this.buffered >= this.wakeBytes) this.wake()
    else if (!this.wakeScheduled) {
      this.wakeScheduled = true
      defer(this.onDeferredWake)
    }
  }

  readonly onDeferredWake = (): void => {
    this.wakeScheduled = false
    if (this.chunks.length > 0) this.wake()
  }

  /** The connection closed: `code` as received (1005: no code, 1006: no close frame). */
  readonly onClose = (code: number, reason: string): void => {
    if (this.closeTimer !== undefined) clearTimeout(this.closeTimer)
    this.closeTimer = undefined
    this.state = "done"
    const clean = code === Transport.CLOSE_NORMAL || code === 1005
    this.endRead(
      Transport.closedError(clean ? Transport.CLOSE_NORMAL : code, reason.length > 0 ? reason : undefined),
      false
    )
    this.endWrite(writeFailure(new Error(`connection closed with code ${code}`)))
  }

  /** A protocol or transport failure reported by the driver. */
  readonly onError = (error: Socket.SocketError): void => {
    this.endRead(error, false)
    this.endWrite(writeFailure(error))
  }

  /** Fails both directions with a typed error and closes with `code`. */
  failWith(error: ReturnType<typeof wsError>, code: number): void {
    const failure = asReadError(error)
    this.discard = true
    this.endRead(failure, true)
    this.endWrite(writeFailure(error))
    this.closeNow(code, error.reason._tag)
  }

  // ---------------------------------------------------------------- read side

  wake(): void {
    const waiter = this.waiter
    if (waiter === undefined) return
    const handle = this.waiterReader!
    this.waiter = undefined
    this.waiterReader = undefined
    waiter(handle.pull)
  }

  takeChunks(): Effect.Effect<Batch> {
    const out = this.chunks as unknown as Batch
    this.chunks = []
    this.buffered = 0
    if (this.paused && this.readError === undefined && this.driver.resume !== undefined) {
      this.paused = false
      this.driver.resume()
    }
    return Effect.succeed(out)
  }

  take(reader: ReaderHandle): Effect.Effect<Batch, Socket.SocketError> {
    if (reader.closed) return Effect.fail(readerClosed)
    if (this.chunks.length > 0) {
      if (!reader.one || this.chunks.length === 1) return this.takeChunks()
      const first = this.chunks.shift()!
      this.buffered -= first.byteLength
      return Effect.succeed([first])
    }
    if (this.readError !== undefined) return Effect.fail(this.readError)
    return Effect.callback<Batch, Socket.SocketError>((resume) => {
      this.waiter = resume
      this.waiterReader = reader
      return Effect.sync(() => {
        if (this.waiter === resume) {
          this.waiter = undefined
          this.waiterReader = undefined
        }
      })
    })
  }

  endRead(error: Socket.SocketError, dropBuffered: boolean): void {
    this.readError ??= error
    if (dropBuffered) {
      this.chunks = []
      this.buffered = 0
    }
    if (this.chunks.length === 0) this.wake()
  }

  readonly acquireReader: Effect.Effect<Socket.Reader, Socket.SocketError, Scope.Scope> = Effect.flatMap(
    Effect.scope,
    (scope) => Effect.suspend(() => this.openReader(scope))
  )

  /** A reader that takes one message per pull. */
  readonly acquireOneReader: Effect.Effect<Socket.Reader, Socket.SocketError, Scope.Scope> = Effect.flatMap(
    Effect.scope,
    (scope) => Effect.suspend(() => this.openReader(scope, true))
  )

  openReader(scope: Scope.Scope, one = false): Effect.Effect<Socket.Reader, Socket.SocketError> {
    if (this.readError !== undefined && this.chunks.length === 0) return Effect.fail(this.readError)
    const handle: ReaderHandle = { closed: false, one, pull: Effect.void as never }
    handle.pull = Effect.suspend(() => this.take(handle))
    if (!this.started) {
      this.started = true
      if (this.readError === undefined && this.buffered < this.highWaterMark && this.paused) {
        this.paused = false
        this.driver.resume?.()
      }
    }
    const reader: Socket.Reader = { pull: handle.pull, upgrade: Socket.SocketUpgradeError.unsupported }
    return Effect.as(Scope.addFinalizer(scope, Effect.sync(() => this.closeReader(handle))), reader)
  }

  closeReader(handle: ReaderHandle): void {
    handle.closed = true
    if (this.waiterReader === handle) this.wake()
  }

  // --------------------------------------------------------------- write side

  endWrite(error: Socket.SocketError): void {
    this.writeError ??= error
  }

  /** Waits until the driver's buffer is below the write high-water mark. */
  awaitBelowMark(): Effect.Effect<void, Socket.SocketError> {
    return Effect.callback<void, Socket.SocketError>((resume) => {
      let timer: ReturnType<typeof setTimeout> | undefined
      const poll = () => {
        timer = undefined
        if (this.writeError !== undefined) return resume(Effect.fail(this.writeError))
        if (this.driver.bufferedAmount() <= this.writeHighWaterMark / 2) return resume(Effect.void)
        timer = setTimeout(poll, 4)
      }
      poll()
      return Effect.sync(() => {
        if (timer !== undefined) clearTimeout(timer)
      })
    })
  }

  /** Sends one message; waits when the driver's buffer is past the mark. */
  sendOne(message: Uint8Array | string): Effect.Effect<void, Socket.SocketError> {
    const driver = this.driver
    try {
      const size = typeof message === "string" ? message.length : message.byteLength
      if (driver.bufferedAmount() + size <= this.writeHighWaterMark) {
        driver.send(message, undefined)
        return Effect.void
      }
      return this.sendLast(message)
    } catch (cause) {
      return Effect.fail(writeFailure(cause))
    }
  }

  /** Sends the last message of a write when the driver's buffer is past the mark, and waits. */
  sendLast(message: Uint8Array | string): Effect.Effect<void, Socket.SocketError> {
    const driver = this.driver
    if (!driver.sendCallbacks) {
      driver.send(message, undefined)
      return this.awaitBelowMark()
    }
    return Effect.callback<void, Socket.SocketError>((resume) => {
      try {
        driver.send(message, (error) => resume(error == null ? Effect.void : Effect.fail(writeFailure(error))))
      } catch (cause) {
        resume(Effect.fail(writeFailure(cause)))
      }
    })
  }

  /** Sends messages; the last of a write waits when the driver's buffer is past the mark. */
  sendMessages(parts: ReadonlyArray<Uint8Array | string>): Effect.Effect<void, Socket.SocketError> {
    const driver = this.driver
    const last = parts.length - 1
    try {
      for (let i = 0; i < last; i++) driver.send(parts[i]!, undefined)
      const final = parts[last]!
      const size = typeof final === "string" ? final.length : final.byteLength
      if (driver.bufferedAmount() + size <= this.writeHighWaterMark) {
        driver.send(final, undefined)
        return Effect.void
      }
      return this.sendLast(final)
    } catch (cause) {
      return Effect.fail(writeFailure(cause))
    }
  }

  write(chunk: Uint8Array | string | Socket.CloseEvent, split: number): Effect.Effect<void, Socket.SocketError> {
    if (typeof chunk === "object" && Socket.isCloseEvent(chunk)) return this.closeWith(chunk)
    if (this.writeError !== undefined) return Effect.fail(this.writeError)
    if (typeof chunk === "string" || chunk.byteLength <= split) return this.sendOne(chunk)
    return this.sendMessages(splitBytes([chunk], split))
  }

  writeAll(chunks: NonEmptyReadonlyArray<Uint8Array | string>, split: number): Effect.Effect<void, Socket.SocketError> {
    if (this.writeError !== undefined) return Effect.fail(this.writeError)
    for (let i = 0; i < chunks.length; i++) {
      const c = chunks[i]!
      if (typeof c !== "string" && c.byteLength > split) return this.sendMessages(splitBytes(chunks, split))
    }
    return this.sendMessages(chunks)
  }

  closeWith(event: Socket.CloseEvent): Effect.Effect<void> {
    if (event.code === Transport.CLOSE_NORMAL) {
      this.closeGracefully(event.reason)
    } else {
      const code = isSendableCode(event.code) ? event.code : Transport.CLOSE_ABNORMAL
      this.discard = true
      this.endRead(Transport.closedError(code, event.reason ?? `closed with code ${event.code}`), true)
      this.endWrite(writeSideClosed)
      this.closeNow(event.code, event.reason)
    }
    return Effect.void
  }

  /** Starts the closing handshake; the reader goes on until the peer's close. */
  closeGracefully(reason?: string | undefined): void {
    this.endWrite(writeSideClosed)
    if (this.state !== "open") return
    this.state = "closing"
    try {
      this.driver.close(Transport.CLOSE_NORMAL, reason)
    } catch {
      this.driver.terminate()
    }
    this.armCloseTimer()
  }

  /** Closes with `code` (aborts when it cannot be sent). */
  closeNow(code: number, reason: string | undefined): void {
    if (this.state === "done") return
    const wasOpen = this.state === "open"
    this.state = "closing"
    if (!wasOpen || !isSendableCode(code)) return this.abort()
    try {
      this.driver.close(code, reason)
    } catch {
      try {
        this.driver.close(CLOSE_RESET, reason)
      } catch {
        return this.abort()
      }
    }
    this.armCloseTimer()
  }

  abort(): void {
    this.state = "done"
    try {
      this.driver.terminate()
    } catch {
      // already gone
    }
  }

  armCloseTimer(): void {
    if (this.closeTimer !== undefined) return
    this.closeTimer = setTimeout(() => {
      this.closeTimer = undefined
      if (this.state !== "done") this.abort()
    }, this.closeTimeoutMillis)
    unref(this.closeTimer)
  }

  /** The connection's scope closed: close gracefully if still open; end local reads. */
  release(): void {
    this.closeGracefully()
    // Nobody reads any more: drop what is queued and let the driver read on,
    // so that the peer's close frame is seen and the handshake completes.
    this.discard = true
    this.endRead(Transport.closedError(Transport.CLOSE_NORMAL, "connection released"), true)
    if (this.paused && this.driver.resume !== undefined) {
      this.paused = false
      try {
        this.driver.resume()
      } catch {
        // already gone
      }
    }
  }

  /** A writer whose every message may be cut at `split` bytes. */
  writerFor(split: number): Effect.Effect<Socket.Writer, never, Scope.Scope> {
    return Effect.acquireRelease(
      Effect.sync((): Socket.Writer => ({
        write: (chunk) => Effect.suspend(() => this.write(chunk, split)),
        writeAll: (chunks) => Effect.suspend(() => this.writeAll(chunks, split))
      })),
      // No half-close in WebSocket: releasing the writer starts the closing handshake.
      () => Effect.sync(() => this.closeGracefully())
    )
  }
}

const splitBytes = (
  chunks: ReadonlyArray<Uint8Array | string>,
  split: number
): Array<Uint8Array | string> => {
  const out: Array<Uint8Array | string> = []
  for (const c of chunks) {
    if (typeof c === "string" || c.byteLength <= split) out.push(c)
    else for (let o = 0; o < c.byteLength; o += split) out.push(c.subarray(o, Math.min(o + split, c.byteLength)))
  }
  return out
}

/** The two views of one connection. @internal */
export const sockets = (adapter: Adapter, splitSize: number = DEFAULT_SPLIT_SIZE) => ({
  bytes: Socket.make({ reader: adapter.acquireReader, writer: adapter.writerFor(splitSize) }),
  framed: Socket.make({ reader: adapter.acquireReader, writer: adapter.writerFor(Number.MAX_SAFE_INTEGER) })
})
