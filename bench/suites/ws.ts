/**
 * WebSocket: moving data one way over loopback, sender in the bench
 * process, receiver in a peer process (this same file, started as
 * `ws.ts peer <impl> <mode>` through `Child.spawn`).
 *
 * - `message-1KiB`: 1 KiB binary messages, one `send` per message, with
 *   `@plexus/transport-ws` at both ends (`NodeWs.dial` + the message view's
 *   `send`; `NodeWs.listen` + `accept` + the message view's `pull` loop).
 *   Baseline: plain `ws` at both ends (`ws.send`, waiting for a send
 *   callback while `bufferedAmount` is above 1 MiB, like our write
 *   high-water mark; `'message'` events).
 * - `bytes-64MiB`: 64 MiB in 64 KiB writes through the byte view
 *   (`connection.socket`), against plain `ws` sending 64 KiB messages.
 *
 * Each repetition is a fresh connection, timed from dialling until the
 * receiver reports (over IPC) that everything arrived after the sender's
 * close. The receiver checks delivery: message and byte counts and an
 * order-sensitive checksum of sampled words, compared with what was sent.
 * `bufferutil` is not installed: both sides pay the same masking in JS.
 */
import * as Effect from "effect/Effect"
import { Buffer } from "node:buffer"
import * as Url from "node:url"
import * as Child from "../harness/Child.ts"
import { makePool, messageHash } from "../harness/Payload.ts"
import { sendPlainWs } from "../harness/PlainWs.ts"
import type { Contest, Row, RunOptions, Suite } from "../harness/Suite.ts"

const HOST = "127.0.0.1"
const MESSAGE_SIZE = 1024
const POOL = 64
const FULL_MESSAGES = 400_000
const QUICK_MESSAGES = 40_000
const BYTES_WRITE = 64 * 1024
const FULL_BYTES = 64 * 2 ** 20
const QUICK_BYTES = 16 * 2 ** 20

type Mode = "messages" | "bytes"
type Impl = "plexus" | "ws"

// ---------------------------------------------------------------------------
// Checksums (both ends)
// ---------------------------------------------------------------------------

/** Byte stream hash, independent of chunking: every byte at an offset that is a multiple of 1 KiB. */
const bytesHash = (state: { h: number; offset: number }, chunk: Uint8Array): void => {
  let p = (MESSAGE_SIZE - (state.offset % MESSAGE_SIZE)) % MESSAGE_SIZE
  let h = state.h
  for (; p < chunk.length; p += MESSAGE_SIZE) h = (Math.imul(h, 31) + chunk[p]!) | 0
  state.h = h
  state.offset += chunk.length
}

// ---------------------------------------------------------------------------
// Peer side: receivers
// ---------------------------------------------------------------------------

interface Tally {
  count: number
  bytes: number
  hash: { h: number; offset: number }
}

const freshTally = (): Tally => ({ count: 0, bytes: 0, hash: { h: 0, offset: 0 } })

const onMessage = (mode: Mode, t: Tally, m: Uint8Array) => {
  t.count++
  t.bytes += m.length
  if (mode === "messages") t.hash.h = messageHash(t.hash.h, m)
  else bytesHash(t.hash, m)
}

const reportTally = (t: Tally) => Child.report({ type: "received", count: t.count, bytes: t.bytes, hash: t.hash.h })

