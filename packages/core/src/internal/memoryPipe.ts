/**
 * One direction of an in-memory connection: a bounded byte (or message)
 * buffer between writers and readers, with the faults of `Memory.Faults`
 * applied on the way out.
 *
 * Plain TypeScript state machine; Effect only where a fiber has to wait.
 * Timed faults (latency, bandwidth) never start timers of their own: a
 * reader waiting for bytes still in flight sleeps in its own fiber, so
 * nothing outlives the fibers that use the pipe.
 *
 * @internal
 */
import type { NonEmptyReadonlyArray } from "effect/Array"
import type * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Scheduler from "effect/Scheduler"
import type * as Socket from "effect/socket/Socket"
import { concatBytes } from "./bytes.ts"

/** @internal */
export interface PipeOptions {
  /** Whole messages: never split, merged or cut; `cutAt` counts messages. */
  readonly messages: boolean
  readonly highWaterMark: number
  /** 0 when writes are not split. */
  readonly splitMin: number
  readonly splitMax: number
  readonly coalesce: boolean
  readonly latencyMs: number
  /** `Infinity` when the bandwidth is not capped. */
  readonly bytesPerMs: number
  readonly corruptProbability: number
  readonly seed: number
}

/** @internal */
export interface PipeStats {
  readonly written: number
  readonly delivered: number
  readonly buffered: number
  readonly messagesWritten: number
  readonly messagesDelivered: number
  readonly waitingReaders: number
  readonly waitingWriters: number
}

interface PendingWrite {
  readonly chunks: ReadonlyArray<Uint8Array>
  readonly resume: (effect: Effect.Effect<void, Socket.SocketError>) => void
}

/**
 * mulberry32: tiny, fast, and good enough to scatter chunk sizes and bit
 * flips reproducibly.
 *
 * @internal
 */
export const mulberry32 = (seed: number): () => number => {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6D2B79F5) | 0
    let t = Math.imul(state ^ (state >>> 15), 1 | state)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** @internal */
export const deriveSeed = (seed: number, salt: number): number => (seed ^ Math.imul(salt + 1, 0x9E3779B9)) >>> 0

/** Most pieces handed out in one pull when writes are split. */
const MAX_SPLIT_BATCH = 16

/** Most chunks (messages) handed out in one pull, as Node's socket adapter does. */
const MAX_BATCH = 4096

/** With a bandwidth cap, a reader waits for at least this much link time worth of bytes. */
const BANDWIDTH_QUANTUM_MS = 10

/** @internal */
export class Pipe {
  readonly options: PipeOptions
  readonly clock: Clock.Clock
  readonly dispatcher: Scheduler.SchedulerDispatcher
  readonly timed: boolean
  readonly quantum: number
  onCut: () => void = () => {}

  stalled = false
  /** Delivered units (bytes, or messages) after which the connection resets; -1 when none. */
  cutAt = -1
  corruptMask = 0
  /** Readers fail with this once the buffer is drained (clean end). */
  ended: Socket.SocketError | undefined = undefined
  /** Readers fail with this at once; buffered bytes are gone. */
  failure: Socket.SocketError | undefined = undefined
  /** Writers fail with this. */
  writeFailure: Socket.SocketError | undefined = undefined

  written = 0
  delivered = 0
  buffered = 0
  messagesWritten = 0
  messagesDelivered = 0

  private queue: Array<Uint8Array> = []
  private times: Array<number> = []
  private head = 0
  private headOffset = 0
  private headPiece = 0
  private linkFreeAt = 0
  private readonly readers = new Set<() => void>()
  private wakeScheduled = false
  /** Bumped on every change readers may wait for, so a reader never sleeps through one. */
  private version = 0
  private readonly writers: Array<PendingWrite> = []
  private readonly splitRandom: () => number
  private readonly batchRandom: () => number
  private readonly corruptRandom: () => number

