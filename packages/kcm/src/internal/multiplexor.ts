/**
 * The engine of a KCM multiplexor: the pool of attached transports, send
 * steering, the receive queue that fans messages in to message sockets, and
 * the bounds (receive budget, partial-bytes budget, partial deadline).
 *
 * Per-message work is plain code on this object. Effect appears where a
 * fiber has to wait (a sender for a free transport, a socket for a message,
 * a reader for queue space) and at the edges (reading and writing the
 * transports). Waiters are woken through a trampoline: resuming a fiber can
 * run it at once, inside the caller, and a chain of hand-offs must not grow
 * the stack.
 *
 * @internal
 */
import type { NonEmptyReadonlyArray } from "effect/Array"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import type * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import type * as Pull from "effect/Pull"
import * as PubSub from "effect/PubSub"
import * as Result from "effect/Result"
import * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import * as Stream from "effect/Stream"
import { type Delineation, DelineationError, MessageTransport, Transport } from "@plexus/core"
import {
  type DetachReason,
  describeDetach,
  KcmError,
  MessageCutOff,
  MuxClosed,
  SendTimeout,
  Unframeable
} from "../KcmError.ts"
import type { KcmEvent } from "../KcmEvent.ts"
import { metrics, type MuxStats, type Snapshot, type TransportStats } from "../KcmStats.ts"
import type * as MessageSocket from "../MessageSocket.ts"

/** @internal */
export type Policy = "round-robin" | "least-pending"

/** @internal */
export interface ResolvedOptions {
  readonly delineation: Delineation.Delineation
  readonly policy: Policy
  readonly sendTimeoutMillis: number | undefined
  readonly receiveBudget: number
  readonly partialBudget: number
  readonly maxBatchBytes: number
}

const ACTIVE = 0
const DETACHING = 1
const GONE = 2

const EMPTY = new Uint8Array(0)
const EMPTY_LIST: ReadonlyArray<Uint8Array> = []

/** Sends between two updates of the send Metrics. */
const METRIC_BATCH = 256

/** Bytes a queued message costs besides its payload (its view and slots): empty messages are not free. */
const MESSAGE_COST = 64

type Waker = () => void

/** Runs wake-ups one after another instead of one inside another. */
class Trampoline {
  private readonly queue: Array<Waker> = []
  private running = false
  run(waker: Waker): void {
    this.queue.push(waker)
    if (this.running) return
    this.running = true
    try {
      for (let i = 0; i < this.queue.length; i++) this.queue[i]()
    } finally {
      this.queue.length = 0
      this.running = false
    }
  }
}

/** One attached transport (KCM's psock). @internal */
export class Psock {
  state = ACTIVE
  busy = false
  /** The messages of the write in progress, reported if the transport fails under it. */
  inflight: ReadonlyArray<Uint8Array> = EMPTY_LIST
  fiber: Fiber.Fiber<void> | undefined = undefined
  /** Partial bytes this transport has reported to the pool's budget. */
  reportedPartial = 0
  partialSince = 0
  paused = false
  pauses = 0
  rxMessages = 0
  rxBytes = 0
  txMessages = 0
  txBytes = 0
  ready = 0
  /** Woken when the transport stops being busy (a detach waits for this). */
  idleWaker: Waker | undefined = undefined
  /** Woken when the transport leaves the pool. */
  goneWakers: Array<Waker> = []
  readonly decoder: Delineation.Decoder
  readonly id: number
  readonly label: string
  readonly socket: Socket.Socket
  readonly reader: Socket.Reader
  readonly writer: Socket.Writer
  /** The scope of a connection the multiplexor dialled or accepted itself: closed when it leaves. */
  readonly owned: Scope.Closeable | undefined
  constructor(
    id: number,
    label: string,
    socket: Socket.Socket,
    reader: Socket.Reader,
    writer: Socket.Writer,
    delineation: Delineation.Delineation,
    owned: Scope.Closeable | undefined
  ) {
    this.id = id
    this.label = label
    this.socket = socket
    this.reader = reader
    this.writer = writer
    this.owned = owned
    this.decoder = delineation.decoder()
  }
}

interface SendWaiter {
  resume: (effect: Effect.Effect<Psock, KcmError>) => void
  granted: Psock | undefined
}

interface ConsumerWaiter {
  readonly sock: SocketState
  resume: (effect: Pull.Pull<NonEmptyReadonlyArray<Uint8Array>, KcmError>) => void
  granted: Array<Uint8Array> | undefined
}

/** A message socket's own state. @internal */
export class SocketState {
  receiving = true
  closed = false
  waiter: ConsumerWaiter | undefined = undefined
  enableWakers: Array<Waker> = []
  readonly id: number
  readonly maxPull: number
  constructor(id: number, maxPull: number) {
    this.id = id
    this.maxPull = maxPull
  }
}

