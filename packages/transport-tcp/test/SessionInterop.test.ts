/**
 * Interop: a plexus `Session` with the `yamux` codec against a real
 * `@chainsafe/libp2p-yamux` 8 peer (fixtures/libp2pYamux.ts) over TCP on
 * 127.0.0.1, in both roles: ours dials (client) and libp2p accepts (server),
 * and the reverse. Every exchange is checked with SHA-256 of what was sent
 * against what arrived; every step is bounded so a failure ends the test with
 * the name of the step instead of hanging. No timing is asserted.
 */
import { assert, describe, it } from "@effect/vitest"
import { MuxStream, Session, Transport } from "@plexus/core"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import type * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import * as Crypto from "node:crypto"
import * as Net from "node:net"
import { Tcp } from "../src/index.ts"
import { type Libp2pYamuxOptions, type Libp2pYamuxPeer, type PeerStream, PeerStreamError, wrap } from "./fixtures/libp2pYamux.ts"
import { within } from "./helpers.ts"
import { readToEnd } from "@plexus/core/test/fixtures/Streams.ts"

const KiB = 1024
const MiB = 1024 * KiB
const TEST_TIMEOUT = 120_000

const text = (s: string) => new TextEncoder().encode(s)
const str = (b: Uint8Array) => new TextDecoder().decode(b)
const sha256 = (b: Uint8Array): string => Crypto.createHash("sha256").update(b).digest("hex")

// ---------------------------------------------------------------------------
// Pairs: our Session on one end of a TCP connection, libp2p on the other
// ---------------------------------------------------------------------------

interface PairOptions {
  readonly session?: Partial<Omit<Session.Options, "role" | "codec">>
  readonly peer?: Libp2pYamuxOptions
}

interface Pair {
  readonly session: Session.Session
  readonly peer: Libp2pYamuxPeer
}

/** A libp2p peer on a `node:net` socket, destroyed (and the server closed) with the Scope. */
const libp2pListening = (options: Libp2pYamuxOptions | undefined) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly port: number; readonly server: Net.Server; readonly peer: Promise<Libp2pYamuxPeer> }>(
      (resume) => {
        let onPeer: (peer: Libp2pYamuxPeer) => void = () => {}
        const peer = new Promise<Libp2pYamuxPeer>((resolve) => (onPeer = resolve))
        const server = Net.createServer((socket) => {
          socket.setNoDelay(true)
          onPeer(wrap(socket, "server", options))
        })
        server.listen({ host: "127.0.0.1", port: 0 }, () => {
          resume(Effect.succeed({ port: (server.address() as Net.AddressInfo).port, server, peer }))
        })
      }
    ),
    ({ peer, server }) =>
      Effect.promise(async () => {
        server.close()
        const p = await Promise.race([peer, Promise.resolve(undefined)])
        p?.connection.socket.destroy()
      })
  )

const libp2pDialing = (port: number, options: Libp2pYamuxOptions | undefined) =>
  Effect.acquireRelease(
    Effect.callback<Libp2pYamuxPeer>((resume) => {
      const socket = Net.connect({ host: "127.0.0.1", port, noDelay: true }, () => {
        resume(Effect.succeed(wrap(socket, "client", options)))
      })
    }),
    (peer) => Effect.sync(() => peer.connection.socket.destroy())
  )

/**
 * Ours as `ours`, libp2p as the other role, connected over TCP. libp2p's
 * keepalive is on (its default): it pings at once. The pair is handed over
 * once that ping was answered, because libp2p treats an answer that arrives
 * after it stopped waiting (its `muxer.close()` stops the keepalive) as a
 * protocol error and resets the connection.
 */
