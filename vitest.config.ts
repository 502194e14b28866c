import { defineConfig } from "vitest/config"

const pkg = (name: string) => ({
  extends: true as const,
  test: { name, root: `./packages/${name}`, include: ["test/**/*.test.ts"] }
})

export default defineConfig({
  test: {
    testTimeout: 60_000,
    passWithNoTests: true,
    hookTimeout: 30_000,
    reporters: ["default", "./.ci/SummaryReporter.ts"],
    projects: [
      pkg("core"),
      pkg("transport-tcp"),
      pkg("transport-ws"),
      pkg("kcm"),
      pkg("rpc"),
      { extends: true, test: { name: "bench", root: "./bench", include: ["test/**/*.test.ts"] } },
      { extends: true, test: { name: "examples", root: "./examples", include: ["*/test/**/*.test.ts"] } }
    ]
  }
})
