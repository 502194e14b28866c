import { assert, describe, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as NetAddress from "effect/net/NetAddress"
import * as Socket from "effect/socket/Socket"
import * as SocketServer from "effect/socket/SocketServer"
import * as Stream from "effect/Stream"
import { TestClock } from "effect/testing"
import * as Memory from "../src/Memory.ts"
import * as MuxStream from "../src/MuxStream.ts"
import * as NodeDuplex from "../src/NodeDuplex.ts"
import * as Session from "../src/Session.ts"
import * as Transport from "../src/Transport.ts"
import { transportSuite } from "./fixtures/TransportSuite.ts"
import { concat as concatBytes, patterned, readToEnd } from "./fixtures/Streams.ts"

const text = (s: string) => new TextEncoder().encode(s)
const str = (chunks: ReadonlyArray<Uint8Array>) => chunks.map((c) => new TextDecoder().decode(c)).join("")

const sessionPair = (codec: Session.Codec, options?: Partial<Session.Options>, faults?: Memory.Faults) =>
  Effect.gen(function*() {
    const pair = yield* Memory.makeBytePair(faults === undefined ? undefined : { faults })
    const client = yield* Session.make(pair.a, { keepAlive: false, ...options, role: "client", codec })
    const server = yield* Session.make(pair.b, { keepAlive: false, ...options, role: "server", codec })
    return { client, server, pair }
  })

/** Reads a stream to its end. */
const readAll = readToEnd

for (const codec of ["plexus", "yamux"] as const) {
  describe(`Session (${codec})`, () => {
    transportSuite(`mux streams over memory (${codec})`, {
      connect: Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec)
        const opened = yield* client.open()
        const accepted = yield* server.accept
        return [opened, accepted] as const
      }),
      halfClose: true,
      // The stream's send buffer plus its window, plus the memory pipe.
      maxBufferedWhileStalled: 256 * 1024 + 256 * 1024 + 256 * 1024
    })

    transportSuite(`mux streams over memory with split and delayed writes (${codec})`, {
      connect: Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec, {}, { split: { min: 1, max: 100 }, latency: "1 millis" })
        const opened = yield* client.open()
        const accepted = yield* server.accept
        return [opened, accepted] as const
      }),
      halfClose: true,
      maxBufferedWhileStalled: 3 * 256 * 1024
    })

    it.live("either side opens streams and the other accepts them", () =>
      Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec)
        const fromClient = yield* client.open()
        const atServer = yield* server.accept
        const fromServer = yield* server.open()
        const atClient = yield* client.accept
        assert.strictEqual(fromClient.id % 2, 1)
        assert.strictEqual(fromServer.id % 2, 0)
        assert.strictEqual(atServer.id, fromClient.id)
        assert.strictEqual(atClient.id, fromServer.id)
        yield* Effect.scoped(Effect.flatMap(fromServer.writer, (w) => w.write(text("to client"))))
        yield* Effect.scoped(Effect.flatMap(fromClient.writer, (w) => w.write(text("to server"))))
        assert.strictEqual(str(yield* readAll(atClient)), "to client")
        assert.strictEqual(str(yield* readAll(atServer)), "to server")
      }))

    it.live("half-close still lets the peer finish writing", () =>
      Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec)
        const stream = yield* client.open()
        yield* Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(text("request"))))
        const peer = yield* server.accept
        assert.strictEqual(str(yield* readAll(peer)), "request")
        yield* Effect.scoped(Effect.flatMap(peer.writer, (w) => w.writeAll([text("res"), text("ponse")])))
        assert.strictEqual(str(yield* readAll(stream)), "response")
      }))

    it.live("a reset ends both directions at once with a typed error", () =>
      Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec)
        const stream = yield* client.open()
        yield* Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(text("x"))))
        const peer = yield* server.accept
        yield* peer.reset(0x100 + 7)
        const error = yield* Effect.flip(readAll(stream))
        const typed = MuxStream.streamError(error)
        assert.isDefined(typed)
        assert.strictEqual(typed!.reason._tag, "StreamReset")
        // yamux's RST carries no code: it arrives as CANCEL.
        assert.strictEqual((typed!.reason as any).code, codec === "plexus" ? 0x107 : Session.Code.CANCEL)
        assert.isTrue(Transport.isAbruptClose(error))
        const writeError = yield* Effect.flip(Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(text("y")))))
        assert.isDefined(MuxStream.streamError(writeError))
      }))

    it.live("failed tells a side that already read the peer's FIN of a later reset, and waits while the stream is healthy", () =>
      Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec)
        const stream = yield* client.open()
        // A request and FIN, as a unary call sends them.
        yield* Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(text("request"))))
        const peer = yield* server.accept
        assert.strictEqual(str(yield* readAll(peer)), "request")
        const watching = yield* Effect.forkChild(peer.failed)
        yield* Effect.sleep("20 millis")
        assert.isUndefined(watching.pollUnsafe(), "a healthy stream has not failed")
        // The caller gives up: the server learns of it without reading.
        yield* stream.reset(0x100 + 9)
        const error = yield* Fiber.join(watching).pipe(Effect.timeout("2 seconds"))
        assert.strictEqual(error.reason._tag, "StreamReset")
        assert.strictEqual((error.reason as any).code, codec === "plexus" ? 0x109 : Session.Code.CANCEL)
        // Once failed, it answers at once.
        assert.strictEqual((yield* peer.failed).reason._tag, "StreamReset")
      }))

    it.live("closing a stream's scope resets it while its write side is still open", () =>
      Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec)
        yield* Effect.scoped(client.open())
        const peer = yield* server.accept
        const error = yield* Effect.flip(readAll(peer))
        assert.strictEqual(MuxStream.streamError(error)?.reason._tag, "StreamReset")
        assert.strictEqual((yield* client.stats).openStreams, 0)
      }))

    it.live("many streams in both directions carry their own bytes", () =>
      Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec, {}, { split: { min: 1, max: 3000 } })
        yield* Effect.forkScoped(server.run((stream) =>
          Effect.gen(function*() {
            const data = yield* readAll(stream)
            const w = yield* stream.writer
            yield* w.writeAll([text(`echo:`), ...data])
          }).pipe(Effect.scoped)
        ))
        const results = yield* Effect.forEach(Array.from({ length: 200 }, (_, i) => i), (i) =>
          Effect.scoped(Effect.gen(function*() {
            const stream = yield* client.open()
            yield* Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(text(`#${i}:`.padEnd(i * 37 % 5000, ".")))))
            return str(yield* readAll(stream))
          })), { concurrency: 64 })
        results.forEach((r, i) => assert.strictEqual(r, `echo:#${i}:`.padEnd(5 + (i * 37 % 5000), ".")))
      }))

    it.live("readInto copies into the caller's memory in order, bytes received before it first, then answers 0 at the peer's FIN", () =>
      Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec, {}, { split: { min: 1, max: 5000 } })
        const stream = yield* client.open()
        const payload = patterned(1024 * 1024 + 17, 5)
        const writer = yield* stream.writer
        // Some bytes arrive, and wait in the stream, before the first readInto.
        yield* writer.write(payload.subarray(0, 1000))
        const peer = yield* server.accept
        yield* Effect.repeat(server.stats, { until: (st) => st.bufferedBytes === 1000 })
        yield* Effect.forkScoped(Effect.andThen(writer.write(payload.subarray(1000)), stream.closeWrite))
        const target = new Uint8Array(999)
        const received: Array<Uint8Array> = []
        while (true) {
          const n = yield* peer.readInto(target)
          if (n === 0) break
          assert.isAtMost(n, target.length)
          received.push(target.slice(0, n))
        }
        assert.deepStrictEqual(concatBytes(received), payload)
        // At the end it keeps answering 0; an empty target answers 0 at once.
        assert.strictEqual(yield* peer.readInto(target), 0)
        assert.strictEqual(yield* peer.readInto(new Uint8Array(0)), 0)
      }))

    it.live("readInto fails with the stream's typed reset, as the reader does", () =>
      Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec)
        const stream = yield* client.open()
        yield* (yield* stream.writer).write(text("x"))
        const peer = yield* server.accept
        const target = new Uint8Array(16)
        assert.strictEqual(yield* peer.readInto(target), 1)
        const waiting = yield* Effect.forkChild(Effect.flip(peer.readInto(target)))
        yield* stream.reset(0x100 + 3)
        const error = yield* Fiber.join(waiting).pipe(Effect.timeout("2 seconds"))
        assert.strictEqual(MuxStream.streamError(error)?.reason._tag, "StreamReset")
        assert.isTrue(Transport.isAbruptClose(error))
      }))

    it.live("after readInto the reader still reads the rest, in chunks of its own", () =>
      Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec)
        const stream = yield* client.open()
        const payload = patterned(300 * 1024, 9)
        yield* Effect.forkScoped(Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(payload))))
        const peer = yield* server.accept
        const head = new Uint8Array(100)
        let got = 0
        while (got < head.length) got += yield* peer.readInto(head.subarray(got))
        const rest = yield* readAll(peer)
        assert.deepStrictEqual(concatBytes([head, ...rest]), payload)
      }))

    it.live("a stalled consumer holds at most its window while another stream keeps flowing", () =>
      Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec)
        const stalled = yield* client.open()
        const flowing = yield* client.open()
        yield* server.accept // the stalled stream: accepted, never read
        const flowingPeer = yield* server.accept
        const chunk = new Uint8Array(64 * 1024)
        // Nobody reads the stalled stream: its writer stops after the window and its send buffer.
        const stalledWriter = yield* Effect.forkScoped(Effect.scoped(Effect.gen(function*() {
          const w = yield* stalled.writer
          for (let i = 0; i < 1000; i++) yield* w.write(chunk)
        })))
        // Meanwhile 32 MiB cross on the other stream.
        const sent = 32 * 1024 * 1024
        yield* Effect.forkScoped(Effect.scoped(Effect.gen(function*() {
          const w = yield* flowing.writer
          for (let i = 0; i < sent / chunk.length; i++) yield* w.write(chunk)
        })))
        let received = 0
        const reader = yield* flowingPeer.reader
        while (received < sent) for (const c of yield* reader.pull) received += c.length
        assert.strictEqual(received, sent)
        const stats = yield* server.stats
        assert.isAtMost(stats.bufferedBytes, 16 * 1024 * 1024)
        assert.isUndefined(stalledWriter.pollUnsafe())
      }))
  })
}

