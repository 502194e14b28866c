/**
 * Hostile input against a multiplexor (see HOSTILE.md): raw bytes written
 * straight to its connections, not through our encoder. Each case ends with
 * a typed reason on the event stream and a bound checked through the
 * multiplexor's own counters, and never disturbs the honest connections.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import { Delineation, Memory } from "@plexus/core"
import { Kcm, type KcmEvent } from "../src/index.ts"
import { eventually, header, message, verify, within } from "./fixtures/Pool.ts"

const range = (n: number) => Array.from({ length: n }, (_, i) => i)

const collectDetached = (mux: Kcm.Multiplexor, count: number) =>
  Effect.gen(function*() {
    const events = yield* mux.events
    return yield* Effect.forkChild(
      events.pipe(
        Stream.filter((e): e is KcmEvent.Detached => e._tag === "Detached"),
        Stream.take(count),
        Stream.runCollect
      )
    )
  })

/** An honest client connection into `server`, and a sender over it. */
const honest = (server: Kcm.Multiplexor, options?: Kcm.Options) =>
  Effect.gen(function*() {
    const client = yield* Kcm.make(options)
    const pair = yield* Memory.makeBytePair()
    yield* client.attach(pair.a)
    yield* server.attach(pair.b, { label: "honest" })
    return yield* client.socket()
  })

/** A raw connection into `server`: the test writes its bytes by hand. */
const raw = (server: Kcm.Multiplexor, label: string, faults?: Memory.Faults) =>
  Effect.gen(function*() {
    const pair = yield* Memory.makeBytePair(faults === undefined ? undefined : { faults })
    yield* server.attach(pair.b, { label })
    return { writer: yield* pair.a.writer, pair }
  })

/** Sends `count` messages on `tx` and checks that `rx` receives them all intact. */
const stillFlows = (tx: { send: (m: Uint8Array) => Effect.Effect<void, unknown> }, rx: Stream.Stream<Uint8Array, unknown>, count: number) =>
  Effect.gen(function*() {
    const receiving = yield* rx.pipe(Stream.take(count), Stream.runCollect, Effect.forkChild)
    yield* Effect.forEach(range(count), (i) => tx.send(message(7, i, 200)), { discard: true })
    const got = yield* within("honest traffic")(Fiber.join(receiving))
    assert.strictEqual(new Set(got.map((m) => verify(m).seq)).size, count)
  })

