/**
 * The RPC-over-Channels server on a WebSocket port, in Node: `NodeWs`
 * listens (the opening and, when asked, the secondary handshake with its
 * authentication hook) and every connection's call channels are served
 * (`RpcChannels.serveWs`). Pages reach it with
 * `RpcChannels.layerClientWs`.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type { RpcServer } from "effect/rpc"
import type * as SocketServer from "effect/socket/SocketServer"
import { NodeWs, WsServer } from "@plexus/transport-ws"
import * as RpcChannels from "./RpcChannels.ts"
import * as RpcMessages from "./RpcMessages.ts"

/**
 * @category models
 * @since 0.1.0
 */
export interface ServerWsOptions extends RpcChannels.WsServerOptions {
  /**
   * Where and how to listen. Default `127.0.0.1:0`, sub-protocols
   * `[RpcChannels.PROTOCOL]`, per-channel extensions none, and the
   * secondary handshake available.
   */
  readonly listen?: NodeWs.ListenOptions | undefined
}

/**
 * Serves calls over Channels on every connection of the `WsServer` in
 * context (`NodeWs.layerServer`).
 *
 * @category layers
 * @since 0.1.0
 */
export const layerServerWsServer = (
  options?: RpcChannels.WsServerOptions
): Layer.Layer<RpcServer.Protocol | RpcMessages.MessageServer, never, WsServer.WsServer> =>
  RpcChannels.layerFrom(Effect.gen(function*() {
    const server = yield* RpcMessages.makeServer(options)
    yield* RpcChannels.serveWs(server, yield* WsServer.WsServer, options)
    return server
  }))

/**
 * Listens and serves calls over Channels on every connection; also provides
 * the `WsServer` (its `url`, `port`, counters).
 *
 * @category layers
 * @since 0.1.0
 */
export const layerServerWs = (
  options?: ServerWsOptions
): Layer.Layer<
  RpcServer.Protocol | RpcMessages.MessageServer | WsServer.WsServer,
  SocketServer.SocketServerError
> =>
  layerServerWsServer(options).pipe(
    Layer.provideMerge(
      Layer.effect(
        WsServer.WsServer,
        NodeWs.listen({
          protocols: [RpcChannels.PROTOCOL],
          channelExtensions: [],
          secondary: true,
          ...options?.listen
        })
      )
    )
  )
