/**
 * A plexus Session over a WebSocket byte transport.
 */
import { assert, describe, it } from "@effect/vitest"
import { Session } from "@plexus/core"
import * as Effect from "effect/Effect"
import * as Socket from "effect/socket/Socket"
import { NodeWs } from "../src/index.ts"
import { bytes, within } from "./helpers.ts"

const readAll = (socket: Socket.Socket) =>
  Effect.scoped(Effect.gen(function*() {
    const reader = yield* socket.reader
    const parts: Array<Uint8Array> = []
    while (true) {
      const result = yield* Effect.result(reader.pull)
      if (result._tag === "Failure") break
      for (const c of result.success) parts.push(typeof c === "string" ? new TextEncoder().encode(c) : c)
    }
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
    let o = 0
    for (const p of parts) {
      out.set(p, o)
      o += p.length
    }
    return out
  }))

describe("Session over WebSocket", () => {
  it.live("a session over a WebSocket carries several concurrent streams opened by both sides", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ protocols: ["plexus-mux.v1"] })
      const dialled = yield* NodeWs.dial({ url: server.url, protocols: ["plexus-mux.v1"] })
      const accepted = yield* server.accept
      const client = yield* Session.make(dialled.socket, { role: "client", keepAlive: false })
      const serverSession = yield* Session.make(accepted.socket, { role: "server", keepAlive: false })
      // Echo every stream the other side opens, reversed.
      const echo = (session: typeof client) =>
        Effect.forkScoped(Effect.forever(Effect.flatMap(session.accept, (stream) =>
          Effect.forkScoped(Effect.scoped(Effect.gen(function*() {
            const body = yield* readAll(stream)
            const writer = yield* stream.writer
            yield* writer.write(body.slice().reverse())
          }))))))
      yield* echo(serverSession)
      yield* echo(client)
      const roundTrip = (session: typeof client, size: number, seed: number) =>
        Effect.scoped(Effect.gen(function*() {
          const stream = yield* session.open()
          const body = bytes(size, seed)
          yield* Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(body)))
          const reply = yield* readAll(stream)
          assert.deepStrictEqual(reply, body.slice().reverse())
          return reply.length
        }))
      const sizes = yield* Effect.all([
        roundTrip(client, 10, 1),
        roundTrip(client, 300_000, 2),
        roundTrip(client, 2 * 1024 * 1024, 3),
        roundTrip(serverSession, 70_000, 4)
      ], { concurrency: "unbounded" }).pipe(within("four streams", 20))
      assert.deepStrictEqual(sizes, [10, 300_000, 2 * 1024 * 1024, 70_000])
    }))
})