/** What `detach` hands back. @internal */
export interface DetachedTransport {
  readonly id: number
  readonly label: string
  readonly pending: Uint8Array
  readonly reader: Socket.Reader
  readonly writer: Socket.Writer
}

const handBack = (p: Psock, pending: Uint8Array): DetachedTransport => ({
  id: p.id,
  label: p.label,
  pending,
  reader: p.reader,
  writer: p.writer
})

const kcmError = (reason: KcmError["reason"]) => new KcmError({ reason })
const muxClosed = kcmError(new MuxClosed())
const closedFailure = Effect.fail(muxClosed)

/** The close code sent when the pool drops a transport whose byte stream is unusable. */
const CLOSE_PROTOCOL_ERROR = 1002

/** @internal */
export class Multiplexor {
  closed = false
  private nextPsockId = 1
  private nextSocketId = 1
  readonly active: Array<Psock> = []
  private cursor = 0
  private readonly senders: Array<SendWaiter> = []
  private sendersHead = 0
  // The receive queue: messages and the transport each came from.
  private rxMsg: Array<Uint8Array> = []
  private rxFrom: Array<Psock | undefined> = []
  private rxHead = 0
  private rxBytes = 0
  /** What the queue counts against `receiveBudget`: bytes plus a fixed cost per message, so empty messages count too. */
  private rxCost = 0
  private readonly consumers: Array<ConsumerWaiter> = []
  private readonly pausedReaders: Array<Waker> = []
  private partialTotal = 0
  private readonly trampoline = new Trampoline()
  readonly sockets = new Set<SocketState>()
  // Counters of the whole multiplexor.
  private rxMessages = 0
  private rxBytesTotal = 0
  private txMessages = 0
  private txBytes = 0
  private attaches = 0
  private detaches = 0
  private errors = 0
  private tooBig = 0
  private timeouts = 0
  private sendWaits = 0
  private sendTimeouts = 0
  private sendFailures = 0
  dialFailures = 0
  private readonly closedWakers: Array<Waker> = []

  readonly options: ResolvedOptions
  readonly scope: Scope.Scope
  readonly events: PubSub.PubSub<KcmEvent>
  private readonly context: Context.Context<never>
  constructor(
    options: ResolvedOptions,
    scope: Scope.Scope,
    events: PubSub.PubSub<KcmEvent>,
    context: Context.Context<never>
  ) {
    this.options = options
    this.scope = scope
    this.events = events
    this.context = context
  }

  // -------------------------------------------------------------------------
  // Attach and detach
  // -------------------------------------------------------------------------

  /** Attaches a transport whose reader and writer live in the caller's scope (or in `owned`). */
  attach(
    socket: Socket.Socket,
    label: string | undefined,
    owned: Scope.Closeable | undefined
  ): Effect.Effect<Psock, KcmError | Socket.SocketError, Scope.Scope> {
    return Effect.gen({ self: this }, function*() {
      if (this.closed) return yield* closedFailure
      const reader = yield* socket.reader
      const writer = yield* socket.writer
      if (this.closed) return yield* closedFailure
      const id = this.nextPsockId++
      const p = new Psock(id, label ?? `transport-${id}`, socket, reader, writer, this.options.delineation, owned)
      this.active.push(p)
      this.attaches++
      metrics.attached.modifyUnsafe(1, this.context)
      p.fiber = yield* Effect.forkIn(this.readLoop(p), this.scope)
      if (owned === undefined) {
        const scope = yield* Effect.scope
        // The scope closing takes the reader and writer with it: no waiting for a write the peer may never read.
        yield* Scope.addFinalizer(scope, Effect.asVoid(this.detach(p, false)))
      }
      PubSub.publishUnsafe(this.events, { _tag: "Attached", id, label: p.label })
      this.release(p)
      return p
    })
  }

  /**
   * Takes a transport out of the pool on request: it stops being chosen for
   * sends, waits for a message being written on it, stops reading, and hands
   * back the bytes of a partly received message.
   */
  detach(p: Psock, waitForWrite = true): Effect.Effect<DetachedTransport> {
    return Effect.gen({ self: this }, function*() {
      if (p.state !== ACTIVE) {
        if (p.state === DETACHING) yield* this.awaitGone(p)
        return handBack(p, EMPTY)
      }
      p.state = DETACHING
      this.removeActive(p)
      if (p.busy && waitForWrite) {
        yield* Effect.callback<void>((resume) => {
          if (!p.busy) return resume(Effect.void)
          p.idleWaker = () => resume(Effect.void)
        })
      }
      // A failure while we waited has already taken it out.
      if (p.state === GONE) return handBack(p, EMPTY)
      if (p.fiber !== undefined) yield* Fiber.interrupt(p.fiber)
      const pending = p.decoder.takePending()
      // Not waiting (the attaching scope is closing, and the connection with it): a write still
      // in progress may be cut off, so it is reported.
      this.finish(p, { _tag: "Requested" }, p.busy ? p.inflight : EMPTY_LIST, 0)
      if (p.owned !== undefined) yield* Scope.close(p.owned, Exit.void)
      return handBack(p, pending)
    })
  }

