/**
 * The plexus showcase: `npm start` runs it. Each capability adds a part.
 *
 * Part 1, delineated messages over TCP: a server on loopback echoes
 * length-prefixed messages back in upper case; a client sends a few, one of
 * them large enough to cross many TCP segments, and prints what came back.
 *
 * Part 2, a session over one TCP connection: many streams at once, a typed
 * stream routed to its handler, half-close, a reset with a code, the
 * measured round-trip time, and a graceful GO_AWAY.
 *
 * Part 3, KCM: a server multiplexor on a TCP port and a client pool of 4
 * connections; concurrent senders, received messages shared by message
 * sockets (one switched off hands its share on), a batch, a peer dropping
 * mid-message reported as a Detached event, and the stats snapshot.
 *
 * Part 4, fanout (examples/gateway): a content service publishes a feed at
 * a gateway; 50 WebSocket clients of an edge gateway subscribe to it, and
 * the feed crosses the gateway↔edge WebSocket once. Prints the feed,
 * long-haul and delivered byte counts.
 *
 * Part 5, RPC microservices (examples/rpc-microservices): Inventory and
 * Orders call each other over RpcSession on TCP, a page calls the
 * Storefront over WebSocket (RpcChannels): a checkout, typed errors two
 * hops away, a stock stream, a deadline that cancels the call behind it,
 * and a graceful drain.
 */
import { Delineation, MessageTransport, MuxStream, Session } from "@plexus/core"
import { Kcm } from "@plexus/kcm"
import { Tcp, TcpServer } from "@plexus/transport-tcp"
import * as Console from "effect/Console"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Socket from "effect/socket/Socket"
import * as Stream from "effect/Stream"
import { gatewayDemo } from "../gateway/demo.ts"
import { microservicesDemo } from "../rpc-microservices/demo.ts"

const text = new TextEncoder()
const decode = new TextDecoder()
const framing = Delineation.lengthPrefix({ maxMessageSize: 4 * 1024 * 1024 })

const upperCase = (message: Uint8Array): Uint8Array => {
  const out = new Uint8Array(message.length)
  for (let i = 0; i < message.length; i++) {
    const b = message[i]
    out[i] = b >= 97 && b <= 122 ? b - 32 : b
  }
  return out
}

const tcpMessages = Effect.gen(function*() {
  yield* Console.log("── 1. delineated messages over TCP ──")
  const server = yield* Tcp.listen({ host: "127.0.0.1", port: 0 })
  yield* Console.log(`server listening on 127.0.0.1:${server.port}`)

  // The server: every connection echoes each message back, upper-cased.
  yield* Effect.forkScoped(server.run((socket) =>
    Effect.gen(function*() {
      const transport = yield* MessageTransport.fromSocket(socket, framing)
      yield* transport.messages.pipe(Stream.runForEach((message) => transport.send(upperCase(message))))
      yield* transport.close
    }).pipe(Effect.scoped, Effect.ignore)
  ))

  const socket = yield* Tcp.dial({ host: "127.0.0.1", port: server.port })
  const client = yield* MessageTransport.fromSocket(socket, framing)
  const big = new Uint8Array(1024 * 1024).fill(97)
  const outgoing = [text.encode("hello, plexus"), text.encode("messages keep their edges"), big]
  yield* client.sendAll(outgoing)
  yield* Console.log(`client sent ${outgoing.length} messages (${outgoing.map((m) => m.length).join(" + ")} bytes)`)

  const replies = yield* client.messages.pipe(Stream.take(outgoing.length), Stream.runCollect)
  for (const reply of replies) {
    const shown = reply.length > 64 ? `${reply.length} bytes, all ${decode.decode(reply.subarray(0, 1))}` : decode.decode(reply)
    yield* Console.log(`client got: ${shown}`)
  }
  yield* client.close
  const intact = replies.length === 3 && replies[2].every((b) => b === 65)
  yield* Console.log(`round trip ${intact ? "intact" : "CORRUPTED"}: ${replies.length} messages back, edges preserved`)
  if (!intact) return yield* Effect.die(new Error("showcase: round trip corrupted"))
})

const readAll = (stream: MuxStream.MuxStream) =>
  Effect.scoped(Effect.gen(function*() {
    const reader = yield* stream.reader
    const parts: Array<string> = []
    while (true) {
      const result = yield* Effect.result(reader.pull)
      if (result._tag === "Failure") return { text: parts.join(""), end: result.failure }
      for (const chunk of result.success) parts.push(typeof chunk === "string" ? chunk : decode.decode(chunk))
    }
  }))

