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
 * Encrypted channels (the `encryption` extension, `OpenOptions.encryption`
 * and `Options.keys`) seal every message with AES-GCM under a key of their
 * own, through WebCrypto. Messages are sealed in the order they leave and
 * opened in the order they are pulled, so neither blocks other channels or
 * the connection's reader; a message that does not open (tampered,
 * replayed, moved, reflected) fails that channel alone with `DecryptFailed`.
 *
 * Fanout (the `fanout` extension): `OpenOptions.fanout`, `link`, `unlink`
 * and `filter` ask the peer to attach a channel to a data flow; the peer's
 * such requests go to `Options.fanout`, a `FanoutHandler` (the `Fanout`
 * module's nodes provide one), which accepts or refuses each with a code.
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
import * as FiberSet from "effect/FiberSet"
import * as Predicate from "effect/Predicate"
import type * as Pull from "effect/Pull"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { ChannelError, Code, codeName, DecryptFailed, GoneAway, TransportClosed, webSocketCloseCode } from "./ChannelError.ts"
import { type ChannelState, Engine, type EngineStats } from "./internal/channelEngine.ts"
import type { Answer, FanoutHooks } from "./internal/channelFanout.ts"
import { type Opened, suiteByName, suiteName } from "./internal/channelCrypto.ts"
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
 * Every per-channel extension this implementation knows.
 *
 * @category models
 * @since 0.1.0
 */
export const extensions: ReadonlyArray<Extension> = ["fanout", "encryption"]

/**
 * Whether a handshake name is a per-channel extension this implementation
 * knows.
 *
 * @category guards
 * @since 0.1.0
 */
export const isExtension = (name: string): name is Extension => (extensions as ReadonlyArray<string>).includes(name)

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
   * one outside it is refused with EXTENSION_NOT_NEGOTIATED. A CREATE with
   * the fanout extension, and LINK, UNLINK and FILTER, go to `fanout` when
   * "fanout" is negotiated (refused with BAD_EXTENSION_PARAMS and
   * UNKNOWN_FLOW without one). A CREATE with encryption is accepted when
   * "encryption" is negotiated and `keys` has its key id (UNKNOWN_KEY
   * otherwise); the accepted channel's `encryption` says so. A CREATE may
   * ask for both: the handler decides on a channel that is encrypted.
   */
  readonly extensions?: ReadonlyArray<Extension> | undefined
  /** Decides the peer's fanout requests (see `FanoutHandler`; the `Fanout` module provides one). */
  readonly fanout?: FanoutHandler | undefined
  /**
   * The keys that key ids name, for encrypted channels (spec: Encryption):
   * provisioned, or derived from the authenticated handshake (a WebSocket's
   * `keyMaterial`). Looked up when this side opens an encrypted channel and
   * when the peer asks for one; a key id with no key refuses the CREATE
   * with UNKNOWN_KEY. Each channel derives a key of its own from it.
   */
  readonly keys?: ReadonlyMap<number, Uint8Array> | ((keyId: number) => Uint8Array | undefined) | undefined
  /**
   * What one channel key seals per direction before the channel ends with
   * KEY_EXHAUSTED. Default (and at most) the spec's 2^32 messages and 2^36
   * bytes; lower values exist for tests.
   */
  readonly encryptionLimits?: { readonly messages: number; readonly bytes: number } | undefined
  /** Default window, both directions, unless the handshake set others. Default 64 messages. */
  readonly windowMessages?: number | undefined
  /** Default 256 KiB. */
  readonly windowBytes?: number | undefined
  /**
   * How far a channel's receive window grows: it doubles at each grant
   * while its consumer keeps up (within half the receive budget).
   * Default 4096 messages; at most the default window disables growth.
   */
  readonly maxWindowMessages?: number | undefined
  /** Default 4 MiB. */
  readonly maxWindowBytes?: number | undefined
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
  /**
   * Creates the channel with the fanout extension (needs "fanout"
   * negotiated); with `encryption` too, the flow arrives sealed under this
   * channel's own key.
   */
  readonly fanout?: FanoutParams | undefined
  /**
   * Creates an encrypted channel (needs "encryption" negotiated and the key
   * id in both sides' `keys`). Sends wait for the channel key, derived once
   * the peer's CREATE_ACK is in: an encrypted channel carries no early data.
   */
  readonly encryption?: Encryption | undefined
}

/**
 * The encryption of a channel (spec: Encryption): the key id both sides
 * hold and the AES-GCM suite, AES-256-GCM unless set.
 *
 * @category models
 * @since 0.1.0
 */
export interface Encryption {
  readonly keyId: number
  readonly suite?: "AES-128-GCM" | "AES-256-GCM" | undefined
}

