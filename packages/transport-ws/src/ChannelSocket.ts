/**
 * A `ChannelSocket` is one channel (docs/spec/channels.md) with the browser
 * `WebSocket` interface: `readyState` and its constants, `binaryType`,
 * `send` (strings go out as UTF-8), `close(code, reason)`,
 * `bufferedAmount`, and `open` / `message` / `error` / `close` events on a
 * real `EventTarget`, with the `on…` handler properties. A page written for
 * a WebSocket uses a channel in its place. `ChannelClient.connect` makes
 * them; they are never constructed directly.
 *
 * The one thing to know: a channel carries bytes only, so every message
 * arrives as binary (`Blob` or `ArrayBuffer`, after `binaryType`), also one
 * the peer sent as a string. Events fire in WebSocket order (`open`, then
 * `message`s, then `close`, preceded by `error` when the channel failed),
 * and close codes pass through to the peer's channel (a DESTROY with that
 * code; spec "Codes").
 *
 * @since 0.1.0
 */
import { ChannelError, type Channels } from "@plexus/core"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Scope from "effect/Scope"
import { clipReason, type CloseInfo, failureInfo, gracefulInfo, MAX_REASON_BYTES } from "./internal/closeInfo.ts"
import { HandlerProperties } from "./internal/handlerProperties.ts"

/**
 * A `close` event: WebSocket's `CloseEvent` fields, plus the channel code
 * as sent or received when there was one (spec "Codes").
 *
 * @category events
 * @since 0.1.0
 */
export class ChannelCloseEvent extends Event {
  readonly code: number
  readonly reason: string
  readonly wasClean: boolean
  readonly channelCode: number | undefined
  constructor(info: CloseInfo) {
    super("close")
    this.code = info.code
    this.reason = info.reason
    this.wasClean = info.wasClean
    this.channelCode = info.channelCode
  }
}

/**
 * An `error` event; `error` is the typed error when there is one
 * (`ChannelError`, or the connection's failure).
 *
 * @category events
 * @since 0.1.0
 */
export class ChannelErrorEvent extends Event {
  readonly error: unknown
  readonly message: string
  constructor(error: unknown) {
    super("error")
    this.error = error
    this.message = error instanceof Error ? error.message : String(error)
  }
}

/**
 * @category models
 * @since 0.1.0
 */
export type BinaryType = "blob" | "arraybuffer"

/**
 * What `send` takes, as `WebSocket.send` does.
 *
 * @category models
 * @since 0.1.0
 */
export type Data = string | ArrayBufferLike | ArrayBufferView | Blob

/** The connection's side of a socket. @internal */
export interface Host {
  readonly url: string
  /** Runs `effect` in a fiber of the connection's Scope. */
  readonly fork: <A, E>(effect: Effect.Effect<A, E>) => Fiber.Fiber<A, E>
  /** Awaits a fiber from plain code. */
  readonly await: <A, E>(fiber: Fiber.Fiber<A, E>) => Promise<Exit.Exit<A, E>>
  /** The socket closed: drop it from the live set. */
  readonly forget: (socket: ChannelSocket) => void
}

/** What the connection does to a socket. @internal */
export interface Control {
  /** The channel is open: start delivering. `scope` owns it (absent for channel 0). */
  readonly attach: (channel: Channels.Channel, scope: Scope.Closeable | undefined) => void
  /** Channel 0 or a channel the peer opened: open already; `open` fires after the caller's turn. */
  readonly announce: (channel: Channels.Channel, scope: Scope.Closeable | undefined) => void
  /** Opening failed. */
  readonly failOpen: (error: unknown) => void
  /** The fiber that is opening the channel, interrupted by `close()` before it is open. */
  readonly opening: (fiber: Fiber.Fiber<unknown, unknown>) => void
  /** The connection ended: end the socket now with `info`. */
  readonly end: (info: CloseInfo, error: unknown) => void
}

type Handler<E extends Event> = ((this: ChannelSocket, event: E) => unknown) | null

const CONNECTING = 0
const OPEN = 1
const CLOSING = 2
const CLOSED = 3

