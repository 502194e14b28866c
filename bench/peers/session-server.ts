/**
 * Bench peer: the server end of the session suite, started as
 * `session-server.ts <impl> <mode> [expectStreams]`. It listens on an
 * ephemeral 127.0.0.1 port and announces `{ type: "ready", port }`.
 *
 * Implementations (`impl`):
 * - `plexus`, `yamux`: `@plexus/transport-tcp` `Tcp.listen`, a
 *   `@plexus/core` `Session` per connection with that codec (keepalive off,
 *   stream limits raised for the 1,000-stream rows), streams served by
 *   `session.run` as a user's server would;
 * - `libp2p`: `@chainsafe/libp2p-yamux` 8 over `node:net` through the
 *   interop adapter `packages/transport-tcp/test/fixtures/libp2pYamux.ts`
 *   (`enableKeepAlive: false`, stream limits raised), inbound streams read
 *   in push mode (`onData`); mode `reqresp` only;
 * - `raw`: `node:net`, one connection per request (mode `reqresp` only).
 *
 * Modes:
 * - `sink`: every stream is read to its end (the peer's FIN) through its
 *   `reader` (a Socket reader: fresh memory for every chunk), then
 *   half-closed from this side. When `expectStreams` streams of one session
 *   have ended, the peer reports `{ type: "received", bytes, streams }` and
 *   starts counting again.
 * - `sink-into`: the same, each stream read with `readInto` into one reused
 *   64 KiB buffer, the way a bulk receiver that needs no chunks kept reads.
 * - `reqresp`: every stream (raw: every connection) reads a 1 KiB request,
 *   answers 1 KiB and half-closes.
 */
import * as Effect from "effect/Effect"
import type * as Socket from "effect/socket/Socket"
import type { MuxStream } from "@plexus/core"
import { Buffer } from "node:buffer"
import * as Net from "node:net"
import { announce, report } from "../harness/Child.ts"

const HOST = "127.0.0.1"
const REQUEST_SIZE = 1024
const RESPONSE = Buffer.alloc(1024, 0x72)

/** Stream limits high enough for every row; the sessions' defaults are 1000 and 256. */
const SESSION_LIMITS = {
  maxInboundStreams: 20_000,
  maxOutboundStreams: 20_000,
  acceptBacklog: 20_000
} as const

/** libp2p-yamux's defaults are 1,000 streams each way. */
const LIBP2P_LIMITS = { maxInboundStreams: 20_000, maxOutboundStreams: 20_000 } as const

const [impl, mode, expectArg] = process.argv.slice(2)
const expectStreams = Number(expectArg ?? "1")

const fail = (message: string): never => {
  process.stderr.write(`session-server: ${message}\n`)
  process.exit(2)
}

if (mode !== "sink" && mode !== "sink-into" && mode !== "reqresp") {
  fail(`unknown mode ${JSON.stringify(mode)} (sink | sink-into | reqresp)`)
}

/** Counts streams that ended and their bytes, per session. */
const makeCounter = () => {
  let bytes = 0
  let streams = 0
  return {
    add: (n: number) => {
      bytes += n
    },
    ended: () => {
      if (++streams === expectStreams) {
        report({ type: "received", bytes, streams })
        bytes = 0
        streams = 0
      }
    }
  }
}

// ---------------------------------------------------------------------------
// plexus Session (either codec)
// ---------------------------------------------------------------------------