describe("Session (plexus only)", () => {
  it.live("routes typed streams to the handler registered for their type", () =>
    Effect.gen(function*() {
      const { client, server } = yield* sessionPair("plexus")
      yield* server.handle(7, (stream) =>
        Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(text(`type ${stream.type}`)))))
      const stream = yield* client.open({ type: 7 })
      yield* Effect.scoped(Effect.flatMap(stream.writer, () => Effect.void))
      assert.strictEqual(str(yield* readAll(stream)), "type 7")
    }))

  it.live("refuses a stream type with no handler, marked safe to retry", () =>
    Effect.gen(function*() {
      const { client } = yield* sessionPair("plexus")
      const stream = yield* client.open({ type: 9 })
      const error = yield* Effect.flip(readAll(stream))
      const typed = MuxStream.streamError(error)
      assert.strictEqual(typed?.reason._tag, "StreamRefused")
      assert.isTrue(typed?.retryable)
    }))

  it.live("GO_AWAY fails streams above the last accepted id as safe to retry, and lets the others finish", () =>
    Effect.gen(function*() {
      const { client, server } = yield* sessionPair("plexus")
      const accepted = yield* client.open()
      yield* Effect.scoped(Effect.flatMap(accepted.writer, (w) => w.write(text("a"))))
      const peer = yield* server.accept
      const unseen = yield* client.open()
      yield* Effect.scoped(Effect.flatMap(unseen.writer, (w) => w.write(text("b"))))
      const closing = yield* Effect.forkChild(server.close({ drain: "5 seconds" }))
      const error = yield* Effect.flip(readAll(unseen))
      const typed = MuxStream.streamError(error)
      assert.isTrue(typed?.retryable, `expected retryable, got ${typed?.message}`)
      // The accepted stream still completes.
      assert.strictEqual(str(yield* readAll(peer)), "a")
      yield* Effect.scoped(Effect.flatMap(peer.writer, (w) => w.write(text("done"))))
      assert.strictEqual(str(yield* readAll(accepted)), "done")
      yield* Fiber.join(closing)
      const openAfter = yield* Effect.flip(Effect.scoped(client.open()))
      assert.strictEqual(openAfter.reason._tag, "GoneAway")
      assert.isTrue(openAfter.retryable)
    }))
})

