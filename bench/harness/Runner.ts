/**
 * Runs one row: set up, warm up, then measured repetitions in which the
 * subject and the baseline alternate (subject first on even repetitions,
 * baseline first on odd ones), so drift and machine noise hit both sides
 * alike. Reports medians and their ratio. A row that throws, or whose
 * repetition exceeds its time bound, yields a result with `error` set
 * instead of stopping the whole bench. A full GC runs before every
 * repetition (see `Gc.ts`).
 */
import * as Gc from "./Gc.ts"
import * as Goal from "./Goal.ts"
import { median } from "./Stats.ts"
import type { Result, Row } from "./Suite.ts"
import { formatValue } from "./Table.ts"

/** How the runner was asked to run. */
export interface RunnerOptions {
  readonly quick: boolean
  /** Overrides every row's repetition count (the `--reps` flag). */
  readonly repetitions?: number | undefined
  /** Progress lines go here (stderr in `bench/main.ts`). */
  readonly log: (line: string) => void
}

const DEFAULT_REPETITIONS = 5
const QUICK_REPETITIONS = 3
const DEFAULT_TIMEOUT_MS = 120_000

const withTimeout = <A>(promise: Promise<A>, ms: number, what: string): Promise<A> => {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

const check = (value: number, what: string): number => {
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    throw new Error(`${what} answered ${String(value)}, not a positive finite number`)
  }
  return value
}

const describeError = (error: unknown): string =>
  error instanceof Error ? error.message.split("\n")[0] : String(error)

/** Measures one row; never throws. */
export const runRow = async (group: string, row: Row, options: RunnerOptions): Promise<Result> => {
  const id = `${group}/${row.name}`
  const better = row.better ?? "higher"
  // Key order is the order readers see in results.json.
  const result = (
    value: number | null,
    baselineValue: number | null,
    extra: Partial<Pick<Result, "met" | "runs" | "baselineRuns" | "error">>
  ): Result => ({
    group,
    name: row.name,
    value,
    unit: row.unit,
    baseline: row.baseline,
    baselineValue,
    ratio: value === null || baselineValue === null ? null : value / baselineValue,
    better,
    ...(row.goal === undefined ? {} : { goal: row.goal }),
    ...(extra.met === undefined ? {} : { met: extra.met }),
    ...(extra.runs === undefined ? {} : { runs: extra.runs, baselineRuns: extra.baselineRuns }),
    ...(options.quick ? { quick: true } : {}),
    measuredAt: new Date().toISOString(),
    ...(extra.error === undefined ? {} : { error: extra.error })
  })
  const repetitions = options.repetitions ?? row.repetitions ?? (options.quick ? QUICK_REPETITIONS : DEFAULT_REPETITIONS)
  const warmup = row.warmup ?? 1
  const timeoutMs = row.timeoutMs ?? DEFAULT_TIMEOUT_MS
  const runs: Array<number> = []
  const baselineRuns: Array<number> = []
  const started = performance.now()
  try {
    if (row.goal !== undefined) Goal.parse(row.goal)
    options.log(`${id}: setting up${row.description === undefined ? "" : ` (${row.description})`}`)
    const contest = await row.setup({ quick: options.quick })
    try {
      const subject = async (label: string) => {
        Gc.collect()
        return check(await withTimeout(contest.subject(), timeoutMs, `${id} subject ${label}`), `${id} subject`)
      }
      const baseline = async (label: string) => {
        Gc.collect()
        return check(await withTimeout(contest.baseline(), timeoutMs, `${id} baseline ${label}`), `${id} baseline`)
      }
      for (let i = 0; i < warmup; i++) {
        const s = await subject("warm-up")
        const b = await baseline("warm-up")
        options.log(
          `${id}: warm-up ${i + 1}/${warmup}  subject ${formatValue(s)}  baseline ${formatValue(b)} ${row.unit}`
        )
      }
      for (let i = 0; i < repetitions; i++) {
        let s: number
        let b: number
        if (i % 2 === 0) {
          s = await subject(`repetition ${i + 1}`)
          b = await baseline(`repetition ${i + 1}`)
        } else {
          b = await baseline(`repetition ${i + 1}`)
          s = await subject(`repetition ${i + 1}`)
        }
        runs.push(s)
        baselineRuns.push(b)
        options.log(
          `${id}: rep ${i + 1}/${repetitions}  subject ${formatValue(s)}  baseline ${formatValue(b)} ${row.unit}` +
            `  (ratio ${(s / b).toFixed(3)})`
        )
      }
    } finally {
      await contest.close?.()
    }
    const value = median(runs)
    const baselineValue = median(baselineRuns)
    const ratio = value / baselineValue
    const met = row.goal === undefined ? undefined : Goal.meets(row.goal, ratio)
    options.log(
      `${id}: median ${formatValue(value)} vs ${formatValue(baselineValue)} ${row.unit}, ratio ${ratio.toFixed(3)}` +
        `${met === undefined ? "" : met ? `, meets ${row.goal}` : `, MISSES ${row.goal}`}` +
        ` (${((performance.now() - started) / 1000).toFixed(1)} s)`
    )
    return result(value, baselineValue, { ...(met === undefined ? {} : { met }), runs, baselineRuns })
  } catch (error) {
    const message = describeError(error)
    options.log(`${id}: FAILED: ${error instanceof Error ? (error.stack ?? message) : message}`)
    return result(null, null, { ...(runs.length > 0 ? { runs, baselineRuns } : {}), error: message })
  }
}
