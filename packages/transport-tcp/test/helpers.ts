/**
 * Shared test helpers: loopback-only harnesses for the conformance suite,
 * the certificate fixtures, and the kernel's socket buffer bound.
 */
import type { NonEmptyReadonlyArray } from "effect/Array"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Socket from "effect/socket/Socket"
import * as Fs from "node:fs"
import { FaultProxy, Tcp, Tls } from "../src/index.ts"
import { concat } from "@plexus/core/test/fixtures/Streams.ts"
import { socketBufferMax } from "@plexus/core/test/fixtures/Kernel.ts"

export { concat }

export const cert = Fs.readFileSync(new URL("./fixtures/cert.pem", import.meta.url), "utf8")
export const key = Fs.readFileSync(new URL("./fixtures/key.pem", import.meta.url), "utf8")


/**
 * What a writer can get accepted while its peer never reads: the kernel's
 * largest send and receive buffers, the reader's high-water mark plus one
 * chunk, and node's own stream buffers on each side. (Measured on this
 * machine: about 6.8 MiB with the default high-water mark.)
 */
export const maxBufferedWhileStalled = (highWaterMark = Tcp.DEFAULT_HIGH_WATER_MARK): number =>
  socketBufferMax("tcp_wmem", 4 * 1024 * 1024) + socketBufferMax("tcp_rmem", 6 * 1024 * 1024) + highWaterMark + 4 * 64 * 1024

/** A port nothing listens on (it was just bound and released). */
export const freePort: Effect.Effect<number> = Effect.scoped(Effect.map(Effect.orDie(Tcp.listen()), (s) => s.port))

export const tcpHarness = (options: { readonly highWaterMark?: number } = {}) => ({
  connect: Effect.gen(function*() {
    const server = yield* Tcp.listen({ highWaterMark: options.highWaterMark })
    const client = yield* Tcp.dial({ port: server.port, highWaterMark: options.highWaterMark })
    const accepted = yield* server.accept
    return [client, accepted.socket] as const
  }),
  connectFailure: Effect.flatMap(freePort, (port) => Tcp.dial({ port })),
  halfClose: true,
  maxBufferedWhileStalled: maxBufferedWhileStalled(options.highWaterMark)
})

/**
 * TCP through a fault proxy that slices every write into MSS-sized pieces
 * and adds latency both ways: arbitrary segmentation and delay on a real
 * socket. The proxy adds its own two connections' kernel buffers and what it
 * holds to the stalled-writer bound.
 */
export const proxiedHarness = (faults: FaultProxy.Faults) => ({
  connect: Effect.gen(function*() {
    const server = yield* Tcp.listen()
    const proxy = yield* FaultProxy.make({ target: server.port })
    yield* proxy.set("both", faults)
    const client = yield* Tcp.dial({ port: proxy.port })
    const accepted = yield* server.accept
    return [client, accepted.socket] as const
  }),
  halfClose: true,
  maxBufferedWhileStalled: 2 * maxBufferedWhileStalled() + 512 * 1024
})

export const tlsHarness = {
  connect: Effect.gen(function*() {
    const server = yield* Tls.listen({ key, cert })
    const client = yield* Tls.dial({ port: server.port, ca: cert, servername: "localhost" })
    const accepted = yield* server.accept
    return [client, accepted.socket] as const
  }),
  connectFailure: Effect.flatMap(freePort, (port) => Tls.dial({ port, ca: cert, servername: "localhost" })),
  halfClose: true,
  maxBufferedWhileStalled: maxBufferedWhileStalled()
}

/** A reader's pull; these Sockets only ever yield bytes, strings are encoded just in case. */
type Pull = Effect.Effect<NonEmptyReadonlyArray<Uint8Array | string>, Socket.SocketError>

const encoder = new TextEncoder()
const asBytes = (chunk: Uint8Array | string): Uint8Array => typeof chunk === "string" ? encoder.encode(chunk) : chunk

/** Reads exactly `n` bytes (failing if more arrive in the last batch) and returns them. */
export const readBytes = (pull: Pull, n: number): Effect.Effect<Uint8Array, Socket.SocketError> =>
  Effect.gen(function*() {
    const out = new Uint8Array(n)
    let offset = 0
    while (offset < n) {
      for (const item of yield* pull) {
        const chunk = asBytes(item)
        if (offset + chunk.length > n) return yield* Effect.die(new Error(`got ${offset + chunk.length} bytes, wanted ${n}`))
        out.set(chunk, offset)
        offset += chunk.length
      }
    }
    return out
  })

/** Reads until the pull fails; returns the bytes and the failure. */
export const readToEnd = (pull: Pull) =>
  Effect.gen(function*() {
    const chunks: Array<Uint8Array> = []
    while (true) {
      const result = yield* Effect.result(pull)
      if (result._tag === "Failure") return { bytes: concat(chunks), chunks: chunks.length, error: result.failure }
      for (const item of result.success) chunks.push(asBytes(item))
    }
  })


export const bytes = (size: number, seed = 0): Uint8Array => {
  const out = new Uint8Array(size)
  for (let i = 0; i < size; i++) out[i] = (i * 31 + seed) & 0xff
  return out
}

/**
 * Whether a pull delivers nothing for `millis`. Only ever used where the
 * data cannot arrive that soon (it is held back on purpose), so the answer
 * does not depend on the machine's speed.
 */
export const quietFor = (pull: Pull, millis: number): Effect.Effect<boolean, Socket.SocketError> =>
  Effect.map(Effect.timeoutOption(pull, Duration.millis(millis)), (o) => o._tag === "None")

/** Bounds a step so that a failing test ends instead of hanging. */
export const within = (step: string, seconds = 10) => <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.timeoutOrElse(self, {
    duration: Duration.seconds(seconds),
    orElse: () => Effect.die(new Error(`${step}: did not finish within ${seconds} s`))
  })
