/**
 * Bench peer: the server end of the KCM suite (`bench/suites/kcm.ts`),
 * started once per bench run as `kcm-peer.ts` and reconfigured per row.
 * It announces `{ type: "ready" }`, then handles messages in order:
 *
 * - `{ type: "configure", epoch, kcmConnections, rawConnections, size,
 *   sends, expects }` stops the servers of the previous configuration and
 *   starts two on ephemeral 127.0.0.1 ports, answering `{ type:
 *   "configured", epoch, kcmPort, rawPort }`:
 *   - `kcm`: `Kcm.layerServer()` over `Tcp.layerServer(...)` (every
 *     accepted connection joins one multiplexor), two message sockets
 *     receiving;
 *   - `raw`: `node:net` connections in the hand-written pool (`RawPool` in
 *     `kcm-pool.ts`), two consumers on its receive queue.
 *   Each side counts rounds of `expects` messages of `size` bytes, verified
 *   message by message (`Rounds`).
 * - `{ type: "round", epoch, impl, round }`: waits until side `impl` has
 *   all its connections, sends `sends` messages from 64 concurrent senders,
 *   waits until it has received round `round` in full, and answers `{ type:
 *   "done", epoch, impl, round }`.
 * - `{ type: "reset", epoch }` stops the servers and answers `{ type:
 *   "reset", epoch }`.
 *
 * Failures answer `{ type: "error", epoch, message }`. Every answer carries
 * the epoch of its configuration, so the bench can drop answers a
 * previous row left behind.
 *
 * Profiling: with `KCM_PEER_CPU_PROF=<dir>` in the environment the peer
 * records a V8 CPU profile from start to SIGTERM (how `Child.kill` stops
 * it) and writes it to `<dir>/kcm-peer-<pid>.cpuprofile`, for
 * `--cpu-prof`-style analysis of the server side.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import * as Inspector from "node:inspector/promises"
import * as Net from "node:net"
import * as Path from "node:path"
import { Kcm } from "@plexus/kcm"
import { Tcp, TcpServer } from "@plexus/transport-tcp"
import { announce, type Message, onMessage, report } from "../harness/Child.ts"
import {
  awaitAttached,
  awaitRawAttached,
  consumeRaw,
  RawPool,
  receiveKcm,
  Rounds,
  sendKcm,
  sendRaw,
  SENDERS
} from "./kcm-pool.ts"

const HOST = "127.0.0.1"

const profileDir = process.env.KCM_PEER_CPU_PROF
if (profileDir !== undefined && profileDir !== "") {
  const session = new Inspector.Session()
  session.connect()
  await session.post("Profiler.enable")
  await session.post("Profiler.start")
  process.once("SIGTERM", () => {
    session.post("Profiler.stop").then(({ profile }) => {
      Fs.mkdirSync(profileDir, { recursive: true })
      Fs.writeFileSync(Path.join(profileDir, `kcm-peer-${process.pid}.cpuprofile`), JSON.stringify(profile))
      process.exit(0)
    }, () => process.exit(1))
  })
}

/** What a `configure` message asks for. */
interface Config {
  readonly epoch: number
  readonly kcmConnections: number
  readonly rawConnections: number
  readonly size: number
  readonly sends: number
  readonly expects: number
}

const readConfig = (message: Message): Config => {
  const config = {
    epoch: Number(message.epoch),
    kcmConnections: Number(message.kcmConnections),
    rawConnections: Number(message.rawConnections),
    size: Number(message.size),
    sends: Number(message.sends),
    expects: Number(message.expects)
  }
  for (const [key, value] of Object.entries(config)) {
    if (!Number.isSafeInteger(value) || value < 0) throw new Error(`configure: ${key} must be a non-negative integer`)
  }
  return config
}

/** Both servers of one configuration. */
const start = async (config: Config) => {
  const kcmRounds = new Rounds(config.expects, config.size)
  const scope = Effect.runSync(Scope.make())
  const kcm = await Effect.runPromise(Scope.provide(
    Effect.gen(function*() {
      const context = yield* Layer.build(
        Kcm.layerServer().pipe(Layer.provideMerge(Tcp.layerServer({ host: HOST, port: 0 })))
      )
      const mux = Context.get(context, Kcm.Kcm)
      const server = Context.get(context, TcpServer.TcpServer)
      const sockets = yield* receiveKcm(mux, kcmRounds, 2)
      return { mux, sockets, port: server.port }
    }),
    scope
  ))

  const rawRounds = new Rounds(config.expects, config.size)
  const raw = new RawPool()
  consumeRaw(raw, rawRounds, 2)
  const rawServer = Net.createServer({ noDelay: true }, (socket) => raw.attach(socket))
  await new Promise<void>((resolve) => rawServer.listen({ host: HOST, port: 0 }, resolve))

  const round = async (impl: string, n: number): Promise<void> => {
    if (impl === "kcm") {
      await Effect.runPromise(Effect.andThen(
        awaitAttached(kcm.mux, config.kcmConnections),
        sendKcm(kcm.sockets, config.sends, config.size, SENDERS)
      ))
      await kcmRounds.wait(n)
    } else if (impl === "raw") {
      await awaitRawAttached(raw, config.rawConnections)
      await sendRaw(raw, config.sends, config.size, SENDERS)
      await rawRounds.wait(n)
    } else throw new Error(`unknown implementation ${JSON.stringify(impl)}`)
  }

  const stop = async () => {
    raw.destroy()
    rawServer.close()
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }

  return { kcmPort: kcm.port, rawPort: (rawServer.address() as Net.AddressInfo).port, round, stop }
}

type Servers = Awaited<ReturnType<typeof start>>

let current: { readonly epoch: number; readonly servers: Servers } | undefined

const describe = (error: unknown) => (error instanceof Error ? error.message : String(error))

// Messages are handled one at a time, in order; a round runs in the background.
let queue: Promise<void> = Promise.resolve()

const handle = async (message: Message): Promise<void> => {
  switch (message.type) {
    case "configure": {
      const previous = current
      current = undefined
      await previous?.servers.stop()
      try {
        const config = readConfig(message)
        const servers = await start(config)
        current = { epoch: config.epoch, servers }
        report({ type: "configured", epoch: config.epoch, kcmPort: servers.kcmPort, rawPort: servers.rawPort })
      } catch (error) {
        report({ type: "error", epoch: message.epoch, message: describe(error) })
      }
      return
    }
    case "reset": {
      const previous = current
      current = undefined
      await previous?.servers.stop()
      report({ type: "reset", epoch: message.epoch })
      return
    }
    case "round": {
      const epoch = message.epoch
      const impl = String(message.impl)
      const n = Number(message.round)
      if (current === undefined || current.epoch !== epoch) {
        report({ type: "error", epoch, message: `round for configuration ${String(epoch)}, which is not current` })
        return
      }
      current.servers.round(impl, n).then(
        () => report({ type: "done", epoch, impl, round: n }),
        (error: unknown) => report({ type: "error", epoch, message: describe(error) })
      )
      return
    }
  }
}

onMessage((message) => {
  queue = queue.then(() => handle(message), (error: unknown) => {
    report({ type: "error", message: describe(error) })
  })
})

announce({ type: "ready" })