const serveSession = async (codec: "plexus" | "yamux") => {
  const { Tcp } = await import("@plexus/transport-tcp")
  const { MuxStream: Mux, Session, Transport } = await import("@plexus/core")

  /** Reads to the peer's FIN; answers the byte count. */
  const drain = (stream: Socket.Socket, onBytes: (n: number) => void) =>
    Effect.scoped(Effect.gen(function*() {
      const reader = yield* stream.reader
      while (true) {
        const result = yield* Effect.result(reader.pull)
        if (result._tag === "Failure") {
          if (Transport.isCleanClose(result.failure)) return
          return yield* Effect.fail(result.failure)
        }
        const batch = result.success
        for (let i = 0; i < batch.length; i++) onBytes(batch[i].length)
      }
    }))

  /** Reads to the peer's FIN into one reused buffer. */
  const drainInto = (stream: MuxStream.MuxStream, onBytes: (n: number) => void) =>
    Effect.suspend(() => {
      const target = new Uint8Array(64 * 1024)
      const loop: Effect.Effect<void, Socket.SocketError> = Effect.flatMap(stream.readInto(target), (n) => {
        if (n === 0) return Effect.void
        onBytes(n)
        return loop
      })
      return loop
    })

  const handler = (counter: ReturnType<typeof makeCounter>) => (stream: Socket.Socket) =>
    Effect.andThen(
      // session.run hands streams over as Sockets; each one is a MuxStream.
      mode === "sink-into" && Mux.isMuxStream(stream) ? drainInto(stream, counter.add) : drain(stream, counter.add),
      // Half-close our side too, so the stream finishes cleanly both ways.
      Effect.scoped(Effect.flatMap(stream.writer, () => Effect.sync(counter.ended)))
    )

  Effect.runFork(
    Effect.scoped(Effect.gen(function*() {
      const server = yield* Tcp.listen({ host: HOST, port: 0 })
      announce({ type: "ready", port: server.port })
      return yield* server.run((socket) =>
        Effect.scoped(Effect.gen(function*() {
          const session = yield* Session.make(socket, { role: "server", codec, keepAlive: false, ...SESSION_LIMITS })
          const counter = makeCounter()
          yield* Effect.forkScoped(
            mode === "reqresp"
              // The other side of session.request: collect, answer, half-close.
              ? session.serveRequests((request) =>
                request.length === REQUEST_SIZE
                  ? Effect.succeed(RESPONSE)
                  : Effect.die(new Error(`request of ${request.length} bytes`)))
              : session.run(handler(counter))
          )
          yield* session.closed.pipe(Effect.ignore)
        }))
      )
    })).pipe(Effect.tapCause((cause) => Effect.sync(() => process.stderr.write(`session-server: ${String(cause)}\n`))))
  )
}

// ---------------------------------------------------------------------------
// @chainsafe/libp2p-yamux
// ---------------------------------------------------------------------------

const serveLibp2p = async () => {
  if (mode !== "reqresp") fail("libp2p serves reqresp only")
  const { Libp2pYamux } = await import("../../packages/transport-tcp/test/fixtures/libp2pYamux.ts")
  const server = Net.createServer({ noDelay: true, allowHalfOpen: true }, (socket) => {
    socket.on("error", () => {})
    const peer = Libp2pYamux.wrap(socket, "server", { enableKeepAlive: false, ...LIBP2P_LIMITS })
    peer.onStream((stream) => {
      let got = 0
      let answered = false
      stream.onData((chunk) => {
        got += chunk.byteLength
        if (!answered && got >= REQUEST_SIZE) {
          answered = true
          stream.write(RESPONSE)
          stream.closeWrite().catch(() => {})
        }
      })
      stream.onEnd(() => {})
    })
  })
  server.listen({ host: HOST, port: 0 }, () => {
    announce({ type: "ready", port: (server.address() as Net.AddressInfo).port })
  })
}

// ---------------------------------------------------------------------------
// raw node:net, a connection per request
// ---------------------------------------------------------------------------

const serveRaw = () => {
  if (mode !== "reqresp") fail("raw serves reqresp only (tcp-sink.ts is the raw sink)")
  const server = Net.createServer({ noDelay: true, allowHalfOpen: true }, (socket) => {
    let got = 0
    let answered = false
    socket.on("data", (chunk: Buffer) => {
      got += chunk.length
      if (!answered && got >= REQUEST_SIZE) {
        answered = true
        socket.end(RESPONSE)
      }
    })
    socket.on("end", () => {
      if (!answered) socket.end()
    })
    socket.on("error", () => {})
  })
  server.listen({ host: HOST, port: 0, backlog: 1024 }, () => {
    announce({ type: "ready", port: (server.address() as Net.AddressInfo).port })
  })
}

switch (impl) {
  case "plexus":
  case "yamux":
    await serveSession(impl)
    break
  case "libp2p":
    await serveLibp2p()
    break
  case "raw":
    serveRaw()
    break
  default:
    fail(`unknown implementation ${JSON.stringify(impl)} (plexus | yamux | libp2p | raw)`)
}
