/**
 * A `Session` multiplexes many full-duplex byte streams over one byte
 * transport (docs/spec/mux.md), the muxado idea: either side opens streams,
 * the other accepts them, and the session is a listener whose connections
 * are its streams. It presents `effect/socket`'s `SocketServer` (so server
 * code written for one, effect/rpc's `layerProtocolSocketServer` among it,
 * runs over it), and each stream is an `effect/socket` `Socket`.
 *
 * Two codecs drive one engine: `yamux`, byte-compatible with any yamux peer,
 * and `plexus`, which adds reset codes, GO_AWAY's last stream id, stream
 * types, priorities and settings.
 *
 * What a caller must know: the session lives in the Scope it was made in.
 * Closing that scope sends GO_AWAY, resets the streams still open, and
 * closes the transport; `close` does the same gracefully, letting streams
 * finish until a drain deadline.
 *
 * @since 0.1.0
 */
import type { NonEmptyReadonlyArray } from "effect/Array"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as NetAddress from "effect/net/NetAddress"
import * as Predicate from "effect/Predicate"
import * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import * as SocketServer from "effect/socket/SocketServer"
import * as Stream from "effect/Stream"
import { concatBytes } from "./internal/bytes.ts"
import { CODE_NO_ERROR, Engine, type EngineStats, type SessionFailure, type StreamState } from "./internal/muxEngine.ts"
import {
  CODE_KEEPALIVE_TIMEOUT,
  type FrameDecoder,
  PlexusDecoder,
  PlexusEncoder,
  YamuxDecoder,
  YamuxEncoder
} from "./internal/muxFrames.ts"
import { type MuxStream, MuxStreamImpl } from "./MuxStream.ts"
import {
  GoneAway,
  KeepaliveTimeout,
  LimitExceeded,
  OpenTimeout,
  ProtocolViolation,
  SessionError,
  StreamError,
  StreamIdsExhausted,
  StreamReset,
  TransportClosed,
  UnsupportedByCodec
} from "./SessionError.ts"
import * as Transport from "./Transport.ts"
import { makeWriterSignal } from "./internal/writerSignal.ts"

/**
 * @category type IDs
 * @since 0.1.0
 */
export const TypeId = "~@plexus/core/Session"

/**
 * The wire codecs (spec: Framing).
 *
 * @category models
 * @since 0.1.0
 */
export type Codec = "yamux" | "plexus"

/**
 * Reset and GO_AWAY codes (spec: Codes).
 *
 * @category constants
 * @since 0.1.0
 */
export const Code = {
  NO_ERROR: 0x0,
  PROTOCOL_ERROR: 0x1,
  INTERNAL_ERROR: 0x2,
  FLOW_CONTROL_ERROR: 0x3,
  STREAM_CLOSED: 0x4,
  REFUSED_STREAM: 0x5,
  CANCEL: 0x6,
  ENHANCE_YOUR_CALM: 0x7,
  KEEPALIVE_TIMEOUT: 0x8,
  ID_EXHAUSTED: 0x9
} as const

/**
 * Session options. Every limit has a default from docs/spec/mux.md.
 *
 * @category models
 * @since 0.1.0
 */
export interface Options {
  /** Which side of the transport this is: the dialer is the client (odd stream ids). */
  readonly role: "client" | "server"
  /** Default "plexus". */
  readonly codec?: Codec | undefined
  /** Largest a stream's receive window may grow by auto-tuning. Default 16 MiB. */
  readonly maxWindow?: number | undefined
  /** Bound on the windows granted across all streams. Default 64 MiB. */
  readonly sessionBudget?: number | undefined
  /** Inbound streams held un-accepted. Default 256. */
  readonly acceptBacklog?: number | undefined
  /** Concurrent streams the peer may open. Default 1000. */
  readonly maxInboundStreams?: number | undefined
  /** Concurrent streams this side may open. Default 1000. */
  readonly maxOutboundStreams?: number | undefined
  /** Largest DATA payload accepted (plexus, announced to the peer) and sent. Default 256 KiB for plexus, 64 KiB for yamux. */
  readonly maxFrameSize?: number | undefined
  /** Bound on control frames queued behind a blocked transport. Default 1000. */
  readonly maxControlQueue?: number | undefined
  /** Bytes a stream queues before its writer waits. Default 256 KiB. */
  readonly sendBufferSize?: number | undefined
  /** How long `open` may wait for a slot. Default 30 s. */
  readonly openTimeout?: Duration.Input | undefined
  /** Keepalive pings; `false` turns them off. Default every 15 s, 10 s to answer. */
  readonly keepAlive?: false | { readonly interval?: Duration.Input; readonly timeout?: Duration.Input } | undefined
  /** How long `close` (and scope close) waits for open streams. Default 5 s. */
  readonly drainTimeout?: Duration.Input | undefined
  /** Frames that do nothing useful (closed-stream frames, pings, refused opens, resets) allowed per second. Default 1000. */
  readonly floodLimit?: number | undefined
  /** @internal For tests: the first stream id this side uses. */
  readonly firstStreamId?: number | undefined
}

