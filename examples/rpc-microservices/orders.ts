/**
 * The Orders service: `PlaceOrder` reserves the items at Inventory (an
 * RpcSession call over TCP, with a 1-second deadline the Inventory server
 * enforces), then takes the payment. Inventory's typed errors
 * (`UnknownItem`, `OutOfStock`) pass through unchanged, since both
 * services share their schemas; a failure to reach Inventory becomes
 * `ServiceUnavailable`.
 *
 * Served with effect/rpc over `RpcSession` on TCP, like Inventory. Its
 * `server.drain()` is the graceful stop: GO_AWAY to every caller, the
 * orders already running finish, and new ones are refused.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { RpcServer } from "effect/rpc"
import type * as Scope from "effect/Scope"
import { Deadline, RpcSession } from "@plexus/rpc"
import { Tcp, TcpServer } from "@plexus/transport-tcp"
import { InventoryApi, Order, OrdersApi } from "./api.ts"
import { CATALOG } from "./inventory.ts"
import { dialService, orUnavailable } from "./connect.ts"

export interface OrdersOptions {
  /** The Inventory service's port. */
  readonly inventoryPort: number
  /** How long taking a payment takes. Default 50 ms. */
  readonly paymentMillis?: number | undefined
}

export interface Orders {
  readonly port: number
  /** The RPC server: `drain` and `stats`. */
  readonly server: RpcSession.Server
}

/** Starts Orders on an ephemeral 127.0.0.1 port; it stops when the Scope closes. */
export const start = (options: OrdersOptions): Effect.Effect<Orders, unknown, Scope.Scope> =>
  Effect.gen(function*() {
    const inventory = yield* dialService(InventoryApi, options.inventoryPort)
    let next = 1
    const handlers = OrdersApi.toLayer({
      PlaceOrder: ({ quantity, sku }) =>
        Effect.gen(function*() {
          yield* inventory.Reserve({ sku, quantity }).pipe(
            Deadline.withTimeout("1 second"),
            Effect.mapError(orUnavailable("Inventory"))
          )
          yield* Effect.sleep(options.paymentMillis ?? 50)
          const price = CATALOG.find((item) => item.sku === sku)?.price ?? 0
          return new Order({ id: `order-${next++}`, sku, quantity, total: price * quantity })
        })
    })
    const context = yield* Layer.build(
      RpcServer.layer(OrdersApi).pipe(
        Layer.provide(handlers),
        Layer.provideMerge(RpcSession.layerServer()),
        Layer.provideMerge(Tcp.layerServer({ host: "127.0.0.1", port: 0 }))
      )
    )
    return {
      port: Context.get(context, TcpServer.TcpServer).port,
      server: Context.get(context, RpcSession.SessionServer)
    }
  })
