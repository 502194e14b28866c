/**
 * RPC: effect/rpc calls over plexus against gRPC, against effect/rpc's own
 * socket protocol, and a streaming call against raw `node:net`. Every
 * server runs in one peer process (`bench/peers/rpc-server.ts`), the
 * clients in the bench process, over loopback TCP; all serve `BenchApi`
 * (`bench/peers/rpc-api.ts`), and every effect/rpc client and server runs
 * with `disableTracing: true`.
 *
 * - `unary-c{1,100}-vs-grpc`: `Ping` calls with a tiny payload (one
 *   number) from 1 or 100 concurrent callers, each calling again as soon
 *   as its answer arrives. Subject: `RpcSocket` (`RpcMessages` over one
 *   `Tcp` connection, length-prefixed: the carrier for many small calls),
 *   schema-binary (the package's default). Baseline: `@grpc/grpc-js`, one
 *   channel, the generic client and server with identity serializers (an
 *   8-byte buffer, echoed), which pays no serialization at all. The p50 and
 *   p99 latency of both sides (median over repetitions) are printed after
 *   the row.
 * - `unary-c{1,100}-session-vs-grpc`: the same with `RpcSession` (a
 *   stream per call over one `Tcp` session) as the subject.
 * - `unary-c100-kcm-vs-grpc`: the same with `RpcKcm` over a KCM pool of 4
 *   TCP connections as the subject.
 * - `unary-c100-vs-effect-rpc`: the `RpcSocket` subject against
 *   effect/rpc's socket protocol (`RpcServer.layerProtocolSocketServer` on
 *   `NodeSocketServer`, `RpcClient.layerProtocolSocket` on
 *   `NodeSocket.layerNet`), schema-binary too: one TCP connection on each
 *   side, calls told apart by request id on both.
 * - `unary-c100-session-vs-effect-rpc`: the `RpcSession` subject against
 *   the same baseline.
 * - `stream-256MiB`: one `Bytes` call streaming 256 MiB to the client as
 *   64 KiB `Uint8Array`s (one per CHUNK message), counted and spot-checked
 *   as they arrive. Baseline: raw `node:net`, the peer writing the same
 *   bytes in 64 KiB writes to a fresh connection.
 *
 * Connections and sessions are made once per row and carry every
 * repetition (a call is what is measured, not a connection set-up); every
 * answer is checked (`Ping` answers its argument), so a broken run fails
 * instead of reporting a number.
 */
import * as Grpc from "@grpc/grpc-js"
import { NodeSocket } from "@effect/platform-node"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import { RpcClient, type RpcClientError, RpcSerialization } from "effect/rpc"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Net from "node:net"
import { Session } from "@plexus/core"
import { Kcm } from "@plexus/kcm"
import { RpcMessages, RpcSession, RpcSocket } from "@plexus/rpc"
import { Tcp } from "@plexus/transport-tcp"
import * as Child from "../harness/Child.ts"
import type { Contest, Row, RunOptions, Suite } from "../harness/Suite.ts"
import { BenchApi, grpcService } from "../peers/rpc-api.ts"

const HOST = "127.0.0.1"
const STREAM_CHUNK = 64 * 1024
const KCM_CONNECTIONS = 4

/** Calls per repetition, and bytes of the streaming row, per mode. */
const sizes = (quick: boolean) => ({
  c100: quick ? 1_000 : 20_000,
  c1: quick ? 200 : 3_000,
  stream: quick ? 8 * 1024 * 1024 : 256 * 1024 * 1024
})

// ---------------------------------------------------------------------------
// The peer
// ---------------------------------------------------------------------------

interface Ports {
  readonly session: number
  readonly messages: number
  readonly kcm: number
  readonly socket: number
  readonly grpc: number
  readonly raw: number
}

/** One peer serves every row of a run; it is killed when the bench exits, like every peer. */
let shared: Promise<Ports> | undefined

const peerPorts = (): Promise<Ports> => {
  if (shared === undefined) {
    const spawning = Child.spawn("rpc-server.ts").then(({ announcement }) => {
      if (announcement.type !== "ready") throw new Error(`rpc-server: ${String(announcement.message ?? announcement.type)}`)
      return announcement as unknown as Ports
    })
    shared = spawning
    spawning.catch(() => {
      if (shared === spawning) shared = undefined
    })
  }
  return shared
}

