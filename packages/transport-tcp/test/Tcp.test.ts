import { assert, describe, it } from "@effect/vitest"
import { Transport } from "@plexus/core"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import * as SocketServer from "effect/socket/SocketServer"
import * as Stream from "effect/Stream"
import * as Net from "node:net"
import { patterned } from "@plexus/core/test/fixtures/Streams.ts"
import { Tcp, TcpServer } from "../src/index.ts"
import { bytes, concat, freePort, readBytes, readToEnd, within } from "./helpers.ts"

const text = (s: string) => new TextEncoder().encode(s)
const str = (b: Uint8Array) => new TextDecoder().decode(b)

/** The value node keeps for a socket option it was asked to set (no public getter exists). */
const nodeOption = (socket: Net.Socket, name: string): unknown => {
  const symbol = Object.getOwnPropertySymbols(socket).find((s) => s.description === name)
  return symbol === undefined ? undefined : (socket as unknown as Record<symbol, unknown>)[symbol]
}

/** Echoes every byte back until the peer closes. */
const echo = (socket: Socket.Socket) =>
  Effect.gen(function*() {
    const { pull } = yield* socket.reader
    const writer = yield* socket.writer
    while (true) yield* writer.writeAll(yield* pull)
  }).pipe(Effect.scoped, Effect.catchReason("SocketError", "SocketCloseError", () => Effect.void))

const roundTrip = (port: number, message: string) =>
  Effect.scoped(Effect.gen(function*() {
    const client = yield* Tcp.dial({ port })
    const { pull } = yield* client.reader
    yield* (yield* client.writer).write(text(message))
    return str(yield* readBytes(pull, text(message).length))
  }))

