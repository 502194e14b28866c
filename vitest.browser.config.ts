/**
 * The real-browser tests (`npm run test:browser`): kept out of `npm test`
 * because they need Debian's chromium at /usr/bin/chromium (or
 * CHROMIUM_PATH); `.ci/run` installs it and runs them after `npm test`.
 */
import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    name: "browser",
    root: ".",
    include: ["packages/transport-ws/test/browser/**/*.browser.ts", "packages/rpc/test/browser/**/*.browser.ts"],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    reporters: ["default", new URL("./.ci/SummaryReporter.ts", import.meta.url).pathname]
  }
})
