/**
 * effect/rpc over Channels (docs/spec/rpc.md, Calls over channels): the
 * client opens a channel labelled for RPC on a Channels connection and runs
 * the message-carrier protocol (`RpcMessages`) on it; the server serves
 * every such channel the peers of its connections open. Over a WebSocket
 * this is how a page calls services: `layerClientWs({ url })` dials (the
 * secondary handshake when asked, which is how a browser offers
 * extensions and credentials), starts Channels and opens the channel.
 *
 * The one thing to know: this module imports nothing from Node, so the
 * client bundles for a page; the server's `layerServerWs`, which listens on
 * a port, is in `NodeRpcChannels`. A client dials again when its channel or
 * connection is lost or the server drains (GOAWAY): calls running on the old
 * one finish there, new ones go out on the new one.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import { RpcClient, RpcServer } from "effect/rpc"
import * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import { ChannelError, Channels, MessageTransport } from "@plexus/core"
import type { WsServer } from "@plexus/transport-ws"
import { Ws, type WsConnection, type WsError } from "@plexus/transport-ws/browser"
import * as RpcMessages from "./RpcMessages.ts"

/**
 * The label of the channels that carry calls (spec: Calls over channels).
 *
 * @category constants
 * @since 0.1.0
 */
export const LABEL = "plexus-rpc.v1"

/**
 * The WebSocket sub-protocol a client offers and a server selects unless
 * told otherwise.
 *
 * @category constants
 * @since 0.1.0
 */
export const PROTOCOL = "plexus-rpc.v1"

/**
 * The DESTROY code of a channel the server will not serve: channel 0, or a
 * label other than the server's.
 *
 * @category constants
 * @since 0.1.0
 */
export const REFUSED: number = ChannelError.Code.REFUSED

const KNOWN_EXTENSIONS: ReadonlyArray<Channels.Extension> = ["fanout", "encryption"]

const extensionsOf = (negotiated: ReadonlyArray<string> | undefined): ReadonlyArray<Channels.Extension> =>
  (negotiated ?? []).filter((e): e is Channels.Extension => (KNOWN_EXTENSIONS as ReadonlyArray<string>).includes(e))

// Client ----------------------------------------------------------------------

/**
 * @category models
 * @since 0.1.0
 */
export interface ClientOptions extends RpcMessages.ClientOptions {
  /** Label of the call channel. Default `LABEL`. */
  readonly label?: string | undefined
  /** Other options of the call channel (extra credit, encryption). */
  readonly open?: Omit<Channels.OpenOptions, "label"> | undefined
}

/** A send the channel refused before queueing anything: the message never left. */
class NotQueued {
  readonly _tag = "NotQueued"
  readonly retryable = true
  readonly error: ChannelError.ChannelError
  constructor(error: ChannelError.ChannelError) {
    this.error = error
  }
  toString(): string {
    return this.error.message
  }
}

/**
 * Opens a call channel on a connection, as a message transport closed with
 * the Scope. A send on a channel that already failed fails without queueing
 * anything, with an error whose `retryable` is true.
 *
 * @category constructors
 * @since 0.1.0
 */
export const openChannel = (
  channels: Channels.Channels,
  options?: Pick<ClientOptions, "label" | "open"> | undefined
): Effect.Effect<MessageTransport.MessageTransport<unknown>, ChannelError.ChannelError, Scope.Scope> =>
  Effect.map(
    channels.open({ ...options?.open, label: options?.label ?? LABEL }),
    (channel) => {
      const checked = <A>(effect: Effect.Effect<A, ChannelError.ChannelError>) =>
        Effect.flatMap(
          channel.failure,
          (failure): Effect.Effect<A, ChannelError.ChannelError | NotQueued> =>
            failure === undefined ? effect : Effect.fail(new NotQueued(failure))
        )
      return MessageTransport.make<ChannelError.ChannelError | NotQueued>({
        send: (message) => checked(channel.send(message)),
        sendAll: (messages) => checked(channel.sendAll(messages)),
        pull: channel.pull,
        close: channel.close
      })
    }
  )

