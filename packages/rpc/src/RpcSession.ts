/**
 * effect/rpc over a plexus `Session`: one stream per call
 * (docs/spec/rpc.md, Calls over a session). A cancelled or timed-out call
 * resets its stream and the server interrupts its handler; a streaming
 * response is flow controlled by its stream's window; calls never wait for
 * each other. Deadlines travel in the `plexus-timeout` header and the server
 * enforces them.
 *
 * The client protocol runs over one session, or dials sessions itself and
 * dials again when one goes away; a call the server provably never started
 * goes out again, on a new session when the old one went away. The server
 * protocol serves the RPC streams of any number of sessions; `drain` sends
 * GO_AWAY on all of them and lets running calls finish until a deadline.
 *
 * The one thing to know: both sides need the same `RpcSerialization` (the
 * one in context, or schema-binary when none is).
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import { RpcClient, RpcSerialization, RpcServer } from "effect/rpc"
import { constEof, type FromClientEncoded, type FromServerEncoded, type RequestEncoded } from "effect/rpc/RpcMessage"
import * as Scope from "effect/Scope"
import * as Semaphore from "effect/Semaphore"
import type * as Socket from "effect/socket/Socket"
import * as SocketServer from "effect/socket/SocketServer"
import { MuxStream, Session, type SessionError } from "@plexus/core"
import { withByteChunks } from "./internal/byteChunks.ts"
import * as internalClient from "./internal/client.ts"
import * as FramedStream from "./internal/framedStream.ts"
import { resolveLimits } from "./internal/serverLimits.ts"
import {
  Codec,
  CODE_DEADLINE_EXCEEDED,
  CODE_MESSAGE_TOO_LARGE,
  chunkOf,
  control,
  idKey,
  KIND_ABORTED,
  KIND_CHUNK,
  KIND_DEADLINE,
  KIND_DEFECT,
  KIND_ENVELOPE,
  KIND_REFUSED
} from "./internal/wire.ts"
import {
  ConnectionLost,
  DeadlineExceeded,
  MessageTooLarge,
  NotSent,
  ProtocolViolation,
  Refused,
  RpcTransportError
} from "./RpcTransportError.ts"

/**
 * The stream type of RPC streams over a plexus session ("RP").
 *
 * @category constants
 * @since 0.1.0
 */
export const STREAM_TYPE = 0x5250

/**
 * Reset codes of the application range (spec: Reset codes used).
 *
 * @category constants
 * @since 0.1.0
 */
export const Code = {
  DEADLINE_EXCEEDED: CODE_DEADLINE_EXCEEDED,
  MESSAGE_TOO_LARGE: CODE_MESSAGE_TOO_LARGE
} as const

/** The serialization in context, or schema-binary. */
export const serialization: Effect.Effect<RpcSerialization.RpcSerialization["Service"]> = Effect.flatMap(
  Effect.serviceOption(RpcSerialization.RpcSerialization),
  Option.match({
    onSome: Effect.succeed,
    onNone: () => Effect.provide(RpcSerialization.RpcSerialization, RpcSerialization.layerSchemaBinary())
  })
)

// Client ----------------------------------------------------------------------

/**
 * @category models
 * @since 0.1.0
 */
export interface ClientOptions extends internalClient.ClientOptions {
  /** Stream type of calls (plexus codec). Default `STREAM_TYPE`; 0 opens untyped streams. */
  readonly streamType?: number | undefined
  /** Urgency of call streams, 0 (most) … 7. Default 3. */
  readonly urgency?: number | undefined
}

/**
 * Where a client's sessions come from: one fixed session, or a dial that
 * makes a new one when the last went away or failed.
 *
 * @category models
 * @since 0.1.0
 */
export type SessionSource =
  | Session.Session
  | { readonly dial: Effect.Effect<Session.Session, unknown, Scope.Scope> }

interface Sessions {
  readonly get: Effect.Effect<Session.Session, RpcTransportError>
  readonly invalidate: (session: Session.Session) => void
}

const fixedSessions = (session: Session.Session): Sessions => ({
  get: Effect.succeed(session),
  invalidate: () => {}
})

