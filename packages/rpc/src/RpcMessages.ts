/**
 * effect/rpc over a message carrier (docs/spec/rpc.md, Calls over a message
 * carrier): any core `MessageTransport`, a KCM message socket among them
 * (`RpcKcm`) and a Channels channel without change. Calls share the carrier
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
import { type RpcClient, RpcServer } from "effect/rpc"
import type { FromClientEncoded, FromServerEncoded, RequestEncoded } from "effect/rpc/RpcMessage"
import type * as Scope from "effect/Scope"
import type { MessageTransport } from "@plexus/core"
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
  KIND_REFUSED,
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
}

type Inbound = Decoded<FromServerEncoded> | { readonly kind: "lost"; readonly detail: string }

const defaultSendRetryable = (error: unknown): boolean =>
  typeof error === "object" && error !== null && (error as { retryable?: unknown }).retryable === true

/**
 * The effect/rpc client `Protocol` over a message transport, with its
 * counters. The transport's received messages belong to the protocol.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeClient = <E>(
  transport: MessageTransport.MessageTransport<E>,
  options?: ClientOptions
): Effect.Effect<Client, never, Scope.Scope> =>
  Effect.gen(function*() {
    const ser = yield* serialization
    const codec: Codec<FromServerEncoded, FromClientEncoded> = new Codec(ser)
    const decodeDefect = internalClient.defectDecoder(ser)
    const maxRequest = options?.maxRequestBytes ?? 4 * 1024 * 1024
    const maxResponse = options?.maxResponseBytes ?? 16 * 1024 * 1024
    const sendRetryable = options?.sendRetryable ?? defaultSendRetryable
    const calls = new Map<string, Queue.Queue<Inbound>>()
    const stats = { unmatched: 0, malformed: 0, goAways: 0 }
    let lost: string | undefined

    // One reader routes every message to its call's mailbox, never waiting
    // on a call: a slow consumer holds only its own mailbox (one chunk,
    // since the server waits for the Ack).
    const route = (message: Uint8Array) => {
      if (message.length > maxResponse) {
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
    yield* Effect.forkScoped(
      Effect.onExit(read, (exit) =>
        Effect.sync(() => {
          lost = Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)
            ? (Cause.isDone(Cause.squash(exit.cause)) ? "the carrier ended" : String(Cause.squash(exit.cause)))
            : "the client closed"
          for (const mailbox of calls.values()) Queue.offerUnsafe(mailbox, { kind: "lost", detail: lost })
        }))
    )

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
        if (bytes.length > maxRequest) {
          return Effect.fail(
            new RpcTransportError({ reason: new MessageTooLarge({ size: bytes.length, max: maxRequest }), retryable: true })
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
                return Effect.die(defect !== undefined && defect._tag === "Defect" ? decodeDefect(defect.defect) : "a defect")
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
              default:
                return loop
            }
          })
          const run = Effect.andThen(
            Effect.mapError(transport.send(bytes), (error) => {
              const retryable = sendRetryable(error)
              return new RpcTransportError({
                reason: retryable
                  ? new NotSent({ detail: String(error), cause: error })
                  : new ConnectionLost({ detail: String(error), cause: error }),
                retryable
              })
            }),
            Effect.suspend(() => {
              sent = true
              return loop
            })
          )
          return Effect.onExit(run, (exit) => {
            calls.delete(key)
            // A call given up on tells the server, which interrupts the handler.
            if (sent && !finished && Exit.isFailure(exit)) return Effect.forkDetach(interruptOnWire(request.id))
            return Effect.void
          })
        })
      })

    const protocol = yield* internalClient.makeProtocol(ser, options, {
      attempt,
      supportsAck: true,
      ack: (requestId) => Effect.ignore(transport.send(codec.encode({ _tag: "Ack", requestId }))),
      interrupt: (requestId) => calls.has(idKey(requestId)) ? interruptOnWire(requestId) : Effect.void
    })
    return {
      protocol,
      stats: Effect.sync((): ClientStats => ({ ...stats, pending: calls.size }))
    }
  })

/**
 * The client protocol alone.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeClientProtocol = <E>(
  transport: MessageTransport.MessageTransport<E>,
  options?: ClientOptions
): Effect.Effect<RpcClient.Protocol["Service"], never, Scope.Scope> =>
  Effect.map(makeClient(transport, options), (client) => client.protocol)

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
      aborted: 0
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
