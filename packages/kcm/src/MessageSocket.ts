/**
 * A message socket of a KCM multiplexor (Linux KCM's clone): sends whole
 * messages over the multiplexor's pool and takes its share of the messages
 * the pool receives. A multiplexor can have many; each received message goes
 * to exactly one of them, whichever is ready to take it.
 *
 * It is a core `MessageTransport`, so code written for one (Channels, RPC)
 * runs over a pool unchanged, with two differences a caller must know:
 * messages sent from one socket may arrive out of order (they travel over
 * different connections, as in KCM), and `close` closes this socket, not
 * the connections.
 *
 * @since 0.1.0
 */
import type * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import type { MessageTransport } from "@plexus/core"
import type { KcmError } from "./KcmError.ts"

/**
 * @category models
 * @since 0.1.0
 */
export interface MessageSocket extends MessageTransport.MessageTransport<KcmError> {
  /** Unique within its multiplexor. */
  readonly id: number
  /**
   * Sends one message atomically on a free transport; when all are busy it
   * waits in the multiplexor's queue (up to the send timeout) and goes out
   * in one write with the other messages queued by then. The send completes
   * when that write does; until then the message is read, so keep it
   * unchanged. On a batching socket the message joins the current batch,
   * and the send completes when the batch is written.
   */
  readonly send: (message: Uint8Array) => Effect.Effect<void, KcmError>
  /**
   * Hands over a batch: runs of small messages are coalesced into one write
   * per transport (each up to the multiplexor's `maxBatchBytes`); each
   * message still arrives whole. Runs may take different transports.
   */
  readonly sendAll: (messages: ReadonlyArray<Uint8Array>) => Effect.Effect<void, KcmError>
  /** Writes the current batch of a batching socket now. */
  readonly flush: Effect.Effect<void, KcmError>
  /**
   * Switches receiving off (KCM_RECV_DISABLE) or on. A socket only holds
   * messages it has pulled, so switching off hands its share to the other
   * sockets at once; a pull on a socket that is off waits until it is on.
   */
  readonly setReceiving: (enabled: boolean) => Effect.Effect<void>
  /** Whether the socket takes received messages. */
  readonly receiving: Effect.Effect<boolean>
}

/**
 * Options of one message socket.
 *
 * @category models
 * @since 0.1.0
 */
export interface Options {
  /**
   * Most messages one pull takes. Smaller spreads messages more evenly
   * across sockets; larger costs less per message. Default 256.
   */
  readonly maxPull?: number | undefined
  /**
   * Makes `send` batch (KCM's MSG_BATCH): messages sent while a batch is
   * open are written together, when the batch reaches `maxBytes` or
   * `maxDelay` after its first message (default 0: the end of the current
   * turn of the event loop, which gathers concurrent senders), or on
   * `flush`.
   */
  readonly batch?: {
    readonly maxBytes?: number | undefined
    readonly maxDelay?: Duration.Input | undefined
  } | undefined
}