const connect = (ours: "client" | "server", options: PairOptions = {}): Effect.Effect<Pair, unknown, Scope.Scope> =>
  Effect.gen(function*() {
    const sessionOptions = { ...options.session, codec: "yamux" as const }
    let pair: Pair
    if (ours === "client") {
      const { peer, port } = yield* libp2pListening(options.peer)
      const socket = yield* Tcp.dial({ port })
      const session = yield* Session.make(socket, { ...sessionOptions, role: "client" })
      pair = { session, peer: yield* Effect.promise(() => peer) }
    } else {
      const server = yield* Tcp.listen()
      const peer = yield* libp2pDialing(server.port, options.peer)
      const accepted = yield* server.accept
      const session = yield* Session.make(accepted.socket, { ...sessionOptions, role: "server" })
      pair = { session, peer }
    }
    // Joins libp2p's first keepalive ping (or sends one): our session answers it.
    yield* Effect.promise(() => pair.peer.ping())
    return pair
  }).pipe(within("connecting ours to libp2p"))

// ---------------------------------------------------------------------------
// Our side's stream helpers
// ---------------------------------------------------------------------------

/** Reads one of our streams to its clean end; fails with the stream's error otherwise. */
const readAll = (stream: Socket.Socket) => Effect.map(readToEnd(stream), (chunks) => Buffer.concat(chunks))

/** Reads to the clean end, hashing as it goes: the byte count and the SHA-256. */
const hashAll = (stream: Socket.Socket) =>
  Effect.gen(function*() {
    const reader = yield* stream.reader
    const hash = Crypto.createHash("sha256")
    let bytes = 0
    while (true) {
      const result = yield* Effect.result(reader.pull)
      if (result._tag === "Failure") {
        if (Transport.isCleanClose(result.failure)) return { bytes, sha256: hash.digest("hex") }
        return yield* Effect.fail(result.failure)
      }
      for (const chunk of result.success) {
        const b = typeof chunk === "string" ? text(chunk) : chunk
        hash.update(b)
        bytes += b.length
      }
    }
  }).pipe(Effect.scoped)

/** Writes the chunks, then half-closes (the writer's scope ends). */
const writeAndFin = (stream: Socket.Socket, chunks: ReadonlyArray<Uint8Array>) =>
  Effect.scoped(Effect.flatMap(stream.writer, (writer) => Effect.forEach(chunks, (c) => writer.write(c), { discard: true })))

/** Cuts a buffer into pieces of the given sizes, cycling. */
const pieces = (data: Uint8Array, sizes: ReadonlyArray<number>): Array<Uint8Array> => {
  const out: Array<Uint8Array> = []
  for (let at = 0, i = 0; at < data.length; i++) {
    const size = Math.min(sizes[i % sizes.length], data.length - at)
    out.push(data.subarray(at, at + size))
    at += size
  }
  return out
}

// ---------------------------------------------------------------------------
// libp2p's side
// ---------------------------------------------------------------------------

const promise = <A>(step: string, f: () => Promise<A>, seconds = 20) => Effect.promise(f).pipe(within(step, seconds))

/** Reads a libp2p stream to its end, hashing. */
const peerHashAll = async (stream: PeerStream) => {
  const hash = Crypto.createHash("sha256")
  let bytes = 0
  for (let chunk = await stream.read(); chunk !== undefined; chunk = await stream.read()) {
    hash.update(chunk)
    bytes += chunk.length
  }
  return { bytes, sha256: hash.digest("hex") }
}

/** libp2p request/response handler: reads the request to its end, answers its SHA-256 and half-closes. */
const peerAnswerWithDigest = (stream: PeerStream) => {
  void (async () => {
    const request = await stream.readAll()
    await stream.writeAll(Crypto.createHash("sha256").update(request).digest())
    await stream.closeWrite()
  })().catch(() => stream.reset())
}

const ROLES = ["client", "server"] as const

