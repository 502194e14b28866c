/**
 * Persists results: `results.json` (an array of `Result` rows, for tools)
 * and `results.md` (the table plus the machine it ran on, for people).
 *
 * A filtered run (`npm run bench -- transport`) replaces only the rows it
 * measured and keeps the others, so one row can be re-measured without
 * re-running the bench; every row carries `measuredAt`, and its ratio is
 * always from a single run. Quick (smoke) runs write `results.quick.*`
 * instead, so they never overwrite real measurements. Files are written to
 * a temporary name and renamed, so a crash never leaves half a file.
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import type { Result } from "./Suite.ts"
import * as Table from "./Table.ts"

/** Where results go: `<dir>/results.json` or `<dir>/results.quick.json`, and the `.md` beside it. */
export const paths = (dir: string, quick: boolean) => {
  const stem = Path.join(dir, quick ? "results.quick" : "results")
  return { json: `${stem}.json`, markdown: `${stem}.md` }
}

const readExisting = (file: string): Array<Result> => {
  try {
    const parsed: unknown = JSON.parse(Fs.readFileSync(file, "utf8"))
    return Array.isArray(parsed) ? (parsed as Array<Result>) : []
  } catch {
    return []
  }
}

/**
 * Merges fresh results into what `file` held: fresh rows replace rows with
 * the same group and name, in place; new rows are appended.
 */
export const merge = (previous: ReadonlyArray<Result>, fresh: ReadonlyArray<Result>): Array<Result> => {
  const key = (r: Result) => `${r.group}\u0000${r.name}`
  const byKey = new Map(fresh.map((r) => [key(r), r]))
  const merged = previous.map((r) => byKey.get(key(r)) ?? r)
  const kept = new Set(previous.map(key))
  for (const r of fresh) if (!kept.has(key(r))) merged.push(r)
  return merged
}

/** A description of the machine, for the Markdown header. */
export const environment = (): string => {
  const cpus = Os.cpus()
  return [
    `Node ${process.version}`,
    `${Os.platform()} ${Os.release()} ${Os.arch()}`,
    `${cpus.length} vCPU (${cpus[0]?.model.trim() ?? "unknown CPU"})`,
    `${(Os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM`
  ].join(", ")
}

const writeAtomically = (file: string, content: string) => {
  const temporary = `${file}.tmp`
  Fs.writeFileSync(temporary, content)
  Fs.renameSync(temporary, file)
}

const markdownDocument = (results: ReadonlyArray<Result>, quick: boolean): string =>
  [
    `# plexus benchmark results${quick ? " (quick smoke run: reduced sizes, not for comparison)" : ""}`,
    "",
    `Last written ${new Date().toISOString()} by \`npm run bench${quick ? " -- --quick" : ""}\` on ${environment()}.`,
    "",
    "Each value is the median of several repetitions; the baseline was measured in the same run, its",
    "repetitions interleaved with the subject's. `ratio` = value / baseline value; `better` says which",
    "direction is good, and `goal` bounds the ratio. Only ratios are comparable across machines and runs.",
    "See `bench/README.md` for what each row measures.",
    "",
    Table.markdown(results),
    ""
  ].join("\n")

/**
 * Writes the results of this run, merged with earlier rows when `merging`
 * (a filtered run). Answers every row now on file.
 */
export const write = (
  dir: string,
  fresh: ReadonlyArray<Result>,
  options: { readonly quick: boolean; readonly merging: boolean }
): { readonly json: string; readonly markdown: string; readonly rows: ReadonlyArray<Result> } => {
  const files = paths(dir, options.quick)
  const rows = options.merging ? merge(readExisting(files.json), fresh) : [...fresh]
  Fs.mkdirSync(dir, { recursive: true })
  writeAtomically(files.json, `${JSON.stringify(rows, null, 2)}\n`)
  writeAtomically(files.markdown, markdownDocument(rows, options.quick))
  return { ...files, rows }
}
