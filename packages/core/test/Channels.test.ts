import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Stream from "effect/Stream"
import * as ChannelError from "../src/ChannelError.ts"
import * as Channels from "../src/Channels.ts"
import * as Memory from "../src/Memory.ts"
import { within } from "./fixtures/Within.ts"
import { take } from "./fixtures/ChannelFailures.ts"

const text = (s: string) => new TextEncoder().encode(s)
const str = (b: Uint8Array) => new TextDecoder().decode(b)

const connect = (options?: Partial<Channels.Options>, pairOptions?: Memory.PairOptions<Memory.MessageFaults>) =>
  Effect.gen(function*() {
    const link = yield* Memory.makeMessagePair(pairOptions)
    const client = yield* Channels.make(link.a, { ...options, role: "client" })
    const server = yield* Channels.make(link.b, { ...options, role: "server" })
    return { client, server, link }
  })

/** Reads a channel until its end. */
const readToEnd = (channel: Channels.Channel) =>
  Effect.gen(function*() {
    const out: Array<Uint8Array> = []
    while (true) {
      const exit = yield* Effect.exit(channel.pull)
      if (Exit.isSuccess(exit)) {
        for (const m of exit.value) out.push(m)
        continue
      }
      if (Cause.hasFails(exit.cause)) {
        const error = Cause.findErrorOption(exit.cause)
        if (error._tag === "Some" && Cause.isDone(error.value)) return out
      }
      return yield* Effect.failCause(exit.cause)
    }
  })

const failureOf = <A>(exit: Exit.Exit<A, ChannelError.ChannelError | Cause.Done>): ChannelError.ChannelError => {
  assert.isTrue(Exit.isFailure(exit), "expected a failure")
  if (!Exit.isFailure(exit)) throw new Error("unreachable")
  const error = Cause.findErrorOption(exit.cause)
  if (error._tag !== "Some" || Cause.isDone(error.value)) throw new Error(`not a typed failure: ${Cause.pretty(exit.cause)}`)
  return error.value
}

