/**
 * A content service, a gateway in front of it, and an edge gateway in front
 * of many WebSocket clients, all on loopback:
 *
 *   content service ──ws── gateway ══ws (the long-haul link)══ edge ──ws── N clients
 *
 * The content service publishes a price feed (a channel with the fanout
 * extension, role PUBLISH). Every client subscribes to the same feed at the
 * edge (role SUBSCRIBE); the edge subscribes upstream once, so each message
 * crosses the gateway↔edge link once and the edge hands it to every client.
 * Scopes are authorised from the WebSocket request path (`/?tenant=acme`):
 * a client of another tenant is refused with SCOPE_DENIED. One client asks
 * only for EUR prices with a PREFIXES filter.
 *
 * `gatewayDemo` is the whole run; `main.ts` runs it, and so does the
 * showcase.
 */
import { ChannelError, Channels, Fanout } from "@plexus/core"
import { Negotiation, NodeWs } from "@plexus/transport-ws"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Cause from "effect/Cause"

const text = new TextEncoder()
const decode = new TextDecoder()

type Server = Effect.Success<ReturnType<typeof NodeWs.listen>>

/** The tenant a WebSocket request path names (`/?tenant=acme`), the connection's only scope. */
const tenantOf = (path: string): string => new URL(path, "ws://local").searchParams.get("tenant") ?? ""

/** Serves each accepted WebSocket with the node; the peer is the tenant its path names. */
const serveAll = (server: Server, node: Fanout.Node<string>) =>
  Effect.forkScoped(Effect.forever(
    Effect.gen(function*() {
      const connection = yield* server.accept
      yield* node.serve(yield* connection.messages, {
        role: "server",
        extensions: Negotiation.channelsExtensions(connection.negotiated)
      }, tenantOf(connection.path))
    })
  ))

/** A Channels client over a WebSocket to `url`, with fanout offered. */
const dial = (url: string) =>
  Effect.gen(function*() {
    const ws = yield* NodeWs.dial({ url, channelExtensions: ["fanout"] })
    const channels = yield* Channels.make(yield* ws.messages, {
      role: "client",
      extensions: Negotiation.channelsExtensions(ws.negotiated)
    })
    return { ws, channels }
  })

const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`

export interface DemoOptions {
  readonly clients?: number | undefined
  readonly messages?: number | undefined
}

export const gatewayDemo = (options: DemoOptions = {}) =>
  Effect.gen(function*() {
    const clientCount = options.clients ?? 200
    const messageCount = options.messages ?? 500
    const authorize = (scope: Uint8Array, tenant: string) => decode.decode(scope) === tenant

    // The gateway: sources flows its publishers feed.
    const gateway = yield* Fanout.make<string>({ authorize })
    const gatewayServer = yield* NodeWs.listen({ channelExtensions: ["fanout"] })
    yield* serveAll(gatewayServer, gateway)

    // The edge: one WebSocket to the gateway, which it subscribes flows over.
    const longHaul = yield* dial(`${gatewayServer.url}?tenant=acme`)
    const edge = yield* Fanout.make<string>({ authorize, upstream: longHaul.channels })
    const edgeServer = yield* NodeWs.listen({ channelExtensions: ["fanout"] })
    yield* serveAll(edgeServer, edge)
    yield* Console.log(`gateway on ${gatewayServer.url}, edge on ${edgeServer.url} (one WebSocket between them)`)

    // The content service publishes the feed at the gateway.
    const content = yield* dial(`${gatewayServer.url}?tenant=acme`)
    const feed = yield* Fanout.publishTo(content.channels, { flow: "prices", scope: "acme" })

    // N clients of the edge subscribe to the same feed; one of them only to EUR prices.
    const clients = yield* Effect.forEach(Array.from({ length: clientCount }, (_, i) => i), (i) =>
      Effect.gen(function*() {
        const client = yield* dial(`${edgeServer.url}?tenant=acme`)
        const channel = yield* Fanout.subscribe(client.channels, {
          flow: "prices",
          scope: "acme",
          filter: i === 0 ? Fanout.prefixes("EUR") : Fanout.all
        })
        return { ...client, channel }
      }), { concurrency: 16 })
    yield* Console.log(`${clientCount} WebSocket clients subscribed to "prices" at the edge (client 0: EUR only)`)

    // A client of another tenant is refused before anything flows.
    const stranger = yield* dial(`${edgeServer.url}?tenant=globex`)
    const denied = yield* Effect.exit(Fanout.subscribe(stranger.channels, { flow: "prices", scope: "acme" }))
    const deniedCode = Exit.isFailure(denied) ? codeOf(Cause.squash(denied.cause)) : "accepted!"
    yield* Console.log(`a globex client asking for acme's feed: ${deniedCode}`)

    // Every client reads as the feed arrives.
    const currencies = ["EUR", "USD", "GBP", "CHF"]
    const eurCount = Math.ceil(messageCount / currencies.length)
    const reading = yield* Effect.forEach(clients, (client, i) =>
      Effect.gen(function*() {
        const expected = i === 0 ? eurCount : messageCount
        let count = 0
        let bytes = 0
        while (count < expected) {
          for (const m of yield* client.channel.pull) {
            count++
            bytes += m.length
          }
        }
        return { count, bytes }
      }), { concurrency: "unbounded" }).pipe(Effect.timeout("20 seconds"), Effect.forkScoped)

    // The feed.
    const before = (yield* longHaul.ws.stats).bytesIn
    let feedBytes = 0
    for (let i = 0; i < messageCount; i++) {
      const currency = currencies[i % currencies.length]
      const message = text.encode(`${currency} ${(1 + i / 1000).toFixed(4)} tick ${i} ${"·".repeat(40)}`)
      feedBytes += message.length
      yield* feed.send(message)
    }
    const received = yield* Fiber.join(reading)
    const longHaulBytes = (yield* longHaul.ws.stats).bytesIn - before
    let deliveredBytes = 0
    for (const r of received) deliveredBytes += r.bytes
    let clientWireBytes = 0
    for (const client of clients) clientWireBytes += (yield* client.ws.stats).bytesIn

    yield* Console.log(`feed:      ${messageCount} messages, ${kib(feedBytes)} published`)
    yield* Console.log(
      `long haul: ${kib(longHaulBytes)} crossed gateway→edge (${(longHaulBytes / feedBytes).toFixed(3)}× the feed)`
    )
    yield* Console.log(
      `clients:   ${kib(deliveredBytes)} delivered to ${clientCount} clients (${kib(clientWireBytes)} on their sockets);` +
        ` client 0 got ${received[0].count} EUR prices`
    )
    const edgeStats = yield* edge.stats
    yield* Console.log(
      `edge:      ${edgeStats.upstreamOpened} upstream subscription, ${edgeStats.consumers} consumers, ` +
        `${edgeStats.messagesDelivered} deliveries, ${edgeStats.filteredOut} filtered out`
    )
    if (longHaulBytes > feedBytes * 1.05 || received.some((r, i) => r.count !== (i === 0 ? eurCount : messageCount))) {
      return yield* Effect.die(new Error("gateway demo: the feed did not fan out as expected"))
    }
  })

const codeOf = (error: unknown): string => {
  if (error instanceof ChannelError.ChannelError && error.reason._tag === "RequestFailed") {
    return `refused with ${ChannelError.codeName(error.reason.code)} (${error.reason.detail})`
  }
  return String(error)
}