/**
 * Options of a new stream.
 *
 * @category models
 * @since 0.1.0
 */
export interface OpenOptions {
  /** Stream type, routed to the peer's handler for it (plexus only). Default 0. */
  readonly type?: number | undefined
  /** Urgency 0 (most) … 7 (least). Default 3. */
  readonly urgency?: number | undefined
  readonly incremental?: boolean | undefined
}

/**
 * Counters of a session, for budgets, tests and dashboards.
 *
 * @category models
 * @since 0.1.0
 */
export interface Stats extends EngineStats {
  /** Bytes of a frame held across transport reads. */
  readonly partialFrameBytes: number
  readonly rttMillis: number | undefined
}

/**
 * @category models
 * @since 0.1.0
 */
export interface Session {
  readonly [TypeId]: typeof TypeId
  readonly codec: Codec
  readonly role: "client" | "server"
  /** Opens a stream; it is reset when the Scope closes unless it finished. */
  readonly open: (options?: OpenOptions) => Effect.Effect<MuxStream, SessionError, Scope.Scope>
  /** Accepts the next incoming (untyped) stream. */
  readonly accept: Effect.Effect<MuxStream, SessionError, Scope.Scope>
  /**
   * Incoming (untyped) streams as a Stream, accepted as they are pulled. It
   * ends when this side closes and fails when the session fails. Each
   * stream belongs to the consumer: close its write side or `reset` it.
   */
  readonly incoming: Stream.Stream<MuxStream, SessionError>
  /**
   * Routes incoming streams of a type to a handler (plexus), for as long as
   * the calling scope is open. Each stream runs in its own fiber and scope.
   */
  readonly handle: <E, R>(
    type: number,
    handler: (stream: MuxStream) => Effect.Effect<unknown, E, R>
  ) => Effect.Effect<void, never, Scope.Scope | R>
  /** The SocketServer shape: runs `handler` for every incoming stream. */
  readonly run: <R, E, _>(
    handler: (socket: Socket.Socket) => Effect.Effect<_, E, R>
  ) => Effect.Effect<never, SocketServer.SocketServerError, R>
  /**
   * The stream-per-request pattern in one step: opens a stream, sends
   * `body`, half-closes, and collects the whole reply until the peer's FIN.
   * Runs on the engine's callbacks, with no fiber per stream or chunk.
   * Interrupting it resets the stream (CANCEL), so the peer's handler is
   * told. A reply larger than `maxResponseBytes` (default 64 MiB) resets the
   * stream and fails.
   */
  readonly request: (
    body: Uint8Array | ReadonlyArray<Uint8Array>,
    options?: OpenOptions & { readonly maxResponseBytes?: number | undefined }
  ) => Effect.Effect<Uint8Array, SessionError | StreamError>
  /**
   * The other side of `request`: for every incoming stream, collects the
   * request until the peer's FIN, runs `handler` on it in a fiber of its
   * own, and sends what it answers followed by FIN. A handler failure resets
   * the stream (INTERNAL_ERROR). A request larger than `maxRequestBytes`
   * (default 64 MiB) resets the stream. Runs until the session ends.
   */
  readonly serveRequests: <E, R>(
    handler: (request: Uint8Array, stream: MuxStream) => Effect.Effect<Uint8Array | ReadonlyArray<Uint8Array>, E, R>,
    options?: { readonly maxRequestBytes?: number | undefined }
  ) => Effect.Effect<void, SessionError, R>
  /** Sends a ping and waits for its answer: the round-trip time. */
  readonly ping: Effect.Effect<Duration.Duration, SessionError>
  /** The smoothed round-trip time, once measured. */
  readonly rtt: Effect.Effect<Duration.Duration | undefined>
  readonly stats: Effect.Effect<Stats>
  /**
   * Closes gracefully: GO_AWAY, then open streams may finish until the
   * drain deadline, then the rest are reset and the transport closes.
   */
  readonly close: (options?: { readonly code?: number; readonly drain?: Duration.Input }) => Effect.Effect<void>
  /** Waits for the session to end: succeeds after a graceful end, fails with why otherwise. */
  readonly closed: Effect.Effect<void, SessionError>
}

