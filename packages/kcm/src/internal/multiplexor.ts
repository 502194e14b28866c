/**
 * The engine of a KCM multiplexor: the pool of attached transports, send
 * steering and the send queue, the receive queue that fans messages in to
 * message sockets, and the bounds (receive budget, partial-bytes budget,
 * partial deadline, send timeout).
 *
 * Per-message work is plain code on this object. Effect appears where a
 * fiber has to wait (a sender for its batch to be written, a socket for a
 * message, a reader for queue space) and at the edges (reading and writing
 * the transports).
 *
 * Sending: a sender that finds a free transport (and nobody queued ahead of
 * it) writes its message there itself, at once. Otherwise the message joins
 * the send queue, and the first transport to finish its write takes the
 * head of the queue as one batch, written with one `writeAll` by that
 * transport's writer fiber, so a busy pool makes few large writes instead
 * of one per message. A transport has at most one write in progress, so
 * messages are never interleaved.
 *
 * Waiters are woken through a trampoline: resuming a fiber can run it at
 * once, inside the caller, and a chain of hand-offs must not grow the
 * stack. The one exception is the writer fiber resuming the senders of the
 * batch it has just written: it resumes them directly, while its transport
 * still counts as writing, so that their next messages queue up for the
 * next batch instead of each taking a write of its own; unless bytes still
 * wait in the transport (its write backlog), behind which a write costs no
 * system call: then it frees the transport first, and they write there at
 * once.
 *
 * @internal
 */
import type { NonEmptyReadonlyArray } from "effect/Array"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
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
import { frameBatch, Pending, SendQueue, sizeOf, WAITING } from "./sendQueue.ts"

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
const NO_BATCH: Array<Pending> = []

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

/** Who saw a transport fail: its reader, its writer fiber, or anyone else (a sender, a sweep, close). */
type Witness = "reader" | "writer" | "other"

/** One attached transport (KCM's psock). @internal */
export class Psock {
  state = ACTIVE
  /** A write is in progress (a sender's own, or a batch), or a batch is about to be written. */
  writing = false
  /** The messages of a sender's own write in progress, reported if the transport fails under it. */
  direct: ReadonlyArray<Uint8Array> | undefined = undefined
  directBytes = 0
  /** The batch the writer fiber writes next or is writing. */
  batch: Array<Pending> = NO_BATCH
  /** Whether `writeAll` has been called for `batch`: before that, it can go back to the queue. */
  batchStarted = false
  readerFiber: Fiber.Fiber<void> | undefined = undefined
  writerFiber: Fiber.Fiber<void> | undefined = undefined
  /** Resumes the writer fiber while it waits for a batch. */
  writerWake: ((effect: Effect.Effect<void>) => void) | undefined = undefined
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
  /** Woken when the transport stops writing (a detach waits for this). */
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
  /** Built once per transport, so that a write allocates no handlers. */
  readonly handlers: TransportHandlers
  constructor(
    id: number,
    label: string,
    socket: Socket.Socket,
    reader: Socket.Reader,
    writer: Socket.Writer,
    delineation: Delineation.Delineation,
    owned: Scope.Closeable | undefined,
    mux: Multiplexor
  ) {
    this.id = id
    this.label = label
    this.socket = socket
    this.reader = reader
    this.writer = writer
    this.owned = owned
    this.decoder = delineation.decoder()
    this.handlers = new TransportHandlers(mux, this)
  }
}

