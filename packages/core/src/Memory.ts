/**
 * In-memory connections with fault injection, for tests, examples and
 * benchmarks. `makeBytePair` gives the two ends of one connection as
 * `effect/socket` Sockets that follow every convention of `Transport`;
 * `makeMessagePair` gives two `MessageTransport`s that move whole messages.
 *
 * Each direction is a bounded buffer (`highWaterMark`, 64 KiB by default):
 * writers suspend while it is full, so a slow reader slows its writer as a
 * real socket would. Faults shape what the reader sees: writes cut into
 * random pieces or merged, latency, a bandwidth cap, bit flips, stalls and
 * resets, all reproducible from a seed. A `Link` controls one direction
 * while the test runs.
 *
 * What a caller must know: chunks are handed to the peer as they were
 * written, without copying (corrupted chunks excepted), so a buffer must not
 * be changed after it is written, exactly as with Node sockets. Closing the
 * pair's `Scope` resets the connection: pending pulls and writes on both
 * sides fail with close code 1006, and nothing keeps running.
 *
 * @since 0.1.0
 */
import type { NonEmptyReadonlyArray } from "effect/Array"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import { deriveSeed, Pipe, type PipeOptions } from "./internal/memoryPipe.ts"
import * as MessageTransport from "./MessageTransport.ts"
import * as Transport from "./Transport.ts"

/**
 * Faults applied to one direction of a pair (or to both, as `faults`).
 *
 * Randomness comes from a PRNG seeded with `seed` (default 1): a run with
 * the same seed and the same writes cuts and corrupts the same way. Latency
 * and bandwidth use the Effect `Clock` of the fiber that made the pair, so
 * `TestClock` drives them.
 *
 * @category models
 * @since 0.1.0
 */
export interface Faults {
  /**
   * Cuts every write into pieces of `min`..`max` bytes (the last piece of a
   * write may be shorter); a pull returns 1..16 pieces. Byte pairs only.
   */
  readonly split?: { readonly min: number; readonly max: number } | undefined
  /** A pull returns everything deliverable (up to 4096 writes) merged into one chunk. Byte pairs only. */
  readonly coalesce?: boolean | undefined
  /** Each write (message) becomes readable this long after it was written. */
  readonly latency?: Duration.Input | undefined
  /**
   * Bytes per second the direction carries. A write occupies the link for
   * `size / bandwidth` after the previous one; a byte reader receives the
   * bytes that have crossed so far (at least 10 ms worth), a message reader
   * whole messages once their last byte has crossed.
   */
  readonly bandwidth?: number | undefined
  /** For each delivered chunk (message), the probability of flipping one random bit in it. */
  readonly corrupt?: { readonly probability: number } | undefined
  /** Seeds the PRNG (split sizes, batch sizes, bit flips). Default 1. */
  readonly seed?: number | undefined
  /**
   * Bytes a direction buffers (written, not yet delivered, in flight
   * included) before writers suspend. A write is accepted whole when the
   * buffer is below the mark, so at most `highWaterMark` plus one write is
   * ever buffered. Message pairs also cap the number of queued messages at
   * this figure. Default 64 KiB.
   */
  readonly highWaterMark?: number | undefined
}

/**
 * The faults that apply to whole messages.
 *
 * @category models
 * @since 0.1.0
 */
export type MessageFaults = Omit<Faults, "split" | "coalesce">

/**
 * Counters of one direction.
 *
 * @category models
 * @since 0.1.0
 */
export interface Stats {
  /** Bytes accepted from writers. */
  readonly written: number
  /** Bytes handed to readers. */
  readonly delivered: number
  /** Bytes accepted and not yet delivered, in flight included. Dropped bytes of a reset are not counted. */
  readonly buffered: number
  /** Pulls suspended waiting for data. */
  readonly waitingReaders: number
  /** Writes suspended by backpressure. */
  readonly waitingWriters: number
}

/**
 * Counters of one direction of a message pair.
 *
 * @category models
 * @since 0.1.0
 */
export interface MessageStats extends Stats {
  readonly messagesWritten: number
  readonly messagesDelivered: number
}

/**
 * Control over one direction of a pair, for tests.
 *
 * @category models
 * @since 0.1.0
 */