const dialSessions = (
  dial: Effect.Effect<Session.Session, unknown, Scope.Scope>
): Effect.Effect<Sessions, never, Scope.Scope> =>
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    const lock = yield* Semaphore.make(1)
    let current: { readonly session: Session.Session; readonly scope: Scope.Closeable } | undefined
    const retire = (entry: { readonly session: Session.Session; readonly scope: Scope.Closeable }) =>
      // Calls still running on it finish first: a session that went away
      // ends by itself once its streams are done.
      Effect.runFork(Effect.andThen(Effect.ignore(entry.session.closed), Scope.close(entry.scope, Exit.void)))
    const get = Effect.suspend(() => {
      if (current !== undefined) return Effect.succeed(current.session)
      return Semaphore.withPermit(
        lock,
        Effect.suspend(() => {
          if (current !== undefined) return Effect.succeed(current.session)
          return Effect.gen(function*() {
            const child = yield* Scope.fork(scope)
            const exit = yield* Effect.exit(Scope.provide(dial, child))
            if (Exit.isFailure(exit)) {
              yield* Scope.close(child, Exit.void)
              return yield* Effect.fail(
                new RpcTransportError({
                  reason: new NotSent({ detail: "no session could be dialled", cause: exit.cause }),
                  retryable: true
                })
              )
            }
            const entry = { session: exit.value, scope: child }
            current = entry
            // A session that ends is not handed out again.
            yield* Effect.forkIn(
              Effect.andThen(Effect.ignore(exit.value.closed), Effect.sync(() => invalidate(exit.value))),
              child
            )
            return exit.value
          })
        })
      )
    })
    const invalidate = (session: Session.Session) => {
      if (current === undefined || current.session !== session) return
      const entry = current
      current = undefined
      retire(entry)
    }
    return { get, invalidate }
  })

const notSent = (detail: string, cause?: unknown) =>
  new RpcTransportError({ reason: new NotSent({ detail, cause }), retryable: true })

const openFailure = (error: SessionError.SessionError): RpcTransportError =>
  // An open that failed never left this side.
  error.reason._tag === "GoneAway"
    ? new RpcTransportError({
      reason: new Refused({ detail: error.reason.message, code: error.reason.code }),
      retryable: true
    })
    : notSent(error.message, error)

const streamFailure = (error: Socket.SocketError, timeout: number | undefined, size: number): RpcTransportError => {
  const typed = MuxStream.streamError(error)
  if (typed === undefined) {
    return new RpcTransportError({ reason: new ConnectionLost({ detail: error.message, cause: error }), retryable: false })
  }
  const reason = typed.reason
  switch (reason._tag) {
    case "StreamRefused":
      return new RpcTransportError({ reason: new Refused({ detail: reason.message, code: reason.code }), retryable: true })
    case "StreamReset": {
      if (reason.byPeer && reason.code === CODE_DEADLINE_EXCEEDED) {
        return new RpcTransportError({
          reason: new DeadlineExceeded({ timeoutMillis: timeout ?? 0, byServer: true }),
          retryable: false
        })
      }
      // Above the last stream id of the peer's GO_AWAY, or refused: never processed.
      if (typed.retryable || (reason.byPeer && reason.code === Session.Code.REFUSED_STREAM)) {
        return new RpcTransportError({ reason: new Refused({ detail: reason.message, code: reason.code }), retryable: true })
      }
      if (reason.byPeer && reason.code === CODE_MESSAGE_TOO_LARGE) {
        // Rejected before it was read: never processed, but sending it again cannot help.
        return new RpcTransportError({ reason: new MessageTooLarge({ size, max: 0 }), retryable: true })
      }
      return new RpcTransportError({
        reason: new ConnectionLost({ detail: typed.message, code: reason.code }),
        retryable: typed.retryable
      })
    }
    case "SessionEnded":
      return typed.retryable
        ? new RpcTransportError({ reason: new Refused({ detail: typed.message }), retryable: true })
        : new RpcTransportError({ reason: new ConnectionLost({ detail: typed.message }), retryable: false })
  }
}

const violation = (detail: string) =>
  new RpcTransportError({ reason: new ProtocolViolation({ detail }), retryable: false })

