/**
 * A KCM multiplexor: Linux's Kernel Connection Multiplexor in user space. It
 * owns a pool of attached byte transports and a `Delineation` that cuts
 * their byte streams into messages, and offers message sockets over them.
 *
 * - Sending picks a free transport (one not in the middle of a write) by
 *   the policy, round-robin or least-pending, and writes the whole message
 *   there: messages are never interleaved on a transport. When all are
 *   busy, messages wait in one queue, in order, up to the optional send
 *   timeout; the first transport to finish its write takes the head of the
 *   queue (up to `maxBatchBytes`) and writes it as one write. A send
 *   completes when the write carrying its message does.
 * - Messages received on every transport fan in to the message sockets:
 *   each goes to exactly one socket, whichever pulls first; per transport
 *   they keep their order. Received messages wait in a queue bounded by
 *   `receiveBudget`; past it, reading pauses (TCP backpressure).
 * - A transport that fails (a transport error, an unparseable byte stream,
 *   a partial message past its deadline or over the pool's partial budget)
 *   leaves the pool and is reported on the event stream. Messages not yet
 *   started on it go out on another; a message cut off mid-write fails its
 *   sender with `MessageCutOff` and is never sent twice.
 *
 * The one thing to know: closing the multiplexor's Scope closes everything
 * under it — message sockets end, waiting senders fail with `MuxClosed`,
 * and connections it dialled or accepted itself are closed. Transports you
 * attached yourself leave the pool but stay open: they are yours.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Predicate from "effect/Predicate"
import * as PubSub from "effect/PubSub"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import * as SocketServer from "effect/socket/SocketServer"
import * as Stream from "effect/Stream"
import { Delineation } from "@plexus/core"
import * as internal from "./internal/multiplexor.ts"
import type { KcmError } from "./KcmError.ts"
import type { KcmEvent } from "./KcmEvent.ts"
import type { Snapshot, TransportStats } from "./KcmStats.ts"
import type * as MessageSocket from "./MessageSocket.ts"

/**
 * @category type IDs
 * @since 0.1.0
 */
export const TypeId = "~@plexus/kcm/Kcm"

/**
 * How a send picks among the free transports. `round-robin` takes them in
 * turn; `least-pending` takes the one with the smallest write backlog
 * (bytes accepted but not yet handed to the operating system), where the
 * transport measures one (`Transport.writeBacklog`), in turn otherwise.
 *
 * @category models
 * @since 0.1.0
 */
export type Policy = internal.Policy

/**
 * @category models
 * @since 0.1.0
 */
export interface Options {
  /** How messages are cut out of each byte stream and framed. Default: a 4-byte big-endian length prefix. */
  readonly delineation?: Delineation.Delineation | undefined
  /** Default `"round-robin"`. */
  readonly policy?: Policy | undefined
  /** How long a send may wait in the queue for a transport to take it; then `SendTimeout`. Default: no limit. */
  readonly sendTimeout?: Duration.Input | undefined
  /** Bytes of received messages waiting for a socket before reading pauses. Default 4 MiB. */
  readonly receiveBudget?: number | undefined
  /**
   * Bytes of incomplete messages held across the pool. A transport whose
   * partial message pushes the total past it leaves the pool. Default: 16
   * MiB, or 4 maximum-size messages if that is more.
   */
  readonly partialBudget?: number | undefined
  /**
   * Bytes of messages coalesced into one write: queued sends a transport
   * takes at once, and the runs of `sendAll` and batching sockets. Default
   * 64 KiB.
   */
  readonly maxBatchBytes?: number | undefined
}

/**
 * One attached transport.
 *
 * @category models
 * @since 0.1.0
 */
export interface Attachment {
  readonly id: number
  readonly label: string
  /**
   * Takes the transport out of the pool: no new sends, a message being
   * written finishes, reading stops. Hands back the reader and writer, open,
   * and the bytes of a message received only in part, so that other code
   * can carry on with the byte stream from exactly there.
   */
  readonly detach: Effect.Effect<Detached>
  /** Waits until the transport has left the pool, for any reason. */
  readonly gone: Effect.Effect<void>
  /** Its counters, while attached. */
  readonly stats: Effect.Effect<TransportStats | undefined>
}

/**
 * What `detach` hands back.
 *
 * @category models
 * @since 0.1.0
 */
export interface Detached {
  readonly id: number
  readonly label: string
  /** Bytes received after the last whole message: the start of the next one. */
  readonly pending: Uint8Array
  readonly reader: Socket.Reader
  readonly writer: Socket.Writer
}

/**
 * @category models
 * @since 0.1.0
 */
