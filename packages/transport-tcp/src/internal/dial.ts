/**
 * Dialing shared by TCP and TLS: wait for the connection to be ready (TCP
 * connect, or the TLS handshake), bounded by a timeout, then hand the socket
 * to the adapter and tie its lifetime to the caller's Scope.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import type * as Net from "node:net"
import { type AdapterOptions, fromNodeSocket, release } from "./nodeSocket.ts"

/** @internal */
export const openError = (cause: unknown, kind: "Unknown" | "Timeout" = "Unknown"): Socket.SocketError =>
  new Socket.SocketError({ reason: new Socket.SocketOpenError({ kind, cause }) })

/** @internal */
export const keepAliveOptions = (
  keepAlive: boolean | Duration.Input | undefined
): { readonly keepAlive: boolean; readonly keepAliveInitialDelay: number } => {
  if (keepAlive === undefined || keepAlive === false) return { keepAlive: false, keepAliveInitialDelay: 0 }
  if (keepAlive === true) return { keepAlive: true, keepAliveInitialDelay: 0 }
  return { keepAlive: true, keepAliveInitialDelay: Duration.toMillis(Duration.fromInputUnsafe(keepAlive)) }
}

/** The node socket options every dialled or accepted connection gets. @internal */
export const netSocketOptions = (options: {
  readonly noDelay?: boolean | undefined
  readonly keepAlive?: boolean | Duration.Input | undefined
}) => {
  const keepAlive = keepAliveOptions(options.keepAlive)
  return {
    allowHalfOpen: true,
    noDelay: options.noDelay ?? true,
    keepAlive: keepAlive.keepAlive,
    keepAliveInitialDelay: keepAlive.keepAliveInitialDelay
  }
}

const noop = () => {}

/** @internal */
export const dialWith = (options: {
  readonly connect: () => Net.Socket
  readonly readyEvent: "connect" | "secureConnect"
  readonly connectTimeout?: Duration.Input | undefined
  readonly adapter?: AdapterOptions | undefined
}): Effect.Effect<Socket.Socket, Socket.SocketError, Scope.Scope> => {
  const connecting = Effect.callback<readonly [Net.Socket, Socket.Socket], Socket.SocketError>((resume) => {
    let conn: Net.Socket
    try {
      conn = options.connect()
    } catch (cause) {
      resume(Effect.fail(openError(cause)))
      return
    }
    const onReady = () => {
      // The adapter adds its own error listener before ours goes.
      const socket = fromNodeSocket(conn, options.adapter)
      conn.off("error", onError)
      resume(Effect.succeed([conn, socket] as const))
    }
    const onError = (cause: Error) => {
      conn.off(options.readyEvent, onReady)
      conn.destroy()
      resume(Effect.fail(openError(cause)))
    }
    conn.once(options.readyEvent, onReady)
    conn.once("error", onError)
    return Effect.sync(() => {
      conn.off(options.readyEvent, onReady)
      conn.off("error", onError)
      conn.on("error", noop)
      conn.destroy()
    })
  })
  const bounded = options.connectTimeout === undefined ? connecting : Effect.timeoutOrElse(connecting, {
    duration: options.connectTimeout,
    orElse: () => Effect.fail(openError(new Error("connect timed out"), "Timeout"))
  })
  return Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(restore(bounded), ([conn, socket]) =>
      Effect.as(Effect.addFinalizer(() => Effect.sync(() => release(conn))), socket))
  )
}
