/**
 * The transport conformance suite over the streams of a `Session` running
 * on a real TCP (and TLS) connection, for both codecs: a mux stream must
 * behave as a byte transport in its own right, whatever carries the session.
 */
import { assert, describe, it } from "@effect/vitest"
import { Session } from "@plexus/core"
import { patterned } from "@plexus/core/test/fixtures/Streams.ts"
import { transportSuite } from "@plexus/core/test/fixtures/TransportSuite.ts"
import * as Effect from "effect/Effect"
import { concat, maxBufferedWhileStalled, readToEnd, tcpHarness, tlsHarness } from "./helpers.ts"

const KiB = 1024

/** A stream's send buffer: its writer waits once this much is queued (Session `sendBufferSize` default). */
const SEND_BUFFER = 256 * KiB
/** A stream's receive window: the initial 256 KiB, never grown while the peer does not read (spec: Flow control). */
const WINDOW = 256 * KiB

/**
 * What a writer can get accepted while the peer's application never reads
 * its stream: the stream's send buffer, plus the peer's window (sent, and
 * held by the peer's session or still in the kernel), plus the connection's
 * own buffers (kernel send and receive buffers, the reader's high-water mark
 * and node's stream buffers: `maxBufferedWhileStalled` from helpers.ts),
 * which the session's control frames may also occupy.
 */
const streamBound = SEND_BUFFER + WINDOW + maxBufferedWhileStalled()

const transports = [
  { name: "tcp", connect: tcpHarness().connect },
  { name: "tls", connect: tlsHarness.connect }
] as const

for (const codec of ["yamux", "plexus"] as const) {
  for (const transport of transports) {
    for (const opener of ["client", "server"] as const) {
      transportSuite(`mux streams of a ${codec} session over ${transport.name}, opened by the ${opener}`, {
        connect: Effect.gen(function*() {
          const [dialed, accepted] = yield* transport.connect
          const client = yield* Session.make(dialed, { role: "client", codec })
          const server = yield* Session.make(accepted, { role: "server", codec })
          const [a, b] = opener === "client" ? [client, server] : [server, client]
          const opened = yield* a.open()
          const incoming = yield* b.accept
          return [opened, incoming] as const
        }),
        halfClose: true,
        maxBufferedWhileStalled: streamBound
      })
    }
  }
}

/**
 * Over plexus's TCP the session's decoder reads the connection's reused
 * memory: what a stream keeps must be copies, and a stream read with
 * `readInto` must still get every byte.
 */
describe("a session over TCP that reads the connection's reused memory", () => {
  for (const codec of ["yamux", "plexus"] as const) {
    it.live(`chunks a stream's reader kept stay intact while more frames arrive, on 8 streams at once (${codec})`, () =>
      Effect.gen(function*() {
        const [dialed, accepted] = yield* tcpHarness().connect
        const client = yield* Session.make(dialed, { role: "client", codec, keepAlive: false })
        const server = yield* Session.make(accepted, { role: "server", codec, keepAlive: false })
        const results = yield* Effect.forEach(Array.from({ length: 8 }, (_, i) => i), (i) =>
          Effect.scoped(Effect.gen(function*() {
            const payload = patterned(2 * 1024 * 1024 + i, i)
            const stream = yield* client.open()
            yield* Effect.forkScoped(Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(payload))))
            const peer = yield* server.accept
            if (i % 2 === 0) {
              // Kept chunks, from the reader, all held until the end.
              const { bytes: received } = yield* Effect.scoped(Effect.flatMap(peer.reader, ({ pull }) => readToEnd(pull)))
              return [received, payload] as const
            }
            const target = new Uint8Array(10_000)
            const parts: Array<Uint8Array> = []
            while (true) {
              const n = yield* peer.readInto(target)
              if (n === 0) break
              parts.push(target.slice(0, n))
            }
            return [concat(parts), payload] as const
          })), { concurrency: "unbounded" })
        for (const [received, payload] of results) assert.deepStrictEqual(received, payload)
      }).pipe(Effect.scoped))
  }
})