  /** Waits until the transport has left the pool. */
  awaitGone(p: Psock): Effect.Effect<void> {
    return Effect.callback<void>((resume) => {
      if (p.state === GONE) return resume(Effect.void)
      const waker = () => resume(Effect.void)
      p.goneWakers.push(waker)
      return Effect.sync(() => {
        const i = p.goneWakers.indexOf(waker)
        if (i >= 0) p.goneWakers.splice(i, 1)
      })
    })
  }

  /**
   * Drops a failed transport. It leaves the pool at the call, before anything
   * else can pick it; the Effect returned stops its reader, resets its
   * connection when the byte stream is unusable, and closes what the
   * multiplexor owns of it. Call it where the failure is seen, at run time.
   */
  fail(
    p: Psock,
    reason: DetachReason,
    failedMessages: ReadonlyArray<Uint8Array>,
    fromReader: boolean
  ): Effect.Effect<void> {
    if (p.state === GONE) return Effect.void
    if (p.state === ACTIVE) this.removeActive(p)
    // A failure seen first by the reader still cuts off the write in progress.
    this.finish(p, reason, failedMessages.length === 0 && p.busy ? p.inflight : failedMessages, p.decoder.buffered)
    const effects: Array<Effect.Effect<void>> = []
    if (!fromReader && p.fiber !== undefined) effects.push(Fiber.interrupt(p.fiber))
    if (reason._tag === "PeerClosed") {
      effects.push(Effect.ignore(p.writer.write(new Socket.CloseEvent(Transport.CLOSE_NORMAL))))
    } else if (reason._tag !== "TransportFailed" && reason._tag !== "MuxClosed") {
      effects.push(Effect.ignore(p.writer.write(new Socket.CloseEvent(CLOSE_PROTOCOL_ERROR, describeDetach(reason)))))
    }
    if (p.owned !== undefined) effects.push(Scope.close(p.owned, Exit.void))
    return effects.length === 0 ? Effect.void : Effect.forEach(effects, (e) => e, { discard: true })
  }

  private finish(p: Psock, reason: DetachReason, failedMessages: ReadonlyArray<Uint8Array>, lost: number): void {
    p.state = GONE
    this.partialTotal -= p.reportedPartial
    p.reportedPartial = 0
    this.detaches++
    metrics.attached.modifyUnsafe(-1, this.context)
    const tag = reason._tag
    if (tag === "TransportFailed" || tag === "Delineation" || tag === "PartialBudget" || tag === "SendInterrupted") {
      this.errors++
      metrics.errors.modifyUnsafe(1, this.context)
    }
    if (tag === "Delineation") {
      const inner = reason.error.reason._tag
      if (inner === "MessageTooLarge") {
        this.tooBig++
        metrics.tooBig.modifyUnsafe(1, this.context)
      } else if (inner === "PartialMessageTimeout") {
        this.timeouts++
        metrics.timeouts.modifyUnsafe(1, this.context)
      }
    }
    p.paused = false
    PubSub.publishUnsafe(this.events, {
      _tag: "Detached",
      id: p.id,
      label: p.label,
      reason,
      lostPartialBytes: lost,
      failedMessages
    })
    const wakers = p.goneWakers.splice(0, p.goneWakers.length)
    for (const waker of wakers) this.trampoline.run(waker)
    if (p.idleWaker !== undefined) {
      const waker = p.idleWaker
      p.idleWaker = undefined
      this.trampoline.run(waker)
    }
  }

  private removeActive(p: Psock): void {
    const i = this.active.indexOf(p)
    if (i >= 0) this.active.splice(i, 1)
  }

  // -------------------------------------------------------------------------
  // Sending
  // -------------------------------------------------------------------------

