/**
 * The Storefront: the API pages call, over WebSocket. Each page connection
 * runs Channels, and its calls travel on one channel labelled for RPC
 * (`RpcChannels`; `NodeRpcChannels.layerServerWs` listens and serves). A
 * page calls it with `RpcChannels.layerClientWs({ url })`, which bundles
 * for the browser.
 *
 * Behind it, Storefront calls Orders (checkout) and Inventory (catalog,
 * stock stream, recount) over RpcSession on TCP. The page's deadline
 * covers the whole chain: when it passes, the Storefront server interrupts
 * its handler, which cancels the call to Inventory (its session stream is
 * reset), which interrupts Inventory's handler in turn.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { RpcServer } from "effect/rpc"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { NodeRpcChannels, RpcMessages } from "@plexus/rpc"
import { WsServer } from "@plexus/transport-ws"
import { InventoryApi, OrdersApi, StorefrontApi } from "./api.ts"
import { dialService, orUnavailable } from "./connect.ts"

export interface StorefrontOptions {
  readonly inventoryPort: number
  readonly ordersPort: number
}

export interface Storefront {
  /** Where pages connect, e.g. `ws://127.0.0.1:40123/`. */
  readonly url: string
  readonly server: RpcMessages.Server
}

/** Starts the Storefront on an ephemeral 127.0.0.1 port; it stops when the Scope closes. */
export const start = (options: StorefrontOptions): Effect.Effect<Storefront, unknown, Scope.Scope> =>
  Effect.gen(function*() {
    const inventory = yield* dialService(InventoryApi, options.inventoryPort)
    const orders = yield* dialService(OrdersApi, options.ordersPort)
    const handlers = StorefrontApi.toLayer({
      Catalog: () => inventory.Catalog().pipe(Effect.mapError(orUnavailable("Inventory"))),
      Checkout: (order) => orders.PlaceOrder(order).pipe(Effect.mapError(orUnavailable("Orders"))),
      WatchStock: () => inventory.WatchStock().pipe(Stream.mapError(orUnavailable("Inventory"))),
      Recount: (request) => inventory.Recount(request).pipe(Effect.mapError(orUnavailable("Inventory")))
    })
    const context = yield* Layer.build(
      RpcServer.layer(StorefrontApi).pipe(
        Layer.provide(handlers),
        Layer.provideMerge(NodeRpcChannels.layerServerWs())
      )
    )
    return {
      url: Context.get(context, WsServer.WsServer).url,
      server: Context.get(context, RpcMessages.MessageServer)
    }
  })