/**
 * A per-consumer fanout filter (spec: Fanout, Filters): every message, the
 * messages whose payload starts with one of 1–32 prefixes, or an
 * application kind (0x80–0xFF) with opaque data.
 *
 * @category fanout
 * @since 0.1.0
 */
export type FanoutFilter = F.ConsumerFilter

/**
 * Fanout parameters (spec: Fanout): the role (`FanoutRole`), the flow id and
 * the scope (1–255 bytes each, compared byte for byte) and the filter.
 *
 * @category fanout
 * @since 0.1.0
 */
export type FanoutParams = F.FanoutParams

/**
 * @category fanout
 * @since 0.1.0
 */
export const FanoutRole = { SUBSCRIBE: F.ROLE_SUBSCRIBE, PUBLISH: F.ROLE_PUBLISH } as const

/**
 * Why a fanout request is refused: the ERROR code sent to the peer
 * (SCOPE_DENIED, UNKNOWN_FLOW, BAD_FILTER, …) and a readable message.
 *
 * @category fanout
 * @since 0.1.0
 */
export interface FanoutRefusal {
  readonly code: number
  readonly message: string
}

/**
 * What an accepted fanout request changes, run in the very step that queues
 * its acknowledgement, so the change sits exactly at the ACK in the
 * channel's wire order: a consumer joins its flow there (nothing of the flow
 * precedes the LINK_ACK or CREATE_ACK), a new filter applies from there
 * (`Channel.withdrawFlow` takes back what the old one let through and has not
 * left). `acked` is false when no ACK went out (the channel or connection
 * ended first). It must not wait, nor run effects on the connection before
 * it returns (fork them); a commit that throws is ignored.
 *
 * @category fanout
 * @since 0.1.0
 */
export type FanoutCommit = (acked: boolean) => void

/**
 * The application's side of the peer's fanout requests. Each effect runs in
 * a fiber of the connection's Scope: success answers the request (CREATE_ACK
 * with the fanout extension, LINK_ACK, UNLINK_ACK, FILTER_ACK) and may hand
 * back a `FanoutCommit` to run with the ACK; failure answers ERROR with the
 * refusal's code. The engine itself refuses a LINK on a linked channel
 * (ALREADY_LINKED), UNLINK and FILTER on an unlinked one (NOT_LINKED) and
 * requests on channels that are not open. A channel the peer created with
 * fanout (`created`) belongs to the handler from then on; it may be
 * encrypted too (`Channel.encryption`), and so may a channel linked by LINK.
 *
 * @category fanout
 * @since 0.1.0
 */
