/**
 * TLS over TCP as a plexus byte transport, with the same Socket conventions
 * and the same `TcpServer` shape as `Tcp`.
 *
 * The one thing to know: a dialled Socket is handed over only after the
 * handshake has completed (and `connectTimeout` covers the handshake), and a
 * server hands on a connection only after its handshake; connections that
 * fail or stall in the handshake are dropped without reaching the
 * application. Half-close works over TLS; a reset (`CloseEvent` other than
 * 1000) resets the TCP connection underneath.
 *
 * @since 0.1.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import type * as SocketServer from "effect/socket/SocketServer"
import * as Net from "node:net"
import * as NodeTls from "node:tls"
import { dialWith, netSocketOptions } from "./internal/dial.ts"
import { layerFromServer, listenWith } from "./internal/server.ts"
import type { DialOptions as TcpDialOptions, ListenOptions as TcpListenOptions } from "./Tcp.ts"
import type { TcpServer } from "./TcpServer.ts"

type Pem = string | Uint8Array | ReadonlyArray<string | Uint8Array>

const pem = (value: Pem | undefined): string | Buffer | Array<string | Buffer> | undefined => {
  if (value === undefined) return undefined
  const one = (v: string | Uint8Array) => typeof v === "string" ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength)
  return typeof value === "string" || value instanceof Uint8Array ? one(value) : value.map(one)
}

/**
 * @category models
 * @since 0.1.0
 */
export interface DialOptions extends TcpDialOptions {
  /** Trusted CA certificates (PEM). Default: node's root store. */
  readonly ca?: Pem | undefined
  /** Name for SNI and certificate checking. Default: `host` when it is a name, else none. */
  readonly servername?: string | undefined
  /** Default `true`. */
  readonly rejectUnauthorized?: boolean | undefined
  /** Client certificate (PEM), with `key`. */
  readonly cert?: Pem | undefined
  readonly key?: Pem | undefined
  readonly alpnProtocols?: ReadonlyArray<string> | undefined
}

/**
 * @category models
 * @since 0.1.0
 */
export interface ListenOptions extends TcpListenOptions {
  readonly key: Pem
  readonly cert: Pem
  /** CAs to verify client certificates against (with `requestCert`). */
  readonly ca?: Pem | undefined
  readonly requestCert?: boolean | undefined
  /** Default `true` (only used with `requestCert`). */
  readonly rejectUnauthorized?: boolean | undefined
  readonly alpnProtocols?: ReadonlyArray<string> | undefined
  /** Connections whose handshake takes longer are dropped. Default 10 seconds. */
  readonly handshakeTimeout?: Duration.Input | undefined
}

/**
 * Connects and completes the TLS handshake. Fails with `SocketOpenError`:
 * `kind: "Timeout"` when connecting plus handshaking exceeds
 * `connectTimeout`, `"Unknown"` for a refused connection or a failed
 * handshake (an untrusted certificate, a name mismatch). The connection is
 * closed when the Scope closes.
 *
 * @category constructors
 * @since 0.1.0
 */
export const dial = (options: DialOptions): Effect.Effect<Socket.Socket, Socket.SocketError, Scope.Scope> =>
  dialWith({
    connect: () => {
      const host = options.host ?? "127.0.0.1"
      // TLS wraps a TCP socket we create, so an abort can reset that socket.
      const raw = Net.connect({ host, port: options.port, ...netSocketOptions(options) })
      return NodeTls.connect({
        socket: raw,
        host,
        servername: options.servername ?? (Net.isIP(host) === 0 ? host : undefined),
        ca: pem(options.ca),
        cert: pem(options.cert),
        key: pem(options.key),
        rejectUnauthorized: options.rejectUnauthorized ?? true,
        ALPNProtocols: options.alpnProtocols === undefined ? undefined : [...options.alpnProtocols]
      } as NodeTls.ConnectionOptions)
    },
    readyEvent: "secureConnect",
    connectTimeout: options.connectTimeout,
    adapter: { highWaterMark: options.highWaterMark }
  })

/**
 * A `Socket` service backed by one dialled TLS connection.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerClient = (options: DialOptions): Layer.Layer<Socket.Socket, Socket.SocketError> =>
  Layer.effect(Socket.Socket, dial(options))

/**
 * Listens for TLS on `host:port` (default `127.0.0.1:0`). Connections are
 * handed on once their handshake completes.
 *
 * @category constructors
 * @since 0.1.0
 */
export const listen = (
  options: ListenOptions
): Effect.Effect<TcpServer["Service"], SocketServer.SocketServerError, Scope.Scope> =>
  Effect.suspend(() => {
    const server = NodeTls.createServer({
      ...netSocketOptions(options),
      key: pem(options.key),
      cert: pem(options.cert),
      ca: pem(options.ca),
      requestCert: options.requestCert ?? false,
      rejectUnauthorized: options.rejectUnauthorized ?? true,
      ALPNProtocols: options.alpnProtocols === undefined ? undefined : [...options.alpnProtocols],
      handshakeTimeout: options.handshakeTimeout === undefined ? 10_000 : Duration.toMillis(options.handshakeTimeout)
    } as NodeTls.TlsOptions)
    server.on("tlsClientError", (_error, conn) => conn.destroy())
    return listenWith({
      server,
      connectionEvent: "secureConnection",
      host: options.host ?? "127.0.0.1",
      port: options.port ?? 0,
      backlog: options.backlog,
      maxConnections: options.maxConnections,
      adapter: { highWaterMark: options.highWaterMark }
    })
  })

/**
 * A listening TLS server as both the generic `SocketServer` service and
 * `TcpServer`.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerServer = (
  options: ListenOptions
): Layer.Layer<SocketServer.SocketServer | TcpServer, SocketServer.SocketServerError> =>
  layerFromServer(listen(options))
