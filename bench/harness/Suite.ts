/**
 * A `Suite` is one group of benchmark rows, and a `Row` is one comparison:
 * a subject (plexus code) against a named baseline, measured in the same
 * run. The one thing a row author must know: `setup` returns a `Contest`
 * whose `subject` and `baseline` each perform one repetition and answer one
 * number in the row's unit; the runner interleaves them, so both see the
 * same machine noise, and reports medians.
 *
 * Every file in `bench/suites/` exports `suite: Suite`; `bench/main.ts`
 * discovers them.
 */

/** Which way is good for a row's value. */
export type Better = "higher" | "lower"

/** Options every row sees when it is set up. */
export interface RunOptions {
  /** Smoke-run mode: shrink sizes so the whole bench takes seconds. */
  readonly quick: boolean
}

/**
 * One prepared comparison. Each function performs one repetition and
 * answers its value in the row's unit (e.g. MB/s). `close` releases what
 * `setup` opened (child processes, buffers); it runs even if a repetition
 * failed.
 */
export interface Contest {
  readonly subject: () => Promise<number>
  readonly baseline: () => Promise<number>
  readonly close?: (() => Promise<void>) | undefined
}

/** One comparison of plexus code against a named baseline. */
export interface Row {
  /** Stable identifier within the group, e.g. "tcp-1GiB". */
  readonly name: string
  /** Unit of both values, e.g. "MB/s" or "msg/s". */
  readonly unit: string
  /** What the subject is compared against, e.g. "raw node:net". */
  readonly baseline: string
  /** Default "higher". The ratio is value / baselineValue either way. */
  readonly better?: Better | undefined
  /** A bound on the ratio, e.g. ">= 0.9" or "<= 1.1". */
  readonly goal?: string | undefined
  /** Measured repetitions of each side. Default 5 (3 in quick mode). */
  readonly repetitions?: number | undefined
  /** Unrecorded repetitions of each side before measuring. Default 1. */
  readonly warmup?: number | undefined
  /** Bound on one repetition, in milliseconds. Default 120 000. */
  readonly timeoutMs?: number | undefined
  /** One line for the README and the progress log: what is measured. */
  readonly description?: string | undefined
  readonly setup: (options: RunOptions) => Promise<Contest>
}

/** The rows of one group, e.g. "transport". */
export interface Suite {
  readonly group: string
  readonly rows: ReadonlyArray<Row>
}

/** One measured row, as written to `bench/results.json`. */
export interface Result {
  readonly group: string
  readonly name: string
  /** Median of the subject's repetitions; null when the row failed. */
  readonly value: number | null
  readonly unit: string
  readonly baseline: string
  /** Median of the baseline's repetitions, measured in the same run. */
  readonly baselineValue: number | null
  /** value / baselineValue. */
  readonly ratio: number | null
  readonly better: Better
  readonly goal?: string | undefined
  /** Whether the ratio meets the goal; absent without a goal or a ratio. */
  readonly met?: boolean | undefined
  /** The subject's per-repetition values, in measurement order. */
  readonly runs?: ReadonlyArray<number> | undefined
  /** The baseline's per-repetition values, in measurement order. */
  readonly baselineRuns?: ReadonlyArray<number> | undefined
  /** Set when the row was measured in quick (smoke) mode. */
  readonly quick?: boolean | undefined
  /** ISO time the row finished. */
  readonly measuredAt: string
  /** Why the row produced no value. */
  readonly error?: string | undefined
}