/**
 * @category guards
 * @since 0.1.0
 */
export const isSession = (u: unknown): u is Session => Predicate.hasProperty(u, TypeId)

/**
 * The session service, for stacks composed with Layers.
 *
 * @category services
 * @since 0.1.0
 */
export class SessionService extends Context.Service<SessionService, Session>()("@plexus/core/Session") {}

/**
 * Session metrics (Effect `Metric`), across all sessions of the process.
 *
 * @category metrics
 * @since 0.1.0
 */
export const metrics = {
  openStreams: Metric.gauge("plexus_session_open_streams", { description: "streams open across sessions" }),
  bytesIn: Metric.counter("plexus_session_bytes_in", { description: "DATA payload bytes received" }),
  bytesOut: Metric.counter("plexus_session_bytes_out", { description: "DATA payload bytes sent" }),
  rtt: Metric.gauge("plexus_session_rtt_ms", { description: "last measured round-trip time" }),
  resets: Metric.counter("plexus_session_resets", { description: "streams reset, either side" }),
  windowStalls: Metric.counter("plexus_session_window_stalls", { description: "times a stream had data but no window" })
}

const toSessionError = (failure: SessionFailure): SessionError => {
  switch (failure.kind) {
    case "protocol":
      return new SessionError({
        reason: new ProtocolViolation({ detail: failure.detail, offset: failure.offset, code: failure.code }),
        retryable: false
      })
    case "limit":
      return new SessionError({
        reason: new LimitExceeded({
          limit: failure.limit?.name ?? failure.detail,
          value: failure.limit?.value ?? 0,
          max: failure.limit?.max ?? 0
        }),
        retryable: false
      })
    case "goaway":
      return new SessionError({
        reason: new GoneAway({
          code: failure.code,
          lastStreamId: failure.lastStreamId,
          byPeer: failure.byPeer,
          reason: failure.detail
        }),
        retryable: false
      })
    case "keepalive":
      return new SessionError({ reason: new KeepaliveTimeout({ timeoutMillis: Number(failure.detail) }), retryable: false })
    case "exhausted":
      return new SessionError({
        reason: new StreamIdsExhausted({ lastStreamId: failure.lastStreamId ?? 0 }),
        retryable: false
      })
    case "transport":
      return new SessionError({ reason: new TransportClosed({ detail: failure.detail }), retryable: false })
  }
}

