/**
 * The messages a carrier sends, written together: the messages queued in
 * one turn of the event loop (the requests of many calls, their answers)
 * leave in `sendAll`s of a few messages each, the last once the turn's
 * synchronous work is done. While a write waits for the transport
 * (backpressure), messages queue behind it and leave in the next one.
 * Order is kept.
 *
 * A message may carry a hook told when its write failed: the client uses
 * it to fail the call whose request it was.
 *
 * Unbatched, each message is sent on its own at once: for carriers that
 * spread messages over several connections (a KCM pool), where one batch
 * would take one connection.
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type { MessageTransport } from "@plexus/core"

export type OnFailure = (error: unknown) => void

/**
 * Messages that make a batch leave at once, without waiting for the end of
 * the turn: the peer starts on them while this side produces the rest.
 * Waiting for the whole turn made the two processes take turns (one idle
 * while the other worked through a batch of ~100 calls), which cost up to
 * half the calls per second of 100 concurrent callers on two cores; a few
 * messages per write keep both busy at a dozen writes per hundred calls.
 */
const FLUSH_AT = 8

export class Outbox {
  private readonly transport: MessageTransport.MessageTransport<unknown>
  private queue: Array<Uint8Array> = []
  private hooks: Array<OnFailure | undefined> | undefined = undefined
  private scheduled = false
  private writing = false
  private readonly batched: boolean

  constructor(transport: MessageTransport.MessageTransport<unknown>, batched = true) {
    this.transport = transport
    this.batched = batched
  }

  /** Messages waiting for a write. */
  get queued(): number {
    return this.queue.length
  }

  push(message: Uint8Array, onFailure?: OnFailure): void {
    if (!this.batched) {
      const fiber = Effect.runFork(this.transport.send(message))
      if (onFailure !== undefined) {
        fiber.addObserver((exit) => {
          if (Exit.isFailure(exit)) onFailure(Cause.squash(exit.cause))
        })
      }
      return
    }
    if (onFailure !== undefined) {
      this.hooks ??= new Array(this.queue.length)
      this.hooks[this.queue.length] = onFailure
    }
    this.queue.push(message)
    // A full batch leaves at once, so the peer starts on it while this side
    // is still producing the rest of the turn's messages.
    if (this.queue.length >= FLUSH_AT && !this.writing) return this.flush()
    if (!this.scheduled && !this.writing) {
      this.scheduled = true
      queueMicrotask(this.flush)
    }
  }

  private readonly flush = (): void => {
    this.scheduled = false
    if (this.writing || this.queue.length === 0) return
    const batch = this.queue
    const hooks = this.hooks
    this.queue = []
    this.hooks = undefined
    this.writing = true
    const fiber = Effect.runFork(this.transport.sendAll(batch))
    fiber.addObserver((exit) => {
      this.writing = false
      if (Exit.isFailure(exit) && hooks !== undefined) {
        const cause = Cause.squash(exit.cause)
        for (let i = 0; i < hooks.length; i++) hooks[i]?.(cause)
      }
      if (this.queue.length > 0) this.flush()
    })
  }
}
