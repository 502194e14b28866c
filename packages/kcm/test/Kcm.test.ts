/**
 * KCM semantics over in-memory connections: atomic sends, fan-in to message
 * sockets, receive-disable, backpressure and send timeouts, detach, failing
 * transports, batching, the pool's own reconnection, and closing.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { Delineation, Memory, Session } from "@plexus/core"
import { Kcm, type KcmEvent, KcmStats } from "../src/index.ts"
import { countingSocket, eventually, gatedSocket, header, memoryPool, message, verify, within } from "./fixtures/Pool.ts"

const range = (n: number) => Array.from({ length: n }, (_, i) => i)

/** The first event matching `predicate`, waited for in a fiber started now. */
const nextEvent = <A extends KcmEvent.KcmEvent>(
  mux: Kcm.Multiplexor,
  predicate: (event: KcmEvent.KcmEvent) => event is A
) =>
  Effect.gen(function*() {
    const events = yield* mux.events
    return yield* Effect.forkChild(
      Effect.map(Stream.runHead(Stream.filter(events, predicate)), Option.getOrThrow)
    )
  })

const isDetached = (e: KcmEvent.KcmEvent): e is KcmEvent.Detached => e._tag === "Detached"
const isAttached = (e: KcmEvent.KcmEvent): e is KcmEvent.Attached => e._tag === "Attached"

/** A client whose `connections` memory transports hold each write until let through (`gatedSocket`), a server, and a socket on each. */
const gatedPool = (connections: number, options?: Kcm.Options) =>
  Effect.gen(function*() {
    const client = yield* Kcm.make(options)
    const server = yield* Kcm.make()
    const gated: Array<ReturnType<typeof gatedSocket>> = []
    for (let i = 0; i < connections; i++) {
      const pair = yield* Memory.makeBytePair()
      const gate = gatedSocket(pair.a)
      gated.push(gate)
      yield* client.attach(gate.socket, { label: `g${i}` })
      yield* server.attach(pair.b)
    }
    // Held writes must not keep the test's scope from closing.
    yield* Effect.addFinalizer(() => Effect.andThen(Effect.forEach(gated, (g) => g.open), client.close))
    return { client, server, gated, tx: yield* client.socket(), rx: yield* server.socket() }
  })

