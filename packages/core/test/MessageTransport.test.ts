import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Socket from "effect/socket/Socket"
import * as Stream from "effect/Stream"
import { TestClock } from "effect/testing"
import * as Delineation from "../src/Delineation.ts"
import * as Memory from "../src/Memory.ts"
import * as MessageTransport from "../src/MessageTransport.ts"
import * as Transport from "../src/Transport.ts"

const framing = Delineation.lengthPrefix({ maxMessageSize: 1 << 20, partialTimeout: "10 seconds" })

// A message that proves its own integrity: [seed, length(2), bytes derived from seed...].
const sealed = (seed: number, size: number): Uint8Array => {
  const out = new Uint8Array(Math.max(3, size))
  out[0] = seed & 0xff
  out[1] = (out.length >> 8) & 0xff
  out[2] = out.length & 0xff
  for (let i = 3; i < out.length; i++) out[i] = (seed * 7 + i) & 0xff
  return out
}
const intact = (m: Uint8Array): boolean => {
  if (m.length < 3 || ((m[1] << 8) | m[2]) !== m.length) return false
  for (let i = 3; i < m.length; i++) if (m[i] !== ((m[0] * 7 + i) & 0xff)) return false
  return true
}

const connectedPair = (faults?: Memory.Faults) =>
  Effect.gen(function*() {
    const pair = yield* Memory.makeBytePair(faults === undefined ? undefined : { faults })
    const a = yield* MessageTransport.fromSocket(pair.a, framing)
    const b = yield* MessageTransport.fromSocket(pair.b, framing)
    return { a, b, pair }
  })

