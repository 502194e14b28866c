/**
 * The accepting side of a listening transport, over a queue of accepted
 * connections: `run` (the `effect/socket` SocketServer shape), `accept` and
 * `connections` all draw from that one queue, so each connection goes to
 * exactly one of them. Transports with a listener (TCP, TLS, WebSocket)
 * fill the queue and end it when they close; this module serves it.
 *
 * The one thing to know: a connection taken by `run` is closed when its
 * handler ends, one taken by `accept` when the caller's Scope closes, and
 * one taken from `connections` stays the taker's to close.
 *
 * @since 0.1.0
 */
import type * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import * as SocketServer from "effect/socket/SocketServer"
import * as Stream from "effect/Stream"

/**
 * What an accepted connection must offer.
 *
 * @category models
 * @since 0.1.0
 */
export interface Accepted {
  readonly socket: Socket.Socket
  readonly close: Effect.Effect<void>
}

/**
 * @category models
 * @since 0.1.0
 */
export interface Acceptor<C extends Accepted> {
  /**
   * Runs `handler` in its own fiber for each connection, closing the
   * connection when the handler ends. Interrupting `run` interrupts the
   * handlers. Fails when the listener has closed.
   */
  readonly run: SocketServer.SocketServer["Service"]["run"]
  /** Waits for the next connection, closed when the caller's Scope closes. */
  readonly accept: Effect.Effect<C, SocketServer.SocketServerError, Scope.Scope>
  /** The connections as a stream that ends when the listener closes. */
  readonly connections: Stream.Stream<C>
}

const listenerClosed = new SocketServer.SocketServerError({
  reason: new SocketServer.SocketServerUnknownError({ cause: new Error("server closed") })
})

/**
 * Serves a queue of accepted connections, which the listener ends when it
 * closes. `name` labels handler failures in the debug log.
 *
 * @category constructors
 * @since 0.1.0
 */
export const fromQueue = <C extends Accepted>(
  pending: Queue.Dequeue<C, Cause.Done>,
  name: string
): Acceptor<C> => {
  const take: Effect.Effect<C, SocketServer.SocketServerError> = Effect.mapError(Queue.take(pending), () =>
    listenerClosed)
  const message = `${name} connection handler failed`
  const run = <R, E, _>(
    handler: (socket: Socket.Socket) => Effect.Effect<_, E, R>
  ): Effect.Effect<never, SocketServer.SocketServerError, R> =>
    Effect.scoped(Effect.flatMap(FiberSet.make<unknown, unknown>(), (fibers) =>
      Effect.forever(Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(restore(take), (c) =>
          FiberSet.run(
            fibers,
            handler(c.socket).pipe(Effect.ensuring(c.close), Effect.ignoreCause({ log: "Debug", message }))
          ))
      ))))
  const accept: Effect.Effect<C, SocketServer.SocketServerError, Scope.Scope> = Effect.uninterruptibleMask((
    restore
  ) => Effect.tap(restore(take), (c) => Effect.addFinalizer(() => c.close)))
  return { run, accept, connections: Stream.fromQueue(pending) }
}
