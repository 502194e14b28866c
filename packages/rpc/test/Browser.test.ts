/**
 * The browser entry point reaches no Node module of its own, so a page can
 * bundle it (the real-browser test in test/browser does).
 */
import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"

const specifiers = (file: string): Array<string> => {
  const source = Fs.readFileSync(file, "utf8")
  return [...source.matchAll(/(?:import|export)\s(?!type\s)[^"']*?from\s+["']([^"']+)["']/g)].map((m) => m[1]!)
}

describe("browser entry", () => {
  it("src/browser.ts and everything it imports stay clear of node:, ws, Node-only modules and the Node entry of transport-ws", () => {
    const root = Path.resolve(import.meta.dirname, "../src/browser.ts")
    const seen = new Set<string>()
    const queue = [root]
    const external = new Set<string>()
    while (queue.length > 0) {
      const file = queue.pop()!
      if (seen.has(file)) continue
      seen.add(file)
      for (const spec of specifiers(file)) {
        if (spec.startsWith(".")) queue.push(Path.resolve(Path.dirname(file), spec))
        else external.add(spec)
      }
    }
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
