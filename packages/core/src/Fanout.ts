/**
 * `Fanout` carries one data flow to many consumers while the flow crosses
 * each long-haul link once (docs/spec/channels.md, Fanout). A `Node` serves
 * flows: consumers link channels to a (flow, scope) with role SUBSCRIBE, by
 * creating a channel with the fanout extension or by LINK on a channel they
 * have; publishers link with role PUBLISH and what they send is the flow.
 *
 * A node with an `upstream` connection is an *edge*: for a flow it does not
 * source it subscribes upstream once per (flow, scope), when its first
 * consumer arrives, hands each upstream message to every linked consumer
 * whose filter passes it, and destroys the upstream channel when the last
 * consumer leaves. A node without one is a *gateway*: it sources the flows
 * its publishers feed. The same node can be both.
 *
 * What a caller must know: every link is authorised per scope by `authorize`
 * (SCOPE_DENIED otherwise), and each consumer is bounded: a consumer that
 * falls more than `bufferMessages` or `bufferBytes` behind its window is
 * aborted with SLOW_CONSUMER while the flow goes on for everyone else. The
 * node's fibers and upstream channels live in the Scope it was made in.
 *
 * Encryption is hop by hop: a consumer channel may be encrypted (created
 * with both extensions, or an encrypted channel linked by LINK) and seals
 * the flow under its own key; the upstream channel is encrypted when
 * `upstreamEncryption` says so, and the node opens what arrives on it, so
 * filters see plaintext and the flow still crosses the link once. A link
 * takes effect at its acknowledgement: nothing of the flow precedes a
 * consumer's CREATE_ACK or LINK_ACK, a FILTER withdraws what the new filter
 * rejects and has not left yet, and nothing follows an UNLINK_ACK.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberSet from "effect/FiberSet"
import * as Predicate from "effect/Predicate"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import { type ChannelError, Code, codeName } from "./ChannelError.ts"
import * as Channels from "./Channels.ts"
import * as F from "./internal/channelFrames.ts"
import {
  Consumer,
  Flow,
  type FlowCounters,
  flowKey,
  type LeaveReason,
  type Match,
  safeMatch,
  show
} from "./internal/fanoutFlow.ts"
import type * as MessageTransport from "./MessageTransport.ts"

/**
 * @category type IDs
 * @since 0.1.0
 */
export const TypeId = "~@plexus/core/Fanout"

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/**
 * The connection is not authorised for the scope (SCOPE_DENIED).
 *
 * @category reasons
 * @since 0.1.0
 */
export class ScopeDenied extends Schema.TaggedError<ScopeDenied>()("ScopeDenied", {
  scope: Schema.String
}) {
  get code(): number {
    return Code.SCOPE_DENIED
  }
  override get message(): string {
    return `not authorised for scope ${this.scope}`
  }
}

/**
 * The node cannot provide the flow: nobody publishes it here, and the
 * upstream gateway (if any) does not have it either (UNKNOWN_FLOW).
 *
 * @category reasons
 * @since 0.1.0
 */
export class UnknownFlow extends Schema.TaggedError<UnknownFlow>()("UnknownFlow", {
  flow: Schema.String,
  scope: Schema.String
}) {
  get code(): number {
    return Code.UNKNOWN_FLOW
  }
  override get message(): string {
    return `no flow ${this.flow} in scope ${this.scope}`
  }
}

/**
 * A filter the node cannot apply: an application kind nobody registered, or
 * data its predicate factory does not understand (BAD_FILTER).
 *
 * @category reasons
 * @since 0.1.0
 */
export class BadFilter extends Schema.TaggedError<BadFilter>()("BadFilter", {
  kind: Schema.Number,
  detail: Schema.String
}) {
  get code(): number {
    return Code.BAD_FILTER
  }
  override get message(): string {
    return `filter kind 0x${this.kind.toString(16)}: ${this.detail}`
  }
}

/**
 * The upstream gateway refused the subscription, or the upstream connection
 * failed; `code` is passed on to the consumer (the gateway's own refusal
 * code, INTERNAL_ERROR otherwise).
 *
 * @category reasons
 * @since 0.1.0
 */