/**
 * The client over a Channels connection: it opens a call channel, and opens
 * another when that one is lost or its server goes away.
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeClient = (
  channels: Channels.Channels,
  options?: ClientOptions
): Effect.Effect<RpcMessages.Client, never, Scope.Scope> =>
  RpcMessages.makeClient({ dial: openChannel(channels, options) }, options)

/**
 * @category constructors
 * @since 0.1.0
 */
export const makeClientProtocol = (
  channels: Channels.Channels,
  options?: ClientOptions
): Effect.Effect<RpcClient.Protocol["Service"], never, Scope.Scope> =>
  Effect.map(makeClient(channels, options), (client) => client.protocol)

/**
 * The client protocol over a given Channels connection.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerClientProtocol = (
  channels: Channels.Channels,
  options?: ClientOptions
): Layer.Layer<RpcClient.Protocol> => Layer.effect(RpcClient.Protocol, makeClientProtocol(channels, options))

/**
 * A client that dials a WebSocket: `Ws.DialOptions` (the url, the secondary
 * handshake with its credentials, a connector), the Channels options of the
 * connection, and the client's own.
 *
 * @category models
 * @since 0.1.0
 */
export interface WsClientOptions extends ClientOptions, Omit<Ws.DialOptions, "protocols"> {
  /** Sub-protocols to offer. Default `[PROTOCOL]`. */
  readonly protocols?: ReadonlyArray<string> | undefined
  /** Options of the Channels connection (role and extensions come from the handshake). */
  readonly channels?: Omit<Channels.Options, "role" | "extensions"> | undefined
}

/**
 * Dials one WebSocket, starts Channels on it and opens a call channel; all
 * of it lives in the Scope.
 *
 * @category constructors
 * @since 0.1.0
 */
export const dialWs = (
  options: WsClientOptions
): Effect.Effect<MessageTransport.MessageTransport<unknown>, Socket.SocketError | WsError.WsError | ChannelError.ChannelError, Scope.Scope> =>
  Effect.gen(function*() {
    const connection = yield* Ws.dial({
      ...options,
      protocols: options.protocols ?? [PROTOCOL],
      // Channels are what is spoken: offer them even without extensions.
      channelExtensions: options.channelExtensions ?? []
    })
    const channels = yield* connectionChannels(connection, "client", options.channels)
    return yield* openChannel(channels, options)
  })

/**
 * The client over WebSockets it dials itself (lazily, at the first call;
 * again when the connection is lost or the server drains).
 *
 * @category constructors
 * @since 0.1.0
 */
export const makeClientWs = (options: WsClientOptions): Effect.Effect<RpcMessages.Client, never, Scope.Scope> =>
  RpcMessages.makeClient({ dial: dialWs(options) }, options)

/**
 * The client protocol over WebSockets, for a page or for Node (pass
 * `NodeWs.connector` as `connector` there to offer extensions in the
 * opening handshake).
 *
 * @category layers
 * @since 0.1.0
 */
export const layerClientWs = (options: WsClientOptions): Layer.Layer<RpcClient.Protocol> =>
  Layer.effect(RpcClient.Protocol, Effect.map(makeClientWs(options), (client) => client.protocol))

const connectionChannels = (
  connection: WsConnection.WsConnection,
  role: "client" | "server",
  options: Omit<Channels.Options, "role" | "extensions"> | undefined
): Effect.Effect<Channels.Channels, Socket.SocketError, Scope.Scope> =>
  Effect.flatMap(connection.messages, (transport) =>
    Channels.make(transport, {
      ...options,
      role,
      extensions: extensionsOf(connection.negotiated.channelExtensions)
    }))

// Server ----------------------------------------------------------------------

/**
 * @category models
 * @since 0.1.0
 */
export interface ServerOptions extends RpcMessages.ServerOptions {
  /** Label of the channels served. Default `LABEL`. */
  readonly label?: string | undefined
}

/**
 * Serves the calls of one Channels connection until it ends: every channel
 * the peer opens with the label runs calls; channel 0, and channels with
 * another label, are destroyed with `REFUSED` at their first message (or at
 * once), and the connection goes on.
 *
 * @category constructors
 * @since 0.1.0
 */
