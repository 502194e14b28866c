/**
 * Session: plexus's stream multiplexer (`@plexus/core` `Session` over
 * `@plexus/transport-tcp`) against raw `node:net`, our own TCP transport
 * and `@chainsafe/libp2p-yamux`, over loopback TCP. The client runs in
 * this process, the server in a peer process (`bench/peers/session-server.ts`,
 * `bench/peers/tcp-sink.ts`), as over a real network; each repetition is a
 * fresh connection (and session), whose set-up is inside the measured time
 * on both sides. Sessions run with keepalive off and stream limits raised
 * (`SESSION_LIMITS`), libp2p-yamux with `enableKeepAlive: false`.
 *
 * Bulk rows stop the clock when the receiver reports (over IPC) that every
 * byte of every stream arrived. Request rows stop it when the last response
 * was read to its end.
 *
 * `idle-stream-bytes` runs both ends of one connection in a peer process
 * (`bench/peers/idle-streams.ts`, one per implementation, new connection and
 * muxers for every measurement) and reports the growth of the V8 heap
 * (`heapUsed` after a full GC, both ends together) per idle open stream.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { Buffer } from "node:buffer"
import * as Net from "node:net"
import { Session } from "@plexus/core"
import { Tcp } from "@plexus/transport-tcp"
import * as Child from "../harness/Child.ts"
import * as RawTcp from "../harness/RawTcp.ts"
import type { Contest, Row, RunOptions, Suite } from "../harness/Suite.ts"

const HOST = "127.0.0.1"
const WRITE_SIZE = 64 * 1024
const MiB = 2 ** 20
const REQUEST = Buffer.alloc(1024, 0x71)
const RESPONSE_SIZE = 1024

/** The same raised limits as the server peer: the defaults are 1000 streams and a backlog of 256. */
const SESSION_LIMITS = {
  maxInboundStreams: 20_000,
  maxOutboundStreams: 20_000,
  acceptBacklog: 20_000
} as const

const chunk = Buffer.alloc(WRITE_SIZE, 0x5a)

/** Sizes per mode; quick mode shrinks every load so the smoke run stays in seconds. */
const sizes = (quick: boolean) => ({
  singleBytes: quick ? 32 * MiB : 2 ** 30,
  concurrentStreams: quick ? 32 : 1000,
  concurrentStreamBytes: MiB,
  requests: quick ? 400 : 20_000,
  requestConcurrency: 64,
  idleStreams: quick ? 300 : 10_000
})

// ---------------------------------------------------------------------------
// Peers and timing
// ---------------------------------------------------------------------------

type Peer = Awaited<ReturnType<typeof Child.spawn>>["peer"]

/** Starts a peer; answers it and the port it announced. */
const start = async (script: string, args: ReadonlyArray<string>) => {
  const { peer, announcement } = await Child.spawn(script, args)
  if (announcement.type !== "ready") throw new Error(`${script}: ${String(announcement.message ?? announcement.type)}`)
  return { peer, port: announcement.port as number }
}

/**
 * Sends `total` bytes to a receiver peer that reports when they arrived.
 * `received` settles with that report; a sender that owns its connection
 * through a scope keeps it open until then.
 */
type Send = (port: number, received: Promise<unknown>) => Promise<void>

/**
 * One timed bulk transfer, in MB/s (10^6 bytes per second): from the start
 * of `send` until the receiver's report, which must count `total` bytes.
 */
const timedTransfer = async (
  what: string,
  receiver: { readonly peer: Peer; readonly port: number },
  total: number,
  send: Send
): Promise<number> => {
  const started = performance.now()
  let finished = 0
  const received = receiver.peer.next().then((report) => {
    finished = performance.now()
    return report
  })
  received.catch(() => {}) // a failed send is the error reported
  await send(receiver.port, received)
  const report = await received
  if (report.type !== "received") throw new Error(`${what} receiver: ${String(report.message ?? report.type)}`)
  if (report.bytes !== total) throw new Error(`${what} receiver got ${String(report.bytes)} of ${total} bytes`)
  return total / ((finished - started) / 1000) / 1e6
}

// ---------------------------------------------------------------------------
// Senders
// ---------------------------------------------------------------------------

/** Raw `node:net`: write until `write()` answers false, then wait for `'drain'`. */
const sendRaw = (total: number): Send => (port) => RawTcp.sendRaw(port, total, chunk)

