/**
 * A KCM pool losing one connection with calls pending: a request written
 * whole but never read by the server vanishes with the connection, which
 * no send error reports; the client asks the server about its unanswered
 * calls (PROBE) and the lost one fails typed instead of hanging.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import { Delineation, Memory } from "@plexus/core"
import { Kcm } from "@plexus/kcm"
import { RpcKcm, RpcMessages } from "../src/index.ts"
import { makeProbe } from "./fixtures/Api.ts"
import { clientOf, serveApi, transportError } from "./fixtures/RpcSuite.ts"

const kcmOptions: Kcm.Options = { delineation: Delineation.lengthPrefix() }

describe("RPC over a KCM pool that loses a connection", () => {
  it.live("a request lost with its connection fails as ConnectionLost, not retryable; calls on other connections finish", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const clientMux = yield* Kcm.make(kcmOptions)
      const serverMux = yield* Kcm.make(kcmOptions)
      const pairs: Array<Memory.BytePair> = []
      for (let i = 0; i < 3; i++) {
        const pair = yield* Memory.makeBytePair()
        pairs.push(pair)
        yield* clientMux.attach(pair.a, { label: `c${i}` })
        yield* serverMux.attach(pair.b, { label: `s${i}` })
      }
      const server = yield* RpcMessages.makeServer()
      yield* Effect.forkScoped(Effect.scoped(server.serve(yield* serverMux.socket())))
      yield* serveApi(server.protocol, probe)
      const rpc = yield* RpcKcm.makeClient(clientMux, { retries: 0 })
      const client = yield* clientOf(rpc.protocol)
      // What is written on the first connection from now on never reaches the server.
      yield* pairs[0]!.aToB.stall
      const exits = yield* Effect.forEach(
        [0, 1, 2],
        () => Effect.forkChild(Effect.exit(client.Sleep({ millis: 200 }))),
        { concurrency: 1 }
      )
      while (probe.started < 2) yield* Effect.sleep("5 millis")
      yield* pairs[0]!.abort
      // Without the probe the lost call would wait forever: the timeout fails the test instead.
      const results = yield* Effect.forEach(exits, (fiber) => Fiber.join(fiber).pipe(Effect.timeout("10 seconds")))
      const succeeded = results.filter(Exit.isSuccess)
      const failed = results.filter(Exit.isFailure)
      assert.strictEqual(succeeded.length, 2)
      assert.strictEqual(failed.length, 1)
      const error = transportError(failed[0]!)
      assert.strictEqual(error?.reason._tag, "ConnectionLost")
      assert.isFalse(error?.retryable)
      assert.strictEqual(probe.started, 2)
      assert.isAtLeast((yield* server.stats).unknownProbed, 1)
      let pending = -1
      while (pending !== 0) {
        pending = (yield* rpc.stats).pending
        if (pending !== 0) yield* Effect.sleep("5 millis")
      }
    }))
})
