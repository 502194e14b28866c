/**
 * The pool's send queue: framed messages waiting for a transport, oldest
 * first, and how the head of the queue becomes one coalesced write.
 *
 * A message enters the queue only when every transport is writing. The
 * first transport to finish its write takes the messages at the head, up to
 * a byte bound, as one batch, and writes them with one `writeAll`; each
 * sender completes when its batch is written. Entries are plain objects in
 * an array with a moving head, settled in place (a cancelled entry is
 * skipped when the head reaches it), so the queue costs no allocation
 * beyond the entry itself.
 *
 * @internal
 */
import type { NonEmptyReadonlyArray } from "effect/Array"
import type * as Effect from "effect/Effect"
import { type Delineation, DelineationError } from "@plexus/core"
import type { KcmError } from "../KcmError.ts"

/** In the queue, not yet taken by a transport. */
export const WAITING = 0
/** Taken into a transport's batch. */
export const STARTED = 1
/** Written, failed, timed out or cancelled: nothing more happens to it. */
export const SETTLED = 2

/**
 * One send in the queue: a single message, framed only when its batch is
 * written (the frames of a whole batch are built at once, into one buffer),
 * or a run of `sendAll`, framed already.
 *
 * @internal
 */
export class Pending {
  state = WAITING
  /** Resumes the sender; cleared when the sender stops waiting. */
  resume: ((effect: Effect.Effect<void, KcmError>) => void) | undefined = undefined
  /** A single message, not framed yet. */
  readonly message: Uint8Array | undefined
  /** The frames of a run. */
  readonly frames: NonEmptyReadonlyArray<Uint8Array> | undefined
  private readonly run: ReadonlyArray<Uint8Array> | undefined
  /** Payload bytes, for the counters. */
  readonly bytes: number
  /** Bytes counted against a batch's bound (a single message's frame header is not). */
  readonly size: number
  /** When a waiting entry gives up (send timeout), in clock milliseconds; `Infinity` without a timeout. */
  readonly deadline: number
  constructor(
    message: Uint8Array | undefined,
    frames: NonEmptyReadonlyArray<Uint8Array> | undefined,
    run: ReadonlyArray<Uint8Array> | undefined,
    bytes: number,
    size: number,
    deadline: number
  ) {
    this.message = message
    this.frames = frames
    this.run = run
    this.bytes = bytes
    this.size = size
    this.deadline = deadline
  }

  /** Messages it carries. */
  get count(): number {
    return this.run === undefined ? 1 : this.run.length
  }

  /** Appends the messages it carries to `out`. */
  messagesInto(out: Array<Uint8Array>): void {
    if (this.run === undefined) out.push(this.message!)
    else for (let i = 0; i < this.run.length; i++) out.push(this.run[i])
  }

  /** Settles the entry and resumes its sender, if it still waits. */
  settle(effect: Effect.Effect<void, KcmError>): void {
    this.state = SETTLED
    const resume = this.resume
    if (resume === undefined) return
    this.resume = undefined
    resume(effect)
  }
}

/** Bytes on the wire of a run of frames. */
export const sizeOf = (frames: ReadonlyArray<Uint8Array>): number => {
  let size = 0
  for (let i = 0; i < frames.length; i++) size += frames[i].length
  return size
}

/** @internal */
export class SendQueue {
  private entries: Array<Pending> = []
  private head = 0
  /** Entries in state WAITING. */
  waiting = 0

  push(entry: Pending): void {
    this.entries.push(entry)
    this.waiting++
  }

  /** The oldest waiting entry. */
  first(): Pending | undefined {
    this.skipSettled()
    return this.head < this.entries.length ? this.entries[this.head] : undefined
  }

