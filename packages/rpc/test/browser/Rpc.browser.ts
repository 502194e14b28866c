/**
 * effect/rpc from a real browser: Debian's chromium, driven by
 * playwright-core with the system executable, loads a page bundled from
 * `@plexus/rpc`'s browser entry; the page's `RpcClient` calls a unary, a
 * streaming and a failing method on our Node server over Channels over a
 * WebSocket, through the secondary handshake (a 401, then credentials,
 * then 101).
 *
 * Run with `npm run test:browser` (outside `npm test`: it needs chromium).
 */
import { assert, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { RpcServer } from "effect/rpc"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { CHROMIUM, runPage } from "@plexus/transport-ws/test/fixtures/Chromium.ts"
import { WsServer } from "@plexus/transport-ws"
import { NodeRpcChannels } from "../../src/index.ts"
import { PageApi, PageHandlers } from "./Api.ts"
import type { RpcPageReport } from "./page.ts"

describe("RPC from chromium", () => {
  it.live("a page's RpcClient calls unary, streaming and failing methods over channels through a 401 → credentials → 101 handshake", () =>
    Effect.gen(function*() {
      assert.isTrue(Fs.existsSync(CHROMIUM), `no chromium at ${CHROMIUM}`)
      const authRequests: Array<string | undefined> = []
      const context = yield* Layer.build(
        RpcServer.layer(PageApi).pipe(
          Layer.provide(PageHandlers),
          Layer.provideMerge(NodeRpcChannels.layerServerWs({
            listen: {
              secondary: {
                authenticate: (request) =>
                  Effect.sync(() => {
                    authRequests.push(request.authorization)
                    return request.authorization === "Bearer letmein"
                      ? { _tag: "Accept" as const }
                      : { _tag: "Challenge" as const, challenge: "Bearer realm=\"plexus\"" }
                  })
              }
            }
          }))
        )
      )
      const ws = Context.get(context, WsServer.WsServer)
      const { report, consoleErrors } = yield* runPage<RpcPageReport>({
        entry: Path.join(import.meta.dirname, "page.ts"),
        title: "plexus rpc",
        run: "runRpc",
        args: [ws.url, "letmein"]
      })

      assert.match(report.userAgent, /Chrome/)
      assert.deepStrictEqual(authRequests, [undefined, "Bearer letmein"])
      assert.strictEqual(report.greeting, "hello, page")
      assert.strictEqual(report.counted.length, 1000)
      assert.deepStrictEqual(report.counted.slice(0, 3), [1, 2, 3])
      assert.strictEqual(report.counted[999], 1000)
      assert.strictEqual(report.failure, "NotFound:nobody")
      assert.deepStrictEqual(report.concurrent, Array.from({ length: 20 }, (_, i) => `hello, caller ${i}`))
      const stats = yield* ws.stats
      assert.strictEqual(stats.accepted, 1)
      assert.deepStrictEqual(consoleErrors, [])
    }))
})