  constructor(options: PipeOptions, clock: Clock.Clock, dispatcher: Scheduler.SchedulerDispatcher) {
    this.options = options
    this.clock = clock
    this.dispatcher = dispatcher
    this.timed = options.latencyMs > 0 || options.bytesPerMs !== Infinity
    this.quantum = options.bytesPerMs === Infinity
      ? Infinity
      : Math.max(1, Math.ceil(options.bytesPerMs * BANDWIDTH_QUANTUM_MS))
    this.splitRandom = mulberry32(deriveSeed(options.seed, 1))
    this.batchRandom = mulberry32(deriveSeed(options.seed, 2))
    this.corruptRandom = mulberry32(deriveSeed(options.seed, 3))
  }

  stats(): PipeStats {
    return {
      written: this.written,
      delivered: this.delivered,
      buffered: this.buffered,
      messagesWritten: this.messagesWritten,
      messagesDelivered: this.messagesDelivered,
      waitingReaders: this.readers.size,
      waitingWriters: this.writers.length
    }
  }

  // ---------------------------------------------------------------------------
  // writing
  // ---------------------------------------------------------------------------

  /** Accepts the chunks as one unit, or suspends (FIFO) until there is room. Run inside `Effect.suspend`. */
  offer(chunks: ReadonlyArray<Uint8Array>): Effect.Effect<void, Socket.SocketError> {
    if (this.writeFailure !== undefined) return Effect.fail(this.writeFailure)
    if (this.writers.length === 0 && this.hasRoom()) {
      this.push(chunks)
      return Effect.void
    }
    return Effect.callback<void, Socket.SocketError>((resume) => {
      // The fiber may have yielded since the check above: decide again.
      if (this.writeFailure !== undefined) return resume(Effect.fail(this.writeFailure))
      if (this.writers.length === 0 && this.hasRoom()) {
        this.push(chunks)
        return resume(Effect.void)
      }
      const pending: PendingWrite = { chunks, resume }
      this.writers.push(pending)
      return Effect.sync(() => {
        const index = this.writers.indexOf(pending)
        if (index !== -1) this.writers.splice(index, 1)
      })
    })
  }

  private hasRoom(): boolean {
    return this.buffered < this.options.highWaterMark &&
      (!this.options.messages || this.queue.length - this.head < this.options.highWaterMark)
  }

  private push(chunks: ReadonlyArray<Uint8Array>): void {
    const { bytesPerMs, latencyMs, messages } = this.options
    const now = this.timed ? this.clock.currentTimeMillisUnsafe() : 0
    for (let i = 0; i < chunks.length; i++) {
      const chunk = chunks[i]
      const size = chunk.length
      if (size === 0 && !messages) continue
      if (this.timed) {
        const start = Math.max(now, this.linkFreeAt)
        if (bytesPerMs !== Infinity) this.linkFreeAt = start + size / bytesPerMs
        this.times.push(start + latencyMs)
      }
      this.queue.push(chunk)
      this.buffered += size
      this.written += size
      if (messages) this.messagesWritten++
    }
    this.wakeReaders()
  }

  /** Admits waiting writers, in order, while there is room. */
  private pump(): void {
    while (this.writers.length > 0 && this.writeFailure === undefined && this.hasRoom()) {
      const pending = this.writers.shift()!
      this.push(pending.chunks)
      this.resumeLater(pending, Effect.void)
    }
  }

  /**
   * Resumes a suspended fiber from the scheduler rather than from the
   * current call stack, so a writer and a reader never run inside each
   * other, and a reader woken by many writes takes them in one batch.
   */
  private resumeLater(pending: PendingWrite, effect: Effect.Effect<void, Socket.SocketError>): void {
    this.dispatcher.scheduleTask(() => pending.resume(effect), 0)
  }

  private failWriters(): void {
    if (this.writers.length === 0) return
    const writers = this.writers.splice(0)
    const error = Effect.fail(this.writeFailure!)
    for (let i = 0; i < writers.length; i++) this.resumeLater(writers[i], error)
  }

  // ---------------------------------------------------------------------------
  // reading
  // ---------------------------------------------------------------------------

