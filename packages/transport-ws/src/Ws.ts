/**
 * The WebSocket client, for browsers and Node: `dial` opens a connection
 * (a `WsConnection`: a byte transport Socket and a message transport over
 * one socket) after negotiating a sub-protocol and plexus-channels
 * extensions; `layerClient` provides it as layers.
 *
 * This module imports nothing from Node: by default it dials with the
 * global `WebSocket` constructor, which cannot send extension offers, so
 * extensions are negotiated with the secondary handshake (`secondary`).
 * In Node, pass `NodeWs.connector` (the `ws` library) to offer them in the
 * opening handshake, or use `NodeWs.dial`.
 *
 * Dial failures: `SocketOpenError` when no connection could be opened;
 * `WsError` when the handshake failed (a status other than 101, a
 * sub-protocol or extension that was not offered, the deadline).
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import { sockets } from "./internal/adapter.ts"
import { makeConnect } from "./internal/browserConnector.ts"
import type { Connect } from "./internal/connector.ts"
import {
  channelExtensionsOf,
  channelsExtension,
  checkChannelExtensions,
  checkProtocol,
  NEGOTIATE_PROTOCOL,
  type Negotiated
} from "./Negotiation.ts"
import * as SecondaryHandshake from "./SecondaryHandshake.ts"
import { fromAdapter, type WsConnection, WsConnectionService } from "./WsConnection.ts"
import { HandshakeTimeout, InvalidNegotiation, make as wsError, type WsError } from "./WsError.ts"

/**
 * The default largest message accepted, in bytes.
 *
 * @category constants
 * @since 0.1.0
 */
export const DEFAULT_MAX_PAYLOAD = 1024 * 1024

/**
 * The default deadline of the whole handshake (opening and secondary).
 *
 * @category constants
 * @since 0.1.0
 */
export const DEFAULT_HANDSHAKE_TIMEOUT: Duration.Duration = Duration.seconds(5)

/**
 * A client platform: how to open a WebSocket. The default is the global
 * `WebSocket`; `NodeWs.connector` uses the `ws` library.
 *
 * @category models
 * @since 0.1.0
 */
export interface Connector {
  readonly connect: Connect
}

/**
 * A connector over a DOM-style WebSocket constructor (default: the global
 * one).
 *
 * @category constructors
 * @since 0.1.0
 */
export const browserConnector = (
  ctor?: (new(url: string, protocols?: string | Array<string>) => any) | undefined
): Connector => ({ connect: makeConnect(ctor) })

/**
 * @category models
 * @since 0.1.0
 */
export interface DialOptions {
  /** `ws://` or `wss://` URL. */
  readonly url: string
  /** Sub-protocols to offer, most preferred first. */
  readonly protocols?: ReadonlyArray<string> | undefined
  /** Fail when the server selects none of the offered sub-protocols. Default: true when some are offered. */
  readonly requireProtocol?: boolean | undefined
  /** Offer `plexus-channels` with these per-channel extensions. */
  readonly channelExtensions?: ReadonlyArray<string> | undefined
  /**
   * Negotiate in a secondary handshake over the open socket instead of in
   * the opening handshake (the way for browsers to offer extensions).
   */
  readonly secondary?: SecondaryHandshake.ClientOptions | boolean | undefined
  /** Offer permessage-deflate (Node connector only; browsers decide themselves). Default false. */
  readonly deflate?: boolean | undefined
  /** Largest message accepted, in bytes (after inflation). Default `DEFAULT_MAX_PAYLOAD`. */
  readonly maxPayload?: number | undefined
  /** Deadline of the opening plus secondary handshake. Default `DEFAULT_HANDSHAKE_TIMEOUT`. */
  readonly handshakeTimeout?: Duration.Input | undefined
  /** Unread bytes above which reading pauses (Node), or, with `maxBuffered`, the connection fails (browsers). */
  readonly highWaterMark?: number | undefined
  /** Unread bytes a reader that cannot pause may hold before failing with `BufferOverflow`. */
  readonly maxBuffered?: number | undefined
  /** Driver buffered bytes above which writers wait. */
  readonly writeHighWaterMark?: number | undefined
  /** Largest message the byte view sends; larger writes go out as several messages. */
  readonly splitSize?: number | undefined
  /** Extra handshake headers (Node connector only). */
  readonly headers?: Readonly<Record<string, string>> | undefined
  /** Default `browserConnector()`. */
  readonly connector?: Connector | undefined
}