  /**
   * Takes waiting entries from the head as one batch of at most `maxBytes`
   * on the wire (always at least one entry), marking them started.
   */
  takeBatch(maxBytes: number): Array<Pending> {
    const batch: Array<Pending> = []
    let bytes = 0
    const entries = this.entries
    let i = this.head
    for (; i < entries.length; i++) {
      const entry = entries[i]
      if (entry.state !== WAITING) continue
      if (batch.length > 0 && bytes + entry.size > maxBytes) break
      entry.state = STARTED
      batch.push(entry)
      bytes += entry.size
    }
    this.waiting -= batch.length
    this.head = i
    this.compact()
    return batch
  }

  /** Removes a waiting entry (its sender gave up). */
  cancel(entry: Pending): void {
    if (entry.state !== WAITING) return
    entry.state = SETTLED
    entry.resume = undefined
    this.waiting--
    this.skipSettled()
  }

  /** Puts started entries that were never written back at the head, in their order. */
  requeue(batch: ReadonlyArray<Pending>): void {
    const back: Array<Pending> = []
    for (let i = 0; i < batch.length; i++) {
      const entry = batch[i]
      if (entry.state !== STARTED) continue
      entry.state = WAITING
      back.push(entry)
    }
    if (back.length === 0) return
    this.entries = back.concat(this.entries.slice(this.head))
    this.head = 0
    this.waiting += back.length
  }

  /** Removes every waiting entry and answers them, oldest first. */
  takeAll(): Array<Pending> {
    const out: Array<Pending> = []
    for (let i = this.head; i < this.entries.length; i++) {
      const entry = this.entries[i]
      if (entry.state === WAITING) out.push(entry)
    }
    this.entries = []
    this.head = 0
    this.waiting = 0
    return out
  }

  private skipSettled(): void {
    const entries = this.entries
    while (this.head < entries.length && entries[this.head].state !== WAITING) this.head++
    this.compact()
  }

  private compact(): void {
    if (this.head === this.entries.length) {
      if (this.head > 0) {
        this.entries = []
        this.head = 0
      }
    } else if (this.head > 1024 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head)
      this.head = 0
    }
  }
}

/**
 * The chunks one `writeAll` writes for a batch: the single messages framed
 * together by one `encode` (small frames share one buffer, so a busy
 * transport makes one write call, one syscall on a socket, for many
 * messages), then the frames of each run. Each message's frames stay
 * together and in order, so every message stays whole.
 *
 * A message the delineation cannot frame is settled with `unframeable` and
 * dropped from `batch` (in place); the answer is `undefined` when nothing
 * is left to write.
 */
export const frameBatch = (
  batch: Array<Pending>,
  delineation: Delineation.Delineation,
  unframeable: (detail: string) => Effect.Effect<void, KcmError>
): NonEmptyReadonlyArray<Uint8Array> | undefined => {
  const singles: Array<Uint8Array> = []
  let runs = 0
  for (let i = 0; i < batch.length; i++) {
    const message = batch[i].message
    if (message !== undefined) singles.push(message)
    else runs++
  }
  let chunks: Array<Uint8Array> = []
  if (singles.length > 0) {
    const framed = delineation.encode(singles)
    if (!(framed instanceof DelineationError.DelineationError)) {
      if (runs === 0) return framed
      chunks = framed.slice()
    } else {
      // Rare: find the messages at fault, one by one; the others go out.
      let kept = 0
      for (let i = 0; i < batch.length; i++) {
        const entry = batch[i]
        if (entry.message !== undefined) {
          const one = delineation.encode([entry.message])
          if (one instanceof DelineationError.DelineationError) {
            entry.settle(unframeable(one.message))
            continue
          }
          for (let k = 0; k < one.length; k++) chunks.push(one[k])
        }
        batch[kept++] = entry
      }
      batch.length = kept
    }
  }
  for (let i = 0; i < batch.length; i++) {
    const frames = batch[i].frames
    if (frames !== undefined) for (let k = 0; k < frames.length; k++) chunks.push(frames[k])
  }
  return chunks.length === 0 ? undefined : chunks as unknown as NonEmptyReadonlyArray<Uint8Array>
}