export interface Multiplexor {
  readonly [TypeId]: typeof TypeId
  /**
   * Adds a connected byte transport to the pool. Its reader and writer are
   * acquired in the caller's Scope, and closing that scope detaches it.
   */
  readonly attach: (
    socket: Socket.Socket,
    options?: { readonly label?: string | undefined }
  ) => Effect.Effect<Attachment, KcmError | Socket.SocketError, Scope.Scope>
  /** Opens a message socket (KCM's clone), closed with the caller's Scope. */
  readonly socket: (options?: MessageSocket.Options) => Effect.Effect<MessageSocket.MessageSocket, never, Scope.Scope>
  /**
   * Subscribes to the event stream now: the stream has every event from this
   * moment on, for as long as the caller's Scope is open.
   */
  readonly events: Effect.Effect<Stream.Stream<KcmEvent>, never, Scope.Scope>
  /** Counters, like /proc/net/kcm_stats. */
  readonly stats: Effect.Effect<Snapshot>
  /** Transports attached now. */
  readonly attached: Effect.Effect<number>
  /** Closes the multiplexor (as closing its Scope does). */
  readonly close: Effect.Effect<void>
}

/**
 * @category guards
 * @since 0.1.0
 */
export const isMultiplexor = (u: unknown): u is Multiplexor => Predicate.hasProperty(u, TypeId)