describe("Session over yamux", () => {
  it.effect("refuses to open a typed stream rather than lose the type", () =>
    Effect.gen(function*() {
      const { client } = yield* sessionPair("yamux")
      const error = yield* Effect.flip(client.open({ type: 3 }))
      assert.strictEqual(error.reason._tag, "UnsupportedByCodec")
    }))
})

describe("Session keepalive", () => {
  it.effect("ends a session whose peer stops answering pings within interval + timeout", () =>
    Effect.gen(function*() {
      const pair = yield* Memory.makeBytePair()
      const client = yield* Session.make(pair.a, {
        role: "client",
        keepAlive: { interval: "15 seconds", timeout: "10 seconds" }
      })
      yield* Session.make(pair.b, { role: "server", keepAlive: false })
      yield* TestClock.adjust("1 second")
      yield* pair.bToA.stall
      const ended = yield* Effect.forkChild(Effect.flip(client.closed))
      yield* TestClock.adjust("25 seconds")
      const error = yield* Fiber.join(ended)
      assert.strictEqual(error.reason._tag, "KeepaliveTimeout")
    }))

  it.live("measures the round-trip time", () =>
    Effect.gen(function*() {
      const { client } = yield* sessionPair("plexus", {}, { latency: "20 millis" })
      // 20 ms each way: the answer cannot come back sooner than 40 ms.
      const rtt = yield* client.ping
      assert.isAtLeast(Duration.toMillis(rtt), 35)
      const measured = yield* client.rtt
      assert.isDefined(measured)
    }))
})

