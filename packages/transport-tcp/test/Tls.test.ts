import { assert, describe, it } from "@effect/vitest"
import { Transport } from "@plexus/core"
import * as Effect from "effect/Effect"
import * as Socket from "effect/socket/Socket"
import * as Net from "node:net"
import { Tcp, Tls } from "../src/index.ts"
import { cert, key, readBytes, readToEnd, within } from "./helpers.ts"

const text = (s: string) => new TextEncoder().encode(s)
const str = (b: Uint8Array) => new TextDecoder().decode(b)

describe("Tls", () => {
  it.live("listening on port 0 reports the real port, and a trusted client gets a round trip", () =>
    Effect.gen(function*() {
      const server = yield* Tls.listen({ key, cert })
      assert.isAbove(server.port, 0)
      if (server.address._tag !== "UnixPathAddress") assert.strictEqual(server.address.port, server.port)
      const client = yield* Tls.dial({ port: server.port, ca: cert, servername: "localhost" })
      const accepted = yield* server.accept
      const { pull } = yield* accepted.socket.reader
      yield* (yield* client.writer).write(text("over tls"))
      assert.strictEqual(str(yield* readBytes(pull, 8).pipe(within("reading over TLS"))), "over tls")
      assert.strictEqual((Tcp.netSocket(client) as unknown as { encrypted?: boolean }).encrypted, true)
    }))

  it.live("TLS sockets offer no borrowed reader: their reads are fresh Buffers a Reader keeps as they are", () =>
    Effect.gen(function*() {
      const server = yield* Tls.listen({ key, cert })
      const client = yield* Tls.dial({ port: server.port, ca: cert, servername: "localhost" })
      const accepted = yield* server.accept
      assert.isUndefined(Transport.borrowedReads(client))
      assert.isUndefined(Transport.borrowedReads(accepted.socket))
      // Plain TCP sockets of this package do offer one.
      const tcpServer = yield* Tcp.listen()
      assert.isDefined(Transport.borrowedReads(yield* Tcp.dial({ port: tcpServer.port })))
      assert.isDefined(Transport.borrowedReads((yield* tcpServer.accept).socket))
    }))

  it.live("dialing 127.0.0.1 without a servername checks the certificate's IP address", () =>
    Effect.gen(function*() {
      const server = yield* Tls.listen({ key, cert })
      const client = yield* Tls.dial({ port: server.port, ca: cert })
      const accepted = yield* server.accept
      yield* (yield* client.writer).write(text("ip"))
      const { pull } = yield* accepted.socket.reader
      assert.strictEqual(str(yield* readBytes(pull, 2).pipe(within("reading over TLS by IP"))), "ip")
    }))

  it.live("connectTimeout covers the handshake: a server that never answers it fails with kind Timeout", () =>
    Effect.gen(function*() {
      // A plain TCP listener accepts the connection but never speaks TLS.
      const silent = yield* Tcp.listen()
      const error = yield* Effect.flip(
        Tls.dial({ port: silent.port, ca: cert, servername: "localhost", connectTimeout: "200 millis" })
      ).pipe(within("the dial timing out"))
      assert.strictEqual(error.reason._tag, "SocketOpenError")
      if (error.reason._tag === "SocketOpenError") assert.strictEqual(error.reason.kind, "Timeout")
    }))

  it.live("a certificate the client does not trust fails the dial with SocketOpenError", () =>
    Effect.gen(function*() {
      const server = yield* Tls.listen({ key, cert })
      const error = yield* Effect.flip(Tls.dial({ port: server.port, servername: "localhost" }))
      assert.strictEqual(error.reason._tag, "SocketOpenError")
      if (error.reason._tag === "SocketOpenError") {
        assert.strictEqual(error.reason.kind, "Unknown")
        assert.strictEqual((error.reason.cause as NodeJS.ErrnoException).code, "DEPTH_ZERO_SELF_SIGNED_CERT")
      }
      assert.strictEqual((yield* server.stats).accepted, 0)
    }))

  it.live("a certificate for another name fails the dial with SocketOpenError", () =>
    Effect.gen(function*() {
      const server = yield* Tls.listen({ key, cert })
      const error = yield* Effect.flip(Tls.dial({ port: server.port, ca: cert, servername: "example.com" }))
      assert.strictEqual(error.reason._tag, "SocketOpenError")
      if (error.reason._tag === "SocketOpenError") {
        assert.strictEqual((error.reason.cause as NodeJS.ErrnoException).code, "ERR_TLS_CERT_ALTNAME_INVALID")
      }
    }))

  it.live("the server drops a client that never completes its handshake without handing it on", () =>
    Effect.gen(function*() {
      const server = yield* Tls.listen({ key, cert, handshakeTimeout: "100 millis" })
      const raw = Net.connect({ host: "127.0.0.1", port: server.port })
      raw.on("error", () => {})
      yield* Effect.addFinalizer(() => Effect.sync(() => raw.destroy()))
      yield* Effect.callback<void>((resume) => {
        raw.once("close", () => resume(Effect.void))
      }).pipe(within("the server closing the stalled handshake"))
      // A proper client is still served afterwards.
      const client = yield* Tls.dial({ port: server.port, ca: cert, servername: "localhost" })
      const accepted = yield* server.accept
      yield* (yield* accepted.socket.writer).write(text("ok"))
      const { pull } = yield* client.reader
      assert.strictEqual(str(yield* readBytes(pull, 2)), "ok")
      assert.strictEqual((yield* server.stats).accepted, 1)
    }))

  it.live("a reset over TLS resets the TCP connection: the peer sees 1006", () =>
    Effect.gen(function*() {
      const server = yield* Tls.listen({ key, cert })
      const client = yield* Tls.dial({ port: server.port, ca: cert, servername: "localhost" })
      const accepted = yield* server.accept
      const { pull } = yield* accepted.socket.reader
      yield* (yield* client.writer).write(new Socket.CloseEvent(4000, "going away"))
      const { error } = yield* readToEnd(pull).pipe(within("the server reader after the reset"))
      assert.isTrue(Transport.isAbruptClose(error), String(error))
      if (Socket.isSocketError(error) && error.reason._tag === "SocketCloseError") {
        assert.strictEqual(error.reason.closeReason, "ECONNRESET")
      }
    }))

  it.live("layerClient and layerServer work over TLS", () =>
    Effect.gen(function*() {
      const server = yield* Tls.listen({ key, cert })
      const reply = yield* Effect.gen(function*() {
        const socket = yield* Socket.Socket
        const accepted = yield* server.accept
        yield* (yield* accepted.socket.writer).write(text("hi"))
        const { pull } = yield* socket.reader
        return str(yield* readBytes(pull, 2))
      }).pipe(
        Effect.scoped,
        Effect.provide(Tls.layerClient({ port: server.port, ca: cert, servername: "localhost" })),
        within("a round trip through the TLS client layer")
      )
      assert.strictEqual(reply, "hi")
    }))
})
