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
import * as internalClient from "./internal/client.ts"
import {
  Codec,
  control,
  type Decoded,
  idKey,
  KIND_ABORTED,
  KIND_DEADLINE,
  KIND_DEFECT,
  KIND_ENVELOPE,
  KIND_GOAWAY,
  KIND_PROBE,
  KIND_REFUSED,
  KIND_UNKNOWN,
  timeoutOf
} from "./internal/wire.ts"
import {
  Aborted,
  ConnectionLost,
  DeadlineExceeded,
  MessageTooLarge,
  NotSent,
  Refused,
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

type Inbound = Decoded<FromServerEncoded> | { readonly kind: "lost"; readonly detail: string }

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
  readonly stats: { unmatched: number; malformed: number; goAways: number }
  /** Told when the carrier becomes unusable for new calls (lost, or GOAWAY). */
  readonly onRetire: (link: Link) => void
}

/** Runs calls over one message transport, in the current Scope. */
const makeLink = <E>(transport: MessageTransport.MessageTransport<E>, ctx: LinkContext): Effect.Effect<Link, never, Scope.Scope> =>
  Effect.gen(function*() {
    const codec: Codec<FromServerEncoded, FromClientEncoded> = new Codec(ctx.ser)
    const stats = ctx.stats
    const calls = new Map<string, Queue.Queue<Inbound>>()
    // Calls whose request left, by key, with their id: what a PROBE asks about.
    const sentCalls = new Set<string>()
    const idleWakers: Array<() => void> = []
    let lost: string | undefined
    let goneAway = false

    const wakeIdle = () => {
      if (lost === undefined && calls.size > 0) return
      for (const wake of idleWakers.splice(0, idleWakers.length)) wake()
    }

    // One reader routes every message to its call's mailbox, never waiting
    // on a call: a slow consumer holds only its own mailbox (one chunk,
    // since the server waits for the Ack).
    const route = (message: Uint8Array) => {
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
      const mailbox = calls.get(key)
      if (mailbox === undefined) {
        stats.unmatched++
        return
      }
      Queue.offerUnsafe(mailbox, decoded)
    }
    const read: Effect.Effect<never, unknown> = Effect.flatMap(transport.pull, (batch) => {
      for (let i = 0; i < batch.length; i++) route(batch[i])
      return read
    })

    const interruptOnWire = (requestId: string | number) =>
      Effect.ignore(transport.send(codec.encode({ _tag: "Interrupt", requestId })))

    const attempt: internalClient.Attempt = (request, deliver) =>
      Effect.suspend(() => {
        const key = idKey(request.id)
        let bytes: Uint8Array
        try {
          bytes = codec.encode(request)
        } catch (cause) {
          return Effect.die(cause)
        }
        if (bytes.length > ctx.maxRequest) {
          return Effect.fail(
            new RpcTransportError({ reason: new MessageTooLarge({ size: bytes.length, max: ctx.maxRequest }), retryable: true })
          )
        }
        if (lost !== undefined) {
          return Effect.fail(new RpcTransportError({ reason: new NotSent({ detail: lost }), retryable: true }))
        }
        const timeout = timeoutOf(request.headers)
        return Effect.flatMap(Queue.unbounded<Inbound>(), (mailbox) => {
          calls.set(key, mailbox)
          let sent = false
          let finished = false
          const loop: Effect.Effect<void, RpcTransportError> = Effect.flatMap(Queue.take(mailbox), (inbound) => {
            switch (inbound.kind) {
              case KIND_ENVELOPE: {
                const envelope = inbound.message
                if (envelope._tag === "Chunk") return Effect.andThen(deliver(envelope), loop)
                if (envelope._tag === "Exit") {
                  finished = true
                  return deliver(envelope)
                }
                return loop
              }
              case KIND_DEFECT: {
                finished = true
                const defect = codec.decodeTail(inbound.tail)
                return Effect.die(defect !== undefined && defect._tag === "Defect" ? ctx.decodeDefect(defect.defect) : "a defect")
              }
              case KIND_DEADLINE:
                finished = true
                return Effect.fail(
                  new RpcTransportError({
                    reason: new DeadlineExceeded({ timeoutMillis: timeout ?? 0, byServer: true }),
                    retryable: false
                  })
                )
              case KIND_REFUSED:
                finished = true
                return Effect.fail(
                  new RpcTransportError({ reason: new Refused({ detail: "refused by the server" }), retryable: true })
                )
              case KIND_ABORTED:
                finished = true
                return Effect.fail(
                  new RpcTransportError({ reason: new Aborted({ detail: "the server ended the call" }), retryable: false })
                )
              case "lost":
                return Effect.fail(
                  new RpcTransportError({ reason: new ConnectionLost({ detail: inbound.detail }), retryable: false })
                )
              case KIND_UNKNOWN:
                return Effect.fail(
                  new RpcTransportError({
                    reason: new ConnectionLost({
                      detail: "the server has no such call: its request or its answer was lost with a connection"
                    }),
                    retryable: false
                  })
                )
              default:
                return loop
            }
          })
          const run = Effect.andThen(
            Effect.mapError(transport.send(bytes), (error) => {
              const retryable = ctx.sendRetryable(error)
              return new RpcTransportError({
                reason: retryable
                  ? new NotSent({ detail: String(error), cause: error })
                  : new ConnectionLost({ detail: String(error), cause: error }),
                retryable
              })
            }),
            Effect.suspend(() => {
              sent = true
              sentCalls.add(key)
              return loop
            })
          )
          return Effect.onExit(run, (exit) => {
            calls.delete(key)
            sentCalls.delete(key)
            wakeIdle()
            // A call given up on tells the server, which interrupts the handler.
            if (sent && !finished && Exit.isFailure(exit)) return Effect.forkDetach(interruptOnWire(request.id))
            return Effect.void
          })
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
      ack: (requestId) => Effect.ignore(transport.send(codec.encode({ _tag: "Ack", requestId }))),
      interrupt: (requestId) => calls.has(idKey(requestId)) ? interruptOnWire(requestId) : Effect.void,
      has: (key) => calls.has(key),
      pending: () => calls.size,
      lost: () => lost,
      goneAway: () => goneAway,
      probe: Effect.suspend(() =>
        sentCalls.size === 0
          ? Effect.void
          : Effect.ignore(transport.sendAll(Array.from(sentCalls, (key) => control(KIND_PROBE, key))))
      ),
      idle
    }

    yield* Effect.forkScoped(
      Effect.onExit(read, (exit) =>
        Effect.sync(() => {
          lost = Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)
            ? (Cause.isDone(Cause.squash(exit.cause)) ? "the carrier ended" : String(Cause.squash(exit.cause)))
            : "the client closed"
          for (const mailbox of calls.values()) Queue.offerUnsafe(mailbox, { kind: "lost", detail: lost })
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

    const attempt: internalClient.Attempt = (request, deliver) =>
      Effect.flatMap(get, (link) => link.attempt(request, deliver))
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

interface Call {
  readonly clientId: number
  readonly key: string
  readonly requestId: string | number
  readonly send: (message: Uint8Array) => Effect.Effect<void>
  readonly calls: Map<string, Call>
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
    const maxRequest = options?.maxRequestBytes ?? 4 * 1024 * 1024
    const maxCalls = options?.maxConcurrentCalls ?? 10_000
    const defaultTimeout = options?.defaultTimeout === undefined
      ? undefined
      : Duration.toMillis(Duration.fromInputUnsafe(options.defaultTimeout))
    const maxTimeout = Duration.toMillis(Duration.fromInputUnsafe(options?.maxTimeout ?? "5 minutes"))
    const drainTimeout = Duration.fromInputUnsafe(options?.drainTimeout ?? "5 seconds")
    const timers = yield* FiberSet.make<void>()
    const runTimer = yield* FiberSet.runtime(timers)<never>()

    const disconnects = yield* Queue.make<number>()
    const byClient = new Map<number, Call>()
    const clientIds = new Set<number>()
    const goAways = new Set<Effect.Effect<void>>()
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

    const finish = (call: Call): void => {
      if (byClient.get(call.clientId) !== call) return
      byClient.delete(call.clientId)
      clientIds.delete(call.clientId)
      call.calls.delete(call.key)
      stats.running--
      call.timer?.interruptUnsafe()
      if (draining && stats.running === 0) Deferred.doneUnsafe(idle, Exit.void)
    }

    /** Ends a call without an answer from the handler: tells the client, interrupts the handler. */
    const cut = (call: Call, kind: number): Effect.Effect<void> =>
      Effect.suspend(() => {
        if (byClient.get(call.clientId) !== call) return Effect.void
        finish(call)
        Queue.offerUnsafe(disconnects, call.clientId)
        return kind < 0 ? Effect.void : call.send(control(kind, call.key))
      })

    const send = (clientId: number, response: FromServerEncoded): Effect.Effect<void> =>
      Effect.suspend(() => {
        const call = byClient.get(clientId)
        if (call === undefined) return Effect.void
        let bytes: Uint8Array
        try {
          if (response._tag === "Chunk" || response._tag === "Exit") bytes = codec.encode(response)
          else if (response._tag === "Defect") bytes = control(KIND_DEFECT, call.key, codec.serialize(response))
          else return Effect.void
        } catch (cause) {
          return cut(call, KIND_ABORTED).pipe(Effect.andThen(Effect.logDebug("unencodable response", cause)))
        }
        if (response._tag !== "Chunk") finish(call)
        return call.send(bytes)
      })

    const end = (clientId: number): Effect.Effect<void> =>
      Effect.sync(() => {
        const call = byClient.get(clientId)
        if (call !== undefined) finish(call)
      })

    const protocol = yield* RpcServer.Protocol.make((write) => {
      writeRequest = write
      return Effect.succeed({
        disconnects,
        send,
        end,
        clientIds: Effect.sync(() => clientIds),
        initialMessage: Effect.succeedNone,
        supportsAck: true,
        supportsTransferables: false,
        supportsSpanPropagation: true,
        supportsNotifications: false,
        codecFor: ser.codecFor
      })
    })

    const serve = <E>(transport: MessageTransport.MessageTransport<E>): Effect.Effect<void, never, Scope.Scope> =>
      Effect.gen(function*() {
        const calls = new Map<string, Call>()
        const reply = (message: Uint8Array): Effect.Effect<void> => Effect.ignore(transport.send(message))
        const goAway = reply(control(KIND_GOAWAY, ""))
        goAways.add(goAway)
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            goAways.delete(goAway)
            // Calls of a transport that ended have nobody to answer to.
            for (const call of Array.from(calls.values())) {
              finish(call)
              Queue.offerUnsafe(disconnects, call.clientId)
            }
          })
        )
        if (draining) yield* goAway

        const onRequest = (request: RequestEncoded): Effect.Effect<void> => {
          if (typeof request.id !== "string" && typeof request.id !== "number") {
            stats.malformed++
            return Effect.void
          }
          const key = idKey(request.id)
          if (calls.has(key)) {
            stats.duplicates++
            return Effect.void
          }
          if (draining || stats.running >= maxCalls) {
            stats.refused++
            return reply(control(KIND_REFUSED, key))
          }
          const clientId = nextClientId++
          const call: Call = { clientId, key, requestId: request.id, send: reply, calls, timer: undefined }
          calls.set(key, call)
          byClient.set(clientId, call)
          clientIds.add(clientId)
          stats.running++
          stats.started++
          const requested = timeoutOf(request.headers) ?? defaultTimeout
          if (requested !== undefined) {
            const timeout = Math.min(requested, maxTimeout)
            call.timer = runTimer(Effect.andThen(
              Effect.sleep(Duration.millis(timeout)),
              Effect.suspend(() => {
                if (byClient.get(clientId) !== call) return Effect.void
                // This fiber is the timer: `finish` must not interrupt it.
                call.timer = undefined
                stats.deadlines++
                return cut(call, KIND_DEADLINE)
              })
            ))
          }
          return Effect.andThen(
            Effect.exit(writeRequest(clientId, request)),
            Effect.exit(writeRequest(clientId, { _tag: "Eof" }))
          )
        }

        const onMessage = (message: Uint8Array): Effect.Effect<void> => {
          if (message.length > maxRequest) {
            // Its call cannot be named without reading it: dropped.
            stats.oversized++
            return Effect.void
          }
          const decoded = codec.decode(message)
          if (decoded.kind === KIND_PROBE) {
            // A running call needs no answer; one unknown here was lost on the way, or its answer was.
            if (calls.has(decoded.id)) return Effect.void
            stats.unknownProbed++
            return reply(control(KIND_UNKNOWN, decoded.id))
          }
          if (decoded.kind !== KIND_ENVELOPE) {
            stats.malformed++
            return Effect.void
          }
          const envelope = decoded.message
          switch (envelope._tag) {
            case "Request":
              return onRequest(envelope)
            case "Ack": {
              const call = calls.get(idKey(envelope.requestId))
              return call === undefined ? Effect.void : Effect.exit(writeRequest(call.clientId, envelope)).pipe(Effect.asVoid)
            }
            case "Interrupt": {
              const call = calls.get(idKey(envelope.requestId))
              if (call === undefined) return Effect.void
              stats.cancelled++
              return cut(call, -1)
            }
            case "Ping":
            case "Eof":
              return Effect.void
            default:
              stats.malformed++
              return Effect.void
          }
        }

        const read: Effect.Effect<never, unknown> = Effect.flatMap(transport.pull, (batch) =>
          Effect.andThen(
            Effect.forEach(batch, onMessage, { discard: true }),
            read
          ))
        yield* Effect.ignore(read)
      })

    const drain = (o?: { readonly timeout?: Duration.Input | undefined }): Effect.Effect<void> =>
      Effect.gen(function*() {
        draining = true
        if (stats.running === 0) Deferred.doneUnsafe(idle, Exit.void)
        yield* Effect.forEach(Array.from(goAways), (goAway) => goAway, { discard: true })
        const timeout = o?.timeout === undefined ? drainTimeout : Duration.fromInputUnsafe(o.timeout)
        yield* Deferred.await(idle).pipe(Effect.timeout(timeout), Effect.ignore)
        for (const call of Array.from(byClient.values())) {
          stats.aborted++
          yield* cut(call, KIND_ABORTED)
        }
      })

    return {
      protocol,
      serve,
      drain,
      stats: Effect.sync((): ServerStats => ({ ...stats }))
    }
  })