export class UpstreamFailed extends Schema.TaggedError<UpstreamFailed>()("UpstreamFailed", {
  code: Schema.Number,
  detail: Schema.String
}) {
  override get message(): string {
    return `upstream ${codeName(this.code)}: ${this.detail}`
  }
}

/**
 * @category reasons
 * @since 0.1.0
 */
export const FanoutErrorReason = Schema.Union([ScopeDenied, UnknownFlow, BadFilter, UpstreamFailed])

/**
 * @category reasons
 * @since 0.1.0
 */
export type FanoutErrorReason = typeof FanoutErrorReason.Type

/**
 * A refused fanout request. `code` is what the peer receives in ERROR.
 *
 * @category errors
 * @since 0.1.0
 */
export class FanoutError extends Schema.TaggedError<FanoutError>()("FanoutError", {
  reason: FanoutErrorReason
}) {
  get code(): number {
    return this.reason.code
  }
  override get message(): string {
    return this.reason.message
  }
}

const refuse = (reason: FanoutErrorReason) => Effect.fail(new FanoutError({ reason }))

// ---------------------------------------------------------------------------
// Parameters, for the consumer and publisher side
// ---------------------------------------------------------------------------

/**
 * A flow id or scope: its UTF-8 text or its bytes.
 *
 * @category models
 * @since 0.1.0
 */
export type Name = string | Uint8Array

const encoder = new TextEncoder()
const bytesOf = (name: Name): Uint8Array => typeof name === "string" ? encoder.encode(name) : name

/**
 * Every message.
 *
 * @category filters
 * @since 0.1.0
 */
export const all: Channels.FanoutFilter = { _tag: "All" }

/**
 * The messages whose payload starts with one of the prefixes (1–32, each
 * 1–255 bytes).
 *
 * @category filters
 * @since 0.1.0
 */
export const prefixes = (...list: ReadonlyArray<Name>): Channels.FanoutFilter => ({
  _tag: "Prefixes",
  prefixes: list.map(bytesOf)
})

/**
 * An application filter: `kind` (0x80–0xFF) names a predicate both sides
 * registered; `data` is its argument.
 *
 * @category filters
 * @since 0.1.0
 */
export const application = (kind: number, data: Uint8Array = new Uint8Array(0)): Channels.FanoutFilter => ({
  _tag: "Application",
  kind,
  data
})

/**
 * Fanout parameters from names.
 *
 * @category constructors
 * @since 0.1.0
 */
export const params = (options: {
  readonly role: "subscribe" | "publish"
  readonly flow: Name
  readonly scope: Name
  readonly filter?: Channels.FanoutFilter | undefined
}): Channels.FanoutParams => ({
  role: options.role === "subscribe" ? F.ROLE_SUBSCRIBE : F.ROLE_PUBLISH,
  flowId: bytesOf(options.flow),
  scope: bytesOf(options.scope),
  filter: options.filter ?? all
})

/**
 * Subscribes to a flow: a new channel with the fanout extension (role
 * SUBSCRIBE); the flow's messages arrive on it. Closed when the Scope closes.
 *
 * @category consumers
 * @since 0.1.0
 */
export const subscribe = (
  channels: Channels.Channels,
  options: {
    readonly flow: Name
    readonly scope: Name
    readonly filter?: Channels.FanoutFilter | undefined
    readonly label?: string | undefined
    /** The flow arrives sealed under this channel's own key (needs "encryption" negotiated). */
    readonly encryption?: Channels.Encryption | undefined
  }
): Effect.Effect<Channels.Channel, ChannelError, Scope.Scope> =>
  channels.open({
    label: options.label ?? "fanout",
    fanout: params({ role: "subscribe", flow: options.flow, scope: options.scope, filter: options.filter }),
    encryption: options.encryption
  })

/**
 * Opens a publishing channel (role PUBLISH): what is sent on it is the
 * flow's data at the node. Closed when the Scope closes.
 *
 * @category publishers
 * @since 0.1.0
 */
