/**
 * The browser entry point imports no Node module, so it bundles for a page.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"

const specifiers = (file: string): Array<string> => {
  const source = Fs.readFileSync(file, "utf8")
  return [...source.matchAll(/(?:import|export)\s[^"']*?from\s+["']([^"']+)["']/g)].map((m) => m[1]!)
}

describe("browser entry", () => {
  it("src/browser.ts and everything it imports, @plexus/core's main entry included, stay clear of node:, ws and @effect/platform-node", () => {
    const root = Path.resolve(import.meta.dirname, "../src/browser.ts")
    const coreEntry = Path.resolve(import.meta.dirname, "../../core/src/index.ts")
    const seen = new Set<string>()
    const queue = [root]
    const external = new Set<string>()
    while (queue.length > 0) {
      const file = queue.pop()!
      if (seen.has(file)) continue
      seen.add(file)
      for (const spec of specifiers(file)) {
        if (spec.startsWith(".")) queue.push(Path.resolve(Path.dirname(file), spec))
        else if (spec === "@plexus/core") queue.push(coreEntry)
        else external.add(spec)
      }
    }
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