  /** Picks a free transport by the policy and reserves it, if there is one. */
  private reserve(): Psock | undefined {
    const active = this.active
    const n = active.length
    if (n === 0) return undefined
    if (this.options.policy === "round-robin") {
      for (let i = 0; i < n; i++) {
        const k = (this.cursor + i) % n
        const p = active[k]
        if (!p.busy) {
          this.cursor = k + 1
          p.busy = true
          return p
        }
      }
      return undefined
    }
    let best: Psock | undefined
    let bestBacklog = Infinity
    for (let i = 0; i < n; i++) {
      const p = active[(this.cursor + i) % n]
      if (p.busy) continue
      const backlog = Transport.writeBacklog(p.socket) ?? 0
      if (backlog < bestBacklog) {
        best = p
        bestBacklog = backlog
        if (backlog === 0) break
      }
    }
    if (best !== undefined) {
      this.cursor = (active.indexOf(best) + 1) % n
      best.busy = true
    }
    return best
  }

  /** Frees a transport, or hands it straight to the longest-waiting sender. */
  private release(p: Psock): void {
    if (p.state !== ACTIVE) {
      p.busy = false
      if (p.idleWaker !== undefined) {
        const waker = p.idleWaker
        p.idleWaker = undefined
        this.trampoline.run(waker)
      }
      return
    }
    if (this.sendersHead < this.senders.length) {
      const w = this.senders[this.sendersHead]
      this.senders[this.sendersHead++] = undefined as unknown as SendWaiter
      if (this.sendersHead > 1024 && this.sendersHead * 2 > this.senders.length) {
        this.senders.splice(0, this.sendersHead)
        this.sendersHead = 0
      }
      p.busy = true
      w.granted = p
      this.trampoline.run(() => w.resume(Effect.succeed(p)))
      return
    }
    p.busy = false
  }

  private readonly waitForTransport: Effect.Effect<Psock, KcmError> = Effect.callback<Psock, KcmError>((resume) => {
    const w: SendWaiter = { resume, granted: undefined }
    this.senders.push(w)
    this.sendWaits++
    return Effect.sync(() => {
      const i = this.senders.indexOf(w, this.sendersHead)
      if (i >= 0) this.senders.splice(i, 1)
      // Granted but never used (the sender gave up at that moment): pass it on.
      if (w.granted !== undefined) this.release(w.granted)
    })
  })

  private readonly acquire: Effect.Effect<Psock, KcmError> = Effect.suspend(() => {
    if (this.closed) return closedFailure
    const p = this.reserve()
    if (p !== undefined) return Effect.succeed(p)
    const timeout = this.options.sendTimeoutMillis
    if (timeout === undefined) return this.waitForTransport
    return Effect.timeoutOrElse(this.waitForTransport, {
      duration: Duration.millis(timeout),
      orElse: () =>
        Effect.suspend(() => {
          this.sendTimeouts++
          return Effect.fail(kcmError(new SendTimeout({ timeoutMillis: timeout, attached: this.active.length })))
        })
    })
  })

  /** Writes framed messages atomically on one free transport. */
  private writeFramed(
    frames: NonEmptyReadonlyArray<Uint8Array>,
    messages: ReadonlyArray<Uint8Array>,
    bytes: number
  ): Effect.Effect<void, KcmError> {
    return Effect.suspend(() => {
      // Fast path: a free transport now, and nobody waiting ahead of us.
      const p = this.closed || this.sendersHead < this.senders.length ? undefined : this.reserve()
      if (p !== undefined) return this.writeOn(p, frames, messages, bytes)
      return Effect.flatMap(this.acquire, (p) => this.writeOn(p, frames, messages, bytes))
    })
  }

  private writeOn(
    p: Psock,
    frames: NonEmptyReadonlyArray<Uint8Array>,
    messages: ReadonlyArray<Uint8Array>,
    bytes: number
  ): Effect.Effect<void, KcmError> {
    p.inflight = messages
    return p.writer.writeAll(frames).pipe(
      Effect.onInterrupt(() => this.fail(p, { _tag: "SendInterrupted" }, messages, false)),
      Effect.matchEffect({
        onSuccess: () => {
          p.inflight = EMPTY_LIST
          p.txMessages += messages.length
          p.txBytes += bytes
          this.txMessages += messages.length
          this.txBytes += bytes
          if (this.txMessages - this.reportedTxMessages >= METRIC_BATCH) this.reportTx()
          this.release(p)
          return Effect.void
        },
        onFailure: (error) => {
          p.inflight = EMPTY_LIST
          this.sendFailures++
          // Out of the pool before it is freed, so that no waiting sender is handed a dead transport.
          const dropped = this.fail(p, { _tag: "TransportFailed", error }, messages, false)
          this.release(p)
          return Effect.andThen(
            dropped,
            Effect.fail(kcmError(new MessageCutOff({ transportId: p.id, detail: error.message })))
          )
        }
      })
    )
  }

  private reportedTxMessages = 0
  private reportedTxBytes = 0

