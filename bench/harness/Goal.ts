/**
 * A goal bounds a row's ratio (value / baselineValue), written the way the
 * issues state it: ">= 0.9", "<= 1.1", "> 1", "< 2". Whether "more is
 * better" is the row's `better` field; the goal is just the bound.
 */

const pattern = /^\s*(>=|<=|>|<)\s*(\d+(?:\.\d+)?)\s*$/

/** Parses a goal; throws on a malformed one, so a typo fails the row loudly. */
export const parse = (goal: string): { readonly op: ">=" | "<=" | ">" | "<"; readonly bound: number } => {
  const match = pattern.exec(goal)
  if (match === null) throw new RangeError(`malformed goal ${JSON.stringify(goal)}: expected e.g. ">= 0.9"`)
  return { op: match[1] as ">=" | "<=" | ">" | "<", bound: Number(match[2]) }
}

/** Whether `ratio` meets `goal`. */
export const meets = (goal: string, ratio: number): boolean => {
  const { op, bound } = parse(goal)
  switch (op) {
    case ">=":
      return ratio >= bound
    case "<=":
      return ratio <= bound
    case ">":
      return ratio > bound
    case "<":
      return ratio < bound
  }
}
