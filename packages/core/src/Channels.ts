/**
 * `Channels` label the messages of one `MessageTransport` so that many
 * independent conversations share it (docs/spec/channels.md): each message
 * carries a 2-byte channel id, channel 0 is open from the start, and control
 * messages on channel 0xFFFF create, destroy, migrate and merge channels and
 * return flow-control credit. Each channel is itself a `MessageTransport`.
 *
 * What a caller must know: the connection lives in the Scope it was made in
 * (closing it sends GOAWAY, aborts the channels still open and closes the
 * transport), and every channel has a window in messages and bytes: a
 * consumer that stops reading stops its peer's sends on that channel only,
 * never on the others. `close` on a channel is a graceful DESTROY (what was
 * sent is delivered, then the peer's messages end); `abort` discards.
 *
 * @since 0.1.0
 */
import type { NonEmptyReadonlyArray } from "effect/Array"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Predicate from "effect/Predicate"
import type * as Pull from "effect/Pull"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { ChannelError, Code, GoneAway, TransportClosed } from "./ChannelError.ts"
import { type ChannelState, Engine, type EngineStats } from "./internal/channelEngine.ts"
import * as F from "./internal/channelFrames.ts"
import * as MessageTransport from "./MessageTransport.ts"
import { makeWriterSignal } from "./internal/writerSignal.ts"

/**
 * @category type IDs
 * @since 0.1.0
 */
export const TypeId = "~@plexus/core/Channels"

/**
 * @category type IDs
 * @since 0.1.0
 */
export const ChannelTypeId = "~@plexus/core/Channels/Channel"

/**
 * Per-channel extensions, by their handshake names (spec: CREATE).
 *
 * @category models
 * @since 0.1.0
 */
export type Extension = "fanout" | "encryption"

/**
 * Options of a connection. Every limit has the spec's default (spec: Limits
 * and hostile peers).
 *
 * @category models
 * @since 0.1.0
 */
export interface Options {
  /** The side that dialed the transport is the client (odd channel ids). */
  readonly role: "client" | "server"
  /**
   * The negotiated extension list (from the handshake). A CREATE asking for
   * one outside it is refused with EXTENSION_NOT_NEGOTIATED. This version
   * implements none of them yet: a CREATE asking for a negotiated one is
   * refused with BAD_EXTENSION_PARAMS.
   */
  readonly extensions?: ReadonlyArray<Extension> | undefined
  /** Default window, both directions, unless the handshake set others. Default 64 messages. */
  readonly windowMessages?: number | undefined
  /** Default 256 KiB. */
  readonly windowBytes?: number | undefined
  /** Channels created by the peer live at once. Default 1024. */
  readonly maxChannels?: number | undefined
  /** Created by the peer and not yet accepted. Default 256. */
  readonly acceptBacklog?: number | undefined
  /** Sum of the receive windows over channels. Default 64 MiB. */
  readonly receiveBudget?: number | undefined
  /** Unanswered requests from the peer. Default 256. */
  readonly maxPeerRequests?: number | undefined
  /** Control messages queued behind a blocked transport. Default 1000. */
  readonly maxControlQueue?: number | undefined
  /** Events that make us work for nothing, per second. Default 1000. */
  readonly floodLimit?: number | undefined
  /** Pings answered per second. Default 10. */
  readonly pingsPerSecond?: number | undefined
  /** How long a request (CREATE, MIGRATE, MERGE, …) waits for its answer. Default 30 s. */
  readonly requestTimeout?: Duration.Input | undefined
  /** How long closing the connection lets channels finish. Default 5 s. */
  readonly drainTimeout?: Duration.Input | undefined
}

/**
 * Options of a new channel.
 *
 * @category models
 * @since 0.1.0
 */
export interface OpenOptions {
  /** What the channel is for (≤ 255 bytes of UTF-8). */
  readonly label?: string | undefined
  /** Credit granted to the peer beyond the default window, in messages. */
  readonly extraMessages?: number | undefined
  /** Credit granted to the peer beyond the default window, in bytes. */
  readonly extraBytes?: number | undefined
}

/**
 * One channel: a `MessageTransport` of its own. `pull` ends (`Cause.Done`)
 * after the peer's graceful close and fails with a `ChannelError` on an
 * abort or a connection failure.
 *
 * @category models
 * @since 0.1.0
 */
