/**
 * Three services on loopback and a page calling the one that faces it:
 *
 *   page ══ws (RpcChannels)══ Storefront ──tcp (RpcSession)── Orders ──tcp (RpcSession)── Inventory
 *                                  └──────────────tcp (RpcSession)──────────────────────────┘
 *
 * The page (here a Node client with the same code a browser bundle runs)
 * reads the catalog, watches the stock stream, checks out, meets the typed
 * errors of a service two hops away, gives a slow call a deadline (the
 * cancellation reaches Inventory's handler), and sees Orders drain
 * gracefully: orders already running finish, a new one is refused.
 *
 * `microservicesDemo` is the whole run and answers what it saw (the test
 * checks it); `main.ts` runs it, and so does the showcase.
 */
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import { RpcClient } from "effect/rpc"
import * as Context from "effect/Context"
import * as Stream from "effect/Stream"
import { Deadline, RpcChannels, RpcTransportError } from "@plexus/rpc"
import { type StockLevel, StorefrontApi } from "./api.ts"
import * as Inventory from "./inventory.ts"
import * as Orders from "./orders.ts"
import * as Storefront from "./storefront.ts"

export interface DemoOptions {
  /** How long each payment takes at Orders. Default 200 ms (long enough to drain during it). */
  readonly paymentMillis?: number | undefined
  /** Whether to print as it goes. Default true. */
  readonly print?: boolean | undefined
}

/** What the run saw. */
export interface DemoReport {
  readonly catalog: ReadonlyArray<string>
  readonly order: { readonly id: string; readonly total: number }
  readonly unknownItem: string
  readonly outOfStock: { readonly requested: number; readonly available: number }
  /** The stock updates the page received, as `sku=available`. */
  readonly stock: ReadonlyArray<string>
  /** The reason of the recount that ran out of time, and whether Inventory's handler was interrupted. */
  readonly deadline: { readonly reason: string; readonly byServer: boolean; readonly inventoryInterrupted: boolean }
  /** Orders running when the drain began (all completed), and the tag and reason of the order placed after it. */
  readonly drain: { readonly inFlight: number; readonly completed: number; readonly after: string }
}

/** The error of a failed exit, or undefined. */
const failureOf = <A, E>(exit: Exit.Exit<A, E>): E | undefined =>
  Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail")?.error as E | undefined : undefined

/** Polls until `done` holds (bounded by the caller's timeout). */
const until = (done: () => boolean) =>
  Effect.gen(function*() {
    while (!done()) yield* Effect.sleep("5 millis")
  })

const cents = (n: number) => `$${(n / 100).toFixed(2)}`

export const microservicesDemo = (options?: DemoOptions) =>
  Effect.gen(function*() {
    const log = (line: string) => options?.print === false ? Effect.void : Console.log(line)

    const inventory = yield* Inventory.start()
    const orders = yield* Orders.start({ inventoryPort: inventory.port, paymentMillis: options?.paymentMillis ?? 200 })
    const storefront = yield* Storefront.start({ inventoryPort: inventory.port, ordersPort: orders.port })
    yield* log(`Inventory on tcp 127.0.0.1:${inventory.port}, Orders on tcp 127.0.0.1:${orders.port}, Storefront on ${storefront.url}`)

    // The page: effect/rpc over a channel of a WebSocket, as a browser bundle would run it.
    const page = yield* Layer.build(RpcChannels.layerClientWs({ url: storefront.url, secondary: true })).pipe(
      Effect.flatMap((context) =>
        RpcClient.make(StorefrontApi).pipe(Effect.provideService(RpcClient.Protocol, Context.get(context, RpcClient.Protocol)))
      )
    )

    const catalog = yield* page.Catalog()
    yield* log(`catalog: ${catalog.map((item) => `${item.name} ${cents(item.price)}`).join(", ")}`)

    // The stock stream: every level first, then each change (3 levels + 1 reservation below).
    const updates: Array<StockLevel> = []
    const watching = yield* page.WatchStock().pipe(
      Stream.take(4),
      Stream.runForEach((level) => Effect.sync(() => updates.push(level))),
      Effect.forkScoped
    )
    yield* until(() => updates.length >= 3)

    const order = yield* page.Checkout({ sku: "lamp", quantity: 2 })
    yield* log(`checkout: ${order.id}, 2 × lamp, ${cents(order.total)} (Storefront → Orders → Inventory)`)

    // Typed errors raised by Inventory, two hops away, arrive as declared.
    const unknown = failureOf(yield* Effect.exit(page.Checkout({ sku: "teapot", quantity: 1 })))
    const short = failureOf(yield* Effect.exit(page.Checkout({ sku: "kettle", quantity: 9 })))
    yield* log(`typed errors: ${unknown?._tag} (${unknown?.message}); ${short?._tag} (${short?.message})`)
    if (unknown?._tag !== "UnknownItem" || short?._tag !== "OutOfStock") {
      return yield* Effect.die(new Error("the typed errors did not arrive as declared"))
    }

    yield* Fiber.join(watching)
    yield* log(`stock stream: ${updates.map((l) => `${l.sku}=${l.available}`).join(", ")}`)

    // A deadline: the page gives a 2-second recount 150 ms. The Storefront
    // server cuts the call off, and the cancellation reaches Inventory.
    const recount = yield* Effect.exit(page.Recount({ sku: "mug" }).pipe(Deadline.withTimeout("150 millis")))
    const transport = RpcTransportError.fromClientError(failureOf(recount))
    yield* until(() => inventory.recounts.interrupted === 1).pipe(Effect.timeout("5 seconds"), Effect.ignore)
    const byServer = transport?.reason._tag === "DeadlineExceeded" && transport.reason.byServer
    yield* log(
      `deadline: recount failed with ${transport?.reason._tag ?? "no transport error"}` +
        `${byServer ? " (said by the server)" : ""}; Inventory's recount interrupted: ${inventory.recounts.interrupted === 1}`
    )

    // A graceful drain of Orders while three checkouts are paying.
    const inFlight = yield* Effect.forEach(
      ["mug", "mug", "lamp"],
      (sku) => Effect.forkScoped(page.Checkout({ sku, quantity: 1 })),
      { concurrency: "unbounded" }
    )
    while ((yield* orders.server.stats).running < 3) yield* Effect.sleep("2 millis")
    const running = (yield* orders.server.stats).running
    yield* orders.server.drain({ timeout: "5 seconds" })
    const finished = yield* Effect.forEach(inFlight, (fiber) => Effect.exit(Fiber.join(fiber)))
    const completed = finished.filter(Exit.isSuccess).length
    const after = failureOf(yield* Effect.exit(page.Checkout({ sku: "mug", quantity: 1 })))
    const afterText = after === undefined
      ? "accepted"
      : after._tag === "ServiceUnavailable"
      ? `${after._tag} (${after.reason})`
      : after._tag
    yield* log(`drain: ${running} orders were paying when Orders drained; ${completed} completed; a new order: ${afterText}`)

    return {
      catalog: catalog.map((item) => item.sku),
      order: { id: order.id, total: order.total },
      unknownItem: unknown._tag,
      outOfStock: { requested: short.requested, available: short.available },
      stock: updates.map((l) => `${l.sku}=${l.available}`),
      deadline: {
        reason: transport?.reason._tag ?? "none",
        byServer,
        inventoryInterrupted: inventory.recounts.interrupted === 1
      },
      drain: { inFlight: running, completed, after: afterText }
    } satisfies DemoReport
  })
