/**
 * The example's whole run, checked: what the page saw at each step of
 * `microservicesDemo` (typed errors two hops away, the stock stream, a
 * deadline that reaches Inventory, a graceful drain of Orders).
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { microservicesDemo } from "../demo.ts"

describe("rpc-microservices", () => {
  it.live("a page checks out through Storefront, Orders and Inventory and sees typed errors, a stream, a deadline and a drain", () =>
    Effect.gen(function*() {
      const report = yield* microservicesDemo({ print: false })
      assert.deepStrictEqual(report.catalog, ["lamp", "mug", "kettle"])
      assert.deepStrictEqual(report.order, { id: "order-1", total: 7800 })
      assert.strictEqual(report.unknownItem, "UnknownItem")
      assert.deepStrictEqual(report.outOfStock, { requested: 9, available: 3 })
      assert.deepStrictEqual(report.stock, ["lamp=12", "mug=5", "kettle=3", "lamp=10"])
      assert.deepStrictEqual(report.deadline, { reason: "DeadlineExceeded", byServer: true, inventoryInterrupted: true })
      assert.deepStrictEqual(report.drain, { inFlight: 3, completed: 3, after: "ServiceUnavailable (Refused)" })
    }).pipe(Effect.scoped))
})
