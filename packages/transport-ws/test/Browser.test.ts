/**
 * The browser entry point imports no Node module, so it bundles for a page.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Path from "node:path"
import { importGraph } from "./fixtures/ImportGraph.ts"

describe("browser entry", () => {
  it("src/browser.ts and everything it imports, @plexus/core's main entry included, stay clear of node:, ws and @effect/platform-node", () => {
    const root = Path.resolve(import.meta.dirname, "../src/browser.ts")
    const coreEntry = Path.resolve(import.meta.dirname, "../../core/src/index.ts")
    const { external, files: seen } = importGraph(root, (spec) => spec === "@plexus/core" ? coreEntry : undefined)
    assert.isAbove(seen.size, 5)
    assert.isTrue(seen.has(coreEntry), "the browser entry reaches @plexus/core")
    for (const spec of external) {
      assert.isFalse(
        spec.startsWith("node:") || spec === "ws" || spec.startsWith("@effect/platform-node"),
        `the browser entry reaches ${spec}`
      )
    }
    assert.isFalse([...seen].some((f) => f.endsWith("NodeWs.ts") || f.includes("internal/node")))
  })
})