/**
 * Runs a session over a byte transport, in the current Scope.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make = (
  socket: Socket.Socket,
  options: Options
): Effect.Effect<Session, Socket.SocketError, Scope.Scope> =>
  Effect.gen(function*() {
    const codec: Codec = options.codec ?? "plexus"
    const client = options.role === "client"
    const scope = yield* Effect.scope
    const clock = yield* Clock.Clock
    const context = yield* Effect.context<never>()
    // plexus peers announce their frame size, so ours can be larger than the
    // 64 KiB every yamux peer is known to accept.
    const frameSize = options.maxFrameSize ?? (codec === "plexus" ? 256 * 1024 : 64 * 1024)
    const keepAlive = options.keepAlive === false ? undefined : {
      interval: Duration.toMillis(Duration.fromInputUnsafe(options.keepAlive?.interval ?? "15 seconds")),
      timeout: Duration.toMillis(Duration.fromInputUnsafe(options.keepAlive?.timeout ?? "10 seconds"))
    }
    const openTimeout = Duration.fromInputUnsafe(options.openTimeout ?? "30 seconds")
    const drainTimeout = Duration.fromInputUnsafe(options.drainTimeout ?? "5 seconds")

    // Round trips on loopback are well under a millisecond: time pings in
    // fractions of one.
    const nowPrecise = () => Number(clock.currentTimeNanosUnsafe()) / 1e6
    const writerSignal = makeWriterSignal()
    const ended = yield* Deferred.make<void, SessionError>()
    let sessionError: SessionError | undefined
    const pongs = new Map<number, (at: number) => void>()
    const handlers = new Map<number, (stream: StreamState) => void>()

    const engine: Engine = new Engine({
      client,
      codec,
      maxWindow: options.maxWindow ?? 16 * 1024 * 1024,
      sessionBudget: options.sessionBudget ?? 64 * 1024 * 1024,
      acceptBacklog: options.acceptBacklog ?? 256,
      maxInboundStreams: options.maxInboundStreams ?? 1000,
      maxOutboundStreams: options.maxOutboundStreams ?? 1000,
      sendFrameSize: codec === "yamux" ? Math.min(frameSize, 64 * 1024) : frameSize,
      receiveFrameSize: frameSize,
      maxControlQueue: options.maxControlQueue ?? 1000,
      writeBatchBytes: 256 * 1024,
      sendBufferBytes: options.sendBufferSize ?? 256 * 1024,
      floodLimit: options.floodLimit ?? 1000,
      floodWindowMs: 1000,
      firstStreamId: options.firstStreamId
    }, codec === "yamux" ? new YamuxEncoder() : new PlexusEncoder(), {
      // Wake-ups are coalesced to the end of the current turn, so the frames
      // that one turn produces (an open, its data, its FIN, window updates)
      // leave in one write instead of one write each.
      wakeWriter: writerSignal.wake,
      onIncoming: (stream) => {
        if (stream.type !== 0) handlers.get(stream.type)?.(stream)
      },
      onPong: (opaque) => {
        const done = pongs.get(opaque)
        if (done === undefined) return false
        pongs.delete(opaque)
        done(nowPrecise())
        return true
      },
      onEnd: (failure) => {
        if (failure !== undefined) {
          // A failed session reads nothing more, not even the rest of the
          // chunk at hand: what the peer sends after the failure must not be
          // answered (after our GO_AWAY), nor buffered for streams that are gone.
          decoder.stop()
          sessionError ??= toSessionError(failure)
        }
        Deferred.doneUnsafe(ended, sessionError === undefined ? Exit.void : Exit.fail(sessionError))
      },
      hasHandler: (type) => handlers.has(type),
      now: () => clock.currentTimeMillisUnsafe()
    })
    const decoder: FrameDecoder = codec === "yamux"
      // yamux peers may send DATA frames as large as the window they were given.
      ? new YamuxDecoder(engine, options.maxWindow ?? 16 * 1024 * 1024)
      : new PlexusDecoder(engine, frameSize)

    // Streams fail (and their waiters wake) inside `engine.fail`, before
    // `onEnd` runs: their typed error must already see the session's.
    const getSessionError = () => {
      if (sessionError === undefined && engine.failure !== undefined) sessionError = toSessionError(engine.failure)
      return sessionError
    }
    const wrap = (state: StreamState): MuxStreamImpl => new MuxStreamImpl(state, engine, getSessionError)

    // Metrics move at batch boundaries, not per frame.
    let reportedIn = 0
    let reportedOut = 0
    let reportedResets = 0
    let reportedStalls = 0
    const report = () => {
      const s = engine.stats
      if (s.bytesIn !== reportedIn) {
        metrics.bytesIn.modifyUnsafe(s.bytesIn - reportedIn, context)
        reportedIn = s.bytesIn
      }
      if (s.bytesOut !== reportedOut) {
        metrics.bytesOut.modifyUnsafe(s.bytesOut - reportedOut, context)
        reportedOut = s.bytesOut
      }
      const resets = s.resetsSent + s.resetsReceived
      if (resets !== reportedResets) {
        metrics.resets.modifyUnsafe(resets - reportedResets, context)
        reportedResets = resets
      }
      if (s.windowStalls !== reportedStalls) {
        metrics.windowStalls.modifyUnsafe(s.windowStalls - reportedStalls, context)
        reportedStalls = s.windowStalls
      }
    }
    let reportedStreams = 0
    const reportStreams = () => {
      const open = engine.stats.openStreams
      if (open !== reportedStreams) {
        metrics.openStreams.modifyUnsafe(open - reportedStreams, context)
        reportedStreams = open
      }
    }

    // The transport ------------------------------------------------------

    // A transport that reads into reused memory (plexus's TCP) hands the
    // decoder views of it: the decoder runs as each read arrives, and the
    // engine copies the DATA it keeps. Otherwise chunks are pulled, and
    // kept as they are.
    const borrowed = Transport.borrowedReads(socket)
    /** After each read: wake the streams' readers, update the metrics. */
    const afterRead = (): void => {
      engine.flushReadWakes()
      report()
      reportStreams()
    }
    let readLoop: Effect.Effect<never, Socket.SocketError>
    if (borrowed !== undefined) {
      engine.copyInput = true
      readLoop = Scope.provide(
        borrowed.readBorrowed((chunk) => {
          if (engine.failure !== undefined) return
          decoder.push(chunk)
          afterRead()
        }),
        scope
      )
    } else {
      const reader = yield* socket.reader
      const pullLoop: Effect.Effect<never, Socket.SocketError> = Effect.flatMap(reader.pull, (chunks) => {
        for (let i = 0; i < chunks.length; i++) {
          const chunk = chunks[i]
          decoder.push(typeof chunk === "string" ? Transport.encodeText(chunk) : chunk)
          if (engine.failure !== undefined) break
        }
        afterRead()
        return pullLoop
      })
      readLoop = pullLoop
    }
    const writeScope = yield* Scope.fork(scope)
    const writer = yield* Scope.provide(socket.writer, writeScope)

    const writeLoop: Effect.Effect<void, Socket.SocketError> = Effect.suspend(() => {
      if (!engine.hasWork) {
        if (engine.ended || engine.failure !== undefined) return Effect.void
        return Effect.andThen(writerSignal.wait, writeLoop)
      }
      const batch = engine.nextBatch()
      report()
      if (batch === undefined) return writeLoop
      return Effect.andThen(writer.writeAll(batch as unknown as NonEmptyReadonlyArray<Uint8Array>), writeLoop)
    })

    const transportFailed = (error: Socket.SocketError) =>
      Effect.sync(() => {
        engine.transportEnded(Transport.isCleanClose(error) ? "the peer closed the connection" : error.message)
      })

    const readerFiber = yield* readLoop.pipe(
      Effect.catch(transportFailed),
      Effect.forkIn(scope)
    )
    const writerFiber = yield* writeLoop.pipe(
      Effect.catch(transportFailed),
      Effect.forkIn(scope)
    )

    // Keepalive ---------------------------------------------------------------

    let nextOpaque = 1
    const sendPing = (): Effect.Effect<number, SessionError> =>
      Effect.callback<number, SessionError>((resume) => {
        if (sessionError !== undefined || engine.failure !== undefined) {
          resume(Effect.fail(sessionError ?? toSessionError(engine.failure!)))
          return
        }
        const opaque = nextOpaque
        nextOpaque = (nextOpaque + 1) >>> 0 || 1
        const sentAt = nowPrecise()
        pongs.set(opaque, (at) => {
          const rtt = Math.max(0, at - sentAt)
          engine.recordRtt(rtt)
          metrics.rtt.updateUnsafe(rtt, context)
          resume(Effect.succeed(rtt))
        })
        engine.encoder.ping(false, opaque)
        engine.hooks.wakeWriter()
        return Effect.sync(() => pongs.delete(opaque))
      })

    const ping: Effect.Effect<Duration.Duration, SessionError> = Effect.raceFirst(
      Effect.map(sendPing(), Duration.millis),
      Effect.flatMap(Deferred.await(ended), () =>
        Effect.fail(new SessionError({ reason: new TransportClosed({ detail: "session ended" }), retryable: false })))
    )

    if (keepAlive !== undefined) {
      const timeout = keepAlive.timeout
      const beat: Effect.Effect<void> = Effect.andThen(
        Effect.sleep(Duration.millis(keepAlive.interval)),
        Effect.matchEffect(
          Effect.timeoutOrElse(sendPing(), {
            duration: Duration.millis(timeout),
            orElse: () =>
              Effect.sync(() => {
                engine.fail({ kind: "keepalive", code: CODE_KEEPALIVE_TIMEOUT, detail: String(timeout), byPeer: true })
                return -1
              })
          }),
          { onFailure: () => Effect.void, onSuccess: (rtt) => (rtt < 0 ? Effect.void : beat) }
        )
      )
      yield* Effect.forkIn(beat, scope)
    }
    // One early ping gives auto-tuning a round-trip time to work with.
    yield* Effect.forkIn(Effect.ignore(sendPing()), scope)

    // Streams -------------------------------------------------------------

    const fail = (failure: SessionFailure, retryable: boolean): SessionError => {
      const error = toSessionError(failure)
      return retryable ? new SessionError({ reason: error.reason, retryable: true }) : error
    }

    /** Ties a stream to the caller's scope: reset on close unless finished. */
    const own = (stream: MuxStreamImpl): Effect.Effect<MuxStream, never, Scope.Scope> =>
      Effect.as(Effect.addFinalizer(() => Effect.sync(() => stream.release())), stream)

    const waitIn = (list: Array<() => void>): Effect.Effect<void> =>
      Effect.callback<void>((resume) => {
        const waker = () => resume(Effect.void)
        list.push(waker)
        return Effect.sync(() => {
          const i = list.indexOf(waker)
          if (i >= 0) list.splice(i, 1)
        })
      })

    const tryOpen = (o: OpenOptions | undefined): Effect.Effect<MuxStreamImpl, SessionError> =>
      Effect.suspend(() => {
        const blocker = engine.openBlocker()
        if (blocker === "wait") return Effect.andThen(waitIn(engine.openWakers), tryOpen(o))
        // An open that never left this side is always safe to retry elsewhere.
        if (blocker !== undefined) return Effect.fail(fail(blocker, blocker.kind === "goaway"))
        const state = engine.openStream(o?.type ?? 0, o?.urgency ?? 3, o?.incremental ?? true)
        reportStreams()
        return Effect.succeed(wrap(state))
      })

    const open = (o?: OpenOptions): Effect.Effect<MuxStream, SessionError, Scope.Scope> => {
      if ((o?.type ?? 0) !== 0 && codec === "yamux") {
        return Effect.fail(
          new SessionError({ reason: new UnsupportedByCodec({ codec, feature: "stream types" }), retryable: false })
        )
      }
      return Effect.suspend(() => {
        // The common case opens at once; only an open that must wait for a
        // place pays for the timeout.
        if (engine.openBlocker() === undefined) {
          const state = engine.openStream(o?.type ?? 0, o?.urgency ?? 3, o?.incremental ?? true)
          reportStreams()
          return own(wrap(state))
        }
        return waitingOpen(o)
      })
    }

    const waitingOpen = (o: OpenOptions | undefined): Effect.Effect<MuxStream, SessionError, Scope.Scope> =>
      tryOpen(o).pipe(
        Effect.timeoutOrElse({
          duration: openTimeout,
          orElse: () =>
            Effect.fail(
              new SessionError({
                reason: new OpenTimeout({ timeoutMillis: Duration.toMillis(openTimeout) }),
                retryable: true
              })
            )
        }),
        Effect.flatMap(own)
      )

    const takeNext: Effect.Effect<MuxStreamImpl, SessionError> = Effect.suspend(() => {
      const state = engine.takeAccepted()
      if (state !== undefined) return Effect.succeed(wrap(state))
      if (engine.failure !== undefined) return Effect.fail(toSessionError(engine.failure))
      if (engine.goingAway || engine.peerGoneAway || engine.ended) {
        return Effect.fail(
          new SessionError({
            reason: new GoneAway({ code: CODE_NO_ERROR, byPeer: engine.peerGoneAway, lastStreamId: undefined }),
            retryable: false
          })
        )
      }
      return Effect.andThen(waitIn(engine.acceptWakers), takeNext)
    })

    const accept: Effect.Effect<MuxStream, SessionError, Scope.Scope> = Effect.flatMap(takeNext, own)

    // Every stream run by the session (typed handlers, `run`) lives in this set.
    const handlerFibers = yield* FiberSet.make<unknown, unknown>()

    const handle = <E, R>(
      type: number,
      handler: (stream: MuxStream) => Effect.Effect<unknown, E, R>
    ): Effect.Effect<void, never, Scope.Scope | R> =>
      Effect.gen(function*() {
        const runFork = yield* FiberSet.runtime(handlerFibers)<R>()
        handlers.set(type, (state) => {
          engine.accept(state)
          const stream = wrap(state)
          runFork(Effect.scoped(Effect.andThen(own(stream), handler(stream))).pipe(Effect.ignore))
        })
        yield* Effect.addFinalizer(() => Effect.sync(() => handlers.delete(type)))
      })

    const run = <R, E, _>(
      handler: (socket: Socket.Socket) => Effect.Effect<_, E, R>
    ): Effect.Effect<never, SocketServer.SocketServerError, R> =>
      Effect.gen(function*() {
        const runFork = yield* FiberSet.runtime(handlerFibers)<R>()
        while (true) {
          const stream = yield* takeNext
          runFork(Effect.scoped(Effect.andThen(own(stream), handler(stream))).pipe(Effect.ignore))
        }
      }).pipe(
        Effect.mapError((cause) =>
          new SocketServer.SocketServerError({ reason: new SocketServer.SocketServerUnknownError({ cause }) })
        )
      )

    // Ends when this side closes; fails when the session fails or the peer went away.
    const incoming: Stream.Stream<MuxStream, SessionError> = Stream.fromEffectRepeat(takeNext).pipe(
      Stream.catchIf(
        (error: SessionError) => error.reason._tag === "GoneAway" && !error.reason.byPeer,
        () => Stream.empty
      )
    )

    // Requests --------------------------------------------------------------

    /**
     * Collects everything a stream receives until the peer's FIN, on the
     * engine's callbacks. `onDone` gets the bytes, or undefined when the
     * stream failed or grew past `max` (then it was reset).
     */
    const collect = (state: StreamState, max: number, onDone: (bytes: Uint8Array | undefined) => void): void => {
      const chunks: Array<Uint8Array> = []
      let total = 0
      const check = (): void => {
        const got = engine.takeReceived(state)
        if (got !== undefined) {
          for (let i = 0; i < got.length; i++) {
            chunks.push(got[i])
            total += got[i].length
          }
          if (total > max) {
            engine.resetStream(state, Code.CANCEL)
            return onDone(undefined)
          }
        }
        if (state.failure !== undefined) return onDone(undefined)
        if (state.remoteFin) return onDone(concatBytes(chunks))
        state.readWaker = check
      }
      check()
    }

    const send = (state: StreamState, body: Uint8Array | ReadonlyArray<Uint8Array>): void => {
      if (body instanceof Uint8Array) engine.write(state, body)
      else for (let i = 0; i < body.length; i++) engine.write(state, body[i])
      engine.closeWrite(state)
    }

    const request = (
      body: Uint8Array | ReadonlyArray<Uint8Array>,
      o?: OpenOptions & { readonly maxResponseBytes?: number | undefined }
    ): Effect.Effect<Uint8Array, SessionError | StreamError> => {
      const max = o?.maxResponseBytes ?? 64 * 1024 * 1024
      const exchange = (stream: MuxStreamImpl) =>
        Effect.callback<Uint8Array, StreamError>((resume) => {
          const state = stream.state
          send(state, body)
          let done = false
          collect(state, max, (bytes) => {
            done = true
            if (bytes !== undefined) return resume(Effect.succeed(bytes))
            resume(Effect.fail(
              stream.typedError() ?? new StreamError({
                streamId: state.id,
                reason: new StreamReset({ code: Code.CANCEL, byPeer: false }),
                retryable: false
              })
            ))
          })
          if (done) return
          // Interrupted: the caller no longer wants the answer.
          return Effect.sync(() => {
            state.readWaker = undefined
            engine.resetStream(state, Code.CANCEL)
          })
        })
      return Effect.suspend(() => {
        if ((o?.type ?? 0) !== 0 && codec === "yamux") {
          return Effect.fail(
            new SessionError({ reason: new UnsupportedByCodec({ codec, feature: "stream types" }), retryable: false })
          )
        }
        if (engine.openBlocker() === undefined) {
          const state = engine.openStream(o?.type ?? 0, o?.urgency ?? 3, o?.incremental ?? true)
          reportStreams()
          return exchange(wrap(state))
        }
        return Effect.scoped(Effect.flatMap(waitingOpen(o), (stream) => exchange(stream as MuxStreamImpl)))
      })
    }

    const serveRequests = <E, R>(
      handler: (request: Uint8Array, stream: MuxStream) => Effect.Effect<Uint8Array | ReadonlyArray<Uint8Array>, E, R>,
      o?: { readonly maxRequestBytes?: number | undefined }
    ): Effect.Effect<void, SessionError, R> =>
      Effect.gen(function*() {
        const max = o?.maxRequestBytes ?? 64 * 1024 * 1024
        const runFork = yield* FiberSet.runtime(handlerFibers)<R>()
        const answer = (stream: MuxStreamImpl, requestBytes: Uint8Array) => {
          const state = stream.state
          const fiber = runFork(Effect.matchEffect(handler(requestBytes, stream), {
            onFailure: () => Effect.sync(() => engine.resetStream(state, Code.INTERNAL_ERROR)),
            onSuccess: (reply) =>
              Effect.sync(() => {
                state.readWaker = undefined
                if (state.failure === undefined) send(state, reply)
              })
          }))
          // A reset while the handler runs (the caller cancelled) interrupts it.
          // Wake-ups can be spurious (a stream woken twice in one chunk), so
          // the watch re-arms until the stream fails or the handler answers.
          const watch = (): void => {
            if (state.failure !== undefined) fiber.interruptUnsafe()
            else if (fiber.pollUnsafe() === undefined) state.readWaker = watch
          }
          if (fiber.pollUnsafe() === undefined) state.readWaker = watch
        }
        while (true) {
          const next = yield* Effect.result(takeNext)
          if (next._tag === "Failure") {
            const error = next.failure
            // Going away (either side) ends serving; anything else is the session's failure.
            if (error.reason._tag === "GoneAway") return
            return yield* Effect.fail(error)
          }
          const stream = next.success
          collect(stream.state, max, (bytes) => {
            if (bytes !== undefined) answer(stream, bytes)
          })
        }
      })

    // Ending --------------------------------------------------------------

    const finish = Effect.gen(function*() {
      // Let the writer flush GO_AWAY and the last frames, briefly.
      yield* Fiber.await(writerFiber).pipe(Effect.timeout("1 second"), Effect.ignore)
      yield* Scope.close(writeScope, Exit.void)
      yield* Fiber.interrupt(readerFiber)
      reportStreams()
    })

    const close = (o?: { readonly code?: number; readonly drain?: Duration.Input }): Effect.Effect<void> =>
      Effect.gen(function*() {
        if (!engine.ended && engine.failure === undefined) {
          engine.goAwayNow(o?.code ?? CODE_NO_ERROR, "closing")
          const drain = o?.drain === undefined ? drainTimeout : Duration.fromInputUnsafe(o.drain)
          yield* Deferred.await(ended).pipe(Effect.timeout(drain), Effect.ignore)
          if (!engine.ended && engine.failure === undefined) engine.abandon()
        }
        yield* finish
      })

    yield* Scope.addFinalizer(scope, Effect.suspend(() => {
      if (!engine.ended && engine.failure === undefined) {
        engine.goAwayNow(CODE_NO_ERROR, "closing")
        engine.abandon()
      }
      return finish
    }))

    // When the session ends by itself (peer GO_AWAY drained, failure), close the transport.
    yield* Effect.forkIn(Effect.andThen(Deferred.await(ended).pipe(Effect.ignore), finish), scope)

    const session: Session = {
      [TypeId]: TypeId,
      codec,
      role: options.role,
      open,
      accept,
      incoming,
      handle,
      run,
      request,
      serveRequests,
      ping,
      rtt: Effect.sync(() => engine.rttMillis === undefined ? undefined : Duration.millis(engine.rttMillis)),
      stats: Effect.sync((): Stats => ({
        ...engine.stats,
        partialFrameBytes: decoder.buffered,
        rttMillis: engine.rttMillis
      })),
      close,
      closed: Deferred.await(ended)
    }
    return session
  })

