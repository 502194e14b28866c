/**
 * Listening shared by TCP and TLS: one queue of accepted connections that
 * `run`, `accept` and `connections` draw from, a set of live connections the
 * server's Scope closes, and counters.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as NetAddress from "effect/net/NetAddress"
import * as Queue from "effect/Queue"
import * as Result from "effect/Result"
import type * as Scope from "effect/Scope"
import * as SocketServer from "effect/socket/SocketServer"
import * as Context from "effect/Context"
import * as Layer from "effect/Layer"
import type * as Net from "node:net"
import { Acceptor } from "@plexus/core"
import { type Connection, TcpServer } from "../TcpServer.ts"
import { type AdapterOptions, adoptReadingInto, fromNodeSocket, release } from "./nodeSocket.ts"

const openError = (cause: unknown) =>
  new SocketServer.SocketServerError({ reason: new SocketServer.SocketServerOpenError({ cause }) })

/** @internal */
export const listenWith = (options: {
  readonly server: Net.Server
  readonly connectionEvent: "connection" | "secureConnection"
  /**
   * Read accepted connections into the adapter's memory (plain TCP; see
   * `adoptReadingInto`), given the socket options the server applies.
   */
  readonly adoptReads?: Parameters<typeof adoptReadingInto>[1] | undefined
  readonly host: string
  readonly port: number
  readonly backlog?: number | undefined
  readonly maxConnections?: number | undefined
  readonly adapter?: AdapterOptions | undefined
}): Effect.Effect<TcpServer["Service"], SocketServer.SocketServerError, Scope.Scope> =>
  Effect.gen(function*() {
    const server = options.server
    const pending = yield* Queue.unbounded<Connection, Cause.Done>()
    const live = new Set<Net.Socket>()
    let accepted = 0
    let refused = 0
    let closed = false

    const onConnection = (socket: Net.Socket) => {
      if (closed) {
        socket.destroy()
        return
      }
      const conn = options.adoptReads !== undefined ? adoptReadingInto(socket, options.adoptReads) : socket
      accepted++
      live.add(conn)
      conn.once("close", () => live.delete(conn))
      Queue.offerUnsafe(pending, {
        socket: fromNodeSocket(conn, options.adapter),
        remoteAddress: conn.remoteAddress ?? "",
        remotePort: conn.remotePort ?? 0,
        close: Effect.sync(() => release(conn))
      })
    }
    server.on(options.connectionEvent, onConnection)
    // Every TCP connection from accept to close, including TLS connections
    // still in their handshake, which `live` does not hold yet.
    const tcpConnections = new Set<Net.Socket>()
    server.on("connection", (raw: Net.Socket) => {
      tcpConnections.add(raw)
      raw.once("close", () => tcpConnections.delete(raw))
    })
    // Node refuses (closes) connections beyond maxConnections itself and
    // reports each one with 'drop'.
    server.on("drop", () => {
      refused++
    })
    if (options.maxConnections !== undefined) server.maxConnections = options.maxConnections

    yield* Effect.addFinalizer(() =>
      Effect.flatMap(Queue.clear(pending), (waiting) =>
        Effect.callback<void>((resume) => {
          closed = true
          Queue.endUnsafe(pending)
          for (const c of waiting) Effect.runSync(c.close)
          const handedOn = new Set<unknown>()
          for (const conn of live) {
            handedOn.add(conn)
            handedOn.add((conn as { _parent?: unknown })._parent)
            release(conn)
          }
          for (const raw of tcpConnections) if (!handedOn.has(raw)) raw.destroy()
          server.close(() => resume(Effect.void))
        }))
    )

    yield* Effect.callback<void, SocketServer.SocketServerError>((resume) => {
      const onError = (cause: Error) => resume(Effect.fail(openError(cause)))
      server.once("error", onError)
      server.listen({ host: options.host, port: options.port, backlog: options.backlog }, () => {
        server.off("error", onError)
        resume(Effect.void)
      })
    })
    // Accept failures (EMFILE, ...) are the server's to survive, not to crash on.
    server.on("error", () => {})

    const bound = server.address() as Net.AddressInfo
    const address = NetAddress.inetAddressFromIpString(bound.address, bound.port)
    if (Result.isFailure(address)) return yield* Effect.fail(openError(address.failure))

    const { run, accept, connections } = Acceptor.fromQueue(pending, "TCP")

    return {
      address: address.success,
      port: bound.port,
      run,
      accept,
      connections,
      stats: Effect.sync(() => ({ accepted, refused, open: live.size }))
    }
  })

/** Provides a server as both the generic `SocketServer` and `TcpServer`. @internal */
export const layerFromServer = <E>(
  make: Effect.Effect<TcpServer["Service"], E, Scope.Scope>
): Layer.Layer<SocketServer.SocketServer | TcpServer, E> =>
  Layer.effectContext(Effect.map(make, (server) =>
    Context.make(TcpServer, server).pipe(
      Context.add(SocketServer.SocketServer, SocketServer.SocketServer.of(server))
    )))
