/**
 * Channels fanout: the bytes that cross the gateway↔edge link while 1,000
 * subscribers receive one feed.
 *
 * Topology, all in this process over loopback WebSockets
 * (`@plexus/transport-ws`): a `Fanout` gateway publishing the feed from this
 * process, an edge (`Fanout.make({ upstream })`) that dials the gateway
 * once, and 1,000 WebSocket clients of the edge, each with its own
 * connection and a channel created with the fanout extension (SUBSCRIBE).
 * The gateway↔edge WebSocket runs through a byte-counting TCP relay, so the
 * long-haul figure is every TCP payload byte the gateway sent to the edge:
 * WebSocket frame headers, the 2-byte channel ids and control messages
 * included.
 *
 * A repetition publishes the feed (256-byte messages; 1,000 of them, 200 in
 * quick mode) in bursts of 32, each burst once every subscriber is within 64
 * messages of the feed (a feed has a rate; the edge would rightly abort
 * subscribers that fall 256 messages behind), and ends when every subscriber
 * has every message. The value is the long-haul bytes of the repetition; the
 * baseline is the feed's own payload bytes, so the ratio is long-haul bytes
 * per feed byte (lower is better; 1,000 separate upstream copies would be
 * about 1,000). The subject checks that each subscriber got every message in
 * order.
 */
import { Channels, Fanout } from "@plexus/core"
import { Negotiation, NodeWs } from "@plexus/transport-ws"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as Net from "node:net"
import type { Contest, Row, RunOptions, Suite } from "../harness/Suite.ts"

const SUBSCRIBERS = 1000
const MESSAGE_SIZE = 256
const FULL_MESSAGES = 1000
const QUICK_MESSAGES = 200
const BURST = 32
const LAG = 64

type Server = Effect.Success<ReturnType<typeof NodeWs.listen>>

/** A TCP relay to `port` that counts the bytes flowing back from it (server to client). */
const countingRelay = (port: number) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly port: number; readonly counted: () => number; readonly server: Net.Server }>((resume) => {
      let counted = 0
      const server = Net.createServer((inbound) => {
        const outbound = Net.connect({ host: "127.0.0.1", port })
        outbound.on("data", (chunk: Buffer) => {
          counted += chunk.length
        })
        inbound.pipe(outbound)
        outbound.pipe(inbound)
        const end = () => {
          inbound.destroy()
          outbound.destroy()
        }
        inbound.on("error", end).on("close", end)
        outbound.on("error", end).on("close", end)
      })
      server.listen(0, "127.0.0.1", () =>
        resume(Effect.succeed({ port: (server.address() as Net.AddressInfo).port, counted: () => counted, server })))
    }),
    ({ server }) => Effect.sync(() => server.close())
  )

const serveAll = (server: Server, node: Fanout.Node<string>) =>
  Effect.forkScoped(Effect.forever(
    Effect.gen(function*() {
      const connection = yield* server.accept
      yield* node.serve(yield* connection.messages, {
        role: "server",
        extensions: Negotiation.channelsExtensions(connection.negotiated)
      }, "bench")
    })
  ))

const dialChannels = (url: string) =>
  Effect.gen(function*() {
    const ws = yield* NodeWs.dial({ url, channelExtensions: ["fanout"] })
    return yield* Channels.make(yield* ws.messages, { role: "client", extensions: ["fanout"] })
  })

/** The id of a feed message, in its first 4 bytes. */
const idOf = (m: Uint8Array) => ((m[0] << 24) | (m[1] << 16) | (m[2] << 8) | m[3]) >>> 0

const setup = async (options: RunOptions): Promise<Contest> => {
  const scope = Scope.makeUnsafe()
  const messages = options.quick ? QUICK_MESSAGES : FULL_MESSAGES
  const received = new Int32Array(SUBSCRIBERS)
  let broken: string | undefined
  let nextId = 0

  const world = await Effect.runPromise(Scope.provide(
    Effect.gen(function*() {
      const gateway = yield* Fanout.make<string>()
      const gatewayServer = yield* NodeWs.listen({ channelExtensions: ["fanout"] })
      yield* serveAll(gatewayServer, gateway)
      const relay = yield* countingRelay(gatewayServer.port)
      const upstream = yield* dialChannels(`ws://127.0.0.1:${relay.port}/`)
      const edge = yield* Fanout.make<string>({ upstream })
      const edgeServer = yield* NodeWs.listen({ channelExtensions: ["fanout"], maxConnections: SUBSCRIBERS + 10 })
      yield* serveAll(edgeServer, edge)
      const feed = yield* gateway.publish("feed", "bench")
      yield* Effect.forEach(Array.from({ length: SUBSCRIBERS }, (_, i) => i), (i) =>
        Effect.gen(function*() {
          const channels = yield* dialChannels(edgeServer.url)
          const channel = yield* Fanout.subscribe(channels, { flow: "feed", scope: "bench" })
          // Counts (and checks the order of) what arrives, for the whole run.
          yield* Effect.forkScoped(Effect.forever(Effect.flatMap(channel.pull, (batch) =>
            Effect.sync(() => {
              for (const m of batch) {
                if (m.length !== MESSAGE_SIZE || idOf(m) !== received[i]) {
                  broken ??= `subscriber ${i} expected message ${received[i]}, got ${idOf(m)} (${m.length} bytes)`
                }
                received[i]++
              }
            }))))
        }), { concurrency: 32, discard: true })
      return { relay, feed, edge }
    }),
    scope
  ))

  const minReceived = () => {
    let min = received[0]
    for (let i = 1; i < received.length; i++) if (received[i] < min) min = received[i]
    return min
  }
  const waitFor = (target: number) =>
    Effect.gen(function*() {
      const deadline = Date.now() + 60_000
      while (minReceived() < target) {
        if (broken !== undefined) return yield* Effect.die(new Error(broken))
        if (Date.now() > deadline) return yield* Effect.die(new Error(`subscribers stuck below ${target}`))
        yield* Effect.sleep("1 millis")
      }
    })

  const subject = () =>
    Effect.runPromise(Effect.gen(function*() {
      const before = world.relay.counted()
      const end = nextId + messages
      while (nextId < end) {
        yield* waitFor(nextId - LAG)
        const burst: Array<Uint8Array> = []
        for (let i = 0; i < BURST && nextId < end; i++) {
          const m = new Uint8Array(MESSAGE_SIZE).fill(0x2a)
          const id = nextId++
          m[0] = id >>> 24
          m[1] = (id >>> 16) & 0xff
          m[2] = (id >>> 8) & 0xff
          m[3] = id & 0xff
          burst.push(m)
        }
        yield* world.feed.publishAll(burst)
      }
      yield* waitFor(end)
      if (broken !== undefined) return yield* Effect.die(new Error(broken))
      if ((yield* world.edge.stats).slowConsumers > 0) return yield* Effect.die(new Error("a subscriber was aborted"))
      return world.relay.counted() - before
    }))

  return {
    subject,
    baseline: async () => messages * MESSAGE_SIZE,
    close: () => Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

const rows: ReadonlyArray<Row> = [{
  name: "fanout-1000-longhaul",
  unit: "bytes",
  baseline: "the feed's payload bytes",
  better: "lower",
  goal: "<= 1.05",
  repetitions: 3,
  timeoutMs: 120_000,
  description: "TCP bytes gateway→edge while 1,000 WebSocket subscribers of the edge receive a feed of 256-byte messages",
  setup
}]

export const suite: Suite = { group: "channels", rows }