/** Our TCP transport without a session: `Tcp.dial` + `writer.write`, as in `transport/tcp-1GiB`. */
const sendTcp = (total: number): Send => (port, received) =>
  Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const socket = yield* Tcp.dial({ host: HOST, port, noDelay: true })
    yield* socket.reader
    yield* Effect.scoped(Effect.gen(function*() {
      const writer = yield* socket.writer
      for (let sent = 0; sent < total; sent += WRITE_SIZE) yield* writer.write(chunk)
    }))
    yield* Effect.promise(() => received)
  })))

/** A client session over a fresh TCP connection, for the duration of `use`. */
const withSession = <A, E>(
  port: number,
  codec: Session.Codec,
  use: (session: Session.Session) => Effect.Effect<A, E, Scope.Scope>
): Promise<A> =>
  Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const socket = yield* Tcp.dial({ host: HOST, port, noDelay: true })
    const session = yield* Session.make(socket, { role: "client", codec, keepAlive: false, ...SESSION_LIMITS })
    return yield* use(session)
  })))

/**
 * `streams` streams of one session, each writing `perStream` bytes in 64 KiB
 * writes and half-closing (the writer's scope), all at once.
 */
const sendSession = (codec: Session.Codec, streams: number, perStream: number): Send => (port, received) =>
  withSession(port, codec, (session) =>
    Effect.andThen(
      Effect.forEach(
        Array.from({ length: streams }),
        () =>
          Effect.scoped(Effect.gen(function*() {
            const stream = yield* session.open()
            const writer = yield* stream.writer
            for (let sent = 0; sent < perStream; sent += WRITE_SIZE) yield* writer.write(chunk)
          })),
        { concurrency: "unbounded", discard: true }
      ),
      Effect.promise(() => received)
    )).then(() => undefined)

// ---------------------------------------------------------------------------
// Requests: open + 1 KiB request + 1 KiB response + close
// ---------------------------------------------------------------------------

/**
 * `total` requests at `concurrency`, each on a new stream of one session
 * through `session.request`: open, write the request and half-close, read
 * the response to its end.
 * Answers streams per second.
 */
const sessionRequests = (codec: Session.Codec, total: number, concurrency: number) => (port: number) => {
  const started = performance.now()
  return withSession(port, codec, (session) => {
    // session.request: open, send and half-close, collect the reply to its end.
    const one = Effect.flatMap(session.request(REQUEST), (reply) =>
      reply.length === RESPONSE_SIZE ? Effect.void : Effect.die(new Error(`response of ${reply.length} bytes`)))
    let remaining = total
    const worker = Effect.whileLoop({
      while: () => remaining > 0,
      body: () => {
        remaining--
        return one
      },
      step: () => {}
    })
    return Effect.forEach(Array.from({ length: concurrency }), () => worker, {
      concurrency: "unbounded",
      discard: true
    })
  }).then(() => total / ((performance.now() - started) / 1000))
}

/** One request on a fresh raw `node:net` connection: connect, write, half-close, read to the end, close. */
const rawRequest = (port: number): Promise<void> =>
  new Promise<void>((resolve, reject) => {
    const socket = Net.connect({ host: HOST, port, noDelay: true })
    let bytes = 0
    socket.on("data", (data: Buffer) => {
      bytes += data.length
    })
    socket.once("connect", () => socket.end(REQUEST))
    socket.once("error", reject)
    socket.once("close", () => {
      if (bytes === RESPONSE_SIZE) resolve()
      else reject(new Error(`response of ${bytes} bytes`))
    })
  })

/** `total` requests at `concurrency`, a new TCP connection each. Answers requests per second. */
const rawRequests = (total: number, concurrency: number) => async (port: number) => {
  const started = performance.now()
  let remaining = total
  const worker = async () => {
    while (remaining > 0) {
      remaining--
      await rawRequest(port)
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return total / ((performance.now() - started) / 1000)
}

/** libp2p-yamux's defaults are 1,000 streams each way; keepalive off as on our side. */
const LIBP2P_OPTIONS = { enableKeepAlive: false, maxInboundStreams: 20_000, maxOutboundStreams: 20_000 } as const

/**
 * The same requests over `@chainsafe/libp2p-yamux` on one fresh `node:net`
 * connection, through the interop adapter
 * (`packages/transport-tcp/test/fixtures/libp2pYamux.ts`): open, write the
 * request, half-close, read the response to its end. Answers streams per
 * second.
 */
const libp2pRequests = (total: number, concurrency: number) => async (port: number) => {
  const { Libp2pYamux } = await import("../../packages/transport-tcp/test/fixtures/libp2pYamux.ts")
  const started = performance.now()
  const socket = Net.connect({ host: HOST, port, noDelay: true, allowHalfOpen: true })
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve)
    socket.once("error", reject)
  })
  const peer = Libp2pYamux.wrap(socket, "client", LIBP2P_OPTIONS)
  try {
    let remaining = total
    const worker = async () => {
      while (remaining > 0) {
        remaining--
        const stream = await peer.open()
        stream.write(REQUEST)
        await stream.closeWrite()
        const response = await stream.readAll()
        if (response.length !== RESPONSE_SIZE) throw new Error(`response of ${response.length} bytes`)
      }
    }
    await Promise.all(Array.from({ length: concurrency }, worker))
    return total / ((performance.now() - started) / 1000)
  } finally {
    peer.abort()
    socket.destroy()
  }
}

