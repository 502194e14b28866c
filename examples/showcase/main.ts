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
 */
import { Delineation, MessageTransport, MuxStream, Session } from "@plexus/core"
import { Tcp } from "@plexus/transport-tcp"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"

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

const program = Effect.gen(function*() {
  yield* Effect.scoped(tcpMessages)
  yield* Effect.scoped(sessionOverTcp)
  yield* Console.log("showcase done")
})

Effect.runPromise(program).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