export interface FanoutHandler {
  readonly link: (
    channel: Channel,
    params: FanoutParams,
    created: boolean
  ) => Effect.Effect<void | FanoutCommit, FanoutRefusal>
  readonly unlink: (channel: Channel) => Effect.Effect<void | FanoutCommit, FanoutRefusal>
  readonly filter: (channel: Channel, filter: FanoutFilter) => Effect.Effect<void | FanoutCommit, FanoutRefusal>
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
  /**
   * The code and reason of the channel's closing step (DESTROY), once
   * either side sent one: what a graceful end carried, e.g. the WebSocket
   * close code of a channel presented as a WebSocket.
   */
  readonly closing: { readonly code: number; readonly reason: string; readonly byPeer: boolean } | undefined
  /** The channel's fanout link, if it has one (created with fanout, or linked). */
  readonly fanout: FanoutParams | undefined
  /**
   * How the channel is encrypted, if it is: set for the creator and the
   * acceptor alike, so an application accepting a channel can check the key
   * id and suite before trusting it. A message that fails authentication
   * fails the channel with `DecryptFailed`.
   */
  readonly encryption: { readonly keyId: number; readonly suite: "AES-128-GCM" | "AES-256-GCM" } | undefined
  /**
   * Queues a message without waiting for credit (a fanout edge bounds each
   * consumer by `queuedMessages` and `queuedBytes` instead of waiting).
   */
  readonly offerUnsafe: (message: Uint8Array) => ChannelError | undefined
  /**
   * `offerUnsafe` for a message of a fanout flow: until it takes its credit
   * (and, on an encrypted channel, is sealed) it can still be withdrawn.
   */
  readonly offerFlowUnsafe: (message: Uint8Array) => ChannelError | undefined
  /**
   * Withdraws the queued flow messages (`offerFlowUnsafe`) that `keep`
   * rejects, all of them without `keep`; they never leave. Messages sent
   * with `send` or `offerUnsafe` are never touched. Answers how many went.
   */
  readonly withdrawFlow: (keep?: ((payload: Uint8Array) => boolean) | undefined) => number
  /** Messages accepted by `send`/`offerUnsafe` still waiting for credit. */
  readonly queuedMessages: number
  /** Their payload bytes. */
  readonly queuedBytes: number
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
  /** LINK: attaches an open channel (channel 0 too) to a flow (fails with `RequestFailed` and the peer's code). */
  readonly link: (channel: Channel, params: FanoutParams) => Effect.Effect<void, ChannelError>
  /** UNLINK: the channel stays open, plain. */
  readonly unlink: (channel: Channel) => Effect.Effect<void, ChannelError>
  /** FILTER: replaces the link's filter. */
  readonly filter: (channel: Channel, filter: FanoutFilter) => Effect.Effect<void, ChannelError>
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

/** The `keys` option as a lookup that never throws: a lookup that throws, or answers no bytes, names no key. */
const keyLookup = (keys: Options["keys"]): ((keyId: number) => Uint8Array | undefined) | undefined => {
  if (keys === undefined) return undefined
  const find = typeof keys === "function" ? keys : (keyId: number) => keys.get(keyId)
  return (keyId) => {
    try {
      const key = find(keyId)
      return key instanceof Uint8Array ? key : undefined
    } catch {
      return undefined
    }
  }
}

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
  get closing(): Channel["closing"] {
    const state = this.state
    if (!state.sentDestroy && !state.gotPeerDestroy) return undefined
    return { code: state.closeCode, reason: state.closeReason, byPeer: state.gotPeerDestroy }
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
    if (messages !== undefined) {
      const cipher = state.cipher
      if (cipher === undefined) return Effect.succeed(messages as unknown as NonEmptyReadonlyArray<Uint8Array>)
      // Counters are reserved now, in the order batches are taken.
      return this.opened(cipher.openBatch(messages))
    }
    if (state.remoteEnded || state.phase === "closed") return Cause.done()
    return Effect.andThen(this.waitRead(), this.pull)
  })

  /**
   * The plaintexts of a batch being opened. Not interruptible: the batch's
   * credit is already given back, so dropping it half way would lose it.
   * Messages before one that fails are delivered; the channel is aborted
   * with DECRYPT_FAILED and its next pull fails with `DecryptFailed`.
   */
  private opened(job: Promise<Opened>): Effect.Effect<NonEmptyReadonlyArray<Uint8Array>, ChannelError> {
    return Effect.uninterruptible(Effect.flatMap(Effect.promise(() => job), (result) => {
      const state = this.state
      const counter = result.failedCounter
      if (counter !== undefined) this.run(() => this.engine.decryptFailed(state, counter))
      if (result.opened.length > 0) {
        return Effect.succeed(result.opened as unknown as NonEmptyReadonlyArray<Uint8Array>)
      }
      return Effect.fail(
        state.failure ?? new ChannelError({ reason: new DecryptFailed({ counter: counter ?? 0 }), channelId: state.sendId })
      )
    }))
  }

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
      const error = this.run(() => this.engine.sendOne(this.state, message))
      if (error !== undefined) return Effect.fail(error)
      // Nothing left queued and the writer keeps up: done, without another step.
      return this.state.queued === 0 && !this.engine.congested ? Effect.void : this.backpressure
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

  get fanout(): FanoutParams | undefined {
    return this.state.link
  }

  get encryption(): { readonly keyId: number; readonly suite: "AES-128-GCM" | "AES-256-GCM" } | undefined {
    const cipher = this.state.cipher
    return cipher === undefined ? undefined : { keyId: cipher.keyId, suite: suiteName(cipher.suite) }
  }

  offerUnsafe(message: Uint8Array): ChannelError | undefined {
    return this.run(() => this.engine.enqueue(this.state, [message]))
  }

  offerFlowUnsafe(message: Uint8Array): ChannelError | undefined {
    return this.run(() => this.engine.enqueue(this.state, [message], true))
  }

  withdrawFlow(keep?: ((payload: Uint8Array) => boolean) | undefined): number {
    return this.run(() => this.engine.withdrawFlow(this.state, keep))
  }

  get queuedMessages(): number {
    return this.state.queued
  }

  get queuedBytes(): number {
    return this.state.sendQueuedBytes
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
    const runFanout = options.fanout === undefined ? undefined : yield* FiberSet.makeRuntime<never, void, never>()
    // Set once the wrappers exist, before the reader runs.
    let fanoutHooks: FanoutHooks<ChannelState> | undefined

    const engine: Engine = new Engine({
      side: options.role,
      extensions: new Set(options.extensions ?? []),
      keys: keyLookup(options.keys),
      sealLimits: options.encryptionLimits,
      windowMessages: options.windowMessages ?? F.DEFAULT_WINDOW_MESSAGES,
      windowBytes: options.windowBytes ?? F.DEFAULT_WINDOW_BYTES,
      maxWindowMessages: options.maxWindowMessages ?? 4096,
      maxWindowBytes: options.maxWindowBytes ?? 4 * 1024 * 1024,
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
      now: () => clock.currentTimeMillisUnsafe(),
      fanout: options.fanout === undefined ? undefined : {
        link: (ch, params, created, answer) => fanoutHooks!.link(ch, params, created, answer),
        unlink: (ch, answer) => fanoutHooks!.unlink(ch, answer),
        filter: (ch, filter, answer) => fanoutHooks!.filter(ch, filter, answer)
      }
    })

    /**
     * Runs an engine call, then the wake-ups it queued (never during it): a
     * call made from inside another (a fanout commit) leaves them to the
     * outer one.
     */
    let depth = 0
    const run = <A>(f: () => A): A => {
      depth++
      try {
        return f()
      } finally {
        if (--depth === 0) engine.flushWakes()
      }
    }
    // One wrapper per channel, so that the application can key on it.
    const wrappers = new WeakMap<ChannelState, ChannelImpl>()
    const wrap = (state: ChannelState) => {
      let channel = wrappers.get(state)
      if (channel === undefined) {
        channel = new ChannelImpl(state, engine, run, requestTimeout)
        wrappers.set(state, channel)
      }
      return channel
    }

    if (options.fanout !== undefined && runFanout !== undefined) {
      const handler = options.fanout
      // Runs a decision after the engine's current step (never inside it) and answers once.
      const decide = (effect: () => Effect.Effect<void, FanoutRefusal>, answer: Answer) =>
        engine.wake(() => {
          runFanout(
            Effect.suspend(effect).pipe(
              Effect.onExit((exit) =>
                Effect.sync(() =>
                  run(() => {
                    if (Exit.isSuccess(exit)) return answer(undefined, guardCommit(exit.value))
                    const failure = Cause.findErrorOption(exit.cause)
                    answer(
                      failure._tag === "Some"
                        ? { code: failure.value.code, detail: truncateDetail(failure.value.message) }
                        : { code: Code.GOING_AWAY, detail: "not decided" }
                    )
                  })
                )
              ),
              Effect.ignore
            )
          )
        })
      fanoutHooks = {
        link: (ch, params, created, answer) => decide(() => handler.link(wrap(ch), params, created), answer),
        unlink: (ch, answer) => decide(() => handler.unlink(wrap(ch)), answer),
        filter: (ch, filter, answer) => decide(() => handler.filter(wrap(ch), filter), answer)
      }
    }
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
            {
              label: o?.label ?? "",
              extraMessages: o?.extraMessages ?? 0,
              extraBytes: o?.extraBytes ?? 0,
              fanout: o?.fanout,
              encryption: o?.encryption === undefined ? undefined : {
                keyId: o.encryption.keyId,
                suite: suiteByName(o.encryption.suite ?? "AES-256-GCM")
              }
            },
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

    const fanoutRequest = (
      channel: Channel,
      request: Parameters<Engine["fanoutRequest"]>[1],
      what: string
    ): Effect.Effect<void, ChannelError> =>
      Effect.callback<void, ChannelError>((resume) => {
        const error = run(() =>
          engine.fanoutRequest(impl(channel), request, (e) => resume(e === undefined ? Effect.void : Effect.fail(e)))
        )
        if (error !== undefined) resume(Effect.fail(error))
      }).pipe(defaultChannel.withTimeout(what))

    const link = (channel: Channel, params: FanoutParams) => fanoutRequest(channel, { _tag: "Link", params }, "LINK")
    const unlink = (channel: Channel) => fanoutRequest(channel, { _tag: "Unlink" }, "UNLINK")
    const filter = (channel: Channel, f: FanoutFilter) => fanoutRequest(channel, { _tag: "Filter", filter: f }, "FILTER")

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
      // After our GOAWAY with an error, a transport that carries close codes says so too (1002, 1008, …).
      const code = engine.failureCode
      yield* code !== undefined && code !== Code.NO_ERROR && transport.closeWith !== undefined
        ? transport.closeWith(webSocketCloseCode(code), codeName(code))
        : transport.close
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
      link,
      unlink,
      filter,
      ping,
      stats: Effect.sync((): Stats => ({ ...engine.stats })),
      close,
      closed: Deferred.await(ended)
    }
    return channels
  })

/** A handler's commit, made unable to throw into the engine. */
const guardCommit = (commit: void | FanoutCommit): ((acked: boolean) => void) | undefined =>
  typeof commit !== "function" ? undefined : (acked) => {
    try {
      commit(acked)
    } catch {
      // The application's own failure; the ACK is already queued.
    }
  }

/** ERROR details are at most 256 bytes of UTF-8 (spec: ERROR); cut on a character boundary. */
const truncateDetail = (detail: string): string => {
  if (detail.length <= 64) return detail
  const bytes = new TextEncoder().encode(detail)
  if (bytes.length <= F.MAX_TEXT) return detail
  let end = F.MAX_TEXT
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--
  return new TextDecoder().decode(bytes.subarray(0, end))
}
