/**
 * effect/rpc over a message carrier (docs/spec/rpc.md, Calls over a message
 * carrier): any core `MessageTransport`, a WebSocket's messages, a KCM
 * message socket (`RpcKcm`) and a Channels channel (`RpcChannels`) among
 * them. The client runs over one transport or dials its own, again after
 * GOAWAY or a loss. Calls share the carrier
 * and are told apart by request id; streaming responses wait for an Ack per
 * chunk; a cancelled call sends Interrupt; deadlines travel in the
 * `plexus-timeout` header and the server enforces them.
 *
 * The one thing to know: a carrier links one client process to one server
 * process. Request ids are the client's, so a server told that two peers
 * share a carrier could not keep their calls apart.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberSet from "effect/FiberSet"
import * as Queue from "effect/Queue"
import { type RpcClient, type RpcSerialization, RpcServer } from "effect/rpc"
import type { FromClientEncoded, FromServerEncoded, RequestEncoded } from "effect/rpc/RpcMessage"
import * as Scope from "effect/Scope"
import * as Semaphore from "effect/Semaphore"
import { MessageTransport } from "@plexus/core"
import { withByteChunks } from "./internal/byteChunks.ts"
import * as internalClient from "./internal/client.ts"
import { Outbox } from "./internal/outbox.ts"
import { resolveLimits } from "./internal/serverLimits.ts"
import {
  chunkOf,
  Codec,
  control,
  type Decoded,
  idKey,
  joinParts,
  KIND_ABORTED,
  KIND_CHUNK,
  KIND_DEADLINE,
  KIND_DEFECT,
  KIND_ENVELOPE,
  KIND_GOAWAY,
  KIND_PROBE,
  KIND_REFUSED,
  KIND_UNKNOWN
} from "./internal/wire.ts"
import {
  ConnectionLost,
  MessageTooLarge,
  NotSent,
  RpcTransportError
} from "./RpcTransportError.ts"
import { serialization } from "./RpcSession.ts"

// Client ----------------------------------------------------------------------

/**
 * @category models
 * @since 0.1.0
 */
export interface ClientOptions extends internalClient.ClientOptions {
  /**
   * Whether a failed send provably never left (then the call is retryable).
   * Default: the error's own `retryable` field when it has one (KCM's), else no.
   */
  readonly sendRetryable?: ((error: unknown) => boolean) | undefined
  /**
   * Whether the messages of one turn of the event loop leave together (in
   * writes of up to 8).
   * Default true; a carrier that spreads messages over connections (a KCM
   * pool) sends each on its own.
   */
  readonly batchWrites?: boolean | undefined
}

/**
 * Counters of a client.
 *
 * @category models
 * @since 0.1.0
 */
export interface ClientStats {
  readonly pending: number
  /** Messages for calls no longer pending (late answers), dropped. */
  readonly unmatched: number
  readonly malformed: number
  readonly goAways: number
  /** Transports in use: the current one, and older ones whose calls still run. */
  readonly carriers: number
}

/**
 * A client protocol with its counters.
 *
 * @category models
 * @since 0.1.0
 */
export interface Client {
  readonly protocol: RpcClient.Protocol["Service"]
  readonly stats: Effect.Effect<ClientStats>
  /**
   * Asks the server about every call sent and not answered yet (PROBE): a
   * call the server does not know (its request, or its answer, was lost
   * with a connection) fails with `ConnectionLost`, not retryable. For
   * carriers that lose messages silently when one connection drops (a KCM
   * pool); `RpcKcm` calls it when a connection leaves the pool.
   */
  readonly probe: Effect.Effect<void>
}

type Inbound =
  | Decoded<FromServerEncoded>
  | { readonly kind: "lost"; readonly detail: string }
  | { readonly kind: "unsent"; readonly error: unknown }

/**
 * A call waiting for its answer on a carrier. Its fiber waits in an
 * `Effect.callback` whose resume is `waker`; the reader resumes it with the
 * next step (hand on a chunk and wait again, or end). Messages that arrive
 * while the fiber is busy handing on a chunk wait in `queue`.
 */