/**
 * The effect/rpc client `Protocol` over sessions: each call opens a stream.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeClientProtocol = (
  source: SessionSource,
  options?: ClientOptions
): Effect.Effect<RpcClient.Protocol["Service"], never, Scope.Scope> =>
  Effect.gen(function*() {
    const ser = yield* serialization
    const sessions = Session.isSession(source) ? fixedSessions(source) : yield* dialSessions(source.dial)
    const maxRequest = options?.maxRequestBytes ?? 4 * 1024 * 1024
    const maxResponse = options?.maxResponseBytes ?? 16 * 1024 * 1024
    const streamType = options?.streamType ?? STREAM_TYPE
    const urgency = options?.urgency ?? 3
    const decodeDefect = internalClient.defectDecoder(ser)
    // Shared by every call, as on the server: each message is whole and
    // read at once, so no call leaves anything in the parser for another.
    const codec: Codec<FromServerEncoded, FromClientEncoded> = new Codec(ser)

    const attempt: internalClient.Attempt = (request, deliver, timeout) =>
      Effect.scoped(Effect.gen(function*() {
        const bytes = codec.encode(request)
        if (bytes.length > maxRequest) {
          return yield* Effect.fail(
            new RpcTransportError({ reason: new MessageTooLarge({ size: bytes.length, max: maxRequest }), retryable: true })
          )
        }
        const session = yield* sessions.get
        const stream = yield* session.open({ type: session.codec === "yamux" ? 0 : streamType, urgency }).pipe(
          Effect.mapError((error) => {
            if (error.reason._tag !== "OpenTimeout") sessions.invalidate(session)
            return openFailure(error)
          })
        )
        let finished = false
        const failed = (error: RpcTransportError) => {
          if (error.reason._tag === "Refused" || error.reason._tag === "ConnectionLost") {
            // A session that refuses or loses calls is going away or gone.
            if (error.reason._tag === "Refused" || error.reason.code === undefined) sessions.invalidate(session)
          }
          return Effect.fail(error)
        }
        const run = Effect.gen(function*() {
          const framed = yield* FramedStream.make(stream, maxResponse).pipe(
            Effect.mapError((error) => streamFailure(error, timeout, bytes.length))
          )
          // The request and its FIN go out together: the server learns of a
          // cancellation from the reset, which still reaches it after the FIN
          // (spec: Calls over a session).
          yield* framed.send(bytes).pipe(Effect.mapError((error) => streamFailure(error, timeout, bytes.length)))
          yield* stream.closeWrite
          while (true) {
            const next = yield* Effect.result(framed.next)
            if (next._tag === "Failure") {
              const failure = next.failure
              if (failure._tag === "Stream") return yield* failed(streamFailure(failure.error, timeout, bytes.length))
              if (failure._tag === "TooLarge") {
                yield* stream.reset(CODE_MESSAGE_TOO_LARGE)
                return yield* Effect.fail(
                  new RpcTransportError({
                    reason: new MessageTooLarge({ size: failure.size, max: failure.max }),
                    retryable: false
                  })
                )
              }
              yield* stream.reset(Session.Code.PROTOCOL_ERROR)
              return yield* Effect.fail(violation(failure.detail))
            }
            const message = next.success
            if (message === undefined) return yield* Effect.fail(violation("the stream ended without an Exit"))
            const decoded = codec.decode(message)
            switch (decoded.kind) {
              case KIND_ENVELOPE: {
                const envelope = decoded.message
                if (envelope._tag === "Chunk") {
                  yield* deliver(envelope)
                  continue
                }
                if (envelope._tag === "Exit") {
                  finished = true
                  return yield* deliver(envelope)
                }
                continue
              }
              case KIND_CHUNK: {
                yield* deliver(chunkOf(request.id, decoded.tail))
                continue
              }
              case KIND_DEFECT: {
                finished = true
                const defect = codec.decodeTail(decoded.tail)
                return yield* Effect.die(defect !== undefined && defect._tag === "Defect" ? decodeDefect(defect.defect) : "a defect")
              }
              case KIND_DEADLINE:
              case KIND_ABORTED:
                return yield* Effect.fail(internalClient.endedByServer(decoded.kind, timeout))
              case KIND_REFUSED:
                return yield* failed(internalClient.endedByServer(KIND_REFUSED, timeout))
              default: {
                yield* stream.reset(Session.Code.PROTOCOL_ERROR)
                return yield* Effect.fail(violation(decoded.kind === "malformed" ? decoded.detail : "GOAWAY on a stream"))
              }
            }
          }
        })
        // A call given up on (interrupted, failed) resets its stream: the
        // server interrupts the handler.
        return yield* Effect.onExit(run, () => finished ? Effect.void : stream.reset(Session.Code.CANCEL))
      }))

    return yield* internalClient.makeProtocol(ser, options, {
      attempt,
      supportsAck: false,
      ack: () => Effect.void,
      interrupt: () => Effect.void
    })
  })

/**
 * The client protocol over the session in context.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerClientProtocol = (
  options?: ClientOptions
): Layer.Layer<RpcClient.Protocol, never, Session.SessionService> =>
  Layer.effect(
    RpcClient.Protocol,
    Effect.flatMap(Session.SessionService, (session) => makeClientProtocol(session, options))
  )

/**
 * The client protocol over sessions it dials itself (`Tcp.dial`,
 * `Tls.dial`, a memory pair): a new one whenever the last went away.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerClientProtocolDial = (
  options: ClientOptions & {
    readonly dial: Effect.Effect<Socket.Socket, unknown, Scope.Scope>
    readonly session?: Omit<Session.Options, "role"> | undefined
  }
): Layer.Layer<RpcClient.Protocol> =>
  Layer.effect(
    RpcClient.Protocol,
    makeClientProtocol({
      dial: Effect.flatMap(options.dial, (socket) => Session.make(socket, { ...options.session, role: "client" }))
    }, options)
  )

// Server ----------------------------------------------------------------------

/**
 * @category models
 * @since 0.1.0
 */