// ---------------------------------------------------------------------------
// Idle streams
// ---------------------------------------------------------------------------

/** A long-lived `idle-streams.ts` peer; each call is one measurement in bytes per idle stream. */
const idleMeter = async (impl: string) => {
  const { peer } = await Child.spawn("idle-streams.ts", [impl])
  return {
    peer,
    measure: async (count: number): Promise<number> => {
      const answer = await peer.request({ type: "measure", count }, 120_000)
      if (answer.type !== "result") throw new Error(`idle-streams ${impl}: ${String(answer.message ?? answer.type)}`)
      return answer.bytesPerStream as number
    }
  }
}

// ---------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------

/** Starts two peers at once; if either fails, stops the other. */
const startBoth = async <A extends { readonly peer: Peer }, B extends { readonly peer: Peer }>(
  a: () => Promise<A>,
  b: () => Promise<B>
): Promise<readonly [A, B]> => {
  const [first, second] = await Promise.allSettled([a(), b()])
  if (first.status === "fulfilled" && second.status === "fulfilled") return [first.value, second.value] as const
  if (first.status === "fulfilled") await first.value.peer.kill()
  if (second.status === "fulfilled") await second.value.peer.kill()
  throw first.status === "rejected" ? first.reason : (second as PromiseRejectedResult).reason
}

const closeAll = (...peers: ReadonlyArray<{ readonly peer: Peer }>) => async () => {
  await Promise.all(peers.map((p) => p.peer.kill()))
}

/** One session stream moving `singleBytes`, against a baseline sender to its own receiver. */
const singleStream = (
  options: RunOptions,
  sinkMode: "sink" | "sink-into",
  baselineReceiver: ReadonlyArray<string>,
  baselineSend: (total: number) => Send
): Promise<Contest> =>
  (async () => {
    const { singleBytes } = sizes(options.quick)
    const [subject, baseline] = await startBoth(
      () => start("session-server.ts", ["plexus", sinkMode, "1"]),
      () => start("tcp-sink.ts", baselineReceiver)
    )
    return {
      subject: () => timedTransfer("session", subject, singleBytes, sendSession("plexus", 1, singleBytes)),
      baseline: () => timedTransfer("baseline", baseline, singleBytes, baselineSend(singleBytes)),
      close: closeAll(subject, baseline)
    }
  })()

/** Stream-per-request over a session with `codec`, against the libp2p-yamux peer. */
const requestsVsYamux = (codec: Session.Codec) => async (options: RunOptions): Promise<Contest> => {
  const { requests, requestConcurrency } = sizes(options.quick)
  const [subject, baseline] = await startBoth(
    () => start("session-server.ts", [codec, "reqresp"]),
    () => start("session-server.ts", ["libp2p", "reqresp"])
  )
  const session = sessionRequests(codec, requests, requestConcurrency)
  const libp2p = libp2pRequests(requests, requestConcurrency)
  return {
    subject: () => session(subject.port),
    baseline: () => libp2p(baseline.port),
    close: closeAll(subject, baseline)
  }
}

