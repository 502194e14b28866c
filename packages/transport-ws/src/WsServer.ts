/**
 * A listening WebSocket server: the `effect/socket` `SocketServer` shape
 * (`address`, `run`) plus accept-as-an-Effect, accept-as-a-Stream, and
 * counters, like `TcpServer`.
 *
 * The one thing to know: every accepted connection belongs to the server's
 * Scope. A connection whose handshake completed waits, paused, until it is
 * accepted (nothing it sends is lost); closing the server's scope stops
 * listening and closes every connection still open, accepted or not.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Effect from "effect/Effect"
import type * as NetAddress from "effect/net/NetAddress"
import type * as Scope from "effect/Scope"
import type * as SocketServer from "effect/socket/SocketServer"
import type * as Stream from "effect/Stream"
import type { WsConnection } from "./WsConnection.ts"

/**
 * One accepted connection.
 *
 * @category models
 * @since 0.1.0
 */
export interface Connection extends WsConnection {
  readonly remoteAddress: string
  readonly remotePort: number
  /** The request's `Origin`, if any. */
  readonly origin: string | undefined
  /** The request target (path and query). */
  readonly path: string
  /** The `Authorization` of the accepted secondary handshake request, if any. */
  readonly authorization: string | undefined
}

/**
 * Counters since the server started listening.
 *
 * @category models
 * @since 0.1.0
 */
export interface Stats {
  /** Connections whose handshake completed, handed on or waiting to be. */
  readonly accepted: number
  /** Accepted connections not closed yet. */
  readonly open: number
  /** Upgrades answered 403 because the Origin is not allowed. */
  readonly rejectedOrigin: number
  /** Upgrades answered 503 because `maxConnections` was reached. */
  readonly refused: number
  /** Upgrades answered 4xx for bad negotiation headers, too many headers, or a plain HTTP request (426). */
  readonly badRequests: number
  /** Connections dropped because the handshake (opening or secondary) passed its deadline. */
  readonly timedOut: number
  /** Secondary handshakes that failed (malformed, refused, attempts cap), or were skipped where required (401 before upgrading). */
  readonly secondaryFailed: number
}

/**
 * A listening server. `run`, `accept` and `connections` all draw from the
 * same queue of accepted connections: each goes to exactly one of them.
 *
 * @category services
 * @since 0.1.0
 */
export class WsServer extends Context.Service<WsServer, {
  readonly address: NetAddress.SocketAddress
  readonly port: number
  /** `ws://host:port/` of the bound address. */
  readonly url: string
  /**
   * Runs `handler` in its own fiber for each connection's byte Socket; the
   * connection is closed when its handler ends.
   */
  readonly run: SocketServer.SocketServer["Service"]["run"]
  /** Waits for the next connection, which is closed when the caller's scope closes. */
  readonly accept: Effect.Effect<Connection, SocketServer.SocketServerError, Scope.Scope>
  /** Accepted connections as a stream that ends when the server closes. */
  readonly connections: Stream.Stream<Connection>
  readonly stats: Effect.Effect<Stats>
}>()("@plexus/transport-ws/WsServer") {}
