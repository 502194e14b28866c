/**
 * Fanout over in-memory links: a gateway, an edge subscribed to it over one
 * long-haul link, and consumers of the edge. Byte counts come from the
 * long-haul link's own counters; hostile peers are raw transports whose
 * control messages are built byte by byte.
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
import type * as MessageTransport from "../src/MessageTransport.ts"
import { failureCode, takeText, until } from "./fixtures/ChannelFailures.ts"
import { within } from "./fixtures/Within.ts"

const text = (s: string) => new TextEncoder().encode(s)
const str = (b: Uint8Array) => new TextDecoder().decode(b)
const { Code } = ChannelError

const upperFilter: Fanout.FilterFactory = (data) => data.length === 0 ? (p) => p[0] >= 0x41 && p[0] <= 0x5a : undefined
const filters = new Map([[0x80, upperFilter]])

/**
 * content service → gateway ⇄ (long-haul link) ⇄ edge → consumers. Peers are
 * names; `authorize` lets a peer into the scopes listed for it.
 */
const topology = (
  options: {
    readonly bufferMessages?: number
    readonly gatewayBufferMessages?: number
    readonly scopes?: Record<string, Array<string>>
  } = {}
) =>
  Effect.gen(function*() {
    const scopes = options.scopes ?? {}
    const authorize = (scope: Uint8Array, peer: string) => (scopes[peer] ?? ["acme"]).includes(str(scope))
    const gateway = yield* Fanout.make<string>({ authorize, filters, bufferMessages: options.gatewayBufferMessages })
    const longHaul = yield* Memory.makeMessagePair()
    yield* gateway.serve(longHaul.b, { role: "server" }, "edge")
    const upstream = yield* Channels.make(longHaul.a, { role: "client", extensions: ["fanout"] })
    const edge = yield* Fanout.make<string>({
      upstream,
      authorize,
      filters,
      bufferMessages: options.bufferMessages
    })
    const connectTo = (node: Fanout.Node<string>, peer: string) =>
      Effect.gen(function*() {
        const pair = yield* Memory.makeMessagePair()
        yield* node.serve(pair.b, { role: "server" }, peer)
        return yield* Channels.make(pair.a, { role: "client", extensions: ["fanout"] })
      })
    const content = yield* connectTo(gateway, "content")
    return { gateway, edge, longHaul, upstream, content, client: (peer = "client") => connectTo(edge, peer) }
  })