const runPeer = async (impl: Impl, mode: Mode) => {
  if (impl === "ws") {
    const { WebSocketServer } = await import("ws")
    const wss = new WebSocketServer({ host: HOST, port: 0, perMessageDeflate: false, maxPayload: 1024 * 1024 })
    wss.on("connection", (ws) => {
      const t = freshTally()
      ws.binaryType = "nodebuffer"
      ws.on("message", (data: Buffer) => onMessage(mode, t, data))
      ws.on("close", () => reportTally(t))
      ws.on("error", (error) => Child.report({ type: "error", message: String(error) }))
    })
    wss.on("listening", () => {
      const address = wss.address()
      Child.announce({ type: "ready", port: typeof address === "string" || address === null ? 0 : address.port })
    })
    return
  }
  const { NodeWs } = await import("@plexus/transport-ws")
  const Cause = await import("effect/Cause")
  // The byte view ends with a SocketCloseError on the clean close; the message view with Done.
  const handleBytes = (connection: import("@plexus/transport-ws").WsServer.Connection) =>
    Effect.suspend(() => {
      const t = freshTally()
      return Effect.gen(function*() {
        const reader = yield* connection.socket.reader
        while (true) {
          const batch = yield* reader.pull
          for (let i = 0; i < batch.length; i++) {
            const c = batch[i]!
            onMessage(mode, t, typeof c === "string" ? Buffer.from(c) : c)
          }
        }
      }).pipe(
        Effect.scoped,
        Effect.catchReason("SocketError", "SocketCloseError", () => Effect.sync(() => reportTally(t))),
        Effect.catch((error) => Effect.sync(() => Child.report({ type: "error", message: String(error) })))
      )
    })
  // The message view ends with Done on the clean close: report there.
  const handleReporting = (connection: import("@plexus/transport-ws").WsServer.Connection) => {
    if (mode === "bytes") return handleBytes(connection)
    return Effect.suspend(() => {
      const t = freshTally()
      return Effect.gen(function*() {
        const transport = yield* connection.messages
        while (true) {
          const batch = yield* transport.pull
          for (let i = 0; i < batch.length; i++) onMessage(mode, t, batch[i]!)
        }
      }).pipe(
        Effect.scoped,
        Effect.catch((error) =>
          Effect.sync(() => {
            if (Cause.isDone(error)) reportTally(t)
            else Child.report({ type: "error", message: String(error) })
          })
        )
      )
    })
  }
  Effect.runFork(Effect.scoped(Effect.gen(function*() {
    const server = yield* NodeWs.listen({ host: HOST, port: 0 })
    Child.announce({ type: "ready", port: server.port })
    while (true) {
      const connection = yield* server.accept
      yield* Effect.forkDetach(Effect.ensuring(handleReporting(connection), connection.close))
    }
  })).pipe(Effect.tapCause((cause) => Effect.sync(() => process.stderr.write(`ws peer: ${String(cause)}\n`)))))
}

// ---------------------------------------------------------------------------
// Bench side: senders
// ---------------------------------------------------------------------------

/** Sends `count` items of `pool` (round robin) to `port`, closes, holds the connection until `received` settles. */
type Send = (port: number, pool: ReadonlyArray<Buffer>, count: number, received: Promise<unknown>) => Promise<void>

const sendWs: Send = (port, pool, count) => sendPlainWs(`ws://${HOST}:${port}/`, pool, count)

const sendPlexusMessages: Send = async (port, pool, count, received) => {
  const { NodeWs } = await import("@plexus/transport-ws")
  await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const connection = yield* NodeWs.dial({ url: `ws://${HOST}:${port}/` })
    const transport = yield* connection.messages
    for (let i = 0; i < count; i++) yield* transport.send(pool[i % pool.length]!)
    yield* transport.close
    yield* Effect.promise(() => received)
  })))
}

const sendPlexusBytes: Send = async (port, pool, count, received) => {
  const { NodeWs } = await import("@plexus/transport-ws")
  await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const connection = yield* NodeWs.dial({ url: `ws://${HOST}:${port}/` })
    // Like a Session would (and like the transport suite's senders), hold a
    // reader: without one the adapter keeps the TCP socket paused.
    yield* connection.socket.reader
    yield* Effect.scoped(Effect.gen(function*() {
      const writer = yield* connection.socket.writer
      for (let i = 0; i < count; i++) yield* writer.write(pool[i % pool.length]!)
    }))
    yield* Effect.promise(() => received)
  })))
}

