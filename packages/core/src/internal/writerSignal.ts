/**
 * The wake-up of an engine's writer fiber. The engine calls `wake` whenever
 * it has something to send; the wake-up is deferred to the end of the
 * current turn (a microtask), so that what one turn produces leaves in one
 * write instead of one write each, and a resumed fiber never runs inside
 * the engine call that woke it.
 *
 * @internal
 */
import * as Effect from "effect/Effect"

/** @internal */
export interface WriterSignal {
  /** Wakes the writer if it waits; coalesced to the end of the turn. */
  readonly wake: () => void
  /** Suspends the writer until the next `wake`. */
  readonly wait: Effect.Effect<void>
}

/** @internal */
export const makeWriterSignal = (): WriterSignal => {
  let waker: (() => void) | undefined
  let scheduled = false
  const wakeNow = () => {
    scheduled = false
    const w = waker
    if (w !== undefined) {
      waker = undefined
      w()
    }
  }
  return {
    wake: () => {
      if (waker === undefined || scheduled) return
      scheduled = true
      queueMicrotask(wakeNow)
    },
    wait: Effect.callback<void>((resume) => {
      waker = () => resume(Effect.void)
      return Effect.sync(() => {
        waker = undefined
      })
    })
  }
}