export interface ServerOptions {
  /** Stream type served (plexus codec). Default `STREAM_TYPE`; 0 serves untyped streams. */
  readonly streamType?: number | undefined
  /** Largest request message. Default 4 MiB. */
  readonly maxRequestBytes?: number | undefined
  /** Calls running at once; more are refused (REFUSED_STREAM). Default 10,000. */
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
  /** Calls whose answer is not yet sent. */
  readonly running: number
  /** Calls started since the server began. */
  readonly started: number
  /** Streams refused (draining, over `maxConcurrentCalls`). */
  readonly refused: number
  /** Calls ended at their deadline. */
  readonly deadlines: number
  /** Calls cancelled by the client (stream reset). */
  readonly cancelled: number
  /** Streams reset for breaking the protocol. */
  readonly malformed: number
  /** Requests over `maxRequestBytes`. */
  readonly oversized: number
}

/**
 * @category models
 * @since 0.1.0
 */
export interface Server {
  readonly protocol: RpcServer.Protocol["Service"]
  /**
   * Serves the RPC streams of a session from now on, for as long as the
   * calling Scope is open: the session's RPC streams are routed to this
   * server before `attach` returns.
   */
  readonly attach: (session: Session.Session) => Effect.Effect<void, never, Scope.Scope>
  /** `attach`, then waits until the session ends. */
  readonly serve: (session: Session.Session) => Effect.Effect<void, never, Scope.Scope>
  /**
   * Stops taking calls: GO_AWAY on every session served; running calls
   * finish until the deadline (default `drainTimeout`), then are reset.
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
export class SessionServer extends Context.Service<SessionServer, Server>()("@plexus/rpc/RpcSession/SessionServer") {}

interface Call {
  readonly stream: MuxStream.MuxStream
  readonly framed: FramedStream.FramedStream
  readonly requestId: string | number
  /** The answer (Exit, DEFECT, FIN, or a reset of the server's own) is out. */
  answered: boolean
  /** The call's fiber while it waits for the stream to fail; interrupted once the call is answered. */
  waiter: Fiber.Fiber<unknown, unknown> | undefined
}