interface Pending {
  readonly key: string
  readonly requestId: string | number
  readonly deliver: (message: FromServerEncoded) => Effect.Effect<void>
  readonly timeout: number | undefined
  waker: ((effect: Effect.Effect<void, RpcTransportError>) => void) | undefined
  queue: Array<Inbound> | undefined
  /** The call's end came (an Exit or an error of the server's): no Interrupt for it. */
  finished: boolean
  /** The request was never written: no Interrupt for it either. */
  unsent: boolean
  /** Out of the carrier's calls. */
  released: boolean
  /** A streaming answer: the rest of the call runs under a guard that tells the server if it is given up on. */
  guarded: boolean
}

const defaultSendRetryable = (error: unknown): boolean =>
  typeof error === "object" && error !== null && (error as { retryable?: unknown }).retryable === true

/**
 * Where a client's carriers come from: one fixed message transport, or a
 * dial that makes a new one when the last was lost or went away (GOAWAY).
 *
 * @category models
 * @since 0.1.0
 */
export type MessageSource<E> =
  | MessageTransport.MessageTransport<E>
  | { readonly dial: Effect.Effect<MessageTransport.MessageTransport<unknown>, unknown, Scope.Scope> }

/** The calls of one carrier. */
interface Link {
  readonly attempt: internalClient.Attempt
  readonly ack: (requestId: string | number) => Effect.Effect<void>
  readonly interrupt: (requestId: string | number) => Effect.Effect<void>
  readonly has: (key: string) => boolean
  readonly pending: () => number
  /** Why the carrier is unusable, once it is. */
  readonly lost: () => string | undefined
  readonly goneAway: () => boolean
  readonly probe: Effect.Effect<void>
  /** Completes once the carrier is lost, or once no call is pending on it. */
  readonly idle: Effect.Effect<void>
}

interface LinkContext {
  readonly ser: RpcSerialization.RpcSerialization["Service"]
  readonly decodeDefect: (u: unknown) => unknown
  readonly maxRequest: number
  readonly maxResponse: number
  readonly sendRetryable: (error: unknown) => boolean
  readonly batchWrites: boolean
  readonly stats: { unmatched: number; malformed: number; goAways: number }
  /** Told when the carrier becomes unusable for new calls (lost, or GOAWAY). */
  readonly onRetire: (link: Link) => void
}