for (const ours of ROLES) {
  const theirs = ours === "client" ? "server" : "client"
  describe(`yamux interop: ours (${ours}) against @chainsafe/libp2p-yamux (${theirs}) over TCP`, () => {
    it.live("streams opened by either side carry data both ways", () =>
      Effect.gen(function*() {
        const { peer, session } = yield* connect(ours)

        // Ours opens, theirs accepts.
        const mine = yield* session.open()
        yield* writeAndFin(mine, [text("hello "), text("from plexus")])
        const atPeer = yield* promise("libp2p accepting our stream", () => peer.accept())
        assert.strictEqual(atPeer.id, mine.id)
        assert.strictEqual(mine.id % 2, ours === "client" ? 1 : 0)
        assert.strictEqual(str(yield* promise("libp2p reading our request", () => atPeer.readAll())), "hello from plexus")
        yield* promise("libp2p answering", async () => {
          await atPeer.writeAll([text("hello "), text("from libp2p")])
          await atPeer.closeWrite()
        })
        assert.strictEqual(str(yield* readAll(mine).pipe(within("reading libp2p's answer"))), "hello from libp2p")

        // Theirs opens, ours accepts.
        const yours = yield* promise("libp2p opening a stream", () => peer.open())
        yield* promise("libp2p writing its request", async () => {
          await yours.writeAll(text("request from libp2p"))
          await yours.closeWrite()
        })
        const accepted = yield* session.accept.pipe(within("accepting libp2p's stream"))
        assert.strictEqual(accepted.id, yours.id)
        assert.strictEqual(accepted.id % 2, ours === "client" ? 0 : 1)
        assert.isFalse(accepted.outbound)
        assert.strictEqual(str(yield* readAll(accepted).pipe(within("reading libp2p's request"))), "request from libp2p")
        yield* writeAndFin(accepted, [text("answer "), text("from plexus")])
        assert.strictEqual(str(yield* promise("libp2p reading our answer", () => yours.readAll())), "answer from plexus")

        // Pings work both ways (libp2p's keepalive also pinged at connect).
        yield* session.ping.pipe(within("our ping"))
        yield* promise("libp2p's ping", () => peer.ping())
      }), TEST_TIMEOUT)

    it.live("64 MiB each way on one stream, at the same time, arrive intact", () =>
      Effect.gen(function*() {
        const { peer, session } = yield* connect(ours)
        const size = 64 * MiB
        const ourData = Crypto.randomBytes(size)
        const theirData = Crypto.randomBytes(size)
        // The dialer opens the stream: ours in one role, libp2p in the other.
        let mine: MuxStream.MuxStream
        let atPeer: PeerStream
        if (ours === "client") {
          mine = yield* session.open()
          yield* mine.writer.pipe(Effect.flatMap((w) => w.write(ourData.subarray(0, 1))))
          atPeer = yield* promise("libp2p accepting", () => peer.accept())
        } else {
          atPeer = yield* promise("libp2p opening", () => peer.open())
          atPeer.write(theirData.subarray(0, 1))
          mine = yield* session.accept.pipe(within("accepting"))
        }
        const ourRest = ours === "client" ? ourData.subarray(1) : ourData
        const theirRest = ours === "client" ? theirData : theirData.subarray(1)

        const sending = Effect.gen(function*() {
          const writer = yield* mine.writer
          for (const piece of pieces(ourRest, [MiB, 100_000, 7, 64 * KiB, 3 * MiB])) yield* writer.write(piece)
        }).pipe(Effect.scoped)
        const receiving = hashAll(mine)
        const peerSending = Effect.promise(async () => {
          await atPeer.writeAll(pieces(theirRest, [64 * KiB, MiB, 13, 300_000]))
          await atPeer.closeWrite()
        })
        const peerReceiving = Effect.promise(() => peerHashAll(atPeer))

        const [, received, , peerReceived] = yield* Effect.all([sending, receiving, peerSending, peerReceiving], {
          concurrency: "unbounded"
        }).pipe(within("64 MiB each way", 90))
        assert.strictEqual(peerReceived.bytes, size, "libp2p received every byte")
        assert.strictEqual(peerReceived.sha256, sha256(ourData), "libp2p received our bytes intact")
        assert.strictEqual(received.bytes, size, "we received every byte")
        assert.strictEqual(received.sha256, sha256(theirData), "we received libp2p's bytes intact")
      }), TEST_TIMEOUT)

    it.live("half-close by ours: libp2p sees the end, and we still read its reply", () =>
      Effect.gen(function*() {
        const { peer, session } = yield* connect(ours)
        const request = Crypto.randomBytes(300 * KiB)
        const reply = Crypto.randomBytes(2 * MiB)
        const mine = yield* session.open()
        yield* writeAndFin(mine, pieces(request, [64 * KiB, 1000]))
        const atPeer = yield* promise("libp2p accepting", () => peer.accept())
        const got = yield* promise("libp2p reading to our FIN", () => atPeer.readAll())
        assert.strictEqual(sha256(got), sha256(request))
        assert.strictEqual(atPeer.raw.remoteWriteStatus, "closed", "libp2p took our FIN as the remote's write side closing")
        const replying = yield* Effect.forkChild(Effect.promise(async () => {
          await atPeer.writeAll(pieces(reply, [100_000]))
          await atPeer.closeWrite()
        }))
        const back = yield* readAll(mine).pipe(within("reading the reply after our half-close"))
        yield* Fiber.join(replying).pipe(within("libp2p replying after our FIN"))
        assert.strictEqual(back.length, reply.length)
        assert.strictEqual(sha256(back), sha256(reply))
      }), TEST_TIMEOUT)

    it.live("half-close by libp2p: we see the end, and libp2p still reads our reply", () =>
      Effect.gen(function*() {
        const { peer, session } = yield* connect(ours)
        const request = Crypto.randomBytes(300 * KiB)
        const reply = Crypto.randomBytes(2 * MiB)
        const yours = yield* promise("libp2p opening", () => peer.open())
        // More than the initial window: libp2p's writes wait for our reads.
        const requesting = yield* Effect.forkChild(Effect.promise(async () => {
          await yours.writeAll(pieces(request, [64 * KiB, 1000]))
          await yours.closeWrite()
        }))
        const accepted = yield* session.accept.pipe(within("accepting"))
        const got = yield* readAll(accepted).pipe(within("reading to libp2p's FIN"))
        yield* Fiber.join(requesting).pipe(within("libp2p writing and half-closing"))
        assert.strictEqual(sha256(got), sha256(request))
        const reading = yield* Effect.forkChild(Effect.promise(() => yours.readAll()))
        yield* writeAndFin(accepted, pieces(reply, [100_000]))
        const back = yield* Fiber.join(reading).pipe(within("libp2p reading our reply after its half-close"))
        assert.strictEqual(back.length, reply.length, "libp2p received every byte of the reply")
        assert.strictEqual(sha256(back), sha256(reply))
      }), TEST_TIMEOUT)

    it.live("a reply written and finished at once reaches a libp2p reader that half-closed first", () =>
      Effect.gen(function*() {
        // The request/response shape: libp2p writes, half-closes, then reads.
        // A reply larger than the initial window makes its last DATA frame
        // wait for libp2p's window update, by when our FIN is queued too: the
        // FIN is due with that last frame.
        const { peer, session } = yield* connect(ours)
        const reply = Crypto.randomBytes(300 * KiB)
        const yours = yield* promise("libp2p opening", () => peer.open())
        yield* promise("libp2p writing and half-closing", async () => {
          await yours.writeAll(text("ping"))
          await yours.closeWrite()
        })
        const accepted = yield* session.accept.pipe(within("accepting"))
        assert.strictEqual(str(yield* readAll(accepted).pipe(within("reading the request"))), "ping")
        const reading = yield* Effect.forkChild(Effect.promise(() => yours.readAll()))
        yield* writeAndFin(accepted, [reply])
        const back = yield* Fiber.join(reading).pipe(within("libp2p reading the reply"))
        assert.strictEqual(back.length, reply.length, "libp2p received every byte of the reply")
        assert.strictEqual(sha256(back), sha256(reply))
      }), TEST_TIMEOUT)

    it.live("libp2p's own async iterator receives every byte of what we send", () =>
      Effect.gen(function*() {
        // Real libp2p code reads with `for await (const chunk of stream)`,
        // which ends at the `remoteCloseWrite` event.
        const { peer, session } = yield* connect(ours)
        const data = Crypto.randomBytes(100 * KiB)
        // Iterate from the moment the stream arrives, as a libp2p handler does.
        const iterated = new Promise<Buffer>((resolve, reject) => {
          peer.muxer.addEventListener("stream", (event) => {
            const chunks: Array<Uint8Array> = []
            void (async () => {
              for await (const chunk of event.detail) chunks.push(chunk instanceof Uint8Array ? chunk : chunk.subarray())
              return Buffer.concat(chunks)
            })().then(resolve, reject)
          }, { once: true })
        })
        const mine = yield* session.open()
        yield* writeAndFin(mine, pieces(data, [10 * KiB, 333]))
        const received = yield* promise("libp2p iterating", () => iterated)
        assert.strictEqual(received.length, data.length)
        assert.strictEqual(sha256(received), sha256(data))
      }), TEST_TIMEOUT)

    it.live("a reset by ours fails libp2p's stream", () =>
      Effect.gen(function*() {
        const { peer, session } = yield* connect(ours)
        const mine = yield* session.open()
        yield* mine.writer.pipe(Effect.flatMap((w) => w.write(text("about to reset"))))
        const atPeer = yield* promise("libp2p accepting", () => peer.accept())
        const first = yield* promise("libp2p reading the first bytes", () => atPeer.read())
        assert.strictEqual(str(first!), "about to reset")
        const ended = yield* Effect.forkChild(Effect.promise(() =>
          atPeer.read().then((chunk) => ({ chunk }), (error: unknown) => ({ error }))
        ))
        yield* mine.reset()
        const result = yield* Fiber.join(ended).pipe(within("libp2p's read after our reset"))
        assert.isTrue("error" in result, "libp2p's read failed")
        const error = (result as { error: unknown }).error
        assert.instanceOf(error, PeerStreamError)
        assert.strictEqual((error as PeerStreamError).kind, "reset")
        assert.strictEqual(atPeer.raw.status, "reset")
        assert.isFalse(atPeer.write(text("too late")), "libp2p cannot write to a reset stream")
        // The session goes on.
        const next = yield* session.open()
        yield* writeAndFin(next, [text("still here")])
        const nextAtPeer = yield* promise("libp2p accepting the next stream", () => peer.accept())
        assert.strictEqual(str(yield* promise("libp2p reading", () => nextAtPeer.readAll())), "still here")
      }), TEST_TIMEOUT)

    it.live("a reset by libp2p fails our stream with a typed StreamReset", () =>
      Effect.gen(function*() {
        const { peer, session } = yield* connect(ours)
        const yours = yield* promise("libp2p opening", () => peer.open())
        yours.write(text("about to reset"))
        const accepted = yield* session.accept.pipe(within("accepting"))
        const reader = yield* accepted.reader
        const first = yield* reader.pull.pipe(within("reading the first bytes"))
        assert.strictEqual(str(Buffer.concat(first as ReadonlyArray<Uint8Array>)), "about to reset")
        const failing = yield* Effect.forkChild(Effect.flip(reader.pull))
        yours.reset()
        const error = yield* Fiber.join(failing).pipe(within("our pull after libp2p's reset"))
        const typed = MuxStream.streamError(error)
        assert.isDefined(typed, "the SocketError carries a StreamError")
        assert.strictEqual(typed!.reason._tag, "StreamReset")
        assert.isTrue((typed!.reason as { byPeer: boolean }).byPeer)
        // yamux's RST carries no code: it arrives as CANCEL.
        assert.strictEqual((typed!.reason as { code: number }).code, Session.Code.CANCEL)
        assert.isTrue(Transport.isAbruptClose(error))
        const writeError = yield* Effect.flip(Effect.flatMap(accepted.writer, (w) => w.write(text("too late"))))
        assert.strictEqual(MuxStream.streamError(writeError)?.reason._tag, "StreamReset")
      }), TEST_TIMEOUT)

    it.live("1,000 concurrent request/response streams opened by ours", () =>
      Effect.gen(function*() {
        const count = 1000
        const { peer, session } = yield* connect(ours, {
          peer: { maxInboundStreams: 2 * count, maxOutboundStreams: 2 * count }
        })
        peer.onStream(peerAnswerWithDigest)
        const results = yield* Effect.forEach(Array.from({ length: count }, (_, i) => i), (i) =>
          Effect.scoped(Effect.gen(function*() {
            const request = Crypto.randomBytes(512 + (i % 7) * 100)
            const stream = yield* session.open()
            yield* writeAndFin(stream, [request])
            const answer = yield* readAll(stream)
            return Buffer.compare(answer, Crypto.createHash("sha256").update(request).digest()) === 0
          })), { concurrency: "unbounded" }).pipe(within("1,000 streams", 60))
        assert.strictEqual(results.filter((ok) => ok).length, count, "every answer is the digest of its request")
        const stats = yield* session.stats
        assert.strictEqual(stats.resetsReceived, 0)
        assert.strictEqual(stats.resetsSent, 0)
      }), TEST_TIMEOUT)

    it.live("1,000 concurrent request/response streams opened by libp2p", () =>
      Effect.gen(function*() {
        const count = 1000
        const { peer, session } = yield* connect(ours, {
          peer: { maxInboundStreams: 2 * count, maxOutboundStreams: 2 * count }
        })
        // Our accept backlog is 256: a handler accepts continuously.
        yield* Effect.forkScoped(session.run((stream) =>
          Effect.gen(function*() {
            const request = yield* readAll(stream)
            yield* writeAndFin(stream, [Crypto.createHash("sha256").update(request).digest()])
          })
        ))
        const outcomes = yield* promise("1,000 libp2p streams", () =>
          Promise.all(Array.from({ length: count }, async (_, i) => {
            const request = Crypto.randomBytes(512 + (i % 7) * 100)
            const stream = await peer.open()
            await stream.writeAll(request)
            await stream.closeWrite()
            const answer = await stream.readAll()
            return Buffer.compare(answer, Crypto.createHash("sha256").update(request).digest()) === 0
          })), 60)
        assert.strictEqual(outcomes.filter((ok) => ok).length, count, "every answer is the digest of its request")
        const stats = yield* session.stats
        assert.strictEqual(stats.resetsReceived, 0)
        assert.strictEqual(stats.resetsSent, 0)
        assert.strictEqual(stats.refused, 0)
      }), TEST_TIMEOUT)

    it.live("thousands of request/response streams opened by libp2p in a row stay within our flood limit", () =>
      Effect.gen(function*() {
        // libp2p credits every DATA frame at once, before it reads the FIN
        // that follows: each of our answers draws a WINDOW_UPDATE that
        // arrives after the stream closed. Those were in flight, not a flood.
        const count = 3000
        const floodLimit = 200
        const { peer, session } = yield* connect(ours, {
          session: { floodLimit },
          peer: { maxInboundStreams: count, maxOutboundStreams: count }
        })
        yield* Effect.forkScoped(session.run((stream) =>
          Effect.gen(function*() {
            const request = yield* readAll(stream)
            yield* writeAndFin(stream, [Crypto.createHash("sha256").update(request).digest(), request])
          })
        ))
        const inFlight = 64
        let next = 0
        let good = 0
        const worker = async () => {
          while (next < count) {
            next++
            const request = Crypto.randomBytes(KiB)
            const stream = await peer.open()
            await stream.writeAll(request)
            await stream.closeWrite()
            const answer = await stream.readAll()
            const digest = Crypto.createHash("sha256").update(request).digest()
            if (answer.length === 32 + KiB && Buffer.compare(answer.subarray(0, 32), digest) === 0) good++
          }
        }
        yield* promise("3,000 libp2p streams, 64 at a time", () => Promise.all(Array.from({ length: inFlight }, worker)), 60)
        assert.strictEqual(good, count, "every answer carries the digest of its request")
        // Still alive: the late frames were ignored without ending the session.
        yield* session.ping.pipe(within("a ping after the streams"))
        const stats = yield* session.stats
        assert.strictEqual(stats.openStreams, 0)
        assert.strictEqual(stats.resetsSent, 0)
      }), TEST_TIMEOUT)

    it.live("closing ours sends a GO_AWAY that libp2p understands", () =>
      Effect.gen(function*() {
        const { peer, session } = yield* connect(ours)
        // One finished exchange first, so the session has history.
        const mine = yield* session.open()
        yield* writeAndFin(mine, [text("bye soon")])
        const atPeer = yield* promise("libp2p accepting", () => peer.accept())
        assert.strictEqual(str(yield* promise("libp2p reading", () => atPeer.readAll())), "bye soon")
        yield* promise("libp2p finishing", () => atPeer.closeWrite())
        yield* readAll(mine).pipe(within("reading libp2p's FIN"))

        yield* session.close({ drain: "5 seconds" }).pipe(within("closing our session"))
        yield* session.closed.pipe(within("our session ending"))
        yield* promise("libp2p's connection closing", () => peer.closed)
        assert.strictEqual(peer.remoteGoAway, 0, "libp2p received GO_AWAY with code 0 (normal termination)")
        assert.strictEqual(peer.status, "closed", "libp2p's muxer closed")
        const openAfter = yield* promise("libp2p opening after GO_AWAY", () =>
          peer.open().then(() => "opened", (error: Error) => error.name))
        assert.strictEqual(openAfter, "MuxerClosedError")
      }), TEST_TIMEOUT)

    it.live("closing ours with a stream still open: libp2p drops the stream at our GO_AWAY, we reset it at the drain deadline", () =>
      Effect.gen(function*() {
        const { peer, session } = yield* connect(ours)
        const mine = yield* session.open()
        yield* mine.writer.pipe(Effect.flatMap((w) => w.write(text("unfinished"))))
        const atPeer = yield* promise("libp2p accepting", () => peer.accept())
        assert.strictEqual(str((yield* promise("libp2p reading", () => atPeer.read()))!), "unfinished")
        const peerEnd = yield* Effect.forkChild(Effect.promise(() => atPeer.read().then(() => undefined, (e: unknown) => e)))
        yield* session.close({ drain: "300 millis" }).pipe(within("closing our session"))
        // libp2p's answer to GO_AWAY(0) closes its muxer at once: open
        // streams end without FIN or RST, so nothing finishes our side of them.
        const error = yield* Fiber.join(peerEnd).pipe(within("libp2p's stream ending"))
        assert.instanceOf(error, PeerStreamError)
        assert.strictEqual((error as PeerStreamError).kind, "closed")
        // Past the drain deadline we reset what was left, and ended without error.
        yield* session.closed.pipe(within("our session ending"))
        const ourError = MuxStream.streamError(yield* Effect.flip(readAll(mine)))
        assert.strictEqual(ourError?.reason._tag, "StreamReset")
        assert.isFalse((ourError?.reason as { byPeer: boolean }).byPeer)
        yield* promise("libp2p's connection closing", () => peer.closed)
      }), TEST_TIMEOUT)

    it.live("libp2p closing (GO_AWAY, then the socket) ends our session gracefully", () =>
      Effect.gen(function*() {
        const { peer, session } = yield* connect(ours)
        const yours = yield* promise("libp2p opening", () => peer.open())
        yield* promise("libp2p writing", async () => {
          await yours.writeAll(text("last words"))
          await yours.closeWrite()
        })
        const accepted = yield* session.accept.pipe(within("accepting"))
        assert.strictEqual(str(yield* readAll(accepted).pipe(within("reading"))), "last words")
        yield* writeAndFin(accepted, [text("ok")])
        assert.strictEqual(str(yield* promise("libp2p reading the reply", () => yours.readAll())), "ok")

        yield* promise("libp2p closing", () => peer.close())
        const exit = yield* Effect.exit(session.closed).pipe(within("our session ending"))
        assert.isTrue(Exit.isSuccess(exit), `our session ended gracefully, got ${String(exit)}`)
        const openError = yield* Effect.flip(session.open()).pipe(within("opening after libp2p went away"))
        assert.strictEqual(openError.reason._tag, "GoneAway")
        assert.isTrue((openError.reason as { byPeer: boolean }).byPeer)
      }), TEST_TIMEOUT)

    it.live("libp2p closing the connection under a stream we have not finished fails our session with GoneAway", () =>
      Effect.gen(function*() {
        const { peer, session } = yield* connect(ours)
        const yours = yield* promise("libp2p opening", () => peer.open())
        yours.write(text("question"))
        const accepted = yield* session.accept.pipe(within("accepting"))
        const reader = yield* accepted.reader
        assert.strictEqual(str(Buffer.concat((yield* reader.pull) as ReadonlyArray<Uint8Array>)), "question")
        // peer.close(): FIN on its streams, GO_AWAY(0), then the socket ends,
        // while our side of the stream is still open.
        yield* promise("libp2p closing", () => peer.close())
        const exit = yield* Effect.exit(session.closed).pipe(within("our session ending"))
        assert.isTrue(Exit.isFailure(exit), "our session failed")
        const failure = yield* Effect.flip(session.closed)
        assert.strictEqual(failure.reason._tag, "GoneAway")
        assert.isTrue((failure.reason as { byPeer: boolean }).byPeer)
        assert.strictEqual((failure.reason as { code: number }).code, Session.Code.NO_ERROR)
        const writeError = yield* Effect.flip(Effect.flatMap(accepted.writer, (w) => w.write(text("answer"))))
        assert.strictEqual(MuxStream.streamError(writeError)?.reason._tag, "SessionEnded")
      }), TEST_TIMEOUT)

    it.live("libp2p's GO_AWAY lets a stream in flight finish before our session ends", () =>
      Effect.gen(function*() {
        const { peer, session } = yield* connect(ours)
        const yours = yield* promise("libp2p opening", () => peer.open())
        yield* promise("libp2p writing", async () => {
          await yours.writeAll(text("question"))
        })
        const accepted = yield* session.accept.pipe(within("accepting"))
        const reader = yield* accepted.reader
        assert.strictEqual(str(Buffer.concat((yield* reader.pull) as ReadonlyArray<Uint8Array>)), "question")
        const replying = yield* Effect.forkChild(Effect.promise(() => yours.readAll()))
        // libp2p's muxer.close(): FIN on its streams, then GO_AWAY; the socket stays open.
        yield* promise("libp2p going away", () => peer.goAway())
        const end = yield* Effect.flip(reader.pull).pipe(within("our read seeing libp2p's FIN"))
        assert.isTrue(Transport.isCleanClose(end))
        yield* writeAndFin(accepted, [text("answer")])
        assert.strictEqual(str(yield* Fiber.join(replying).pipe(within("libp2p reading the answer"))), "answer")
        const exit = yield* Effect.exit(session.closed).pipe(within("our session ending"))
        assert.isTrue(Exit.isSuccess(exit), `our session ended gracefully, got ${String(exit)}`)
        yield* promise("libp2p's connection closing", () => peer.closed)
      }), TEST_TIMEOUT)
  })
}