const encoder = new TextEncoder()

interface Outgoing {
  bytes: Uint8Array | undefined
  readonly pending: Promise<Uint8Array> | undefined
  readonly size: number
}

const outgoing = (data: Data): Outgoing => {
  if (typeof data === "string") {
    const bytes = encoder.encode(data)
    return { bytes, pending: undefined, size: bytes.length }
  }
  if (ArrayBuffer.isView(data)) {
    // Copied now: the caller may reuse its buffer as soon as send returns.
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice()
    return { bytes, pending: undefined, size: bytes.length }
  }
  if (typeof Blob !== "undefined" && data instanceof Blob) {
    return { bytes: undefined, pending: data.arrayBuffer().then((b) => new Uint8Array(b)), size: data.size }
  }
  if (data instanceof ArrayBuffer || (typeof SharedArrayBuffer !== "undefined" && data instanceof SharedArrayBuffer)) {
    const bytes = new Uint8Array(data).slice()
    return { bytes, pending: undefined, size: bytes.length }
  }
  throw new TypeError("send: expected a string, ArrayBuffer, ArrayBufferView or Blob")
}

const domError = (message: string, name: string): Error =>
  typeof DOMException === "function" ? new DOMException(message, name) : Object.assign(new Error(message), { name })

let controlOf: (socket: ChannelSocket) => Control

/**
 * One channel as a WebSocket.
 *
 * @category models
 * @since 0.1.0
 */
export class ChannelSocket extends EventTarget {
  static readonly CONNECTING = CONNECTING
  static readonly OPEN = OPEN
  static readonly CLOSING = CLOSING
  static readonly CLOSED = CLOSED
  readonly CONNECTING = CONNECTING
  readonly OPEN = OPEN
  readonly CLOSING = CLOSING
  readonly CLOSED = CLOSED

  /** The connection's URL. */
  readonly url: string
  /** What the channel is for (its CREATE label); "" for channel 0. */
  readonly label: string
  /** Per-channel extensions switched on; none in this version. */
  readonly extensions = ""

  #host: Host
  #readyState: number
  #binaryType: BinaryType = "blob"
  #channel: Channels.Channel | undefined = undefined
  #scope: Scope.Closeable | undefined = undefined
  #openFiber: Fiber.Fiber<unknown, unknown> | undefined = undefined
  #queue: Array<Outgoing> = []
  #buffered = 0
  #pumping = false
  #drained: Array<() => void> = []
  /** Why a send failed the channel, reported by its error event. */
  #sendFailure: unknown = undefined
  readonly #handlers = new HandlerProperties(this)

  /** @internal */
  constructor(host: Host, label: string, open: boolean) {
    super()
    this.#host = host
    this.url = host.url
    this.label = label
    this.#readyState = open ? OPEN : CONNECTING
  }

  static {
    controlOf = (socket) => ({
      attach: (channel, scope) => socket.#attach(channel, scope),
      announce: (channel, scope) => socket.#announce(channel, scope),
      failOpen: (error) => socket.#failOpen(error),
      opening: (fiber) => {
        socket.#openFiber = fiber
      },
      end: (info, error) => socket.#end(info, error)
    })
  }

  /** The channel id this side sends on; -1 before the channel is open. */
  get id(): number {
    return this.#channel?.id ?? -1
  }

  /** The label, standing in for WebSocket's negotiated sub-protocol. */
  get protocol(): string {
    return this.label
  }

  get readyState(): number {
    return this.#readyState
  }

  /** "blob" (the default, as in browsers) or "arraybuffer"; other values are ignored. */
  get binaryType(): BinaryType {
    return this.#binaryType
  }
  set binaryType(value: BinaryType) {
    if (value === "blob" || value === "arraybuffer") this.#binaryType = value
  }

  /** Bytes passed to `send` that have not gone out to the connection yet. */
  get bufferedAmount(): number {
    return this.#buffered
  }