/**
 * The session as an `effect/socket` `SocketServer`, so server code written
 * for one runs over the session's incoming streams.
 *
 * @category conversions
 * @since 0.1.0
 */
export const toSocketServer = (session: Session): SocketServer.SocketServer["Service"] =>
  SocketServer.SocketServer.of({
    address: NetAddress.unixPathAddress(`plexus-session:${session.role}`),
    run: session.run
  })

/**
 * A client session over the `Socket` in context (a dialed transport).
 *
 * @category layers
 * @since 0.1.0
 */
export const layerClient = (
  options?: Omit<Options, "role">
): Layer.Layer<SessionService, Socket.SocketError, Socket.Socket> =>
  Layer.effect(SessionService, Effect.flatMap(Socket.Socket, (socket) => make(socket, { ...options, role: "client" })))

/**
 * A server session per accepted connection: for every connection of the
 * `SocketServer` in context, runs a session and hands its incoming streams
 * to `handler`, while the returned effect runs.
 *
 * @category constructors
 * @since 0.1.0
 */
export const serve = <E, R>(
  handler: (stream: MuxStream, session: Session) => Effect.Effect<unknown, E, R>,
  options?: Omit<Options, "role">
): Effect.Effect<never, SocketServer.SocketServerError, SocketServer.SocketServer | R> =>
  Effect.flatMap(SocketServer.SocketServer, (server) =>
    server.run((socket) =>
      Effect.scoped(Effect.gen(function*() {
        const session = yield* make(socket, { ...options, role: "server" })
        yield* Effect.forkScoped(session.run((stream) => handler(stream as MuxStream, session)))
        yield* session.closed.pipe(Effect.ignore)
      }))
    ))

/**
 * A `SocketServer` whose connections are the incoming streams of every
 * session accepted by the `SocketServer` in context: server code written for
 * a SocketServer (effect/rpc's `layerProtocolSocketServer`) then serves each
 * stream as a connection.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerSocketServer = (
  options?: Omit<Options, "role">
): Layer.Layer<SocketServer.SocketServer, never, SocketServer.SocketServer> =>
  Layer.effect(
    SocketServer.SocketServer,
    Effect.map(SocketServer.SocketServer, (outer) =>
      SocketServer.SocketServer.of({
        address: outer.address,
        run: (handler) =>
          outer.run((socket) =>
            Effect.scoped(Effect.gen(function*() {
              const session = yield* make(socket, { ...options, role: "server" })
              yield* Effect.forkScoped(session.run(handler))
              yield* session.closed.pipe(Effect.ignore)
            }))
          )
      }))
  )