const resolve = (options: Options | undefined): internal.ResolvedOptions => {
  const delineation = options?.delineation ?? Delineation.lengthPrefix()
  const positive = (name: string, value: number | undefined, fallback: number) => {
    const v = value ?? fallback
    if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer, got ${v}`)
    return v
  }
  return {
    delineation,
    policy: options?.policy ?? "round-robin",
    sendTimeoutMillis: options?.sendTimeout === undefined
      ? undefined
      : Duration.toMillis(Duration.fromInputUnsafe(options.sendTimeout)),
    receiveBudget: positive("receiveBudget", options?.receiveBudget, 4 * 1024 * 1024),
    partialBudget: positive(
      "partialBudget",
      options?.partialBudget,
      Math.max(16 * 1024 * 1024, 4 * Math.min(delineation.maxMessageSize, 2 ** 40))
    ),
    maxBatchBytes: positive("maxBatchBytes", options?.maxBatchBytes, 64 * 1024)
  }
}

const fromInternal = (mux: internal.Multiplexor): Multiplexor => {
  const attachment = (p: internal.Psock): Attachment => ({
    id: p.id,
    label: p.label,
    detach: mux.detach(p),
    gone: mux.awaitGone(p),
    stats: Effect.sync(() => mux.statsOf(p))
  })
  return {
    [TypeId]: TypeId,
    attach: (socket, options) => Effect.map(mux.attach(socket, options?.label, undefined), attachment),
    socket: (options) =>
      Effect.acquireRelease(
        Effect.sync(() => mux.makeSocket(mux.openSocket(options), options?.batch)),
        (socket) => socket.close
      ),
    events: mux.subscribe(),
    stats: Effect.sync(() => mux.snapshot()),
    attached: Effect.sync(() => mux.active.length),
    close: mux.close()
  }
}

/**
 * Creates an empty multiplexor in the Scope.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make = (options?: Options): Effect.Effect<Multiplexor, never, Scope.Scope> =>
  Effect.map(makeInternal(options), fromInternal)

const makeInternal = (options?: Options): Effect.Effect<internal.Multiplexor, never, Scope.Scope> =>
  Effect.gen(function*() {
    const resolved = resolve(options)
    const scope = yield* Effect.scope
    const events = yield* PubSub.sliding<KcmEvent>(EVENT_CAPACITY)
    const context = yield* Effect.context<never>()
    const mux = new internal.Multiplexor(resolved, scope, events, context)
    yield* Scope.addFinalizer(scope, Effect.andThen(mux.close(), PubSub.shutdown(events)))
    const timeout = resolved.delineation.partialTimeout
    if (timeout !== undefined) {
      const millis = Duration.toMillis(timeout)
      const period = Duration.millis(Math.max(1, Math.min(250, Math.floor(millis / 4))))
      yield* Effect.forkIn(Effect.forever(Effect.andThen(Effect.sleep(period), mux.sweepPartials(millis))), scope)
    }
    if (resolved.sendTimeoutMillis !== undefined) {
      yield* Effect.forkIn(mux.sendDeadlines(resolved.sendTimeoutMillis), scope)
    }
    return mux
  })

/**
 * Events kept for a subscriber that falls behind; past this the oldest are
 * dropped, so a stalled subscriber cannot grow memory.
 */
const EVENT_CAPACITY = 4096

/**
 * How a pool is kept at its size.
 *
 * @category models
 * @since 0.1.0
 */
export interface PoolOptions<E> extends Options {
  /** Dials one connection; it is closed when it leaves the pool. */
  readonly dial: Effect.Effect<Socket.Socket, E, Scope.Scope>
  /** The target number of connections. */
  readonly connections: number
  /**
   * When to dial again after a failed dial. Default: exponential from 50 ms,
   * capped at 5 s, forever. `false`: no reconnection — the pool only shrinks.
   */
  readonly reconnect?: Schedule.Schedule<unknown, unknown> | false | undefined
}

const defaultReconnect: Schedule.Schedule<unknown, unknown> = Schedule.exponential("50 millis").pipe(
  Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.seconds(5))))
)

/**
 * Creates a multiplexor that dials `connections` connections and, unless
 * `reconnect` is `false`, dials again whenever one leaves the pool, retrying
 * failed dials on the schedule (each failure is a `DialFailed` event). It
 * starts once the first `connections` dials succeeded (retrying them on the
 * same schedule), so a pool that cannot reach its peer fails here only when
 * the schedule gives up.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makePool = <E>(
  options: PoolOptions<E>
): Effect.Effect<Multiplexor, E | KcmError | Socket.SocketError, Scope.Scope> =>
  Effect.gen(function*() {
    if (!Number.isSafeInteger(options.connections) || options.connections < 1) {
      throw new RangeError(`connections must be a positive integer, got ${options.connections}`)
    }
    const mux = yield* makeInternal(options)
    const schedule = options.reconnect === false ? undefined : (options.reconnect ?? defaultReconnect)
    let next = 1
    const dialOnce: Effect.Effect<void, E | KcmError | Socket.SocketError> = Effect.gen(function*() {
      const owned = yield* Scope.fork(mux.scope)
      const exit = yield* Effect.exit(
        Effect.flatMap(Scope.provide(options.dial, owned), (socket) =>
          Scope.provide(mux.attach(socket, `connection-${next++}`, owned), owned))
      )
      if (Exit.isFailure(exit)) {
        yield* Scope.close(owned, Exit.void)
        mux.dialFailures++
        PubSub.publishUnsafe(mux.events, { _tag: "DialFailed", error: exit.cause, attached: mux.active.length })
        return yield* Effect.failCause(exit.cause)
      }
    })
    const dial = schedule === undefined ? dialOnce : Effect.retry(dialOnce, schedule)
    for (let i = 0; i < options.connections; i++) yield* dial
    if (schedule !== undefined) {
      const keep: Effect.Effect<void> = Effect.gen(function*() {
        while (!mux.closed) {
          if (mux.active.length >= options.connections) {
            yield* Effect.raceFirst(Effect.raceAll(mux.active.map((p) => mux.awaitGone(p))), mux.awaitClosed)
            continue
          }
          yield* Effect.ignore(dial)
        }
      })
      yield* Effect.forkIn(keep, mux.scope)
    }
    return fromInternal(mux)
  })

/**
 * The multiplexor service.
 *
 * @category services
 * @since 0.1.0
 */
export class Kcm extends Context.Service<Kcm, Multiplexor>()("@plexus/kcm/Kcm") {}

/**
 * An empty multiplexor; attach transports yourself.
 *
 * @category layers
 * @since 0.1.0
 */
export const layer = (options?: Options): Layer.Layer<Kcm> => Layer.effect(Kcm, make(options))

/**
 * A client multiplexor over a pool of dialled connections, kept at its size
 * (see `makePool`). With `Tcp.dial({ host, port })` as `dial`, a pool of TCP
 * connections to one host.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerClient = <E>(options: PoolOptions<E>): Layer.Layer<Kcm, E | KcmError | Socket.SocketError> =>
  Layer.effect(Kcm, makePool(options))

/**
 * A server multiplexor: every connection the `SocketServer` in context
 * accepts is attached, and closed when it leaves the pool. With
 * `Tcp.layerServer(...)` underneath, a KCM server on a TCP port.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerServer = (options?: Options): Layer.Layer<Kcm, never, SocketServer.SocketServer> =>
  Layer.effect(
    Kcm,
    Effect.gen(function*() {
      const server = yield* SocketServer.SocketServer
      const mux = yield* makeInternal(options)
      const handler = (socket: Socket.Socket) =>
        Effect.scoped(
          Effect.flatMap(mux.attach(socket, undefined, undefined), (p) => mux.awaitGone(p))
        ).pipe(Effect.ignore)
      yield* Effect.forkIn(Effect.ignore(server.run(handler)), mux.scope)
      return fromInternal(mux)
    })
  )
