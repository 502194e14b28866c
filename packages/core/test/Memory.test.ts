import { assert, describe, it } from "@effect/vitest"
import type { NonEmptyReadonlyArray } from "effect/Array"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import * as Stream from "effect/Stream"
import { TestClock } from "effect/testing"
import * as Memory from "../src/Memory.ts"
import * as Transport from "../src/Transport.ts"
import { transportSuite } from "./fixtures/TransportSuite.ts"
import { concat } from "./fixtures/Streams.ts"

const harness = (options?: Memory.PairOptions) => ({
  connect: Effect.map(Memory.makeBytePair(options), (pair) => [pair.a, pair.b] as const),
  halfClose: true,
  // The default high-water mark, plus the one 64 KiB write accepted when the buffer was just below it.
  maxBufferedWhileStalled: Memory.DEFAULT_HIGH_WATER_MARK + 64 * 1024
})

transportSuite("memory", harness())
transportSuite("memory, writes split into 1..7 bytes", harness({ faults: { split: { min: 1, max: 7 } } }))
transportSuite("memory, reads coalesced", harness({ faults: { coalesce: true } }))
transportSuite("memory, 2 ms latency", harness({ faults: { latency: Duration.millis(2) } }))
transportSuite(
  "memory, split + coalesce + latency with a small buffer",
  harness({ faults: { split: { min: 1, max: 4096 }, coalesce: true, latency: Duration.millis(1), highWaterMark: 4096 } })
)

const bytes = (size: number, seed = 0): Uint8Array => {
  const out = new Uint8Array(size)
  for (let i = 0; i < size; i++) out[i] = (i * 7 + seed) & 0xff
  return out
}

type Pull = Effect.Effect<NonEmptyReadonlyArray<Uint8Array>, Socket.SocketError>

/** Pulls until `total` bytes arrived; returns the chunks as delivered. */
const collect = (pull: Pull, total: number) =>
  Effect.gen(function*() {
    const chunks: Array<Uint8Array> = []
    let size = 0
    while (size < total) {
      for (const chunk of yield* pull) {
        chunks.push(chunk)
        size += chunk.length
      }
    }
    return chunks
  })

/** Pulls until the pull fails; returns what arrived and the failure. */
const collectToEnd = (pull: Pull) =>
  Effect.gen(function*() {
    const chunks: Array<Uint8Array> = []
    while (true) {
      const result = yield* Effect.result(pull)
      if (result._tag === "Failure") return { data: concat(chunks), chunks, error: result.failure }
      chunks.push(...result.success)
    }
  })

/** Lets other fibers run until `condition` holds (scheduler turns only, no clock). */
const settle = (condition: () => boolean, what: string) =>
  Effect.gen(function*() {
    for (let i = 0; i < 1000; i++) {
      if (condition()) return
      yield* Effect.yieldNow
    }
    return yield* Effect.die(new Error(`never settled: ${what}`))
  })

/** Lets other fibers run for a while, for checks that something did NOT happen. */
const spin = Effect.gen(function*() {
  for (let i = 0; i < 50; i++) yield* Effect.yieldNow
})

const statsOf = (link: Memory.Link | Memory.MessageLink) => Effect.runSync(link.stats)