describe("Session as a SocketServer", () => {
  it.live("serves each incoming stream as a connection", () =>
    Effect.gen(function*() {
      const { client, server } = yield* sessionPair("plexus")
      const asServer = Session.toSocketServer(server)
      yield* Effect.forkScoped(asServer.run((socket) =>
        Effect.gen(function*() {
          const data = yield* readAll(socket)
          yield* Effect.scoped(Effect.flatMap(socket.writer, (w) => w.writeAll([text("got "), ...data])))
        })
      ))
      const replies = yield* Stream.runCollect(Stream.fromIterable([1, 2, 3]).pipe(
        Stream.mapEffect((i) =>
          Effect.scoped(Effect.gen(function*() {
            const stream = yield* client.open()
            yield* Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(text(String(i)))))
            return str(yield* readAll(stream))
          })), { concurrency: 3 })
      ))
      assert.deepStrictEqual([...replies].sort(), ["got 1", "got 2", "got 3"])
    }))
})

describe("Session flow control", () => {
  it.live("grows a stream's window toward the bandwidth-delay product when latency limits it", () =>
    Effect.gen(function*() {
      const { client, server } = yield* sessionPair("plexus", { maxWindow: 4 * 1024 * 1024 }, { latency: "20 millis" })
      yield* client.ping
      const stream = yield* client.open()
      const total = 8 * 1024 * 1024
      yield* Effect.forkScoped(Effect.scoped(Effect.gen(function*() {
        const w = yield* stream.writer
        const chunk = new Uint8Array(64 * 1024)
        for (let i = 0; i < total / chunk.length; i++) yield* w.write(chunk)
      })))
      const peer = yield* server.accept
      const reader = yield* peer.reader
      let received = 0
      let largest = 0
      while (received < total) {
        for (const c of yield* reader.pull) received += c.length
        largest = Math.max(largest, (yield* server.stats).grantedWindow)
      }
      assert.isAbove(largest, 256 * 1024, "the window never grew")
      assert.isAtMost(largest, 4 * 1024 * 1024, "the window grew past its maximum")
    }))
})

describe("Session readInto under a growing window", () => {
  it.live("keeps every byte while the window grows past the buffer it started with", () =>
    Effect.gen(function*() {
      const { client, server } = yield* sessionPair("plexus", { maxWindow: 4 * 1024 * 1024 }, { latency: "20 millis" })
      yield* client.ping
      const stream = yield* client.open()
      const payload = patterned(8 * 1024 * 1024, 1)
      yield* Effect.forkScoped(Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(payload))))
      const peer = yield* server.accept
      const target = new Uint8Array(48 * 1024)
      const received: Array<Uint8Array> = []
      let largest = 0
      while (true) {
        const n = yield* peer.readInto(target)
        if (n === 0) break
        received.push(target.slice(0, n))
        largest = Math.max(largest, (yield* server.stats).grantedWindow)
      }
      assert.isAbove(largest, 256 * 1024, "the window never grew")
      assert.deepStrictEqual(concatBytes(received), payload)
    }))
})