  /** Moves the send Metrics: in batches, since a Metric update costs more than the rest of a small send's bookkeeping. */
  private reportTx(): void {
    metrics.txMessages.modifyUnsafe(this.txMessages - this.reportedTxMessages, this.context)
    metrics.txBytes.modifyUnsafe(this.txBytes - this.reportedTxBytes, this.context)
    this.reportedTxMessages = this.txMessages
    this.reportedTxBytes = this.txBytes
  }

  send(message: Uint8Array): Effect.Effect<void, KcmError> {
    return Effect.suspend(() => {
      if (this.closed) return closedFailure
      const frames = this.options.delineation.encode([message])
      if (frames instanceof DelineationError.DelineationError) {
        return Effect.fail(kcmError(new Unframeable({ detail: frames.message })))
      }
      return this.writeFramed(frames, [message], message.length)
    })
  }

  /** Sends a batch as runs of at most `maxBatchBytes`, one coalesced write each. */
  sendAll(messages: ReadonlyArray<Uint8Array>): Effect.Effect<void, KcmError> {
    return Effect.suspend(() => {
      if (this.closed) return closedFailure
      const limit = this.options.maxBatchBytes
      const runs: Array<{ frames: NonEmptyReadonlyArray<Uint8Array>; messages: Array<Uint8Array>; bytes: number }> =
        []
      let start = 0
      let bytes = 0
      for (let i = 0; i <= messages.length; i++) {
        const size = i < messages.length ? messages[i].length : 0
        if (i === messages.length || (i > start && bytes + size > limit)) {
          if (i > start) {
            const run = messages.slice(start, i)
            const frames = this.options.delineation.encode(run)
            if (frames instanceof DelineationError.DelineationError) {
              return Effect.fail(kcmError(new Unframeable({ detail: frames.message })))
            }
            runs.push({ frames, messages: run, bytes })
          }
          start = i
          bytes = 0
        }
        bytes += size
      }
      if (runs.length === 1) return this.writeFramed(runs[0].frames, runs[0].messages, runs[0].bytes)
      return Effect.forEach(runs, (run) => this.writeFramed(run.frames, run.messages, run.bytes), { discard: true })
    })
  }

  // -------------------------------------------------------------------------
  // Receiving
  // -------------------------------------------------------------------------

  private readLoop(p: Psock): Effect.Effect<void> {
    const self = this
    const decoder = p.decoder
    const out: Array<Uint8Array> = []
    const partialTimeout = this.options.delineation.partialTimeout
    return Effect.gen(function*() {
      const clock = yield* Clock.Clock
      while (true) {
        if (self.rxCost >= self.options.receiveBudget) yield* self.pauseReader(p)
        const result = yield* Effect.result(p.reader.pull)
        if (p.state !== ACTIVE) return
        if (Result.isFailure(result)) {
          const error = result.failure
          if (Transport.isCleanClose(error)) {
            const truncated = decoder.end()
            return yield* self.fail(
              p,
              truncated === undefined ? { _tag: "PeerClosed" } : { _tag: "Delineation", error: truncated },
              [],
              true
            )
          }
          return yield* self.fail(p, { _tag: "TransportFailed", error }, [], true)
        }
        const chunks = result.success
        const wasPartial = decoder.partial
        let failure: DelineationError.DelineationError | undefined
        for (let i = 0; i < chunks.length && failure === undefined; i++) {
          const chunk = chunks[i]
          failure = decoder.push(typeof chunk === "string" ? Transport.encodeText(chunk) : chunk, out)
        }
        // Messages complete before a failure are good: deliver them first.
        const delivered = out.length
        if (delivered > 0) {
          self.deliver(p, out)
          out.length = 0
        }
        if (failure !== undefined) return yield* self.fail(p, { _tag: "Delineation", error: failure }, [], true)
        const buffered = decoder.buffered
        if (buffered !== p.reportedPartial) {
          self.partialTotal += buffered - p.reportedPartial
          p.reportedPartial = buffered
          if (self.partialTotal > self.options.partialBudget) {
            const total = self.partialTotal
            return yield* self.fail(
              p,
              { _tag: "PartialBudget", buffered: total, budget: self.options.partialBudget },
              [],
              true
            )
          }
        }
        // A message in progress starts its deadline at its first byte.
        if (partialTimeout !== undefined && decoder.partial && (!wasPartial || delivered > 0)) {
          p.partialSince = clock.currentTimeMillisUnsafe()
        }
      }
    })
  }

