/**
 * The outbox (internal/outbox.ts): the messages of a turn leave together, a
 * few at a time, in order.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import { MessageTransport } from "@plexus/core"
import { Outbox } from "../src/internal/outbox.ts"

const recording = () => {
  const writes: Array<ReadonlyArray<number>> = []
  const transport = MessageTransport.make({
    send: (m) => Effect.sync(() => void writes.push([m[0]])),
    sendAll: (ms) => Effect.sync(() => void writes.push(ms.map((m) => m[0]))),
    pull: Cause.done(),
    close: Effect.void
  })
  return { writes, outbox: new Outbox(transport) }
}

describe("Outbox", () => {
  it("a batch of eight leaves at once; the rest of the turn leaves when the turn ends", async () => {
    const { outbox, writes } = recording()
    for (let i = 0; i < 11; i++) outbox.push(Uint8Array.of(i))
    assert.deepStrictEqual(writes, [[0, 1, 2, 3, 4, 5, 6, 7]])
    await Promise.resolve()
    assert.deepStrictEqual(writes, [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10]])
  })

  it("a few messages wait for the end of the turn and leave in one write", async () => {
    const { outbox, writes } = recording()
    for (let i = 0; i < 3; i++) outbox.push(Uint8Array.of(i))
    assert.deepStrictEqual(writes, [])
    await Promise.resolve()
    assert.deepStrictEqual(writes, [[0, 1, 2]])
  })
})
