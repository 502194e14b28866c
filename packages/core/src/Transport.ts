/**
 * Byte transports. plexus's byte transport is the `effect/socket` `Socket`:
 * every transport (memory, TCP, TLS, WebSocket, a session stream) presents
 * one, so code written for a Socket runs over any of them.
 *
 * This module holds the conventions every plexus Socket follows, and helpers
 * to read them: a clean end of stream (FIN, or a normal close) fails the
 * reader with `SocketCloseError` code 1000; an abrupt end (reset, abort,
 * crash) with code 1006 and the cause in `closeReason`.
 *
 * @since 0.1.0
 */
import type * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import { DelineationError, MessageTooLarge } from "./DelineationError.ts"

/**
 * The close code of a clean end of stream.
 *
 * @category constants
 * @since 0.1.0
 */
export const CLOSE_NORMAL = 1000

/**
 * The close code of an abrupt end: reset, abort, peer crash.
 *
 * @category constants
 * @since 0.1.0
 */
export const CLOSE_ABNORMAL = 1006

/**
 * The SocketError of a clean end of stream.
 *
 * @category errors
 * @since 0.1.0
 */
export const closedError = (code: number = CLOSE_NORMAL, closeReason?: string | undefined): Socket.SocketError =>
  new Socket.SocketError({ reason: new Socket.SocketCloseError({ code, closeReason }) })

/**
 * Whether an error is a clean end of stream (close code 1000).
 *
 * @category guards
 * @since 0.1.0
 */
export const isCleanClose = (u: unknown): boolean =>
  Socket.isSocketError(u) && u.reason._tag === "SocketCloseError" && u.reason.code === CLOSE_NORMAL

/**
 * Whether an error is an abrupt end of the connection: a close with a code
 * other than 1000, or a read/write failure.
 *
 * @category guards
 * @since 0.1.0
 */
export const isAbruptClose = (u: unknown): boolean =>
  Socket.isSocketError(u) &&
  ((u.reason._tag === "SocketCloseError" && u.reason.code !== CLOSE_NORMAL) ||
    u.reason._tag === "SocketReadError" || u.reason._tag === "SocketWriteError")

const encoder = new TextEncoder()

/** @internal */
export const encodeText = (text: string): Uint8Array => encoder.encode(text)

/** @internal */
export const tooLarge = (size: number, max: number) =>
  new DelineationError({ reason: new MessageTooLarge({ size, max }) })

const backlogs = new WeakMap<Socket.Socket, () => number>()

/**
 * Declares how a transport measures its write backlog: bytes accepted by
 * `write` that have not reached the operating system (or, in memory, the
 * peer's reader) yet. Transports call this once when they make a Socket.
 *
 * @category backlog
 * @since 0.1.0
 */
export const registerWriteBacklog = (socket: Socket.Socket, measure: () => number): void => {
  backlogs.set(socket, measure)
}

/**
 * The write backlog of a Socket in bytes, where its transport measures one
 * (TCP, TLS, memory); `undefined` otherwise. KCM's least-pending policy
 * steers messages to the connection with the smallest backlog.
 *
 * @category backlog
 * @since 0.1.0
 */
export const writeBacklog = (socket: Socket.Socket): number | undefined => backlogs.get(socket)?.()

/**
 * Reading without handing memory over: every chunk read goes to `onChunk`
 * synchronously, as a view of memory the transport reuses once `onChunk`
 * returns, so `onChunk` copies whatever it keeps. Where a `Reader` hands
 * each chunk over for good, and so needs fresh memory for every read, a
 * borrowed reader needs none: a bulk receiver that parses or copies as the
 * bytes arrive (a session's frame decoder) reads without allocating.
 *
 * `readBorrowed` takes the place of `reader` (use one or the other) and
 * ends the way `Reader.pull` does: it fails with the clean-close
 * `SocketError` at the peer's FIN and with the abrupt one on a reset. Reading
 * stops when its Scope closes. `onChunk` must not throw; if it does, the
 * connection is aborted and the error ends the read.
 *
 * @category borrowed reads
 * @since 0.1.0
 */
export interface BorrowedReads {
  readonly readBorrowed: (
    onChunk: (chunk: Uint8Array) => void
  ) => Effect.Effect<never, Socket.SocketError, Scope.Scope>
}

const borrowing = new WeakMap<Socket.Socket, BorrowedReads>()

/**
 * Declares that a Socket can also be read borrowed. Transports that read
 * into reused memory (plexus's TCP) call this once when they make a Socket.
 *
 * @category borrowed reads
 * @since 0.1.0
 */
export const registerBorrowedReads = (socket: Socket.Socket, reads: BorrowedReads): void => {
  borrowing.set(socket, reads)
}

/**
 * The borrowed reader of a Socket, where its transport offers one;
 * `undefined` otherwise (read it with `reader`).
 *
 * @category borrowed reads
 * @since 0.1.0
 */
export const borrowedReads = (socket: Socket.Socket): BorrowedReads | undefined => borrowing.get(socket)
