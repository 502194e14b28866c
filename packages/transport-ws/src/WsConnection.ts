/**
 * One open WebSocket connection, dialled or accepted, with what its
 * handshake negotiated.
 *
 * A connection has two views over the same socket. `socket` is a byte
 * transport (an `effect/socket` Socket, for a Session): writes larger than
 * the split size go out as several messages, and message boundaries carry
 * no meaning. `messages` is a `MessageTransport`: each send is one binary
 * message and each received message arrives whole. Use one view per
 * connection.
 *
 * WebSocket has no half-close: releasing a writer's scope starts the
 * closing handshake (close code 1000) after everything written, and the
 * reader goes on delivering what the peer sent until the peer's close
 * arrives. The connection belongs to the Scope it was dialled or accepted
 * in; closing that scope closes it the same way.
 *
 * @since 0.1.0
 */
import { MessageTransport } from "@plexus/core"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import type { Adapter } from "./internal/adapter.ts"
import type { Negotiated } from "./Negotiation.ts"

/**
 * Counters of one connection.
 *
 * @category models
 * @since 0.1.0
 */
export interface Stats {
  /** Bytes received and not yet pulled by a reader. */
  readonly buffered: number
  /** Whether reading from the network is paused (no reader yet, or the reader lags). */
  readonly paused: boolean
  readonly messagesIn: number
  readonly bytesIn: number
}

/**
 * @category models
 * @since 0.1.0
 */
export interface WsConnection {
  /** The byte transport view. */
  readonly socket: Socket.Socket
  /** The message transport view; received messages above `maxPayload` already failed the connection. */
  readonly messages: Effect.Effect<MessageTransport.MessageTransport, Socket.SocketError, Scope.Scope>
  /** What was negotiated (in the opening handshake, or in the secondary one). */
  readonly negotiated: Negotiated
  /** The sub-protocol in use: `negotiated.protocol`. */
  readonly protocol: string | undefined
  /** Whether the secondary handshake ran on this connection. */
  readonly secondary: boolean
  /** Key material the server's authentication hook attached (secondary handshake). */
  readonly keyMaterial: Uint8Array | undefined
  /** Starts the closing handshake now (1000), aborting if it does not finish in time. */
  readonly close: Effect.Effect<void>
  readonly stats: Effect.Effect<Stats>
}

/**
 * The connection of a client layer.
 *
 * @category services
 * @since 0.1.0
 */
export class WsConnectionService extends Context.Service<WsConnectionService, WsConnection>()(
  "@plexus/transport-ws/WsConnection"
) {}

/** Builds the connection record over an adapter. @internal */
export const fromAdapter = (
  adapter: Adapter,
  views: { readonly bytes: Socket.Socket; readonly framed: Socket.Socket },
  negotiated: Negotiated,
  extra: { readonly secondary: boolean; readonly keyMaterial: Uint8Array | undefined }
): WsConnection => ({
  socket: views.bytes,
  messages: MessageTransport.fromFramedSocket(views.framed),
  negotiated,
  protocol: negotiated.protocol,
  secondary: extra.secondary,
  keyMaterial: extra.keyMaterial,
  close: Effect.sync(() => adapter.release()),
  stats: Effect.sync(() => ({
    buffered: adapter.buffered,
    paused: adapter.paused,
    messagesIn: adapter.messagesIn,
    bytesIn: adapter.bytesIn
  }))
})
