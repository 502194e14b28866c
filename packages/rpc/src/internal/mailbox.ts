/**
 * The messages of one call, from the carrier's reader to the call's fiber:
 * an array and at most one waiting taker, lighter than a `Queue` for the
 * one or few messages most calls receive. Unbounded: the carrier bounds it
 * (a streaming response sends its next chunk only after an Ack).
 */
import * as Effect from "effect/Effect"

export class Mailbox<A> {
  private items: Array<A> | undefined = undefined
  private waker: ((effect: Effect.Effect<A>) => void) | undefined = undefined

  /** Whether the call's fiber waits here with nothing left to handle. */
  get waiting(): boolean {
    return this.waker !== undefined
  }

  offer(item: A): void {
    const waker = this.waker
    if (waker !== undefined) {
      this.waker = undefined
      waker(Effect.succeed(item))
      return
    }
    if (this.items === undefined) this.items = [item]
    else this.items.push(item)
  }

  readonly take: Effect.Effect<A> = Effect.callback<A>((resume) => {
    const items = this.items
    if (items !== undefined && items.length > 0) {
      resume(Effect.succeed(items.shift()!))
      return
    }
    this.waker = resume
    return Effect.sync(() => {
      if (this.waker === resume) this.waker = undefined
    })
  })
}
