/**
 * effect/rpc over a KCM pool (`@plexus/kcm`): the message-carrier protocol
 * (`RpcMessages`, docs/spec/rpc.md) on a message socket of the multiplexor
 * in context, so many small calls are load-balanced over the pool's
 * connections, each request and response one message on whichever
 * connection is free.
 *
 * The one thing to know: a pool joins two processes, as Linux KCM does;
 * serve one client process per server multiplexor. The pool's delineation
 * bounds every message (KCM's default is 1 MiB): raise its
 * `maxMessageSize` on both sides to carry requests up to the RPC limit
 * (4 MiB by default).
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { RpcClient, RpcServer } from "effect/rpc"
import { Kcm } from "@plexus/kcm"
import * as RpcMessages from "./RpcMessages.ts"

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
    Effect.gen(function*() {
      const mux = yield* Kcm.Kcm
      const socket = yield* mux.socket()
      return yield* RpcMessages.makeClientProtocol(socket, options)
    })
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
      const server = yield* RpcMessages.makeServer(options)
      yield* Effect.forkScoped(server.serve(socket).pipe(Effect.scoped))
      return Context.make(RpcMessages.MessageServer, server).pipe(Context.add(RpcServer.Protocol, server.protocol))
    })
  )
