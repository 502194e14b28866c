/**
 * Fanout with encryption, hop by hop (docs/spec/channels.md, Fanout and
 * Encryption), and the exact point at which LINK, FILTER and UNLINK take
 * effect in a consumer channel's wire order. A gateway, an edge subscribed
 * to it over one long-haul link, and consumers of the edge, all in memory;
 * a tap on the edge's side of a consumer connection records (and can
 * tamper with) what the edge writes.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as ChannelError from "../src/ChannelError.ts"
import * as Channels from "../src/Channels.ts"
import * as Fanout from "../src/Fanout.ts"
import * as F from "../src/internal/channelFrames.ts"
import * as Memory from "../src/Memory.ts"
import * as MessageTransport from "../src/MessageTransport.ts"
import { failureCode, pullUntilFailure, takeText, until } from "./fixtures/ChannelFailures.ts"
import { within } from "./fixtures/Within.ts"

const text = (s: string) => new TextEncoder().encode(s)
const str = (b: Uint8Array) => new TextDecoder().decode(b)
const { Code } = ChannelError

const KEYS = new Map([
  [1, Uint8Array.from({ length: 32 }, (_, i) => i + 1)],
  [2, Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i)]
])
const both = ["fanout", "encryption"] as const

/** What one side writes, in order (copies), and an optional rewrite of each message. */
interface Tap {
  readonly sent: Array<Uint8Array>
  transform: ((message: Uint8Array) => Uint8Array) | undefined
}

const tapped = <E>(base: MessageTransport.MessageTransport<E>, tap: Tap): MessageTransport.MessageTransport<E> => {
  const pass = (messages: ReadonlyArray<Uint8Array>) =>
    messages.map((m) => {
      tap.sent.push(m.slice())
      return tap.transform === undefined ? m : tap.transform(m)
    })
  return MessageTransport.make({
    send: (m) => base.sendAll(pass([m])),
    sendAll: (ms) => base.sendAll(pass(ms)),
    pull: base.pull,
    close: base.close
  })
}

const isControl = (m: Uint8Array, tag: F.ControlMessage["_tag"]) => {
  if (F.channelIdOf(m) !== F.CONTROL_CHANNEL) return false
  const decoded = F.decodeControl(m.subarray(2))
  return !(decoded instanceof ChannelError.ChannelError) && decoded._tag === tag
}

/** The data messages on `channelId` before and after the first control message `tag`, as written. */
const aroundControl = (sent: ReadonlyArray<Uint8Array>, channelId: number, tag: F.ControlMessage["_tag"]) => {
  const at = sent.findIndex((m) => isControl(m, tag))
  const data = (list: ReadonlyArray<Uint8Array>) => list.filter((m) => F.channelIdOf(m) === channelId)
  return { found: at >= 0, before: data(sent.slice(0, Math.max(at, 0))), after: data(sent.slice(at + 1)) }
}

const contains = (haystack: Uint8Array, needle: Uint8Array) => {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer
    return true
  }
  return false
}

/**
 * content service → gateway ⇄ (long-haul link) ⇄ edge → consumers, every
 * connection with fanout and encryption negotiated and both keys.
 * `upstreamKey`: the key id the edge's upstream channels use (plain without).
 */
const topology = (options: { readonly upstreamKey?: number | undefined; readonly scopes?: Record<string, Array<string>> } = {}) =>
  Effect.gen(function*() {
    const scopes = options.scopes ?? {}
    const authorize = (scope: Uint8Array, peer: string) => (scopes[peer] ?? ["acme"]).includes(str(scope))
    const serveOptions = { role: "server" as const, extensions: both, keys: KEYS }
    const gateway = yield* Fanout.make<string>({ authorize })
    const longHaul = yield* Memory.makeMessagePair()
    yield* gateway.serve(longHaul.b, serveOptions, "edge")
    const upstream = yield* Channels.make(longHaul.a, { role: "client", extensions: both, keys: KEYS })
    const edge = yield* Fanout.make<string>({
      upstream,
      authorize,
      upstreamEncryption: options.upstreamKey === undefined ? undefined : { keyId: options.upstreamKey }
    })
    const contentPair = yield* Memory.makeMessagePair()
    yield* gateway.serve(contentPair.b, serveOptions, "content")
    const content = yield* Channels.make(contentPair.a, { role: "client", extensions: both, keys: KEYS })
    /** A consumer connection to the edge; `tap` records what the edge writes to it. */
    const client = (peer = "client") =>
      Effect.gen(function*() {
        const pair = yield* Memory.makeMessagePair()
        const tap: Tap = { sent: [], transform: undefined }
        const served = yield* edge.serve(tapped(pair.b, tap), serveOptions, peer)
        const connection = yield* Channels.make(pair.a, { role: "client", extensions: both, keys: KEYS })
        return { connection, served, tap }
      })
    return { gateway, edge, longHaul, content, client }
  })

