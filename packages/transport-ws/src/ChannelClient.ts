/**
 * The channels client for pages that do not use Effect: `connect(url)`
 * dials a WebSocket (the global one by default), runs the secondary
 * handshake (including a 401 → credentials → 101 round when `authorization`
 * is given), starts Channels over it (docs/spec/channels.md), and resolves
 * with a `ChannelClient`. Its channels are `ChannelSocket`s, which behave as
 * browser WebSockets.
 *
 * The one thing to know: everything the connection runs (the socket, the
 * handshake, the channels' reader and writer, one reader per channel) lives
 * in one Scope, and `close()` closes it: every open channel ends (close
 * event 1001) and the WebSocket closes. A connection that ends by itself
 * (the server went away, a protocol error) ends its channels the same way,
 * with an `error` event first when it failed.
 *
 * @since 0.1.0
 */
import { ChannelError, Channels } from "@plexus/core"
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberSet from "effect/FiberSet"
import * as Scope from "effect/Scope"
import { ChannelCloseEvent, ChannelErrorEvent, ChannelSocket, control, type Host } from "./ChannelSocket.ts"
import { type CloseInfo, failureInfo } from "./internal/closeInfo.ts"
import { HandlerProperties } from "./internal/handlerProperties.ts"
import * as Negotiation from "./Negotiation.ts"
import * as Ws from "./Ws.ts"

/**
 * The sub-protocol offered when the page names none: channels version 1
 * with no application protocol of its own on top. The secondary handshake
 * requires one (docs/spec/handshake.md, "Request headers").
 *
 * @category constants
 * @since 0.1.0
 */
export const DEFAULT_PROTOCOL = "plexus-channels.v1"

/**
 * @category models
 * @since 0.1.0
 */
export interface ConnectOptions {
  /** Sub-protocols to offer, most preferred first. Default `[DEFAULT_PROTOCOL]`. */
  readonly protocols?: ReadonlyArray<string> | undefined
  /** Per-channel extensions to offer (`fanout`, `encryption`). Default none (`plexus-channels` is offered all the same). */
  readonly channelExtensions?: ReadonlyArray<string> | undefined
  /**
   * Credentials for the secondary handshake: sent after the server answers
   * 401, as a fixed `Authorization` value or one computed from the
   * server's `WWW-Authenticate` challenge.
   */
  readonly authorization?:
    | string
    | ((challenge: string | undefined) => string | undefined | Promise<string | undefined>)
    | undefined
  /** Negotiate in the secondary handshake (the only way a browser can offer extensions). Default true. */
  readonly secondary?: boolean | undefined
  /** Deadline of the whole handshake, in milliseconds. Default 5000. */
  readonly handshakeTimeout?: number | undefined
  /** Largest message accepted, in bytes. Default 1 MiB. */
  readonly maxPayload?: number | undefined
  /** Windows and limits of the channels (spec "Limits and hostile peers"). */
  readonly channels?: Omit<Channels.Options, "role" | "extensions"> | undefined
  /** A WebSocket constructor other than the global one. */
  readonly WebSocket?: (new(url: string, protocols?: string | Array<string>) => any) | undefined
}

/**
 * @category models
 * @since 0.1.0
 */
export interface OpenOptions {
  /** Message credit granted to the server beyond the default window. */
  readonly extraMessages?: number | undefined
  /** Byte credit granted to the server beyond the default window. */
  readonly extraBytes?: number | undefined
}

/**
 * A `channel` event: the server opened `channel`. Set its handlers in the
 * listener; its `open` event and messages follow.
 *
 * @category events
 * @since 0.1.0
 */
export class ChannelEvent extends Event {
  readonly channel: ChannelSocket
  constructor(channel: ChannelSocket) {
    super("channel")
    this.channel = channel
  }
}

type Handler<E extends Event> = ((this: ChannelClient, event: E) => unknown) | null

const OPEN = 1
const CLOSING = 2
const CLOSED = 3

interface Running {
  readonly connection: { readonly protocol: string | undefined; readonly negotiated: { readonly channelExtensions: ReadonlyArray<string> | undefined }; readonly keyMaterial: Uint8Array | undefined }
  readonly channels: Channels.Channels
  readonly run: <A, E>(effect: Effect.Effect<A, E>) => Fiber.Fiber<A, E>
}

