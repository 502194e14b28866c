/**
 * effect/rpc over a KCM pool (`@plexus/kcm`): the message-carrier protocol
 * (`RpcMessages`, docs/spec/rpc.md) on a message socket of the multiplexor
 * in context, so many small calls are load-balanced over the pool's
 * connections, each request and response one message on whichever
 * connection is free.
 *
 * The one thing to know: a pool joins two processes, as Linux KCM does, so
 * a server that serves several client processes keeps each one's
 * connections apart: `layerClient` starts every connection with a pool
 * hello naming its pool, and `layerServerPools` groups connections by it,
 * one multiplexor per client pool (`layerServer` serves one pool only). The
 * pool's delineation bounds every message (KCM's default is 1 MiB): raise
 * its `maxMessageSize` on both sides to carry requests up to the RPC limit
 * (4 MiB by default).
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import { RpcClient, RpcServer } from "effect/rpc"
import * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import * as SocketServer from "effect/socket/SocketServer"
import * as Stream from "effect/Stream"
import { Kcm, type KcmError } from "@plexus/kcm"
import * as PoolHello from "./internal/poolHello.ts"
import * as RpcMessages from "./RpcMessages.ts"

/**
 * The client over a message socket of a multiplexor. When a connection
 * leaves the pool on a failure, the messages it held (written, not yet
 * read by the peer) are lost without a trace, so the client asks the server
 * about its unanswered calls (PROBE, docs/spec/rpc.md): each one the server
 * does not know fails with `ConnectionLost` instead of waiting forever.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeClient = (
  mux: Kcm.Multiplexor,
  options?: RpcMessages.ClientOptions
): Effect.Effect<RpcMessages.Client, never, Scope.Scope> =>
  Effect.gen(function*() {
    const socket = yield* mux.socket()
    const client = yield* RpcMessages.makeClient(socket, { batchWrites: false, ...options })
    const events = yield* mux.events
    yield* Effect.forkScoped(Stream.runForEach(events, (event) =>
      event._tag === "Detached" && event.reason._tag !== "Requested" && event.reason._tag !== "MuxClosed"
        ? client.probe
        : Effect.void))
    return client
  })

/**
 * The client protocol over a message socket of the multiplexor in context.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerClientProtocol = (
  options?: RpcMessages.ClientOptions
): Layer.Layer<RpcClient.Protocol, never, Kcm.Kcm> =>
  Layer.effect(
    RpcClient.Protocol,
    Effect.map(Effect.flatMap(Kcm.Kcm, (mux) => makeClient(mux, options)), (client) => client.protocol)
  )

/**
 * The server protocol (and `MessageServer`, for draining and counters)
 * over a message socket of the multiplexor in context.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerServer = (
  options?: RpcMessages.ServerOptions
): Layer.Layer<RpcServer.Protocol | RpcMessages.MessageServer, never, Kcm.Kcm> =>
  Layer.effectContext(
    Effect.gen(function*() {
      const mux = yield* Kcm.Kcm
      const socket = yield* mux.socket()
      const server = yield* RpcMessages.makeServer({ batchWrites: false, ...options })
      yield* Effect.forkScoped(server.serve(socket).pipe(Effect.scoped))
      return Context.make(RpcMessages.MessageServer, server).pipe(Context.add(RpcServer.Protocol, server.protocol))
    })
  )

// Pools ----------------------------------------------------------------------

/**
 * A dial whose connections start with the pool hello of `poolId` (spec:
 * Calls over a KCM pool), for `Kcm.makePool` or `Kcm.layerClient`.
 *
 * @category constructors
 * @since 0.1.0
 */
export const dialWithHello = <E>(
  dial: Effect.Effect<Socket.Socket, E, Scope.Scope>,
  poolId: string
): Effect.Effect<Socket.Socket, E, Scope.Scope> => {
  const hello = PoolHello.encode(poolId)
  return Effect.map(dial, (socket) => PoolHello.sendingHello(socket, hello))
}

/**
 * @category models
 * @since 0.1.0
 */
export interface ClientOptions<E> extends Kcm.PoolOptions<E>, RpcMessages.ClientOptions {
  /** The pool's id in its hello (1–64 bytes). Default: 16 random bytes, in hex. */
  readonly poolId?: string | undefined
}

/**
 * A client pool (`Kcm.layerClient`) whose connections say hello, and the
 * client protocol on it: what `layerServerPools` serves.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerClient = <E>(
  options: ClientOptions<E>
): Layer.Layer<RpcClient.Protocol | Kcm.Kcm, E | KcmError.KcmError | Socket.SocketError> =>
  layerClientProtocol(options).pipe(
    Layer.provideMerge(
      Kcm.layerClient({ ...options, dial: dialWithHello(options.dial, options.poolId ?? PoolHello.randomPoolId()) })
    )
  )

/**
 * @category models
 * @since 0.1.0
 */
