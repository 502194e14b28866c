import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Stream from "effect/Stream"
import { memoryPool, message, verify, within } from "./fixtures/Pool.ts"

describe("Kcm over memory", () => {
  it.live("delivers every message whole when 100 senders share 4 transports", () =>
    Effect.gen(function*() {
      const { client, server } = yield* memoryPool({
        connections: 4,
        faults: { split: { min: 1, max: 700 } }
      })
      const tx = yield* client.socket()
      const rx = yield* server.socket()
      const senders = 100
      const perSender = 50
      const receiving = yield* rx.messages.pipe(Stream.take(senders * perSender), Stream.runCollect, Effect.forkChild)
      yield* Effect.forEach(
        Array.from({ length: senders }, (_, s) => s),
        (s) => Effect.forEach(Array.from({ length: perSender }, (_, i) => i), (i) => tx.send(message(s, i, 12 + ((s * 97 + i * 13) % 3000))), { discard: true }),
        { concurrency: "unbounded", discard: true }
      )
      const received = yield* within("receive")(Fiber.join(receiving))
      const seen = new Set<string>()
      for (const m of received) {
        const { sender, seq } = verify(m)
        seen.add(`${sender}/${seq}`)
      }
      assert.strictEqual(seen.size, senders * perSender)
      const stats = yield* client.stats
      assert.strictEqual(stats.mux.txMessages, senders * perSender)
      assert.isTrue(stats.transports.every((t) => t.txMessages > 0), "every transport carried messages")
    }))
})