describe("Fanout", () => {
  it.live("a message crosses the gateway-edge link once for N subscribers", () =>
    Effect.gen(function*() {
      const { content, client, edge, gateway, longHaul } = yield* topology()
      const feed = yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const subscribers = 20
      const messages = 50
      const channels: Array<Channels.Channel> = []
      for (let i = 0; i < subscribers; i++) {
        const connection = yield* client()
        channels.push(yield* Fanout.subscribe(connection, { flow: "prices", scope: "acme" }))
      }
      const before = (yield* longHaul.bToA.stats).written
      const payload = "x".repeat(200)
      for (let i = 0; i < messages; i++) yield* feed.send(text(`${i}:${payload}`))
      const received = yield* Effect.forEach(channels, (ch) => takeText(ch, messages), { concurrency: "unbounded" }).pipe(
        within("every subscriber gets the feed")
      )
      for (const list of received) {
        assert.strictEqual(list.length, messages)
        assert.strictEqual(list[messages - 1], `${messages - 1}:${payload}`)
      }
      const feedBytes = messages * (payload.length + 4)
      const longHaulBytes = (yield* longHaul.bToA.stats).written - before
      // One copy plus the 2-byte channel id per message (and little else), not N copies.
      assert.isAtMost(longHaulBytes, feedBytes * 1.05)
      assert.isAtLeast(longHaulBytes, feedBytes)
      const edgeStats = yield* edge.stats
      assert.strictEqual(edgeStats.upstreamOpened, 1)
      assert.strictEqual(edgeStats.messagesIn, messages)
      assert.strictEqual(edgeStats.messagesDelivered, messages * subscribers)
      const gatewayStats = yield* gateway.stats
      assert.strictEqual(gatewayStats.consumers, 1)
      assert.strictEqual(gatewayStats.messagesDelivered, messages)
    }))

  it.live("a prefix filter lets through only the messages that start with a prefix, and FILTER replaces it", () =>
    Effect.gen(function*() {
      const { content, client } = yield* topology()
      const feed = yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const connection = yield* client()
      const eur = yield* Fanout.subscribe(connection, {
        flow: "prices",
        scope: "acme",
        filter: Fanout.prefixes("EUR", "CHF")
      })
      const everything = yield* Fanout.subscribe(connection, { flow: "prices", scope: "acme" })
      for (const m of ["EUR 1", "USD 2", "CHF 3", "GBP 4"]) yield* feed.send(text(m))
      assert.deepStrictEqual(yield* takeText(eur, 2).pipe(within("filtered")), ["EUR 1", "CHF 3"])
      assert.deepStrictEqual(yield* takeText(everything, 4).pipe(within("unfiltered")), ["EUR 1", "USD 2", "CHF 3", "GBP 4"])
      yield* connection.filter(eur, Fanout.prefixes("USD"))
      for (const m of ["EUR 5", "USD 6"]) yield* feed.send(text(m))
      assert.deepStrictEqual(yield* takeText(eur, 1).pipe(within("replaced filter")), ["USD 6"])
      assert.strictEqual(str(eur.fanout!.filter._tag === "Prefixes" ? eur.fanout!.filter.prefixes[0] : text("")), "USD")
    }))

  it.live("an application filter runs the predicate registered for its kind; an unregistered kind is BAD_FILTER", () =>
    Effect.gen(function*() {
      const { content, client } = yield* topology()
      const feed = yield* Fanout.publishTo(content, { flow: "news", scope: "acme" })
      const connection = yield* client()
      const upper = yield* Fanout.subscribe(connection, {
        flow: "news",
        scope: "acme",
        filter: Fanout.application(0x80)
      })
      for (const m of ["lower", "Upper", "again", "Also"]) yield* feed.send(text(m))
      assert.deepStrictEqual(yield* takeText(upper, 2).pipe(within("application filter")), ["Upper", "Also"])
      const unknownKind = yield* Effect.exit(
        Fanout.subscribe(connection, { flow: "news", scope: "acme", filter: Fanout.application(0x90) })
      )
      assert.strictEqual(failureCode(unknownKind), Code.BAD_FILTER)
      const badData = yield* Effect.exit(
        Fanout.subscribe(connection, { flow: "news", scope: "acme", filter: Fanout.application(0x80, text("?")) })
      )
      assert.strictEqual(failureCode(badData), Code.BAD_FILTER)
      const badFilter = yield* Effect.exit(connection.filter(upper, Fanout.application(0x91)))
      assert.strictEqual(failureCode(badFilter), Code.BAD_FILTER)
    }))

  it.live("a scope the connection is not authorised for is refused with SCOPE_DENIED", () =>
    Effect.gen(function*() {
      const { content, client } = yield* topology({ scopes: { guest: ["public"] } })
      yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const guest = yield* client("guest")
      const exit = yield* Effect.exit(Fanout.subscribe(guest, { flow: "prices", scope: "acme" }))
      assert.strictEqual(failureCode(exit), Code.SCOPE_DENIED)
      const linkExit = yield* Effect.exit(
        guest.link(guest.defaultChannel, Fanout.params({ role: "subscribe", flow: "prices", scope: "acme" }))
      )
      assert.strictEqual(failureCode(linkExit), Code.SCOPE_DENIED)
    }))

  it.live("a flow the gateway does not have is UNKNOWN_FLOW at the edge, and leaves no upstream channel", () =>
    Effect.gen(function*() {
      const { client, edge } = yield* topology()
      const connection = yield* client()
      const exit = yield* Effect.exit(Fanout.subscribe(connection, { flow: "nothing", scope: "acme" }))
      assert.strictEqual(failureCode(exit), Code.UNKNOWN_FLOW)
      const stats = yield* until(edge.stats, (s) => s.upstreamChannels === 0 && s.flows === 0)
      assert.strictEqual(stats.consumers, 0)
    }))

  it.live("flows in different scopes never meet", () =>
    Effect.gen(function*() {
      const { content, client } = yield* topology({
        scopes: { client: ["acme", "other"], content: ["acme", "other"], edge: ["acme", "other"] }
      })
      const acme = yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const other = yield* Fanout.publishTo(content, { flow: "prices", scope: "other" })
      const connection = yield* client()
      const inAcme = yield* Fanout.subscribe(connection, { flow: "prices", scope: "acme" })
      const inOther = yield* Fanout.subscribe(connection, { flow: "prices", scope: "other" })
      yield* acme.send(text("a"))
      yield* other.send(text("o"))
      assert.deepStrictEqual(yield* takeText(inAcme, 1).pipe(within("acme")), ["a"])
      assert.deepStrictEqual(yield* takeText(inOther, 1).pipe(within("other")), ["o"])
    }))

  it.live("LINK on channel 0 subscribes; a second LINK is ALREADY_LINKED; after UNLINK, UNLINK and FILTER are NOT_LINKED", () =>
    Effect.gen(function*() {
      const { content, client, edge } = yield* topology()
      const feed = yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const connection = yield* client()
      const zero = connection.defaultChannel
      const p = Fanout.params({ role: "subscribe", flow: "prices", scope: "acme" })
      yield* connection.link(zero, p)
      assert.isDefined(zero.fanout)
      yield* feed.send(text("on channel 0"))
      assert.deepStrictEqual(yield* takeText(zero, 1).pipe(within("linked channel 0")), ["on channel 0"])
      assert.strictEqual(failureCode(yield* Effect.exit(connection.link(zero, p))), Code.ALREADY_LINKED)
      yield* connection.unlink(zero)
      assert.isUndefined(zero.fanout)
      yield* until(edge.stats, (s) => s.consumers === 0)
      assert.strictEqual(failureCode(yield* Effect.exit(connection.unlink(zero))), Code.NOT_LINKED)
      assert.strictEqual(failureCode(yield* Effect.exit(connection.filter(zero, Fanout.all))), Code.NOT_LINKED)
      // The channel stays open and plain.
      yield* zero.send(text("still open"))
    }))

  it.live("the last consumer leaving destroys the upstream channel; the next one subscribes again", () =>
    Effect.gen(function*() {
      const { content, client, edge, gateway } = yield* topology()
      const feed = yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const connection = yield* client()
      const first = yield* Effect.scoped(
        Effect.gen(function*() {
          const a = yield* Fanout.subscribe(connection, { flow: "prices", scope: "acme" })
          const b = yield* Fanout.subscribe(connection, { flow: "prices", scope: "acme" })
          yield* feed.send(text("one"))
          yield* takeText(a, 1)
          yield* takeText(b, 1)
          return yield* edge.stats
        })
      )
      assert.strictEqual(first.upstreamChannels, 1)
      assert.strictEqual(first.consumers, 2)
      const after = yield* until(edge.stats, (s) => s.upstreamChannels === 0).pipe(within("upstream torn down"))
      assert.strictEqual(after.consumers, 0)
      assert.strictEqual(after.flows, 0)
      yield* until(gateway.stats, (s) => s.consumers === 0).pipe(within("gateway lets go of the edge"))
      const again = yield* Fanout.subscribe(connection, { flow: "prices", scope: "acme" })
      yield* feed.send(text("two"))
      assert.deepStrictEqual(yield* takeText(again, 1).pipe(within("resubscribed")), ["two"])
      assert.strictEqual((yield* edge.stats).upstreamOpened, 2)
    }))

  it.live("a slow consumer is aborted with SLOW_CONSUMER while the others keep receiving", () =>
    Effect.gen(function*() {
      const { content, client, edge } = yield* topology({ bufferMessages: 128 })
      const feed = yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const slowConnection = yield* client("client")
      const slow = yield* Fanout.subscribe(slowConnection, { flow: "prices", scope: "acme" })
      const fastConnection = yield* client("client")
      const fast = yield* Fanout.subscribe(fastConnection, { flow: "prices", scope: "acme" })
      const total = 300
      const reader = yield* Effect.forkChild(takeText(fast, total))
      for (let i = 0; i < total; i++) yield* feed.send(text(`m${i}`))
      const got = yield* Fiber.join(reader).pipe(within("the fast consumer gets everything"))
      assert.strictEqual(got.length, total)
      assert.strictEqual(got[total - 1], `m${total - 1}`)
      // The slow one never read: its window (64) plus the bound (128) is less than the feed.
      const drained: Array<Uint8Array> = []
      const exit = yield* Effect.exit(
        Effect.gen(function*() {
          while (true) for (const m of yield* slow.pull) drained.push(m)
        })
      ).pipe(within("the slow consumer's channel fails"))
      assert.strictEqual(failureCode(exit), Code.SLOW_CONSUMER)
      const stats = yield* edge.stats
      assert.strictEqual(stats.slowConsumers, 1)
      assert.strictEqual(stats.consumers, 1)
    }))

  it.live("consumers subscribing at the same time share one upstream subscription", () =>
    Effect.gen(function*() {
      const { content, client, edge } = yield* topology()
      const feed = yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const connections = yield* Effect.forEach(Array.from({ length: 10 }), () => client())
      const channels = yield* Effect.forEach(
        connections,
        (connection) => Fanout.subscribe(connection, { flow: "prices", scope: "acme" }),
        { concurrency: "unbounded" }
      )
      yield* feed.send(text("together"))
      for (const channel of channels) assert.deepStrictEqual(yield* takeText(channel, 1).pipe(within("each gets it")), ["together"])
      assert.strictEqual((yield* edge.stats).upstreamOpened, 1)
    }))

  it.live("what a subscriber sends on its channel goes to the node's application, not upstream", () =>
    Effect.gen(function*() {
      const seen: Array<string> = []
      const gateway = yield* Fanout.make<string>({ onConsumerMessage: (m) => seen.push(str(m)) })
      const publisher = yield* gateway.publish("prices", "acme")
      const pair = yield* Memory.makeMessagePair()
      yield* gateway.serve(pair.b, { role: "server" }, "client")
      const consumer = yield* Channels.make(pair.a, { role: "client", extensions: ["fanout"] })
      const channel = yield* Fanout.subscribe(consumer, { flow: "prices", scope: "acme" })
      yield* channel.send(text("hello, node"))
      yield* until(Effect.sync(() => seen.length), (n) => n === 1).pipe(within("the application sees it"))
      assert.deepStrictEqual(seen, ["hello, node"])
      yield* publisher.publish(text("tick"))
      assert.deepStrictEqual(yield* takeText(channel, 1).pipe(within("the flow still arrives")), ["tick"])
      assert.strictEqual((yield* gateway.stats).messagesIn, 1)
    }))

  it.live("the gateway aborting the edge's upstream channel aborts the edge's consumers with its code", () =>
    Effect.gen(function*() {
      const { client, edge, gateway } = yield* topology({ gatewayBufferMessages: 1 })
      const publisher = yield* gateway.publish("prices", "acme")
      const connection = yield* client()
      const a = yield* Fanout.subscribe(connection, { flow: "prices", scope: "acme" })
      const b = yield* Fanout.subscribe(connection, { flow: "prices", scope: "acme" })
      // A burst beyond the upstream window plus the gateway's bound of 1: the edge is too slow for it.
      yield* publisher.publishAll(Array.from({ length: 200 }, (_, i) => text(`burst ${i}`)))
      const drain = (channel: Channels.Channel) =>
        Effect.exit(Effect.forever(channel.pull)).pipe(within("the consumer's channel ends"))
      assert.strictEqual(failureCode(yield* drain(a)), Code.SLOW_CONSUMER)
      assert.strictEqual(failureCode(yield* drain(b)), Code.SLOW_CONSUMER)
      assert.strictEqual((yield* gateway.stats).slowConsumers, 1)
      yield* until(edge.stats, (s) => s.upstreamChannels === 0 && s.consumers === 0).pipe(within("edge lets go"))
      const again = yield* Fanout.subscribe(connection, { flow: "prices", scope: "acme" })
      yield* publisher.publish(text("calm again"))
      assert.deepStrictEqual(yield* takeText(again, 1).pipe(within("resubscribed")), ["calm again"])
      assert.strictEqual((yield* edge.stats).upstreamOpened, 2)
    }))

  it.live("a publisher in this process feeds the node's consumers", () =>
    Effect.gen(function*() {
      const { gateway } = yield* topology()
      const pair = yield* Memory.makeMessagePair()
      yield* gateway.serve(pair.b, { role: "server" }, "client")
      const consumer = yield* Channels.make(pair.a, { role: "client", extensions: ["fanout"] })
      const publisher = yield* gateway.publish("local", "acme")
      const channel = yield* Fanout.subscribe(consumer, { flow: "local", scope: "acme" })
      yield* publisher.publishAll([text("a"), text("b")])
      assert.deepStrictEqual(yield* takeText(channel, 2).pipe(within("local publisher")), ["a", "b"])
    }))

  it.live("fanout that was not negotiated is refused with EXTENSION_NOT_NEGOTIATED", () =>
    Effect.gen(function*() {
      const pair = yield* Memory.makeMessagePair()
      yield* Channels.make(pair.b, { role: "server" })
      const client = yield* Channels.make(pair.a, { role: "client", extensions: ["fanout"] })
      const create = yield* Effect.exit(Fanout.subscribe(client, { flow: "prices", scope: "acme" }))
      assert.strictEqual(failureCode(create), Code.EXTENSION_NOT_NEGOTIATED)
      const link = yield* Effect.exit(
        client.link(client.defaultChannel, Fanout.params({ role: "subscribe", flow: "prices", scope: "acme" }))
      )
      assert.strictEqual(failureCode(link), Code.EXTENSION_NOT_NEGOTIATED)
    }))

  describe("hostile peers", () => {
    const u16 = (v: number) => [v >>> 8, v & 0xff]
    const u32 = (v: number) => [v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff]
    const bytes = (...parts: Array<number | Array<number>>) => new Uint8Array(parts.flat())
    const control = (type: number, requestId: number, ...body: Array<number | Array<number>>) =>
      bytes(0xff, 0xff, type, 0, u32(requestId), ...body)
    const name = (s: string) => [s.length, ...text(s)]
    /** LINK on `channel`: role, flow, scope, then a filter (kind, length, data). */
    const link = (requestId: number, channel: number, role: number, filter: Array<number>) =>
      control(0x06, requestId, u16(channel), role, name("prices"), name("acme"), filter)
    const filterMessage = (requestId: number, channel: number, filter: Array<number>) =>
      control(0x08, requestId, u16(channel), filter)

    /** The edge serving a raw (hostile) client. */
    const rawClient = Effect.gen(function*() {
      const { content, edge } = yield* topology()
      yield* Fanout.publishTo(content, { flow: "prices", scope: "acme" })
      const pair = yield* Memory.makeMessagePair()
      const served = yield* edge.serve(pair.b, { role: "server" }, "client")
      return { raw: pair.a, served, edge }
    })

    const replies = (raw: MessageTransport.MessageTransport<unknown>, n: number) =>
      Effect.gen(function*() {
        const out: Array<F.ControlMessage> = []
        while (out.length < n) {
          for (const message of yield* raw.pull) {
            if (F.channelIdOf(message) !== F.CONTROL_CHANNEL) continue
            const decoded = F.decodeControl(message.subarray(2))
            if (decoded instanceof ChannelError.ChannelError) continue
            if (decoded._tag === "Window") continue
            out.push(decoded)
          }
        }
        return out
      })

    const errorCode = (m: F.ControlMessage) => m._tag === "Error" ? m.code : -1

    it.live("malformed fanout parameters get typed refusals and the connection goes on", () =>
      Effect.gen(function*() {
        const { raw } = yield* rawClient
        yield* raw.sendAll([
          link(1, 0, 0x07, [0x00, 0, 0]), // unknown role
          link(2, 0, 0x01, [0x05, 0, 0]), // reserved filter kind
          link(4, 0x21, 0x01, [0x00, 0, 0]), // a channel that is not open
          filterMessage(5, 0, [0x00, 0, 0]), // FILTER with no link
          control(0x07, 6, u16(0)) // UNLINK with no link
        ])
        const answers = yield* replies(raw, 5).pipe(within("five answers"))
        // The application decides these two, one after the other.
        yield* raw.send(link(3, 0, 0x01, [0xc0, 0, 1, 9])) // unregistered application kind
        answers.push(...yield* replies(raw, 1).pipe(within("BAD_FILTER")))
        yield* raw.send(link(7, 0, 0x01, [0x01, 0, 4, 3, ...text("EUR")])) // a good one
        answers.push(...yield* replies(raw, 1).pipe(within("LINK_ACK")))
        const byId = new Map(answers.map((m) => ["requestId" in m ? m.requestId : 0, m]))
        assert.strictEqual(errorCode(byId.get(1)!), Code.BAD_EXTENSION_PARAMS)
        assert.strictEqual(errorCode(byId.get(2)!), Code.BAD_FILTER)
        assert.strictEqual(errorCode(byId.get(3)!), Code.BAD_FILTER)
        assert.strictEqual(errorCode(byId.get(4)!), Code.UNKNOWN_CHANNEL)
        assert.strictEqual(errorCode(byId.get(5)!), Code.NOT_LINKED)
        assert.strictEqual(errorCode(byId.get(6)!), Code.NOT_LINKED)
        assert.strictEqual(byId.get(7)!._tag, "LinkAck")
      }))

    it.live("a flood of refused LINK and FILTER requests ends the connection with ENHANCE_YOUR_CALM", () =>
      Effect.gen(function*() {
        const { raw, served, edge } = yield* rawClient
        const flood: Array<Uint8Array> = []
        for (let i = 1; i <= 1500; i++) {
          flood.push(i % 2 === 0 ? filterMessage(i, 0, [0x00, 0, 0]) : link(i, 0x41, 0x01, [0x00, 0, 0]))
        }
        yield* raw.sendAll(flood)
        const exit = yield* Effect.exit(served.closed).pipe(within("the connection ends"))
        assert.isTrue(Exit.isFailure(exit))
        assert.strictEqual(failureCode(exit), Code.ENHANCE_YOUR_CALM)
        assert.strictEqual((yield* edge.stats).consumers, 0)
      }))

    it.live("LINK requests the application has not decided yet count against the unanswered requests", () =>
      Effect.gen(function*() {
        const pair = yield* Memory.makeMessagePair()
        // An application that never decides.
        const served = yield* Channels.make(pair.b, {
          role: "server",
          extensions: ["fanout"],
          maxPeerRequests: 16,
          fanout: { link: () => Effect.never, unlink: () => Effect.never, filter: () => Effect.never }
        })
        const raw = pair.a
        const creates: Array<Uint8Array> = []
        for (let i = 0; i < 17; i++) {
          const fanout = [0x01, ...name("prices"), ...name("acme"), 0x00, 0, 0]
          const tlv = [0x01, ...u16(fanout.length), ...fanout]
          creates.push(control(0x01, i + 1, u16(2 * i + 1), u32(0), u32(0), 0, tlv))
        }
        yield* raw.sendAll(creates)
        const exit = yield* Effect.exit(served.closed).pipe(within("the connection ends"))
        assert.strictEqual(failureCode(exit), Code.ENHANCE_YOUR_CALM)
      }))
  })
})