describe("Memory byte pairs", () => {
  it.effect("split cuts every write into pieces within the bounds, and keeps the bytes", () =>
    Effect.gen(function*() {
      const { a, b } = yield* Memory.makeBytePair({ faults: { split: { min: 3, max: 9 }, seed: 7 } })
      const pull = yield* Socket.readerBytes(b)
      const writer = yield* a.writer
      const writes = Array.from({ length: 10 }, (_, i) => bytes(100, i))
      for (const write of writes) yield* writer.write(write)
      const chunks = yield* collect(pull, 1000)
      let offset = 0
      for (const chunk of chunks) {
        const end = offset + chunk.length
        assert.isAtMost(chunk.length, 9)
        assert.isAtLeast(chunk.length, 1)
        assert.strictEqual(Math.floor(offset / 100), Math.floor((end - 1) / 100), "a piece never spans two writes")
        if (chunk.length < 3) assert.strictEqual(end % 100, 0, "only the last piece of a write is short")
        offset = end
      }
      assert.isAtLeast(chunks.length, Math.ceil(1000 / 9))
      assert.deepStrictEqual(concat(chunks), concat(writes))
    }))

  it.effect("the same seed cuts the same way", () =>
    Effect.gen(function*() {
      const sizes = (seed: number) =>
        Effect.scoped(Effect.gen(function*() {
          const { a, b } = yield* Memory.makeBytePair({ faults: { split: { min: 1, max: 50 }, seed } })
          const pull = yield* Socket.readerBytes(b)
          yield* (yield* a.writer).write(bytes(5000))
          return (yield* collect(pull, 5000)).map((chunk) => chunk.length)
        }))
      assert.deepStrictEqual(yield* sizes(42), yield* sizes(42))
      assert.notDeepEqual(yield* sizes(42), yield* sizes(43))
    }))

  it.effect("coalesce merges everything buffered into one chunk", () =>
    Effect.gen(function*() {
      const run = (coalesce: boolean) =>
        Effect.scoped(Effect.gen(function*() {
          const { a, b } = yield* Memory.makeBytePair({ faults: { coalesce } })
          const pull = yield* Socket.readerBytes(b)
          const writer = yield* a.writer
          const writes = Array.from({ length: 10 }, (_, i) => bytes(10 + i, i))
          for (const write of writes) yield* writer.write(write)
          const batch = yield* pull
          return { batch, expected: concat(writes) }
        }))
      const merged = yield* run(true)
      assert.strictEqual(merged.batch.length, 1)
      assert.deepStrictEqual(merged.batch[0], merged.expected)
      const separate = yield* run(false)
      assert.strictEqual(separate.batch.length, 10)
      assert.deepStrictEqual(concat(separate.batch), separate.expected)
    }))

  it.effect("latency makes each write readable that long after it was written", () =>
    Effect.gen(function*() {
      const { a, b } = yield* Memory.makeBytePair({ faults: { latency: Duration.millis(100) } })
      const pull = yield* Socket.readerBytes(b)
      const writer = yield* a.writer
      yield* writer.write(bytes(10))
      const first = yield* Effect.forkChild(pull)
      yield* TestClock.adjust(Duration.millis(99))
      yield* spin
      assert.isUndefined(first.pollUnsafe(), "nothing readable before 100 ms")
      yield* TestClock.adjust(Duration.millis(1))
      assert.deepStrictEqual(concat(yield* Fiber.join(first)), bytes(10))

      yield* TestClock.adjust(Duration.millis(50))
      yield* writer.write(bytes(20, 1))
      const second = yield* Effect.forkChild(pull)
      yield* TestClock.adjust(Duration.millis(99))
      yield* spin
      assert.isUndefined(second.pollUnsafe(), "the second write is delayed from its own write time")
      yield* TestClock.adjust(Duration.millis(1))
      assert.deepStrictEqual(concat(yield* Fiber.join(second)), bytes(20, 1))
    }))

  it.effect("bandwidth paces delivery", () =>
    Effect.gen(function*() {
      const { a, b, aToB } = yield* Memory.makeBytePair({ faults: { bandwidth: 1000 } })
      const pull = yield* Socket.readerBytes(b)
      const writer = yield* a.writer
      yield* writer.writeAll([bytes(1000), bytes(1000, 1), bytes(1000, 2)])
      let received = 0
      const reading = yield* Effect.forkChild(Effect.gen(function*() {
        const chunks: Array<Uint8Array> = []
        while (received < 3000) {
          for (const chunk of yield* pull) {
            chunks.push(chunk)
            received += chunk.length
          }
        }
        return concat(chunks)
      }))
      yield* spin
      assert.strictEqual(received, 0)
      for (const [at, expected] of [[500, 500], [1500, 1500], [2999, 2990]] as const) {
        yield* TestClock.setTime(at)
        yield* settle(() => received >= expected, `${expected} bytes at ${at} ms`)
        assert.isAtMost(received, at, `no more than 1000 bytes per second (at ${at} ms)`)
      }
      yield* TestClock.setTime(3000)
      assert.deepStrictEqual(yield* Fiber.join(reading), concat([bytes(1000), bytes(1000, 1), bytes(1000, 2)]))
      assert.strictEqual((yield* aToB.stats).buffered, 0)
    }))

  it.effect("stall holds bytes and pushes back on writers; resume delivers them", () =>
    Effect.gen(function*() {
      const { a, b, aToB } = yield* Memory.makeBytePair({ faults: { highWaterMark: 1000 } })
      const pull = yield* Socket.readerBytes(b)
      const writer = yield* a.writer
      yield* aToB.stall
      const writes = Array.from({ length: 10 }, (_, i) => bytes(400, i))
      const writing = yield* Effect.forkChild(Effect.forEach(writes, (w) => writer.write(w), { discard: true }))
      const reading = yield* Effect.forkChild(collect(pull, 4000))
      yield* settle(() => statsOf(aToB).waitingWriters === 1, "the writer suspended")
      yield* spin
      const stalled = yield* aToB.stats
      assert.strictEqual(stalled.written, 1200, "writes are accepted while the buffer is below 1000 bytes")
      assert.strictEqual(stalled.buffered, 1200)
      assert.strictEqual(stalled.delivered, 0)
      assert.strictEqual(stalled.waitingReaders, 1)
      assert.isUndefined(reading.pollUnsafe())

      yield* aToB.resume
      assert.deepStrictEqual(concat(yield* Fiber.join(reading)), concat(writes))
      yield* Fiber.join(writing)
      const after = yield* aToB.stats
      assert.deepStrictEqual([after.written, after.delivered, after.buffered], [4000, 4000, 0])
    }))

  it.effect("a stalled direction also holds back the clean close", () =>
    Effect.gen(function*() {
      const { a, b, aToB } = yield* Memory.makeBytePair()
      const pull = yield* Socket.readerBytes(b)
      yield* aToB.stall
      const writer = yield* a.writer
      yield* writer.write(bytes(10))
      yield* writer.write(new Socket.CloseEvent(1000))
      const reading = yield* Effect.forkChild(collectToEnd(pull))
      yield* spin
      assert.isUndefined(reading.pollUnsafe())
      yield* aToB.resume
      const { data, error } = yield* Fiber.join(reading)
      assert.deepStrictEqual(data, bytes(10))
      assert.isTrue(Transport.isCleanClose(error))
    }))

  it.effect("abort after N bytes delivers exactly N bytes, cutting a write, then an abrupt close on both sides", () =>
    Effect.gen(function*() {
      const { a, b, aToB } = yield* Memory.makeBytePair()
      const pullA = yield* Socket.readerBytes(a)
      const pullB = yield* Socket.readerBytes(b)
      const writer = yield* a.writer
      yield* aToB.abort({ afterBytes: 1500 })
      yield* writer.write(bytes(1000))
      yield* writer.write(bytes(1000, 1))
      const { data, error } = yield* collectToEnd(pullB)
      assert.deepStrictEqual(data, concat([bytes(1000), bytes(1000, 1)]).subarray(0, 1500))
      assert.isTrue(Transport.isAbruptClose(error), "the peer sees an abrupt close")
      const local = yield* Effect.flip(pullA)
      assert.isTrue(Transport.isAbruptClose(local), "the other direction is reset too")
      const writeError = yield* Effect.flip(writer.write(bytes(1)))
      assert.isTrue(Socket.isSocketError(writeError))
    }))

  it.effect("abort with no argument and the pair's abort reset at once", () =>
    Effect.gen(function*() {
      for (const which of ["link", "pair"] as const) {
        const scope = yield* Scope.make()
        const pair = yield* Memory.makeBytePair().pipe(Scope.provide(scope))
        const pullB = yield* Socket.readerBytes(pair.b).pipe(Scope.provide(scope))
        const writer = yield* pair.a.writer.pipe(Scope.provide(scope))
        yield* writer.write(bytes(100))
        const waiting = yield* Effect.forkChild(Effect.flip(Effect.forever(pullB)))
        yield* which === "link" ? pair.bToA.abort() : pair.abort
        const error = yield* Fiber.join(waiting)
        assert.isTrue(Transport.isAbruptClose(error), `${which}: abrupt`)
        assert.strictEqual((yield* pair.aToB.stats).buffered, 0, `${which}: buffered bytes are dropped`)
        yield* Scope.close(scope, Exit.void)
      }
    }))

  it.effect("corruption flips one bit per corrupted chunk, the same way for the same seed", () =>
    Effect.gen(function*() {
      const writes = Array.from({ length: 100 }, (_, i) => bytes(64, i))
      const run = (seed: number) =>
        Effect.scoped(Effect.gen(function*() {
          const { a, b } = yield* Memory.makeBytePair({ faults: { corrupt: { probability: 0.5 }, seed } })
          const pull = yield* Socket.readerBytes(b)
          const writer = yield* a.writer
          for (const write of writes) yield* writer.write(write)
          return yield* collect(pull, 6400)
        }))
      const first = yield* run(9)
      let corrupted = 0
      assert.strictEqual(first.length, 100)
      first.forEach((chunk, i) => {
        let flipped = 0
        for (let j = 0; j < chunk.length; j++) {
          let x = chunk[j] ^ writes[i][j]
          while (x !== 0) {
            flipped += x & 1
            x >>>= 1
          }
        }
        assert.include([0, 1], flipped, `chunk ${i} has at most one flipped bit`)
        corrupted += flipped
      })
      assert.isAbove(corrupted, 20)
      assert.isBelow(corrupted, 80)
      assert.deepStrictEqual(writes[0], bytes(64, 0), "the writer's buffers are never modified")
      assert.deepStrictEqual(concat(yield* run(9)), concat(first), "same seed, same corruption")
      assert.notDeepEqual(concat(yield* run(10)), concat(first), "another seed, other corruption")
    }))

  it.effect("corruptNext flips the next delivered byte only", () =>
    Effect.gen(function*() {
      const { a, b, aToB } = yield* Memory.makeBytePair()
      const pull = yield* Socket.readerBytes(b)
      const writer = yield* a.writer
      const sent = new Uint8Array([1, 2, 3])
      yield* aToB.corruptNext(0x80)
      yield* writer.write(sent)
      yield* writer.write(new Uint8Array([4]))
      assert.deepStrictEqual(concat(yield* collect(pull, 4)), new Uint8Array([0x81, 2, 3, 4]))
      assert.deepStrictEqual(sent, new Uint8Array([1, 2, 3]))
    }))

  it.effect("writes to a peer that closed the connection fail typed", () =>
    Effect.gen(function*() {
      const { a, b } = yield* Memory.makeBytePair()
      const pullB = yield* Socket.readerBytes(b)
      yield* (yield* b.writer).write(new Socket.CloseEvent(1000))
      const error = yield* Effect.flip((yield* a.writer).write(bytes(10)))
      assert.isTrue(Socket.isSocketError(error) && error.reason._tag === "SocketWriteError")
      assert.isTrue(Transport.isCleanClose(yield* Effect.flip(pullB)), "the closing side's reader sees 1000")
    }))

  it.effect("releasing a reader closes the connection, as closing a TCP socket does", () =>
    Effect.gen(function*() {
      const { a, b } = yield* Memory.makeBytePair()
      const pullA = yield* Socket.readerBytes(a)
      yield* (yield* b.writer).write(bytes(5))
      yield* Effect.scoped(Socket.readerBytes(b))
      const { data, error } = yield* collectToEnd(pullA)
      assert.deepStrictEqual(data, bytes(5), "what b wrote before still arrives")
      assert.isTrue(Transport.isCleanClose(error))
      const writeError = yield* Effect.flip((yield* a.writer).write(bytes(1)))
      assert.isTrue(Socket.isSocketError(writeError))
    }))

  it.effect("string writes arrive as UTF-8 bytes", () =>
    Effect.gen(function*() {
      const { a, b } = yield* Memory.makeBytePair()
      const pull = yield* Socket.readerString(b)
      const writer = yield* a.writer
      yield* writer.write("héllo ")
      yield* writer.writeAll(["wör", "ld"])
      yield* writer.write(new Socket.CloseEvent(1000))
      let text = ""
      while (true) {
        const result = yield* Effect.result(pull)
        if (result._tag === "Failure") break
        text += result.success.join("")
      }
      assert.strictEqual(text, "héllo wörld")
    }))

  it.effect("closing the pair's scope fails every waiting pull and write and leaves nothing waiting", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const plain = yield* Memory.makeBytePair({ faults: { highWaterMark: 10 } }).pipe(Scope.provide(scope))
      const slow = yield* Memory.makeBytePair({ faults: { latency: Duration.hours(1) } }).pipe(Scope.provide(scope))
      const pullB = yield* Socket.readerBytes(plain.b).pipe(Scope.provide(scope))
      const writerB = yield* plain.b.writer.pipe(Scope.provide(scope))
      const slowPull = yield* Socket.readerBytes(slow.b).pipe(Scope.provide(scope))
      yield* (yield* slow.a.writer.pipe(Scope.provide(scope))).write(bytes(10))

      const fibers = [
        yield* Effect.forkChild(Effect.flip(pullB)),
        yield* Effect.forkChild(Effect.flip(Effect.forever(writerB.write(bytes(10))))),
        yield* Effect.forkChild(Effect.flip(slowPull))
      ]
      yield* settle(
        () =>
          statsOf(plain.aToB).waitingReaders === 1 && statsOf(plain.bToA).waitingWriters === 1 &&
          statsOf(slow.aToB).waitingReaders === 1,
        "a pull, a write and a timed pull suspended"
      )

      yield* Scope.close(scope, Exit.void)
      for (const fiber of fibers) {
        const error = yield* Fiber.join(fiber)
        assert.isTrue(Transport.isAbruptClose(error), `failed with ${String(error)}`)
      }
      for (const link of [plain.aToB, plain.bToA, slow.aToB, slow.bToA]) {
        const stats = yield* link.stats
        assert.deepStrictEqual([stats.waitingReaders, stats.waitingWriters, stats.buffered], [0, 0, 0])
      }
    }))

  it.effect("interrupting a suspended pull or write leaves no waiter behind", () =>
    Effect.gen(function*() {
      const { a, b, aToB } = yield* Memory.makeBytePair({ faults: { highWaterMark: 10 } })
      const pull = yield* Socket.readerBytes(b)
      const writer = yield* a.writer
      const pulling = yield* Effect.forkChild(pull)
      yield* settle(() => statsOf(aToB).waitingReaders === 1, "pull suspended")
      yield* Fiber.interrupt(pulling)
      yield* writer.write(bytes(10))
      const writing = yield* Effect.forkChild(writer.write(bytes(10, 1)))
      yield* settle(() => statsOf(aToB).waitingWriters === 1, "write suspended")
      yield* Fiber.interrupt(writing)
      const stats = yield* aToB.stats
      assert.deepStrictEqual([stats.waitingReaders, stats.waitingWriters, stats.written], [0, 0, 10])
      assert.deepStrictEqual(concat(yield* pull), bytes(10))
    }))
})

