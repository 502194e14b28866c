/**
 * WebSocket in Node, on the `ws` library: `listen` binds a `WsServer`,
 * `dial` connects with the full opening-handshake negotiation (extension
 * offers, `maxPayload` enforced on frame headers, reading paused when the
 * reader lags). `connector` plugs the `ws` client into the browser-safe
 * `Ws.dial`.
 *
 * Server hardening, each with a default: the handshake deadline (5 s from
 * the TCP connection to a completed handshake, secondary included), request
 * header size (8 KiB) and count (64) limits (431), an origin allow-list
 * (403 before upgrading), a connection cap (503), `maxPayload` (1 MiB; 1009
 * on a bigger message, checked after inflation too), permessage-deflate off,
 * and per-connection read buffering bounded by pausing the TCP socket.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import * as SocketServer from "effect/socket/SocketServer"
import { connect } from "./internal/nodeConnector.ts"
import * as internal from "./internal/nodeServer.ts"
import * as Ws from "./Ws.ts"
import type { WsConnection, WsConnectionService } from "./WsConnection.ts"
import type { WsError } from "./WsError.ts"
import { WsServer } from "./WsServer.ts"

/**
 * The `ws` client as a `Ws.Connector`.
 *
 * @category constructors
 * @since 0.1.0
 */
export const connector: Ws.Connector = { connect }

/**
 * @category models
 * @since 0.1.0
 */
export type DialOptions = Omit<Ws.DialOptions, "connector">

/**
 * Dials with the `ws` client.
 *
 * @category constructors
 * @since 0.1.0
 */
export const dial = (options: DialOptions): Effect.Effect<WsConnection, Socket.SocketError | WsError, Scope.Scope> =>
  Ws.dial({ ...options, connector })

/**
 * @category layers
 * @since 0.1.0
 */
export const layerClient = (
  options: DialOptions
): Layer.Layer<Socket.Socket | WsConnectionService, Socket.SocketError | WsError> =>
  Ws.layerClient({ ...options, connector })

/**
 * Server options. `protocols` and `channelExtensions` apply to both the
 * opening and the secondary handshake; `secondary` enables the latter for
 * clients that select `plexus-negotiate.v1`.
 *
 * @category models
 * @since 0.1.0
 */
export interface ListenOptions extends internal.ListenOptions {}

/**
 * Listens on `host:port` (default `127.0.0.1:0`). Closing the Scope stops
 * listening and closes every connection.
 *
 * @category constructors
 * @since 0.1.0
 */
export const listen = (
  options: ListenOptions = {}
): Effect.Effect<WsServer["Service"], SocketServer.SocketServerError, Scope.Scope> =>
  Effect.suspend(() => internal.listen(options))

/**
 * A listening server as both the generic `SocketServer` service (each
 * connection's byte Socket) and `WsServer`.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerServer = (
  options: ListenOptions = {}
): Layer.Layer<SocketServer.SocketServer | WsServer, SocketServer.SocketServerError> =>
  Layer.effectContext(Effect.map(listen(options), (server) =>
    Context.make(WsServer, server).pipe(
      Context.add(SocketServer.SocketServer, SocketServer.SocketServer.of(server))
    )))