describe("Session limits", () => {
  it.live("an opener waits for a place when the peer's backlog is full, rather than fail", () =>
    Effect.gen(function*() {
      const { client, server } = yield* sessionPair("plexus", { acceptBacklog: 2 })
      yield* client.ping // settings have arrived
      yield* client.open()
      yield* client.open()
      const third = yield* Effect.forkScoped(client.open())
      yield* Effect.sleep("50 millis")
      assert.isUndefined(third.pollUnsafe(), "the third open went ahead past the peer's backlog")
      yield* server.accept
      const stream = yield* Fiber.join(third)
      assert.strictEqual(stream.id, 5)
    }))

  it.effect("an open that finds no place within the open timeout fails, safe to retry", () =>
    Effect.gen(function*() {
      const pair = yield* Memory.makeBytePair()
      const client = yield* Session.make(pair.a, { role: "client", keepAlive: false, openTimeout: "2 seconds" })
      yield* Session.make(pair.b, { role: "server", keepAlive: false, acceptBacklog: 1 })
      yield* TestClock.adjust("10 millis")
      yield* client.open()
      const second = yield* Effect.forkChild(Effect.flip(client.open()))
      yield* TestClock.adjust("2 seconds")
      const error = yield* Fiber.join(second)
      assert.strictEqual(error.reason._tag, "OpenTimeout")
      assert.isTrue(error.retryable)
    }))

  it.live("refuses streams beyond the inbound limit from a peer that does not know it (yamux)", () =>
    Effect.gen(function*() {
      const { client, server } = yield* sessionPair("yamux", { maxInboundStreams: 2 })
      yield* client.open()
      yield* client.open()
      const third = yield* client.open()
      const error = yield* Effect.flip(readAll(third))
      assert.strictEqual(MuxStream.streamError(error)?.reason._tag, "StreamRefused")
      assert.strictEqual((yield* server.stats).inboundStreams, 2)
      assert.strictEqual((yield* server.stats).refused, 1)
    }))

  it.live("waits at the peer's announced stream limit instead of being refused (plexus)", () =>
    Effect.gen(function*() {
      const { client, server } = yield* sessionPair("plexus", { maxInboundStreams: 2 })
      yield* client.ping
      const first = yield* client.open()
      yield* client.open()
      const third = yield* Effect.forkScoped(client.open())
      yield* Effect.sleep("50 millis")
      assert.isUndefined(third.pollUnsafe(), "the third open went past the peer's limit")
      yield* first.reset()
      yield* Fiber.join(third)
      assert.strictEqual((yield* server.stats).refused, 0)
    }))

  it.live("never wraps stream ids: the last one is used, then opens fail with StreamIdsExhausted", () =>
    Effect.gen(function*() {
      const { client, server } = yield* sessionPair("plexus", { firstStreamId: 0xfffffffd })
      const last = yield* client.open()
      const final = yield* client.open()
      assert.strictEqual(last.id, 0xfffffffd)
      assert.strictEqual(final.id, 0xffffffff)
      const error = yield* Effect.flip(client.open())
      assert.strictEqual(error.reason._tag, "StreamIdsExhausted")
      // The streams already open still work.
      yield* Effect.scoped(Effect.flatMap(final.writer, (w) => w.write(text("still here"))))
      yield* server.accept
      const peer = yield* server.accept
      assert.strictEqual(str(yield* readAll(peer)), "still here")
    }))
})

describe("Session metrics", () => {
  it.live("counts bytes, open streams and resets through Effect metrics", () =>
    Effect.gen(function*() {
      const before = (yield* Metric.value(Session.metrics.bytesOut)).count
      const resetsBefore = (yield* Metric.value(Session.metrics.resets)).count
      const { client, server } = yield* sessionPair("plexus")
      const stream = yield* client.open()
      yield* Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(new Uint8Array(10_000))))
      const peer = yield* server.accept
      yield* readAll(peer)
      yield* peer.reset()
      yield* Effect.flip(readAll(stream))
      yield* client.ping
      assert.isAtLeast((yield* Metric.value(Session.metrics.bytesOut)).count - before, 10_000)
      assert.isAtLeast((yield* Metric.value(Session.metrics.resets)).count - resetsBefore, 1)
      assert.isDefined((yield* Metric.value(Session.metrics.rtt)).value)
    }))
})

