/**
 * The bench harness works: its pieces compute what the README says, and a
 * quick run of every suite completes and writes well-formed results.
 *
 * Run with `npx vitest run --root bench` (the root vitest config only lists
 * packages).
 */
import { assert, describe, it } from "@effect/vitest"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Url from "node:url"
import * as Cli from "../harness/Cli.ts"
import * as Goal from "../harness/Goal.ts"
import * as Results from "../harness/Results.ts"
import { runRow } from "../harness/Runner.ts"
import { median } from "../harness/Stats.ts"
import type { Result, Row } from "../harness/Suite.ts"
import * as Table from "../harness/Table.ts"

const BENCH_DIR = Path.join(Path.dirname(Url.fileURLToPath(import.meta.url)), "..")

const result = (group: string, name: string, value: number): Result => ({
  group,
  name,
  value,
  unit: "x/s",
  baseline: "b",
  baselineValue: 1,
  ratio: value,
  better: "higher",
  measuredAt: "2020-01-01T00:00:00.000Z"
})

describe("harness", () => {
  it("takes the median, averaging the middle pair of an even count", () => {
    assert.strictEqual(median([5, 1, 3]), 3)
    assert.strictEqual(median([4, 1, 3, 2]), 2.5)
  })

  it("checks ratios against goals in either direction and rejects malformed goals", () => {
    assert.isTrue(Goal.meets(">= 0.9", 0.9))
    assert.isFalse(Goal.meets(">= 0.9", 0.89))
    assert.isTrue(Goal.meets("<= 1.1", 1.05))
    assert.throws(() => Goal.parse("at least 0.9"))
  })

  it("selects rows whose group/name contains any filter, ignoring case", () => {
    const options = Cli.parse(["Transport", "--quick", "--reps=2"])
    assert.isTrue(options.quick)
    assert.strictEqual(options.repetitions, 2)
    assert.isTrue(Cli.selects(options, "transport", "tcp-1GiB"))
    assert.isFalse(Cli.selects(options, "delineation", "length-prefix-1KiB"))
    assert.isTrue(Cli.selects(Cli.parse([]), "anything", "at-all"))
  })

  it("a filtered run replaces its own rows and keeps the others in place", () => {
    const merged = Results.merge([result("a", "1", 1), result("b", "2", 2)], [result("a", "1", 9), result("c", "3", 3)])
    assert.deepStrictEqual(merged.map((r) => [r.group, r.value]), [["a", 9], ["b", 2], ["c", 3]])
  })

  it("interleaves subject and baseline, reports medians and the ratio, and closes the contest", async () => {
    const order: Array<string> = []
    let closed = false
    const row: Row = {
      name: "fake",
      unit: "x/s",
      baseline: "fake baseline",
      goal: ">= 0.9",
      warmup: 0,
      repetitions: 3,
      setup: async () => {
        let s = 0
        let b = 0
        return {
          subject: async () => (order.push("s"), [10, 30, 20][s++]),
          baseline: async () => (order.push("b"), [20, 20, 20][b++]),
          close: async () => {
            closed = true
          }
        }
      }
    }
    const r = await runRow("g", row, { quick: false, log: () => {} })
    assert.deepStrictEqual(order, ["s", "b", "b", "s", "s", "b"])
    assert.strictEqual(r.value, 20)
    assert.strictEqual(r.baselineValue, 20)
    assert.strictEqual(r.ratio, 1)
    assert.strictEqual(r.met, true)
    assert.deepStrictEqual(r.runs, [10, 30, 20])
    assert.isTrue(closed)
  })

  it("turns a failing row into an error result instead of throwing", async () => {
    const row: Row = {
      name: "broken",
      unit: "x/s",
      baseline: "b",
      setup: async () => {
        throw new Error("no such transport")
      }
    }
    const r = await runRow("g", row, { quick: false, log: () => {} })
    assert.strictEqual(r.value, null)
    assert.strictEqual(r.error, "no such transport")
    assert.include(Table.text([r]), "ERROR")
  })

  it("a quick run of every suite completes and writes well-formed results", () => {
    const out = Fs.mkdtempSync(Path.join(Os.tmpdir(), "plexus-bench-"))
    try {
      // Bounded by the spawn timeout: a hung suite fails the test instead of the run.
      const run = ChildProcess.spawnSync(process.execPath, [Path.join(BENCH_DIR, "main.ts"), "--quick", "--out", out], {
        encoding: "utf8",
        timeout: 150_000
      })
      assert.strictEqual(run.status, 0, run.stderr)
      const rows = JSON.parse(Fs.readFileSync(Path.join(out, "results.quick.json"), "utf8")) as Array<Result>
      assert.isAbove(rows.length, 0)
      for (const row of rows) {
        assert.isNumber(row.value, `${row.group}/${row.name}`)
        assert.isNumber(row.baselineValue, `${row.group}/${row.name}`)
        assert.closeTo(row.ratio!, row.value! / row.baselineValue!, 1e-9)
        assert.isTrue(row.quick)
      }
      assert.include(Fs.readFileSync(Path.join(out, "results.quick.md"), "utf8"), "| group | name |")
    } finally {
      Fs.rmSync(out, { recursive: true, force: true })
    }
  }, 180_000)
})