export const serve = (
  server: RpcMessages.Server,
  channels: Channels.Channels,
  options?: Pick<ServerOptions, "label"> | undefined
): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function*() {
    const label = options?.label ?? LABEL
    const scope = yield* Effect.scope
    const zero = channels.defaultChannel
    // Channel 0 carries no calls: a peer that writes there is told so.
    yield* Effect.forkScoped(
      Effect.ignore(Effect.andThen(zero.pull, zero.abort(REFUSED, `calls go on channels labelled ${label}`)))
    )
    const acceptOne = Effect.gen(function*() {
      const child = yield* Scope.fork(scope)
      const exit = yield* Effect.exit(Scope.provide(channels.accept, child))
      if (Exit.isFailure(exit)) {
        yield* Scope.close(child, Exit.void)
        return false
      }
      const channel = exit.value
      if (channel.label !== label) {
        yield* channel.abort(REFUSED, `no service on ${JSON.stringify(channel.label.slice(0, 64))}`)
        yield* Scope.close(child, Exit.void)
        return true
      }
      yield* Effect.forkIn(
        server.serve(channel).pipe(Scope.provide(child), Effect.ensuring(Scope.close(child, Exit.void))),
        scope
      )
      return true
    })
    yield* Effect.forkScoped(repeatWhileTrue(acceptOne))
    yield* Effect.ignore(channels.closed)
  }).pipe(Effect.scoped)

/**
 * The server protocol (and `MessageServer`, for draining and counters)
 * over one given Channels connection.
 *
 * @category layers
 * @since 0.1.0
 */
export const layerServer = (
  channels: Channels.Channels,
  options?: ServerOptions
): Layer.Layer<RpcServer.Protocol | RpcMessages.MessageServer> =>
  layerFrom(Effect.gen(function*() {
    const server = yield* RpcMessages.makeServer(options)
    yield* Effect.forkScoped(serve(server, channels, options))
    return server
  }))

/**
 * @category models
 * @since 0.1.0
 */
export interface WsServerOptions extends ServerOptions {
  /** Options of each Channels connection (role and extensions come from the handshake). */
  readonly channels?: Omit<Channels.Options, "role" | "extensions"> | undefined
}

/**
 * Serves every connection a WebSocket server accepts, until the Scope
 * closes: each runs Channels (server role, the extensions its handshake
 * negotiated) whose call channels are served. The WebSocket server
 * (`NodeWs.listen`) decides sub-protocols, origins and authentication;
 * `NodeRpcChannels.layerServerWs` does both at once.
 *
 * @category constructors
 * @since 0.1.0
 */
export const serveWs = (
  server: RpcMessages.Server,
  ws: WsServer.WsServer["Service"],
  options?: WsServerOptions | undefined
): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    const serveOne = Effect.gen(function*() {
      const child = yield* Scope.fork(scope)
      const exit = yield* Effect.exit(Scope.provide(ws.accept, child))
      if (Exit.isFailure(exit)) {
        yield* Scope.close(child, Exit.void)
        return false
      }
      const connection = exit.value
      const run = Effect.flatMap(
        connectionChannels(connection, "server", options?.channels),
        (channels) => serve(server, channels, options)
      )
      yield* Effect.forkIn(
        run.pipe(Scope.provide(child), Effect.ignore, Effect.ensuring(Scope.close(child, Exit.void))),
        scope
      )
      return true
    })
    yield* Effect.forkScoped(repeatWhileTrue(serveOne))
  })

const repeatWhileTrue = <R>(step: Effect.Effect<boolean, never, R>): Effect.Effect<void, never, R> =>
  Effect.flatMap(step, (again) => again ? repeatWhileTrue(step) : Effect.void)

/** @internal */
export const layerFrom = <E, R>(
  make: Effect.Effect<RpcMessages.Server, E, R | Scope.Scope>
): Layer.Layer<RpcServer.Protocol | RpcMessages.MessageServer, E, Exclude<R, Scope.Scope>> =>
  Layer.effectContext(
    Effect.map(make, (server) =>
      Context.make(RpcMessages.MessageServer, server).pipe(Context.add(RpcServer.Protocol, server.protocol)))
  )
