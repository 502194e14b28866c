/**
 * Deadlines carried on the wire (docs/spec/rpc.md, Metadata and deadlines):
 * the `plexus-timeout` header holds a call's timeout in milliseconds,
 * relative to when the server reads the request, so the hosts' clocks need
 * not agree. The server interrupts the handler when it passes and tells the
 * client, which fails the call with `DeadlineExceeded`.
 *
 * @since 0.1.0
 */
import * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import { RpcClient } from "effect/rpc"
import { TIMEOUT_HEADER, timeoutOf } from "./internal/wire.ts"

/**
 * The header's name.
 *
 * @category constants
 * @since 0.1.0
 */
export const header: string = TIMEOUT_HEADER

/**
 * The header for a timeout, as `[name, value]` (at least 1 ms).
 *
 * @category constructors
 * @since 0.1.0
 */
export const timeoutHeader = (timeout: Duration.Input): readonly [string, string] => [
  TIMEOUT_HEADER,
  String(Math.max(1, Math.min(0x7fffffff, Math.ceil(Duration.toMillis(Duration.fromInputUnsafe(timeout))))))
]

/**
 * Gives every call made inside `effect` a deadline: the server interrupts
 * the handler when it passes.
 *
 * @category combinators
 * @since 0.1.0
 */
export const withTimeout = (timeout: Duration.Input) => <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => {
  const [name, value] = timeoutHeader(timeout)
  return RpcClient.withHeaders(effect, { [name]: value })
}

/**
 * The timeout a request's headers carry, in milliseconds; undefined when
 * absent or unusable (not a whole number from 1 to 2^31−1).
 *
 * @category getters
 * @since 0.1.0
 */
export const fromHeaders = (headers: ReadonlyArray<readonly [string, string]> | undefined): number | undefined =>
  timeoutOf(headers)
