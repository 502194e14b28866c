/**
 * The page of the real-browser RPC test: bundled for the browser from
 * `@plexus/rpc`'s browser entry, it calls the test's Node server with
 * effect/rpc's `RpcClient` over `RpcChannels.layerClientWs` (the global
 * WebSocket, the secondary handshake with credentials after a 401, a
 * channel labelled for RPC) and reports what came back.
 */
import * as Effect from "effect/Effect"
import { RpcClient } from "effect/rpc"
import * as Stream from "effect/Stream"
import { RpcChannels } from "../../src/browser.ts"
import { PageApi } from "./Api.ts"

/** What the page reports back. */
export interface RpcPageReport {
  readonly userAgent: string
  readonly greeting: string
  readonly counted: ReadonlyArray<number>
  readonly failure: string
  readonly concurrent: ReadonlyArray<string>
}

const run = (url: string, token: string): Promise<RpcPageReport> =>
  Effect.runPromise(
    Effect.gen(function*() {
      const client = yield* RpcClient.make(PageApi)
      const greeting = yield* client.Greet({ name: "page" })
      const counted = yield* Stream.runCollect(client.Count({ to: 1000 }))
      const failure = yield* Effect.flip(client.Find({ name: "nobody" }))
      const concurrent = yield* Effect.all(
        Array.from({ length: 20 }, (_, i) => client.Greet({ name: `caller ${i}` })),
        { concurrency: "unbounded" }
      )
      return {
        userAgent: navigator.userAgent,
        greeting,
        counted,
        failure: `${failure._tag}:${failure.name}`,
        concurrent
      }
    }).pipe(
      Effect.scoped,
      Effect.provide(RpcChannels.layerClientWs({ url, secondary: { authorization: `Bearer ${token}` } }))
    )
  )

;(globalThis as unknown as { runRpc: typeof run }).runRpc = run
