/**
 * Transport: moving bytes one way over loopback TCP, sender in this
 * process, receiver in a peer process (`bench/peers/tcp-sink.ts`).
 *
 * Each repetition opens a fresh connection, writes 1 GiB in 64 KiB writes
 * (honouring backpressure), half-closes, and stops the clock when the
 * receiver reports that every byte arrived. Connection set-up is inside the
 * measured time on both sides. The baseline is raw `node:net` at both ends:
 * `socket.write` + `'drain'` to send, `'data'` events to receive.
 *
 * - `tcp-1GiB`: `@plexus/transport-tcp` at both ends (writer to send, a
 *   reader pull loop to receive).
 * - `tcp-1GiB-borrowed`: the same sender; the receiver reads borrowed
 *   (`Transport.borrowedReads`: every read lent in one reused buffer), as a
 *   session's decoder does.
 * - `tcp-1GiB-platform-node`: `@effect/platform-node` `NodeSocket.makeNet`
 *   and `NodeSocketServer.make` at both ends, the same loops: why plexus
 *   has its own adapter.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import { Buffer } from "node:buffer"
import * as Child from "../harness/Child.ts"
import * as RawTcp from "../harness/RawTcp.ts"
import type { Contest, Row, RunOptions, Suite } from "../harness/Suite.ts"

const HOST = "127.0.0.1"
const WRITE_SIZE = 64 * 1024
const FULL_SIZE = 2 ** 30
const QUICK_SIZE = 64 * 2 ** 20

const chunk = Buffer.alloc(WRITE_SIZE, 0x5a)

/**
 * Sends `total` bytes to `port`. `received` settles when the receiver has
 * reported; a sender that owns its connection through a scope keeps it open
 * until then.
 */
type Send = (port: number, total: number, received: Promise<unknown>) => Promise<void>

type Dial = (port: number) => Effect.Effect<Socket.Socket, unknown, Scope.Scope>

/** Raw `node:net`: write until `write()` answers false, then wait for `'drain'`. */
const sendRaw: Send = (port, total) => RawTcp.sendRaw(port, total, chunk)

/**
 * An `effect/socket` Socket: acquire the reader (which opens a lazily
 * connecting socket, such as platform-node's), write everything through a
 * scoped writer whose release half-closes, then hold the connection until
 * the receiver has reported.
 */
const sendEffect = (dial: Dial): Send => (port, total, received) =>
  Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const socket = yield* dial(port)
    yield* socket.reader
    yield* Effect.scoped(Effect.gen(function*() {
      const writer = yield* socket.writer
      for (let sent = 0; sent < total; sent += WRITE_SIZE) yield* writer.write(chunk)
    }))
    yield* Effect.promise(() => received)
  })))

/**
 * Spawns a receiver of `impl`; answers one timed transfer to it, in MB/s
 * (10^6 bytes per second), and how to stop the receiver.
 */
const transfer = async (impl: string, send: Send) => {
  const { peer, announcement } = await Child.spawn("tcp-sink.ts", [impl])
  const port = announcement.port as number
  const once = async (total: number): Promise<number> => {
    const started = performance.now()
    const received = peer.next()
    received.catch(() => {}) // a failed send is the error reported
    await send(port, total, received)
    const report = await received
    const seconds = (performance.now() - started) / 1000
    if (report.type !== "received") throw new Error(`${impl} receiver: ${String(report.message ?? report.type)}`)
    if (report.bytes !== total) throw new Error(`${impl} receiver got ${String(report.bytes)} of ${total} bytes`)
    return total / seconds / 1e6
  }
  return { once, close: () => peer.kill() }
}

/** Both receivers run for the whole row; each repetition is a new connection. */
const contest = async (options: RunOptions, impl: string, dial: Dial): Promise<Contest> => {
  const total = options.quick ? QUICK_SIZE : FULL_SIZE
  const subject = await transfer(impl, sendEffect(dial))
  const baseline = await transfer("raw", sendRaw).catch(async (error: unknown) => {
    await subject.close()
    throw error
  })
  return {
    subject: () => subject.once(total),
    baseline: () => baseline.once(total),
    close: async () => {
      await Promise.all([subject.close(), baseline.close()])
    }
  }
}

/** The sender of both plexus rows: `Tcp.dial`. */
const plexusDial = async (): Promise<Dial> => {
  const { Tcp } = await import("@plexus/transport-tcp")
  return (port) => Tcp.dial({ host: HOST, port, noDelay: true })
}

const row = (
  name: string,
  description: string,
  impl: string,
  dial: () => Promise<Dial>
): Row => ({
  name,
  unit: "MB/s",
  baseline: "raw node:net",
  goal: ">= 0.9",
  description,
  setup: async (options) => contest(options, impl, await dial())
})

export const suite: Suite = {
  group: "transport",
  rows: [
    row(
      "tcp-1GiB",
      "1 GiB one way in 64 KiB writes, @plexus/transport-tcp at both ends",
      "plexus",
      plexusDial
    ),
    row(
      "tcp-1GiB-borrowed",
      "1 GiB one way in 64 KiB writes, @plexus/transport-tcp at both ends, the receiver reading borrowed (one reused buffer)",
      "plexus-borrowed",
      plexusDial
    ),
    row(
      "tcp-1GiB-platform-node",
      "1 GiB one way in 64 KiB writes, @effect/platform-node NodeSocket at both ends",
      "platform-node",
      async () => {
        const { NodeSocket } = await import("@effect/platform-node")
        return (port) => NodeSocket.makeNet({ host: HOST, port, noDelay: true })
      }
    )
  ]
}
