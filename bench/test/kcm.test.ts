/**
 * The KCM suite's verification cannot be fooled: a round completes only
 * when every message arrived once and intact, and the baseline's decoder
 * cuts messages out of arbitrarily split chunks. (The suite itself runs in
 * harness.test.ts's quick run of every suite.)
 */
import { assert, describe, it } from "@effect/vitest"
import { Buffer } from "node:buffer"
import { LengthPrefixDecoder, Rounds, scratch, stamp } from "../peers/kcm-pool.ts"

const message = (id: number, size = 64) => stamp(scratch(size), id).slice()

describe("kcm suite verification", () => {
  it("completes a round once every id arrived, in any order, and starts the next", async () => {
    const rounds = new Rounds(3, 64)
    for (const id of [2, 0, 1]) rounds.add(message(id))
    await rounds.wait(1)
    assert.strictEqual(rounds.completed, 1)
    rounds.add(message(1))
    assert.strictEqual(rounds.partial, 1)
    assert.isUndefined(rounds.error)
  })

  it("fails on a duplicate, a damaged tail or middle, a wrong size, or an id out of range", async () => {
    const cases: Array<[string, (rounds: Rounds) => void]> = [
      ["twice", (r) => (r.add(message(1)), r.add(message(1)))],
      ["tail", (r) => r.add((() => { const m = message(1); m[63] ^= 1; return m })())],
      ["middle", (r) => r.add((() => { const m = message(1); m[32] ^= 1; return m })())],
      ["bytes", (r) => r.add(message(1, 65))],
      ["range", (r) => r.add(message(5))]
    ]
    for (const [expected, damage] of cases) {
      const rounds = new Rounds(4, 64)
      const waiting = rounds.wait(1)
      damage(rounds)
      const error = await waiting.then(() => undefined, (e: Error) => e)
      assert.isDefined(error, expected)
      assert.include(error!.message, expected === "bytes" ? "65 bytes" : expected === "range" ? "out of range" : expected)
    }
  })

  it("rounds of no messages complete at once and any message fails them", async () => {
    const rounds = new Rounds(0, 64)
    await rounds.wait(1)
    rounds.add(message(0))
    assert.isDefined(rounds.error)
  })

  it("the baseline decoder cuts messages out of chunks split anywhere", () => {
    const ids = Array.from({ length: 50 }, (_, i) => i)
    const wire = Buffer.concat(ids.map((id) => {
      const m = message(id, 9 + (id % 7) * 100)
      const frame = Buffer.alloc(4 + m.length)
      frame.writeUInt32BE(m.length, 0)
      frame.set(m, 4)
      return frame
    }))
    for (const step of [1, 3, 4, 5, 97, 1000, wire.length]) {
      const decoder = new LengthPrefixDecoder()
      const out: Array<Uint8Array> = []
      for (let at = 0; at < wire.length; at += step) decoder.push(wire.subarray(at, Math.min(at + step, wire.length)), out)
      assert.deepStrictEqual(out.map((m) => Buffer.from(m).readUInt32BE(0)), ids, `chunks of ${step}`)
      assert.deepStrictEqual(out.map((m) => m.length), ids.map((id) => 9 + (id % 7) * 100))
    }
  })
})