interface Expected {
  readonly count: number
  readonly bytes: number
  readonly hash: number
}

const expectedOf = (mode: Mode, pool: ReadonlyArray<Buffer>, count: number): Expected => {
  const t = freshTally()
  for (let i = 0; i < count; i++) onMessage(mode, t, pool[i % pool.length]!)
  // In the byte view the receiver's message count depends on chunking: compare bytes and hash only.
  return { count: mode === "messages" ? t.count : -1, bytes: t.bytes, hash: t.hash.h }
}

/** Spawns a receiver; answers one timed transfer (in items/s or MiB/s) and how to stop it. */
const transfer = async (impl: Impl, mode: Mode, send: Send) => {
  const { peer, announcement } = await Child.spawn("../suites/ws.ts", ["peer", impl, mode])
  const port = announcement.port as number
  const once = async (pool: ReadonlyArray<Buffer>, count: number, expected: Expected): Promise<number> => {
    const started = performance.now()
    const received = peer.next()
    received.catch(() => {}) // a failed send is the error reported
    await send(port, pool, count, received)
    const report = await received
    const seconds = (performance.now() - started) / 1000
    if (report.type !== "received") throw new Error(`${impl} receiver: ${String(report.message ?? report.type)}`)
    if (report.bytes !== expected.bytes) {
      throw new Error(`${impl} receiver got ${String(report.bytes)} of ${expected.bytes} bytes`)
    }
    if (expected.count >= 0 && report.count !== expected.count) {
      throw new Error(`${impl} receiver got ${String(report.count)} of ${expected.count} messages`)
    }
    if (report.hash !== expected.hash) throw new Error(`${impl} receiver: checksum mismatch`)
    return mode === "messages" ? count / seconds : expected.bytes / 2 ** 20 / seconds
  }
  return { once, close: () => peer.kill() }
}

const contest = async (options: RunOptions, mode: Mode): Promise<Contest> => {
  const pool = mode === "messages" ? makePool(POOL, MESSAGE_SIZE) : makePool(4, BYTES_WRITE)
  const count = mode === "messages"
    ? (options.quick ? QUICK_MESSAGES : FULL_MESSAGES)
    : (options.quick ? QUICK_BYTES : FULL_BYTES) / BYTES_WRITE
  const expected = expectedOf(mode, pool, count)
  const subject = await transfer("plexus", mode, mode === "messages" ? sendPlexusMessages : sendPlexusBytes)
  const baseline = await transfer("ws", mode, sendWs).catch(async (error: unknown) => {
    await subject.close()
    throw error
  })
  return {
    subject: () => subject.once(pool, count, expected),
    baseline: () => baseline.once(pool, count, expected),
    close: async () => {
      await Promise.all([subject.close(), baseline.close()])
    }
  }
}

const rows: ReadonlyArray<Row> = [
  {
    name: "message-1KiB",
    unit: "msg/s",
    baseline: "plain ws",
    goal: ">= 0.9",
    description: "1 KiB binary messages one way, @plexus/transport-ws message view at both ends (peer process receives)",
    setup: (options) => contest(options, "messages")
  },
  {
    name: "bytes-64MiB",
    unit: "MiB/s",
    baseline: "plain ws",
    goal: ">= 0.9",
    description: "64 MiB one way in 64 KiB writes through the byte view, vs plain ws sending 64 KiB messages",
    // Short transfers: more repetitions for a steadier median.
    repetitions: 7,
    setup: (options) => contest(options, "bytes")
  }
]

export const suite: Suite = { group: "ws", rows }

// Started as a peer: `ws.ts peer <impl> <mode>`.
if (process.argv[1] !== undefined && Url.pathToFileURL(process.argv[1]).href === import.meta.url &&
  process.argv[2] === "peer") {
  await runPeer(process.argv[3] as Impl, process.argv[4] as Mode)
}