describe("Channels", () => {
  describe("the default channel and opening", () => {
    it.live("carries messages both ways on channel 0 from the start", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect()
        yield* client.defaultChannel.send(text("hello"))
        yield* server.defaultChannel.send(text("world"))
        const [atServer] = yield* take(server.defaultChannel, 1).pipe(within("server reads channel 0"))
        const [atClient] = yield* take(client.defaultChannel, 1).pipe(within("client reads channel 0"))
        assert.strictEqual(str(atServer), "hello")
        assert.strictEqual(str(atClient), "world")
        assert.strictEqual(client.defaultChannel.id, 0)
      }))

    it.live("opens channels with the owner's parity and the peer accepts them", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect()
        const fromClient = yield* Effect.forkChild(client.open({ label: "chat" }))
        const atServer = yield* server.accept.pipe(within("server accepts"))
        const opened = yield* Fiber.join(fromClient).pipe(within("client open answered"))
        assert.strictEqual(opened.id % 2, 1)
        assert.strictEqual(atServer.id, opened.id)
        assert.strictEqual(atServer.label, "chat")
        assert.isTrue(opened.outbound)
        assert.isFalse(atServer.outbound)

        const fromServer = yield* Effect.forkChild(server.open())
        const atClient = yield* client.accept.pipe(within("client accepts"))
        const serverOpened = yield* Fiber.join(fromServer).pipe(within("server open answered"))
        assert.strictEqual(serverOpened.id % 2, 0)
        assert.strictEqual(atClient.id, serverOpened.id)

        yield* opened.send(text("c->s"))
        yield* atServer.send(text("s->c"))
        assert.strictEqual(str((yield* take(atServer, 1).pipe(within("server channel reads")))[0]), "c->s")
        assert.strictEqual(str((yield* take(opened, 1).pipe(within("client channel reads")))[0]), "s->c")
      }))

    it.live("allocates the next free id after the last one and reuses an id only once it is closed", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect()
        yield* Effect.forkChild(Stream.runForEach(server.incoming, (ch) => Effect.forkChild(readToEnd(ch))))
        const a = yield* client.open().pipe(within("open a"))
        const b = yield* client.open().pipe(within("open b"))
        assert.deepStrictEqual([a.id, b.id], [1, 3])
        yield* a.close
        yield* a.closed.pipe(within("a closes"))
        // Allocation moves on past the last id, not back to the freed one.
        const c = yield* client.open().pipe(within("open c"))
        assert.strictEqual(c.id, 5)
      }))

    it.live("incoming yields the channels the peer created, as a Stream", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect()
        const received = yield* Effect.forkChild(
          server.incoming.pipe(
            Stream.take(3),
            Stream.mapEffect((ch) => Effect.map(take(ch, 1), (m) => `${ch.label}:${str(m[0])}`)),
            Stream.runCollect
          )
        )
        for (const label of ["a", "b", "c"]) {
          const ch = yield* client.open({ label }).pipe(within(`open ${label}`))
          yield* ch.send(text(label.toUpperCase()))
        }
        const got = yield* Fiber.join(received).pipe(within("incoming collects three"))
        assert.deepStrictEqual(Array.from(got), ["a:A", "b:B", "c:C"])
      }))

    it.live("a create beyond the peer's backlog fails open with a retryable REFUSED", () =>
      Effect.gen(function*() {
        const { client } = yield* connect({ acceptBacklog: 0 })
        const exit = yield* Effect.exit(client.open().pipe(within("open is refused")))
        const error = failureOf(exit)
        assert.strictEqual(error.reason._tag, "RequestFailed")
        assert.strictEqual((error.reason as ChannelError.RequestFailed).code, ChannelError.Code.REFUSED)
        assert.isTrue(error.retryable)
        const stats = yield* client.stats
        assert.strictEqual(stats.openChannels, 1)
      }))

    it.live("a create asking for nothing negotiated but opened with none still works when extensions are negotiated", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect({ extensions: ["encryption"] })
        const opened = yield* Effect.forkChild(client.open())
        yield* server.accept.pipe(within("accept"))
        yield* Fiber.join(opened).pipe(within("open"))
      }))
  })

  describe("closing", () => {
    it.live("close delivers every message sent before it, then ends the peer's messages", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect()
        const opened = yield* Effect.forkChild(client.open())
        const atServer = yield* server.accept.pipe(within("accept"))
        const ch = yield* Fiber.join(opened)
        for (let i = 0; i < 50; i++) yield* ch.send(text(`m${i}`))
        yield* ch.close
        const got = yield* readToEnd(atServer).pipe(within("server reads to the end"))
        assert.deepStrictEqual(got.map(str), Array.from({ length: 50 }, (_, i) => `m${i}`))
        yield* ch.closed.pipe(within("client side closes"))
        yield* atServer.closed.pipe(within("server side closes"))
        const exit = yield* Effect.exit(ch.send(text("late")))
        assert.strictEqual(failureOf(exit).reason._tag, "ChannelClosed")
        const stats = yield* server.stats
        assert.strictEqual(stats.openChannels, 1)
        assert.strictEqual(stats.peerChannels, 0)
      }))

    it.live("the peer's close ends our messages and closes our side once our queue is out", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect()
        const opened = yield* Effect.forkChild(client.open())
        const atServer = yield* server.accept.pipe(within("accept"))
        const ch = yield* Fiber.join(opened)
        yield* atServer.send(text("last words"))
        yield* ch.closeWith(4000, "bye")
        const got = yield* readToEnd(ch).pipe(within("client reads the server's last message"))
        assert.deepStrictEqual(got.map(str), ["last words"])
        const serverGot = yield* readToEnd(atServer).pipe(within("server's messages end"))
        assert.strictEqual(serverGot.length, 0)
        yield* atServer.closed.pipe(within("server side closes"))
        const exit = yield* Effect.exit(atServer.send(text("too late")))
        const reason = failureOf(exit).reason as ChannelError.ChannelClosed
        assert.strictEqual(reason._tag, "ChannelClosed")
        assert.strictEqual(reason.code, 4000)
        assert.isTrue(reason.byPeer)
      }))

    it.live("abort fails the peer's channel with the code, and other channels go on", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect()
        const opened = yield* Effect.forkChild(client.open())
        const atServer = yield* server.accept.pipe(within("accept"))
        const ch = yield* Fiber.join(opened)
        yield* ch.abort(ChannelError.Code.CANCEL, "changed my mind")
        const exit = yield* Effect.exit(readToEnd(atServer).pipe(within("server sees the abort")))
        const reason = failureOf(exit).reason as ChannelError.ChannelClosed
        assert.strictEqual(reason._tag, "ChannelClosed")
        assert.isTrue(reason.aborted)
        assert.isTrue(reason.byPeer)
        assert.strictEqual(reason.code, ChannelError.Code.CANCEL)
        yield* ch.closed.pipe(within("aborted channel closes"))
        yield* client.defaultChannel.send(text("still here"))
        assert.strictEqual(str((yield* take(server.defaultChannel, 1).pipe(within("channel 0 goes on")))[0]), "still here")
      }))

    it.live("closing the scope of an opened channel closes it gracefully", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect()
        const accepted = yield* Effect.forkChild(server.accept.pipe(Effect.flatMap(readToEnd), Effect.scoped))
        yield* Effect.scoped(Effect.gen(function*() {
          const ch = yield* client.open()
          yield* ch.send(text("one"))
        })).pipe(within("scoped open"))
        const got = yield* Fiber.join(accepted).pipe(within("server reads to the end"))
        assert.deepStrictEqual(got.map(str), ["one"])
      }))

    it.live("the connection's close sends GOAWAY: the peer can open no more, and the connection ends", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect({ drainTimeout: "200 millis" })
        yield* server.close.pipe(within("server closes"))
        const exit = yield* Effect.exit(client.open().pipe(within("open after GOAWAY")))
        const reason = failureOf(exit).reason
        assert.isTrue(reason._tag === "GoneAway" || reason._tag === "RequestFailed" || reason._tag === "TransportClosed")
        yield* Effect.exit(server.closed).pipe(within("server ended"))
      }))
  })

  describe("flow control", () => {
    it.live("one stalled consumer holds back only its own channel, within its window", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect()
        const o1 = yield* Effect.forkChild(client.open({ label: "stalled" }))
        const stalled = yield* server.accept.pipe(within("accept stalled"))
        const slow = yield* Fiber.join(o1)
        const o2 = yield* Effect.forkChild(client.open({ label: "flowing" }))
        const flowing = yield* server.accept.pipe(within("accept flowing"))
        const fast = yield* Fiber.join(o2)

        const payload = new Uint8Array(1024)
        // The stalled channel's sender suspends once its 64-message window is used.
        const slowSender = yield* Effect.forkChild(Effect.forEach(Array.from({ length: 200 }), () => slow.send(payload)))
        const fastDone = yield* Effect.forkChild(
          Effect.forEach(Array.from({ length: 2_000 }), () => fast.send(payload), { discard: true })
        )
        const got = yield* take(flowing, 2_000).pipe(within("2000 messages flow past the stalled channel", 10_000))
        assert.strictEqual(got.length, 2_000)
        yield* Fiber.join(fastDone).pipe(within("fast sender done"))
        const stats = yield* server.stats
        // Buffered: the stalled channel's window (64 messages), nothing more.
        assert.isAtMost(stats.bufferedMessages, 64)
        assert.isAtMost(stats.bufferedBytes, 64 * 1024)
        assert.isUndefined(slowSender.pollUnsafe(), "the stalled channel's sender waits for credit")
        // The stalled consumer resumes: everything arrives, in order, once.
        const rest = yield* take(stalled, 200).pipe(within("stalled consumer catches up", 10_000))
        assert.strictEqual(rest.length, 200)
        yield* Fiber.join(slowSender).pipe(within("slow sender done"))
      }))

    it.live("credit comes back in batched WINDOW grants as the consumer reads", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect()
        const sender = yield* Effect.forkChild(
          Effect.forEach(Array.from({ length: 1_000 }), (_, i) => client.defaultChannel.send(text(`${i}`)), {
            discard: true
          })
        )
        const got = yield* take(server.defaultChannel, 1_000).pipe(within("1000 messages through a 64-message window"))
        yield* Fiber.join(sender).pipe(within("sender done"))
        assert.deepStrictEqual(got.map(str), Array.from({ length: 1_000 }, (_, i) => `${i}`))
        const stats = yield* server.stats
        // At most one grant per half window (32 messages), never one per message.
        assert.isAtMost(stats.grantsSent, Math.ceil(1_000 / 32) + 1)
        assert.isAtLeast(stats.grantsSent, 1)
      }))

    it.live("a busy channel's window grows over a slow link, up to its maximum and never past it", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect(
          { maxWindowMessages: 512, maxWindowBytes: 512 * 1024 },
          { faults: { latency: "2 millis" } }
        )
        const payload = new Uint8Array(1024)
        const sender = yield* Effect.forkChild(
          Effect.forEach(Array.from({ length: 3_000 }), () => client.defaultChannel.send(payload), { discard: true })
        )
        const got = yield* take(server.defaultChannel, 3_000).pipe(within("3000 messages over a 2 ms link", 20_000))
        yield* Fiber.join(sender).pipe(within("sender done"))
        assert.strictEqual(got.length, 3_000)
        const stats = yield* server.stats
        assert.isAtLeast(stats.windowGrowths, 1)
        // Only channel 0 is open: its receive window is all the budget used, at most the maximum.
        assert.isAbove(stats.budgetUsed, 256 * 1024)
        assert.isAtMost(stats.budgetUsed, 512 * 1024)
        // Grants are at half the grown base: fewer than one per 32 messages of the default window.
        assert.isBelow(stats.grantsSent, Math.ceil(3_000 / 32))
      }))

    it.live("a window at its maximum does not grow", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect(
          { maxWindowMessages: 64, maxWindowBytes: 256 * 1024 },
          { faults: { latency: "2 millis" } }
        )
        const payload = new Uint8Array(1024)
        const sender = yield* Effect.forkChild(
          Effect.forEach(Array.from({ length: 1_000 }), () => client.defaultChannel.send(payload), { discard: true })
        )
        yield* take(server.defaultChannel, 1_000).pipe(within("1000 messages over a 2 ms link", 20_000))
        yield* Fiber.join(sender).pipe(within("sender done"))
        const stats = yield* server.stats
        assert.strictEqual(stats.windowGrowths, 0)
        assert.strictEqual(stats.budgetUsed, 256 * 1024)
      }))

    it.live("a message larger than the base window fails with MessageTooLarge and sends nothing", () =>
      Effect.gen(function*() {
        const { client } = yield* connect({ windowBytes: 1024 })
        const exit = yield* Effect.exit(client.defaultChannel.send(new Uint8Array(1025)))
        const reason = failureOf(exit).reason as ChannelError.MessageTooLarge
        assert.strictEqual(reason._tag, "MessageTooLarge")
        assert.strictEqual(reason.max, 1024)
        yield* client.defaultChannel.send(new Uint8Array(1024))
      }))

    it.live("extra credit in CREATE lets the acceptor send beyond the default window", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect({ windowMessages: 4 })
        const opened = yield* Effect.forkChild(client.open({ extraMessages: 16 }))
        const atServer = yield* server.accept.pipe(within("accept"))
        const ch = yield* Fiber.join(opened)
        // 20 messages go out without the client reading one.
        yield* Effect.forEach(Array.from({ length: 20 }), () => atServer.send(text("x"))).pipe(
          within("20 sends within default + extra")
        )
        const blocked = yield* Effect.forkChild(atServer.send(text("21st")))
        yield* Effect.sleep("50 millis")
        assert.isUndefined(blocked.pollUnsafe(), "the 21st message waits for credit")
        yield* take(ch, 21).pipe(within("client reads all 21"))
        yield* Fiber.join(blocked).pipe(within("21st send completes"))
      }))

    it.live("messages keep flowing over a link with latency and a stall", () =>
      Effect.gen(function*() {
        const { client, server, link } = yield* connect(undefined, { faults: { latency: "2 millis" } })
        const opened = yield* Effect.forkChild(client.open())
        const atServer = yield* server.accept.pipe(within("accept over latency"))
        const ch = yield* Fiber.join(opened)
        const sender = yield* Effect.forkChild(
          Effect.forEach(Array.from({ length: 300 }), (_, i) => ch.send(text(`${i}`)), { discard: true })
        )
        const first = yield* take(atServer, 50).pipe(within("first 50"))
        yield* link.aToB.stall
        yield* Effect.sleep("30 millis")
        yield* link.aToB.resume
        const rest = yield* take(atServer, 250 - (first.length - 50)).pipe(within("the rest after the stall"))
        yield* Fiber.join(sender).pipe(within("sender done"))
        const all = [...first, ...rest].map(str)
        assert.deepStrictEqual(all, Array.from({ length: 300 }, (_, i) => `${i}`))
      }))
  })

  describe("migrate", () => {
    it.live("moves a channel to a new id with no loss or duplication while both sides send", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect(undefined, { faults: { latency: "1 millis" } })
        const opened = yield* Effect.forkChild(client.open())
        const atServer = yield* server.accept.pipe(within("accept"))
        const ch = yield* Fiber.join(opened)
        const oldId = ch.id
        const N = 400
        const clientSends = yield* Effect.forkChild(
          Effect.forEach(Array.from({ length: N }), (_, i) => ch.send(text(`c${i}`)), { discard: true })
        )
        const serverSends = yield* Effect.forkChild(
          Effect.forEach(Array.from({ length: N }), (_, i) => atServer.send(text(`s${i}`)), { discard: true })
        )
        const serverReads = yield* Effect.forkChild(take(atServer, N))
        const clientReads = yield* Effect.forkChild(take(ch, N))
        yield* Effect.sleep("5 millis")
        const newId = yield* ch.migrate.pipe(within("first MIGRATE answered"))
        const newer = yield* ch.migrate.pipe(within("second MIGRATE answered"))
        assert.notStrictEqual(newId, oldId)
        assert.strictEqual(newId % 2, 1)
        assert.strictEqual(ch.id, newer)
        const atS = yield* Fiber.join(serverReads).pipe(within("server reads all", 10_000))
        const atC = yield* Fiber.join(clientReads).pipe(within("client reads all", 10_000))
        yield* Fiber.join(clientSends)
        yield* Fiber.join(serverSends)
        assert.deepStrictEqual(atS.map(str), Array.from({ length: N }, (_, i) => `c${i}`))
        assert.deepStrictEqual(atC.map(str), Array.from({ length: N }, (_, i) => `s${i}`))
        assert.strictEqual(atServer.id, newer)
        // The channel still closes cleanly under its new id.
        yield* ch.close
        yield* readToEnd(atServer).pipe(within("server's messages end"))
        yield* ch.closed.pipe(within("closed after migrate"))
      }))

    it.live("refuses to migrate a channel this side does not own, sending nothing", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect()
        const opened = yield* Effect.forkChild(client.open())
        const atServer = yield* server.accept.pipe(within("accept"))
        yield* Fiber.join(opened)
        const exit = yield* Effect.exit(atServer.migrate)
        assert.strictEqual(failureOf(exit).reason._tag, "ProtocolViolation")
        const exit0 = yield* Effect.exit(client.defaultChannel.migrate)
        assert.isTrue(Exit.isFailure(exit0))
      }))
  })

  describe("merge", () => {
    const three = Effect.gen(function*() {
      const { client, server, link } = yield* connect()
      const pairs: Array<readonly [Channels.Channel, Channels.Channel]> = []
      for (let i = 0; i < 3; i++) {
        const opened = yield* Effect.forkChild(client.open({ label: `m${i}` }))
        const accepted = yield* server.accept.pipe(within(`accept m${i}`))
        pairs.push([yield* Fiber.join(opened), accepted])
      }
      return { client, server, link, pairs }
    })

    it.live("a message sent on one merged channel is received on each member", () =>
      Effect.gen(function*() {
        const { client, pairs } = yield* three
        const [[c0, s0], [c1, s1], [c2, s2]] = pairs
        yield* client.merge(c0, [c1, c2]).pipe(within("MERGE answered"))
        yield* c1.send(text("to all"))
        for (const s of [s0, s1, s2]) {
          assert.strictEqual(str((yield* take(s, 1).pipe(within("each member receives")))[0]), "to all")
        }
        // And the other way: the acceptor's message reaches each of the requester's members.
        yield* s2.send(text("back"))
        for (const c of [c0, c1, c2]) {
          assert.strictEqual(str((yield* take(c, 1).pipe(within("each client member receives")))[0]), "back")
        }
      }))

    it.live("unmerge makes the members independent again", () =>
      Effect.gen(function*() {
        const { server, pairs } = yield* three
        const [[c0, s0], [c1, s1]] = pairs
        yield* server.merge(s0, [s1]).pipe(within("MERGE answered"))
        yield* c0.send(text("both"))
        assert.strictEqual(str((yield* take(s0, 1))[0]), "both")
        assert.strictEqual(str((yield* take(s1, 1))[0]), "both")
        yield* server.unmerge([s0, s1]).pipe(within("UNMERGE answered"))
        yield* c0.send(text("only s0"))
        yield* c1.send(text("only s1"))
        assert.strictEqual(str((yield* take(s0, 1).pipe(within("s0 reads")))[0]), "only s0")
        assert.strictEqual(str((yield* take(s1, 1).pipe(within("s1 reads")))[0]), "only s1")
        const stats = yield* server.stats
        assert.strictEqual(stats.bufferedMessages, 0)
      }))

    it.live("merging a closed channel fails with a typed UNKNOWN_CHANNEL and unmerging a lone one with NOT_MERGED", () =>
      Effect.gen(function*() {
        const { client, pairs } = yield* three
        const [[c0], [c1, s1]] = pairs
        yield* s1.close
        yield* c1.closed.pipe(within("c1 closed by the peer"))
        const exit = yield* Effect.exit(client.merge(c0, [c1]))
        const reason = failureOf(exit).reason as ChannelError.RequestFailed
        assert.strictEqual(reason._tag, "RequestFailed")
        assert.strictEqual(reason.code, ChannelError.Code.UNKNOWN_CHANNEL)
        const exit2 = yield* Effect.exit(client.unmerge([c0]))
        assert.strictEqual((failureOf(exit2).reason as ChannelError.RequestFailed).code, ChannelError.Code.NOT_MERGED)
      }))
  })

  it.live("ping measures a round trip over the control channel", () =>
    Effect.gen(function*() {
      const { client } = yield* connect()
      const rtt = yield* client.ping.pipe(within("PONG"))
      assert.isAtLeast(Duration.toMillis(rtt), 0)
    }))
})
