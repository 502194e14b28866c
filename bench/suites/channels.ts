/**
 * Channels over a WebSocket: messages one way over loopback, sender in the
 * bench process, receiver in a peer process (this same file, started as
 * `channels.ts peer <impl> <streams>` through `Child.spawn`).
 *
 * - `channel-64B`, `channel-1KiB`, `channel-64KiB`: one channel opened by
 *   the client on a `@plexus/transport-ws` connection running
 *   `Channels.make` at both ends (default windows); the receiver pulls the
 *   accepted channel. Baseline: plain `ws` at both ends with the same
 *   messages (`ws.send`, waiting for a send callback while `bufferedAmount`
 *   is above 1 MiB, like our write high-water mark; `'message'` events).
 * - `channels-100-vs-sockets`: 1 KiB messages spread over 100 channels of
 *   one connection, all sending at once, against 100 separate plain `ws`
 *   connections doing the same. The receiver's peak resident memory for
 *   each side is printed after the row.
 *
 * Each repetition is a fresh connection (or 100), timed from dialling until
 * the receiver reports (over IPC) that every stream ended after the
 * sender's close. The receiver checks delivery: message and byte counts and
 * a per-stream order-sensitive hash, summed over streams, compared with
 * what was sent.
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import type { Buffer } from "node:buffer"
import * as Url from "node:url"
import * as Child from "../harness/Child.ts"
import { makePool, messageHash } from "../harness/Payload.ts"
import { sendPlainWs } from "../harness/PlainWs.ts"
import type { Contest, Row, RunOptions, Suite } from "../harness/Suite.ts"

const HOST = "127.0.0.1"
const POOL = 64
const MAX_PAYLOAD = 1024 * 1024


type Impl = "plexus" | "ws"

// ---------------------------------------------------------------------------
// Peer side: receivers
// ---------------------------------------------------------------------------

/** What one receiver process has seen since its last report. */
class Receipt {
  count = 0
  bytes = 0
  hashSum = 0
  ended = 0
  peakRss = 0
  readonly streams: number
  constructor(streams: number) {
    this.streams = streams
  }
  /** Folds a finished stream in; reports once every expected stream has ended. */
  end(count: number, bytes: number, hash: number) {
    this.count += count
    this.bytes += bytes
    this.hashSum = (this.hashSum + hash) | 0
    this.peakRss = Math.max(this.peakRss, process.memoryUsage.rss())
    if (++this.ended < this.streams) return
    Child.report({ type: "received", count: this.count, bytes: this.bytes, hash: this.hashSum, rss: this.peakRss })
    this.count = this.bytes = this.hashSum = this.ended = this.peakRss = 0
  }
}