const defaultConnector = browserConnector()

/**
 * Opens a connection and runs the negotiation; the connection is closed
 * when the Scope closes.
 *
 * @category constructors
 * @since 0.1.0
 */
export const dial = (options: DialOptions): Effect.Effect<WsConnection, Socket.SocketError | WsError, Scope.Scope> =>
  Effect.suspend(() => {
    const connector = options.connector ?? defaultConnector
    const maxPayload = options.maxPayload ?? DEFAULT_MAX_PAYLOAD
    const offered = options.protocols ?? []
    const requireProtocol = options.requireProtocol ?? offered.length > 0
    const secondary = options.secondary === undefined || options.secondary === false
      ? undefined
      : options.secondary === true
      ? {}
      : options.secondary
    const timeout = Duration.fromInputUnsafe(options.handshakeTimeout ?? DEFAULT_HANDSHAKE_TIMEOUT)
    let phase: "opening" | "secondary" = "opening"
    const handshake = Effect.gen(function*() {
      const opened = yield* connector.connect({
        url: options.url,
        protocols: secondary === undefined ? offered : [NEGOTIATE_PROTOCOL],
        requireProtocol: secondary === undefined ? requireProtocol : true,
        extensions: secondary === undefined && options.channelExtensions !== undefined
          ? [channelsExtension(options.channelExtensions)]
          : [],
        deflate: options.deflate ?? false,
        maxPayload,
        headers: options.headers,
        adapter: {
          highWaterMark: options.highWaterMark,
          maxBuffered: options.maxBuffered,
          maxPayload,
          writeHighWaterMark: options.writeHighWaterMark
        }
      })
      const adapter = opened.adapter
      const views = sockets(adapter, options.splitSize)
      if (secondary !== undefined) {
        const notNegotiate = checkProtocol(opened.protocol, [NEGOTIATE_PROTOCOL], true)
        if (notNegotiate !== undefined) return yield* Effect.fail(wsError(notNegotiate))
        phase = "secondary"
        const outcome = yield* SecondaryHandshake.negotiate(adapter, {
          protocols: offered,
          channelExtensions: options.channelExtensions,
          requireProtocol
        }, secondary)
        return fromAdapter(adapter, views, { ...outcome.negotiated, deflate: opened.deflate }, {
          secondary: true,
          keyMaterial: outcome.keyMaterial
        })
      }
      const protocolError = checkProtocol(opened.protocol, offered, requireProtocol)
      if (protocolError !== undefined) {
        adapter.closeNow(1002, "sub-protocol not offered")
        return yield* Effect.fail(wsError(protocolError))
      }
      const channels = channelExtensionsOf(opened.extensions)
      const extensionError = channels instanceof InvalidNegotiation
        ? channels
        : checkChannelExtensions(channels, options.channelExtensions)
      if (extensionError !== undefined) {
        adapter.closeNow(1002, "extension not offered")
        return yield* Effect.fail(wsError(extensionError))
      }
      const negotiated: Negotiated = {
        protocol: opened.protocol,
        channelExtensions: channels as ReadonlyArray<string> | undefined,
        deflate: opened.deflate
      }
      return fromAdapter(adapter, views, negotiated, { secondary: false, keyMaterial: undefined })
    })
    return Effect.timeoutOrElse(handshake, {
      duration: timeout,
      orElse: () =>
        Effect.fail(wsError(new HandshakeTimeout({ phase, timeoutMillis: Duration.toMillis(timeout) })))
    })
  })

/**
 * One dialled connection as the `Socket` service (its byte view) and the
 * `WsConnectionService`.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerClient = (
  options: DialOptions
): Layer.Layer<Socket.Socket | WsConnectionService, Socket.SocketError | WsError> =>
  Layer.effectContext(Effect.map(dial(options), (connection) =>
    Context.make(WsConnectionService, connection).pipe(Context.add(Socket.Socket, connection.socket))))
