/**
 * The browser entry point reaches no Node module of its own, so a page can
 * bundle it (the real-browser test in test/browser does).
 */
import { assert, describe, it } from "@effect/vitest"
import * as Path from "node:path"
import { importGraph } from "@plexus/transport-ws/test/fixtures/ImportGraph.ts"

describe("browser entry", () => {
  it("src/browser.ts and everything it imports stay clear of node:, ws, Node-only modules and the Node entry of transport-ws", () => {
    const { external, files: seen } = importGraph(Path.resolve(import.meta.dirname, "../src/browser.ts"))
    assert.isAbove(seen.size, 5)
    assert.isTrue(external.has("@plexus/transport-ws/browser"))
    for (const spec of external) {
      assert.isFalse(
        spec.startsWith("node:") || spec === "ws" || spec.startsWith("@effect/platform-node") ||
          spec === "@plexus/transport-ws",
        `the browser entry reaches ${spec}`
      )
    }
    assert.isFalse([...seen].some((f) => f.includes("Node")))
  })
})