export interface PoolServerOptions extends RpcMessages.ServerOptions {
  /** Options of each client pool's multiplexor (the delineation above all: the clients' own). */
  readonly kcm?: Kcm.Options | undefined
  /** How long a new connection has to say hello. Default 5 s. */
  readonly helloTimeout?: Duration.Input | undefined
}

/**
 * Counters of a pooled server.
 *
 * @category models
 * @since 0.1.0
 */
export interface PoolStats {
  /** Client pools with a connection now. */
  readonly pools: number
  /** Connections attached now. */
  readonly connections: number
  /** Connections closed because their first bytes were no pool hello (or none came in time). */
  readonly badHellos: number
}

/**
 * The pools of a server: counters.
 *
 * @category services
 * @since 0.1.0
 */
export class PoolServer extends Context.Service<PoolServer, {
  readonly stats: Effect.Effect<PoolStats>
}>()("@plexus/rpc/RpcKcm/PoolServer") {}

/**
 * Serves many client pools on one RPC server: every connection must start
 * with a pool hello; the connections of one pool are attached to a
 * multiplexor of their own, so a reply goes back on a connection of the
 * pool its request came from. A pool's multiplexor closes with its last
 * connection (its running calls are interrupted: nobody is left to answer).
 *
 * @category constructors
 * @since 0.1.0
 */
export const makePoolServer = (options?: PoolServerOptions): Effect.Effect<{
  readonly server: RpcMessages.Server
  readonly handle: (socket: Socket.Socket) => Effect.Effect<void, never, Scope.Scope>
  readonly stats: Effect.Effect<PoolStats>
}, never, Scope.Scope> =>
  Effect.gen(function*() {
    const server = yield* RpcMessages.makeServer({ batchWrites: false, ...options })
    const scope = yield* Effect.scope
    const helloTimeout = Duration.fromInputUnsafe(options?.helloTimeout ?? "5 seconds")
    const pools = new Map<string, { readonly mux: Kcm.Multiplexor; readonly scope: Scope.Closeable; members: number }>()
    const stats = { connections: 0, badHellos: 0 }

    const poolOf = (poolId: string) =>
      Effect.gen(function*() {
        const existing = pools.get(poolId)
        if (existing !== undefined) return existing
        const poolScope = yield* Scope.fork(scope)
        const mux = yield* Scope.provide(Kcm.make(options?.kcm), poolScope)
        const socket = yield* Scope.provide(mux.socket(), poolScope)
        yield* Effect.forkIn(Effect.scoped(server.serve(socket)), poolScope)
        const pool = { mux, scope: poolScope, members: 0 }
        pools.set(poolId, pool)
        return pool
      })

    const handle = (socket: Socket.Socket): Effect.Effect<void, never, Scope.Scope> =>
      Effect.gen(function*() {
        const reader = yield* Effect.orDie(socket.reader)
        const hello = yield* Effect.result(PoolHello.read(reader).pipe(
          Effect.timeoutOrElse({
            duration: helloTimeout,
            orElse: () => Effect.fail<PoolHello.HelloFailure>({ _tag: "BadHello", detail: "no hello in time" })
          })
        ))
        if (hello._tag === "Failure") {
          if (hello.failure._tag === "BadHello") stats.badHellos++
          return
        }
        const { poolId, rest } = hello.success
        const pool = yield* poolOf(poolId)
        pool.members++
        stats.connections++
        yield* Effect.addFinalizer(() =>
          Effect.suspend(() => {
            stats.connections--
            if (--pool.members > 0) return Effect.void
            pools.delete(poolId)
            return Scope.close(pool.scope, Exit.void)
          })
        )
        const attachment = yield* Effect.result(pool.mux.attach(PoolHello.resuming(socket, reader, rest), { label: poolId }))
        if (attachment._tag === "Failure") return
        yield* attachment.success.gone
      }).pipe(Effect.catchCause(() => Effect.void))

    return {
      server,
      handle,
      stats: Effect.sync((): PoolStats => ({ ...stats, pools: pools.size }))
    }
  })

/**
 * The server protocol, `MessageServer` and `PoolServer` over every
 * connection of the `SocketServer` in context (`Tcp.layerServer`), each
 * client pool on a multiplexor of its own.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerServerPools = (
  options?: PoolServerOptions
): Layer.Layer<RpcServer.Protocol | RpcMessages.MessageServer | PoolServer, never, SocketServer.SocketServer> =>
  Layer.effectContext(
    Effect.gen(function*() {
      const pooled = yield* makePoolServer(options)
      const sockets = yield* SocketServer.SocketServer
      yield* Effect.forkScoped(Effect.ignore(sockets.run((socket) => Effect.scoped(pooled.handle(socket)))))
      return Context.make(RpcMessages.MessageServer, pooled.server).pipe(
        Context.add(RpcServer.Protocol, pooled.server.protocol),
        Context.add(PoolServer, { stats: pooled.stats })
      )
    })
  )