/** Runs calls over one message transport, in the current Scope. */
const makeLink = <E>(transport: MessageTransport.MessageTransport<E>, ctx: LinkContext): Effect.Effect<Link, never, Scope.Scope> =>
  Effect.gen(function*() {
    const codec: Codec<FromServerEncoded, FromClientEncoded> = new Codec(ctx.ser)
    const stats = ctx.stats
    const calls = new Map<string, Pending>()
    const outbox = new Outbox(transport as MessageTransport.MessageTransport<unknown>, ctx.batchWrites)
    const idleWakers: Array<() => void> = []
    let lost: string | undefined
    let goneAway = false

    const wakeIdle = () => {
      if (lost === undefined && calls.size > 0) return
      for (const wake of idleWakers.splice(0, idleWakers.length)) wake()
    }
    // While the reader works through a batch, a carrier that became idle is
    // reported once the batch is done: reporting it may close the carrier's
    // scope, and with it the reader, before the batch's answers were handed on.
    let routing = false
    let idlePending = false
    const callEnded = () => {
      if (routing) idlePending = true
      else wakeIdle()
    }

    // One reader routes every message to its call (its waiting fiber, or its
    // queue), never waiting on a call: a slow consumer holds only its own
    // queue (one chunk, since the server waits for the Ack). An Exit for a call whose fiber
    // waits with nothing else to hand on goes to effect/rpc from here, after
    // that fiber ended: effect/rpc then has no send still running to stop.
    const route = (message: Uint8Array): Effect.Effect<void> | undefined => {
      if (message.length > ctx.maxResponse) {
        stats.malformed++
        return
      }
      const decoded = codec.decode(message)
      let key: string | undefined
      if (decoded.kind === KIND_ENVELOPE) {
        const envelope = decoded.message
        if ("requestId" in envelope && (typeof envelope.requestId === "string" || typeof envelope.requestId === "number")) {
          key = idKey(envelope.requestId)
        }
      } else if (decoded.kind === KIND_GOAWAY) {
        stats.goAways++
        if (!goneAway) {
          goneAway = true
          ctx.onRetire(link)
        }
        return
      } else if (decoded.kind !== "malformed") {
        key = decoded.id
      }
      if (key === undefined) {
        stats.malformed++
        return
      }
      const call = calls.get(key)
      if (call === undefined) {
        stats.unmatched++
        return
      }
      const waker = call.waker
      if (decoded.kind === KIND_ENVELOPE && decoded.message._tag === "Exit" && waker !== undefined) {
        call.finished = true
        call.waker = undefined
        release(call)
        waker(Effect.void)
        return call.deliver(decoded.message)
      }
      dispatch(call, decoded)
    }
    const onBatch = (batch: ReadonlyArray<Uint8Array>, from: number): Effect.Effect<never, unknown> => {
      for (let i = from; i < batch.length; i++) {
        const effect = route(batch[i])
        if (effect !== undefined) return Effect.flatMap(effect, () => onBatch(batch, i + 1))
      }
      routing = false
      if (idlePending) {
        idlePending = false
        wakeIdle()
      }
      return read
    }
    const read: Effect.Effect<never, unknown> = Effect.flatMap(transport.pull, (batch) => {
      routing = true
      return onBatch(batch, 0)
    })

    const interruptOnWire = (requestId: string | number) =>
      Effect.sync(() => outbox.push(codec.encode({ _tag: "Interrupt", requestId })))

    /** The call leaves the carrier's calls (once). */
    const release = (call: Pending): void => {
      if (call.released) return
      call.released = true
      calls.delete(call.key)
      callEnded()
    }
    /** A call given up on tells the server, which interrupts the handler. */
    const abandon = (call: Pending): void => {
      if (call.released) return
      release(call)
      if (!call.unsent && !call.finished) outbox.push(codec.encode({ _tag: "Interrupt", requestId: call.requestId }))
    }
    /** Hands a message to its call: to its waiting fiber, or into its queue. */
    const dispatch = (call: Pending, inbound: Inbound): void => {
      const waker = call.waker
      if (waker === undefined) {
        ;(call.queue ??= []).push(inbound)
        return
      }
      call.waker = undefined
      waker(step(call, inbound))
    }
    /** Waits for the call's next message. */
    const next = (call: Pending): Effect.Effect<void, RpcTransportError> =>
      Effect.callback<void, RpcTransportError>((resume) => {
        const queued = call.queue
        if (queued !== undefined && queued.length > 0) return resume(step(call, queued.shift()!))
        call.waker = resume
        return Effect.sync(() => {
          if (call.waker === resume) call.waker = undefined
          abandon(call)
        })
      })
    /** Hands a chunk on, then waits for more; the first one puts the rest of the call under a guard. */
    const chunk = (call: Pending, message: FromServerEncoded): Effect.Effect<void, RpcTransportError> => {
      const rest = Effect.andThen(call.deliver(message), next(call))
      if (call.guarded) return rest
      call.guarded = true
      return Effect.onExit(rest, (exit) => {
        if (Exit.isFailure(exit)) abandon(call)
        return Effect.void
      })
    }
    /** What the call's fiber does with one message. */
    const step = (call: Pending, inbound: Inbound): Effect.Effect<void, RpcTransportError> => {
      switch (inbound.kind) {
        case KIND_ENVELOPE: {
          const envelope = inbound.message
          if (envelope._tag === "Chunk") return chunk(call, envelope)
          if (envelope._tag === "Exit") {
            call.finished = true
            release(call)
            return call.deliver(envelope)
          }
          return next(call)
        }
        case KIND_CHUNK:
          return chunk(call, chunkOf(call.requestId, inbound.tail))
        case KIND_DEFECT: {
          call.finished = true
          release(call)
          const defect = codec.decodeTail(inbound.tail)
          return Effect.die(defect !== undefined && defect._tag === "Defect" ? ctx.decodeDefect(defect.defect) : "a defect")
        }
        case KIND_DEADLINE:
        case KIND_REFUSED:
        case KIND_ABORTED:
          call.finished = true
          release(call)
          return Effect.fail(internalClient.endedByServer(inbound.kind, call.timeout))
        case "unsent": {
          call.unsent = true
          release(call)
          const error = inbound.error
          const retryable = ctx.sendRetryable(error)
          return Effect.fail(
            new RpcTransportError({
              reason: retryable
                ? new NotSent({ detail: String(error), cause: error })
                : new ConnectionLost({ detail: String(error), cause: error }),
              retryable
            })
          )
        }
        case "lost":
          abandon(call)
          return Effect.fail(
            new RpcTransportError({ reason: new ConnectionLost({ detail: inbound.detail }), retryable: false })
          )
        case KIND_UNKNOWN:
          abandon(call)
          return Effect.fail(
            new RpcTransportError({
              reason: new ConnectionLost({
                detail: "the server has no such call: its request or its answer was lost with a connection"
              }),
              retryable: false
            })
          )
        default:
          return next(call)
      }
    }

    // A call's fiber waits in one callback from its request to its answer:
    // interrupted there (the caller gave up, or its deadline passed), it
    // tells the server.
    const attempt: internalClient.Attempt = (request, deliver, timeout) =>
      Effect.callback<void, RpcTransportError>((resume) => {
        let bytes: Uint8Array
        try {
          bytes = codec.encode(request)
        } catch (cause) {
          return resume(Effect.die(cause))
        }
        if (bytes.length > ctx.maxRequest) {
          return resume(Effect.fail(
            new RpcTransportError({ reason: new MessageTooLarge({ size: bytes.length, max: ctx.maxRequest }), retryable: true })
          ))
        }
        if (lost !== undefined) {
          return resume(Effect.fail(new RpcTransportError({ reason: new NotSent({ detail: lost }), retryable: true })))
        }
        const call: Pending = {
          key: idKey(request.id),
          requestId: request.id,
          deliver,
          timeout,
          waker: resume,
          queue: undefined,
          finished: false,
          unsent: false,
          released: false,
          guarded: false
        }
        calls.set(call.key, call)
        // The request leaves with the turn's other messages; a failed write
        // comes back to the call as a message.
        outbox.push(bytes, (error) => dispatch(call, { kind: "unsent", error }))
        return Effect.sync(() => {
          if (call.waker === resume) call.waker = undefined
          abandon(call)
        })
      })

    const idle: Effect.Effect<void> = Effect.callback<void>((resume) => {
      if (lost !== undefined || calls.size === 0) return resume(Effect.void)
      const waker = () => resume(Effect.void)
      idleWakers.push(waker)
      return Effect.sync(() => {
        const i = idleWakers.indexOf(waker)
        if (i >= 0) idleWakers.splice(i, 1)
      })
    })

    const link: Link = {
      attempt,
      ack: (requestId) => Effect.sync(() => outbox.push(codec.encode({ _tag: "Ack", requestId }))),
      interrupt: (requestId) => calls.has(idKey(requestId)) ? interruptOnWire(requestId) : Effect.void,
      has: (key) => calls.has(key),
      pending: () => calls.size,
      lost: () => lost,
      goneAway: () => goneAway,
      probe: Effect.suspend(() =>
        // Every pending call's request was queued when it became pending: what a PROBE asks about.
        calls.size === 0
          ? Effect.void
          : Effect.sync(() => {
            for (const key of calls.keys()) outbox.push(control(KIND_PROBE, key))
          })
      ),
      idle
    }

    yield* Effect.forkScoped(
      Effect.onExit(read, (exit) =>
        Effect.sync(() => {
          lost = Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)
            ? (Cause.isDone(Cause.squash(exit.cause)) ? "the carrier ended" : String(Cause.squash(exit.cause)))
            : "the client closed"
          routing = false
          for (const call of calls.values()) dispatch(call, { kind: "lost", detail: lost })
          wakeIdle()
          ctx.onRetire(link)
        }))
    )
    return link
  })

