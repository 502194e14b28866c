/**
 * The channels client in a real browser: Debian's chromium, driven by
 * playwright-core with the system executable (never a downloaded browser),
 * loads a page bundled from the browser entry, which connects to our
 * server over loopback through the secondary handshake (a 401, then
 * credentials, then 101) and uses channels as WebSockets.
 *
 * Run with `npm run test:browser` (outside `npm test`: it needs chromium).
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { CHROMIUM, runPage } from "../fixtures/Chromium.ts"
import { listenChannels } from "../channelServer.ts"
import type { PageReport } from "./page.ts"

describe("channels in chromium", () => {
  it.live("a page opens channels through a 401 → credentials → 101 handshake and uses them as WebSockets", () =>
    Effect.gen(function*() {
      assert.isTrue(Fs.existsSync(CHROMIUM), `no chromium at ${CHROMIUM}`)
      const { url, authRequests, connections } = yield* listenChannels({
        token: "letmein",
        listen: { protocols: ["app.v1"] }
      })
      const { report, consoleErrors } = yield* runPage<PageReport>({
        entry: Path.join(import.meta.dirname, "page.ts"),
        title: "plexus channels",
        run: "runChannels",
        args: [url, "letmein"]
      })

      assert.match(report.userAgent, /Chrome/)
      // The handshake: one 401 round, then the credentials were accepted.
      assert.deepStrictEqual(authRequests, [undefined, "Bearer letmein"])
      assert.deepStrictEqual(report.challenges, ["Bearer realm=\"plexus\""])
      assert.strictEqual(report.protocol, "app.v1")
      assert.strictEqual(connections[0]!.authorization, "Bearer letmein")
      // Messages on channel 0, on two channels the page opened, and on one the server opened.
      assert.strictEqual(report.zeroEcho, "hello on channel 0")
      assert.strictEqual(report.textEcho, "text on a")
      assert.deepStrictEqual(report.binaryEcho, [1, 2, 3, 250])
      assert.isTrue(report.binaryWasBlob, "binaryType blob is the default")
      assert.strictEqual(report.pushed.label, "news")
      assert.strictEqual(report.pushed.id % 2, 0)
      assert.deepStrictEqual(report.pushed.events, ["channel:news", "open", "message:welcome news"])
      // WebSocket states and the close code, which reached the server as a DESTROY.
      assert.deepStrictEqual(report.states, [0, 1, 2, 3])
      assert.deepStrictEqual(report.closeOfA, { code: 4001, reason: "page done", wasClean: true })
      assert.isTrue(report.connectionClosed)
      const log = connections[0]!
      assert.isTrue(log.destroys.some((d) => d.code === 4001 && d.reason === "page done" && !d.abort))
      assert.deepStrictEqual(
        log.received.map((r) => `${r.label}:${r.data.length}`),
        [":18", "echo:9", "binary:4", ":13"]
      )
      assert.deepStrictEqual(consoleErrors, [])
    }))
})