/**
 * A server protocol whose calls come from the sessions handed to `serve`.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeServer = (options?: ServerOptions): Effect.Effect<Server, never, Scope.Scope> =>
  Effect.gen(function*() {
    const ser = yield* serialization
    const codec: Codec<FromClientEncoded, FromServerEncoded> = new Codec(ser)
    const streamType = options?.streamType ?? STREAM_TYPE
    const { deadlineOf, drainTimeout, maxCalls, maxRequest } = resolveLimits(options)

    const disconnects = yield* Queue.make<number>()
    const calls = new Map<number, Call>()
    const clientIds = new Set<number>()
    const sessions = new Set<Session.Session>()
    let nextClientId = 0
    let draining = false
    const stats = { running: 0, started: 0, refused: 0, deadlines: 0, cancelled: 0, malformed: 0, oversized: 0 }
    let writeRequest!: (clientId: number, message: FromClientEncoded) => Effect.Effect<void>

    // Ends the call's wait: its fiber, waiting on `stream.failed` (which a
    // clean end never completes), is interrupted, and its scope lets the
    // stream finish.
    const settle = (call: Call): void => {
      if (call.answered) return
      call.answered = true
      const waiter = call.waiter
      if (waiter === undefined) return
      call.waiter = undefined
      waiter.interruptUnsafe()
    }

    const answer = (call: Call, bytes: Uint8Array): Effect.Effect<void> =>
      Effect.andThen(
        Effect.ignore(call.framed.send(bytes)),
        Effect.andThen(call.stream.closeWrite, Effect.sync(() => settle(call)))
      )

    const send = (clientId: number, response: FromServerEncoded): Effect.Effect<void> =>
      Effect.suspend(() => {
        const call = calls.get(clientId)
        if (call === undefined) return Effect.void
        let bytes: Uint8Array
        try {
          if (response._tag === "Chunk") {
            // Values already in bytes leave as they are (spec: CHUNK).
            const parts = codec.chunkParts(response)
            if (parts !== undefined) return Effect.ignore(call.framed.sendParts(parts))
          }
          switch (response._tag) {
            case "Chunk":
            case "Exit":
              bytes = codec.encode(response)
              break
            case "Defect":
              bytes = control(KIND_DEFECT, idKey(call.requestId), codec.serialize(response))
              break
            default:
              return Effect.void
          }
        } catch {
          // Settled first: this reset is the answer, not a cancellation.
          settle(call)
          return call.stream.reset(Session.Code.INTERNAL_ERROR)
        }
        // A chunk waits while the stream's window is closed: that is the
        // flow control of a streaming response. A failed write means the
        // stream is gone; the reset that ended it interrupts the handler.
        if (response._tag === "Chunk") return Effect.ignore(call.framed.send(bytes))
        return answer(call, bytes)
      })

    const end = (clientId: number): Effect.Effect<void> =>
      Effect.suspend(() => {
        const call = calls.get(clientId)
        if (call === undefined) return Effect.void
        return Effect.andThen(call.stream.closeWrite, Effect.sync(() => settle(call)))
      })

    const protocol = yield* RpcServer.Protocol.make((write) => {
      writeRequest = write
      return Effect.succeed({
        disconnects,
        send,
        end,
        clientIds: Effect.sync(() => clientIds),
        initialMessage: Effect.succeedNone,
        supportsAck: false,
        supportsTransferables: false,
        supportsSpanPropagation: true,
        supportsNotifications: false,
        // Byte chunks leave by reference (spec: CHUNK).
        codecFor: withByteChunks(ser, { byReference: true }).codecFor
      })
    })

    const refuse = (stream: MuxStream.MuxStream, code: number) =>
      Effect.suspend(() => {
        if (code === Session.Code.REFUSED_STREAM) stats.refused++
        else if (code === CODE_MESSAGE_TOO_LARGE) stats.oversized++
        else stats.malformed++
        return stream.reset(code)
      })

    const onStream = (stream: MuxStream.MuxStream): Effect.Effect<void, never, Scope.Scope> =>
      Effect.gen(function*() {
        if (draining || stats.running >= maxCalls) return yield* refuse(stream, Session.Code.REFUSED_STREAM)
        const opened = yield* Effect.result(FramedStream.make(stream, maxRequest))
        if (opened._tag === "Failure") return
        const framed = opened.success
        const first = yield* Effect.result(framed.next)
        if (first._tag === "Failure") {
          const failure = first.failure
          if (failure._tag === "TooLarge") return yield* refuse(stream, CODE_MESSAGE_TOO_LARGE)
          if (failure._tag === "Malformed") return yield* refuse(stream, Session.Code.PROTOCOL_ERROR)
          return
        }
        if (first.success === undefined) return yield* refuse(stream, Session.Code.PROTOCOL_ERROR)
        const decoded = codec.decode(first.success)
        if (decoded.kind !== KIND_ENVELOPE || decoded.message._tag !== "Request") {
          return yield* refuse(stream, Session.Code.PROTOCOL_ERROR)
        }
        const request: RequestEncoded = decoded.message
        if (typeof request.id !== "string" && typeof request.id !== "number") {
          return yield* refuse(stream, Session.Code.PROTOCOL_ERROR)
        }
        // Checked again: the request may have taken a while to arrive.
        if (draining || stats.running >= maxCalls) return yield* refuse(stream, Session.Code.REFUSED_STREAM)

        const clientId = nextClientId++
        const call: Call = { stream, framed, requestId: request.id, answered: false, waiter: undefined }
        calls.set(clientId, call)
        clientIds.add(clientId)
        stats.running++
        stats.started++
        const timeout = deadlineOf(request.headers)

        // The request is all the client sends: the server neither waits for
        // its FIN (a client may send it only after the Exit) nor reads what
        // follows. A reset, before or after that FIN, means the client gave
        // up on the call; `stream.failed` tells of it, and of a session that
        // ended, in this fiber, with no read of the stream kept waiting.
        yield* Effect.gen(function*() {
          const accepted = yield* Effect.exit(writeRequest(clientId, request))
          if (Exit.isFailure(accepted)) {
            call.answered = true
            return yield* call.stream.reset(Session.Code.REFUSED_STREAM)
          }
          yield* Effect.exit(writeRequest(clientId, constEof))
          if (call.answered) return
          if (timeout !== undefined) {
            // Its reset ends the wait below as any failure does; a child of
            // this fiber, it ends with the call.
            yield* Effect.forkChild(
              Effect.andThen(Effect.sleep(Duration.millis(timeout)), stream.reset(CODE_DEADLINE_EXCEEDED))
            )
          }
          const failure = yield* Effect.withFiber((fiber) => {
            call.waiter = fiber
            return stream.failed
          })
          call.waiter = undefined
          const reason = failure.reason
          if (reason._tag === "StreamReset" && !reason.byPeer && reason.code === CODE_DEADLINE_EXCEEDED) stats.deadlines++
          else stats.cancelled++
          // The server interrupts the handler of a disconnected client.
          Queue.offerUnsafe(disconnects, clientId)
        }).pipe(
          Effect.onExit(() =>
            Effect.sync(() => {
              // Interrupted while the handler runs (the session's handlers
              // are stopping): the handler is stopped too.
              if (call.waiter !== undefined) Queue.offerUnsafe(disconnects, clientId)
              stats.running--
              calls.delete(clientId)
              clientIds.delete(clientId)
            })
          )
        )
      })

    const attach = (session: Session.Session): Effect.Effect<void, never, Scope.Scope> =>
      Effect.gen(function*() {
        sessions.add(session)
        yield* Effect.addFinalizer(() => Effect.sync(() => sessions.delete(session)))
        if (streamType !== 0 && session.codec === "plexus") {
          yield* session.handle(streamType, onStream)
        } else {
          yield* Effect.forkScoped(
            Effect.ignore(session.run((socket) => onStream(socket as unknown as MuxStream.MuxStream)))
          )
        }
      })

    const drain = (o?: { readonly timeout?: Duration.Input | undefined }): Effect.Effect<void> =>
      Effect.suspend(() => {
        draining = true
        const timeout = o?.timeout === undefined ? drainTimeout : Duration.fromInputUnsafe(o.timeout)
        return Effect.forEach(Array.from(sessions), (session) => session.close({ drain: timeout }), {
          concurrency: "unbounded",
          discard: true
        })
      })

    return {
      protocol,
      attach,
      serve: (session) => Effect.andThen(attach(session), Effect.ignore(session.closed)),
      drain,
      stats: Effect.sync((): ServerStats => ({ ...stats }))
    }
  })

/**
 * The server protocol (and `SessionServer`) over the session in context.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerServerProtocol = (
  options?: ServerOptions
): Layer.Layer<RpcServer.Protocol | SessionServer, never, Session.SessionService> =>
  layerFrom(
    Effect.gen(function*() {
      const server = yield* makeServer(options)
      yield* server.attach(yield* Session.SessionService)
      return server
    })
  )

/**
 * The server protocol (and `SessionServer`) over every connection of the
 * `SocketServer` in context (`Tcp.layerServer`, `Tls.layerServer`): each
 * runs a server session whose RPC streams are calls.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerServer = (
  options?: ServerOptions & { readonly session?: Omit<Session.Options, "role"> | undefined }
): Layer.Layer<RpcServer.Protocol | SessionServer, never, SocketServer.SocketServer> =>
  layerFrom(
    Effect.gen(function*() {
      const server = yield* makeServer(options)
      const sockets = yield* SocketServer.SocketServer
      yield* Effect.forkScoped(Effect.ignore(sockets.run((socket) =>
        Effect.scoped(
          Effect.flatMap(Session.make(socket, { ...options?.session, role: "server" }), (session) => server.serve(session))
        ).pipe(Effect.ignore)
      )))
      return server
    })
  )

const layerFrom = <E, R>(
  make: Effect.Effect<Server, E, R | Scope.Scope>
): Layer.Layer<RpcServer.Protocol | SessionServer, E, Exclude<R, Scope.Scope>> =>
  Layer.effectContext(
    Effect.map(make, (server) =>
      Context.make(SessionServer, server).pipe(Context.add(RpcServer.Protocol, server.protocol)))
  )