/**
 * The effect/rpc client `Protocol` over a message transport, or over
 * transports it dials itself (a new one when the last was lost or went
 * away: calls running on the old one finish there), with its counters. The
 * transport's received messages belong to the protocol.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeClient = <E>(
  source: MessageSource<E>,
  options?: ClientOptions
): Effect.Effect<Client, never, Scope.Scope> =>
  Effect.gen(function*() {
    const ser = yield* serialization
    const scope = yield* Effect.scope
    const stats = { unmatched: 0, malformed: 0, goAways: 0 }
    const links = new Set<Link>()
    let current: { readonly link: Link; readonly scope: Scope.Closeable } | undefined
    const scopes = new Map<Link, Scope.Closeable>()

    // A link that can take no new call leaves `current`; its scope closes
    // once its last call ended (or at once, when it is lost).
    const retire = (link: Link) => {
      if (current !== undefined && current.link === link) current = undefined
      const linkScope = scopes.get(link)
      if (linkScope === undefined) return
      scopes.delete(link)
      Effect.runFork(Effect.andThen(link.idle, Effect.andThen(
        Effect.sync(() => links.delete(link)),
        Scope.close(linkScope, Exit.void)
      )))
    }

    const ctx: LinkContext = {
      ser,
      decodeDefect: internalClient.defectDecoder(ser),
      maxRequest: options?.maxRequestBytes ?? 4 * 1024 * 1024,
      maxResponse: options?.maxResponseBytes ?? 16 * 1024 * 1024,
      sendRetryable: options?.sendRetryable ?? defaultSendRetryable,
      batchWrites: options?.batchWrites ?? true,
      stats,
      onRetire: retire
    }

    let get: Effect.Effect<Link, RpcTransportError>
    if (MessageTransport.isMessageTransport(source)) {
      const link = yield* makeLink(source, { ...ctx, onRetire: () => {} })
      links.add(link)
      get = Effect.succeed(link)
    } else {
      const lock = yield* Semaphore.make(1)
      const dialOne = Effect.gen(function*() {
        const child = yield* Scope.fork(scope)
        const exit = yield* Effect.exit(
          Effect.flatMap(Scope.provide(source.dial, child), (transport) => Scope.provide(makeLink(transport, ctx), child))
        )
        if (Exit.isFailure(exit)) {
          yield* Scope.close(child, Exit.void)
          return yield* Effect.fail(
            new RpcTransportError({
              reason: new NotSent({ detail: "no carrier could be dialled", cause: Cause.squash(exit.cause) }),
              retryable: true
            })
          )
        }
        const link = exit.value
        links.add(link)
        scopes.set(link, child)
        if (link.lost() !== undefined || link.goneAway()) {
          retire(link)
          return yield* Effect.fail(
            new RpcTransportError({ reason: new NotSent({ detail: "the dialled carrier went away" }), retryable: true })
          )
        }
        current = { link, scope: child }
        return link
      })
      get = Effect.suspend(() =>
        current !== undefined
          ? Effect.succeed(current.link)
          : Semaphore.withPermit(lock, Effect.suspend(() => current !== undefined ? Effect.succeed(current.link) : dialOne))
      )
    }

    // Each run (a retry among them) takes the carrier current then; the usual
    // case, a carrier at hand, costs no step of its own.
    const attempt: internalClient.Attempt = (request, deliver, timeout) =>
      Effect.suspend(() =>
        current !== undefined
          ? current.link.attempt(request, deliver, timeout)
          : Effect.flatMap(get, (link) => link.attempt(request, deliver, timeout))
      )
    const owner = (requestId: string | number): Link | undefined => {
      const key = idKey(requestId)
      for (const link of links) if (link.has(key)) return link
      return undefined
    }

    const protocol = yield* internalClient.makeProtocol(ser, options, {
      attempt,
      supportsAck: true,
      ack: (requestId) => owner(requestId)?.ack(requestId) ?? Effect.void,
      interrupt: (requestId) => owner(requestId)?.interrupt(requestId) ?? Effect.void
    })
    return {
      protocol,
      stats: Effect.sync((): ClientStats => {
        let pending = 0
        for (const link of links) pending += link.pending()
        return { ...stats, pending, carriers: links.size }
      }),
      probe: Effect.suspend(() => Effect.forEach(Array.from(links), (link) => link.probe, { discard: true }))
    }
  })

/**
 * The client protocol alone.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeClientProtocol = <E>(
  source: MessageSource<E>,
  options?: ClientOptions
): Effect.Effect<RpcClient.Protocol["Service"], never, Scope.Scope> =>
  Effect.map(makeClient(source, options), (client) => client.protocol)

// Server ----------------------------------------------------------------------

/**
 * @category models
 * @since 0.1.0
 */