  get onopen(): Handler<Event> {
    return this.#handlers.get<Handler<Event>>("open")
  }
  set onopen(f: Handler<Event>) {
    this.#handlers.set("open", f)
  }
  get onmessage(): Handler<MessageEvent> {
    return this.#handlers.get<Handler<MessageEvent>>("message")
  }
  set onmessage(f: Handler<MessageEvent>) {
    this.#handlers.set("message", f)
  }
  get onerror(): Handler<ChannelErrorEvent> {
    return this.#handlers.get<Handler<ChannelErrorEvent>>("error")
  }
  set onerror(f: Handler<ChannelErrorEvent>) {
    this.#handlers.set("error", f)
  }
  get onclose(): Handler<ChannelCloseEvent> {
    return this.#handlers.get<Handler<ChannelCloseEvent>>("close")
  }
  set onclose(f: Handler<ChannelCloseEvent>) {
    this.#handlers.set("close", f)
  }

  /**
   * Sends one message. Throws `InvalidStateError` while CONNECTING; after
   * `close()` the data is counted in `bufferedAmount` and dropped, as
   * WebSocket does.
   */
  send(data: Data): void {
    if (this.#readyState === CONNECTING) throw domError("the channel is not open yet", "InvalidStateError")
    const item = outgoing(data)
    this.#buffered += item.size
    if (this.#readyState !== OPEN) return
    this.#queue.push(item)
    if (!this.#pumping) void this.#pump()
  }

  /**
   * Closes the channel gracefully: what was sent is delivered, then the
   * peer's channel ends with `code` and `reason`. `code` is 1000 or
   * 3000–4999 (InvalidAccessError otherwise); `reason` at most 123 bytes of
   * UTF-8 (SyntaxError otherwise). Without a code the peer sees 1000.
   */
  close(code?: number, reason?: string): void {
    if (code !== undefined && code !== 1000 && (code < 3000 || code > 4999 || !Number.isInteger(code))) {
      throw domError(`close code ${code} is neither 1000 nor in 3000-4999`, "InvalidAccessError")
    }
    if (reason !== undefined && encoder.encode(reason).length > MAX_REASON_BYTES) {
      throw domError(`close reason longer than ${MAX_REASON_BYTES} bytes`, "SyntaxError")
    }
    if (this.#readyState === CLOSING || this.#readyState === CLOSED) return
    if (this.#readyState === CONNECTING) {
      this.#readyState = CLOSING
      const fiber = this.#openFiber
      if (fiber !== undefined) this.#host.fork(Fiber.interrupt(fiber))
      this.#end({ code: 1006, reason: "closed before the channel opened", wasClean: false, channelCode: undefined }, undefined)
      return
    }
    this.#readyState = CLOSING
    const channel = this.#channel!
    const closeCode = code ?? ChannelError.Code.NO_ERROR
    const closeReason = reason ?? ""
    // After what `send` queued: the DESTROY follows the last message.
    void this.#afterQueue().then(() => {
      this.#host.fork(channel.closeWith(closeCode, closeReason))
    })
  }

  // ---------------------------------------------------------------- internals

  #attach(channel: Channels.Channel, scope: Scope.Closeable | undefined): void {
    this.#channel = channel
    this.#scope = scope
    this.#openFiber = undefined
    if (this.#readyState === CLOSED || this.#readyState === CLOSING) {
      // Closed by the page while opening: nothing to deliver.
      this.#host.fork(channel.abort())
      this.#release()
      return
    }
    this.#readyState = OPEN
    this.dispatchEvent(new Event("open"))
    this.#host.fork(this.#read(channel))
  }

  /** Channel 0 and channels the peer opened are open from the start: announce it after the caller's turn. */
  #announce(channel: Channels.Channel, scope: Scope.Closeable | undefined): void {
    this.#channel = channel
    this.#scope = scope
    // A macrotask later, as a WebSocket's open event: handlers set in this turn see it.
    this.#host.fork(Effect.andThen(
      Effect.sleep(0),
      Effect.suspend(() => {
        if (this.#readyState === CLOSED) return Effect.void
        this.dispatchEvent(new Event("open"))
        return this.#read(channel)
      })
    ))
  }

  #failOpen(error: unknown): void {
    this.#openFiber = undefined
    if (this.#readyState === CLOSED) return
    const reason = error instanceof ChannelError.ChannelError ? error.reason : undefined
    this.#end({
      code: 1006,
      reason: clipReason(error instanceof Error ? error.message : String(error)),
      wasClean: false,
      channelCode: reason !== undefined && "code" in reason ? reason.code : undefined
    }, error)
  }

  #read(channel: Channels.Channel): Effect.Effect<void> {
    const loop: Effect.Effect<void> = Effect.matchEffect(channel.pull, {
      onSuccess: (batch) =>
        Effect.suspend(() => {
          for (let i = 0; i < batch.length; i++) {
            if (this.#readyState !== OPEN) break
            this.#deliver(batch[i])
          }
          return this.#readyState === CLOSED ? Effect.void : loop
        }),
      onFailure: (error) =>
        Effect.sync(() => {
          if (Cause.isDone(error)) this.#end(gracefulInfo(channel), undefined)
          else this.#end(failureInfo(error), error)
        })
    })
    return loop
  }

  #deliver(bytes: Uint8Array): void {
    // Copied: the received message is a view into the transport's buffer.
    const data = this.#binaryType === "arraybuffer"
      ? bytes.slice().buffer
      : new Blob([bytes.slice()])
    this.dispatchEvent(new MessageEvent("message", { data, origin: originOf(this.url) }))
  }

  /** Resolves once everything `send` queued so far went out (or was dropped). */
  #afterQueue(): Promise<void> {
    if (!this.#pumping && this.#queue.length === 0) return Promise.resolve()
    return new Promise((resolve) => this.#drained.push(resolve))
  }

  async #pump(): Promise<void> {
    this.#pumping = true
    try {
      while (this.#queue.length > 0 && this.#channel !== undefined) {
        const head = this.#queue[0]!
        if (head.bytes === undefined) {
          try {
            head.bytes = await head.pending!
          } catch (error) {
            this.#queue.shift()
            this.#buffered -= head.size
            this.dispatchEvent(new ChannelErrorEvent(error))
            continue
          }
        }
        // Everything ready from the head on goes in one batch.
        const batch: Array<Uint8Array> = []
        let size = 0
        let n = 0
        while (n < this.#queue.length && this.#queue[n]!.bytes !== undefined) {
          batch.push(this.#queue[n]!.bytes!)
          size += this.#queue[n]!.size
          n++
        }
        this.#queue.splice(0, n)
        const exit = await this.#host.await(this.#host.fork(this.#channel.sendAll(batch)))
        this.#buffered -= size
        if (Exit.isFailure(exit)) {
          this.#queue = []
          const error = Cause.squash(exit.cause)
          if (
            error instanceof ChannelError.ChannelError && error.reason._tag === "MessageTooLarge" &&
            this.#readyState === OPEN
          ) {
            // As a WebSocket does with a message it cannot take: fail the channel with 1009.
            this.#sendFailure = error
            this.#readyState = CLOSING
            this.#host.fork(this.#channel.abort(1009, "message too big"))
          }
          // Any other failure ended the channel, and its reader reports it.
          break
        }
      }
    } finally {
      this.#pumping = false
      const drained = this.#drained
      this.#drained = []
      for (const resolve of drained) resolve()
    }
  }

  #end(info: CloseInfo, error: unknown): void {
    if (this.#readyState === CLOSED) return
    this.#readyState = CLOSED
    this.#queue = []
    const cause = this.#sendFailure ?? error
    if (cause !== undefined || !info.wasClean) this.dispatchEvent(new ChannelErrorEvent(cause ?? info.reason))
    this.dispatchEvent(new ChannelCloseEvent(info))
    this.#release()
  }

  #release(): void {
    this.#host.forget(this)
    const scope = this.#scope
    this.#scope = undefined
    if (scope !== undefined) this.#host.fork(Scope.close(scope, Exit.void))
  }

}

const originOf = (url: string): string => {
  try {
    return new URL(url).origin
  } catch {
    return ""
  }
}

/** @internal */
export const control = (socket: ChannelSocket): Control => controlOf(socket)
