import { assert, describe, it } from "@effect/vitest"
import { ReceiveRing } from "../src/internal/receiveRing.ts"

/** A small deterministic generator, so a failure reproduces. */
const random = (seed: number) => () => {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff
  return seed / 0x7fffffff
}

describe("ReceiveRing", () => {
  it("gives back exactly the bytes put in, in order, across wrap-arounds and growth", () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const next = random(seed)
      const ring = new ReceiveRing(1024)
      const expected: Array<number> = []
      let head = 0
      let counter = 0
      for (let step = 0; step < 3000; step++) {
        if (next() < 0.55) {
          // Sometimes much more than the ring holds: it must grow.
          const n = Math.floor(next() * (next() < 0.05 ? 5000 : 700))
          const piece = new Uint8Array(n)
          for (let i = 0; i < n; i++) piece[i] = expected[expected.length] = counter++ & 0xff
          ring.put(piece)
        } else {
          const target = new Uint8Array(Math.floor(next() * 900) + 1)
          const n = ring.take(target)
          assert.strictEqual(n, Math.min(target.length, expected.length - head))
          for (let i = 0; i < n; i++) assert.strictEqual(target[i], expected[head + i], `seed ${seed} step ${step}`)
          head += n
        }
        assert.strictEqual(ring.size, expected.length - head)
      }
      const rest = ring.takeAll()
      assert.deepStrictEqual(Array.from(rest), expected.slice(head))
      assert.strictEqual(ring.size, 0)
    }
  })

  it("grows only when it must: a steady flow within its capacity reuses the same memory", () => {
    const ring = new ReceiveRing(4096)
    const piece = new Uint8Array(1000)
    const target = new Uint8Array(1000)
    for (let i = 0; i < 10_000; i++) {
      ring.put(piece)
      ring.put(piece)
      ring.take(target)
      ring.take(target)
    }
    assert.strictEqual(ring.capacity, 4096)
  })
})
