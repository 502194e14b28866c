/**
 * A full garbage collection on demand. The runner collects before every
 * repetition so that garbage left by one side (or by the previous row) is
 * not paid for by the other side: in-process rows that allocate a view per
 * message are otherwise at the mercy of whoever triggered the last GC.
 *
 * Node hides `gc()` unless started with `--expose-gc`; setting the flag at
 * run time and fetching `gc` from a fresh context is the documented-by-use
 * way around that, and it needs no change to how `npm run bench` starts.
 */
import * as V8 from "node:v8"
import * as Vm from "node:vm"

let gc: (() => void) | undefined

/** Runs a full, synchronous garbage collection. */
export const collect = (): void => {
  if (gc === undefined) {
    V8.setFlagsFromString("--expose-gc")
    gc = Vm.runInNewContext("gc") as () => void
  }
  gc()
}
