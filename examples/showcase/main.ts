/**
 * The plexus showcase: `npm start` runs it. Each capability adds a part.
 *
 * Part 1, delineated messages over TCP: a server on loopback echoes
 * length-prefixed messages back in upper case; a client sends a few, one of
 * them large enough to cross many TCP segments, and prints what came back.
 */
import { Delineation, MessageTransport } from "@plexus/core"
import { Tcp } from "@plexus/transport-tcp"
import * as Console from "effect/Console"
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

const program = Effect.gen(function*() {
  yield* Effect.scoped(tcpMessages)
  yield* Console.log("showcase done")
})

Effect.runPromise(program).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
