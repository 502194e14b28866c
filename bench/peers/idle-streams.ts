/**
 * Bench peer: memory per idle open stream, started as
 * `idle-streams.ts <impl>`. It announces `{ type: "ready" }`, then answers
 * every `{ type: "measure", count }` with one measurement, each over a new
 * connection and new muxers (torn down afterwards), so the process start
 * and the JIT are paid once.
 *
 * Both ends run in this process over one loopback TCP connection, so the
 * figure covers both: the opener's stream objects and the acceptor's. After
 * a warm-up (100 streams opened, accepted and dropped, so code and caches
 * exist before the first sample), a full GC, `heapUsed` is sampled; then
 * `count` streams are opened and all of them accepted, nothing written,
 * every stream held; a full GC and a second sample. The peer reports
 * `{ type: "result", bytesPerStream, externalPerStream }` with
 * (after - before) / count.
 *
 * Implementations: `plexus` and `yamux` (a `@plexus/core` `Session` with
 * that codec, stream limits and backlog raised to fit, keepalive off; what
 * is held is each `MuxStream` and its scope's finalizer) and `libp2p`
 * (`@chainsafe/libp2p-yamux` 8, limits raised, keepalive off; what is held
 * is each libp2p stream).
 */
import * as Effect from "effect/Effect"
import * as Net from "node:net"
import { announce, onMessage, report } from "../harness/Child.ts"
import * as Gc from "../harness/Gc.ts"

const HOST = "127.0.0.1"
const WARMUP = 100

const impl = process.argv[2]

// Loaded before the first measurement, so that it measures streams, not module loading.
const { Tcp } = await import("@plexus/transport-tcp")
const { Session } = await import("@plexus/core")
const { yamux } = await import("@chainsafe/libp2p-yamux")
const { NetSocketConnection } = await import("../../packages/transport-tcp/test/fixtures/libp2pYamux.ts")

const sample = () => {
  // Twice: the first collection can leave finalizable garbage to the second.
  Gc.collect()
  Gc.collect()
  const m = process.memoryUsage()
  return { heap: m.heapUsed, external: m.external }
}

const settle = () => new Promise<void>((resolve) => setTimeout(resolve, 10))

type Sample = ReturnType<typeof sample>

const result = (count: number, before: Sample, after: Sample) => ({
  type: "result",
  bytesPerStream: (after.heap - before.heap) / count,
  externalPerStream: (after.external - before.external) / count
})

const measureSession = async (codec: "plexus" | "yamux", count: number) => {
  const limits = {
    maxInboundStreams: count + WARMUP,
    maxOutboundStreams: count + WARMUP,
    acceptBacklog: count + WARMUP,
    keepAlive: false
  } as const
  const accepted: Array<unknown> = []
  const waitAccepted = (n: number) =>
    Effect.promise(async () => {
      while (accepted.length < n) await settle()
      await settle()
    })
  return await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const server = yield* Tcp.listen({ host: HOST, port: 0 })
    yield* Effect.forkScoped(server.run((socket) =>
      Effect.scoped(Effect.gen(function*() {
        const session = yield* Session.make(socket, { role: "server", codec, ...limits })
        while (true) accepted.push(yield* session.accept)
      }))
    ))
    const socket = yield* Tcp.dial({ host: HOST, port: server.port, noDelay: true })
    const session = yield* Session.make(socket, { role: "client", codec, ...limits })
    // Warm-up: the same path, then dropped (reset) on both sides.
    yield* Effect.scoped(Effect.andThen(
      Effect.forEach(Array.from({ length: WARMUP }), () => session.open(), { discard: true }),
      waitAccepted(WARMUP)
    ))
    yield* Effect.promise(settle)
    accepted.length = 0
    const before = sample()
    const held = yield* Effect.forEach(Array.from({ length: count }), () => session.open())
    yield* waitAccepted(count)
    const after = sample()
    if (held.length !== count) throw new Error("not every stream opened")
    return result(count, before, after)
  })))
}

/**
 * libp2p-yamux over the interop adapter's socket connection
 * (`NetSocketConnection`), its muxers made directly so that what is held per
 * stream is libp2p's own stream object, as a libp2p application holds it
 * (the adapter's stream wrapper would add its own bytes).
 */
const measureLibp2p = async (count: number) => {
  const init = { enableKeepAlive: false, maxInboundStreams: count + WARMUP, maxOutboundStreams: count + WARMUP }
  type Stream = { abort: (error: Error) => void }
  const accepted: Array<Stream> = []
  const muxers: Array<{ abort: (error: Error) => void }> = []
  const server = Net.createServer({ noDelay: true, allowHalfOpen: true }, (socket) => {
    socket.on("error", () => {})
    const muxer = yamux(init)().createStreamMuxer(new NetSocketConnection(socket, "server"))
    muxers.push(muxer)
    muxer.addEventListener("stream", (event) => accepted.push(event.detail))
  })
  await new Promise<void>((resolve) => server.listen({ host: HOST, port: 0 }, resolve))
  const port = (server.address() as Net.AddressInfo).port
  const socket = Net.connect({ host: HOST, port, noDelay: true, allowHalfOpen: true })
  socket.on("error", () => {})
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve)
    socket.once("error", reject)
  })
  const client = yamux(init)().createStreamMuxer(new NetSocketConnection(socket, "client"))
  muxers.push(client)
  const waitAccepted = async (n: number) => {
    while (accepted.length < n) await settle()
    await settle()
  }
  const warm: Array<Stream> = []
  for (let i = 0; i < WARMUP; i++) warm.push(await client.createStream())
  await waitAccepted(WARMUP)
  for (const stream of warm) stream.abort(new Error("warm-up over"))
  await settle()
  accepted.length = 0
  warm.length = 0
  const before = sample()
  const held: Array<Stream> = []
  for (let i = 0; i < count; i++) held.push(await client.createStream())
  await waitAccepted(count)
  const after = sample()
  if (held.length !== count) throw new Error("not every stream opened")
  for (const muxer of muxers) muxer.abort(new Error("measured"))
  socket.destroy()
  server.close()
  return result(count, before, after)
}

const measure = (count: number) => {
  switch (impl) {
    case "plexus":
    case "yamux":
      return measureSession(impl, count)
    case "libp2p":
      return measureLibp2p(count)
    default:
      process.stderr.write(`idle-streams: unknown implementation ${JSON.stringify(impl)} (plexus | yamux | libp2p)\n`)
      return process.exit(2)
  }
}

// One measurement at a time, in the order asked.
let queue: Promise<unknown> = Promise.resolve()
onMessage((message) => {
  if (message.type !== "measure") return
  queue = queue.then(() => measure(message.count as number)).then(report, (error: unknown) =>
    report({ type: "error", message: error instanceof Error ? error.stack ?? error.message : String(error) }))
})
announce({ type: "ready" })