export interface ServerOptions {
  /** Largest request message; larger ones are dropped and counted. Default 4 MiB. */
  readonly maxRequestBytes?: number | undefined
  /** Calls running at once; more are answered REFUSED. Default 10,000. */
  readonly maxConcurrentCalls?: number | undefined
  /** Deadline of calls that carry none. Default: none. */
  readonly defaultTimeout?: Duration.Input | undefined
  /** Cap on a call's deadline. Default 5 minutes. */
  readonly maxTimeout?: Duration.Input | undefined
  /** How long `drain` lets running calls finish. Default 5 s. */
  readonly drainTimeout?: Duration.Input | undefined
  /** As the client's `batchWrites`. Default true. */
  readonly batchWrites?: boolean | undefined
}

/**
 * Counters of a server.
 *
 * @category models
 * @since 0.1.0
 */
export interface ServerStats {
  readonly running: number
  readonly started: number
  readonly refused: number
  readonly deadlines: number
  readonly cancelled: number
  /** Requests whose id belonged to a call still running: dropped. */
  readonly duplicates: number
  readonly malformed: number
  readonly oversized: number
  readonly aborted: number
  /** PROBEs answered UNKNOWN: calls whose request or answer a lost connection took. */
  readonly unknownProbed: number
}

/**
 * @category models
 * @since 0.1.0
 */