export interface Channel extends MessageTransport.MessageTransport<ChannelError> {
  readonly [ChannelTypeId]: typeof ChannelTypeId
  /** The id this side sends on (changes with `migrate`). */
  readonly id: number
  readonly label: string
  /** Whether this side created it. Channel 0 is neither side's. */
  readonly outbound: boolean
  /** Graceful close with a code and reason (a WebSocket close code passes through). */
  readonly closeWith: (code: number, reason?: string) => Effect.Effect<void>
  /** Discards what is queued and received; the peer's channel fails with `code` (default CANCEL). */
  readonly abort: (code?: number, reason?: string) => Effect.Effect<void>
  /** Moves the channel to a fresh id of this side (it must own it); answers the new id. */
  readonly migrate: Effect.Effect<number, ChannelError>
  /** Waits until the channel is closed at this side (its id is free again). */
  readonly closed: Effect.Effect<void>
  /** How the channel failed, if it did. */
  readonly failure: Effect.Effect<ChannelError | undefined>
}

/**
 * Counters of a connection, for budgets, tests and dashboards.
 *
 * @category models
 * @since 0.1.0
 */
export interface Stats extends Readonly<EngineStats> {}

/**
 * @category models
 * @since 0.1.0
 */
export interface Channels {
  readonly [TypeId]: typeof TypeId
  readonly role: "client" | "server"
  /** Channel 0x0000, open from the start. */
  readonly defaultChannel: Channel
  /** Creates a channel and waits for the peer to accept it (CREATE_ACK); closed gracefully when the Scope closes. */
  readonly open: (options?: OpenOptions) => Effect.Effect<Channel, ChannelError, Scope.Scope>
  /** Accepts the next channel the peer created; closed when the Scope closes. */
  readonly accept: Effect.Effect<Channel, ChannelError, Scope.Scope>
  /** Channels the peer created, accepted as they are pulled; the consumer owns each. Ends when this side goes away. */
  readonly incoming: Stream.Stream<Channel, ChannelError>
  /** Merges `members` into `target`'s group: a message on any member is received on each. */
  readonly merge: (target: Channel, members: ReadonlyArray<Channel>) => Effect.Effect<void, ChannelError>
  /** Takes each member out of its group. */
  readonly unmerge: (members: ReadonlyArray<Channel>) => Effect.Effect<void, ChannelError>
  /** PING and its PONG: the round-trip time. */
  readonly ping: Effect.Effect<Duration.Duration, ChannelError>
  readonly stats: Effect.Effect<Stats>
  /** GOAWAY, then channels may finish until the drain deadline; then the rest are aborted and the transport closes. */
  readonly close: Effect.Effect<void>
  /** Succeeds after a graceful end; fails with why otherwise. */
  readonly closed: Effect.Effect<void, ChannelError>
}

/**
 * @category guards
 * @since 0.1.0
 */
export const isChannels = (u: unknown): u is Channels => Predicate.hasProperty(u, TypeId)

/**
 * @category guards
 * @since 0.1.0
 */
export const isChannel = (u: unknown): u is Channel => Predicate.hasProperty(u, ChannelTypeId)

type Waker = () => void

const waitIn = (list: Array<Waker>): Effect.Effect<void> =>
  Effect.callback<void>((resume) => {
    const waker = () => resume(Effect.void)
    list.push(waker)
    return Effect.sync(() => {
      const i = list.indexOf(waker)
      if (i >= 0) list.splice(i, 1)
    })
  })

/** @internal */
class ChannelImpl implements Channel {
  readonly [ChannelTypeId] = ChannelTypeId
  readonly [MessageTransport.TypeId] = MessageTransport.TypeId
  readonly state: ChannelState
  readonly engine: Engine
  private readonly run: <A>(f: () => A) => A
  private readonly timeout: Duration.Duration

  constructor(state: ChannelState, engine: Engine, run: <A>(f: () => A) => A, timeout: Duration.Duration) {
    this.state = state
    this.engine = engine
    this.run = run
    this.timeout = timeout
  }

  get id(): number {
    return this.state.sendId
  }
  get label(): string {
    return this.state.label
  }
  get outbound(): boolean {
    return this.state.outbound
  }

  private waitRead(): Effect.Effect<void> {
    return Effect.callback<void>((resume) => {
      this.state.readWaker = () => resume(Effect.void)
      return Effect.sync(() => {
        this.state.readWaker = undefined
      })
    })
  }