// ---------------------------------------------------------------------------
// Callers
// ---------------------------------------------------------------------------

/** One repetition of unary calls: calls per second and the latency percentiles, in milliseconds. */
interface Measured {
  readonly rate: number
  readonly p50: number
  readonly p99: number
}

/** Makes `total` calls from `concurrency` callers. */
interface Caller {
  readonly unary: (total: number, concurrency: number) => Promise<Measured>
  readonly close: () => Promise<void>
}

const percentile = (sorted: Float64Array, p: number): number =>
  sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!

const measured = (total: number, millis: number, latencies: Float64Array): Measured => {
  latencies.sort()
  return { rate: total / (millis / 1000), p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99) }
}

type BenchClient = RpcClient.FromGroup<typeof BenchApi, RpcClientError.RpcClientError>

/** The unary loop on an effect/rpc client. */
const effectUnary = (client: BenchClient) => (total: number, concurrency: number): Promise<Measured> => {
  const latencies = new Float64Array(total)
  let next = 0
  const caller = Effect.gen(function*() {
    while (true) {
      const i = next++
      if (i >= total) return
      const started = performance.now()
      const answer = yield* client.Ping({ n: i })
      latencies[i] = performance.now() - started
      if (answer !== i) return yield* Effect.die(new Error(`Ping(${i}) answered ${answer}`))
    }
  })
  const started = performance.now()
  return Effect.runPromise(
    Effect.forEach(Array.from({ length: concurrency }), () => caller, { concurrency: "unbounded", discard: true })
  ).then(() => measured(total, performance.now() - started, latencies))
}

/** Builds `make` in a scope of its own, closed by `close`. */
const scoped = async <A>(make: Effect.Effect<A, unknown, Scope.Scope>) => {
  const scope = Effect.runSync(Scope.make())
  const close = () => Effect.runPromise(Scope.close(scope, Exit.void))
  try {
    return { value: await Effect.runPromise(Scope.provide(make, scope)), close }
  } catch (error) {
    await close()
    throw error
  }
}

const effectClient = (protocol: Effect.Effect<RpcClient.Protocol["Service"], unknown, Scope.Scope>) =>
  Effect.flatMap(
    protocol,
    (p) => RpcClient.make(BenchApi, { disableTracing: true }).pipe(Effect.provideService(RpcClient.Protocol, p))
  )

const sessionClient = (port: number) =>
  scoped(effectClient(RpcSession.makeClientProtocol({
    dial: Effect.flatMap(Tcp.dial({ host: HOST, port }), (socket) => Session.make(socket, { role: "client" }))
  })))

const sessionCaller = async (): Promise<Caller> => {
  const client = await sessionClient((await peerPorts()).session)
  return { unary: effectUnary(client.value), close: client.close }
}

const messagesCaller = async (): Promise<Caller> => {
  const port = (await peerPorts()).messages
  const client = await scoped(effectClient(
    Effect.map(RpcSocket.makeClient({ dial: Tcp.dial({ host: HOST, port }) }), (c) => c.protocol)
  ))
  return { unary: effectUnary(client.value), close: client.close }
}

const kcmCaller = async (): Promise<Caller> => {
  const port = (await peerPorts()).kcm
  const client = await scoped(effectClient(Effect.gen(function*() {
    const mux = yield* Kcm.makePool({
      dial: Tcp.dial({ host: HOST, port }),
      connections: KCM_CONNECTIONS,
      reconnect: false
    })
    return yield* RpcMessages.makeClientProtocol(yield* mux.socket())
  })))
  return { unary: effectUnary(client.value), close: client.close }
}

const socketCaller = async (): Promise<Caller> => {
  const port = (await peerPorts()).socket
  const client = await scoped(effectClient(Effect.gen(function*() {
    const context = yield* Layer.build(
      RpcClient.layerProtocolSocket({ retryTransientErrors: false }).pipe(
        Layer.provide(NodeSocket.layerNet({ host: HOST, port })),
        Layer.provide(RpcSerialization.layerSchemaBinary())
      )
    )
    return Context.get(context, RpcClient.Protocol)
  })))
  return { unary: effectUnary(client.value), close: client.close }
}

type GrpcPing = (request: Buffer, callback: (error: Grpc.ServiceError | null, response?: Buffer) => void) => void

