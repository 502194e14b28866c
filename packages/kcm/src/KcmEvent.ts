/**
 * What happens to a multiplexor's pool, as events: transports attaching and
 * leaving (with why, and what was lost), and reconnect dials failing.
 *
 * A `Detached` event is the place to learn which sends a failing transport
 * took with it: `failedMessages` are the messages whose write it cut off
 * (their senders got `MessageCutOff`), and `lostPartialBytes` counts the
 * bytes of an incomplete received message that died with it. Messages not
 * yet started on a transport are never lost with it: they wait for, and go
 * out on, another transport.
 *
 * @since 0.1.0
 */
import type { DetachReason } from "./KcmError.ts"

/**
 * @category models
 * @since 0.1.0
 */
export interface Attached {
  readonly _tag: "Attached"
  readonly id: number
  readonly label: string
}

/**
 * @category models
 * @since 0.1.0
 */
export interface Detached {
  readonly _tag: "Detached"
  readonly id: number
  readonly label: string
  readonly reason: DetachReason
  /** Bytes of an incomplete received message lost with the transport (0 for `Requested`: they are handed back). */
  readonly lostPartialBytes: number
  /** Messages whose write the failure cut off. */
  readonly failedMessages: ReadonlyArray<Uint8Array>
}

/**
 * A reconnect dial failed; the policy's schedule decides when to try again.
 *
 * @category models
 * @since 0.1.0
 */
export interface DialFailed {
  readonly _tag: "DialFailed"
  readonly error: unknown
  /** Transports attached when the dial failed. */
  readonly attached: number
}

/**
 * @category models
 * @since 0.1.0
 */
export type KcmEvent = Attached | Detached | DialFailed
