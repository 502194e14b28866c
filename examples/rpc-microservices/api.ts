/**
 * The three APIs of the example, declared once with effect/rpc and shared by
 * servers and clients:
 *
 * - `InventoryApi`: stock levels. `Reserve` takes items out of stock (or
 *   fails with `UnknownItem` / `OutOfStock`), `WatchStock` streams every
 *   level and then every change, `Recount` is a slow warehouse count.
 * - `OrdersApi`: `PlaceOrder` reserves the items at Inventory, then takes
 *   the payment; errors from Inventory arrive as the same typed errors.
 * - `StorefrontApi`: what a page calls over WebSocket: the catalog, a
 *   checkout (through Orders), the stock stream and a recount (through
 *   Inventory).
 *
 * A service that cannot reach another one answers `ServiceUnavailable`,
 * so the page never sees a transport error of a hop behind the one it
 * called.
 */
import { Rpc, RpcGroup } from "effect/rpc"
import * as Schema from "effect/Schema"

export class Item extends Schema.Class<Item>("Item")({
  sku: Schema.String,
  name: Schema.String,
  /** Price in cents. */
  price: Schema.Number
}) {}

export class StockLevel extends Schema.Class<StockLevel>("StockLevel")({
  sku: Schema.String,
  available: Schema.Number
}) {}

export class Order extends Schema.Class<Order>("Order")({
  id: Schema.String,
  sku: Schema.String,
  quantity: Schema.Number,
  /** Total in cents. */
  total: Schema.Number
}) {}

export class UnknownItem extends Schema.TaggedError<UnknownItem>()("UnknownItem", { sku: Schema.String }) {
  override get message(): string {
    return `no item ${this.sku}`
  }
}

export class OutOfStock extends Schema.TaggedError<OutOfStock>()("OutOfStock", {
  sku: Schema.String,
  requested: Schema.Number,
  available: Schema.Number
}) {
  override get message(): string {
    return `${this.requested} × ${this.sku} asked, ${this.available} in stock`
  }
}

export class ServiceUnavailable extends Schema.TaggedError<ServiceUnavailable>()("ServiceUnavailable", {
  service: Schema.String,
  /** Why, e.g. `DeadlineExceeded` or `Refused` (the transport error's reason). */
  reason: Schema.String
}) {
  override get message(): string {
    return `${this.service} unavailable: ${this.reason}`
  }
}

export const InventoryApi = RpcGroup.make(
  Rpc.make("Catalog", { success: Schema.Array(Item) }),
  Rpc.make("Reserve", {
    payload: { sku: Schema.String, quantity: Schema.Number },
    success: StockLevel,
    error: Schema.Union([UnknownItem, OutOfStock])
  }),
  Rpc.make("WatchStock", { success: StockLevel, stream: true }),
  Rpc.make("Recount", { payload: { sku: Schema.String }, success: StockLevel, error: UnknownItem })
)

export const OrdersApi = RpcGroup.make(
  Rpc.make("PlaceOrder", {
    payload: { sku: Schema.String, quantity: Schema.Number },
    success: Order,
    error: Schema.Union([UnknownItem, OutOfStock, ServiceUnavailable])
  })
)

export const StorefrontApi = RpcGroup.make(
  Rpc.make("Catalog", { success: Schema.Array(Item), error: ServiceUnavailable }),
  Rpc.make("Checkout", {
    payload: { sku: Schema.String, quantity: Schema.Number },
    success: Order,
    error: Schema.Union([UnknownItem, OutOfStock, ServiceUnavailable])
  }),
  Rpc.make("WatchStock", { success: StockLevel, error: ServiceUnavailable, stream: true }),
  Rpc.make("Recount", { payload: { sku: Schema.String }, success: StockLevel, error: Schema.Union([UnknownItem, ServiceUnavailable]) })
)
