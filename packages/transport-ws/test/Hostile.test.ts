/**
 * Hostile peers against the server and the client: oversized and compressed
 * messages, handshake header abuse, bad origins, slow handshakes, too many
 * connections, a lagging reader. Each asserts a typed error or a status and
 * a bound.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import { Transport } from "@plexus/core"
import WebSocket from "ws"
import { NodeWs, WsError } from "../src/index.ts"
import { bytes, rawExchange, upgradeRequest, within } from "./helpers.ts"

const KiB = 1024
const MiB = 1024 * KiB

const closeCodeOf = (u: unknown) =>
  Socket.isSocketError(u) && u.reason._tag === "SocketCloseError" ? u.reason.code : undefined

describe("hostile peers", () => {
  it.live("an oversized message fails the receiving server with PayloadTooLarge and the sender sees close 1009", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ maxPayload: 64 * KiB })
      const client = yield* NodeWs.dial({ url: server.url })
      const accepted = yield* server.accept
      const serverSide = yield* accepted.messages
      const clientSide = yield* client.messages
      yield* clientSide.send(bytes(64 * KiB))
      assert.strictEqual((yield* serverSide.pull)[0]!.length, 64 * KiB, "a message of exactly maxPayload passes")
      yield* clientSide.send(bytes(64 * KiB + 1))
      const error = yield* Effect.flip(serverSide.pull).pipe(within("server pull"))
      assert.strictEqual(WsError.fromSocketError(error)?.reason._tag, "PayloadTooLarge")
      const seen = yield* Effect.flip(clientSide.pull).pipe(within("client pull"))
      assert.strictEqual(closeCodeOf(seen), 1009)
    }))

  it.live("the client enforces its own maxPayload on what the server sends", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen()
      const client = yield* NodeWs.dial({ url: server.url, maxPayload: 1000 })
      const accepted = yield* server.accept
      const serverSide = yield* accepted.messages
      const clientSide = yield* client.messages
      yield* serverSide.send(bytes(1001))
      const error = yield* Effect.flip(clientSide.pull).pipe(within("client pull"))
      assert.strictEqual(WsError.fromSocketError(error)?.reason._tag, "PayloadTooLarge")
      assert.strictEqual(closeCodeOf(yield* Effect.flip(serverSide.pull).pipe(within("server pull"))), 1009)
    }))

  it.live("a compressed bomb is stopped at maxPayload measured after inflation", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ deflate: true, maxPayload: 1 * MiB })
      const ws = new WebSocket(server.url, { perMessageDeflate: true })
      yield* Effect.addFinalizer(() => Effect.sync(() => ws.terminate()))
      const closed = Effect.callback<number>((resume) => {
        ws.on("close", (code: number) => resume(Effect.succeed(code)))
      })
      ws.on("open", () => ws.send(new Uint8Array(64 * MiB)))
      const accepted = yield* server.accept
      assert.isTrue(accepted.negotiated.deflate)
      const messages = yield* accepted.messages
      const error = yield* Effect.flip(messages.pull).pipe(within("server pull"))
      assert.strictEqual(WsError.fromSocketError(error)?.reason._tag, "PayloadTooLarge")
      assert.strictEqual(yield* closed.pipe(within("bomb sender closed")), 1009)
    }))

  it.live("an Origin outside the allow-list is answered 403 before the upgrade; a listed one connects", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ allowedOrigins: ["https://good.example"] })
      const status = yield* Effect.callback<number>((resume) => {
        const ws = new WebSocket(server.url, { origin: "https://evil.example" })
        ws.on("unexpected-response", (_req, res) => {
          resume(Effect.succeed(res.statusCode ?? 0))
          ws.terminate()
        })
        ws.on("error", () => {})
      }).pipe(within("evil origin"))
      assert.strictEqual(status, 403)
      const ok = yield* NodeWs.dial({ url: server.url, headers: { Origin: "https://good.example" } })
      assert.isDefined(ok)
      const accepted = yield* server.accept
      assert.strictEqual(accepted.origin, "https://good.example")
      assert.strictEqual((yield* server.stats).rejectedOrigin, 1)
    }))

  it.live("connections beyond maxConnections are answered 503", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ maxConnections: 2 })
      yield* NodeWs.dial({ url: server.url })
      yield* NodeWs.dial({ url: server.url })
      const error = yield* Effect.flip(NodeWs.dial({ url: server.url }))
      const reason = WsError.fromSocketError(error)?.reason
      assert.strictEqual(reason?._tag, "HandshakeRejected")
      assert.strictEqual((reason as WsError.HandshakeRejected).status, 503)
      assert.strictEqual((yield* server.stats).refused, 1)
    }))

  it.live("a client that never finishes its upgrade request is dropped at the handshake deadline", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ handshakeTimeout: "300 millis" })
      const result = yield* rawExchange(server.port, "GET / HTTP/1.1\r\nHost: x\r\nUpgr", 5)
      assert.isTrue(result.closed, "the server closed the connection")
      assert.isAtLeast(result.millis, 250)
      assert.isBelow(result.millis, 2000)
      assert.strictEqual((yield* server.stats).timedOut, 1)
    }))

  it.live("upgrade requests with too many headers are answered 431; oversized heads are refused and closed", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ maxHeaderCount: 20 })
      const many = Array.from({ length: 30 }, (_, i) => `X-Filler-${i}: y`)
      const tooMany = yield* rawExchange(server.port, upgradeRequest(many))
      assert.match(tooMany.response, /^HTTP\/1\.1 431 /)
      const huge = yield* rawExchange(server.port, upgradeRequest([`X-Big: ${"a".repeat(64 * KiB)}`]))
      assert.match(huge.response, /^HTTP\/1\.1 4\d\d /)
      assert.isTrue(huge.closed)
    }))

  it.live("garbage negotiation headers are answered 400 and a plain HTTP request 426", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen()
      const badExt = yield* rawExchange(server.port, upgradeRequest(["Sec-WebSocket-Extensions: plexus-channels; ext=\"a b\""]))
      assert.match(badExt.response, /^HTTP\/1\.1 400 /)
      const badProto = yield* rawExchange(server.port, upgradeRequest(["Sec-WebSocket-Protocol: a,,b"]))
      assert.match(badProto.response, /^HTTP\/1\.1 400 /)
      const plain = yield* rawExchange(server.port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.match(plain.response, /^HTTP\/1\.1 426 /)
      assert.strictEqual((yield* server.stats).badRequests, 3)
    }))

  it.live("a reader that lags pauses the socket: the server buffers at most its high-water mark plus one message", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ highWaterMark: 256 * KiB })
      const client = yield* NodeWs.dial({ url: server.url })
      const accepted = yield* server.accept
      const messages = yield* accepted.messages
      const writer = yield* client.socket.writer
      const total = 32 * MiB
      const writing = yield* Effect.forkChild(Effect.gen(function*() {
        for (let sent = 0; sent < total; sent += 64 * KiB) yield* writer.write(bytes(64 * KiB))
      }))
      yield* Effect.sleep("300 millis")
      const stats = yield* accepted.stats
      assert.isTrue(stats.paused, "reading is paused")
      assert.isAtMost(stats.buffered, 256 * KiB + 64 * KiB)
      let received = 0
      while (received < total) for (const m of yield* messages.pull) received += m.length
      assert.strictEqual(received, total)
      yield* Fiber.join(writing)
    }).pipe(within("lagging reader", 30)))

  it.live("connections that complete their handshake before anyone accepts wait and lose nothing", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen()
      const clients = yield* Effect.forEach([1, 2, 3], (n) =>
        Effect.gen(function*() {
          const c = yield* NodeWs.dial({ url: server.url })
          const m = yield* c.messages
          yield* m.sendAll([new Uint8Array([n]), new Uint8Array([n, n])])
          return m
        }))
      yield* Effect.sleep("100 millis")
      const seen: Array<number> = []
      for (let i = 0; i < 3; i++) {
        const conn = yield* server.accept
        const m = yield* conn.messages
        const got = [...(yield* m.pull)]
        if (got.length < 2) got.push(...(yield* m.pull))
        assert.strictEqual(got[1]!.length, 2)
        seen.push(got[0]![0]!)
      }
      assert.deepStrictEqual(seen.sort(), [1, 2, 3])
      assert.strictEqual(clients.length, 3)
    }))

  it.live("closing the server's scope closes connections that were never accepted", () =>
    Effect.gen(function*() {
      const serverScope = yield* Scope.make()
      const server = yield* NodeWs.listen().pipe(Scope.provide(serverScope))
      const client = yield* NodeWs.dial({ url: server.url })
      const pull = yield* Socket.readerBytes(client.socket)
      yield* Scope.close(serverScope, Exit.void).pipe(within("server scope closing"))
      const end = yield* Effect.flip(pull).pipe(within("client pull after the server closed"))
      assert.isTrue(Transport.isCleanClose(end), `client saw ${String(end)}`)
    }))
})