describe("Fanout with encryption", () => {
  it.live("an encrypted publisher, upstream and consumers: the flow arrives intact and crosses the link once, sealed", () =>
    Effect.gen(function*() {
      const { client, content, edge, longHaul } = yield* topology({ upstreamKey: 1 })
      // Sealed on every hop: publisher → gateway, gateway → edge, edge → consumers.
      const feed = yield* Fanout.publishTo(content, { flow: "prices", scope: "acme", encryption: { keyId: 2 } })
      assert.isDefined(feed.encryption)
      const consumers: Array<Channels.Channel> = []
      const taps: Array<Tap> = []
      for (let i = 0; i < 6; i++) {
        const { connection, tap } = yield* client()
        const encryption = { keyId: i % 2 === 0 ? 1 : 2, suite: i % 2 === 0 ? "AES-256-GCM" : "AES-128-GCM" } as const
        consumers.push(yield* Fanout.subscribe(connection, { flow: "prices", scope: "acme", encryption }))
        taps.push(tap)
      }
      for (const channel of consumers) assert.isDefined(channel.encryption)
      const before = (yield* longHaul.bToA.stats).written
      const messages = 40
      const payload = "secret-".repeat(20)
      for (let i = 0; i < messages; i++) yield* feed.send(text(`${i}:${payload}`))
      const received = yield* Effect.forEach(consumers, (ch) => takeText(ch, messages), { concurrency: "unbounded" }).pipe(
        within("every consumer gets the feed")
      )
      for (const list of received) {
        assert.deepStrictEqual(list, Array.from({ length: messages }, (_, i) => `${i}:${payload}`))
      }
      // One sealed copy per message: the plaintext, the 2-byte channel id and the 16-byte tag.
      const sealedBytes = Array.from({ length: messages }, (_, i) => `${i}:${payload}`.length + 2 + 16)
        .reduce((a, b) => a + b, 0)
      const longHaulBytes = (yield* longHaul.bToA.stats).written - before
      assert.isAtLeast(longHaulBytes, sealedBytes)
      assert.isAtMost(longHaulBytes, sealedBytes * 1.05)
      const stats = yield* edge.stats
      assert.strictEqual(stats.upstreamOpened, 1)
      assert.strictEqual(stats.messagesIn, messages)
      // What the edge writes to its consumers is sealed too.
      for (const tap of taps) {
        assert.isFalse(tap.sent.some((m) => contains(m, text("secret-secret-"))))
      }
    }))

  it.live("a consumer on a plain channel and consumers on encrypted ones (CREATE, and LINK on an encrypted channel) all get the flow", () =>
    Effect.gen(function*() {
      const { client, content } = yield* topology({ upstreamKey: 2 })
      const feed = yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const a = yield* client()
      const plain = yield* Fanout.subscribe(a.connection, { flow: "prices", scope: "acme" })
      const sealed = yield* Fanout.subscribe(a.connection, { flow: "prices", scope: "acme", encryption: { keyId: 1 } })
      // An encrypted channel the edge's application accepts, then linked.
      const b = yield* client()
      const accepting = yield* Effect.forkChild(b.served.accept)
      const linked = yield* b.connection.open({ encryption: { keyId: 2 } })
      yield* Fiber.join(accepting).pipe(within("the edge accepts the channel"))
      yield* b.connection.link(linked, Fanout.params({ role: "subscribe", flow: "prices", scope: "acme" }))
      assert.isUndefined(plain.encryption)
      assert.strictEqual(sealed.encryption?.keyId, 1)
      assert.strictEqual(linked.encryption?.keyId, 2)
      const messages = ["EUR 1", "USD 2", "CHF 3"]
      for (const m of messages) yield* feed.send(text(m))
      for (const channel of [plain, sealed, linked]) {
        assert.deepStrictEqual(yield* takeText(channel, 3).pipe(within("each consumer gets the flow")), messages)
      }
      // On the wire to the first connection: plaintext on the plain channel, sealed on the other.
      const onWire = (channel: Channels.Channel) => a.tap.sent.filter((m) => F.channelIdOf(m) === channel.id)
      assert.isTrue(onWire(plain).some((m) => contains(m, text("EUR 1"))))
      assert.isFalse(onWire(sealed).some((m) => contains(m, text("EUR 1"))))
      assert.deepStrictEqual(onWire(sealed).map((m) => m.length), messages.map((m) => 2 + m.length + 16))
    }))

  it.live("filters see the plaintext of an encrypted upstream and apply per encrypted consumer", () =>
    Effect.gen(function*() {
      const { client, content } = yield* topology({ upstreamKey: 1 })
      const feed = yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const { connection } = yield* client()
      const eur = yield* Fanout.subscribe(connection, {
        flow: "prices",
        scope: "acme",
        filter: Fanout.prefixes("EUR"),
        encryption: { keyId: 2 }
      })
      for (const m of ["EUR 1", "USD 2", "EUR 3"]) yield* feed.send(text(m))
      assert.deepStrictEqual(yield* takeText(eur, 2).pipe(within("filtered")), ["EUR 1", "EUR 3"])
    }))

  it.live("a tampered message on one consumer's channel fails that consumer only", () =>
    Effect.gen(function*() {
      const { client, content, edge } = yield* topology({ upstreamKey: 1 })
      const feed = yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const a = yield* client()
      const victim = yield* Fanout.subscribe(a.connection, { flow: "prices", scope: "acme", encryption: { keyId: 1 } })
      const neighbour = yield* Fanout.subscribe(a.connection, { flow: "prices", scope: "acme", encryption: { keyId: 1 } })
      const b = yield* client()
      const elsewhere = yield* Fanout.subscribe(b.connection, { flow: "prices", scope: "acme", encryption: { keyId: 2 } })
      // The third data message the edge writes on the victim's channel gets one byte flipped.
      let seen = 0
      a.tap.transform = (m) => {
        if (F.channelIdOf(m) !== victim.id || ++seen !== 3) return m
        const copy = m.slice()
        copy[copy.length - 1] ^= 0x01
        return copy
      }
      const messages = Array.from({ length: 6 }, (_, i) => `tick ${i}`)
      for (const m of messages) yield* feed.send(text(m))
      const failed = yield* pullUntilFailure(victim).pipe(within("the victim fails"))
      assert.deepStrictEqual(failed.got, messages.slice(0, 2))
      assert.strictEqual(failed.error.reason._tag, "DecryptFailed")
      assert.deepStrictEqual(yield* takeText(neighbour, 6).pipe(within("the neighbour")), messages)
      assert.deepStrictEqual(yield* takeText(elsewhere, 6).pipe(within("another connection")), messages)
      yield* until(edge.stats, (s) => s.consumers === 2).pipe(within("the edge drops the victim"))
      yield* feed.send(text("after"))
      assert.deepStrictEqual(yield* takeText(neighbour, 1).pipe(within("the flow goes on")), ["after"])
      assert.deepStrictEqual(yield* takeText(elsewhere, 1).pipe(within("the flow goes on elsewhere")), ["after"])
      assert.strictEqual((yield* edge.stats).upstreamChannels, 1)
    }))

  it.live("a message that fails to seal aborts that consumer's channel only; the connection and the other consumer go on", () =>
    Effect.gen(function*() {
      const { client, content } = yield* topology()
      const feed = yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const { connection } = yield* client()
      const first = yield* Fanout.subscribe(connection, { flow: "prices", scope: "acme", encryption: { keyId: 1 } })
      const second = yield* Fanout.subscribe(connection, { flow: "prices", scope: "acme", encryption: { keyId: 1 } })
      // WebCrypto refuses to seal "poison" once: for whichever consumer channel seals it first.
      const subtle = globalThis.crypto.subtle
      const encrypt = subtle.encrypt
      let refused = 0
      subtle.encrypt = function(this: SubtleCrypto, algorithm, key, data) {
        const bytes = ArrayBuffer.isView(data)
          ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
          : new Uint8Array(data)
        if (refused === 0 && str(bytes) === "poison") {
          refused++
          return Promise.reject(new Error("sealing refused"))
        }
        return encrypt.call(subtle, algorithm, key, data)
      }
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          delete (subtle as { encrypt?: unknown }).encrypt
        })
      )
      for (const m of ["one", "two", "poison"]) yield* feed.send(text(m))
      const outcomes = yield* Effect.forEach(
        [first, second],
        (channel) => Effect.exit(takeText(channel, 3)).pipe(within("each consumer settles")),
        { concurrency: "unbounded" }
      )
      assert.strictEqual(refused, 1)
      const failedAt = outcomes.findIndex(Exit.isFailure)
      assert.isAtLeast(failedAt, 0)
      assert.strictEqual(failureCode(outcomes[failedAt]), Code.INTERNAL_ERROR)
      const survivor = failedAt === 0 ? second : first
      const ok = outcomes[1 - failedAt]
      assert.isTrue(Exit.isSuccess(ok))
      if (Exit.isSuccess(ok)) assert.deepStrictEqual(ok.value, ["one", "two", "poison"])
      yield* feed.send(text("four"))
      assert.deepStrictEqual(yield* takeText(survivor, 1).pipe(within("the survivor goes on")), ["four"])
      yield* connection.ping.pipe(within("the connection is alive"))
    }))

  it.live("an encrypted link is still refused outside the connection's scopes, and with a key the edge does not hold", () =>
    Effect.gen(function*() {
      const { client, content } = yield* topology({ upstreamKey: 1, scopes: { guest: ["public"] } })
      yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const guest = yield* client("guest")
      const denied = yield* Effect.exit(
        Fanout.subscribe(guest.connection, { flow: "prices", scope: "acme", encryption: { keyId: 1 } })
      )
      assert.strictEqual(failureCode(denied), Code.SCOPE_DENIED)
      // A consumer asking for a key the edge does not hold.
      const { edge } = yield* topology()
      const pair = yield* Memory.makeMessagePair()
      yield* edge.serve(pair.b, { role: "server", extensions: both, keys: new Map([[1, KEYS.get(1)!]]) }, "client")
      const consumer = yield* Channels.make(pair.a, { role: "client", extensions: both, keys: KEYS })
      const unknownKey = yield* Effect.exit(
        Fanout.subscribe(consumer, { flow: "prices", scope: "acme", encryption: { keyId: 2 } })
      )
      assert.strictEqual(failureCode(unknownKey), Code.UNKNOWN_KEY)
    }))

  it.live("an upstream key the gateway does not hold refuses the consumer with UNKNOWN_KEY", () =>
    Effect.gen(function*() {
      const { client, content, edge } = yield* topology({ upstreamKey: 7 })
      yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const { connection } = yield* client()
      const exit = yield* Effect.exit(Fanout.subscribe(connection, { flow: "prices", scope: "acme" }))
      // The edge has no key 7 either: its own open fails before anything is sent.
      assert.strictEqual(failureCode(exit), Code.UNKNOWN_KEY)
      yield* until(edge.stats, (s) => s.upstreamChannels === 0 && s.flows === 0).pipe(within("nothing is left"))
    }))
})