export interface Server {
  readonly protocol: RpcServer.Protocol["Service"]
  /** Serves the calls arriving on a message transport until it ends. */
  readonly serve: <E>(transport: MessageTransport.MessageTransport<E>) => Effect.Effect<void, never, Scope.Scope>
  /**
   * Stops taking calls: GOAWAY on every transport served, REFUSED for new
   * requests; running calls finish until the deadline (default
   * `drainTimeout`), then are interrupted and answered ABORTED.
   */
  readonly drain: (options?: { readonly timeout?: Duration.Input | undefined }) => Effect.Effect<void>
  readonly stats: Effect.Effect<ServerStats>
}

/**
 * The server service, for draining and counters.
 *
 * @category services
 * @since 0.1.0
 */
export class MessageServer extends Context.Service<MessageServer, Server>()("@plexus/rpc/RpcMessages/MessageServer") {}

const eof: FromClientEncoded = { _tag: "Eof" }

/** One served transport. */
interface Carrier {
  readonly calls: Map<string, Call>
  readonly outbox: Outbox
}

/**
 * A running call. Each call is an effect/rpc client of its own, so that
 * effect/rpc's Defect (which names no call) is told to that call only.
 */
interface Call {
  readonly clientId: number
  readonly carrier: Carrier
  readonly key: string
  readonly requestId: string | number
  timer: Fiber.Fiber<void> | undefined
}

