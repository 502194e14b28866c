/**
 * Renders results for people: an aligned plain-text table for the terminal
 * and a Markdown table for `bench/results.md`. Both show the ratio next to
 * the direction that counts ("higher" or "lower" is better) and the goal,
 * with a pass/MISS verdict, so a reader never has to work out which way a
 * number should go.
 */
import type { Result } from "./Suite.ts"

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 })

/** A value for display: thousands separators, about four significant digits. */
export const formatValue = (value: number | null): string => {
  if (value === null) return "-"
  const magnitude = Math.abs(value)
  if (magnitude >= 1000) return integer.format(value)
  if (magnitude >= 100) return value.toFixed(1)
  if (magnitude >= 1) return value.toFixed(2)
  return value.toPrecision(3)
}

const verdict = (result: Result): string => {
  if (result.error !== undefined) return "ERROR"
  if (result.met === undefined) return "-"
  return result.met ? "pass" : "MISS"
}

const HEADERS = ["group", "name", "value", "baseline value", "unit", "baseline", "ratio", "better", "goal", "status"]

const cells = (result: Result): Array<string> => [
  result.group,
  result.name + (result.quick === true ? " (quick)" : ""),
  formatValue(result.value),
  formatValue(result.baselineValue),
  result.unit,
  result.baseline,
  result.ratio === null ? "-" : result.ratio.toFixed(3),
  result.better,
  result.goal ?? "-",
  verdict(result)
]

const NUMERIC = new Set([2, 3, 6])

/** An aligned plain-text table, errors listed underneath. */
export const text = (results: ReadonlyArray<Result>): string => {
  const rows = [HEADERS, ...results.map(cells)]
  const widths = HEADERS.map((_, c) => Math.max(...rows.map((row) => row[c].length)))
  const line = (row: ReadonlyArray<string>) =>
    row.map((cell, c) => (NUMERIC.has(c) ? cell.padStart(widths[c]) : cell.padEnd(widths[c]))).join("  ").trimEnd()
  const out = [line(rows[0]), widths.map((w) => "-".repeat(w)).join("  "), ...rows.slice(1).map(line)]
  for (const result of results) {
    if (result.error !== undefined) out.push(`error in ${result.group}/${result.name}: ${result.error}`)
  }
  return out.join("\n")
}

const escape = (cell: string) => cell.replaceAll("|", "\\|")

/** A Markdown table, errors listed underneath. */
export const markdown = (results: ReadonlyArray<Result>): string => {
  const align = HEADERS.map((_, c) => (NUMERIC.has(c) ? "---:" : "---"))
  const out = [
    `| ${HEADERS.join(" | ")} |`,
    `| ${align.join(" | ")} |`,
    ...results.map((result) => `| ${cells(result).map(escape).join(" | ")} |`)
  ]
  const errors = results.filter((result) => result.error !== undefined)
  if (errors.length > 0) {
    out.push("", ...errors.map((result) => `- error in \`${result.group}/${result.name}\`: ${result.error}`))
  }
  return out.join("\n")
}