export interface Link {
  /** Stops delivering: bytes (and a clean close) stay buffered and writers hit backpressure. */
  readonly stall: Effect.Effect<void>
  /** Delivers again after `stall`. */
  readonly resume: Effect.Effect<void>
  /**
   * Resets the whole connection, as a network failure would: both readers
   * fail with close code 1006, buffered bytes are lost, writes fail. With
   * `afterBytes`, this direction first delivers exactly that many more bytes
   * (cutting a write in the middle if need be).
   */
  readonly abort: (options?: { readonly afterBytes?: number | undefined }) => Effect.Effect<void>
  /** XORs `mask` (default 0x01) into the next byte delivered in this direction. */
  readonly corruptNext: (mask?: number) => Effect.Effect<void>
  readonly stats: Effect.Effect<Stats>
}

/**
 * Control over one direction of a message pair.
 *
 * @category models
 * @since 0.1.0
 */
export interface MessageLink {
  /** Stops delivering: messages (and the end) stay queued and senders hit backpressure. */
  readonly stall: Effect.Effect<void>
  readonly resume: Effect.Effect<void>
  /**
   * Resets the pair: both sides' pulls fail with close code 1006, queued
   * messages are lost, sends fail. With `afterMessages`, this direction
   * first delivers exactly that many more messages.
   */
  readonly abort: (options?: { readonly afterMessages?: number | undefined }) => Effect.Effect<void>
  /** XORs `mask` (default 0x01) into the first byte of the next non-empty message delivered. */
  readonly corruptNext: (mask?: number) => Effect.Effect<void>
  readonly stats: Effect.Effect<MessageStats>
}

/**
 * The two ends of one in-memory byte connection.
 *
 * @category models
 * @since 0.1.0
 */
export interface BytePair {
  readonly a: Socket.Socket
  readonly b: Socket.Socket
  readonly aToB: Link
  readonly bToA: Link
  /** Resets the connection now (both readers fail with 1006). */
  readonly abort: Effect.Effect<void>
}

/**
 * The two ends of one in-memory message connection.
 *
 * @category models
 * @since 0.1.0
 */
export interface MessagePair {
  readonly a: MessageTransport.MessageTransport<Socket.SocketError>
  readonly b: MessageTransport.MessageTransport<Socket.SocketError>
  readonly aToB: MessageLink
  readonly bToA: MessageLink
  /** Resets the pair now (both sides' pulls fail with 1006). */
  readonly abort: Effect.Effect<void>
}

/**
 * Options of a pair: `faults` for both directions, refined per direction by
 * `aToB` and `bToA` (field by field).
 *
 * @category models
 * @since 0.1.0
 */
export interface PairOptions<F = Faults> {
  readonly faults?: F | undefined
  readonly aToB?: F | undefined
  readonly bToA?: F | undefined
}

/**
 * The default `highWaterMark`: 64 KiB per direction.
 *
 * @category constants
 * @since 0.1.0
 */
export const DEFAULT_HIGH_WATER_MARK = 64 * 1024

