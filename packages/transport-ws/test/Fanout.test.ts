/**
 * Fanout over real WebSockets on loopback: a gateway, an edge that dials it
 * once, and many WebSocket clients of the edge subscribing to one feed. The
 * gateway↔edge connection's own counters say how many bytes crossed it.
 */
import { Channels, Fanout } from "@plexus/core"
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { Negotiation, NodeWs } from "../src/index.ts"
import { decode, text, within } from "./helpers.ts"

type Server = Effect.Success<ReturnType<typeof NodeWs.listen>>

/** Serves every accepted WebSocket with the node, each in its own fiber of the current Scope. */
const serveAll = (server: Server, node: Fanout.Node<string>, peer: string) =>
  Effect.forkScoped(Effect.forever(
    Effect.gen(function*() {
      // Each connection, and its channels, live until the test's Scope closes.
      const connection = yield* server.accept
      yield* node.serve(yield* connection.messages, {
        role: "server",
        extensions: Negotiation.channelsExtensions(connection.negotiated)
      }, peer)
    })
  ))

describe("Fanout over WebSocket", () => {
  it.live("50 WebSocket clients of an edge get one feed that crossed the gateway-edge socket once", () =>
    Effect.gen(function*() {
      const gateway = yield* Fanout.make<string>()
      const gatewayServer = yield* NodeWs.listen({ channelExtensions: ["fanout"] })
      yield* serveAll(gatewayServer, gateway, "edge")
      const longHaul = yield* NodeWs.dial({ url: gatewayServer.url, channelExtensions: ["fanout"] })
      const upstream = yield* Channels.make(yield* longHaul.messages, { role: "client", extensions: ["fanout"] })
      const edge = yield* Fanout.make<string>({ upstream })
      const edgeServer = yield* NodeWs.listen({ channelExtensions: ["fanout"] })
      yield* serveAll(edgeServer, edge, "client")

      const feed = yield* gateway.publish("prices", "acme")
      const clients = 50
      const subscriptions = yield* Effect.forEach(Array.from({ length: clients }), () =>
        Effect.gen(function*() {
          const ws = yield* NodeWs.dial({ url: edgeServer.url, channelExtensions: ["fanout"] })
          assert.deepStrictEqual(ws.negotiated.channelExtensions, ["fanout"])
          const channels = yield* Channels.make(yield* ws.messages, { role: "client", extensions: ["fanout"] })
          return yield* Fanout.subscribe(channels, { flow: "prices", scope: "acme" })
        }), { concurrency: 10 }).pipe(within("50 clients subscribe"))

      const before = (yield* longHaul.stats).bytesIn
      const messages = 100
      const body = "p".repeat(500)
      let feedBytes = 0
      for (let i = 0; i < messages; i++) {
        const message = text.encode(`${i} ${body}`)
        feedBytes += message.length
        yield* feed.publish(message)
      }
      yield* Effect.forEach(subscriptions, (channel) =>
        Effect.gen(function*() {
          const got: Array<string> = []
          while (got.length < messages) for (const m of yield* channel.pull) got.push(decode(m))
          assert.strictEqual(got[0], `0 ${body}`)
          assert.strictEqual(got[messages - 1], `${messages - 1} ${body}`)
        }), { concurrency: "unbounded", discard: true }).pipe(within("every client gets the feed"))

      const longHaulBytes = (yield* longHaul.stats).bytesIn - before
      assert.isAtLeast(longHaulBytes, feedBytes)
      assert.isAtMost(longHaulBytes, feedBytes * 1.05)
      const stats = yield* edge.stats
      assert.strictEqual(stats.upstreamOpened, 1)
      assert.strictEqual(stats.messagesDelivered, messages * clients)
    }))
})
