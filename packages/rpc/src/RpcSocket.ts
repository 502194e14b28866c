/**
 * `RpcMessages` over one byte connection (TCP, TLS, a memory pair): every
 * RPC message is sent with a 4-byte big-endian length in front
 * (docs/spec/rpc.md, Calls over a byte connection). This is the carrier for
 * many small unary calls between two processes, the counterpart of
 * effect/rpc's own socket protocol: all calls of a client share one
 * connection and are told apart by request id, a streaming response waits
 * for an Ack per chunk, a cancelled call sends Interrupt.
 *
 * The one thing to know: the client dials its connection itself, and dials
 * again when it was lost or the server sent GOAWAY; calls running on the
 * old connection finish there.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { RpcClient, RpcServer } from "effect/rpc"
import type * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import * as SocketServer from "effect/socket/SocketServer"
import { Delineation, MessageTransport } from "@plexus/core"
import * as RpcMessages from "./RpcMessages.ts"

/**
 * Options of the framing: the largest message accepted, and how long a
 * message may take to arrive once its first byte did.
 *
 * @category models
 * @since 0.1.0
 */
export interface FramingOptions {
  /** Largest message read, header excluded. Default 16 MiB. */
  readonly maxMessageBytes?: number | undefined
  /** Deadline for a message from its first byte. Default 10 s. */
  readonly partialTimeout?: Duration.Input | undefined
}

/**
 * The message transport of a byte connection: length-prefixed messages.
 *
 * @category constructors
 * @since 0.1.0
 */
export const transport = (
  socket: Socket.Socket,
  options?: FramingOptions
): Effect.Effect<MessageTransport.MessageTransport, Socket.SocketError, Scope.Scope> =>
  MessageTransport.fromSocket(
    socket,
    Delineation.lengthPrefix({
      maxMessageSize: options?.maxMessageBytes ?? 16 * 1024 * 1024,
      partialTimeout: options?.partialTimeout ?? "10 seconds"
    })
  )

/**
 * @category models
 * @since 0.1.0
 */
export interface ClientOptions extends RpcMessages.ClientOptions, FramingOptions {
  /** Makes a connection (`Tcp.dial(...)`); called again after a loss or GOAWAY. */
  readonly dial: Effect.Effect<Socket.Socket, unknown, Scope.Scope>
}

/**
 * A client (protocol and counters) over connections it dials itself.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeClient = (options: ClientOptions): Effect.Effect<RpcMessages.Client, never, Scope.Scope> =>
  RpcMessages.makeClient(
    { dial: Effect.flatMap(options.dial, (socket) => transport(socket, options)) },
    { ...options, maxResponseBytes: options.maxResponseBytes ?? options.maxMessageBytes }
  )

/**
 * The client protocol over connections it dials itself.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerClientProtocol = (options: ClientOptions): Layer.Layer<RpcClient.Protocol> =>
  Layer.effect(RpcClient.Protocol, Effect.map(makeClient(options), (client) => client.protocol))

/**
 * @category models
 * @since 0.1.0
 */
export interface ServerOptions extends RpcMessages.ServerOptions, FramingOptions {}

/**
 * The server protocol (and `MessageServer`, for draining and counters)
 * over every connection of the `SocketServer` in context
 * (`Tcp.layerServer`, `Tls.layerServer`).
 *
 * @category layers
 * @since 0.1.0
 */
export const layerServer = (
  options?: ServerOptions
): Layer.Layer<RpcServer.Protocol | RpcMessages.MessageServer, never, SocketServer.SocketServer> =>
  Layer.effectContext(
    Effect.gen(function*() {
      const server = yield* RpcMessages.makeServer(options)
      const sockets = yield* SocketServer.SocketServer
      const framing: FramingOptions = {
        maxMessageBytes: options?.maxMessageBytes ?? options?.maxRequestBytes ?? 4 * 1024 * 1024,
        partialTimeout: options?.partialTimeout
      }
      yield* Effect.forkScoped(Effect.ignore(sockets.run((socket) =>
        Effect.scoped(Effect.flatMap(transport(socket, framing), (t) => server.serve(t))).pipe(Effect.ignore)
      )))
      return Context.make(RpcMessages.MessageServer, server).pipe(Context.add(RpcServer.Protocol, server.protocol))
    })
  )