const rows: Array<Row> = [
  {
    name: "single-stream-1GiB",
    unit: "MB/s",
    baseline: "raw node:net",
    goal: ">= 0.8",
    description:
      "one plexus-codec session stream moving 1 GiB in 64 KiB writes over loopback TCP, receiver in a peer reading with readInto into one reused 64 KiB buffer; baseline: node:net 'data' events",
    setup: (options) => singleStream(options, "sink-into", ["raw"], sendRaw)
  },
  {
    name: "single-stream-1GiB-reader",
    unit: "MB/s",
    baseline: "raw node:net",
    description:
      "the same, the stream read through its Socket reader (chunks in fresh memory, kept by the reader)",
    setup: (options) => singleStream(options, "sink", ["raw"], sendRaw)
  },
  {
    name: "single-stream-1GiB-vs-raw-onread",
    unit: "MB/s",
    baseline: "raw node:net reading into reused memory (onread)",
    description:
      "the readInto stream against raw node:net at its leanest: the receiver reads into one reused 64 KiB buffer through node's onread option",
    setup: (options) => singleStream(options, "sink-into", ["raw-onread"], sendRaw)
  },
  {
    name: "single-stream-1GiB-vs-plexus-tcp",
    unit: "MB/s",
    baseline: "@plexus/transport-tcp without a session",
    description: "the session stream read through its reader, against our own TCP transport alone read the same way: the session's own overhead",
    setup: (options) => singleStream(options, "sink", ["plexus"], sendTcp)
  },
  {
    name: "stream-per-request-vs-yamux",
    unit: "streams/s",
    baseline: "@chainsafe/libp2p-yamux 8",
    goal: ">= 3",
    description:
      "open + 1 KiB request + 1 KiB response + close, 20,000 at 64 in flight over one plexus-codec session; baseline: the same over libp2p-yamux, server in a peer too",
    setup: requestsVsYamux("plexus")
  },
  {
    name: "stream-per-request-yamux-codec-vs-yamux",
    unit: "streams/s",
    baseline: "@chainsafe/libp2p-yamux 8",
    description: "the same with our yamux codec (interop mode) instead of the plexus codec",
    setup: requestsVsYamux("yamux")
  },
  {
    name: "stream-per-request-vs-tcp",
    unit: "streams/s",
    baseline: "raw node:net, a connection per request",
    goal: ">= 2",
    description:
      "open + 1 KiB request + 1 KiB response + close, 20,000 at 64 in flight over one plexus-codec session; baseline: a new TCP connection per request",
    setup: async (options) => {
      const { requests, requestConcurrency } = sizes(options.quick)
      const [subject, baseline] = await startBoth(
        () => start("session-server.ts", ["plexus", "reqresp"]),
        () => start("session-server.ts", ["raw", "reqresp"])
      )
      const session = sessionRequests("plexus", requests, requestConcurrency)
      const raw = rawRequests(requests, requestConcurrency)
      return {
        subject: () => session(subject.port),
        baseline: () => raw(baseline.port),
        close: closeAll(subject, baseline)
      }
    }
  },
  {
    name: "concurrent-1000x1MiB",
    unit: "MB/s",
    baseline: "raw node:net, the same bytes over one connection",
    description: "1,000 streams of one plexus-codec session each moving 1 MiB at once (aggregate); baseline: 1000 MiB over one raw connection",
    setup: async (options) => {
      const { concurrentStreams, concurrentStreamBytes } = sizes(options.quick)
      const total = concurrentStreams * concurrentStreamBytes
      const [subject, baseline] = await startBoth(
        () => start("session-server.ts", ["plexus", "sink", String(concurrentStreams)]),
        () => start("tcp-sink.ts", ["raw"])
      )
      return {
        subject: () =>
          timedTransfer("session", subject, total, sendSession("plexus", concurrentStreams, concurrentStreamBytes)),
        baseline: () => timedTransfer("raw", baseline, total, sendRaw(total)),
        close: closeAll(subject, baseline)
      }
    }
  },
  {
    name: "idle-stream-bytes",
    unit: "B/stream",
    baseline: "@chainsafe/libp2p-yamux 8",
    better: "lower",
    // Each measurement already warms its own path up; a warm-up repetition adds nothing.
    warmup: 0,
    description:
      "V8 heap (heapUsed after GC) per idle open stream, 10,000 open, both ends in one process over loopback TCP; baseline: the same for libp2p-yamux (ratio < 1: we are leaner); target <= 2048 B (absolute, not a ratio goal)",
    setup: async (options) => {
      const { idleStreams } = sizes(options.quick)
      const [subject, baseline] = await startBoth(() => idleMeter("plexus"), () => idleMeter("libp2p"))
      return {
        subject: () => subject.measure(idleStreams),
        baseline: () => baseline.measure(idleStreams),
        close: closeAll(subject, baseline)
      }
    }
  }
]

export const suite: Suite = { group: "session", rows }