/**
 * Makes one connection between two byte Sockets, `a` and `b`.
 *
 * Each end follows the conventions of `Transport`:
 * - `reader` attaches to the connection; `pull` yields what the peer wrote,
 *   then fails with close code 1000 when the peer closed cleanly, or with
 *   an abrupt close (code 1006, or the peer's abort code) on a reset.
 *   Releasing a reader's scope fails its pending pull (1006) and closes this
 *   end as `write(new CloseEvent(1000))` does, like closing a TCP socket.
 * - `writer` suspends while the direction is full; `writeAll` is atomic.
 *   Releasing a writer's scope half-closes: the peer reads what was written,
 *   then a clean close; the other direction keeps working.
 * - `write(new CloseEvent(1000))` closes gracefully: the peer reads what was
 *   written, then 1000; the local reader fails with 1000 and the peer's
 *   writes fail. Any other code resets the connection with that code.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeBytePair = (options?: PairOptions): Effect.Effect<BytePair, never, Scope.Scope> =>
  Effect.gen(function*() {
    const { clock, dispatcher } = yield* environment
    const seed = options?.faults?.seed ?? 1
    const aToB = new Pipe(resolve(false, seed, 0, options?.faults, options?.aToB), clock, dispatcher)
    const bToA = new Pipe(resolve(false, seed, 1, options?.faults, options?.bToA), clock, dispatcher)
    const reset = connect(aToB, bToA)
    yield* Effect.addFinalizer(() => Effect.sync(() => reset(pairClosed())))
    return {
      a: makeSocket(aToB, bToA, reset),
      b: makeSocket(bToA, aToB, reset),
      aToB: makeLink(aToB),
      bToA: makeLink(bToA),
      abort: Effect.sync(() => reset(aborted()))
    }
  })

/**
 * Makes one connection between two message transports, `a` and `b`.
 * Messages arrive whole and in order; `sendAll` is atomic. `close` ends the
 * sending side: the peer's `messages` end cleanly after what was sent, and
 * the other direction keeps working. Sends suspend while the direction is
 * full, and fail once it is closed.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeMessagePair = (
  options?: PairOptions<MessageFaults>
): Effect.Effect<MessagePair, never, Scope.Scope> =>
  Effect.gen(function*() {
    const { clock, dispatcher } = yield* environment
    const seed = options?.faults?.seed ?? 1
    const aToB = new Pipe(resolve(true, seed, 0, options?.faults, options?.aToB), clock, dispatcher)
    const bToA = new Pipe(resolve(true, seed, 1, options?.faults, options?.bToA), clock, dispatcher)
    const reset = connect(aToB, bToA)
    yield* Effect.addFinalizer(() => Effect.sync(() => reset(pairClosed())))
    return {
      a: makeMessageTransport(aToB, bToA),
      b: makeMessageTransport(bToA, aToB),
      aToB: makeMessageLink(aToB),
      bToA: makeMessageLink(bToA),
      abort: Effect.sync(() => reset(aborted()))
    }
  })

// -----------------------------------------------------------------------------
// internals
// -----------------------------------------------------------------------------

/** The clock that times latency and bandwidth, and the dispatcher that wakes suspended fibers. */
const environment = Effect.withFiber((fiber) =>
  Effect.succeed({ clock: fiber.getRef(Clock.Clock), dispatcher: fiber.currentDispatcher })
)

const pairClosed = () => Transport.closedError(Transport.CLOSE_ABNORMAL, "memory pair closed")
const aborted = () => Transport.closedError(Transport.CLOSE_ABNORMAL, "connection aborted")
const writeError = (message: string) =>
  new Socket.SocketError({ reason: new Socket.SocketWriteError({ cause: new Error(message) }) })

const resolve = (
  messages: boolean,
  pairSeed: number,
  direction: number,
  both: Faults | undefined,
  own: Faults | undefined
): PipeOptions => {
  const pick = <K extends keyof Faults>(key: K): Faults[K] => own?.[key] ?? both?.[key]
  const split = messages ? undefined : pick("split")
  const splitMin = split === undefined ? 0 : Math.max(1, Math.floor(split.min))
  const splitMax = split === undefined ? 0 : Math.max(splitMin, Math.floor(split.max))
  const latency = pick("latency")
  const latencyMs = latency === undefined ? 0 : Duration.toMillis(latency)
  const bandwidth = pick("bandwidth")
  if (bandwidth !== undefined && !(bandwidth > 0)) {
    throw new RangeError(`Memory: bandwidth must be a positive number of bytes per second, got ${bandwidth}`)
  }
  const highWaterMark = pick("highWaterMark") ?? DEFAULT_HIGH_WATER_MARK
  if (!(highWaterMark > 0)) throw new RangeError(`Memory: highWaterMark must be positive, got ${highWaterMark}`)
  const probability = pick("corrupt")?.probability ?? 0
  return {
    messages,
    highWaterMark,
    splitMin,
    splitMax,
    coalesce: !messages && pick("coalesce") === true,
    latencyMs: latencyMs > 0 ? latencyMs : 0,
    bytesPerMs: bandwidth === undefined || bandwidth === Infinity ? Infinity : bandwidth / 1000,
    corruptProbability: Math.min(1, Math.max(0, probability)),
    seed: own?.seed !== undefined ? own.seed >>> 0 : deriveSeed(pairSeed, 100 + direction)
  }
}

