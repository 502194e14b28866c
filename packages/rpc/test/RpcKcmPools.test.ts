/**
 * One KCM RPC server, several client processes: each client pool's
 * connections start with a pool hello and are grouped on the server, so
 * replies go back to the pool that asked; connections without a hello are
 * turned away.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Stream from "effect/Stream"
import * as Net from "node:net"
import { Delineation } from "@plexus/core"
import { Kcm } from "@plexus/kcm"
import { Tcp, TcpServer } from "@plexus/transport-tcp"
import { RpcKcm, RpcMessages } from "../src/index.ts"
import { makeProbe } from "./fixtures/Api.ts"
import { clientOf, serveApi } from "./fixtures/RpcSuite.ts"

const kcmOptions: Kcm.Options = { delineation: Delineation.lengthPrefix({ maxMessageSize: 8 * 1024 * 1024 }) }

const pooledServer = Effect.gen(function*() {
  const context = yield* Layer.build(
    RpcKcm.layerServerPools({ kcm: kcmOptions, helloTimeout: "300 millis" }).pipe(
      Layer.provideMerge(Tcp.layerServer({ host: "127.0.0.1", port: 0 }))
    )
  )
  const probe = makeProbe()
  yield* serveApi(Context.get(context, RpcMessages.MessageServer).protocol, probe)
  return {
    port: Context.get(context, TcpServer.TcpServer).port,
    pools: Context.get(context, RpcKcm.PoolServer),
    probe
  }
})

/** A client process: a pool of `connections` TCP connections that say hello, and a client on it. */
const clientPool = (port: number, poolId: string, connections = 3) =>
  Effect.gen(function*() {
    const mux = yield* Kcm.makePool({
      ...kcmOptions,
      dial: RpcKcm.dialWithHello(Tcp.dial({ host: "127.0.0.1", port }), poolId),
      connections
    })
    const client = yield* RpcMessages.makeClient(yield* mux.socket())
    return { api: yield* clientOf(client.protocol), stats: client.stats }
  })

describe("RPC over KCM pools: many client processes on one server", () => {
  it.live("two independent client pools calling at once each get their own answers", () =>
    Effect.gen(function*() {
      const { port, pools } = yield* pooledServer
      const a = yield* clientPool(port, "pool-a")
      const b = yield* clientPool(port, "pool-b")
      const calls = (name: string, client: typeof a) =>
        Effect.forEach(
          Array.from({ length: 300 }, (_, i) => `${name} ${i}`),
          (text) => Effect.map(client.api.Echo({ text }), (answer) => answer === text),
          { concurrency: "unbounded" }
        )
      const [okA, okB] = yield* Effect.all([calls("a", a), calls("b", b)], { concurrency: 2 })
      assert.isTrue(okA.every((x) => x))
      assert.isTrue(okB.every((x) => x))
      // Nothing of one pool's answers went to the other.
      assert.strictEqual((yield* a.stats).unmatched, 0)
      assert.strictEqual((yield* b.stats).unmatched, 0)
      const stats = yield* pools.stats
      assert.strictEqual(stats.pools, 2)
      assert.strictEqual(stats.connections, 6)
    }))

  it.live("a streaming call of one pool and unary calls of another run side by side", () =>
    Effect.gen(function*() {
      const { port } = yield* pooledServer
      const a = yield* clientPool(port, "streamer", 2)
      const b = yield* clientPool(port, "caller", 2)
      const [counted, echoes] = yield* Effect.all([
        Stream.runCollect(a.api.Count({ to: 2_000 })),
        Effect.forEach(Array.from({ length: 100 }, (_, i) => `${i}`), (t) => b.api.Echo({ text: t }), {
          concurrency: 10
        })
      ], { concurrency: 2 })
      assert.strictEqual(counted.length, 2_000)
      assert.strictEqual(counted[1_999], 2_000)
      assert.deepStrictEqual(echoes, Array.from({ length: 100 }, (_, i) => `${i}`))
    }))

  it.live("a connection whose first bytes are no pool hello (or that says nothing) is closed and counted; pools go on", () =>
    Effect.gen(function*() {
      const { port, pools } = yield* pooledServer
      const client = yield* clientPool(port, "steady", 1)
      const rawClose = (bytes: Uint8Array | undefined) =>
        Effect.callback<boolean>((resume) => {
          const socket = Net.connect(port, "127.0.0.1", () => {
            if (bytes !== undefined) socket.write(bytes)
          })
          socket.on("data", () => {})
          socket.on("close", () => resume(Effect.succeed(true)))
          socket.on("error", () => {})
          return Effect.sync(() => socket.destroy())
        }).pipe(Effect.timeout("10 seconds"))
      // A KCM message with no hello in front, then silence.
      assert.isTrue(yield* rawClose(new Uint8Array([0, 0, 0, 2, 0, 0])))
      assert.isTrue(yield* rawClose(undefined))
      // A hello that claims a 200-byte pool id.
      assert.isTrue(yield* rawClose(new Uint8Array([0x50, 0x58, 0x50, 0x48, 1, 200])))
      const stats = yield* pools.stats
      assert.strictEqual(stats.badHellos, 3)
      assert.strictEqual(stats.pools, 1)
      assert.strictEqual(yield* client.api.Echo({ text: "steady" }), "steady")
    }))
})