describe("MessageTransport", () => {
  describe("over a byte transport", () => {
    it.effect("cuts messages out of the byte stream, in order, whatever the segmentation", () =>
      Effect.gen(function*() {
        const { a, b } = yield* connectedPair({ split: { min: 1, max: 5 }, seed: 3 })
        const sent = Array.from({ length: 200 }, (_, i) => sealed(i, (i * 37) % 700))
        yield* Effect.forkChild(a.sendAll(sent))
        const got = yield* b.messages.pipe(Stream.take(sent.length), Stream.runCollect)
        assert.deepStrictEqual(got.map((m) => m[0]), sent.map((m) => m[0]))
        assert.isTrue(got.every(intact))
      }))

    it.effect("ends the message stream when the peer closes at a message boundary", () =>
      Effect.gen(function*() {
        const { a, b } = yield* connectedPair()
        yield* a.send(sealed(1, 10))
        yield* a.close
        const got = yield* Stream.runCollect(b.messages)
        assert.strictEqual(got.length, 1)
      }))

    it.effect("fails with TruncatedMessage when the peer closes in the middle of a message", () =>
      Effect.gen(function*() {
        const pair = yield* Memory.makeBytePair()
        const b = yield* MessageTransport.fromSocket(pair.b, framing)
        yield* Effect.scoped(Effect.gen(function*() {
          const writer = yield* pair.a.writer
          yield* writer.write(Uint8Array.of(0, 0, 0, 10, 1, 2, 3))
        }))
        const error = yield* Effect.flip(Stream.runCollect(b.messages))
        assert.strictEqual(error._tag, "DelineationError")
        assert.strictEqual((error as any).reason._tag, "TruncatedMessage")
      }))

    it.effect("fails a slowloris partial message at its deadline and closes the connection", () =>
      Effect.gen(function*() {
        const pair = yield* Memory.makeBytePair()
        const b = yield* MessageTransport.fromSocket(pair.b, framing)
        const peer = yield* pair.a.reader
        const writer = yield* pair.a.writer
        yield* writer.write(Uint8Array.of(0, 0, 1, 0, 42))
        const fiber = yield* Effect.forkChild(Effect.flip(b.pull))
        yield* TestClock.adjust("9 seconds")
        yield* writer.write(Uint8Array.of(43))
        assert.isUndefined(fiber.pollUnsafe())
        yield* TestClock.adjust("1 second")
        const error = yield* Fiber.join(fiber)
        assert.strictEqual((error as any).reason._tag, "PartialMessageTimeout")
        assert.strictEqual((error as any).reason.buffered, 6)
        const closed = yield* Effect.flip(peer.pull)
        assert.isTrue(Transport.isAbruptClose(closed))
      }))

    it.effect("restarts the deadline for each new message", () =>
      Effect.gen(function*() {
        const pair = yield* Memory.makeBytePair()
        const b = yield* MessageTransport.fromSocket(pair.b, framing)
        const writer = yield* pair.a.writer
        const fiber = yield* Effect.forkChild(Stream.runCollect(b.messages.pipe(Stream.take(3))))
        for (let i = 0; i < 3; i++) {
          yield* writer.write(Uint8Array.of(0, 0, 0, 2, i))
          yield* TestClock.adjust("8 seconds")
          yield* writer.write(Uint8Array.of(i))
          yield* TestClock.adjust("8 seconds")
        }
        const got = yield* Fiber.join(fiber)
        assert.strictEqual(got.length, 3)
      }))

    it.effect("a lying length fails that connection alone, and the peer sees it closed", () =>
      Effect.gen(function*() {
        const hostile = yield* Memory.makeBytePair()
        const victim = yield* MessageTransport.fromSocket(hostile.b, framing)
        const peer = yield* hostile.a.reader
        const { a, b } = yield* connectedPair()

        const rawWriter = yield* hostile.a.writer
        yield* rawWriter.write(Uint8Array.of(0xff, 0xff, 0xff, 0xff, 1, 2, 3))
        const error = yield* Effect.flip(victim.pull)
        assert.strictEqual((error as any).reason._tag, "MessageTooLarge")
        assert.isTrue(Transport.isAbruptClose(yield* Effect.flip(peer.pull)))

        yield* a.send(sealed(9, 100))
        const [m] = yield* b.messages.pipe(Stream.take(1), Stream.runCollect)
        assert.isTrue(intact(m))
      }))

    it.effect("concurrent senders never interleave their messages", () =>
      Effect.gen(function*() {
        const { a, b } = yield* connectedPair({ split: { min: 1, max: 4096 }, seed: 11 })
        const senders = 50
        const each = 40
        yield* Effect.forkChild(Effect.forEach(
          Array.from({ length: senders }, (_, s) => s),
          (s) =>
            Effect.forEach(
              Array.from({ length: each }, (_, i) => sealed(s * each + i, 3 + ((s * 131 + i * 17) % 2000))),
              (m) => a.send(m),
              { discard: true }
            ),
          { concurrency: "unbounded", discard: true }
        ))
        const got = yield* b.messages.pipe(Stream.take(senders * each), Stream.runCollect)
        assert.isTrue(got.every(intact))
      }))

    it.effect("refuses to send a message over the maximum, and the connection stays usable", () =>
      Effect.gen(function*() {
        const { a, b } = yield* connectedPair()
        const error = yield* Effect.flip(a.send(new Uint8Array((1 << 20) + 1)))
        assert.strictEqual((error as any).reason._tag, "MessageTooLarge")
        yield* a.send(sealed(5, 50))
        const [m] = yield* b.messages.pipe(Stream.take(1), Stream.runCollect)
        assert.isTrue(intact(m))
      }))
  })

  describe("over a message-per-frame socket", () => {
    it.effect("delivers each frame as one message, text frames as UTF-8", () =>
      Effect.gen(function*() {
        const pair = yield* Memory.makeBytePair()
        const b = yield* MessageTransport.fromFramedSocket(pair.b)
        const writer = yield* pair.a.writer
        yield* writer.writeAll([Uint8Array.of(1, 2), "hé"])
        const got = yield* b.messages.pipe(Stream.take(2), Stream.runCollect)
        assert.deepStrictEqual(got.map((m) => Array.from(m)), [[1, 2], [0x68, 0xc3, 0xa9]])
      }))

    it.effect("fails on a frame over the maximum", () =>
      Effect.gen(function*() {
        const pair = yield* Memory.makeBytePair()
        const b = yield* MessageTransport.fromFramedSocket(pair.b, { maxMessageSize: 4 })
        const writer = yield* pair.a.writer
        yield* writer.write(new Uint8Array(5))
        const error = yield* Effect.flip(b.pull)
        assert.strictEqual((error as any).reason._tag, "MessageTooLarge")
      }))

    it.effect("ends cleanly when the socket closes normally", () =>
      Effect.gen(function*() {
        const pair = yield* Memory.makeBytePair()
        const b = yield* MessageTransport.fromFramedSocket(pair.b)
        const writer = yield* pair.a.writer
        yield* writer.write(Uint8Array.of(7))
        yield* writer.write(new Socket.CloseEvent(1000))
        const exit = yield* Effect.exit(Stream.runCollect(b.messages))
        assert.isTrue(Exit.isSuccess(exit))
      }))
  })
})