describe("Tcp", () => {
  describe("listen", () => {
    it.live("listening on port 0 reports the real bound port in address and port", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen()
        assert.isAbove(server.port, 0)
        assert.strictEqual(server.address._tag, "InetAddressV4")
        if (server.address._tag !== "UnixPathAddress") assert.strictEqual(server.address.port, server.port)
        const conn = Net.connect({ host: "127.0.0.1", port: server.port })
        yield* Effect.addFinalizer(() => Effect.sync(() => conn.destroy()))
        yield* Effect.callback<void>((resume) => {
          conn.once("connect", () => resume(Effect.void))
        }).pipe(within("a plain node client connecting to the reported port"))
      }))

    it.live("run hands every connection to its own handler, including ones that arrived before run", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen()
        // Connect and write before anyone runs the server: nothing may be lost.
        const early = yield* Tcp.dial({ port: server.port })
        yield* (yield* early.writer).write(text("early"))
        yield* Effect.forkScoped(server.run(echo))
        const replies = yield* Effect.all(
          [1, 2, 3, 4, 5].map((i) => roundTrip(server.port, `hello ${i}`)),
          { concurrency: "unbounded" }
        ).pipe(within("five concurrent round trips"))
        assert.deepStrictEqual(replies, [1, 2, 3, 4, 5].map((i) => `hello ${i}`))
        const { pull } = yield* early.reader
        assert.strictEqual(str(yield* readBytes(pull, 5).pipe(within("the early connection's echo"))), "early")
      }))

    it.live("run closes a connection when its handler ends", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen()
        yield* Effect.forkScoped(server.run((socket) =>
          Effect.scoped(Effect.flatMap(socket.writer, (w) => w.write(text("bye"))))
        ))
        const client = yield* Tcp.dial({ port: server.port })
        const { pull } = yield* client.reader
        const { bytes: received, error } = yield* readToEnd(pull).pipe(within("reading until the server closes"))
        assert.strictEqual(str(received), "bye")
        assert.isTrue(Transport.isCleanClose(error), String(error))
      }))

    it.live("the connections stream yields every connection, including ones that arrived before it was consumed", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen()
        const clients = yield* Effect.forEach([0, 1, 2, 3], (i) =>
          Effect.gen(function*() {
            const client = yield* Tcp.dial({ port: server.port })
            yield* (yield* client.writer).write(new Uint8Array([i]))
            return client
          }))
        const accepted = yield* server.connections.pipe(Stream.take(4), Stream.runCollect, within("taking 4 connections"))
        const firstBytes = yield* Effect.forEach(accepted, (c) =>
          Effect.scoped(Effect.flatMap(c.socket.reader, ({ pull }) => readBytes(pull, 1))))
        assert.deepStrictEqual(firstBytes.map((b) => b[0]).sort(), [0, 1, 2, 3])
        for (const c of accepted) {
          assert.strictEqual(c.remoteAddress, "127.0.0.1")
          assert.isAbove(c.remotePort, 0)
        }
        assert.strictEqual(clients.length, 4)
        const stats = yield* server.stats
        assert.strictEqual(stats.accepted, 4)
        assert.strictEqual(stats.open, 4)
      }))

    it.live("maxConnections refuses the connection beyond the cap and counts it", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen({ maxConnections: 1 })
        yield* Effect.forkScoped(server.run(echo))
        assert.strictEqual(yield* roundTrip(server.port, "first").pipe(Effect.as("ok"), Effect.orDie), "ok")
        // Wait until the server has closed its side of the first connection too.
        yield* Effect.repeat(server.stats, { until: (s) => s.open === 0, schedule: Schedule.spaced("10 millis") }).pipe(
          within("the first connection closing on the server")
        )
        const held = yield* Tcp.dial({ port: server.port })
        const heldPull = (yield* held.reader).pull
        yield* (yield* held.writer).write(text("held"))
        yield* readBytes(heldPull, 4).pipe(within("the held connection echoing"))

        const extra = yield* Tcp.dial({ port: server.port })
        const { pull } = yield* extra.reader
        const { bytes: received, error } = yield* readToEnd(pull).pipe(within("the refused connection closing"))
        assert.strictEqual(received.length, 0)
        assert.isTrue(Socket.isSocketError(error))
        const stats = yield* server.stats
        assert.strictEqual(stats.refused, 1)
        assert.strictEqual(stats.open, 1)
      }))

    it.live("closing the server's scope closes live connections and stops listening", () =>
      Effect.gen(function*() {
        const scope = yield* Scope.make()
        const server = yield* Tcp.listen().pipe(Scope.provide(scope))
        const client = yield* Tcp.dial({ port: server.port })
        const { pull } = yield* client.reader
        yield* server.accept.pipe(Scope.provide(scope))
        const streamEnded = yield* Effect.forkChild(Stream.runDrain(server.connections))
        const reading = yield* Effect.forkChild(readToEnd(pull))
        yield* Scope.close(scope, Exit.void)
        const { error } = yield* Fiber.join(reading).pipe(within("the client seeing the server go"))
        assert.isTrue(Socket.isSocketError(error))
        yield* Fiber.join(streamEnded).pipe(within("the connections stream ending"))
        const refused = yield* Effect.flip(Tcp.dial({ port: server.port }))
        assert.strictEqual(refused.reason._tag, "SocketOpenError")
        const acceptAfter = yield* Effect.flip(Effect.scoped(server.accept))
        assert.strictEqual(acceptAfter._tag, "SocketServerError")
      }))

    it.live("layerServer provides SocketServer and TcpServer, layerClient a Socket connected to it", () =>
      Effect.gen(function*() {
        const { port } = yield* TcpServer.TcpServer
        const generic = yield* SocketServer.SocketServer
        yield* Effect.forkScoped(generic.run(echo))
        const reply = yield* Effect.gen(function*() {
          const socket = yield* Socket.Socket
          const { pull } = yield* socket.reader
          yield* (yield* socket.writer).write(text("via layers"))
          return str(yield* readBytes(pull, 10))
        }).pipe(Effect.scoped, Effect.provide(Tcp.layerClient({ port })), within("a round trip through the layers"))
        assert.strictEqual(reply, "via layers")
      }).pipe(Effect.provide(Layer.fresh(Tcp.layerServer()))))
  })

  describe("dial", () => {
    it.live("applies noDelay and keepAlive to the node socket", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen({ noDelay: false, keepAlive: "30 seconds" })
        const client = yield* Tcp.dial({ port: server.port, keepAlive: "10 seconds" })
        const accepted = yield* server.accept
        const raw = Tcp.netSocket(client)!
        assert.isDefined(raw)
        if (nodeOption(raw, "kSetNoDelay") === undefined) return // this node keeps no record to check
        assert.strictEqual(nodeOption(raw, "kSetNoDelay"), true)
        assert.strictEqual(nodeOption(raw, "kSetKeepAlive"), true)
        assert.strictEqual(nodeOption(raw, "kSetKeepAliveInitialDelay"), 10)
        const serverSide = Tcp.netSocket(accepted.socket)!
        assert.strictEqual(serverSide.remotePort, raw.localPort)
        assert.notStrictEqual(nodeOption(serverSide, "kSetNoDelay"), true)
        assert.strictEqual(nodeOption(serverSide, "kSetKeepAlive"), true)
        assert.strictEqual(nodeOption(serverSide, "kSetKeepAliveInitialDelay"), 30)
      }))

    it.live("a port nobody listens on fails with SocketOpenError kind Unknown and the node error", () =>
      Effect.gen(function*() {
        const port = yield* freePort
        const error = yield* Effect.flip(Tcp.dial({ port, connectTimeout: "5 seconds" }))
        assert.strictEqual(error.reason._tag, "SocketOpenError")
        if (error.reason._tag === "SocketOpenError") {
          assert.strictEqual(error.reason.kind, "Unknown")
          assert.strictEqual((error.reason.cause as NodeJS.ErrnoException).code, "ECONNREFUSED")
        }
      }))

    it.live("closing the dial scope flushes queued writes before closing cleanly", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen()
        const scope = yield* Scope.make()
        const client = yield* Tcp.dial({ port: server.port }).pipe(Scope.provide(scope))
        const accepted = yield* server.accept
        const { pull } = yield* accepted.socket.reader
        const payload = bytes(8 * 1024 * 1024, 5)
        // One large write queues most of it in node; do not wait for it.
        const writer = yield* client.writer.pipe(Scope.provide(scope))
        yield* Effect.forkChild(writer.write(payload))
        yield* Effect.yieldNow
        assert.isAbove(Tcp.netSocket(client)!.writableLength, 0)
        yield* Scope.close(scope, Exit.void)
        const { bytes: received, error } = yield* readToEnd(pull).pipe(within("reading the flushed stream"))
        assert.strictEqual(received.length, payload.length)
        assert.deepStrictEqual(received, payload)
        assert.isTrue(Transport.isCleanClose(error), String(error))
      }))
  })

  describe("connection", () => {
    it.live("a peer reset fails the reader with close code 1006 and ECONNRESET", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen()
        const client = yield* Tcp.dial({ port: server.port })
        const accepted = yield* server.accept
        const { pull } = yield* accepted.socket.reader
        yield* (yield* client.writer).write(text("before the reset"))
        yield* readBytes(pull, 16)
        Tcp.netSocket(client)!.resetAndDestroy()
        const { error } = yield* readToEnd(pull).pipe(within("the server reader after the reset"))
        assert.isTrue(Transport.isAbruptClose(error))
        assert.isTrue(Socket.isSocketError(error) && error.reason._tag === "SocketCloseError")
        if (Socket.isSocketError(error) && error.reason._tag === "SocketCloseError") {
          assert.strictEqual(error.reason.code, 1006)
          assert.strictEqual(error.reason.closeReason, "ECONNRESET")
        }
        const writeError = yield* Effect.flip((yield* accepted.socket.writer).write(text("x")))
        assert.strictEqual(writeError.reason._tag, "SocketWriteError")
      }))

    it.live("a reader acquired after the peer's FIN gets the bytes sent before it, then the clean close", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen()
        const client = yield* Tcp.dial({ port: server.port })
        yield* Effect.scoped(Effect.flatMap(client.writer, (w) => w.write(text("last words"))))
        const accepted = yield* server.accept
        const { bytes: received, error } = yield* Effect.scoped(
          Effect.flatMap(accepted.socket.reader, ({ pull }) => readToEnd(pull))
        ).pipe(within("reading after the FIN"))
        assert.strictEqual(str(received), "last words")
        assert.isTrue(Transport.isCleanClose(error))
        // The stream has ended: a new reader fails at once with the same close.
        const again = yield* Effect.flip(Effect.scoped(accepted.socket.reader))
        assert.isTrue(Transport.isCleanClose(again))
      }))

    it.live("a new reader continues where a closed one stopped, losing nothing", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen()
        const client = yield* Tcp.dial({ port: server.port })
        const accepted = yield* server.accept
        const writer = yield* client.writer
        yield* writer.write(text("one"))
        const first = yield* Effect.scoped(Effect.flatMap(accepted.socket.reader, ({ pull }) => readBytes(pull, 3)))
        yield* writer.write(text("two"))
        const second = yield* Effect.scoped(Effect.flatMap(accepted.socket.reader, ({ pull }) => readBytes(pull, 3)))
        assert.strictEqual(str(first) + str(second), "onetwo")
      }))

    it.live("the reader pauses the socket at its high-water mark and resumes when pulled", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen({ highWaterMark: 64 * 1024 })
        const client = yield* Tcp.dial({ port: server.port })
        const accepted = yield* server.accept
        const { pull } = yield* accepted.socket.reader
        const raw = Tcp.netSocket(accepted.socket)!
        const payload = bytes(4 * 1024 * 1024, 9)
        const paused = yield* Deferred.make<void>()
        raw.on("pause", () => Deferred.doneUnsafe(paused, Exit.void))
        const writing = yield* Effect.forkChild(Effect.flatMap(client.writer, (w) => w.write(payload)).pipe(Effect.scoped))
        yield* Deferred.await(paused).pipe(within("the reader pausing the socket"))
        const received = yield* readBytes(pull, payload.length).pipe(within("draining 4 MiB"))
        assert.deepStrictEqual(received, payload)
        yield* Fiber.join(writing)
      }))

    it.live("a write after the writer's release (half-close) fails with SocketWriteError", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen()
        const client = yield* Tcp.dial({ port: server.port })
        const released = yield* Effect.scoped(client.writer)
        const error = yield* Effect.flip(released.write(text("late")))
        assert.strictEqual(error.reason._tag, "SocketWriteError")
      }))
  })
  describe("reading into our memory", () => {
    /** Reads `socket` borrowed to the peer's FIN: every byte copied out, and the distinct memory lent. */
    const readAllBorrowed = (socket: Socket.Socket) =>
      Effect.gen(function*() {
        const borrowed = Transport.borrowedReads(socket)
        assert.isDefined(borrowed)
        const pieces: Array<Uint8Array> = []
        const memory = new Set<ArrayBufferLike>()
        let reads = 0
        const error = yield* Effect.flip(Effect.scoped(borrowed!.readBorrowed((chunk) => {
          reads++
          memory.add(chunk.buffer)
          pieces.push(new Uint8Array(chunk)) // a copy (a Buffer's slice would be a view)
        })))
        return { received: concat(pieces), reads, memory, error }
      })

    it.live("a borrowed reader gets every byte in order, in one piece of memory read into again and again, then the clean close", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen()
        const client = yield* Tcp.dial({ port: server.port })
        const accepted = yield* server.accept
        const payload = patterned(8 * 1024 * 1024, 3)
        yield* Effect.forkChild(Effect.scoped(Effect.flatMap(client.writer, (w) => w.write(payload))))
        const { received, reads, memory, error } = yield* readAllBorrowed(accepted.socket).pipe(within("8 MiB borrowed"))
        assert.isTrue(Transport.isCleanClose(error))
        assert.strictEqual(received.length, payload.length)
        assert.deepStrictEqual(received, payload)
        assert.isAbove(reads, 8 * 16 - 1)
        assert.strictEqual(memory.size, 1)
      }))

    it.live("a dialled socket reads borrowed too, and a Reader's leftovers come first", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen()
        const client = yield* Tcp.dial({ port: server.port })
        const accepted = yield* server.accept
        const serverWriter = yield* accepted.socket.writer
        yield* serverWriter.write(text("first,"))
        // A reader takes the first write; the next one arrives while nobody
        // pulls, and waits in the reader's list.
        const head = yield* Effect.scoped(Effect.flatMap(client.reader, ({ pull }) => readBytes(pull, 6)))
        yield* serverWriter.write(text("second,"))
        yield* Effect.sleep("50 millis")
        const tail = patterned(2 * 1024 * 1024, 7)
        yield* serverWriter.write(tail)
        yield* Effect.sync(() => Tcp.netSocket(accepted.socket)!.end())
        const { received, error } = yield* readAllBorrowed(client).pipe(within("the rest, borrowed"))
        assert.isTrue(Transport.isCleanClose(error))
        assert.strictEqual(str(head) + str(received.subarray(0, 7)), "first,second,")
        assert.deepStrictEqual(received.subarray(7), tail)
      }))

    it.live("a borrower that throws fails the read with an abrupt close and resets the connection", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen()
        const client = yield* Tcp.dial({ port: server.port })
        const accepted = yield* server.accept
        yield* (yield* client.writer).write(text("boom"))
        const error = yield* Effect.flip(Effect.scoped(Transport.borrowedReads(accepted.socket)!.readBorrowed(() => {
          throw new Error("parser bug")
        }))).pipe(within("the failing borrower"))
        assert.isTrue(Transport.isAbruptClose(error))
        assert.include(String(error.reason._tag === "SocketCloseError" ? error.reason.closeReason : ""), "parser bug")
        const peer = yield* Effect.scoped(Effect.flatMap(client.reader, ({ pull }) => readToEnd(pull))).pipe(within("the reset"))
        assert.isTrue(Transport.isAbruptClose(peer.error))
      }))

    it.live("chunks a Reader kept stay intact while later reads arrive, whatever their sizes", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen()
        const client = yield* Tcp.dial({ port: server.port })
        const accepted = yield* server.accept
        const raw = Tcp.netSocket(client)!
        // Writes of many sizes, each flushed on its own, so reads come in
        // small (copied out) and large (handed on in place).
        const sizes = [1, 7, 100, 4096, 20_000, 40_000, 65_536, 300_000, 3, 1_000_000, 50]
        const payload = patterned(sizes.reduce((a, b) => a + b, 0), 11)
        const kept: Array<Uint8Array> = []
        const { pull } = yield* accepted.socket.reader
        let at = 0
        for (const size of sizes) {
          yield* Effect.callback<void>((resume) => {
            raw.write(payload.subarray(at, at + size), () => resume(Effect.void))
          })
          at += size
          let got = kept.reduce((a, c) => a + c.length, 0)
          while (got < at) {
            const batch = yield* pull.pipe(within("the next read"))
            for (const chunk of batch) {
              kept.push(chunk as Uint8Array)
              got += (chunk as Uint8Array).length
            }
          }
        }
        // Every chunk kept since the first read is still what was sent.
        assert.deepStrictEqual(concat(kept), payload)
        // A chunk handed on in the memory it was read into shows nothing
        // else through its ArrayBuffer: what the read did not fill is zero.
        for (const chunk of kept) {
          if (chunk.byteOffset !== 0 || chunk.byteLength === chunk.buffer.byteLength || chunk.byteLength < 32 * 1024) continue
          const rest = new Uint8Array(chunk.buffer, chunk.byteLength)
          assert.isTrue(rest.every((b) => b === 0), "uninitialised memory behind a chunk")
        }
      }))

    it.live("an accepted connection still counts against maxConnections after the adapter takes its handle", () =>
      Effect.gen(function*() {
        const server = yield* Tcp.listen({ maxConnections: 1 })
        const first = yield* Tcp.dial({ port: server.port })
        const accepted = yield* server.accept
        yield* Effect.scoped(Tcp.dial({ port: server.port }))
        yield* Effect.repeat(server.stats, { until: (stats) => stats.refused === 1, schedule: Schedule.spaced("10 millis") })
          .pipe(within("the second connection refused"))
        // The first still works both ways.
        yield* (yield* first.writer).write(text("ping"))
        const { pull } = yield* accepted.socket.reader
        assert.strictEqual(str(yield* readBytes(pull, 4)), "ping")
      }))
  })
})