/** The continuations of one transport's writes, and the writer fiber's wait and wake-up. */
class TransportHandlers {
  readonly onDirect: {
    readonly onSuccess: (_: void) => Effect.Effect<void, KcmError>
    readonly onFailure: (cause: Cause.Cause<Socket.SocketError>) => Effect.Effect<void, KcmError>
  }
  readonly onDirectExit: (exit: Exit.Exit<void, Socket.SocketError>) => Effect.Effect<void>
  readonly onBatchExit: (exit: Exit.Exit<void, Socket.SocketError>) => Effect.Effect<void>
  readonly awaitBatch: Effect.Effect<void>
  readonly wakeWriter: Waker
  constructor(mux: Multiplexor, p: Psock) {
    this.onDirect = {
      onSuccess: () => mux.directWritten(p),
      onFailure: (cause) => mux.directFailed(p, cause)
    }
    this.onDirectExit = (exit) =>
      Exit.isFailure(exit) && Cause.hasInterrupts(exit.cause)
        ? mux.fail(p, { _tag: "SendInterrupted" }, p.direct ?? EMPTY_LIST, "other")
        : Effect.void
    this.onBatchExit = (exit) => {
      if (Exit.isFailure(exit) && Cause.hasInterrupts(exit.cause)) mux.batchInterrupted(p)
      return Effect.void
    }
    this.awaitBatch = Effect.callback<void>((resume) => {
      if (p.batch.length > 0 || p.state === GONE) return resume(Effect.void)
      p.writerWake = resume
    })
    this.wakeWriter = () => {
      const wake = p.writerWake
      if (wake === undefined) return
      p.writerWake = undefined
      wake(Effect.void)
    }
  }
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

/** The messages of a batch, in order. */
const messagesOf = (batch: ReadonlyArray<Pending>): ReadonlyArray<Uint8Array> => {
  const out: Array<Uint8Array> = []
  for (let i = 0; i < batch.length; i++) batch[i].messagesInto(out)
  return out
}

const unframeable = (detail: string) => Effect.fail(kcmError(new Unframeable({ detail })))

/** The close code sent when the pool drops a transport whose byte stream is unusable. */
const CLOSE_PROTOCOL_ERROR = 1002

/** @internal */
export class Multiplexor {
  closed = false
  private nextPsockId = 1
  private nextSocketId = 1
  readonly active: Array<Psock> = []
  private cursor = 0
  private readonly queue = new SendQueue()
  /** Resumes the send-timeout fiber while the queue is empty. */
  private timerWake: ((effect: Effect.Effect<void>) => void) | undefined = undefined
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
  private readonly clock: Clock.Clock
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
    this.clock = Context.get(context, Clock.Clock)
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
      const p = new Psock(id, label ?? `transport-${id}`, socket, reader, writer, this.options.delineation, owned, this)
      this.active.push(p)
      this.attaches++
      metrics.attached.modifyUnsafe(1, this.context)
      p.readerFiber = yield* Effect.forkIn(this.readLoop(p), this.scope)
      p.writerFiber = yield* Effect.forkIn(this.writeLoop(p), this.scope)
      if (owned === undefined) {
        const scope = yield* Effect.scope
        // The scope closing takes the reader and writer with it: no waiting for a write the peer may never read.
        yield* Scope.addFinalizer(scope, Effect.asVoid(this.detach(p, false)))
      }
      PubSub.publishUnsafe(this.events, { _tag: "Attached", id, label: p.label })
      // Senders may be queued, waiting for a transport.
      this.dispatch()
      return p
    })
  }

  /**
   * Takes a transport out of the pool on request: it stops being chosen for
   * sends, waits for a write in progress on it, stops reading, and hands
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
      if (p.writing && waitForWrite) {
        yield* Effect.callback<void>((resume) => {
          if (!p.writing) return resume(Effect.void)
          p.idleWaker = () => resume(Effect.void)
        })
      }
      // A failure while we waited has already taken it out.
      if (p.state === GONE) return handBack(p, EMPTY)
      if (p.readerFiber !== undefined) yield* Fiber.interrupt(p.readerFiber)
      const pending = p.decoder.takePending()
      // Not waiting (the attaching scope is closing, and the connection with it): a write still
      // in progress may be cut off, so it is reported.
      this.finish(p, { _tag: "Requested" }, this.inflightOf(p), 0)
      if (p.writerFiber !== undefined) yield* Fiber.interrupt(p.writerFiber)
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
   * else can pick it; the Effect returned stops its reader and writer fibers
   * (except the one that saw the failure), resets its connection when the
   * byte stream is unusable, and closes what the multiplexor owns of it.
   * Call it where the failure is seen, at run time.
   */
  fail(
    p: Psock,
    reason: DetachReason,
    failedMessages: ReadonlyArray<Uint8Array>,
    witness: Witness
  ): Effect.Effect<void> {
    if (p.state === GONE) return Effect.void
    if (p.state === ACTIVE) this.removeActive(p)
    // A failure seen elsewhere still cuts off the write in progress.
    this.finish(p, reason, failedMessages.length === 0 ? this.inflightOf(p) : failedMessages, p.decoder.buffered)
    const effects: Array<Effect.Effect<void>> = []
    if (witness !== "reader" && p.readerFiber !== undefined) effects.push(Fiber.interrupt(p.readerFiber))
    if (witness !== "writer" && p.writerFiber !== undefined) effects.push(Fiber.interrupt(p.writerFiber))
    if (reason._tag === "PeerClosed") {
      effects.push(Effect.ignore(p.writer.write(new Socket.CloseEvent(Transport.CLOSE_NORMAL))))
    } else if (reason._tag !== "TransportFailed" && reason._tag !== "MuxClosed") {
      effects.push(Effect.ignore(p.writer.write(new Socket.CloseEvent(CLOSE_PROTOCOL_ERROR, describeDetach(reason)))))
    }
    if (p.owned !== undefined) effects.push(Scope.close(p.owned, Exit.void))
    return Effect.forEach(effects, (e) => e, { discard: true })
  }

  /** The messages of the write in progress on `p`, if any. */
  private inflightOf(p: Psock): ReadonlyArray<Uint8Array> {
    if (!p.writing) return EMPTY_LIST
    if (p.direct !== undefined) return p.direct
    return p.batchStarted ? messagesOf(p.batch) : EMPTY_LIST
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
    // A batch taken from the queue but not written yet was never started: it goes back, for another transport.
    if (p.batch.length > 0 && !p.batchStarted) {
      const batch = p.batch
      p.batch = NO_BATCH
      this.requeue(batch)
    }
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
    this.trampoline.run(p.handlers.wakeWriter)
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
      let k = this.cursor >= n ? 0 : this.cursor
      for (let i = 0; i < n; i++) {
        const p = active[k]
        k = k + 1 === n ? 0 : k + 1
        if (!p.writing) {
          this.cursor = k
          p.writing = true
          return p
        }
      }
      return undefined
    }
    let best: Psock | undefined
    let bestBacklog = Infinity
    for (let i = 0; i < n; i++) {
      const p = active[(this.cursor + i) % n]
      if (p.writing) continue
      const backlog = Transport.writeBacklog(p.socket) ?? 0
      if (backlog < bestBacklog) {
        best = p
        bestBacklog = backlog
        if (backlog === 0) break
      }
    }
    if (best !== undefined) {
      this.cursor = (active.indexOf(best) + 1) % n
      best.writing = true
    }
    return best
  }

  /** Gives queued senders to free transports. */
  private dispatch(): void {
    while (this.queue.waiting > 0 && !this.closed) {
      const p = this.reserve()
      if (p === undefined) return
      this.startBatch(p)
    }
  }

  /** Puts a batch that was never written back at the head of the queue (or fails it, once closed). */
  private requeue(batch: ReadonlyArray<Pending>): void {
    if (this.closed) {
      for (let i = 0; i < batch.length; i++) this.trampoline.run(() => batch[i].settle(closedFailure))
      return
    }
    this.queue.requeue(batch)
    this.dispatch()
  }

  /** Hands the head of the queue to `p` (reserved) and wakes its writer. */
  private startBatch(p: Psock): void {
    p.batch = this.queue.takeBatch(this.options.maxBatchBytes)
    p.batchStarted = false
    if (p.writerWake !== undefined) this.trampoline.run(p.handlers.wakeWriter)
  }

  /** A write on `p` is done: the transport takes the next batch, or becomes free. */
  private writeDone(p: Psock): void {
    if (p.state === ACTIVE && this.queue.waiting > 0 && !this.closed) return this.startBatch(p)
    p.writing = false
    if (p.idleWaker !== undefined) {
      const waker = p.idleWaker
      p.idleWaker = undefined
      this.trampoline.run(waker)
    }
  }

  private countTx(p: Psock, messages: number, bytes: number): void {
    p.txMessages += messages
    p.txBytes += bytes
    this.txMessages += messages
    this.txBytes += bytes
    if (this.txMessages - this.reportedTxMessages >= METRIC_BATCH) this.reportTx()
  }

  /** A sender writes on the transport it reserved, in its own fiber. */
  private writeDirect(
    p: Psock,
    frames: NonEmptyReadonlyArray<Uint8Array>,
    messages: ReadonlyArray<Uint8Array>,
    bytes: number
  ): Effect.Effect<void, KcmError> {
    p.direct = messages
    p.directBytes = bytes
    const h = p.handlers
    return Effect.matchCauseEffect(Effect.onExit(p.writer.writeAll(frames), h.onDirectExit), h.onDirect)
  }

  /** @internal */
  directWritten(p: Psock): Effect.Effect<void> {
    this.countTx(p, p.direct!.length, p.directBytes)
    p.direct = undefined
    this.writeDone(p)
    return Effect.void
  }

  /** @internal */
  directFailed(p: Psock, cause: Cause.Cause<Socket.SocketError>): Effect.Effect<void, KcmError> {
    const messages = p.direct ?? EMPTY_LIST
    p.direct = undefined
    this.sendFailures++
    const error = socketErrorOf(cause)
    // Out of the pool before it is freed, so that no waiting sender is handed a dead transport.
    const dropped = this.fail(p, { _tag: "TransportFailed", error }, messages, "other")
    this.writeDone(p)
    const cutOff = kcmError(new MessageCutOff({ transportId: p.id, detail: error.message }))
    return Effect.andThen(dropped, Effect.fail(cutOff))
  }

  /** The writer fiber of `p`: writes the batches the queue hands it, one `writeAll` each. */
  private writeLoop(p: Psock): Effect.Effect<void> {
    const self = this
    const h = p.handlers
    return Effect.gen(function*() {
      while (true) {
        yield* h.awaitBatch
        if (p.state === GONE) return
        const batch = p.batch
        if (batch.length === 0) continue
        if (p.state !== ACTIVE) {
          // Detaching: the batch was never started, so the others take it.
          p.batch = NO_BATCH
          self.writeDone(p)
          self.requeue(batch)
          continue
        }
        const chunks = frameBatch(batch, self.options.delineation, unframeable)
        if (chunks === undefined) {
          p.batch = NO_BATCH
          self.writeDone(p)
          continue
        }
        p.batchStarted = true
        const exit = yield* Effect.exit(Effect.onExit(p.writer.writeAll(chunks), h.onBatchExit))
        p.batch = NO_BATCH
        p.batchStarted = false
        if (Exit.isSuccess(exit)) {
          let messages = 0
          let bytes = 0
          for (let i = 0; i < batch.length; i++) {
            messages += batch[i].count
            bytes += batch[i].bytes
          }
          self.countTx(p, messages, bytes)
          // Resumed directly. While `p` still counts as writing, their next sends queue for the next
          // batch; but with bytes still waiting in the transport a write is only appended behind them
          // (no system call), so then `p` is freed first and they write there at once.
          const release = self.queue.waiting === 0 && p.state === ACTIVE &&
            (Transport.writeBacklog(p.socket) ?? 0) > 0
          if (release) p.writing = false
          for (let i = 0; i < batch.length; i++) batch[i].settle(Effect.void)
          if (!release) self.writeDone(p)
          continue
        }
        const error = socketErrorOf(exit.cause)
        self.sendFailures += batch.length
        const dropped = self.fail(p, { _tag: "TransportFailed", error }, messagesOf(batch), "writer")
        const cutOff = Effect.fail(kcmError(new MessageCutOff({ transportId: p.id, detail: error.message })))
        for (let i = 0; i < batch.length; i++) self.trampoline.run(() => batch[i].settle(cutOff))
        self.writeDone(p)
        return yield* dropped
      }
    })
  }

  /** @internal The writer fiber was stopped mid-write (the transport left the pool): the batch is cut off. */
  batchInterrupted(p: Psock): void {
    const batch = p.batch
    const cutOff = Effect.fail(
      kcmError(new MessageCutOff({ transportId: p.id, detail: "the transport left the pool during the write" }))
    )
    this.sendFailures += batch.length
    for (let i = 0; i < batch.length; i++) this.trampoline.run(() => batch[i].settle(cutOff))
  }

  /** Puts a send in the queue, to wait for a transport. */
  private enqueue(entry: Pending): Effect.Effect<void, KcmError> {
    return Effect.callback<void, KcmError>((resume) => {
      entry.resume = resume
      this.queue.push(entry)
      this.sendWaits++
      if (this.timerWake !== undefined) {
        const wake = this.timerWake
        this.timerWake = undefined
        this.trampoline.run(() => wake(Effect.void))
      }
      return Effect.sync(() => {
        // Waiting: it leaves the queue. Started: the write goes on without this sender.
        if (entry.state === WAITING) this.queue.cancel(entry)
        else entry.resume = undefined
      })
    })
  }

  private deadline(): number {
    const timeout = this.options.sendTimeoutMillis
    return timeout === undefined ? Infinity : this.clock.currentTimeMillisUnsafe() + timeout
  }

  /** Sends one message: framed and written at once on a free transport, or queued and framed with its batch. */
  send(message: Uint8Array, sock?: SocketState): Effect.Effect<void, KcmError> {
    return Effect.suspend(() => {
      if (this.closed || sock?.closed === true) return closedFailure
      // Nobody queued ahead of us (otherwise every transport is writing anyway).
      const p = this.queue.waiting === 0 ? this.reserve() : undefined
      if (p === undefined) {
        const size = message.length
        return this.enqueue(new Pending(message, undefined, undefined, size, size, this.deadline()))
      }
      const frames = this.options.delineation.encode([message])
      if (frames instanceof DelineationError.DelineationError) {
        this.writeDone(p)
        return unframeable(frames.message)
      }
      return this.writeDirect(p, frames, [message], message.length)
    })
  }

  /** Sends a run of messages framed together. */
  private sendRun(
    frames: NonEmptyReadonlyArray<Uint8Array>,
    run: ReadonlyArray<Uint8Array>,
    bytes: number
  ): Effect.Effect<void, KcmError> {
    const p = this.queue.waiting === 0 ? this.reserve() : undefined
    if (p !== undefined) return this.writeDirect(p, frames, run, bytes)
    return this.enqueue(new Pending(undefined, frames, run, bytes, sizeOf(frames), this.deadline()))
  }

  /**
   * Fails queued sends whose send timeout has passed; runs for as long as
   * the multiplexor, sleeping until the oldest waiting send's deadline.
   */
  sendDeadlines(timeoutMillis: number): Effect.Effect<void> {
    const self = this
    const awaitWaiting = Effect.callback<void>((resume) => {
      if (self.queue.waiting > 0) return resume(Effect.void)
      self.timerWake = resume
      return Effect.sync(() => {
        self.timerWake = undefined
      })
    })
    return Effect.gen(function*() {
      while (!self.closed) {
        const head = self.queue.first()
        if (head === undefined) {
          yield* awaitWaiting
          continue
        }
        const now = self.clock.currentTimeMillisUnsafe()
        if (head.deadline > now) {
          yield* Effect.sleep(Duration.millis(head.deadline - now))
          continue
        }
        // Deadlines grow along the queue: expire from the head.
        let entry: Pending | undefined = head
        while (entry !== undefined && entry.deadline <= now) {
          const resume = entry.resume
          self.queue.cancel(entry)
          self.sendTimeouts++
          if (resume !== undefined) {
            const failure = Effect.fail(kcmError(new SendTimeout({ timeoutMillis, attached: self.active.length })))
            self.trampoline.run(() => resume(failure))
          }
          entry = self.queue.first()
        }
      }
    })
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
      if (runs.length === 1) return this.sendRun(runs[0].frames, runs[0].messages, runs[0].bytes)
      return Effect.forEach(runs, (run) => Effect.suspend(() => this.sendRun(run.frames, run.messages, run.bytes)), {
        discard: true
      })
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
              "reader"
            )
          }
          return yield* self.fail(p, { _tag: "TransportFailed", error }, [], "reader")
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
        if (failure !== undefined) return yield* self.fail(p, { _tag: "Delineation", error: failure }, [], "reader")
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
              "reader"
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
        }, [], "other"), { discard: true })
    })
  }

  /** Closes the multiplexor: senders fail, sockets end, transports leave. */
  close(): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (this.closed) return Effect.void
      this.closed = true
      for (const entry of this.queue.takeAll()) this.trampoline.run(() => entry.settle(closedFailure))
      if (this.timerWake !== undefined) {
        const wake = this.timerWake
        this.timerWake = undefined
        this.trampoline.run(() => wake(Effect.void))
      }
      for (const sock of [...this.sockets]) this.closeSocket(sock)
      const consumers = this.consumers.splice(0, this.consumers.length)
      for (const w of consumers) this.trampoline.run(() => w.resume(Cause.done()))
      const wakers = this.closedWakers.splice(0, this.closedWakers.length)
      for (const waker of wakers) this.trampoline.run(waker)
      const transports = [...this.active]
      return Effect.forEach(transports, (p) => this.fail(p, { _tag: "MuxClosed" }, [], "other"), { discard: true })
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
      busy: p.writing
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
      waitingSenders: this.queue.waiting,
      dialFailures: this.dialFailures
    }
    return { mux, transports: this.active.map((p) => this.transportStats(p)) }
  }

  /** A message socket object over a socket state. */
  makeSocket(sock: SocketState, batch: MessageSocket.Options["batch"]): MessageSocket.MessageSocket {
    const pull = this.pull(sock)
    const base = batch === undefined
      ? { send: (message: Uint8Array) => this.send(message, sock), flush: Effect.void }
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


/** The socket error of a failed write; a defect is reported as a write error. */
const socketErrorOf = (cause: Cause.Cause<Socket.SocketError>): Socket.SocketError => {
  const error = Cause.findError(cause)
  if (Result.isSuccess(error)) return error.success
  return new Socket.SocketError({ reason: new Socket.SocketWriteError({ cause: Cause.squash(cause) }) })
}