  private deliver(p: Psock, messages: Array<Uint8Array>): void {
    let bytes = 0
    for (let i = 0; i < messages.length; i++) {
      const m = messages[i]
      bytes += m.length
      this.rxMsg.push(m)
      this.rxFrom.push(p)
    }
    const n = messages.length
    p.rxMessages += n
    p.rxBytes += bytes
    p.ready += n
    this.rxMessages += n
    this.rxBytesTotal += bytes
    this.rxBytes += bytes
    this.rxCost += bytes + n * MESSAGE_COST
    metrics.rxMessages.modifyUnsafe(n, this.context)
    metrics.rxBytes.modifyUnsafe(bytes, this.context)
    this.wakeConsumers()
  }

  private get queued(): number {
    return this.rxMsg.length - this.rxHead
  }

  /** Takes up to `max` messages off the queue, in order. */
  private take(max: number): Array<Uint8Array> {
    const n = Math.min(max, this.queued)
    const out = new Array<Uint8Array>(n)
    let bytes = 0
    for (let i = 0; i < n; i++) {
      const k = this.rxHead + i
      const m = this.rxMsg[k]
      out[i] = m
      bytes += m.length
      const from = this.rxFrom[k]
      if (from !== undefined) from.ready--
    }
    this.rxHead += n
    this.rxBytes -= bytes
    this.rxCost -= bytes + n * MESSAGE_COST
    if (this.rxHead === this.rxMsg.length) {
      this.rxMsg = []
      this.rxFrom = []
      this.rxHead = 0
    } else if (this.rxHead > 4096 && this.rxHead * 2 > this.rxMsg.length) {
      this.rxMsg = this.rxMsg.slice(this.rxHead)
      this.rxFrom = this.rxFrom.slice(this.rxHead)
      this.rxHead = 0
    }
    if (this.pausedReaders.length > 0 && this.rxCost < this.options.receiveBudget / 2) {
      const wakers = this.pausedReaders.splice(0, this.pausedReaders.length)
      for (const waker of wakers) this.trampoline.run(waker)
    }
    return out
  }

  /** Puts messages a socket was granted but never took back at the head of the queue. */
  private giveBack(messages: Array<Uint8Array>): void {
    if (messages.length === 0) return
    let bytes = 0
    for (const m of messages) bytes += m.length
    // Their origin is not kept by now: they count against no transport's `ready`.
    this.rxMsg = [...messages, ...this.rxMsg.slice(this.rxHead)]
    this.rxFrom = [...messages.map(() => undefined), ...this.rxFrom.slice(this.rxHead)]
    this.rxHead = 0
    this.rxBytes += bytes
    this.rxCost += bytes + messages.length * MESSAGE_COST
    this.wakeConsumers()
  }

  private wakeConsumers(): void {
    while (this.consumers.length > 0 && this.queued > 0) {
      const w = this.consumers.shift()!
      w.sock.waiter = undefined
      const batch = this.take(w.sock.maxPull)
      w.granted = batch
      this.trampoline.run(() => w.resume(Effect.succeed(batch as unknown as NonEmptyReadonlyArray<Uint8Array>)))
    }
  }

  private pauseReader(p: Psock): Effect.Effect<void> {
    return Effect.callback<void>((resume) => {
      if (this.rxCost < this.options.receiveBudget) return resume(Effect.void)
      p.paused = true
      p.pauses++
      metrics.paused.modifyUnsafe(1, this.context)
      const waker = () => {
        p.paused = false
        resume(Effect.void)
      }
      this.pausedReaders.push(waker)
      return Effect.sync(() => {
        p.paused = false
        const i = this.pausedReaders.indexOf(waker)
        if (i >= 0) this.pausedReaders.splice(i, 1)
      })
    })
  }

  /** The pull of one message socket. */
  pull(sock: SocketState): Pull.Pull<NonEmptyReadonlyArray<Uint8Array>, KcmError> {
    return Effect.suspend((): Pull.Pull<NonEmptyReadonlyArray<Uint8Array>, KcmError> => {
      if (sock.closed || this.closed) return Cause.done()
      if (!sock.receiving) {
        return Effect.andThen(
          Effect.callback<void>((resume) => {
            const waker = () => resume(Effect.void)
            sock.enableWakers.push(waker)
            return Effect.sync(() => {
              const i = sock.enableWakers.indexOf(waker)
              if (i >= 0) sock.enableWakers.splice(i, 1)
            })
          }),
          this.pull(sock)
        )
      }
      if (this.queued > 0 && this.consumers.length === 0) {
        return Effect.succeed(this.take(sock.maxPull) as unknown as NonEmptyReadonlyArray<Uint8Array>)
      }
      return Effect.callback<NonEmptyReadonlyArray<Uint8Array>, KcmError | Cause.Done>((resume) => {
        const w: ConsumerWaiter = { sock, resume, granted: undefined }
        sock.waiter = w
        this.consumers.push(w)
        this.wakeConsumers()
        return Effect.sync(() => {
          if (sock.waiter === w) sock.waiter = undefined
          const i = this.consumers.indexOf(w)
          if (i >= 0) this.consumers.splice(i, 1)
          if (w.granted !== undefined) this.giveBack(w.granted)
        })
      })
    })
  }