const grpcCaller = async (): Promise<Caller> => {
  const port = (await peerPorts()).grpc
  const Client = Grpc.makeGenericClientConstructor(grpcService, "Bench")
  const client = new Client(`${HOST}:${port}`, Grpc.credentials.createInsecure())
  await new Promise<void>((resolve, reject) =>
    client.waitForReady(Date.now() + 10_000, (error) => (error === undefined || error === null ? resolve() : reject(error))))
  const ping = (client as unknown as { Ping: GrpcPing }).Ping.bind(client)
  const call = (n: number): Promise<number> => {
    const request = Buffer.allocUnsafe(8)
    request.writeDoubleLE(n)
    return new Promise((resolve, reject) =>
      ping(request, (error, response) => (error === null && response !== undefined ? resolve(response.readDoubleLE()) : reject(error))))
  }
  const unary = async (total: number, concurrency: number): Promise<Measured> => {
    const latencies = new Float64Array(total)
    let next = 0
    const caller = async () => {
      while (true) {
        const i = next++
        if (i >= total) return
        const started = performance.now()
        const answer = await call(i)
        latencies[i] = performance.now() - started
        if (answer !== i) throw new Error(`Ping(${i}) answered ${answer}`)
      }
    }
    const started = performance.now()
    await Promise.all(Array.from({ length: concurrency }, caller))
    return measured(total, performance.now() - started, latencies)
  }
  return {
    unary,
    close: async () => {
      client.close()
    }
  }
}

// ---------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------