/** Ties two directions into one connection; returns its reset. */
const connect = (aToB: Pipe, bToA: Pipe): (error: Socket.SocketError) => void => {
  const reset = (error: Socket.SocketError) => {
    aToB.fail(error, error)
    bToA.fail(error, error)
  }
  aToB.onCut = bToA.onCut = () => reset(aborted())
  return reset
}

const encodeChunks = (chunks: NonEmptyReadonlyArray<Uint8Array | string>): ReadonlyArray<Uint8Array> => {
  for (let i = 0; i < chunks.length; i++) {
    if (typeof chunks[i] === "string") {
      return chunks.map((chunk) => typeof chunk === "string" ? Transport.encodeText(chunk) : chunk)
    }
  }
  return chunks as ReadonlyArray<Uint8Array>
}

const makeSocket = (
  outbound: Pipe,
  inbound: Pipe,
  reset: (error: Socket.SocketError) => void
): Socket.Socket => {
  const halfClose = () => outbound.end(Transport.closedError(), writeError("memory socket: write after close"))
  const close = () => {
    halfClose()
    inbound.fail(Transport.closedError(), writeError("memory socket: the peer closed the connection"))
  }

  const write = (chunk: Uint8Array | string | Socket.CloseEvent): Effect.Effect<void, Socket.SocketError> =>
    Effect.suspend(() => {
      if (Socket.isCloseEvent(chunk)) {
        if (chunk.code === Transport.CLOSE_NORMAL) close()
        else reset(Transport.closedError(chunk.code, chunk.reason ?? "connection reset by peer"))
        return Effect.void
      }
      return outbound.offer([typeof chunk === "string" ? Transport.encodeText(chunk) : chunk])
    })
  const writeAll = (chunks: NonEmptyReadonlyArray<Uint8Array | string>): Effect.Effect<void, Socket.SocketError> =>
    Effect.suspend(() => outbound.offer(encodeChunks(chunks)))
  const writer: Socket.Socket["writer"] = Effect.acquireRelease(
    Effect.succeed<Socket.Writer>({ write, writeAll }),
    () => Effect.sync(halfClose)
  )

  const reader: Socket.Socket["reader"] = Effect.flatMap(Effect.scope, (scope) => {
    const guard: { error: Socket.SocketError | undefined } = { error: undefined }
    return Effect.as(
      Scope.addFinalizer(
        scope,
        Effect.sync(() => {
          guard.error = Transport.closedError(Transport.CLOSE_ABNORMAL, "reader scope closed")
          close()
          inbound.wakeReaders()
        })
      ),
      {
        pull: inbound.makePull(Effect.fail, guard),
        upgrade: Socket.SocketUpgradeError.unsupported
      }
    )
  })

  const socket = Socket.make({ reader, writer })
  Transport.registerWriteBacklog(socket, () => outbound.buffered)
  return socket
}

const makeMessageTransport = (
  outbound: Pipe,
  inbound: Pipe
): MessageTransport.MessageTransport<Socket.SocketError> =>
  MessageTransport.make<Socket.SocketError>({
    send: (message) => Effect.suspend(() => outbound.offer([message])),
    sendAll: (messages) => messages.length === 0 ? Effect.void : Effect.suspend(() => outbound.offer(messages)),
    pull: inbound.makePull(() => Cause.done()),
    close: Effect.sync(() => outbound.end(Transport.closedError(), writeError("memory transport: send after close")))
  })

const makeControl = (pipe: Pipe) => ({
  stall: Effect.sync(() => pipe.stall()),
  resume: Effect.sync(() => pipe.resume()),
  corruptNext: (mask = 0x01) =>
    Effect.sync(() => {
      pipe.corruptMask = mask & 0xff
    })
})

const makeLink = (pipe: Pipe): Link => ({
  ...makeControl(pipe),
  abort: (options) => Effect.sync(() => pipe.cut(options?.afterBytes)),
  stats: Effect.sync(() => {
    const stats = pipe.stats()
    return {
      written: stats.written,
      delivered: stats.delivered,
      buffered: stats.buffered,
      waitingReaders: stats.waitingReaders,
      waitingWriters: stats.waitingWriters
    }
  })
})

const makeMessageLink = (pipe: Pipe): MessageLink => ({
  ...makeControl(pipe),
  abort: (options) => Effect.sync(() => pipe.cut(options?.afterMessages)),
  stats: Effect.sync(() => pipe.stats())
})