describe("MuxStream as a Node Duplex", () => {
  it.live("pipes bytes through Node streams, with half-close", () =>
    Effect.gen(function*() {
      const { client, server } = yield* sessionPair("yamux")
      yield* Effect.forkScoped(server.run((stream) =>
        Effect.gen(function*() {
          const data = yield* readAll(stream)
          yield* Effect.scoped(Effect.flatMap(stream.writer, (w) => w.writeAll([text("echo "), ...data])))
        })
      ))
      const stream = yield* client.open()
      const duplex = NodeDuplex.fromMuxStream(stream)
      const payload = Buffer.alloc(1024 * 1024, 7)
      const reply = yield* Effect.promise(() =>
        new Promise<Buffer>((resolve, reject) => {
          const parts: Array<Buffer> = []
          duplex.on("data", (b: Buffer) => parts.push(b))
          duplex.on("end", () => resolve(Buffer.concat(parts)))
          duplex.on("error", reject)
          duplex.end(payload)
        })
      )
      assert.strictEqual(reply.length, 5 + payload.length)
      assert.strictEqual(reply.subarray(0, 5).toString(), "echo ")
      assert.isTrue(reply.subarray(5).equals(payload))
    }))
})

describe("Session layers", () => {
  it.live("a client session over the Socket in context talks to sessions served per connection", () =>
    Effect.gen(function*() {
      const pair = yield* Memory.makeBytePair()
      // A SocketServer with one connection: the server end of the memory pair.
      const oneConnection = SocketServer.SocketServer.of({
        address: NetAddress.unixPathAddress("memory"),
        run: (handler) => Effect.andThen(Effect.ignore(handler(pair.b)), Effect.never)
      })
      yield* Effect.forkScoped(
        Session.serve((stream) =>
          Effect.gen(function*() {
            const data = yield* readAll(stream)
            yield* Effect.scoped(Effect.flatMap(stream.writer, (w) => w.writeAll([text("served "), ...data])))
          })
        ).pipe(Effect.provideService(SocketServer.SocketServer, oneConnection))
      )
      const reply = yield* Effect.gen(function*() {
        const session = yield* Session.SessionService
        const stream = yield* session.open()
        yield* Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(text("hi"))))
        return str(yield* readAll(stream))
      }).pipe(
        Effect.provide(Session.layerClient({ keepAlive: false }).pipe(
          Layer.provide(Layer.succeed(Socket.Socket)(pair.a))
        ))
      )
      assert.strictEqual(reply, "served hi")
    }))
})

for (const codec of ["plexus", "yamux"] as const) {
  describe(`Session requests (${codec})`, () => {
    it.live("request and serveRequests carry a stream per request, many at once", () =>
      Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec, {}, { split: { min: 1, max: 2000 } })
        yield* Effect.forkScoped(server.serveRequests((request) =>
          Effect.succeed([text("re:"), request])
        ))
        const replies = yield* Effect.forEach(Array.from({ length: 300 }, (_, i) => i), (i) =>
          Effect.map(client.request(text(`#${i}`.padEnd(i * 13 % 3000, "-"))), (reply) => new TextDecoder().decode(reply)),
          { concurrency: 64 })
        replies.forEach((reply, i) => assert.strictEqual(reply, "re:" + `#${i}`.padEnd(i * 13 % 3000, "-")))
        assert.strictEqual((yield* client.stats).openStreams, 0)
      }))

    it.live("interrupting a request resets its stream and interrupts the handler serving it", () =>
      Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec)
        const started = yield* Deferred.make<void>()
        const interrupted = yield* Deferred.make<void>()
        yield* Effect.forkScoped(server.serveRequests(() =>
          Effect.andThen(Deferred.succeed(started, undefined), Effect.never).pipe(
            Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined))
          )
        ))
        const call = yield* Effect.forkChild(client.request(text("slow")))
        yield* Deferred.await(started)
        yield* Fiber.interrupt(call)
        yield* Deferred.await(interrupted).pipe(Effect.timeout("5 seconds"))
        assert.strictEqual((yield* client.stats).openStreams, 0)
      }))

    it.live("a failing handler resets the stream: the caller gets a typed StreamError", () =>
      Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec)
        yield* Effect.forkScoped(server.serveRequests(() => Effect.fail("nope")))
        const error = yield* Effect.flip(client.request(text("x")))
        assert.strictEqual(error._tag, "StreamError")
        assert.strictEqual((error as any).reason._tag, "StreamReset")
      }))

    it.live("a reply larger than maxResponseBytes resets the stream instead of growing without bound", () =>
      Effect.gen(function*() {
        const { client, server } = yield* sessionPair(codec)
        yield* Effect.forkScoped(server.serveRequests(() => Effect.succeed(new Uint8Array(1024 * 1024))))
        const error = yield* Effect.flip(client.request(text("x"), { maxResponseBytes: 64 * 1024 }))
        assert.strictEqual(error._tag, "StreamError")
        assert.isAtMost((yield* client.stats).bufferedBytes, 0)
      }))
  })
}