/**
 * A server protocol whose calls come from the transports handed to `serve`.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeServer = (options?: ServerOptions): Effect.Effect<Server, never, Scope.Scope> =>
  Effect.gen(function*() {
    const ser = yield* serialization
    const codec: Codec<FromClientEncoded, FromServerEncoded> = new Codec(ser)
    const { deadlineOf, drainTimeout, maxCalls, maxRequest } = resolveLimits(options)
    const timers = yield* FiberSet.make<void>()
    const runTimer = yield* FiberSet.runtime(timers)<never>()

    const disconnects = yield* Queue.make<number>()
    const carriers = new Set<Carrier>()
    const byClient = new Map<number, Call>()
    const clientIds = new Set<number>()
    const goAways = new Set<Outbox>()
    const idle = yield* Deferred.make<void>()
    let nextClientId = 0
    let draining = false
    const stats = {
      running: 0,
      started: 0,
      refused: 0,
      deadlines: 0,
      cancelled: 0,
      duplicates: 0,
      malformed: 0,
      oversized: 0,
      aborted: 0,
      unknownProbed: 0
    }
    let writeRequest!: (clientId: number, message: FromClientEncoded) => Effect.Effect<void>

    /** Forgets a call; whether it was still running. */
    const finish = (call: Call): boolean => {
      const calls = call.carrier.calls
      if (calls.get(call.key) !== call) return false
      calls.delete(call.key)
      byClient.delete(call.clientId)
      clientIds.delete(call.clientId)
      stats.running--
      call.timer?.interruptUnsafe()
      if (draining && stats.running === 0) Deferred.doneUnsafe(idle, Exit.void)
      return true
    }

    /**
     * Ends a running call without an answer from the handler: tells the
     * client (`message`, unless undefined) and interrupts the handler, whose
     * own late answer then finds no call and is dropped.
     */
    const cut = (call: Call, message: Uint8Array | undefined): Effect.Effect<void> =>
      Effect.suspend(() => {
        if (!finish(call)) return Effect.void
        if (message !== undefined) call.carrier.outbox.push(message)
        Queue.offerUnsafe(disconnects, call.clientId)
        return Effect.void
      })

    const send = (clientId: number, response: FromServerEncoded): Effect.Effect<void> => {
      const call = byClient.get(clientId)
      if (call === undefined) return Effect.void
      const carrier = call.carrier
      if (response._tag === "Chunk" || response._tag === "Exit") {
        let bytes: Uint8Array
        try {
          // Values already in bytes are not serialized again (spec: CHUNK).
          const parts = response._tag === "Chunk" ? codec.chunkParts(response) : undefined
          bytes = parts !== undefined ? joinParts(parts) : codec.encode(response)
        } catch (cause) {
          stats.aborted++
          return cut(call, control(KIND_ABORTED, call.key)).pipe(Effect.andThen(Effect.logDebug("unencodable response", cause)))
        }
        if (response._tag === "Exit") finish(call)
        carrier.outbox.push(bytes)
        return Effect.void
      }
      if (response._tag === "Defect") {
        let bytes: Uint8Array
        try {
          bytes = control(KIND_DEFECT, call.key, codec.serialize(response))
        } catch (cause) {
          stats.aborted++
          return cut(call, control(KIND_ABORTED, call.key)).pipe(Effect.andThen(Effect.logDebug("unencodable defect", cause)))
        }
        finish(call)
        carrier.outbox.push(bytes)
      }
      return Effect.void
    }

    const protocol = yield* RpcServer.Protocol.make((write) => {
      writeRequest = write
      return Effect.succeed({
        disconnects,
        send,
        end: (clientId) =>
          Effect.sync(() => {
            const call = byClient.get(clientId)
            if (call !== undefined) finish(call)
          }),
        clientIds: Effect.sync(() => clientIds),
        initialMessage: Effect.succeedNone,
        supportsAck: true,
        supportsTransferables: false,
        supportsSpanPropagation: true,
        supportsNotifications: false,
        // Byte chunks leave by reference (spec: CHUNK).
        codecFor: withByteChunks(ser, { byReference: true }).codecFor
      })
    })

    const serve = <E>(transport: MessageTransport.MessageTransport<E>): Effect.Effect<void, never, Scope.Scope> =>
      Effect.gen(function*() {
        const carrier: Carrier = {
          calls: new Map(),
          outbox: new Outbox(transport as MessageTransport.MessageTransport<unknown>, options?.batchWrites ?? true)
        }
        const { calls, outbox } = carrier
        carriers.add(carrier)
        goAways.add(outbox)
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            goAways.delete(outbox)
            carriers.delete(carrier)
            // Calls of a transport that ended have nobody to answer to.
            for (const call of Array.from(calls.values())) {
              finish(call)
              Queue.offerUnsafe(disconnects, call.clientId)
            }
          })
        )
        if (draining) outbox.push(control(KIND_GOAWAY, ""))

        const onRequest = (request: RequestEncoded): Effect.Effect<void> | undefined => {
          if (typeof request.id !== "string" && typeof request.id !== "number") {
            stats.malformed++
            return undefined
          }
          const key = idKey(request.id)
          if (calls.has(key)) {
            stats.duplicates++
            return undefined
          }
          if (draining || stats.running >= maxCalls) {
            stats.refused++
            outbox.push(control(KIND_REFUSED, key))
            return undefined
          }
          const clientId = nextClientId++
          const call: Call = { clientId, carrier, key, requestId: request.id, timer: undefined }
          calls.set(key, call)
          byClient.set(clientId, call)
          clientIds.add(clientId)
          stats.running++
          stats.started++
          const timeout = deadlineOf(request.headers)
          if (timeout !== undefined) {
            call.timer = runTimer(Effect.andThen(
              Effect.sleep(Duration.millis(timeout)),
              Effect.suspend(() => {
                if (calls.get(key) !== call) return Effect.void
                // This fiber is the timer: `finish` must not interrupt it.
                call.timer = undefined
                stats.deadlines++
                return cut(call, control(KIND_DEADLINE, key))
              })
            ))
          }
          // Eof: the call's client sends nothing more, so effect/rpc ends it
          // (ClientEnd) once the handler is done.
          return Effect.andThen(Effect.exit(writeRequest(clientId, request)), Effect.exit(writeRequest(clientId, eof)))
        }

        /** What a message asks of the server: an Effect to run, or undefined when it was handled here. */
        const onMessage = (message: Uint8Array): Effect.Effect<void> | undefined => {
          if (message.length > maxRequest) {
            // Its call cannot be named without reading it: dropped.
            stats.oversized++
            return undefined
          }
          const decoded = codec.decode(message)
          if (decoded.kind === KIND_PROBE) {
            // A running call needs no answer; one unknown here was lost on the way, or its answer was.
            if (calls.has(decoded.id)) return undefined
            stats.unknownProbed++
            outbox.push(control(KIND_UNKNOWN, decoded.id))
            return undefined
          }
          if (decoded.kind !== KIND_ENVELOPE) {
            stats.malformed++
            return undefined
          }
          const envelope = decoded.message
          switch (envelope._tag) {
            case "Request":
              return onRequest(envelope)
            case "Ack": {
              const call = calls.get(idKey(envelope.requestId))
              return call === undefined ? undefined : Effect.asVoid(Effect.exit(writeRequest(call.clientId, envelope)))
            }
            case "Interrupt": {
              const call = calls.get(idKey(envelope.requestId))
              if (call === undefined) return undefined
              stats.cancelled++
              return cut(call, undefined)
            }
            case "Ping":
            case "Eof":
              return undefined
            default:
              stats.malformed++
              return undefined
          }
        }

        // Messages are handled in order; only those that reach effect/rpc cost an Effect.
        const onBatch = (batch: ReadonlyArray<Uint8Array>, from: number): Effect.Effect<never, unknown> => {
          for (let i = from; i < batch.length; i++) {
            const effect = onMessage(batch[i])
            if (effect !== undefined) return Effect.flatMap(effect, () => onBatch(batch, i + 1))
          }
          return read
        }
        const read: Effect.Effect<never, unknown> = Effect.flatMap(transport.pull, (batch) => onBatch(batch, 0))
        yield* Effect.ignore(read)
      })

    const drain = (o?: { readonly timeout?: Duration.Input | undefined }): Effect.Effect<void> =>
      Effect.gen(function*() {
        draining = true
        if (stats.running === 0) Deferred.doneUnsafe(idle, Exit.void)
        for (const outbox of goAways) outbox.push(control(KIND_GOAWAY, ""))
        const timeout = o?.timeout === undefined ? drainTimeout : Duration.fromInputUnsafe(o.timeout)
        yield* Deferred.await(idle).pipe(Effect.timeout(timeout), Effect.ignore)
        for (const carrier of Array.from(carriers)) {
          for (const call of Array.from(carrier.calls.values())) {
            stats.aborted++
            yield* cut(call, control(KIND_ABORTED, call.key))
          }
        }
      })

    return {
      protocol,
      serve,
      drain,
      stats: Effect.sync((): ServerStats => ({ ...stats }))
    }
  })