describe("Memory message pairs", () => {
  const message = (i: number) => bytes(10 + i, i)

  it.effect("delivers whole messages in order, sendAll included", () =>
    Effect.gen(function*() {
      const { a, b } = yield* Memory.makeMessagePair()
      yield* a.send(message(0))
      yield* a.sendAll([message(1), message(2), new Uint8Array(0)])
      yield* a.send(message(3))
      yield* a.close
      const received = yield* Stream.runCollect(b.messages)
      assert.deepStrictEqual(received, [message(0), message(1), message(2), new Uint8Array(0), message(3)])
    }))

  it.effect("close ends the peer's stream after queued messages, and the other direction keeps working", () =>
    Effect.gen(function*() {
      const { a, b } = yield* Memory.makeMessagePair()
      yield* a.sendAll([message(1), message(2)])
      yield* a.close
      yield* a.close
      assert.deepStrictEqual(yield* Stream.runCollect(b.messages), [message(1), message(2)])
      const sendError = yield* Effect.flip(a.send(message(3)))
      assert.isTrue(Socket.isSocketError(sendError), "send after close fails typed")
      yield* b.send(message(4))
      assert.deepStrictEqual(yield* a.pull, [message(4)])
    }))

  it.effect("abort fails both sides typed; afterMessages delivers exactly that many first", () =>
    Effect.gen(function*() {
      const { a, b, aToB } = yield* Memory.makeMessagePair()
      yield* aToB.abort({ afterMessages: 2 })
      yield* a.sendAll([message(1), message(2), message(3)])
      const received: Array<Uint8Array> = []
      const error = yield* Effect.flip(Stream.runForEach(b.messages, (m) => Effect.sync(() => received.push(m))))
      assert.deepStrictEqual(received, [message(1), message(2)])
      assert.isTrue(Transport.isAbruptClose(error))
      assert.isTrue(Transport.isAbruptClose(yield* Effect.flip(a.pull)))
      assert.isTrue(Socket.isSocketError(yield* Effect.flip(a.send(message(4)))))
    }))

  it.effect("senders suspend while the direction is full", () =>
    Effect.gen(function*() {
      const { a, b, aToB } = yield* Memory.makeMessagePair({ faults: { highWaterMark: 100 } })
      const sending = yield* Effect.forkChild(Effect.forEach([1, 2, 3], (i) => a.send(bytes(60, i)), { discard: true }))
      yield* settle(() => statsOf(aToB).waitingWriters === 1, "the third send suspended")
      assert.strictEqual((yield* aToB.stats).messagesWritten, 2)
      assert.deepStrictEqual(yield* b.pull, [bytes(60, 1), bytes(60, 2)])
      yield* Fiber.join(sending)
      assert.deepStrictEqual(yield* b.pull, [bytes(60, 3)])
    }))

  it.effect("latency, stall and corruption apply per message", () =>
    Effect.gen(function*() {
      const { a, b, aToB } = yield* Memory.makeMessagePair({ faults: { latency: Duration.millis(50) } })
      yield* aToB.corruptNext(0xff)
      yield* a.send(new Uint8Array([1, 2]))
      const first = yield* Effect.forkChild(b.pull)
      yield* TestClock.adjust(Duration.millis(49))
      yield* spin
      assert.isUndefined(first.pollUnsafe())
      yield* TestClock.adjust(Duration.millis(1))
      assert.deepStrictEqual(yield* Fiber.join(first), [new Uint8Array([0xfe, 2])])

      yield* aToB.stall
      yield* a.send(new Uint8Array([3]))
      const second = yield* Effect.forkChild(b.pull)
      yield* TestClock.adjust(Duration.seconds(1))
      yield* spin
      assert.isUndefined(second.pollUnsafe(), "a stalled direction delivers nothing")
      yield* aToB.resume
      assert.deepStrictEqual(yield* Fiber.join(second), [new Uint8Array([3])])
    }))

  it.effect("bandwidth delivers a message once its last byte has crossed", () =>
    Effect.gen(function*() {
      const { a, b } = yield* Memory.makeMessagePair({ faults: { bandwidth: 1000 } })
      yield* a.sendAll([bytes(500), bytes(500, 1)])
      const received: Array<number> = []
      yield* Effect.forkChild(Stream.runForEach(b.messages, (m) => Effect.sync(() => received.push(m.length))))
      yield* TestClock.setTime(499)
      yield* spin
      assert.deepStrictEqual(received, [])
      yield* TestClock.setTime(500)
      yield* settle(() => received.length === 1, "first message at 500 ms")
      yield* TestClock.setTime(999)
      yield* spin
      assert.deepStrictEqual(received, [500])
      yield* TestClock.setTime(1000)
      yield* settle(() => received.length === 2, "second message at 1000 ms")
    }))

  it.effect("closing the pair's scope fails a waiting pull typed", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const { b } = yield* Memory.makeMessagePair().pipe(Scope.provide(scope))
      const waiting = yield* Effect.forkChild(Effect.flip(b.pull))
      yield* spin
      yield* Scope.close(scope, Exit.void)
      assert.isTrue(Transport.isAbruptClose(yield* Fiber.join(waiting)))
    }))
})