  /** Switches a socket's receiving; a waiting pull of a socket switched off hands its place on. */
  setReceiving(sock: SocketState, enabled: boolean): void {
    if (sock.receiving === enabled) return
    sock.receiving = enabled
    if (enabled) {
      const wakers = sock.enableWakers.splice(0, sock.enableWakers.length)
      for (const waker of wakers) this.trampoline.run(waker)
      return
    }
    const w = sock.waiter
    if (w !== undefined && w.granted === undefined) {
      // Leave the queue of ready sockets; wait to be switched on again.
      const i = this.consumers.indexOf(w)
      if (i >= 0) this.consumers.splice(i, 1)
      sock.waiter = undefined
      this.trampoline.run(() => w.resume(this.pull(sock)))
    }
  }

  openSocket(options: MessageSocket.Options | undefined): SocketState {
    const maxPull = options?.maxPull ?? 256
    if (!Number.isSafeInteger(maxPull) || maxPull < 1) throw new RangeError(`maxPull must be at least 1, got ${maxPull}`)
    const sock = new SocketState(this.nextSocketId++, maxPull)
    this.sockets.add(sock)
    return sock
  }

  closeSocket(sock: SocketState): void {
    if (sock.closed) return
    sock.closed = true
    this.sockets.delete(sock)
    const w = sock.waiter
    if (w !== undefined && w.granted === undefined) {
      const i = this.consumers.indexOf(w)
      if (i >= 0) this.consumers.splice(i, 1)
      sock.waiter = undefined
      this.trampoline.run(() => w.resume(Cause.done()))
    }
    const wakers = sock.enableWakers.splice(0, sock.enableWakers.length)
    for (const waker of wakers) this.trampoline.run(waker)
  }

  // -------------------------------------------------------------------------
  // Deadlines, closing, counters
  // -------------------------------------------------------------------------

  /** Fails transports whose partial message passed its deadline; runs every `period`. */
  sweepPartials(timeoutMillis: number): Effect.Effect<void> {
    return Effect.flatMap(Clock.currentTimeMillis, (now) => {
      const late: Array<Psock> = []
      for (const p of this.active) {
        if (p.decoder.partial && now - p.partialSince >= timeoutMillis) late.push(p)
      }
      if (late.length === 0) return Effect.void
      return Effect.forEach(late, (p) =>
        this.fail(p, {
          _tag: "Delineation",
          error: new DelineationError.DelineationError({
            reason: new DelineationError.PartialMessageTimeout({ buffered: p.decoder.buffered, timeoutMillis })
          })
        }, [], false), { discard: true })
    })
  }

