/**
 * The Inventory service: stock levels in memory, served with effect/rpc
 * over `RpcSession` on TCP (a session per connection, a stream per call).
 *
 * `WatchStock` streams every level, then every change as it happens; each
 * subscriber's stream is flow controlled by its own session stream, so a
 * slow watcher holds back only itself. `Recount` is deliberately slow (a
 * warehouse count): callers give it a deadline, and when that passes the
 * server interrupts the handler, which the `recounts` counters show.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as PubSub from "effect/PubSub"
import { RpcServer } from "effect/rpc"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { RpcSession } from "@plexus/rpc"
import { Tcp, TcpServer } from "@plexus/transport-tcp"
import { InventoryApi, Item, OutOfStock, StockLevel, UnknownItem } from "./api.ts"

export const CATALOG: ReadonlyArray<Item> = [
  new Item({ sku: "lamp", name: "Desk lamp", price: 3900 }),
  new Item({ sku: "mug", name: "Enamel mug", price: 1200 }),
  new Item({ sku: "kettle", name: "Stovetop kettle", price: 5400 })
]

const INITIAL_STOCK: ReadonlyArray<readonly [string, number]> = [["lamp", 12], ["mug", 5], ["kettle", 3]]

export interface InventoryOptions {
  /** How long `Recount` takes. Default 2 seconds. */
  readonly recountMillis?: number | undefined
}

export interface Inventory {
  readonly port: number
  /** The RPC server: `drain` and `stats`. */
  readonly server: RpcSession.Server
  /** Recounts started, and those interrupted before they finished. */
  readonly recounts: { started: number; interrupted: number }
}

const handlers = (options: InventoryOptions | undefined, recounts: Inventory["recounts"]) =>
  InventoryApi.toLayer(Effect.gen(function*() {
    const levels = new Map(INITIAL_STOCK)
    const changes = yield* PubSub.unbounded<StockLevel>()
    const levelOf = (sku: string) => new StockLevel({ sku, available: levels.get(sku) ?? 0 })

    return InventoryApi.of({
      Catalog: () => Effect.succeed(CATALOG),
      Reserve: ({ quantity, sku }) =>
        Effect.suspend((): Effect.Effect<StockLevel, UnknownItem | OutOfStock> => {
          const available = levels.get(sku)
          if (available === undefined) return Effect.fail(new UnknownItem({ sku }))
          if (!Number.isSafeInteger(quantity) || quantity < 1 || quantity > available) {
            return Effect.fail(new OutOfStock({ sku, requested: quantity, available }))
          }
          levels.set(sku, available - quantity)
          const level = levelOf(sku)
          PubSub.publishUnsafe(changes, level)
          return Effect.succeed(level)
        }),
      // Subscribed before the snapshot is taken, so no change falls between them.
      WatchStock: () =>
        Stream.unwrap(Effect.map(PubSub.subscribe(changes), (subscription) =>
          Stream.concat(
            Stream.fromIterable(Array.from(levels.keys(), levelOf)),
            Stream.fromSubscription(subscription)
          ))),
      Recount: ({ sku }) =>
        Effect.suspend((): Effect.Effect<StockLevel, UnknownItem> => {
          if (!levels.has(sku)) return Effect.fail(new UnknownItem({ sku }))
          recounts.started++
          return Effect.sleep(options?.recountMillis ?? 2000).pipe(
            Effect.as(levelOf(sku)),
            Effect.onInterrupt(() => Effect.sync(() => recounts.interrupted++))
          )
        })
    })
  }))

/** Starts Inventory on an ephemeral 127.0.0.1 port; it stops when the Scope closes. */
export const start = (options?: InventoryOptions): Effect.Effect<Inventory, unknown, Scope.Scope> =>
  Effect.gen(function*() {
    const recounts = { started: 0, interrupted: 0 }
    const context = yield* Layer.build(
      RpcServer.layer(InventoryApi).pipe(
        Layer.provide(handlers(options, recounts)),
        Layer.provideMerge(RpcSession.layerServer()),
        Layer.provideMerge(Tcp.layerServer({ host: "127.0.0.1", port: 0 }))
      )
    )
    return {
      port: Context.get(context, TcpServer.TcpServer).port,
      server: Context.get(context, RpcSession.SessionServer),
      recounts
    }
  })
