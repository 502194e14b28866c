import { assert, describe, it } from "@effect/vitest"
import { Transport } from "@plexus/core"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import { FaultProxy, Tcp } from "../src/index.ts"
import { bytes, quietFor, readBytes, readToEnd, within } from "./helpers.ts"

/** A client connected to a TCP server through a fresh fault proxy; the server side already accepted. */
const throughProxy = Effect.gen(function*() {
  const server = yield* Tcp.listen()
  const proxy = yield* FaultProxy.make({ target: server.port })
  const client = yield* Tcp.dial({ port: proxy.port })
  const accepted = yield* server.accept.pipe(within("the proxied connection reaching the server"))
  const clientPull = (yield* client.reader).pull
  const serverPull = (yield* accepted.socket.reader).pull
  return {
    proxy,
    clientPull,
    serverPull,
    clientWriter: yield* client.writer,
    serverWriter: yield* accepted.socket.writer,
    client
  }
})

describe("FaultProxy", () => {
  it.live("forwards bytes both ways intact and passes a half-close through", () =>
    Effect.gen(function*() {
      const { client, clientPull, proxy, serverPull, serverWriter } = yield* throughProxy
      const up = bytes(300_000, 1)
      const down = bytes(200_000, 2)
      yield* Effect.scoped(Effect.flatMap(client.writer, (w) => w.write(up)))
      yield* serverWriter.write(down)
      const [atServer, atClient] = yield* Effect.all([readToEnd(serverPull), readBytes(clientPull, down.length)], {
        concurrency: 2
      }).pipe(within("both directions through the proxy"))
      assert.deepStrictEqual(atServer.bytes, up)
      assert.isTrue(Transport.isCleanClose(atServer.error), String(atServer.error))
      assert.deepStrictEqual(atClient, down)
      const stats = yield* proxy.stats
      assert.strictEqual(stats.connections, 1)
      assert.strictEqual(stats.upstreamBytes, up.length)
      assert.strictEqual(stats.downstreamBytes, down.length)
    }))

  it.live("latency holds bytes back, then delivers them intact", () =>
    Effect.gen(function*() {
      const { clientWriter, proxy, serverPull } = yield* throughProxy
      yield* proxy.set("upstream", { latency: "400 millis" })
      const payload = bytes(10_000, 3)
      yield* clientWriter.write(payload)
      // Nothing can arrive before the latency has passed.
      assert.isTrue(yield* quietFor(serverPull, 100))
      assert.deepStrictEqual(yield* readBytes(serverPull, payload.length).pipe(within("the delayed bytes")), payload)
    }))

  it.live("slicing forwards in writes of at most the slice size, one per turn", () =>
    Effect.gen(function*() {
      const { clientPull, proxy, serverWriter } = yield* throughProxy
      yield* proxy.set("downstream", { slice: 7 })
      const payload = bytes(700, 4)
      yield* serverWriter.write(payload)
      const received: Array<Uint8Array> = []
      let total = 0
      while (total < payload.length) {
        for (const chunk of yield* clientPull.pipe(within("reading the slices"))) {
          received.push(chunk as Uint8Array)
          total += chunk.length
        }
      }
      assert.deepStrictEqual(Buffer.concat(received), Buffer.from(payload))
      assert.isAbove(received.length, 1, "the receiver saw more than one piece")
      const stats = yield* proxy.stats
      assert.strictEqual(stats.downstreamWrites, 100)
    }))

  it.live("a bandwidth cap paces delivery without losing bytes", () =>
    Effect.gen(function*() {
      const { clientWriter, proxy, serverPull } = yield* throughProxy
      yield* proxy.set("upstream", { bandwidth: 100_000 })
      const payload = bytes(60_000, 5)
      yield* clientWriter.write(payload)
      // At 100 kB/s the 60 kB cannot all be through after 100 ms.
      yield* Effect.sleep("100 millis")
      assert.isBelow((yield* proxy.stats).upstreamBytes, payload.length)
      assert.deepStrictEqual(yield* readBytes(serverPull, payload.length).pipe(within("all at the capped rate")), payload)
    }))

  it.live("a blackhole holds bytes while the connection stays up, and lifting it delivers them", () =>
    Effect.gen(function*() {
      const { clientPull, clientWriter, proxy, serverPull, serverWriter } = yield* throughProxy
      yield* proxy.set("both", { blackhole: true })
      yield* clientWriter.write(bytes(1000, 6))
      yield* serverWriter.write(bytes(500, 7))
      assert.isTrue(yield* quietFor(serverPull, 150))
      assert.isTrue(yield* quietFor(clientPull, 50))
      assert.strictEqual((yield* proxy.stats).open, 1)
      yield* proxy.set("both", {})
      assert.deepStrictEqual(yield* readBytes(serverPull, 1000).pipe(within("upstream after the blackhole")), bytes(1000, 6))
      assert.deepStrictEqual(yield* readBytes(clientPull, 500).pipe(within("downstream after the blackhole")), bytes(500, 7))
    }))

  it.live("reset resets both sides with an abrupt close", () =>
    Effect.gen(function*() {
      const { clientPull, clientWriter, proxy, serverPull } = yield* throughProxy
      yield* clientWriter.write(bytes(100, 8))
      yield* readBytes(serverPull, 100).pipe(within("bytes before the reset"))
      yield* proxy.reset
      const [atClient, atServer] = yield* Effect.all([readToEnd(clientPull), readToEnd(serverPull)], {
        concurrency: 2
      }).pipe(within("both sides seeing the reset"))
      for (const { error } of [atClient, atServer]) {
        assert.isTrue(Transport.isAbruptClose(error), String(error))
        if (Socket.isSocketError(error) && error.reason._tag === "SocketCloseError") {
          assert.strictEqual(error.reason.closeReason, "ECONNRESET")
        }
      }
    }))

  it.live("closing the proxy's scope closes its connections and its port", () =>
    Effect.gen(function*() {
      const server = yield* Tcp.listen()
      const scope = yield* Scope.make()
      const proxy = yield* FaultProxy.make({ target: server.port }).pipe(Scope.provide(scope))
      const client = yield* Tcp.dial({ port: proxy.port })
      const { pull } = yield* client.reader
      yield* server.accept
      yield* Scope.close(scope, Exit.void)
      const { error } = yield* readToEnd(pull).pipe(within("the client seeing the proxy go"))
      assert.isTrue(Socket.isSocketError(error))
      const refused = yield* Effect.flip(Tcp.dial({ port: proxy.port }))
      assert.strictEqual(refused.reason._tag, "SocketOpenError")
    }))
})