/**
 * One connection speaking channels.
 *
 * @category models
 * @since 0.1.0
 */
export class ChannelClient extends EventTarget {
  static readonly OPEN = OPEN
  static readonly CLOSING = CLOSING
  static readonly CLOSED = CLOSED

  readonly url: string
  /** The sub-protocol the server selected, or "". */
  readonly protocol: string
  /** The per-channel extensions agreed in the handshake. */
  readonly extensions: ReadonlyArray<string>
  /** Key material the server's authentication attached, if any. */
  readonly keyMaterial: Uint8Array | undefined
  /** Channel 0: open from the start; its `open` event fires after the current turn. */
  readonly defaultChannel: ChannelSocket

  #scope: Scope.Closeable
  #running: Running
  #host: Host
  #live = new Set<ChannelSocket>()
  #readyState = OPEN
  readonly #handlers = new HandlerProperties(this)
  #closing: Promise<void> | undefined = undefined

  /** @internal */
  constructor(url: string, scope: Scope.Closeable, running: Running) {
    super()
    this.url = url
    this.#scope = scope
    this.#running = running
    this.protocol = running.connection.protocol ?? ""
    this.extensions = running.connection.negotiated.channelExtensions ?? []
    this.keyMaterial = running.connection.keyMaterial
    this.#host = {
      url,
      fork: (effect) => this.#readyState === CLOSED ? Effect.runFork(effect) : running.run(effect),
      await: (fiber) => Effect.runPromise(Fiber.await(fiber)),
      forget: (socket) => {
        this.#live.delete(socket)
      }
    }
    this.defaultChannel = this.#adopt(running.channels.defaultChannel, undefined)
    running.run(this.#acceptLoop())
    running.run(Effect.flatMap(Effect.exit(running.channels.closed), (exit) => Effect.sync(() => this.#ended(exit))))
  }

  get readyState(): number {
    return this.#readyState
  }

  get onchannel(): Handler<ChannelEvent> {
    return this.#handlers.get<Handler<ChannelEvent>>("channel")
  }
  set onchannel(f: Handler<ChannelEvent>) {
    this.#handlers.set("channel", f)
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
   * Opens a channel labelled `label`: CONNECTING until the server accepts
   * it (`open` event), or `error` and `close` (1006) when it refuses.
   */
  open(label = "", options: OpenOptions = {}): ChannelSocket {
    const socket = new ChannelSocket(this.#host, label, false)
    const ctl = control(socket)
    if (this.#readyState !== OPEN) {
      queueMicrotask(() => ctl.failOpen(new Error("the connection is closed")))
      return socket
    }
    this.#live.add(socket)
    const channels = this.#running.channels
    const scope = this.#scope
    const opening = Effect.gen(function*() {
      const channelScope = yield* Scope.fork(scope)
      const exit = yield* Effect.exit(
        Scope.provide(channels.open({ label, extraMessages: options.extraMessages, extraBytes: options.extraBytes }), channelScope)
      )
      if (Exit.isSuccess(exit)) {
        ctl.attach(exit.value, channelScope)
        return
      }
      yield* Scope.close(channelScope, Exit.void)
      if (!Cause.hasInterruptsOnly(exit.cause)) ctl.failOpen(Cause.squash(exit.cause))
    })
    ctl.opening(this.#running.run(opening))
    return socket
  }

  /** Round-trip time of a PING on the connection, in milliseconds. */
  ping(): Promise<number> {
    return Effect.runPromise(Effect.map(this.#running.channels.ping, Duration.toMillis))
  }

  /** Counters of the connection (spec "Limits and hostile peers"). */
  stats(): Promise<Channels.Stats> {
    return Effect.runPromise(this.#running.channels.stats)
  }

  /**
   * Closes the connection: GOAWAY, every open channel ends (close event
   * 1001, clean), the WebSocket closes. Resolves once all of it is done.
   */
  close(): Promise<void> {
    if (this.#closing !== undefined) return this.#closing
    if (this.#readyState === CLOSED) return Promise.resolve()
    this.#readyState = CLOSING
    this.#endSockets({ code: 1001, reason: "connection closed", wasClean: true, channelCode: undefined }, undefined)
    this.#closing = Effect.runPromise(Scope.close(this.#scope, Exit.void)).then(() => {
      this.#readyState = CLOSED
      this.dispatchEvent(new ChannelCloseEvent({ code: 1000, reason: "", wasClean: true, channelCode: undefined }))
    })
    return this.#closing
  }

  // ---------------------------------------------------------------- internals

  #adopt(channel: Channels.Channel, scope: Scope.Closeable | undefined): ChannelSocket {
    const socket = new ChannelSocket(this.#host, channel.label, true)
    this.#live.add(socket)
    control(socket).announce(channel, scope)
    return socket
  }

  #acceptLoop(): Effect.Effect<void> {
    const channels = this.#running.channels
    const scope = this.#scope
    const next: Effect.Effect<void> = Effect.gen({ self: this }, function*() {
      const channelScope = yield* Scope.fork(scope)
      const exit = yield* Effect.exit(Scope.provide(channels.accept, channelScope))
      if (Exit.isFailure(exit)) {
        yield* Scope.close(channelScope, Exit.void)
        return
      }
      const socket = this.#adopt(exit.value, channelScope)
      this.dispatchEvent(new ChannelEvent(socket))
      yield* next
    })
    return next
  }

  /** The channels ended by themselves (the page's `close` ends them first). */
  #ended(exit: Exit.Exit<void, ChannelError.ChannelError>): void {
    if (this.#readyState !== OPEN) return
    this.#readyState = CLOSED
    const error = Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
    const info = error instanceof ChannelError.ChannelError
      ? failureInfo(error)
      : { code: 1001, reason: "the server closed the connection", wasClean: true, channelCode: undefined }
    this.#endSockets(info, error)
    if (error !== undefined) this.dispatchEvent(new ChannelErrorEvent(error))
    this.dispatchEvent(new ChannelCloseEvent(info))
    Effect.runFork(Scope.close(this.#scope, Exit.void))
  }

  #endSockets(info: CloseInfo, error: unknown): void {
    for (const socket of Array.from(this.#live)) control(socket).end(info, error)
    this.#live.clear()
  }
}

/**
 * Dials `url`, negotiates, and starts channels. Rejects with the typed
 * error of the dial (`SocketError`, `WsError`: refused credentials,
 * handshake deadline, …).
 *
 * @category constructors
 * @since 0.1.0
 */
export const connect = async (url: string, options: ConnectOptions = {}): Promise<ChannelClient> => {
  const scope = Scope.makeUnsafe()
  const authorization = options.authorization
  const setup = Effect.gen(function*() {
    const connection = yield* Ws.dial({
      url,
      protocols: options.protocols ?? [DEFAULT_PROTOCOL],
      // A browser cannot offer extensions in the opening handshake: without the secondary one, none unless asked.
      channelExtensions: options.channelExtensions ?? (options.secondary === false ? undefined : []),
      secondary: options.secondary === false ? false : {
        authorization: typeof authorization === "function"
          ? (challenge) => Effect.promise(() => Promise.resolve(authorization(challenge)))
          : authorization
      },
      handshakeTimeout: options.handshakeTimeout === undefined ? undefined : Duration.millis(options.handshakeTimeout),
      maxPayload: options.maxPayload,
      connector: options.WebSocket === undefined ? undefined : Ws.browserConnector(options.WebSocket)
    })
    const transport = yield* connection.messages
    const extensions = Negotiation.channelsExtensions(connection.negotiated)
    const channels = yield* Channels.make(transport, { ...options.channels, role: "client", extensions })
    const run = yield* FiberSet.makeRuntime<never, unknown, unknown>()
    return { connection, channels, run }
  })
  const exit = await Effect.runPromiseExit(Scope.provide(setup, scope))
  if (Exit.isFailure(exit)) {
    await Effect.runPromise(Scope.close(scope, exit))
    throw Cause.squash(exit.cause)
  }
  return new ChannelClient(url, scope, exit.value)
}