const median = (xs: ReadonlyArray<number>): number => {
  const sorted = [...xs].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

const ms = (x: number) => `${x < 1 ? x.toFixed(3) : x.toFixed(2)} ms`

/** Subject against baseline, `concurrency` callers; prints both sides' latency percentiles when done. */
const unary = (
  label: string,
  subject: () => Promise<Caller>,
  baseline: () => Promise<Caller>,
  concurrency: number
) =>
async (options: RunOptions): Promise<Contest> => {
  const total = concurrency === 1 ? sizes(options.quick).c1 : sizes(options.quick).c100
  const s = await subject()
  const b = await baseline().catch(async (error: unknown) => {
    await s.close()
    throw error
  })
  const seen = { subject: [] as Array<Measured>, baseline: [] as Array<Measured> }
  const once = (caller: Caller, into: Array<Measured>) => async () => {
    const m = await caller.unary(total, concurrency)
    into.push(m)
    return m.rate
  }
  return {
    subject: once(s, seen.subject),
    baseline: once(b, seen.baseline),
    close: async () => {
      // The first measurement of each side is the warm-up.
      const side = (xs: ReadonlyArray<Measured>) => {
        const reps = xs.length > 1 ? xs.slice(1) : xs
        return `p50 ${ms(median(reps.map((m) => m.p50)))}, p99 ${ms(median(reps.map((m) => m.p99)))}`
      }
      if (seen.subject.length > 0 && seen.baseline.length > 0) {
        process.stderr.write(`  latency at concurrency ${concurrency}: ${label} ${side(seen.subject)}; baseline ${side(seen.baseline)}\n`)
      }
      await Promise.all([s.close(), b.close()])
    }
  }
}

const expectChunk = (chunk: Uint8Array) => {
  if (chunk.length !== STREAM_CHUNK || chunk[0] !== 0x5a || chunk[chunk.length - 1] !== 0x5a) {
    throw new Error(`a chunk of ${chunk.length} bytes starting with ${chunk[0]} arrived`)
  }
}

const rawStream = (port: number, total: number): Promise<number> =>
  new Promise((resolve, reject) => {
    const started = performance.now()
    const socket = Net.connect({ host: HOST, port, noDelay: true })
    let received = 0
    socket.once("connect", () => socket.write(`${total}\n`))
    socket.on("data", (data: Buffer) => {
      // Writes of 64 KiB arrive cut anywhere: check one byte per segment.
      if (data[0] !== 0x5a) socket.destroy(new Error("unexpected byte"))
      received += data.length
    })
    socket.once("end", () => {
      const seconds = (performance.now() - started) / 1000
      socket.destroy()
      if (received !== total) reject(new Error(`raw: ${received} of ${total} bytes arrived`))
      else resolve(total / 2 ** 20 / seconds)
    })
    socket.once("error", reject)
  })

const streaming = async (options: RunOptions): Promise<Contest> => {
  const total = sizes(options.quick).stream
  const ports = await peerPorts()
  const client = await sessionClient(ports.session)
  const call = Effect.suspend(() => {
    const started = performance.now()
    let received = 0
    return client.value.Bytes({ total, chunk: STREAM_CHUNK }).pipe(
      Stream.runForEachArray((chunks) =>
        Effect.sync(() => {
          for (let i = 0; i < chunks.length; i++) {
            expectChunk(chunks[i]!)
            received += chunks[i]!.length
          }
        })
      ),
      Effect.flatMap(() =>
        received === total
          ? Effect.succeed(total / 2 ** 20 / ((performance.now() - started) / 1000))
          : Effect.die(new Error(`rpc: ${received} of ${total} bytes arrived`))
      )
    )
  })
  return {
    subject: () => Effect.runPromise(call),
    baseline: () => rawStream(ports.raw, total),
    close: client.close
  }
}

const rows: ReadonlyArray<Row> = [
  {
    name: "unary-c100-vs-grpc",
    unit: "calls/s",
    baseline: "@grpc/grpc-js (generic client, identity serializers)",
    goal: ">= 5",
    timeoutMs: 60_000,
    description:
      "unary Ping calls (tiny payload), 100 concurrent callers, RpcSocket (RpcMessages over one length-prefixed Tcp connection) vs grpc-js, server in a peer",
    setup: unary("RpcSocket", messagesCaller, grpcCaller, 100)
  },
  {
    name: "unary-c1-vs-grpc",
    unit: "calls/s",
    baseline: "@grpc/grpc-js (generic client, identity serializers)",
    timeoutMs: 60_000,
    description: "unary Ping calls one at a time, RpcSocket over one Tcp connection vs grpc-js, server in a peer",
    setup: unary("RpcSocket", messagesCaller, grpcCaller, 1)
  },
  {
    name: "unary-c100-session-vs-grpc",
    unit: "calls/s",
    baseline: "@grpc/grpc-js (generic client, identity serializers)",
    timeoutMs: 60_000,
    description: "unary Ping calls, 100 concurrent callers, RpcSession (a stream per call) over one Tcp session vs grpc-js",
    setup: unary("RpcSession", sessionCaller, grpcCaller, 100)
  },
  {
    name: "unary-c1-session-vs-grpc",
    unit: "calls/s",
    baseline: "@grpc/grpc-js (generic client, identity serializers)",
    timeoutMs: 60_000,
    description: "unary Ping calls one at a time, RpcSession over one Tcp session vs grpc-js",
    setup: unary("RpcSession", sessionCaller, grpcCaller, 1)
  },
  {
    name: "unary-c100-kcm-vs-grpc",
    unit: "calls/s",
    baseline: "@grpc/grpc-js (generic client, identity serializers)",
    timeoutMs: 60_000,
    description: `unary Ping calls, 100 concurrent callers, RpcKcm over a KCM pool of ${KCM_CONNECTIONS} TCP connections vs grpc-js`,
    setup: unary("RpcKcm", kcmCaller, grpcCaller, 100)
  },
  {
    name: "unary-c100-vs-effect-rpc",
    unit: "calls/s",
    baseline: "effect/rpc socket protocol (NodeSocket, schema-binary)",
    goal: ">= 1",
    timeoutMs: 60_000,
    description:
      "unary Ping calls, 100 concurrent callers, RpcSocket (RpcMessages, length-prefixed, one Tcp connection) vs effect/rpc's own socket protocol (one TCP connection)",
    setup: unary("RpcSocket", messagesCaller, socketCaller, 100)
  },
  {
    name: "unary-c100-session-vs-effect-rpc",
    unit: "calls/s",
    baseline: "effect/rpc socket protocol (NodeSocket, schema-binary)",
    timeoutMs: 60_000,
    description: "unary Ping calls, 100 concurrent callers, RpcSession over one Tcp session vs effect/rpc's own socket protocol",
    setup: unary("RpcSession", sessionCaller, socketCaller, 100)
  },
  {
    name: "stream-256MiB",
    unit: "MiB/s",
    baseline: "raw node:net",
    timeoutMs: 60_000,
    description: "one streaming call moving 256 MiB to the client in 64 KiB Uint8Arrays over RpcSession on Tcp vs raw node:net",
    setup: streaming
  }
]

export const suite: Suite = { group: "rpc", rows }
