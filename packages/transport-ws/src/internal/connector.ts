/**
 * What a client platform (the `ws` library in Node, the global `WebSocket`
 * in browsers) does for a dial: run the opening handshake with the given
 * offers and hand back an adapter over the open socket and the server's
 * answers. The checks of those answers are shared (see `Ws.dial`).
 *
 * @internal
 */
import type * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import type { Extension } from "../Negotiation.ts"
import type { WsError } from "../WsError.ts"
import type { Adapter, AdapterOptions } from "./adapter.ts"

/** @internal */
export interface ConnectRequest {
  readonly url: string
  readonly protocols: ReadonlyArray<string>
  /** Whether an answer without a sub-protocol fails the dial. */
  readonly requireProtocol: boolean
  /** Extensions to offer besides permessage-deflate (plexus-channels). */
  readonly extensions: ReadonlyArray<Extension>
  readonly deflate: boolean
  readonly maxPayload: number
  readonly headers: Readonly<Record<string, string>> | undefined
  readonly adapter: AdapterOptions
}

/** @internal */
export interface Opened {
  readonly adapter: Adapter
  /** The server's `Sec-WebSocket-Protocol`, absent when none. */
  readonly protocol: string | undefined
  /** The server's `Sec-WebSocket-Extensions` other than permessage-deflate. */
  readonly extensions: ReadonlyArray<Extension>
  readonly deflate: boolean
}

/**
 * Opens a WebSocket; the connection belongs to the Scope.
 *
 * @internal
 */
export type Connect = (request: ConnectRequest) => Effect.Effect<Opened, Socket.SocketError | WsError, Scope.Scope>