  /**
   * A pull over this pipe. `onEnd` turns the clean end into the reader's
   * failure; `guard.error`, once set, fails the pull whatever is buffered.
   */
  makePull<E>(
    onEnd: (error: Socket.SocketError) => Effect.Effect<never, E>,
    guard?: { error: Socket.SocketError | undefined }
  ): Effect.Effect<NonEmptyReadonlyArray<Uint8Array>, Socket.SocketError | E> {
    const loop: Effect.Effect<NonEmptyReadonlyArray<Uint8Array>, Socket.SocketError | E> = Effect.suspend(() => {
      if (guard !== undefined && guard.error !== undefined) return Effect.fail(guard.error)
      if (this.failure !== undefined) return Effect.fail(this.failure)
      const batch = this.take()
      if (batch !== undefined) return Effect.succeed(batch)
      if (this.failure !== undefined) return Effect.fail(this.failure)
      if (!this.stalled && this.ended !== undefined && this.head === this.queue.length) return onEnd(this.ended)
      return Effect.andThen(this.wait(this.version), loop)
    })
    return loop
  }

  private wait(seen: number): Effect.Effect<void> {
    const signal = Effect.callback<void>((resume) => {
      // The fiber may have yielded since it looked: if anything changed, look again.
      if (this.version !== seen) return resume(Effect.void)
      const wake = () => resume(Effect.void)
      this.readers.add(wake)
      return Effect.sync(() => {
        this.readers.delete(wake)
      })
    })
    if (!this.timed || this.stalled || this.head === this.queue.length) return signal
    const delay = Math.max(1, Math.ceil(this.wakeAt() - this.clock.currentTimeMillisUnsafe()))
    return Effect.raceFirst(signal, this.clock.sleep(Duration.millis(delay)))
  }

  /** Every change a waiting reader could care about goes through here. */
  wakeReaders(): void {
    this.version++
    if (this.wakeScheduled || this.readers.size === 0) return
    this.wakeScheduled = true
    this.dispatcher.scheduleTask(this.releaseReaders, 0)
  }

  private readonly releaseReaders = (): void => {
    this.wakeScheduled = false
    const size = this.readers.size
    if (size === 0) return
    if (size === 1) {
      const [wake] = this.readers
      this.readers.clear()
      wake()
      return
    }
    const readers = Array.from(this.readers)
    this.readers.clear()
    for (let i = 0; i < readers.length; i++) readers[i]()
  }

  /** When the head of the queue becomes deliverable (timed pipes only). */
  private wakeAt(): number {
    const t0 = this.times[this.head]
    const { bytesPerMs, messages, splitMin } = this.options
    if (bytesPerMs === Infinity) return t0
    const size = this.queue[this.head].length
    const remaining = size - this.headOffset
    const target = messages
      ? remaining
      : splitMin > 0 && this.headPiece > 0
      ? this.headPiece
      : Math.min(remaining, splitMin > 0 ? splitMin : this.quantum)
    return t0 + (this.headOffset + target) / bytesPerMs
  }