const send = (stream: MuxStream.MuxStream, message: string) =>
  Effect.scoped(Effect.flatMap(stream.writer, (writer) => writer.write(text.encode(message))))

const sessionOverTcp = Effect.gen(function*() {
  yield* Console.log("── 2. a session: many streams over one TCP connection ──")
  const listener = yield* Tcp.listen({ host: "127.0.0.1", port: 0 })
  const TYPE_GREETER = 7

  // The server: one session per connection; untyped streams echo, type 7 streams go to their own handler.
  yield* Effect.forkScoped(listener.run((socket) =>
    Effect.scoped(Effect.gen(function*() {
      const session = yield* Session.make(socket, { role: "server", codec: "plexus" })
      yield* session.handle(TYPE_GREETER, (stream) => send(stream, `hello from the handler for type ${stream.type}`))
      yield* Effect.forkScoped(session.run((stream) =>
        Effect.gen(function*() {
          const { text: request } = yield* readAll(stream as MuxStream.MuxStream)
          if (request === "please reset") return yield* (stream as MuxStream.MuxStream).reset(0x100 + 42)
          yield* send(stream as MuxStream.MuxStream, `echo(${request})`)
        })
      ))
      yield* session.closed.pipe(Effect.ignore)
    })).pipe(Effect.ignore)
  ))

  const connection = yield* Tcp.dial({ host: "127.0.0.1", port: listener.port })
  const session = yield* Session.make(connection, { role: "client", codec: "plexus" })

  // Ten streams at once over the one connection: each a request, a half-close, a reply.
  const replies = yield* Effect.forEach(Array.from({ length: 10 }, (_, i) => i), (i) =>
    Effect.scoped(Effect.gen(function*() {
      const stream = yield* session.open()
      yield* send(stream, `request ${i}`) // releasing the writer half-closes: the server sees the end of the request
      return { id: stream.id, reply: (yield* readAll(stream)).text }
    })), { concurrency: "unbounded" })
  yield* Console.log(`10 concurrent streams on one connection, ids ${replies.map((r) => r.id).join(",")}`)
  yield* Console.log(`  e.g. stream ${replies[3].id} got "${replies[3].reply}"`)

  const typed = yield* Effect.scoped(Effect.flatMap(session.open({ type: TYPE_GREETER }), (stream) =>
    Effect.andThen(stream.closeWrite, readAll(stream))))
  yield* Console.log(`typed stream routed to its handler: "${typed.text}"`)

  const reset = yield* Effect.scoped(Effect.gen(function*() {
    const stream = yield* session.open()
    yield* send(stream, "please reset")
    return MuxStream.streamError((yield* readAll(stream)).end)
  }))
  yield* Console.log(`a stream reset by the server arrives as a typed error: ${reset?.reason._tag}, code 0x${(reset?.reason as { code?: number })?.code?.toString(16)}`)

  const rtt = yield* session.ping
  const stats = yield* session.stats
  yield* Console.log(`ping round trip ${Duration.toMillis(rtt).toFixed(3)} ms; ${stats.bytesOut} payload bytes out, ${stats.bytesIn} in, ${stats.openStreams} streams open`)
  yield* session.close()
  yield* Console.log("session closed with GO_AWAY")
})

/** Polls until `done` holds; the part's deadline bounds it. */
const until = (done: Effect.Effect<boolean>) =>
  Effect.gen(function*() {
    while (!(yield* done)) yield* Effect.sleep("5 millis")
  })

