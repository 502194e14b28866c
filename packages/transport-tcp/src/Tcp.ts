/**
 * TCP as a plexus byte transport: `dial` connects and gives an
 * `effect/socket` `Socket` for that one connection; `listen` binds a
 * `TcpServer` whose connections are Sockets too.
 *
 * Every Socket here follows the conventions in `@plexus/core` `Transport`:
 * a peer's FIN fails the reader with close code 1000 after every received
 * byte was pulled; a reset fails it with 1006 and the error code (e.g.
 * `ECONNRESET`); releasing the writer half-closes; writing
 * `CloseEvent(1000)` closes gracefully and any other code resets. The
 * connection itself belongs to the Scope it was dialled or accepted in.
 *
 * @since 0.1.0
 */
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import * as SocketServer from "effect/socket/SocketServer"
import * as Net from "node:net"
import { dialWith, netSocketOptions } from "./internal/dial.ts"
import * as internal from "./internal/nodeSocket.ts"
import { layerFromServer, listenWith } from "./internal/server.ts"
import type { TcpServer } from "./TcpServer.ts"

/**
 * The read buffer of a connection, in bytes, above which it stops reading
 * from the kernel until the reader pulls.
 *
 * @category constants
 * @since 0.1.0
 */
export const DEFAULT_HIGH_WATER_MARK: number = internal.DEFAULT_HIGH_WATER_MARK

/**
 * Socket options shared by dialled and accepted connections.
 *
 * @category models
 * @since 0.1.0
 */
export interface SocketOptions {
  /** Disables Nagle's algorithm. Default `true`. */
  readonly noDelay?: boolean | undefined
  /** TCP keepalive: `true`, or the idle time before the first probe. Default off. */
  readonly keepAlive?: boolean | Duration.Input | undefined
  /** Bytes buffered for the reader before reading pauses. Default `DEFAULT_HIGH_WATER_MARK`. */
  readonly highWaterMark?: number | undefined
}

/**
 * @category models
 * @since 0.1.0
 */
export interface DialOptions extends SocketOptions {
  /** Default `"127.0.0.1"`. */
  readonly host?: string | undefined
  readonly port: number
  /** Fails with `SocketOpenError { kind: "Timeout" }` when connecting takes longer. */
  readonly connectTimeout?: Duration.Input | undefined
}

/**
 * @category models
 * @since 0.1.0
 */
export interface ListenOptions extends SocketOptions {
  /** Default `"127.0.0.1"`. */
  readonly host?: string | undefined
  /** Default `0`: an ephemeral port, reported in `address` and `port`. */
  readonly port?: number | undefined
  /** Connections open at once; more are refused (closed at once) and counted. */
  readonly maxConnections?: number | undefined
  /** The kernel's accept queue length. */
  readonly backlog?: number | undefined
}

/**
 * Connects to `host:port` now. Fails with `SocketOpenError` (`kind:
 * "Timeout"` after `connectTimeout`). The connection is closed when the
 * Scope closes: at once if nothing is left to flush, otherwise after the
 * flush (or with a reset if the flush stalls).
 *
 * @category constructors
 * @since 0.1.0
 */
export const dial = (options: DialOptions): Effect.Effect<Socket.Socket, Socket.SocketError, Scope.Scope> =>
  dialWith({
    connect: () =>
      internal.readingInto((onread) =>
        Net.connect({ host: options.host ?? "127.0.0.1", port: options.port, ...netSocketOptions(options), onread })
      ),
    readyEvent: "connect",
    connectTimeout: options.connectTimeout,
    adapter: { highWaterMark: options.highWaterMark }
  })

/**
 * A `Socket` service backed by one dialled TCP connection.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerClient = (options: DialOptions): Layer.Layer<Socket.Socket, Socket.SocketError> =>
  Layer.effect(Socket.Socket, dial(options))

/**
 * Listens on `host:port` (default `127.0.0.1:0`). Closing the Scope stops
 * listening and closes every connection.
 *
 * @category constructors
 * @since 0.1.0
 */
export const listen = (
  options: ListenOptions = {}
): Effect.Effect<TcpServer["Service"], SocketServer.SocketServerError, Scope.Scope> =>
  Effect.suspend(() => {
    const socketOptions = netSocketOptions(options)
    return listenWith({
      server: Net.createServer({ ...socketOptions, pauseOnConnect: true }),
      connectionEvent: "connection",
      adoptReads: socketOptions,
      host: options.host ?? "127.0.0.1",
      port: options.port ?? 0,
      backlog: options.backlog,
      maxConnections: options.maxConnections,
      adapter: { highWaterMark: options.highWaterMark }
    })
  })

/**
 * A listening server as both the generic `SocketServer` service and
 * `TcpServer`.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerServer = (
  options: ListenOptions = {}
): Layer.Layer<SocketServer.SocketServer | TcpServer, SocketServer.SocketServerError> =>
  layerFromServer(listen(options))

/**
 * Presents a connected `net.Socket` you own as a `Socket` with these
 * conventions. Create it with `allowHalfOpen: true` for half-close to work.
 * Closing it stays your job.
 *
 * @category constructors
 * @since 0.1.0
 */
export const fromNetSocket = (
  conn: Net.Socket,
  options?: { readonly highWaterMark?: number | undefined }
): Socket.Socket => internal.fromNodeSocket(conn, options)

/**
 * The `net.Socket` (or `tls.TLSSocket`) behind a Socket from this package,
 * for socket options and addresses the Socket interface does not carry.
 *
 * @category accessors
 * @since 0.1.0
 */
export const netSocket = (socket: Socket.Socket): Net.Socket | undefined => internal.underlying(socket)
