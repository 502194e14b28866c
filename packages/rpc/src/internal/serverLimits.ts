/**
 * The limits every server protocol takes, resolved once from its options
 * with their defaults, and the deadline a call runs under.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import { timeoutOf } from "./wire.ts"

/** Options every server protocol takes (each documents them for its carrier). */
export interface LimitOptions {
  readonly maxRequestBytes?: number | undefined
  readonly maxConcurrentCalls?: number | undefined
  readonly defaultTimeout?: Duration.Input | undefined
  readonly maxTimeout?: Duration.Input | undefined
  readonly drainTimeout?: Duration.Input | undefined
}

const millis = (input: Duration.Input): number => Duration.toMillis(Duration.fromInputUnsafe(input))

export const resolveLimits = (options: LimitOptions | undefined) => {
  const defaultTimeout = options?.defaultTimeout === undefined ? undefined : millis(options.defaultTimeout)
  const maxTimeout = millis(options?.maxTimeout ?? "5 minutes")
  return {
    maxRequest: options?.maxRequestBytes ?? 4 * 1024 * 1024,
    maxCalls: options?.maxConcurrentCalls ?? 10_000,
    drainTimeout: Duration.fromInputUnsafe(options?.drainTimeout ?? "5 seconds"),
    /** The deadline of a call in milliseconds: the one it carries, or the default, capped; none if neither. */
    deadlineOf: (headers: Parameters<typeof timeoutOf>[0]): number | undefined => {
      const requested = timeoutOf(headers) ?? defaultTimeout
      return requested === undefined ? undefined : Math.min(requested, maxTimeout)
    }
  }
}