  /** Closes the multiplexor: senders fail, sockets end, transports leave. */
  close(): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (this.closed) return Effect.void
      this.closed = true
      const senders = this.senders.splice(this.sendersHead)
      this.senders.length = 0
      this.sendersHead = 0
      for (const w of senders) this.trampoline.run(() => w.resume(closedFailure))
      for (const sock of [...this.sockets]) this.closeSocket(sock)
      const consumers = this.consumers.splice(0, this.consumers.length)
      for (const w of consumers) this.trampoline.run(() => w.resume(Cause.done()))
      const wakers = this.closedWakers.splice(0, this.closedWakers.length)
      for (const waker of wakers) this.trampoline.run(waker)
      const transports = [...this.active]
      return Effect.forEach(transports, (p) => this.fail(p, { _tag: "MuxClosed" }, [], false), { discard: true })
    })
  }

  readonly awaitClosed: Effect.Effect<void> = Effect.callback<void>((resume) => {
    if (this.closed) return resume(Effect.void)
    const waker = () => resume(Effect.void)
    this.closedWakers.push(waker)
    return Effect.sync(() => {
      const i = this.closedWakers.indexOf(waker)
      if (i >= 0) this.closedWakers.splice(i, 1)
    })
  })

  /** A transport's counters while it is attached. */
  statsOf(p: Psock): TransportStats | undefined {
    return p.state === ACTIVE ? this.transportStats(p) : undefined
  }

  private transportStats(p: Psock): TransportStats {
    return {
      id: p.id,
      label: p.label,
      rxMessages: p.rxMessages,
      rxBytes: p.rxBytes,
      txMessages: p.txMessages,
      txBytes: p.txBytes,
      ready: p.ready,
      paused: p.paused,
      pauses: p.pauses,
      partialBytes: p.decoder.buffered,
      busy: p.busy
    }
  }

  snapshot(): Snapshot {
    this.reportTx()
    let paused = 0
    for (const p of this.active) if (p.paused) paused++
    const mux: MuxStats = {
      rxMessages: this.rxMessages,
      rxBytes: this.rxBytesTotal,
      txMessages: this.txMessages,
      txBytes: this.txBytes,
      ready: this.queued,
      readyBytes: this.rxBytes,
      paused,
      partialBytes: this.partialTotal,
      attached: this.active.length,
      attaches: this.attaches,
      detaches: this.detaches,
      errors: this.errors,
      tooBig: this.tooBig,
      timeouts: this.timeouts,
      sendWaits: this.sendWaits,
      sendTimeouts: this.sendTimeouts,
      sendFailures: this.sendFailures,
      waitingSenders: this.senders.length - this.sendersHead,
      dialFailures: this.dialFailures
    }
    return { mux, transports: this.active.map((p) => this.transportStats(p)) }
  }

  /** A message socket object over a socket state. */
  makeSocket(sock: SocketState, batch: MessageSocket.Options["batch"]): MessageSocket.MessageSocket {
    const pull = this.pull(sock)
    const base = batch === undefined
      ? { send: (message: Uint8Array) => this.guard(sock, this.send(message)), flush: Effect.void }
      : this.batcher(sock, batch)
    const transport = MessageTransport.make<KcmError>({
      send: base.send,
      sendAll: (messages) => this.guard(sock, this.sendAll(messages)),
      pull,
      close: Effect.sync(() => this.closeSocket(sock))
    })
    return {
      ...transport,
      id: sock.id,
      flush: base.flush,
      setReceiving: (enabled) => Effect.sync(() => this.setReceiving(sock, enabled)),
      receiving: Effect.sync(() => sock.receiving)
    }
  }

  private guard(sock: SocketState, effect: Effect.Effect<void, KcmError>): Effect.Effect<void, KcmError> {
    return Effect.suspend(() => (sock.closed ? closedFailure : effect))
  }

  /** `send` of a batching socket (MSG_BATCH). */
  private batcher(
    sock: SocketState,
    options: NonNullable<MessageSocket.Options["batch"]>
  ): { send: (message: Uint8Array) => Effect.Effect<void, KcmError>; flush: Effect.Effect<void, KcmError> } {
    const maxBytes = options.maxBytes ?? this.options.maxBatchBytes
    const delay = options.maxDelay === undefined ? Duration.zero : Duration.fromInputUnsafe(options.maxDelay)
    let messages: Array<Uint8Array> = []
    let bytes = 0
    let done: Deferred.Deferred<void, KcmError> | undefined
    const take = () => {
      const batch = { messages, done: done! }
      messages = []
      bytes = 0
      done = undefined
      return batch
    }
    const write = (batch: { messages: Array<Uint8Array>; done: Deferred.Deferred<void, KcmError> }) =>
      Effect.flatMap(Effect.exit(this.sendAll(batch.messages)), (exit) => Deferred.done(batch.done, exit))
    const flush: Effect.Effect<void, KcmError> = Effect.suspend(() => {
      if (done === undefined) return Effect.void
      const batch = take()
      return Effect.andThen(write(batch), Deferred.await(batch.done))
    })
    const timer = (owner: Deferred.Deferred<void, KcmError>) =>
      Effect.andThen(
        Duration.isZero(delay) ? Effect.yieldNow : Effect.sleep(delay),
        Effect.suspend(() => (done === owner ? write(take()) : Effect.void))
      )
    const send = (message: Uint8Array): Effect.Effect<void, KcmError> =>
      Effect.suspend(() => {
        if (sock.closed || this.closed) return closedFailure
        if (done === undefined) {
          const owner = Deferred.makeUnsafe<void, KcmError>()
          done = owner
          messages.push(message)
          bytes += message.length
          if (bytes >= maxBytes) return Effect.andThen(write(take()), Deferred.await(owner))
          return Effect.andThen(Effect.forkIn(timer(owner), this.scope), Deferred.await(owner))
        }
        const owner = done
        messages.push(message)
        bytes += message.length
        if (bytes >= maxBytes) return Effect.andThen(write(take()), Deferred.await(owner))
        return Deferred.await(owner)
      })
    return { send, flush }
  }

  /** The event stream: events published from now on. */
  subscribe(): Effect.Effect<Stream.Stream<KcmEvent>, never, Scope.Scope> {
    return Effect.map(PubSub.subscribe(this.events), Stream.fromSubscription)
  }
}