  readonly pull: Pull.Pull<NonEmptyReadonlyArray<Uint8Array>, ChannelError> = Effect.suspend(() => {
    const state = this.state
    if (state.failure !== undefined) return Effect.fail(state.failure)
    const messages = this.run(() => this.engine.takeReceived(state))
    if (messages !== undefined) return Effect.succeed(messages as unknown as NonEmptyReadonlyArray<Uint8Array>)
    if (state.remoteEnded || state.phase === "closed") return Cause.done()
    return Effect.andThen(this.waitRead(), this.pull)
  })

  get messages(): Stream.Stream<Uint8Array, ChannelError> {
    return Stream.fromPull(Effect.succeed(this.pull))
  }

  /** Waits until the channel's queue has gone out and the writer keeps up. */
  private readonly backpressure: Effect.Effect<void, ChannelError> = Effect.suspend(() => {
    const state = this.state
    if (state.queued > 0) {
      if (state.failure !== undefined) return Effect.fail(state.failure)
      if (this.engine.failure !== undefined) return Effect.fail(this.engine.failure)
      return Effect.andThen(waitIn(state.writeWakers ??= []), this.backpressure)
    }
    if (this.engine.congested && this.engine.failure === undefined) {
      return Effect.andThen(waitIn(this.engine.outWakers), this.backpressure)
    }
    return Effect.void
  })

  send(message: Uint8Array): Effect.Effect<void, ChannelError> {
    return Effect.suspend(() => {
      const error = this.run(() => this.engine.enqueue(this.state, [message]))
      return error === undefined ? this.backpressure : Effect.fail(error)
    })
  }

  sendAll(messages: ReadonlyArray<Uint8Array>): Effect.Effect<void, ChannelError> {
    return Effect.suspend(() => {
      if (messages.length === 0) return Effect.void
      const error = this.run(() => this.engine.enqueue(this.state, messages))
      return error === undefined ? this.backpressure : Effect.fail(error)
    })
  }

  get close(): Effect.Effect<void> {
    return this.closeWith(Code.NO_ERROR)
  }

  closeWith(code: number, reason = ""): Effect.Effect<void> {
    return Effect.sync(() => this.run(() => this.engine.close(this.state, code, reason)))
  }

  abort(code: number = Code.CANCEL, reason = ""): Effect.Effect<void> {
    return Effect.sync(() => this.run(() => this.engine.abort(this.state, code, reason)))
  }

  get migrate(): Effect.Effect<number, ChannelError> {
    return Effect.callback<number, ChannelError>((resume) => {
      const error = this.run(() =>
        this.engine.migrate(this.state, (result) => {
          resume(typeof result === "number" ? Effect.succeed(result) : Effect.fail(result))
        })
      )
      if (error !== undefined) resume(Effect.fail(error))
    }).pipe(this.withTimeout("MIGRATE"))
  }

  withTimeout(what: string) {
    return <A>(effect: Effect.Effect<A, ChannelError>): Effect.Effect<A, ChannelError> =>
      Effect.timeoutOrElse(effect, {
        duration: this.timeout,
        orElse: () =>
          Effect.fail(
            new ChannelError({
              reason: new TransportClosed({ detail: `${what} unanswered after ${Duration.format(this.timeout)}` }),
              channelId: this.state.sendId
            })
          )
      })
  }

  get closed(): Effect.Effect<void> {
    const wait: Effect.Effect<void> = Effect.suspend(() =>
      this.state.phase === "closed" || this.engine.failure !== undefined || this.engine.ended
        ? Effect.void
        : Effect.andThen(waitIn(this.state.stateWakers ??= []), wait)
    )
    return wait
  }

  get failure(): Effect.Effect<ChannelError | undefined> {
    return Effect.sync(() => this.state.failure)
  }

  /** Closing the owning scope: gracefully if nothing failed. */
  release(): void {
    const state = this.state
    if (state.phase === "closed" || state.failure !== undefined) return
    this.engine.close(state, Code.NO_ERROR, "")
  }
}