const runPeer = async (impl: Impl, streams: number) => {
  const receipt = new Receipt(streams)
  const sampler = setInterval(() => {
    if (receipt.ended > 0 || receipt.count > 0) receipt.peakRss = Math.max(receipt.peakRss, process.memoryUsage.rss())
  }, 20)
  sampler.unref()
  if (impl === "ws") {
    const { WebSocketServer } = await import("ws")
    const wss = new WebSocketServer({ host: HOST, port: 0, perMessageDeflate: false, maxPayload: MAX_PAYLOAD })
    wss.on("connection", (ws) => {
      let count = 0
      let bytes = 0
      let hash = 0
      ws.binaryType = "nodebuffer"
      ws.on("message", (data: Buffer) => {
        count++
        bytes += data.length
        hash = messageHash(hash, data)
      })
      ws.on("close", () => receipt.end(count, bytes, hash))
      ws.on("error", (error) => Child.report({ type: "error", message: String(error) }))
    })
    wss.on("listening", () => {
      const address = wss.address()
      Child.announce({ type: "ready", port: typeof address === "string" || address === null ? 0 : address.port })
    })
    return
  }
  const { NodeWs } = await import("@plexus/transport-ws")
  const { Channels } = await import("@plexus/core")
  const drain = (channel: import("@plexus/core").Channels.Channel) =>
    Effect.suspend(() => {
      let count = 0
      let bytes = 0
      let hash = 0
      const loop: Effect.Effect<void, unknown> = Effect.flatMap(channel.pull, (batch) => {
        for (let i = 0; i < batch.length; i++) {
          const m = batch[i]!
          count++
          bytes += m.length
          hash = messageHash(hash, m)
        }
        return loop
      })
      return Effect.catchCause(loop, (cause) =>
        Effect.sync(() => {
          if (Cause.hasFails(cause) && Cause.isDone(Cause.squash(cause))) receipt.end(count, bytes, hash)
          else Child.report({ type: "error", message: Cause.pretty(cause) })
        }))
    })
  const serve = (connection: import("@plexus/transport-ws").WsServer.Connection) =>
    Effect.scoped(Effect.gen(function*() {
      const transport = yield* connection.messages
      const channels = yield* Channels.make(transport, { role: "server", maxChannels: 4096 })
      for (let i = 0; i < streams; i++) {
        const channel = yield* channels.accept
        yield* Effect.forkScoped(drain(channel))
      }
      yield* channels.closed
    })).pipe(
      Effect.catchCause((cause) =>
        Effect.sync(() => {
          if (!Cause.hasInterruptsOnly(cause)) process.stderr.write(`channels peer: ${Cause.pretty(cause)}\n`)
        })
      )
    )
  Effect.runFork(Effect.scoped(Effect.gen(function*() {
    const server = yield* NodeWs.listen({ host: HOST, port: 0, maxPayload: MAX_PAYLOAD })
    Child.announce({ type: "ready", port: server.port })
    while (true) {
      const connection = yield* server.accept
      yield* Effect.forkDetach(Effect.ensuring(serve(connection), connection.close))
    }
  })).pipe(Effect.tapCause((cause) => Effect.sync(() => process.stderr.write(`channels peer: ${String(cause)}\n`)))))
}

// ---------------------------------------------------------------------------
// Bench side: senders
// ---------------------------------------------------------------------------

/** Sends `count` messages of `pool` on each of `streams` streams to `port`, then closes and waits for `received`. */
type Send = (
  port: number,
  pool: ReadonlyArray<Buffer>,
  streams: number,
  count: number,
  received: Promise<unknown>
) => Promise<void>

const sendWs: Send = async (port, pool, streams, count) => {
  await Promise.all(
    Array.from({ length: streams }, (_, offset) =>
      sendPlainWs(`ws://${HOST}:${port}/`, pool, count, { offset, maxPayload: MAX_PAYLOAD }))
  )
}

const sendPlexus: Send = async (port, pool, streams, count, received) => {
  const { NodeWs } = await import("@plexus/transport-ws")
  const { Channels } = await import("@plexus/core")
  await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const connection = yield* NodeWs.dial({ url: `ws://${HOST}:${port}/`, maxPayload: MAX_PAYLOAD })
    const transport = yield* connection.messages
    const channels = yield* Channels.make(transport, { role: "client", maxChannels: 4096 })
    yield* Effect.forEach(
      Array.from({ length: streams }, (_, s) => s),
      (offset) =>
        Effect.scoped(Effect.gen(function*() {
          const channel = yield* channels.open()
          for (let i = 0; i < count; i++) yield* channel.send(pool[(offset + i) % pool.length]!)
          yield* channel.close
        })),
      { concurrency: "unbounded", discard: true }
    )
    yield* Effect.promise(() => received)
  })))
}

interface Expected {
  readonly count: number
  readonly bytes: number
  readonly hash: number
}

const expectedOf = (pool: ReadonlyArray<Buffer>, streams: number, count: number): Expected => {
  let bytes = 0
  let hashSum = 0
  for (let s = 0; s < streams; s++) {
    let hash = 0
    for (let i = 0; i < count; i++) {
      const m = pool[(s + i) % pool.length]!
      bytes += m.length
      hash = messageHash(hash, m)
    }
    hashSum = (hashSum + hash) | 0
  }
  return { count: streams * count, bytes, hash: hashSum }
}

