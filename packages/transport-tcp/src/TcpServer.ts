/**
 * A listening TCP or TLS server: the `effect/socket` `SocketServer` shape
 * (`address`, `run`) plus accept-as-an-Effect, accept-as-a-Stream, and
 * counters.
 *
 * The one thing to know: every accepted connection belongs to the server's
 * Scope. Connections that arrive before anyone accepts them wait (paused, so
 * no bytes are lost); closing the server's scope stops listening and closes
 * every connection still open, accepted or not.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Effect from "effect/Effect"
import type * as NetAddress from "effect/net/NetAddress"
import type * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import type * as SocketServer from "effect/socket/SocketServer"
import type * as Stream from "effect/Stream"

/**
 * One accepted connection.
 *
 * @category models
 * @since 0.1.0
 */
export interface Connection {
  readonly socket: Socket.Socket
  readonly remoteAddress: string
  readonly remotePort: number
  /**
   * Ends the connection now: flushes queued writes and closes (resetting it
   * if the flush stalls). The server's scope does this for every connection
   * still open when it closes.
   */
  readonly close: Effect.Effect<void>
}

/**
 * Counters of a server since it started listening.
 *
 * @category models
 * @since 0.1.0
 */
export interface Stats {
  /** Connections accepted and handed on (or waiting to be). */
  readonly accepted: number
  /** Connections refused at once because `maxConnections` was reached. */
  readonly refused: number
  /** Accepted connections not closed yet. */
  readonly open: number
}

/**
 * A listening server. `run`, `accept` and `connections` all draw from the
 * same queue of accepted connections: each connection goes to exactly one
 * of them.
 *
 * @category services
 * @since 0.1.0
 */
export class TcpServer extends Context.Service<TcpServer, {
  /** The bound address: the real port when listening on port 0. */
  readonly address: NetAddress.SocketAddress
  /** The bound port. */
  readonly port: number
  /**
   * Runs `handler` in its own fiber for each connection; the connection is
   * closed when its handler ends. Interrupting `run` interrupts the handlers.
   * Fails when the server has closed.
   */
  readonly run: SocketServer.SocketServer["Service"]["run"]
  /**
   * Waits for the next connection, which is closed when the caller's scope
   * closes. Fails when the server has closed.
   */
  readonly accept: Effect.Effect<Connection, SocketServer.SocketServerError, Scope.Scope>
  /**
   * The accepted connections as a stream that ends when the server closes.
   * Each connection lives until its `close`, or until the server's scope
   * closes.
   */
  readonly connections: Stream.Stream<Connection>
  readonly stats: Effect.Effect<Stats>
}>()("@plexus/transport-tcp/TcpServer") {}