export const publishTo = (
  channels: Channels.Channels,
  options: {
    readonly flow: Name
    readonly scope: Name
    readonly label?: string | undefined
    /** What is sent is sealed under this channel's own key; the node opens it before fanning it out. */
    readonly encryption?: Channels.Encryption | undefined
  }
): Effect.Effect<Channels.Channel, ChannelError, Scope.Scope> =>
  channels.open({
    label: options.label ?? "fanout",
    fanout: params({ role: "publish", flow: options.flow, scope: options.scope }),
    encryption: options.encryption
  })

// ---------------------------------------------------------------------------
// The node
// ---------------------------------------------------------------------------

/**
 * Builds the predicate of an application filter kind from the filter's
 * data; undefined refuses it (BAD_FILTER).
 *
 * @category models
 * @since 0.1.0
 */
export type FilterFactory = (data: Uint8Array) => ((payload: Uint8Array) => boolean) | undefined

/**
 * @category models
 * @since 0.1.0
 */
export interface Options<Peer = unknown> {
  /** Whether a connection may link in a scope. Default: every scope. */
  readonly authorize?: ((scope: Uint8Array, peer: Peer) => boolean | Effect.Effect<boolean>) | undefined
  /** The gateway connection flows are subscribed from (with "fanout" negotiated). Absent: a gateway. */
  readonly upstream?: Channels.Channels | undefined
  /**
   * Encrypts the upstream channel of a flow (the key id must be in the
   * upstream connection's `keys` and the gateway's, "encryption"
   * negotiated): one setting for every flow, or per (flow, scope), so that
   * each scope can have a key of its own. Default: plain.
   */
  readonly upstreamEncryption?:
    | Channels.Encryption
    | ((flowId: Uint8Array, scope: Uint8Array) => Channels.Encryption | undefined)
    | undefined
  /**
   * Whether this node sources a flow that no publisher feeds yet (its
   * consumers are linked and wait for data). Default: only flows with a
   * publisher are known; an edge asks upstream for the others.
   */
  readonly provides?: ((flowId: Uint8Array, scope: Uint8Array) => boolean) | undefined
  /** Application filter kinds (0x80–0xFF). */
  readonly filters?: ReadonlyMap<number, FilterFactory> | undefined
  /** Messages a consumer may be behind beyond its window. Default 256. */
  readonly bufferMessages?: number | undefined
  /** Bytes a consumer may be behind beyond its window. Default 1 MiB. */
  readonly bufferBytes?: number | undefined
  /** Messages consumers send on channels created for a link. Default: discarded. */
  readonly onConsumerMessage?: ((message: Uint8Array, channel: Channels.Channel) => void) | undefined
}

/**
 * A sink for a flow published from this process.
 *
 * @category models
 * @since 0.1.0
 */
export interface Publisher {
  /**
   * Hands the message to every consumer of the flow now. It never waits: a
   * burst larger than a consumer's window plus the node's bound aborts that
   * consumer (SLOW_CONSUMER), so a feed is paced by its source.
   */
  readonly publish: (message: Uint8Array) => Effect.Effect<void>
  readonly publishAll: (messages: ReadonlyArray<Uint8Array>) => Effect.Effect<void>
}

/**
 * Counters of a node.
 *
 * @category models
 * @since 0.1.0
 */
export interface Stats extends Readonly<FlowCounters> {
  readonly flows: number
  readonly consumers: number
  readonly publishers: number
  /** Upstream subscriptions open (one per flow and scope). */
  readonly upstreamChannels: number
  /** Upstream subscriptions opened since the start. */
  readonly upstreamOpened: number
  readonly slowConsumers: number
}

/**
 * @category models
 * @since 0.1.0
 */
export interface Node<Peer = unknown> {
  readonly [TypeId]: typeof TypeId
  /** The fanout handler for one connection (`Channels.Options.fanout`); `peer` is what `authorize` sees. */
  readonly handler: (peer: Peer) => Channels.FanoutHandler
  /** Channels over `transport` with fanout negotiated and this node's handler, in the current Scope. */
  readonly serve: <E>(
    transport: MessageTransport.MessageTransport<E>,
    options: Omit<Channels.Options, "fanout">,
    peer: Peer
  ) => Effect.Effect<Channels.Channels, never, Scope.Scope>
  /** Publishes a flow from this process, until the Scope closes. */
  readonly publish: (flow: Name, scope: Name) => Effect.Effect<Publisher, never, Scope.Scope>
  readonly stats: Effect.Effect<Stats>
}