describe("Kcm under hostile input", () => {
  it.live("lying lengths detach only their own transport, holding no memory for them", () =>
    Effect.gen(function*() {
      const server = yield* Kcm.make({ delineation: Delineation.lengthPrefix({ maxMessageSize: 64 * 1024 }) })
      const rx = yield* server.socket()
      const tx = yield* honest(server)
      const detached = yield* collectDetached(server, 3)
      for (const [label, bytes] of [
        ["max", header(0xffffffff)],
        ["high-bit", header(0x80000000)],
        ["just-over", header(64 * 1024 - 3)]
      ] as const) {
        const { writer } = yield* raw(server, label)
        yield* writer.write(new Uint8Array([...bytes, 1, 2, 3]))
      }
      const events = yield* within("three detached")(Fiber.join(detached))
      for (const event of events) {
        assert.strictEqual(event.reason._tag, "Delineation")
        if (event.reason._tag === "Delineation") assert.strictEqual(event.reason.error.reason._tag, "MessageTooLarge")
      }
      const stats = yield* server.stats
      assert.strictEqual(stats.mux.tooBig, 3)
      assert.strictEqual(stats.mux.partialBytes, 0)
      assert.deepStrictEqual(stats.transports.map((t) => t.label), ["honest"])
      yield* stillFlows(tx, rx.messages, 50)
    }))

  it.live("a custom parser that throws or answers nonsense detaches its transport with a typed error", () =>
    Effect.gen(function*() {
      // A 2-byte big-endian length at offset 0, except for bytes that make the parser misbehave.
      const parse = (bytes: Uint8Array): number => {
        if (bytes.length < 2) return Delineation.NEED_MORE
        if (bytes[0] === 0xee) throw new Error("parser crashed")
        if (bytes[0] === 0xef) return Number.NaN
        if (bytes[0] === 0xed) return 2.5
        if (bytes[0] === 0xec) return -7
        return 2 + ((bytes[0] << 8) | bytes[1])
      }
      const delineation = Delineation.custom({ parse, maxMessageSize: 4096 })
      const server = yield* Kcm.make({ delineation })
      const rx = yield* server.socket()
      const detached = yield* collectDetached(server, 4)
      for (const first of [0xee, 0xef, 0xed, 0xec]) {
        const { writer } = yield* raw(server, `bad-${first.toString(16)}`)
        yield* writer.write(new Uint8Array([first, 0, 0, 0]))
      }
      const events = yield* within("four detached")(Fiber.join(detached))
      for (const event of events) {
        assert.strictEqual(event.reason._tag, "Delineation", event.label)
        // A throw or a failure code is the parser failing; a length that is no length is an invalid length.
        if (event.reason._tag === "Delineation") {
          assert.include(["ParserFailed", "InvalidLength"], event.reason.error.reason._tag, event.label)
        }
      }
      const stats = yield* server.stats
      assert.strictEqual(stats.mux.errors, 4)
      assert.strictEqual(stats.mux.attached, 0)
      // A well-formed connection after all that is served.
      const { writer } = yield* raw(server, "good")
      yield* writer.write(new Uint8Array([0, 3, 7, 8, 9]))
      const got = yield* within("good message")(rx.pull)
      assert.deepStrictEqual([...got[0]], [0, 3, 7, 8, 9])
    }))

  it.live("slowloris partial messages across 64 connections stay within the partial budget", () =>
    Effect.gen(function*() {
      const budget = 64 * 1024
      const server = yield* Kcm.make({
        delineation: Delineation.lengthPrefix({ partialTimeout: "400 millis" }),
        partialBudget: budget
      })
      const rx = yield* server.socket()
      const tx = yield* honest(server)
      const writers = yield* Effect.forEach(range(64), (i) => Effect.map(raw(server, `slow-${i}`), (r) => r.writer))
      let peak = 0
      const sample = Effect.map(server.stats, (s) => {
        peak = Math.max(peak, s.mux.partialBytes)
      })
      // Each announces 100 KB and trickles 2 KB at a time.
      for (const round of range(5)) {
        yield* Effect.forEach(writers, (w, i) =>
          Effect.ignore(w.write(round === 0 ? new Uint8Array([...header(100_000), ...new Uint8Array(2000)]) : new Uint8Array(2000 + i))), { discard: true })
        yield* Effect.sleep("10 millis")
        yield* sample
      }
      const mid = yield* server.stats
      assert.isAtMost(peak, budget)
      assert.isAbove(mid.mux.detaches, 0, "some slowloris connections were dropped for the budget")
      yield* stillFlows(tx, rx.messages, 20)
      // The deadline clears the rest.
      yield* eventually("only the honest connection left", Effect.map(server.stats, (s) => s.mux.attached === 1))
      const end = yield* server.stats
      assert.strictEqual(end.mux.partialBytes, 0)
      assert.strictEqual(end.mux.detaches, 64)
      assert.isAbove(end.mux.timeouts, 0)
    }))

  it.live("an empty-message flood is held to the receive budget by pausing reads, and nothing is lost", () =>
    Effect.gen(function*() {
      const budget = 64 * 1024
      const server = yield* Kcm.make({ receiveBudget: budget })
      const { writer } = yield* raw(server, "flood")
      const count = 100_000
      const flood = new Uint8Array(4 * count)
      const writing = yield* Effect.forkChild(
        Effect.forEach(range(count / 1000), (k) => writer.write(flood.subarray(k * 4000, (k + 1) * 4000)), { discard: true })
      )
      yield* eventually("reading paused", Effect.map(server.stats, (s) => s.transports[0]?.paused === true))
      const paused = yield* server.stats
      // 64 bytes counted per message, plus what one read can bring (a 64 KiB memory chunk of 4-byte messages).
      assert.isAtMost(paused.mux.ready, budget / 64 + (64 * 1024) / 4)
      assert.isFalse(writing.pollUnsafe() !== undefined, "the flooder is held back by backpressure")
      const rx = yield* server.socket({ maxPull: 4096 })
      let received = 0
      while (received < count) {
        const batch = yield* within("drain")(rx.pull)
        for (const m of batch) assert.strictEqual(m.length, 0)
        received += batch.length
      }
      assert.strictEqual(received, count)
      yield* Fiber.join(writing)
    }))

  it.live("a delimiter stream that never delimits is cut off at the maximum size", () =>
    Effect.gen(function*() {
      const server = yield* Kcm.make({
        delineation: Delineation.delimiter({ delimiter: new Uint8Array([13, 10]), maxMessageSize: 4096 })
      })
      const detached = yield* collectDetached(server, 1)
      const { writer } = yield* raw(server, "endless")
      const junk = new Uint8Array(1000).fill(65)
      const writing = yield* Effect.forkChild(Effect.ignore(Effect.forEach(range(100), () => writer.write(junk), { discard: true })))
      const [event] = yield* within("detached")(Fiber.join(detached))
      assert.strictEqual(event.reason._tag, "Delineation")
      if (event.reason._tag === "Delineation") assert.strictEqual(event.reason.error.reason._tag, "MessageTooLarge")
      assert.isAtMost(event.lostPartialBytes, 4096 + 2)
      yield* Fiber.interrupt(writing)
    }))

  it.live("bytes delivered one at a time still make whole messages", () =>
    Effect.gen(function*() {
      const server = yield* Kcm.make()
      const rx = yield* server.socket()
      const { writer } = yield* raw(server, "drip", { split: { min: 1, max: 1 } })
      const messages = range(50).map((i) => message(3, i, 12 + i * 5))
      yield* writer.write(new Uint8Array(messages.flatMap((m) => [...header(m.length), ...m])))
      const got = yield* rx.messages.pipe(Stream.take(50), Stream.runCollect, within("receive"))
      assert.deepStrictEqual(got.map((m) => verify(m).seq), range(50))
    }))

  it.live("an attach and detach storm leaves nothing behind", () =>
    Effect.gen(function*() {
      const server = yield* Kcm.make()
      for (const i of range(500)) {
        yield* Effect.scoped(Effect.gen(function*() {
          const { writer } = yield* raw(server, `storm-${i}`)
          yield* writer.write(new Uint8Array([...header(10), 1, 2]))
        }))
      }
      const stats = yield* server.stats
      assert.strictEqual(stats.mux.attached, 0)
      assert.strictEqual(stats.mux.attaches, 500)
      assert.strictEqual(stats.mux.detaches, 500)
      assert.strictEqual(stats.mux.partialBytes, 0)
      assert.isTrue(Option.isNone(Option.fromNullishOr(stats.transports[0])))
    }))
})
