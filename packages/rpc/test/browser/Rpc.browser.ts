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
import * as esbuild from "esbuild"
import * as Fs from "node:fs"
import * as Http from "node:http"
import type * as Net from "node:net"
import * as Path from "node:path"
import { chromium } from "playwright-core"
import { WsServer } from "@plexus/transport-ws"
import { NodeRpcChannels } from "../../src/index.ts"
import { PageApi, PageHandlers } from "./Api.ts"
import type { RpcPageReport } from "./page.ts"

const CHROMIUM = process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium"

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic"
]

/**
 * `@plexus/core`'s entry also exports `MuxStream`, whose Node adapter
 * imports `node:stream`; the page never calls it, so the bundle gets a
 * stand-in that throws if it ever is.
 */
const nodeStandIns: esbuild.Plugin = {
  name: "node-stand-ins",
  setup(build) {
    build.onResolve({ filter: /^node:stream$/ }, (args) => ({ path: args.path, namespace: "node-stand-in" }))
    build.onLoad({ filter: /.*/, namespace: "node-stand-in" }, () => ({
      contents: "export class Duplex { constructor() { throw new Error(\"node:stream is not available in a browser\") } }",
      loader: "js"
    }))
  }
}

const bundle = Effect.promise(async () => {
  const result = await esbuild.build({
    entryPoints: [Path.join(import.meta.dirname, "page.ts")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
    logLevel: "silent",
    plugins: [nodeStandIns]
  })
  const code = result.outputFiles[0]!.text
  for (const match of code.matchAll(/from\s*["'](node:[^"']+|ws)["']/g)) throw new Error(`the bundle imports ${match[1]}`)
  return code
})

/** Serves the page and its bundle on 127.0.0.1 until the Scope closes. */
const servePage = (script: string) =>
  Effect.acquireRelease(
    Effect.callback<Http.Server>((resume) => {
      const server = Http.createServer((request, response) => {
        if (request.url === "/page.js") {
          response.writeHead(200, { "content-type": "text/javascript" }).end(script)
        } else if (request.url === "/") {
          response.writeHead(200, { "content-type": "text/html" })
            .end("<!doctype html><meta charset=\"utf-8\"><title>plexus rpc</title><link rel=\"icon\" href=\"data:,\"><script type=\"module\" src=\"/page.js\"></script>")
        } else {
          response.writeHead(404).end()
        }
      })
      server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
    }),
    (server) =>
      Effect.callback<void>((resume) => {
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map((server) => `http://127.0.0.1:${(server.address() as Net.AddressInfo).port}/`))

const launch = Effect.acquireRelease(
  Effect.promise(() => chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS })),
  (browser) => Effect.promise(() => browser.close())
)

describe("RPC from chromium", () => {
  it.live("a page's RpcClient calls unary, streaming and failing methods over channels through a 401 → credentials → 101 handshake", () =>
    Effect.gen(function*() {
      assert.isTrue(Fs.existsSync(CHROMIUM), `no chromium at ${CHROMIUM}`)
      const script = yield* bundle
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
      const pageUrl = yield* servePage(script)
      const browser = yield* launch
      const page = yield* Effect.promise(() => browser.newPage())
      const consoleErrors: Array<string> = []
      page.on("console", (m) => {
        if (m.type() === "error") consoleErrors.push(m.text())
      })
      page.on("pageerror", (e) => consoleErrors.push(String(e)))
      yield* Effect.promise(() => page.goto(pageUrl))
      yield* Effect.promise(() =>
        page.waitForFunction(() => typeof (globalThis as { runRpc?: unknown }).runRpc === "function")
      )
      const report: RpcPageReport = yield* Effect.promise(() =>
        page.evaluate(
          ([wsUrl, token]) =>
            (globalThis as unknown as { runRpc: (u: string, t: string) => Promise<RpcPageReport> }).runRpc(wsUrl, token),
          [ws.url, "letmein"] as const
        )
      )

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