describe("Fanout: a change takes effect at its acknowledgement", () => {
  /** 100 messages alternating "A …" and "B …": 64 take the default window, 36 stay queued at the edge. */
  const queueBehindTheWindow = (encrypted: boolean) =>
    Effect.gen(function*() {
      const { client, content, edge } = yield* topology({ upstreamKey: encrypted ? 1 : undefined })
      const feed = yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const consumer = yield* client()
      const channel = yield* Fanout.subscribe(consumer.connection, {
        flow: "prices",
        scope: "acme",
        encryption: encrypted ? { keyId: 2 } : undefined
      })
      const total = 100
      const sent = Array.from({ length: total }, (_, i) => `${i % 2 === 0 ? "A" : "B"} ${i}`)
      for (const m of sent) yield* feed.send(text(m))
      yield* until(edge.stats, (s) => s.messagesDelivered === total).pipe(within("the edge has offered everything"))
      return { ...consumer, channel, sent, edge }
    })

  for (const encrypted of [false, true]) {
    it.live(`FILTER while messages are queued: nothing the new filter rejects arrives after FILTER_ACK${encrypted ? " (encrypted)" : ""}`, () =>
      Effect.gen(function*() {
        const { channel, connection, sent, tap, edge } = yield* queueBehindTheWindow(encrypted)
        yield* connection.filter(channel, Fanout.prefixes("A"))
        const as = sent.filter((m) => m.startsWith("A"))
        const wire = aroundControl(tap.sent, channel.id, "FilterAck")
        assert.isTrue(wire.found)
        // Some went before the FILTER_ACK under the old filter; the rest are read now.
        const before = wire.before.length
        assert.isAtLeast(before, 1)
        assert.isBelow(before, sent.length)
        const expected = [...sent.slice(0, before), ...sent.slice(before).filter((m) => m.startsWith("A"))]
        const got = yield* takeText(channel, expected.length).pipe(within("the consumer reads on"))
        assert.deepStrictEqual(got, expected)
        const after = aroundControl(tap.sent, channel.id, "FilterAck").after
        assert.strictEqual(after.length, expected.length - before)
        // The old filter let B's through that were still queued: they were withdrawn, not sent late.
        assert.isAbove(sent.slice(before).length, after.length)
        if (!encrypted) for (const m of after) assert.isTrue(str(m.subarray(2)).startsWith("A"))
        const stats = yield* edge.stats
        assert.strictEqual(stats.filteredOut, sent.slice(before).length - (expected.length - before))
        assert.strictEqual(stats.messagesDelivered, expected.length)
        assert.isAbove(as.length, 0)
      }))
  }

  it.live("UNLINK while messages are queued: nothing of the flow follows the UNLINK_ACK, and the channel stays open", () =>
    Effect.gen(function*() {
      const { channel, connection, tap } = yield* queueBehindTheWindow(false)
      yield* connection.unlink(channel)
      const wire = aroundControl(tap.sent, channel.id, "UnlinkAck")
      assert.isTrue(wire.found)
      const before = wire.before.length
      assert.isBelow(before, 100)
      const got = yield* takeText(channel, before).pipe(within("what went before the UNLINK_ACK"))
      assert.strictEqual(got.length, before)
      // Two answers queued in order with data: the first carries our credit out, the second follows
      // whatever that credit let the edge send.
      for (let i = 0; i < 2; i++) {
        assert.strictEqual(failureCode(yield* Effect.exit(connection.unlink(channel))), Code.NOT_LINKED)
      }
      assert.strictEqual(aroundControl(tap.sent, channel.id, "UnlinkAck").after.length, 0)
      // The channel is still open and plain.
      yield* channel.send(text("still here"))
      assert.isUndefined(channel.fanout)
    }))

  it.live("LINK while the flow runs: nothing of the flow goes out on the channel before its LINK_ACK", () =>
    Effect.gen(function*() {
      const { client, gateway, content } = yield* topology()
      void content
      const publisher = yield* gateway.publish("prices", "acme")
      const connections = yield* Effect.forEach(Array.from({ length: 8 }), () => client())
      let running = true
      const pacer = yield* Effect.forkChild(
        Effect.gen(function*() {
          let i = 0
          while (running) {
            yield* publisher.publish(text(`tick ${i++}`))
            yield* Effect.yieldNow
          }
        })
      )
      const p = Fanout.params({ role: "subscribe", flow: "prices", scope: "acme" })
      yield* Effect.forEach(connections, ({ connection }) => connection.link(connection.defaultChannel, p), {
        concurrency: "unbounded"
      })
      for (const { connection } of connections) {
        yield* takeText(connection.defaultChannel, 3).pipe(within("the flow arrives"))
      }
      running = false
      yield* Fiber.join(pacer)
      for (const { tap } of connections) {
        const wire = aroundControl(tap.sent, F.DEFAULT_CHANNEL, "LinkAck")
        assert.isTrue(wire.found)
        assert.strictEqual(wire.before.length, 0)
        assert.isAbove(wire.after.length, 0)
      }
    }))
})