/** Spawns a receiver; answers one timed transfer (messages/s) and how to stop it. */
const transfer = async (impl: Impl, streams: number, send: Send) => {
  const { peer, announcement } = await Child.spawn("../suites/channels.ts", ["peer", impl, String(streams)])
  const port = announcement.port as number
  const rss: Array<number> = []
  const once = async (pool: ReadonlyArray<Buffer>, count: number, expected: Expected): Promise<number> => {
    const started = performance.now()
    const received = peer.next()
    received.catch(() => {}) // a failed send is the error reported
    await send(port, pool, streams, count, received)
    const report = await received
    const seconds = (performance.now() - started) / 1000
    if (report.type !== "received") throw new Error(`${impl} receiver: ${String(report.message ?? report.type)}`)
    if (report.count !== expected.count || report.bytes !== expected.bytes) {
      throw new Error(
        `${impl} receiver got ${String(report.count)} of ${expected.count} messages, ${
          String(report.bytes)
        } of ${expected.bytes} bytes`
      )
    }
    if (report.hash !== expected.hash) throw new Error(`${impl} receiver: checksum mismatch`)
    rss.push(report.rss as number)
    return expected.count / seconds
  }
  return { once, rss, close: () => peer.kill() }
}

const MiB = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`

const contest = (size: number, streams: number, full: number, quick: number) => async (options: RunOptions): Promise<Contest> => {
  const pool = makePool(POOL, size)
  const total = options.quick ? quick : full
  const count = Math.ceil(total / streams)
  const expected = expectedOf(pool, streams, count)
  const subject = await transfer("plexus", streams, sendPlexus)
  const baseline = await transfer("ws", streams, sendWs).catch(async (error: unknown) => {
    await subject.close()
    throw error
  })
  return {
    subject: () => subject.once(pool, count, expected),
    baseline: () => baseline.once(pool, count, expected),
    close: async () => {
      if (streams > 1 && subject.rss.length > 0 && baseline.rss.length > 0) {
        const peak = (xs: ReadonlyArray<number>) => Math.max(...xs)
        process.stderr.write(
          `  receiver peak RSS: channels ${MiB(peak(subject.rss))}, separate sockets ${MiB(peak(baseline.rss))}\n`
        )
      }
      await Promise.all([subject.close(), baseline.close()])
    }
  }
}

const rows: ReadonlyArray<Row> = [
  {
    name: "channel-64B",
    unit: "msg/s",
    baseline: "plain ws",
    description: "64 B messages one way over one channel (Channels over @plexus/transport-ws at both ends)",
    setup: contest(64, 1, 600_000, 60_000)
  },
  {
    name: "channel-1KiB",
    unit: "msg/s",
    baseline: "plain ws",
    goal: ">= 0.9",
    description: "1 KiB messages one way over one channel (Channels over @plexus/transport-ws at both ends)",
    setup: contest(1024, 1, 400_000, 40_000)
  },
  {
    name: "channel-64KiB",
    unit: "msg/s",
    baseline: "plain ws",
    description: "64 KiB messages one way over one channel (Channels over @plexus/transport-ws at both ends)",
    setup: contest(64 * 1024, 1, 8_000, 1_000)
  },
  {
    name: "channels-100-vs-sockets",
    unit: "msg/s",
    baseline: "100 plain ws sockets",
    description: "1 KiB messages over 100 channels of one connection, all at once, vs 100 separate plain ws connections",
    setup: contest(1024, 100, 400_000, 40_000)
  }
]

export const suite: Suite = { group: "channels", rows }

// Started as a peer: `channels.ts peer <impl> <streams>`.
if (process.argv[1] !== undefined && Url.pathToFileURL(process.argv[1]).href === import.meta.url &&
  process.argv[2] === "peer") {
  await runPeer(process.argv[3] as Impl, Number(process.argv[4]))
}