  /** Takes what is deliverable now, applying every fault; undefined if nothing is. */
  private take(): NonEmptyReadonlyArray<Uint8Array> | undefined {
    if (this.stalled || this.head === this.queue.length) return undefined
    const { bytesPerMs, messages, splitMax, splitMin } = this.options
    const now = this.timed ? this.clock.currentTimeMillisUnsafe() : 0
    let budget = this.cutAt < 0 ? Infinity : this.cutAt - (messages ? this.messagesDelivered : this.delivered)
    const maxPieces = splitMin > 0 ? 1 + Math.floor(this.batchRandom() * MAX_SPLIT_BATCH) : MAX_BATCH
    let out: Array<Uint8Array> | undefined
    while (this.head < this.queue.length && budget > 0 && (out === undefined || out.length < maxPieces)) {
      const chunk = this.queue[this.head]
      const size = chunk.length
      const remaining = size - this.headOffset
      let available = remaining
      if (this.timed) {
        const t0 = this.times[this.head]
        if (now < t0) break
        if (bytesPerMs !== Infinity) available = Math.min(size, Math.floor((now - t0) * bytesPerMs)) - this.headOffset
      }
      let piece: Uint8Array
      let n: number
      if (messages) {
        if (available < remaining) break
        piece = chunk
        n = size
        this.advance()
        this.messagesDelivered++
        budget--
      } else {
        if (splitMin > 0) {
          if (this.headPiece === 0) {
            this.headPiece = Math.min(remaining, splitMin + Math.floor(this.splitRandom() * (splitMax - splitMin + 1)))
          }
          n = this.headPiece
          if (available < n) break
        } else {
          n = available
          if (n <= 0 || (n < remaining && n < this.quantum)) break
        }
        if (n > budget) n = budget
        piece = n === size ? chunk : chunk.subarray(this.headOffset, this.headOffset + n)
        this.headOffset += n
        this.headPiece = 0
        if (this.headOffset === size) this.advance()
        budget -= n
      }
      this.delivered += n
      this.buffered -= n
      ;(out ??= []).push(piece)
    }
    if (out === undefined) return undefined
    let owned = false
    if (this.options.coalesce && !messages && out.length > 1) {
      out = [concatBytes(out)]
      owned = true
    }
    if (this.corruptMask !== 0 || this.options.corruptProbability > 0) this.corrupt(out, owned)
    if (budget === 0 && this.cutAt >= 0) this.onCut()
    else this.pump()
    return out as unknown as NonEmptyReadonlyArray<Uint8Array>
  }

  private advance(): void {
    this.head++
    this.headOffset = 0
    this.headPiece = 0
    if (this.head === this.queue.length) {
      this.queue.length = 0
      this.times.length = 0
      this.head = 0
    } else if (this.head >= 1024 && this.head * 2 >= this.queue.length) {
      this.queue.splice(0, this.head)
      if (this.timed) this.times.splice(0, this.head)
      this.head = 0
    }
  }

  private corrupt(out: Array<Uint8Array>, owned: boolean): void {
    const probability = this.options.corruptProbability
    for (let i = 0; i < out.length; i++) {
      let piece = out[i]
      if (piece.length === 0) continue
      let copied = owned
      if (this.corruptMask !== 0) {
        piece = piece.slice()
        copied = true
        piece[0] ^= this.corruptMask
        this.corruptMask = 0
      }
      if (probability > 0 && this.corruptRandom() < probability) {
        if (!copied) piece = piece.slice()
        const bit = Math.floor(this.corruptRandom() * piece.length * 8)
        piece[bit >>> 3] ^= 1 << (bit & 7)
      }
      out[i] = piece
    }
  }

  // ---------------------------------------------------------------------------
  // control
  // ---------------------------------------------------------------------------

  stall(): void {
    this.stalled = true
  }

  resume(): void {
    if (!this.stalled) return
    this.stalled = false
    this.wakeReaders()
  }

  /** Resets the connection after `after` more units are delivered (at once when 0 or undefined). */
  cut(after: number | undefined): void {
    if (this.failure !== undefined) return
    const delivered = this.options.messages ? this.messagesDelivered : this.delivered
    if (after === undefined || after <= 0) {
      this.cutAt = delivered
      this.onCut()
    } else {
      this.cutAt = delivered + Math.floor(after)
    }
  }

  /** The writing end closed: readers get what is buffered, then `error`. */
  end(error: Socket.SocketError, writeError: Socket.SocketError): void {
    if (this.ended !== undefined || this.failure !== undefined) return
    this.ended = error
    this.writeFailure ??= writeError
    this.failWriters()
    this.wakeReaders()
  }

  /** The direction is gone: buffered bytes are dropped, readers fail with `error`, writers with `writeError`. */
  fail(error: Socket.SocketError, writeError: Socket.SocketError): void {
    if (this.failure !== undefined) return
    this.failure = error
    this.writeFailure ??= writeError
    this.queue = []
    this.times = []
    this.head = 0
    this.headOffset = 0
    this.headPiece = 0
    this.buffered = 0
    this.failWriters()
    this.wakeReaders()
  }
}