describe("Kcm over memory", () => {
  it.live("delivers every message whole when 100 senders share 4 transports", () =>
    Effect.gen(function*() {
      const { client, server } = yield* memoryPool({ connections: 4, faults: { split: { min: 1, max: 700 } } })
      const tx = yield* client.socket()
      const rx = yield* server.socket()
      const senders = 100
      const perSender = 50
      const receiving = yield* rx.messages.pipe(Stream.take(senders * perSender), Stream.runCollect, Effect.forkChild)
      yield* Effect.forEach(
        range(senders),
        (s) =>
          Effect.forEach(range(perSender), (i) => tx.send(message(s, i, 12 + ((s * 97 + i * 13) % 3000))), {
            discard: true
          }),
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
      const serverStats = yield* server.stats
      assert.strictEqual(serverStats.mux.rxMessages, senders * perSender)
    }))

  it.live("keeps the order of the messages of one transport", () =>
    Effect.gen(function*() {
      const { client, server } = yield* memoryPool({ connections: 1, faults: { split: { min: 1, max: 100 } } })
      const tx = yield* client.socket()
      const rx = yield* server.socket({ maxPull: 7 })
      const receiving = yield* rx.messages.pipe(Stream.take(2000), Stream.runCollect, Effect.forkChild)
      for (const i of range(2000)) yield* tx.send(message(0, i, 12 + (i % 50)))
      const received = yield* within("receive")(Fiber.join(receiving))
      assert.deepStrictEqual(received.map((m) => verify(m).seq), range(2000))
    }))

  it.live("gives each message to exactly one socket, spread over the sockets that are ready", () =>
    Effect.gen(function*() {
      const { client, server } = yield* memoryPool({ connections: 2 })
      const tx = yield* client.socket()
      const sockets = yield* Effect.forEach(range(3), () => server.socket({ maxPull: 1 }))
      const total = 300
      let taken = 0
      const counts = [0, 0, 0]
      const seqs: Array<number> = []
      const consumers = yield* Effect.forEach(sockets, (socket, k) =>
        Effect.forkChild(
          Stream.runForEach(socket.messages, (m) =>
            Effect.andThen(
              Effect.sync(() => {
                counts[k]++
                taken++
                seqs.push(verify(m).seq)
              }),
              Effect.sleep("1 millis")
            ))
        ))
      yield* Effect.forEach(range(total), (i) => tx.send(message(0, i, 64)), { discard: true })
      yield* eventually("all consumed", Effect.sync(() => taken === total))
      yield* Effect.forEach(consumers, Fiber.interrupt)
      assert.deepStrictEqual([...seqs].sort((a, b) => a - b), range(total), "each message exactly once")
      for (const c of counts) assert.isAbove(c, total / 6, `balanced: ${counts.join(", ")}`)
    }))

  it.live("a socket with receiving off hands its share to the others, and takes messages again when on", () =>
    Effect.gen(function*() {
      const { client, server } = yield* memoryPool({ connections: 2 })
      const tx = yield* client.socket()
      const a = yield* server.socket({ maxPull: 1 })
      const b = yield* server.socket({ maxPull: 1 })
      const gotA: Array<number> = []
      const gotB: Array<number> = []
      yield* a.setReceiving(false)
      assert.isFalse(yield* a.receiving)
      const fa = yield* Effect.forkChild(Stream.runForEach(a.messages, (m) => Effect.sync(() => gotA.push(verify(m).seq))))
      const fb = yield* Effect.forkChild(Stream.runForEach(b.messages, (m) => Effect.sync(() => gotB.push(verify(m).seq))))
      yield* Effect.forEach(range(100), (i) => tx.send(message(0, i, 32)), { discard: true })
      yield* eventually("b took all", Effect.sync(() => gotB.length === 100))
      assert.strictEqual(gotA.length, 0)
      // B stops too: messages wait until a socket is on again, then A takes them.
      yield* b.setReceiving(false)
      yield* Effect.forEach(range(50), (i) => tx.send(message(0, 100 + i, 32)), { discard: true })
      yield* Effect.sleep("30 millis")
      assert.strictEqual(gotA.length + gotB.length, 100)
      assert.strictEqual((yield* server.stats).mux.ready, 50)
      yield* a.setReceiving(true)
      yield* eventually("a took the rest", Effect.sync(() => gotA.length === 50))
      // Two transports: each keeps its own order, not the order across them.
      assert.deepStrictEqual([...gotA].sort((x, y) => x - y), range(50).map((i) => 100 + i))
      yield* Fiber.interrupt(fa)
      yield* Fiber.interrupt(fb)
    }))

  it.live("a sender waits for a free transport and gives up with a retryable SendTimeout", () =>
    Effect.gen(function*() {
      const { client, pairs } = yield* memoryPool({
        connections: 1,
        kcm: { sendTimeout: "100 millis" },
        faults: { highWaterMark: 1024 }
      })
      const tx = yield* client.socket()
      yield* pairs[0].aToB.stall
      // The first message fills the link; the second waits for room, holding the transport.
      yield* tx.send(message(0, 0, 4096))
      const blocked = yield* Effect.forkChild(tx.send(message(0, 1, 4096)))
      yield* eventually("transport busy", Effect.map(client.stats, (s) => s.transports[0].busy))
      const exit = yield* Effect.exit(tx.send(message(0, 2, 64)))
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ? exit.cause.reasons[0] : undefined
      assert.strictEqual(error?._tag, "Fail")
      const failure = (error as { error: { reason: { _tag: string }; retryable: boolean } }).error
      assert.strictEqual(failure.reason._tag, "SendTimeout")
      assert.isTrue(failure.retryable)
      const stats = yield* client.stats
      assert.strictEqual(stats.mux.sendTimeouts, 1)
      yield* pairs[0].aToB.resume
      yield* within("blocked send completes")(Fiber.join(blocked))
    }))

  it.live("detach hands back the bytes of a message received in part, and the stream carries on from there", () =>
    Effect.gen(function*() {
      const server = yield* Kcm.make()
      const pair = yield* Memory.makeBytePair()
      const writer = yield* pair.a.writer
      const attachment = yield* server.attach(pair.b)
      const rx = yield* server.socket()
      const whole = message(1, 1, 100)
      const next = message(1, 2, 100)
      yield* writer.write(new Uint8Array([...header(100), ...whole, ...header(100), ...next.subarray(0, 30)]))
      const first = yield* within("first message")(rx.pull)
      assert.strictEqual(verify(first[0]).seq, 1)
      yield* eventually("partial held", Effect.map(attachment.stats, (s) => s?.partialBytes === 34))
      const detached = yield* attachment.detach
      assert.deepStrictEqual([...detached.pending], [...header(100), ...next.subarray(0, 30)])
      assert.strictEqual(yield* server.attached, 0)
      yield* writer.write(next.subarray(30))
      const rest = yield* within("rest")(detached.reader.pull)
      assert.deepStrictEqual([...rest[0]], [...next.subarray(30)])
    }))

  it.live("a transport failing mid-message is detached and reported, and the others keep flowing", () =>
    Effect.gen(function*() {
      const { client, server, pairs } = yield* memoryPool({ connections: 3 })
      const rx = yield* server.socket()
      const detached = yield* nextEvent(server, isDetached)
      const raw = yield* pairs[0].a.writer
      // Half a message, then the connection dies.
      yield* raw.write(new Uint8Array([...header(1000), ...message(9, 9, 1000).subarray(0, 400)]))
      yield* eventually("partial held", Effect.map(server.stats, (s) => s.mux.partialBytes === 404))
      yield* pairs[0].abort
      const event = yield* within("detached event")(Fiber.join(detached))
      assert.strictEqual(event.reason._tag, "TransportFailed")
      assert.strictEqual(event.lostPartialBytes, 404)
      assert.strictEqual(event.label, "s0")
      yield* eventually("client saw it too", Effect.map(client.attached, (n) => n === 2))
      const tx = yield* client.socket()
      const receiving = yield* rx.messages.pipe(Stream.take(200), Stream.runCollect, Effect.forkChild)
      yield* Effect.forEach(range(200), (i) => tx.send(message(1, i, 500)), { concurrency: 16, discard: true })
      const got = yield* within("receive")(Fiber.join(receiving))
      assert.strictEqual(new Set(got.map((m) => verify(m).seq)).size, 200)
      const stats = yield* server.stats
      assert.strictEqual(stats.mux.errors, 1)
      assert.strictEqual(stats.mux.partialBytes, 0)
    }))

  it.live("a message cut off mid-write fails its sender, is reported, and the waiting sender goes out on another transport", () =>
    Effect.gen(function*() {
      const { client, server, pairs } = yield* memoryPool({ connections: 2, faults: { highWaterMark: 1024 } })
      const tx = yield* client.socket()
      const rx = yield* server.socket()
      yield* pairs[0].aToB.stall
      yield* pairs[1].aToB.stall
      // Fill both links, then block one more write on each: both transports are busy.
      yield* tx.send(message(0, 0, 2048))
      yield* tx.send(message(0, 1, 2048))
      const cutOff = message(0, 2, 2048)
      const blocked = yield* Effect.forkChild(Effect.exit(tx.send(cutOff)))
      const blocked2 = yield* Effect.forkChild(tx.send(message(0, 3, 2048)))
      yield* eventually("both busy", Effect.map(client.stats, (s) => s.transports.every((t) => t.busy)))
      const waiting = yield* Effect.forkChild(tx.send(message(0, 4, 64)))
      yield* eventually("a sender waits", Effect.map(client.stats, (s) => s.mux.waitingSenders === 1))
      const detached = yield* nextEvent(client, isDetached)
      // Which transport holds `cutOff` depends on the order; find the one whose blocked write is ours.
      yield* pairs[0].abort
      const event = yield* within("detached")(Fiber.join(detached))
      yield* pairs[1].aToB.resume
      yield* within("others complete")(Fiber.join(waiting))
      const exits = [yield* Fiber.join(blocked)]
      const other = yield* Effect.exit(Fiber.join(blocked2))
      const failed = [...exits, other].filter(Exit.isFailure)
      assert.strictEqual(failed.length, 1, "exactly the message on the failed transport failed")
      const failure = failed[0].cause.reasons[0] as unknown as { error: { reason: { _tag: string }; retryable: boolean } }
      assert.strictEqual(failure.error.reason._tag, "MessageCutOff")
      assert.isFalse(failure.error.retryable)
      assert.strictEqual(event.failedMessages.length, 1)
      // The receiver gets the messages of the surviving transport, the waiting one included, none torn.
      const got = yield* rx.messages.pipe(Stream.take(3), Stream.runCollect, within("receive"))
      const seqs = got.map((m) => verify(m).seq)
      assert.include(seqs, 4)
    }))

  it.live("a message over the maximum size detaches its transport, and the peer connection is reset", () =>
    Effect.gen(function*() {
      const server = yield* Kcm.make({ delineation: Delineation.lengthPrefix({ maxMessageSize: 1024 }) })
      const pair = yield* Memory.makeBytePair()
      const detached = yield* nextEvent(server, isDetached)
      yield* server.attach(pair.b)
      const writer = yield* pair.a.writer
      const reader = yield* pair.a.reader
      yield* writer.write(header(0xffffffff))
      const event = yield* within("detached")(Fiber.join(detached))
      assert.strictEqual(event.reason._tag, "Delineation")
      if (event.reason._tag === "Delineation") assert.strictEqual(event.reason.error.reason._tag, "MessageTooLarge")
      const stats = yield* server.stats
      assert.strictEqual(stats.mux.tooBig, 1)
      assert.strictEqual(stats.mux.partialBytes, 0)
      const end = yield* Effect.flip(within("peer sees the reset")(reader.pull))
      assert.strictEqual(end.reason._tag, "SocketCloseError")
    }))

  it.live("a partial message past its deadline detaches its transport", () =>
    Effect.gen(function*() {
      const server = yield* Kcm.make({
        delineation: Delineation.lengthPrefix({ partialTimeout: "80 millis" })
      })
      const pair = yield* Memory.makeBytePair()
      const detached = yield* nextEvent(server, isDetached)
      yield* server.attach(pair.b)
      const writer = yield* pair.a.writer
      yield* writer.write(new Uint8Array([...header(100), 1, 2, 3]))
      const event = yield* within("detached")(Fiber.join(detached))
      assert.strictEqual(event.reason._tag, "Delineation")
      if (event.reason._tag === "Delineation") {
        assert.strictEqual(event.reason.error.reason._tag, "PartialMessageTimeout")
      }
      assert.strictEqual(event.lostPartialBytes, 7)
      assert.strictEqual((yield* server.stats).mux.timeouts, 1)
    }))

  it.live("whole messages arriving steadily never trip the partial deadline", () =>
    Effect.gen(function*() {
      const { client, server } = yield* memoryPool({
        connections: 1,
        kcm: { delineation: Delineation.lengthPrefix({ partialTimeout: "60 millis" }) },
        faults: { split: { min: 1, max: 7 } }
      })
      const tx = yield* client.socket()
      const rx = yield* server.socket()
      const receiving = yield* rx.messages.pipe(Stream.take(40), Stream.runCollect, Effect.forkChild)
      for (const i of range(40)) {
        yield* tx.send(message(0, i, 40))
        yield* Effect.sleep("5 millis")
      }
      assert.strictEqual((yield* within("receive")(Fiber.join(receiving))).length, 40)
      assert.strictEqual((yield* server.stats).mux.timeouts, 0)
    }))

  it.live("sendAll coalesces small messages into one write per run", () =>
    Effect.gen(function*() {
      const client = yield* Kcm.make({ maxBatchBytes: 16 * 1024 })
      const server = yield* Kcm.make()
      const pair = yield* Memory.makeBytePair()
      const counted = countingSocket(pair.a)
      yield* client.attach(counted.socket)
      yield* server.attach(pair.b)
      const tx = yield* client.socket()
      const rx = yield* server.socket()
      const batch = range(1000).map((i) => message(0, i, 64))
      const receiving = yield* rx.messages.pipe(Stream.take(1000), Stream.runCollect, Effect.forkChild)
      yield* tx.sendAll(batch)
      const got = yield* within("receive")(Fiber.join(receiving))
      assert.deepStrictEqual(got.map((m) => verify(m).seq), range(1000))
      // 64,000 bytes in runs of at most 16 KiB.
      assert.strictEqual(counted.writes(), 4)
    }))

  it.live("a batching socket gathers concurrent sends into one write, and flushes at its size bound", () =>
    Effect.gen(function*() {
      const client = yield* Kcm.make()
      const server = yield* Kcm.make()
      const pair = yield* Memory.makeBytePair()
      const counted = countingSocket(pair.a)
      yield* client.attach(counted.socket)
      yield* server.attach(pair.b)
      const rx = yield* server.socket()
      const slow = yield* client.socket({ batch: { maxDelay: "30 millis" } })
      const receiving = yield* rx.messages.pipe(Stream.take(150), Stream.runCollect, Effect.forkChild)
      yield* Effect.forEach(range(100), (i) => slow.send(message(0, i, 50)), { concurrency: "unbounded", discard: true })
      assert.strictEqual(counted.writes(), 1)
      const small = yield* client.socket({ batch: { maxBytes: 500, maxDelay: "10 seconds" } })
      yield* Effect.forEach(range(50), (i) => small.send(message(0, 100 + i, 100)), {
        concurrency: "unbounded",
        discard: true
      })
      assert.strictEqual(counted.writes(), 1 + 10)
      const got = yield* within("receive")(Fiber.join(receiving))
      assert.strictEqual(new Set(got.map((m) => verify(m).seq)).size, 150)
    }))

  it.live("sends queued behind a busy transport leave as one write, and each completes only once that write is done", () =>
    Effect.gen(function*() {
      const { client, server, gated, tx, rx } = yield* gatedPool(1)
      const receiving = yield* rx.messages.pipe(Stream.take(21), Stream.runCollect, Effect.forkChild)
      // The first send takes the free transport; its write is held.
      const first = yield* Effect.forkChild(tx.send(message(0, 0, 100)))
      yield* eventually("transport busy", Effect.map(client.stats, (s) => s.transports[0].busy))
      const queued = yield* Effect.forEach(range(20), (i) => Effect.forkChild(tx.send(message(1, i, 100))))
      yield* eventually("20 senders queued", Effect.map(client.stats, (s) => s.mux.waitingSenders === 20))
      // Its write done, the transport takes all 20 as one write, held in turn.
      yield* gated[0].permit(1)
      yield* within("first send")(Fiber.join(first))
      yield* eventually("the queue taken", Effect.map(client.stats, (s) => s.mux.waitingSenders === 0))
      assert.strictEqual(gated[0].writes(), 2)
      assert.isTrue(queued.every((f) => f.pollUnsafe() === undefined), "no sender completes before its write")
      yield* gated[0].permit(1)
      yield* within("queued senders")(Fiber.joinAll(queued))
      assert.strictEqual(gated[0].writes(), 2, "21 messages in 2 writes")
      const got = yield* within("receive")(Fiber.join(receiving))
      assert.strictEqual(new Set(got.map((m) => `${verify(m).sender}/${verify(m).seq}`)).size, 21)
      const stats = yield* client.stats
      assert.strictEqual(stats.mux.txMessages, 21)
      assert.strictEqual(stats.mux.sendWaits, 20)
      assert.strictEqual((yield* server.stats).mux.rxMessages, 21)
    }))

  it.live("after a batch, its senders' next messages queue for one write while the transport is idle, and go straight out while bytes wait in it", () =>
    Effect.gen(function*() {
      // Three senders of two messages each queue behind a held write; after their batch, their
      // second messages either queue again (one more write) or are written at once, one write each.
      const run = (backlog: number) =>
        Effect.scoped(Effect.gen(function*() {
          const { client, gated, tx, rx } = yield* gatedPool(1)
          yield* gated[0].setBacklog(backlog)
          const receiving = yield* rx.messages.pipe(Stream.take(7), Stream.runCollect, Effect.forkChild)
          const first = yield* Effect.forkChild(tx.send(message(0, 0, 100)))
          yield* eventually("transport busy", Effect.map(client.stats, (s) => s.transports[0].busy))
          const senders = yield* Effect.forEach(
            range(3),
            (i) => Effect.forkChild(Effect.andThen(tx.send(message(1 + i, 0, 100)), tx.send(message(1 + i, 1, 100))))
          )
          yield* eventually("three queued", Effect.map(client.stats, (s) => s.mux.waitingSenders === 3))
          yield* gated[0].open
          yield* within("sends")(Effect.andThen(Fiber.join(first), Fiber.joinAll(senders)))
          const got = yield* within("receive")(Fiber.join(receiving))
          assert.strictEqual(new Set(got.map((m) => `${verify(m).sender}/${verify(m).seq}`)).size, 7)
          return { writes: gated[0].writes(), waits: (yield* client.stats).mux.sendWaits }
        }))
      assert.deepStrictEqual(yield* run(0), { writes: 3, waits: 6 })
      assert.deepStrictEqual(yield* run(4096), { writes: 5, waits: 3 })
    }))

  it.live("a transport failing under a coalesced write fails exactly that write's messages, and queued ones go out on another", () =>
    Effect.gen(function*() {
      // Batches of at most five 100-byte messages.
      const { client, gated, tx, rx } = yield* gatedPool(2, { maxBatchBytes: 500 })
      const detached = yield* nextEvent(client, isDetached)
      const receiving = yield* rx.messages.pipe(Stream.take(7), Stream.runCollect, Effect.forkChild)
      // One held write on each transport, then ten senders queue.
      const held = yield* Effect.forEach(range(2), (i) => Effect.forkChild(tx.send(message(0, i, 100))))
      yield* eventually("both busy", Effect.map(client.stats, (s) => s.transports.every((t) => t.busy)))
      const queued = yield* Effect.forEach(range(10), (i) => Effect.forkChild(Effect.exit(tx.send(message(1, i, 100)))))
      yield* eventually("ten queued", Effect.map(client.stats, (s) => s.mux.waitingSenders === 10))
      // g0 finishes its write and takes the oldest five as one write, which then fails.
      yield* gated[0].permit(1)
      yield* eventually("five taken", Effect.map(client.stats, (s) => s.mux.waitingSenders === 5))
      assert.strictEqual(gated[0].writes(), 2)
      yield* gated[0].fail
      const event = yield* within("detached")(Fiber.join(detached))
      assert.strictEqual(event.label, "g0")
      assert.strictEqual(event.reason._tag, "TransportFailed")
      // The five never started wait for g1, and go out there.
      yield* gated[1].open
      yield* within("held sends")(Fiber.joinAll(held))
      const exits = yield* within("queued sends")(Fiber.joinAll(queued))
      const failedSeqs = new Set<number>()
      exits.forEach((exit, i) => {
        if (Exit.isSuccess(exit)) return
        failedSeqs.add(i)
        const reason = exit.cause.reasons[0] as unknown as { error: { reason: { _tag: string } } }
        assert.strictEqual(reason.error.reason._tag, "MessageCutOff")
      })
      assert.strictEqual(failedSeqs.size, 5)
      assert.deepStrictEqual(new Set(event.failedMessages.map((m) => verify(m).seq)), failedSeqs)
      const got = yield* within("receive")(Fiber.join(receiving))
      const sent = got.filter((m) => verify(m).sender === 1).map((m) => verify(m).seq)
      assert.strictEqual(sent.length, 5)
      for (const seq of sent) assert.isFalse(failedSeqs.has(seq), `message ${seq} both failed and arrived`)
      const stats = yield* client.stats
      assert.strictEqual(stats.mux.sendFailures, 5)
      assert.strictEqual(stats.mux.attached, 1)
    }))

  it.live("a queued sender that is interrupted leaves the queue, and its message is never sent", () =>
    Effect.gen(function*() {
      const { client, gated, tx, rx } = yield* gatedPool(1)
      const first = yield* Effect.forkChild(tx.send(message(0, 0, 100)))
      yield* eventually("transport busy", Effect.map(client.stats, (s) => s.transports[0].busy))
      const quitter = yield* Effect.forkChild(tx.send(message(1, 0, 100)))
      yield* eventually("a sender queued", Effect.map(client.stats, (s) => s.mux.waitingSenders === 1))
      yield* Fiber.interrupt(quitter)
      assert.strictEqual((yield* client.stats).mux.waitingSenders, 0)
      yield* gated[0].open
      yield* within("first send")(Fiber.join(first))
      yield* tx.send(message(2, 0, 100))
      // One transport keeps the order: the quitter's message would come between these two.
      const got = yield* rx.messages.pipe(Stream.take(2), Stream.runCollect, within("receive"))
      assert.deepStrictEqual(got.map((m) => verify(m).sender), [0, 2])
      assert.strictEqual((yield* client.stats).mux.txMessages, 2)
    }))

  it.live("interrupting a sender whose message is already being written neither cuts the write nor drops the transport", () =>
    Effect.gen(function*() {
      const { client, gated, tx, rx } = yield* gatedPool(1)
      const first = yield* Effect.forkChild(tx.send(message(0, 0, 100)))
      yield* eventually("transport busy", Effect.map(client.stats, (s) => s.transports[0].busy))
      const queued = yield* Effect.forEach(range(2), (i) => Effect.forkChild(tx.send(message(1, i, 100))))
      yield* eventually("two queued", Effect.map(client.stats, (s) => s.mux.waitingSenders === 2))
      yield* gated[0].permit(1)
      yield* eventually("the batch taken", Effect.map(client.stats, (s) => s.mux.waitingSenders === 0))
      yield* Fiber.interrupt(queued[0])
      yield* gated[0].open
      yield* within("sends")(Effect.andThen(Fiber.join(first), Fiber.join(queued[1])))
      const got = yield* rx.messages.pipe(Stream.take(3), Stream.runCollect, within("receive"))
      assert.deepStrictEqual(got.map((m) => `${verify(m).sender}/${verify(m).seq}`), ["0/0", "1/0", "1/1"])
      const stats = yield* client.stats
      assert.strictEqual(stats.mux.attached, 1)
      assert.strictEqual(stats.mux.errors, 0)
    }))

  it.live("a pool redials to keep its size when a connection drops", () =>
    Effect.gen(function*() {
      const server = yield* Kcm.make()
      const pairs: Array<Memory.BytePair> = []
      const dial = Effect.gen(function*() {
        const pair = yield* Memory.makeBytePair()
        pairs.push(pair)
        const scope = yield* Effect.scope
        yield* Effect.forkIn(Effect.scoped(Effect.andThen(server.attach(pair.b), Effect.never)), scope)
        return pair.a
      })
      const client = yield* Kcm.makePool({ dial, connections: 3, reconnect: undefined })
      assert.strictEqual(yield* client.attached, 3)
      const attached = yield* nextEvent(client, isAttached)
      const detached = yield* nextEvent(client, isDetached)
      yield* pairs[1].abort
      assert.strictEqual((yield* within("detached")(Fiber.join(detached))).reason._tag, "TransportFailed")
      assert.strictEqual((yield* within("redialled")(Fiber.join(attached))).label, "connection-4")
      yield* eventually("back to 3", Effect.map(client.attached, (n) => n === 3))
      assert.strictEqual(pairs.length, 4)
      // The new connection carries traffic.
      const tx = yield* client.socket()
      const rx = yield* server.socket()
      const receiving = yield* rx.messages.pipe(Stream.take(30), Stream.runCollect, Effect.forkChild)
      yield* Effect.forEach(range(30), (i) => tx.send(message(0, i, 30)), { discard: true })
      assert.strictEqual((yield* within("receive")(Fiber.join(receiving))).length, 30)
    }))

  it.live("failed dials are reported and retried on the schedule", () =>
    Effect.gen(function*() {
      let attempts = 0
      const dial = Effect.suspend(() => {
        attempts++
        return attempts <= 3 ? Effect.fail(new Error(`refused ${attempts}`)) : Memory.makeBytePair().pipe(Effect.map((p) => p.a))
      })
      const client = yield* Kcm.makePool({ dial, connections: 1 })
      assert.strictEqual(attempts, 4)
      const stats = yield* client.stats
      assert.strictEqual(stats.mux.dialFailures, 3)
      assert.strictEqual(stats.mux.attached, 1)
    }))

  it.live("closing the multiplexor ends its sockets, fails waiting senders, and leaves your transports open", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const mux = yield* Scope.provide(Kcm.make(), scope)
      const pair = yield* Memory.makeBytePair()
      const rx = yield* Scope.provide(mux.socket(), scope)
      const tx = yield* Scope.provide(mux.socket(), scope)
      const pulling = yield* Effect.forkChild(Stream.runCollect(rx.messages))
      // No transport attached: the sender waits.
      const waiting = yield* Effect.forkChild(Effect.flip(tx.send(message(0, 0, 10))))
      yield* eventually("sender waits", Effect.map(mux.stats, (s) => s.mux.waitingSenders === 1))
      // Attached in the test's own scope: the transport is ours, not the multiplexor's.
      yield* mux.attach(pair.b)
      yield* pair.aToB.stall
      yield* Scope.close(scope, Exit.void)
      const error = yield* within("sender fails")(Fiber.join(waiting)).pipe(Effect.orElseSucceed(() => undefined))
      // The sender either got the transport before the close (and sent) or failed with MuxClosed.
      if (error !== undefined) assert.strictEqual(error.reason._tag, "MuxClosed")
      assert.strictEqual((yield* within("socket ends")(Fiber.join(pulling))).length, 0)
      const exit = yield* Effect.exit(tx.send(message(0, 1, 10)))
      assert.isTrue(Exit.isFailure(exit))
      // The memory connection is still usable by its owner.
      const writer = yield* pair.b.writer
      yield* writer.write(new Uint8Array([1, 2, 3]))
      const reader = yield* pair.a.reader
      yield* pair.aToB.resume
      const bytes = yield* within("owner reads")(reader.pull)
      assert.isAbove(bytes.length, 0)
    }))

  it.live("closing the attaching scope detaches the transport", () =>
    Effect.gen(function*() {
      const mux = yield* Kcm.make()
      const pair = yield* Memory.makeBytePair()
      const scope = yield* Scope.make()
      const detached = yield* nextEvent(mux, isDetached)
      yield* Scope.provide(mux.attach(pair.b, { label: "mine" }), scope)
      assert.strictEqual(yield* mux.attached, 1)
      yield* Scope.close(scope, Exit.void)
      const event = yield* within("detached")(Fiber.join(detached))
      assert.strictEqual(event.reason._tag, "Requested")
      assert.strictEqual(event.label, "mine")
      assert.strictEqual(yield* mux.attached, 0)
    }))

  it.live("counts traffic per transport and as Effect Metrics", () =>
    Effect.gen(function*() {
      const { client, server } = yield* memoryPool({ connections: 2 })
      const txBefore = (yield* Metric.value(KcmStats.metrics.txMessages)).count
      const rxBytesBefore = (yield* Metric.value(KcmStats.metrics.rxBytes)).count
      const tx = yield* client.socket()
      const rx = yield* server.socket()
      const receiving = yield* rx.messages.pipe(Stream.take(40), Stream.runCollect, Effect.forkChild)
      yield* Effect.forEach(range(40), (i) => tx.send(message(0, i, 100)), { discard: true })
      yield* within("receive")(Fiber.join(receiving))
      const sent = yield* client.stats
      assert.strictEqual(sent.mux.txMessages, 40)
      assert.strictEqual(sent.mux.txBytes, 4000)
      assert.deepStrictEqual(sent.transports.map((t) => t.txMessages), [20, 20], "round-robin")
      const got = yield* server.stats
      assert.strictEqual(got.mux.rxBytes, 4000)
      assert.strictEqual(got.transports.reduce((n, t) => n + t.rxMessages, 0), 40)
      assert.strictEqual(got.mux.ready, 0)
      assert.isAtLeast((yield* Metric.value(KcmStats.metrics.txMessages)).count - txBefore, 40)
      assert.isAtLeast((yield* Metric.value(KcmStats.metrics.rxBytes)).count - rxBytesBefore, 4000)
    }))

  it.live("attaches session streams as transports: a pool of streams over one connection", () =>
    Effect.gen(function*() {
      const pair = yield* Memory.makeBytePair({ faults: { split: { min: 1, max: 3000 } } })
      const clientSession = yield* Session.make(pair.a, { role: "client" })
      const serverSession = yield* Session.make(pair.b, { role: "server" })
      const client = yield* Kcm.make()
      const server = yield* Kcm.make()
      for (const i of range(3)) {
        const stream = yield* clientSession.open()
        yield* client.attach(stream, { label: `stream-${i}` })
        yield* server.attach(yield* serverSession.accept)
      }
      const tx = yield* client.socket()
      const rx = yield* server.socket()
      const receiving = yield* rx.messages.pipe(Stream.take(600), Stream.runCollect, Effect.forkChild)
      yield* Effect.forEach(range(600), (i) => tx.send(message(i % 20, i, 100 + (i % 700))), { concurrency: 20, discard: true })
      const got = yield* within("receive")(Fiber.join(receiving))
      assert.strictEqual(new Set(got.map((m) => verify(m).seq)).size, 600)
      assert.isTrue((yield* client.stats).transports.every((t) => t.txMessages > 0))
    }))

  it.live("detaching a transport in the middle of traffic loses and duplicates nothing", () =>
    Effect.gen(function*() {
      const { client, server, clientAttachments } = yield* memoryPool({
        connections: 3,
        faults: { split: { min: 1, max: 900 } }
      })
      const tx = yield* client.socket()
      const rx = yield* server.socket()
      const seen = new Map<string, number>()
      const consumer = yield* Effect.forkChild(Stream.runForEach(rx.messages, (m) =>
        Effect.sync(() => {
          const { sender, seq } = verify(m)
          const key = `${sender}/${seq}`
          seen.set(key, (seen.get(key) ?? 0) + 1)
        })))
      const senders = yield* Effect.forkChild(Effect.forEach(
        range(40),
        (s) => Effect.forEach(range(50), (i) => tx.send(message(s, i, 64 + ((s + i) % 400))), { discard: true }),
        { concurrency: "unbounded", discard: true }
      ))
      yield* eventually("traffic under way", Effect.map(client.stats, (st) => st.mux.txMessages > 300))
      // Detach from the sending side: the messages already written on it are delivered by the peer.
      const detached = yield* clientAttachments[1].detach
      assert.strictEqual(detached.pending.length, 0)
      yield* within("senders finish")(Fiber.join(senders))
      yield* eventually("all received", Effect.sync(() => seen.size === 2000))
      yield* Fiber.interrupt(consumer)
      assert.isTrue([...seen.values()].every((n) => n === 1), "no duplicates")
      assert.strictEqual(yield* client.attached, 2)
    }))
})
