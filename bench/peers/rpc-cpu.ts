/**
 * Measures CPU time per RPC call on both ends: spawns `rpc-server.ts`
 * (optionally with `--cpu-prof`), runs `calls` unary Pings at `concurrency`
 * with one subject, and prints calls/s with the client's and the server's
 * CPU microseconds per call (`process.cpuUsage`, `/proc/<pid>/stat`).
 *
 *   npx node bench/peers/rpc-cpu.ts <session|messages|kcm|socket|grpc|stream> [calls] [concurrency] [--prof DIR]
 */
import * as Grpc from "@grpc/grpc-js"
import { NodeSocket } from "@effect/platform-node"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Inspector from "node:inspector/promises"
import * as Path from "node:path"
import * as Url from "node:url"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Scope from "effect/Scope"
import * as Layer from "effect/Layer"
import * as Stream from "effect/Stream"
import { RpcClient, RpcSerialization } from "effect/rpc"
import { Session } from "@plexus/core"
import { Kcm } from "@plexus/kcm"
import { RpcMessages, RpcSession, RpcSocket } from "@plexus/rpc"
import { Tcp } from "@plexus/transport-tcp"
import { BenchApi, grpcService } from "./rpc-api.ts"

const HOST = "127.0.0.1"
const args = process.argv.slice(2)
const profAt = args.indexOf("--prof")
const profDir = profAt >= 0 ? args.splice(profAt, 2)[1] : undefined
const [subject = "messages", callsArg = "20000", concArg = "100"] = args
const calls = Number(callsArg)
const concurrency = Number(concArg)

const here = Path.dirname(Url.fileURLToPath(import.meta.url))
const child = ChildProcess.spawn(
  process.execPath,
  [...(profDir === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${profDir}`]), Path.join(here, "rpc-server.ts")],
  { stdio: ["ignore", "inherit", "inherit", "ipc"], serialization: "json" }
)
const ports = await new Promise<Record<string, number>>((resolve) => child.once("message", (m) => resolve(m as any)))

const ticks = (): number => {
  const fields = Fs.readFileSync(`/proc/${child.pid}/stat`, "utf8").split(") ")[1]!.split(" ")
  return Number(fields[11]) + Number(fields[12])
}
const cpu = () => {
  const u = process.cpuUsage()
  return { client: (u.user + u.system), server: ticks() * 10_000 }
}

const effectClient = (protocol: Effect.Effect<RpcClient.Protocol["Service"], unknown, any>) =>
  Effect.flatMap(protocol, (p) => RpcClient.make(BenchApi, { disableTracing: true }).pipe(Effect.provideService(RpcClient.Protocol, p)))

const protocols: Record<string, () => Effect.Effect<RpcClient.Protocol["Service"], unknown, any>> = {
  session: () => RpcSession.makeClientProtocol({
    dial: Effect.flatMap(Tcp.dial({ host: HOST, port: ports.session! }), (s) => Session.make(s, { role: "client" }))
  }),
  messages: () => Effect.map(RpcSocket.makeClient({ dial: Tcp.dial({ host: HOST, port: ports.messages! }) }), (c) => c.protocol),
  kcm: () => Effect.gen(function*() {
    const mux = yield* Kcm.makePool({ dial: Tcp.dial({ host: HOST, port: ports.kcm! }), connections: 4, reconnect: false })
    return yield* RpcMessages.makeClientProtocol(yield* mux.socket())
  }),
  socket: () => Effect.map(
    Layer.build(RpcClient.layerProtocolSocket({ retryTransientErrors: false }).pipe(
      Layer.provide(NodeSocket.layerNet({ host: HOST, port: ports.socket! })),
      Layer.provide(RpcSerialization.layerSchemaBinary())
    )),
    (ctx) => Context.get(ctx, RpcClient.Protocol)
  )
}

const run = async (once: (i: number) => Promise<void>, total: number) => {
  let next = 0
  const caller = async () => {
    while (true) {
      const i = next++
      if (i >= total) return
      await once(i)
    }
  }
  await Promise.all(Array.from({ length: concurrency }, caller))
}

let once: (i: number) => Promise<void>
let streamBytes = 0
if (subject === "grpc") {
  const Client = Grpc.makeGenericClientConstructor(grpcService, "Bench")
  const client = new Client(`${HOST}:${ports.grpc}`, Grpc.credentials.createInsecure())
  const ping = (client as any).Ping.bind(client)
  once = (n) => new Promise((resolve, reject) => {
    const b = Buffer.allocUnsafe(8)
    b.writeDoubleLE(n)
    ping(b, (e: unknown, r: Buffer) => (e === null && r.readDoubleLE() === n ? resolve() : reject(e)))
  })
} else {
  const stream = subject.startsWith("stream")
  const proto = protocols[stream ? (subject.split("-")[1] ?? "session") : subject]!
  const sc = Effect.runSync(Scope.make())
  const c: any = await Effect.runPromise(Scope.provide(effectClient(proto()), sc) as Effect.Effect<unknown, unknown>)
  if (stream) {
    streamBytes = 64 * 1024
    once = () => Effect.runPromise(Stream.runForEachArray(c.Bytes({ total: 64 * 1024 * 1024, chunk: 64 * 1024 }), () => Effect.void))
  } else {
    once = (n) => Effect.runPromise(Effect.map(c.Ping({ n }), (a: number) => { if (a !== n) throw new Error("bad") }))
  }
}

await run(once, Math.max(100, calls / 4))
let session: Inspector.Session | undefined
if (profDir !== undefined) {
  session = new Inspector.Session()
  session.connect()
  await session.post("Profiler.enable")
  // Fine-grained samples: a call costs tens of microseconds.
  await session.post("Profiler.setSamplingInterval", { interval: 50 })
  await session.post("Profiler.start")
}
const before = cpu()
const t0 = performance.now()
await run(once, calls)
const seconds = (performance.now() - t0) / 1000
const after = cpu()
if (session !== undefined) {
  const { profile } = await session.post("Profiler.stop")
  Fs.writeFileSync(Path.join(profDir!, `client-${subject}.cpuprofile`), JSON.stringify(profile))
}
const per = (x: number) => (x / calls).toFixed(1)
if (streamBytes > 0) {
  console.log(`${subject}: ${(calls * 64 / seconds).toFixed(1)} MiB/s; CPU per 64 MiB call: client ${per((after.client - before.client) / 1000)} ms, server ${per((after.server - before.server) / 1000)} ms`)
} else {
  console.log(`${subject} c${concurrency}: ${Math.round(calls / seconds)} calls/s; CPU per call: client ${per(after.client - before.client)} µs, server ${per(after.server - before.server)} µs`)
}
child.disconnect()
await new Promise((r) => child.once("exit", r))
process.exit(0)
