/**
 * Shared test helpers: loopback-only harnesses for the conformance suite,
 * the stalled-writer bound, a port nothing listens on, and bounded steps.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Net from "node:net"
import { NodeWs, Ws } from "../src/index.ts"
import { socketBufferMax } from "@plexus/core/test/fixtures/Kernel.ts"


const MiB = 1024 * 1024

/**
 * What a writer can get accepted while its peer never reads: the kernel's
 * largest send and receive buffers, the reader's high-water mark (1 MiB)
 * plus the message that crossed it, the writer's high-water mark (1 MiB)
 * plus the write that crossed it, and what ws and node hold in between
 * (a socket read, a partly received message).
 */
export const maxBufferedWhileStalled = (): number =>
  socketBufferMax("tcp_wmem", 4 * MiB) + socketBufferMax("tcp_rmem", 6 * MiB) + 2 * MiB + 2 * MiB + 512 * 1024

/** A port nothing listens on (it was just bound and released). */
export const freePort: Effect.Effect<number> = Effect.callback<number>((resume) => {
  const server = Net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const port = (server.address() as Net.AddressInfo).port
    server.close(() => resume(Effect.succeed(port)))
  })
})

export const wsHarness = (options: { readonly listen?: NodeWs.ListenOptions; readonly dial?: Partial<Ws.DialOptions> } = {}) => ({
  connect: Effect.gen(function*() {
    const server = yield* NodeWs.listen(options.listen)
    const client = yield* NodeWs.dial({ url: server.url, ...options.dial })
    const accepted = yield* server.accept
    return [client.socket, accepted.socket] as const
  }),
  connectFailure: Effect.flatMap(freePort, (port) => NodeWs.dial({ url: `ws://127.0.0.1:${port}/` })),
  halfClose: false,
  maxBufferedWhileStalled: maxBufferedWhileStalled()
})

/** Bounds a step so that a failing test ends instead of hanging. */
export const within = (step: string, seconds = 10) => <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.timeoutOrElse(self, {
    duration: Duration.seconds(seconds),
    orElse: () => Effect.die(new Error(`${step}: did not finish within ${seconds} s`))
  })

export const bytes = (size: number, seed = 0): Uint8Array => {
  const out = new Uint8Array(size)
  for (let i = 0; i < size; i++) out[i] = (i * 31 + seed) & 0xff
  return out
}

export const text = new TextEncoder()
export const decode = (b: Uint8Array) => new TextDecoder().decode(b)

/**
 * Sends `request` on a raw TCP connection and collects what comes back until
 * the server closes (or `seconds` pass): status line and close timing for
 * handshake abuse tests.
 */
export const rawExchange = (port: number, request: string | Uint8Array, seconds = 10) =>
  Effect.callback<{ readonly response: string; readonly closed: boolean; readonly millis: number }>((resume) => {
    const started = Date.now()
    const socket = Net.connect({ host: "127.0.0.1", port })
    const chunks: Array<Buffer> = []
    let done = false
    const finish = (closed: boolean) => {
      if (done) return
      done = true
      clearTimeout(timer)
      socket.destroy()
      resume(Effect.succeed({ response: Buffer.concat(chunks).toString("latin1"), closed, millis: Date.now() - started }))
    }
    const timer = setTimeout(() => finish(false), seconds * 1000)
    socket.on("data", (c: Buffer) => chunks.push(c))
    socket.on("close", () => finish(true))
    socket.on("error", () => finish(true))
    socket.on("connect", () => socket.write(request))
    return Effect.sync(() => finish(false))
  })

/** A syntactically valid upgrade request with extra header lines. */
export const upgradeRequest = (extra: ReadonlyArray<string> = [], path = "/") =>
  [
    `GET ${path} HTTP/1.1`,
    "Host: 127.0.0.1",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
    ...extra,
    "",
    ""
  ].join("\r\n")
