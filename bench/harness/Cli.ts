/**
 * The command line of `npm run bench`:
 *
 *     npm run bench -- [filter ...] [--quick] [--reps N] [--out DIR] [--list]
 *
 * A filter selects rows whose "group/name" contains it (case-insensitive);
 * several filters select the union. No filter runs everything.
 */

export interface Options {
  readonly filters: ReadonlyArray<string>
  readonly quick: boolean
  readonly repetitions: number | undefined
  readonly outDir: string | undefined
  readonly list: boolean
  readonly help: boolean
}

export const usage = `usage: npm run bench -- [filter ...] [--quick] [--reps N] [--out DIR] [--list]

  filter      run only rows whose "group/name" contains it (case-insensitive)
  --quick     smoke run: small sizes, 3 repetitions; writes results.quick.{json,md}
  --reps N    measured repetitions per side for every row (default: per row, usually 5)
  --out DIR   write results there instead of bench/
  --list      list the rows and exit`

/** Parses `process.argv.slice(2)`; throws with a readable message on a bad flag. */
export const parse = (argv: ReadonlyArray<string>): Options => {
  const filters: Array<string> = []
  let quick = false
  let repetitions: number | undefined
  let outDir: string | undefined
  let list = false
  let help = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    const [flag, inline] = arg.startsWith("--") && arg.includes("=") ? arg.split("=", 2) : [arg, undefined]
    const value = () => {
      const v = inline ?? argv[++i]
      if (v === undefined) throw new Error(`${flag} needs a value`)
      return v
    }
    switch (flag) {
      case "--quick":
        quick = true
        break
      case "--reps": {
        const n = Number(value())
        if (!Number.isInteger(n) || n < 1) throw new Error(`--reps needs a positive integer`)
        repetitions = n
        break
      }
      case "--out":
        outDir = value()
        break
      case "--list":
        list = true
        break
      case "--help":
      case "-h":
        help = true
        break
      default:
        if (flag.startsWith("-")) throw new Error(`unknown flag ${flag}\n${usage}`)
        filters.push(flag.toLowerCase())
    }
  }
  return { filters, quick, repetitions, outDir, list, help }
}

/** Whether a row is selected by the filters. */
export const selects = (options: Options, group: string, name: string): boolean => {
  if (options.filters.length === 0) return true
  const id = `${group}/${name}`.toLowerCase()
  return options.filters.some((filter) => id.includes(filter))
}