/**
 * Runs channels over a message transport, in the current Scope: one reader
 * fiber, one writer fiber.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make = <E>(
  transport: MessageTransport.MessageTransport<E>,
  options: Options
): Effect.Effect<Channels, never, Scope.Scope> =>
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    const clock = yield* Clock.Clock
    const requestTimeout = Duration.fromInputUnsafe(options.requestTimeout ?? "30 seconds")
    const drainTimeout = Duration.fromInputUnsafe(options.drainTimeout ?? "5 seconds")
    const ended = yield* Deferred.make<void, ChannelError>()
    const writerSignal = makeWriterSignal()

    const engine: Engine = new Engine({
      side: options.role,
      extensions: new Set(options.extensions ?? []),
      windowMessages: options.windowMessages ?? F.DEFAULT_WINDOW_MESSAGES,
      windowBytes: options.windowBytes ?? F.DEFAULT_WINDOW_BYTES,
      maxChannels: options.maxChannels ?? 1024,
      acceptBacklog: options.acceptBacklog ?? 256,
      maxPeerRequests: options.maxPeerRequests ?? 256,
      receiveBudget: options.receiveBudget ?? 64 * 1024 * 1024,
      maxControlQueue: options.maxControlQueue ?? 1000,
      floodLimit: options.floodLimit ?? 1000,
      floodWindowMs: 1000,
      pingsPerSecond: options.pingsPerSecond ?? 10,
      writeHighWater: 256 * 1024
    }, {
      // Coalesced to the end of the turn: what one turn produces leaves in one batch.
      wakeWriter: writerSignal.wake,
      onEnd: (error) => {
        Deferred.doneUnsafe(ended, error === undefined ? Exit.void : Exit.fail(error))
      },
      now: () => clock.currentTimeMillisUnsafe()
    })

    /** Runs an engine call, then the wake-ups it queued (never during it). */
    const run = <A>(f: () => A): A => {
      try {
        return f()
      } finally {
        engine.flushWakes()
      }
    }
    const wrap = (state: ChannelState) => new ChannelImpl(state, engine, run, requestTimeout)
    const own = (channel: ChannelImpl): Effect.Effect<Channel, never, Scope.Scope> =>
      Effect.as(Effect.addFinalizer(() => Effect.sync(() => run(() => channel.release()))), channel)

    // The transport ---------------------------------------------------------

    const readLoop: Effect.Effect<void> = Effect.matchEffect(transport.pull, {
      onFailure: (error) =>
        Effect.sync(() =>
          run(() =>
            engine.transportEnded(
              Cause.isDone(error) ? "the peer closed the transport" : "the transport failed",
              Cause.isDone(error) ? undefined : error
            )
          )
        ),
      onSuccess: (messages) =>
        Effect.suspend(() => {
          run(() => {
            for (let i = 0; i < messages.length; i++) {
              engine.receive(messages[i])
              if (engine.failure !== undefined) break
            }
          })
          return engine.failure !== undefined || engine.ended ? Effect.void : readLoop
        })
    })

    const writeLoop: Effect.Effect<void, E> = Effect.suspend(() => {
      if (!engine.hasWork) {
        if (engine.writerDone) return Effect.void
        return Effect.andThen(writerSignal.wait, writeLoop)
      }
      const batch = run(() => engine.takeBatch())
      if (batch === undefined) return writeLoop
      return Effect.andThen(transport.sendAll(batch), writeLoop)
    })

    const readerFiber = yield* Effect.forkIn(readLoop, scope)
    const writerFiber = yield* writeLoop.pipe(
      Effect.catch((error) => Effect.sync(() => run(() => engine.transportEnded("the transport failed to send", error)))),
      Effect.forkIn(scope)
    )

    // Channels --------------------------------------------------------------

    const defaultChannel = wrap(engine.defaultChannel)

    const open = (o?: OpenOptions): Effect.Effect<Channel, ChannelError, Scope.Scope> =>
      Effect.callback<ChannelImpl, ChannelError>((resume) => {
        let channel: ChannelImpl | undefined
        const result = run(() =>
          engine.open(
            { label: o?.label ?? "", extraMessages: o?.extraMessages ?? 0, extraBytes: o?.extraBytes ?? 0 },
            (error) => {
              if (error !== undefined) resume(Effect.fail(error))
              else resume(Effect.succeed(channel!))
            }
          )
        )
        if (result instanceof ChannelError) {
          resume(Effect.fail(result))
          return
        }
        channel = wrap(result.channel)
        // Given up: the channel is aborted once the answer comes.
        return Effect.sync(() => {
          result.abandon()
          if (result.channel.phase === "open") run(() => engine.abort(result.channel, Code.CANCEL))
        })
      }).pipe(
        Effect.timeoutOrElse({
          duration: requestTimeout,
          orElse: () =>
            Effect.fail(
              new ChannelError({
                reason: new TransportClosed({ detail: `CREATE unanswered after ${Duration.format(requestTimeout)}` })
              })
            )
        }),
        Effect.flatMap(own)
      )

    const takeNext: Effect.Effect<ChannelImpl, ChannelError> = Effect.suspend(() => {
      const state = run(() => engine.takeAccepted())
      if (state !== undefined) return Effect.succeed(wrap(state))
      if (engine.failure !== undefined) return Effect.fail(engine.failure)
      if (engine.goingAway || engine.peerGoneAway || engine.ended) {
        return Effect.fail(
          new ChannelError({ reason: new GoneAway({ code: Code.NO_ERROR, byPeer: engine.peerGoneAway }) })
        )
      }
      return Effect.andThen(waitIn(engine.acceptWakers), takeNext)
    })

    const accept: Effect.Effect<Channel, ChannelError, Scope.Scope> = Effect.flatMap(takeNext, own)

    const incoming: Stream.Stream<Channel, ChannelError> = Stream.fromEffectRepeat(takeNext as Effect.Effect<Channel, ChannelError>).pipe(
      Stream.catchIf(
        (error: ChannelError) => error.reason._tag === "GoneAway" && error.reason.code === Code.NO_ERROR,
        () => Stream.empty
      )
    )

    const impl = (channel: Channel): ChannelState => (channel as ChannelImpl).state

    const merge = (target: Channel, members: ReadonlyArray<Channel>): Effect.Effect<void, ChannelError> =>
      Effect.callback<void, ChannelError>((resume) => {
        const error = run(() =>
          engine.merge(impl(target), members.map(impl), (e) => resume(e === undefined ? Effect.void : Effect.fail(e)))
        )
        if (error !== undefined) resume(Effect.fail(error))
      }).pipe(defaultChannel.withTimeout("MERGE"))

    const unmerge = (members: ReadonlyArray<Channel>): Effect.Effect<void, ChannelError> =>
      Effect.callback<void, ChannelError>((resume) => {
        const error = run(() =>
          engine.unmerge(members.map(impl), (e) => resume(e === undefined ? Effect.void : Effect.fail(e)))
        )
        if (error !== undefined) resume(Effect.fail(error))
      }).pipe(defaultChannel.withTimeout("UNMERGE"))

    const ping: Effect.Effect<Duration.Duration, ChannelError> = Effect.callback<number, ChannelError>((resume) => {
      const sentAt = clock.currentTimeMillisUnsafe()
      const id = run(() =>
        engine.ping(() =>
          resume(
            engine.failure !== undefined
              ? Effect.fail(engine.failure)
              : Effect.succeed(clock.currentTimeMillisUnsafe() - sentAt)
          )
        )
      )
      if (id instanceof ChannelError) {
        resume(Effect.fail(id))
        return
      }
      return Effect.sync(() => engine.cancelPing(id))
    }).pipe(defaultChannel.withTimeout("PING"), Effect.map(Duration.millis))

    // Ending ----------------------------------------------------------------

    const finish = Effect.gen(function*() {
      // Let the writer flush GOAWAY and the last messages, briefly.
      run(() => engine.stop())
      yield* Fiber.await(writerFiber).pipe(Effect.timeout("1 second"), Effect.ignore)
      yield* transport.close
      yield* Fiber.interrupt(readerFiber)
    })

    const close: Effect.Effect<void> = Effect.gen(function*() {
      if (!engine.ended && engine.failure === undefined) {
        run(() => engine.goAway())
        yield* Deferred.await(ended).pipe(Effect.timeout(drainTimeout), Effect.ignore)
        if (!engine.ended && engine.failure === undefined) run(() => engine.abandon())
        yield* Deferred.await(ended).pipe(Effect.timeout("1 second"), Effect.ignore)
      }
      yield* finish
    })

    yield* Scope.addFinalizer(
      scope,
      Effect.suspend(() => {
        if (!engine.ended && engine.failure === undefined) {
          run(() => {
            engine.goAway()
            engine.abandon()
          })
        }
        return finish
      })
    )

    const channels: Channels = {
      [TypeId]: TypeId,
      role: options.role,
      defaultChannel,
      open,
      accept,
      incoming,
      merge,
      unmerge,
      ping,
      stats: Effect.sync((): Stats => ({ ...engine.stats })),
      close,
      closed: Deferred.await(ended)
    }
    return channels
  })