const kcmOverTcp = Effect.gen(function*() {
  yield* Console.log("── 3. KCM: messages over a pool of TCP connections ──")
  // The server: every connection the TCP listener accepts joins one multiplexor.
  const built = yield* Layer.build(
    Kcm.layerServer().pipe(Layer.provideMerge(Tcp.layerServer({ host: "127.0.0.1", port: 0 })))
  )
  const server = Context.get(built, Kcm.Kcm)
  const port = Context.get(built, TcpServer.TcpServer).port
  const detachedEvents: Array<string> = []
  yield* Effect.forkScoped(Stream.runForEach(yield* server.events, (event) =>
    Effect.sync(() => {
      if (event._tag === "Detached") {
        const why = event.reason._tag === "Delineation" ? `${event.reason._tag} (${event.reason.error.reason._tag})` : event.reason._tag
        detachedEvents.push(`${event.label}: ${why}, ${event.lostPartialBytes} partial bytes lost`)
      }
    })))

  // The client: a pool of 4 connections, redialled if one drops.
  const client = yield* Kcm.makePool({ dial: Tcp.dial({ host: "127.0.0.1", port }), connections: 4 })
  yield* until(Effect.map(server.attached, (n) => n === 4))
  yield* Console.log(`client pool of ${yield* client.attached} connections to 127.0.0.1:${port}; the server attached ${yield* server.attached}`)

  // Three server sockets take turns at what arrives; each message goes to exactly one.
  const names = ["A", "B", "C"]
  const counts = [0, 0, 0]
  const sockets = yield* Effect.forEach(names, () => server.socket({ maxPull: 8 }))
  for (const [i, socket] of sockets.entries()) {
    yield* Effect.forkScoped(Stream.runForEach(socket.messages, () => Effect.sync(() => counts[i]++)))
  }
  const received = (n: number) => Effect.sync(() => counts[0] + counts[1] + counts[2] === n)
  const tx = yield* client.socket()
  const range = (n: number) => Array.from({ length: n }, (_, i) => i)
  // 8 senders at once, 125 messages each, in turn; each send takes a free connection.
  const burst = (from: number) =>
    Effect.forEach(
      range(8),
      (s) => Effect.forEach(range(125), (i) => tx.send(text.encode(`sender ${s} message ${from + i}`)), { discard: true }),
      { concurrency: "unbounded", discard: true }
    )
  const shares = () => names.map((n, i) => `${n} ${counts[i]}`).join(", ")

  yield* burst(0)
  yield* until(received(1000))
  yield* Console.log(`8 concurrent senders, 1000 messages; socket shares: ${shares()}`)
  yield* sockets[2].setReceiving(false)
  const before = [...counts]
  yield* burst(1000)
  yield* until(received(2000))
  yield* Console.log(`C switched receiving off; the next 1000 went ${names.map((n, i) => `${n} +${counts[i] - before[i]}`).join(", ")}`)

  // A batch: small messages coalesced into one write, each still arriving whole.
  const beforeBatch = (yield* client.stats).transports.map((t) => t.txMessages)
  yield* tx.sendAll(Array.from({ length: 100 }, (_, i) => text.encode(`batched ${i}`)))
  yield* until(received(2100))
  const carriers = (yield* client.stats).transports
    .map((t, i) => ({ label: t.label, sent: t.txMessages - beforeBatch[i] }))
    .filter((t) => t.sent > 0)
    .map((t) => `${t.label} (${t.sent})`)
  yield* Console.log(`sendAll of 100 small messages went out as one coalesced write on ${carriers.join(", ")}; all 100 arrived`)

  // A peer that hangs up 300 bytes into a 1000-byte message: its connection leaves the pool.
  yield* Effect.scoped(Effect.gen(function*() {
    const peer = yield* Tcp.dial({ host: "127.0.0.1", port })
    const writer = yield* peer.writer
    const partial = new Uint8Array(4 + 300)
    new DataView(partial.buffer).setUint32(0, 1000)
    yield* writer.write(partial)
    yield* until(Effect.map(server.attached, (n) => n === 5))
    yield* writer.write(new Socket.CloseEvent(1000))
  }))
  yield* until(Effect.sync(() => detachedEvents.length === 1))
  yield* Console.log(`a peer dropped mid-message -> Detached ${detachedEvents[0]}`)

  const stats = yield* server.stats
  const m = stats.mux
  yield* Console.log(`server stats: ${m.rxMessages} messages in (${m.rxBytes} bytes), ${m.attached} attached, ${m.attaches} attaches, ${m.detaches} detaches, ${m.errors} errors`)
  for (const t of stats.transports) yield* Console.log(`  ${t.label}: ${t.rxMessages} messages, ${t.rxBytes} bytes in`)
})

const program = Effect.gen(function*() {
  yield* Effect.scoped(tcpMessages)
  yield* Effect.scoped(sessionOverTcp)
  yield* Effect.scoped(kcmOverTcp).pipe(Effect.timeout("10 seconds"))
  yield* Console.log("── 4. fanout: a gateway, an edge and many WebSocket clients ──")
  yield* Effect.scoped(gatewayDemo({ clients: 50, messages: 200 })).pipe(Effect.timeout("30 seconds"))
  yield* Console.log("── 5. RPC microservices: services over TCP, a page over WebSocket ──")
  yield* Effect.scoped(microservicesDemo()).pipe(Effect.timeout("30 seconds"))
  yield* Console.log("showcase done")
})

Effect.runPromise(program).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
