/**
 * Summaries of repeated measurements. Benchmarks here report medians: on a
 * shared 2-vCPU machine one slow repetition (a GC pause, a noisy neighbour)
 * is common, and the median ignores it where a mean would not.
 */

/** The median of a non-empty list; the mean of the middle two for even lengths. */
export const median = (values: ReadonlyArray<number>): number => {
  if (values.length === 0) throw new RangeError("median of no values")
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/** (max - min) / median: how far apart the repetitions were. */
export const spread = (values: ReadonlyArray<number>): number => {
  const m = median(values)
  return m === 0 ? 0 : (Math.max(...values) - Math.min(...values)) / m
}
