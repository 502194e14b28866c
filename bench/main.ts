/**
 * `npm run bench`: runs every row of every suite in `bench/suites/`, one at
 * a time, logging progress to stderr; then prints the table to stdout and
 * writes `bench/results.json` and `bench/results.md`. See `bench/README.md`
 * and `npm run bench -- --help`.
 *
 * Exits 1 if any row failed to produce a value; a missed goal is reported
 * in the table but is not a failure of the bench itself.
 */
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as Url from "node:url"
import * as Cli from "./harness/Cli.ts"
import * as Results from "./harness/Results.ts"
import { runRow } from "./harness/Runner.ts"
import type { Result, Suite } from "./harness/Suite.ts"
import * as Table from "./harness/Table.ts"

const BENCH_DIR = Path.dirname(Url.fileURLToPath(import.meta.url))
const SUITES_DIR = Path.join(BENCH_DIR, "suites")

const log = (line: string) => process.stderr.write(`[bench] ${line}\n`)

// Ctrl-C still runs the exit hooks that kill peer processes.
process.on("SIGINT", () => process.exit(130))
process.on("SIGTERM", () => process.exit(143))

const loadSuites = async (): Promise<{ suites: Array<Suite>; failures: Array<Result> }> => {
  const files = Fs.readdirSync(SUITES_DIR).filter((f) => f.endsWith(".ts")).sort()
  const suites: Array<Suite> = []
  const failures: Array<Result> = []
  for (const file of files) {
    try {
      const module = (await import(Url.pathToFileURL(Path.join(SUITES_DIR, file)).href)) as { suite?: Suite }
      if (module.suite === undefined) throw new Error(`${file} exports no \`suite\``)
      suites.push(module.suite)
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error)
      log(`could not load suite ${file}: ${message}`)
      failures.push({
        group: file.replace(/\.ts$/, ""),
        name: "(suite failed to load)",
        value: null,
        unit: "-",
        baseline: "-",
        baselineValue: null,
        ratio: null,
        better: "higher",
        measuredAt: new Date().toISOString(),
        error: message
      })
    }
  }
  return { suites, failures }
}

const main = async (): Promise<number> => {
  let options: Cli.Options
  try {
    options = Cli.parse(process.argv.slice(2))
  } catch (error) {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`)
    return 2
  }
  if (options.help) {
    process.stdout.write(`${Cli.usage}\n`)
    return 0
  }
  const { suites, failures } = await loadSuites()
  const selected = suites.flatMap((suite) =>
    suite.rows.filter((row) => Cli.selects(options, suite.group, row.name)).map((row) => ({ group: suite.group, row }))
  )
  if (options.list) {
    for (const { group, row } of selected) {
      process.stdout.write(`${group}/${row.name}  (${row.unit} vs ${row.baseline}${row.goal ? `, goal ${row.goal}` : ""})\n`)
    }
    return 0
  }
  if (selected.length === 0 && failures.length === 0) {
    process.stderr.write(`no rows match ${options.filters.join(", ")}; try --list\n`)
    return 2
  }
  log(`${selected.length} row(s)${options.quick ? ", quick mode" : ""}; ${Results.environment()}`)
  const started = performance.now()
  const results: Array<Result> = [...failures]
  for (const { group, row } of selected) {
    results.push(await runRow(group, row, { quick: options.quick, repetitions: options.repetitions, log }))
  }
  log(`done in ${((performance.now() - started) / 1000).toFixed(1)} s`)
  const written = Results.write(options.outDir ?? BENCH_DIR, results, {
    quick: options.quick,
    merging: options.filters.length > 0
  })
  process.stdout.write(`${Table.text(results)}\n`)
  log(`wrote ${Path.relative(process.cwd(), written.json)} and ${Path.relative(process.cwd(), written.markdown)}`)
  return results.some((r) => r.error !== undefined) ? 1 : 0
}

// Exit explicitly: a suite may leave a runtime or handle behind.
main().then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`)
    process.exit(1)
  }
)
