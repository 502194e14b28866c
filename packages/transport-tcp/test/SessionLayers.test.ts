import { assert, describe, it } from "@effect/vitest"
import { Session } from "@plexus/core"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Socket from "effect/socket/Socket"
import * as SocketServer from "effect/socket/SocketServer"
import { Tcp, TcpServer } from "../src/index.ts"

const text = new TextEncoder()
const decode = new TextDecoder()

/** Reads a Socket to its clean end. */
const readAll = (socket: Socket.Socket) =>
  Effect.scoped(Effect.gen(function*() {
    const reader = yield* socket.reader
    let out = ""
    while (true) {
      const result = yield* Effect.result(reader.pull)
      if (result._tag === "Failure") return out
      for (const chunk of result.success) out += typeof chunk === "string" ? chunk : decode.decode(chunk)
    }
  }))

describe("Session layers over TCP", () => {
  it.live("a stack composed by layers: sessions over TCP on both sides, streams served as SocketServer connections", () =>
    Effect.gen(function*() {
      // Server stack: TCP listener -> a session per connection -> each stream a connection of a SocketServer.
      const serverStack = Session.layerSocketServer({ keepAlive: false }).pipe(
        Layer.provideMerge(Tcp.layerServer({ host: "127.0.0.1", port: 0 }))
      )
      const built = yield* Layer.build(serverStack)
      const socketServer = Context.get(built, SocketServer.SocketServer)
      const tcp = Context.get(built, TcpServer.TcpServer)
      // Code written for any SocketServer: upper-cases what each connection sends.
      yield* Effect.forkScoped(socketServer.run((socket) =>
        Effect.gen(function*() {
          const request = yield* readAll(socket)
          yield* Effect.scoped(Effect.flatMap(socket.writer, (w) => w.write(text.encode(request.toUpperCase()))))
        })
      ))

      // Client stack: TCP dial -> a client session.
      const clientStack = Session.layerClient({ keepAlive: false }).pipe(
        Layer.provide(Tcp.layerClient({ host: "127.0.0.1", port: tcp.port }))
      )
      const replies = yield* Effect.gen(function*() {
        const session = yield* Session.SessionService
        return yield* Effect.forEach(["one", "two", "three"], (word) =>
          Effect.scoped(Effect.gen(function*() {
            const stream = yield* session.open()
            yield* Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(text.encode(word))))
            return yield* readAll(stream)
          })), { concurrency: "unbounded" })
      }).pipe(Effect.provide(clientStack))
      assert.deepStrictEqual(replies, ["ONE", "TWO", "THREE"])
    }))
})