/**
 * @category guards
 * @since 0.1.0
 */
export const isNode = (u: unknown): u is Node => Predicate.hasProperty(u, TypeId)

interface Upstream {
  readonly scope: Scope.Closeable
  readonly ready: Deferred.Deferred<void, FanoutError>
}

interface PublisherLink {
  readonly flow: Flow
  fiber: Fiber.Fiber<void> | undefined
}

/**
 * A fanout node in the current Scope: an edge when `upstream` is given, a
 * gateway otherwise.
 *
 * @category constructors
 * @since 0.1.0
 */
export const make = <Peer = unknown>(options: Options<Peer> = {}): Effect.Effect<Node<Peer>, never, Scope.Scope> =>
  Effect.gen(function*() {
    const runFork = yield* FiberSet.makeRuntime<never, void, never>()
    const bound = {
      messages: options.bufferMessages ?? 256,
      bytes: options.bufferBytes ?? 1024 * 1024
    }
    const flows = new Map<string, Flow>()
    const consumers = new Map<Channels.Channel, Consumer>()
    const publishers = new Map<Channels.Channel, PublisherLink>()
    const watched = new WeakSet<Channels.Channel>()
    const counters: FlowCounters = {
      messagesIn: 0,
      bytesIn: 0,
      messagesDelivered: 0,
      bytesDelivered: 0,
      filteredOut: 0
    }
    let upstreamChannels = 0
    let upstreamOpened = 0
    let slowConsumers = 0
    let stopped = false
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        stopped = true
        const scopes: Array<Scope.Closeable> = []
        for (const flow of flows.values()) {
          const upstream = flow.upstream as Upstream | undefined
          if (upstream !== undefined) scopes.push(upstream.scope)
        }
        return Effect.forEach(scopes, (scope) => Scope.close(scope, Exit.void), { discard: true })
      })
    )

    // Flows ------------------------------------------------------------------

    const flowOf = (flowId: Uint8Array, scope: Uint8Array): Flow => {
      const key = flowKey(flowId, scope)
      let flow = flows.get(key)
      if (flow === undefined) {
        flow = new Flow(key, flowId.slice(), scope.slice())
        flows.set(key, flow)
      }
      return flow
    }

    /** Runs an effect once the current step is over: what a commit starts never runs inside the engine's step. */
    const later = (effect: Effect.Effect<void>): void => {
      runFork(Effect.andThen(Effect.yieldNow, effect))
    }

    /** A flow nobody uses any more: its upstream channel is destroyed and it is forgotten. */
    const maybeRetire = (flow: Flow): void => {
      if (flow.retired || flow.consumers.length > 0 || flow.waiting > 0 || flow.publishers > 0) return
      flow.retired = true
      if (flows.get(flow.key) === flow) flows.delete(flow.key)
      const upstream = flow.upstream as Upstream | undefined
      flow.upstream = undefined
      if (upstream !== undefined) later(Scope.close(upstream.scope, Exit.void))
    }

    const onLeave = (consumer: Consumer, reason: LeaveReason, code: number = Code.NO_ERROR): void => {
      const flow = consumer.flow
      if (consumers.get(consumer.channel) === consumer) consumers.delete(consumer.channel)
      consumer.gone = true
      flow.remove(consumer)
      if (reason === "slow") {
        slowConsumers++
        runFork(consumer.channel.abort(Code.SLOW_CONSUMER, "fell behind the flow"))
      } else if (reason === "source-ended") {
        runFork(
          code === Code.NO_ERROR ? consumer.channel.close : consumer.channel.abort(code, "the flow's source ended")
        )
      }
      maybeRetire(flow)
    }

    /** Reads a source channel (upstream or a publisher's) into the flow until it ends. */
    const pump = (channel: Channels.Channel, flow: Flow): Effect.Effect<void, ChannelError | Cause.Done> => {
      const loop: Effect.Effect<void, ChannelError | Cause.Done> = Effect.flatMap(channel.pull, (batch) => {
        for (let i = 0; i < batch.length; i++) flow.deliver(batch[i], bound, counters, onLeave)
        return loop
      })
      return loop
    }

    /** The flow's source ended: every consumer's channel ends the same way. */
    const sourceEnded = (flow: Flow, code: number): void => {
      for (const consumer of flow.consumers.slice()) onLeave(consumer, "source-ended", code)
    }

    const codeOf = (exit: Exit.Exit<unknown, ChannelError | Cause.Done>): number => {
      if (Exit.isSuccess(exit)) return Code.NO_ERROR
      const error = Cause.findErrorOption(exit.cause)
      if (error._tag !== "Some") return Code.CANCEL
      if (Cause.isDone(error.value)) return Code.NO_ERROR
      const reason = error.value.reason
      return "code" in reason && typeof reason.code === "number" ? reason.code : Code.INTERNAL_ERROR
    }

    /** Subscribes upstream for a flow (once); the reader lives in the subscription's own Scope. */
    const openUpstream = (flow: Flow, upstream: Channels.Channels): Upstream => {
      const subscription: Upstream = {
        scope: Scope.makeUnsafe(),
        ready: Deferred.makeUnsafe<void, FanoutError>()
      }
      flow.upstream = subscription
      runFork(
        Effect.gen(function*() {
          const encryption = typeof options.upstreamEncryption === "function"
            ? options.upstreamEncryption(flow.flowId, flow.scope)
            : options.upstreamEncryption
          // Encrypted, the channel opens what it pulls: the flow below is plaintext.
          const channel = yield* Scope.provide(
            subscribe(upstream, { flow: flow.flowId, scope: flow.scope, encryption }),
            subscription.scope
          )
          upstreamChannels++
          upstreamOpened++
          yield* Scope.addFinalizer(subscription.scope, Effect.sync(() => upstreamChannels--))
          yield* Deferred.succeed(subscription.ready, undefined)
          yield* Effect.forkIn(
            pump(channel, flow).pipe(
              Effect.onExit((exit) =>
                Effect.sync(() => {
                  if (Exit.hasInterrupts(exit)) return
                  if (flow.upstream === subscription) flow.upstream = undefined
                  sourceEnded(flow, codeOf(exit))
                  runFork(Scope.close(subscription.scope, Exit.void))
                })
              ),
              Effect.ignore
            ),
            subscription.scope
          )
        }).pipe(
          Effect.catch((error: ChannelError) =>
            Effect.gen(function*() {
              if (flow.upstream === subscription) flow.upstream = undefined
              const reason = error.reason
              const failure = new FanoutError({
                reason: reason._tag === "RequestFailed" && reason.code === Code.UNKNOWN_FLOW
                  ? new UnknownFlow({ flow: show(flow.flowId), scope: show(flow.scope) })
                  : reason._tag === "RequestFailed" && reason.code === Code.SCOPE_DENIED
                  ? new ScopeDenied({ scope: show(flow.scope) })
                  : new UpstreamFailed({
                    code: reason._tag === "RequestFailed" ? reason.code : Code.INTERNAL_ERROR,
                    detail: error.message
                  })
              })
              yield* Deferred.fail(subscription.ready, failure)
              yield* Scope.close(subscription.scope, Exit.void)
            })
          )
        )
      )
      return subscription
    }

    /** Makes sure the flow has a source, subscribing upstream if need be. */
    const ensureSource = (flow: Flow): Effect.Effect<void, FanoutError> =>
      Effect.suspend(() => {
        if (flow.publishers > 0 || options.provides?.(flow.flowId, flow.scope) === true) return Effect.void
        const upstream = options.upstream
        if (upstream === undefined) {
          return refuse(new UnknownFlow({ flow: show(flow.flowId), scope: show(flow.scope) }))
        }
        const subscription = (flow.upstream as Upstream | undefined) ?? openUpstream(flow, upstream)
        flow.waiting++
        return Deferred.await(subscription.ready).pipe(
          Effect.ensuring(Effect.sync(() => {
            flow.waiting--
          }))
        )
      })

    // Filters -----------------------------------------------------------------

    const compile = (filter: Channels.FanoutFilter): Effect.Effect<Match, FanoutError> => {
      switch (filter._tag) {
        case "All":
          return Effect.succeed(undefined)
        case "Prefixes":
          return Effect.succeed((payload: Uint8Array) => F.filterMatches(filter, payload) === true)
        case "Application": {
          const factory = options.filters?.get(filter.kind)
          if (factory === undefined) {
            return refuse(new BadFilter({ kind: filter.kind, detail: "no predicate is registered for this kind" }))
          }
          let match: Match
          try {
            match = factory(filter.data)
          } catch {
            match = undefined
            return refuse(new BadFilter({ kind: filter.kind, detail: "the predicate factory failed on the filter data" }))
          }
          if (match === undefined) {
            return refuse(new BadFilter({ kind: filter.kind, detail: "the filter data is not understood" }))
          }
          return Effect.succeed(match)
        }
      }
    }

    // Per connection ------------------------------------------------------------

    const authorize = (scope: Uint8Array, peer: Peer): Effect.Effect<void, FanoutError> => {
      const decide = options.authorize
      if (decide === undefined) return Effect.void
      return Effect.suspend(() => {
        const answer = decide(scope, peer)
        const allowed = typeof answer === "boolean" ? Effect.succeed(answer) : answer
        return Effect.flatMap(allowed, (ok) => ok ? Effect.void : refuse(new ScopeDenied({ scope: show(scope) })))
      })
    }

    /** Watches a linked channel until it ends (draining it when the node owns it), then takes its links down. */
    const watch = (channel: Channels.Channel, created: boolean): void => {
      if (watched.has(channel)) return
      watched.add(channel)
      const drain: Effect.Effect<void, unknown> = Effect.flatMap(channel.pull, (batch) => {
        const deliver = options.onConsumerMessage
        if (deliver !== undefined) for (const m of batch) deliver(m, channel)
        return drain
      })
      runFork(
        (created ? Effect.ignore(drain) : channel.closed).pipe(
          Effect.ensuring(Effect.sync(() => {
            const consumer = consumers.get(channel)
            if (consumer !== undefined) onLeave(consumer, "closed")
            const publisher = publishers.get(channel)
            if (publisher !== undefined) dropPublisher(channel, publisher)
          }))
        )
      )
    }

    const dropPublisher = (channel: Channels.Channel, publisher: PublisherLink): void => {
      if (publishers.get(channel) !== publisher) return
      publishers.delete(channel)
      publisher.flow.publishers--
      if (publisher.fiber !== undefined) runFork(Fiber.interrupt(publisher.fiber))
      maybeRetire(publisher.flow)
    }

    const hasSource = (flow: Flow): boolean =>
      !flow.retired &&
      (flow.publishers > 0 || flow.upstream !== undefined || options.provides?.(flow.flowId, flow.scope) === true)

    const subscribeLink = (
      channel: Channels.Channel,
      p: Channels.FanoutParams,
      created: boolean,
      attempt = 1
    ): Effect.Effect<Channels.FanoutCommit, FanoutError> =>
      Effect.gen(function*() {
        const match = yield* compile(p.filter)
        const flow = flowOf(p.flowId, p.scope)
        yield* ensureSource(flow).pipe(Effect.onError(() => Effect.sync(() => maybeRetire(flow))))
        if (!hasSource(flow)) {
          // The source ended while we waited for it: subscribe afresh, a few times at most.
          maybeRetire(flow)
          if (attempt >= 3) {
            return yield* refuse(new UpstreamFailed({ code: Code.INTERNAL_ERROR, detail: "the flow's source keeps ending" }))
          }
          return yield* subscribeLink(channel, p, created, attempt + 1)
        }
        // The consumer joins with the CREATE_ACK or LINK_ACK (the commit); until then the flow is held.
        flow.waiting++
        watch(channel, created)
        return (acked: boolean) => {
          flow.waiting--
          if (acked && !stopped && !flow.retired && hasSource(flow)) {
            const consumer = new Consumer(channel, flow, created, match)
            flow.add(consumer)
            consumers.set(channel, consumer)
          } else if (acked) {
            // The source ended between the decision and the ACK: the link ends as the flow did.
            later(channel.abort(Code.INTERNAL_ERROR, "the flow's source ended"))
          }
          maybeRetire(flow)
        }
      })

    const publishLink = (channel: Channels.Channel, p: Channels.FanoutParams, created: boolean) =>
      Effect.sync(() => {
        const flow = flowOf(p.flowId, p.scope)
        flow.publishers++
        const publisher: PublisherLink = { flow, fiber: undefined }
        publishers.set(channel, publisher)
        publisher.fiber = runFork(
          pump(channel, flow).pipe(
            Effect.ignore,
            Effect.ensuring(Effect.sync(() => dropPublisher(channel, publisher)))
          )
        )
        if (!created) watch(channel, false)
      })

    const handler = (peer: Peer): Channels.FanoutHandler => ({
      link: (channel, p, created) =>
        Effect.gen(function*() {
          if (stopped) return yield* refuse(new UpstreamFailed({ code: Code.GOING_AWAY, detail: "the node is closing" }))
          yield* authorize(p.scope, peer)
          if (p.role === F.ROLE_PUBLISH) return yield* publishLink(channel, p, created)
          return yield* subscribeLink(channel, p, created)
        }),
      unlink: (channel) =>
        Effect.sync(() => {
          // Nothing more is offered from now on; what is queued is withdrawn with the UNLINK_ACK.
          const consumer = consumers.get(channel)
          if (consumer !== undefined) onLeave(consumer, "unlinked")
          const publisher = publishers.get(channel)
          if (publisher !== undefined) dropPublisher(channel, publisher)
          return (acked: boolean) => {
            if (acked && consumer !== undefined) channel.withdrawFlow()
          }
        }),
      filter: (channel, filter) =>
        Effect.map(compile(filter), (match) => (acked: boolean) => {
          // Applied with the FILTER_ACK: what the old filter let through and has not left is filtered again.
          const consumer = consumers.get(channel)
          if (!acked || consumer === undefined) return
          consumer.match = match
          if (match === undefined) return
          let bytes = 0
          const withdrawn = channel.withdrawFlow((payload) => {
            if (safeMatch(match, payload)) return true
            bytes += payload.length
            return false
          })
          consumer.delivered -= withdrawn
          counters.messagesDelivered -= withdrawn
          counters.bytesDelivered -= bytes
          counters.filteredOut += withdrawn
        })
    })

    const serve = <E>(
      transport: MessageTransport.MessageTransport<E>,
      channelOptions: Omit<Channels.Options, "fanout">,
      peer: Peer
    ): Effect.Effect<Channels.Channels, never, Scope.Scope> => {
      const extensions = channelOptions.extensions ?? []
      return Channels.make(transport, {
        ...channelOptions,
        extensions: extensions.includes("fanout") ? extensions : [...extensions, "fanout"],
        fanout: handler(peer)
      })
    }

    const publish = (flowName: Name, scopeName: Name): Effect.Effect<Publisher, never, Scope.Scope> =>
      Effect.gen(function*() {
        const flow = flowOf(bytesOf(flowName), bytesOf(scopeName))
        flow.publishers++
        let open = true
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            open = false
            flow.publishers--
            maybeRetire(flow)
          })
        )
        const publishAll = (messages: ReadonlyArray<Uint8Array>) =>
          Effect.sync(() => {
            if (!open) return
            for (let i = 0; i < messages.length; i++) flow.deliver(messages[i], bound, counters, onLeave)
          })
        return { publish: (message: Uint8Array) => publishAll([message]), publishAll }
      })

    const stats = Effect.sync((): Stats => {
      let publisherCount = 0
      for (const flow of flows.values()) publisherCount += flow.publishers
      return {
        ...counters,
        flows: flows.size,
        consumers: consumers.size,
        publishers: publisherCount,
        upstreamChannels,
        upstreamOpened,
        slowConsumers
      }
    })

    const node: Node<Peer> = { [TypeId]: TypeId, handler, serve, publish, stats }
    return node
  })
