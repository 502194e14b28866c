/**
 * Counters of a multiplexor, after Linux's /proc/net/kcm_stats: one row per
 * attached transport and one for the whole multiplexor, as a snapshot
 * (`Multiplexor.stats`) and as Effect Metrics summed across every
 * multiplexor of the process.
 *
 * The multiplexor's row includes transports that have left the pool, so its
 * counters only grow; a transport's row ends with it.
 *
 * @since 0.1.0
 */
import * as Metric from "effect/Metric"

/**
 * Counters of one attached transport.
 *
 * @category models
 * @since 0.1.0
 */
export interface TransportStats {
  readonly id: number
  readonly label: string
  /** Messages cut out of this transport's byte stream. */
  readonly rxMessages: number
  /** Payload bytes of those messages. */
  readonly rxBytes: number
  /** Messages written to this transport. */
  readonly txMessages: number
  /** Payload bytes of those messages. */
  readonly txBytes: number
  /** Its messages received and waiting for a message socket to take them. */
  readonly ready: number
  /** Whether reading is paused because the receive queue is full. */
  readonly paused: boolean
  /** Times reading paused. */
  readonly pauses: number
  /** Bytes of an incomplete message held. */
  readonly partialBytes: number
  /** Whether it is writing (a message, or a batch of queued ones) right now. */
  readonly busy: boolean
}

/**
 * Counters of a whole multiplexor.
 *
 * @category models
 * @since 0.1.0
 */
export interface MuxStats {
  readonly rxMessages: number
  readonly rxBytes: number
  readonly txMessages: number
  readonly txBytes: number
  /** Messages received and waiting for a message socket. */
  readonly ready: number
  /** Bytes of those messages. */
  readonly readyBytes: number
  /** Transports whose reading is paused now. */
  readonly paused: number
  /** Bytes of incomplete messages held across the pool. */
  readonly partialBytes: number
  /** Transports attached now. */
  readonly attached: number
  /** Transports attached since the start. */
  readonly attaches: number
  /** Transports that left the pool, for any reason. */
  readonly detaches: number
  /** Transports that left because of an error (transport, parse, budget, interrupted send). */
  readonly errors: number
  /** Transports that left because a message exceeded the maximum size. */
  readonly tooBig: number
  /** Transports that left because a partial message passed its deadline. */
  readonly timeouts: number
  /** Sends that had to wait in the queue for a transport. */
  readonly sendWaits: number
  /** Sends that gave up waiting (send timeout). */
  readonly sendTimeouts: number
  /** Sends that failed mid-write. */
  readonly sendFailures: number
  /** Sends waiting in the queue now (not yet taken into a write). */
  readonly waitingSenders: number
  /** Reconnect dials that failed. */
  readonly dialFailures: number
}

/**
 * A snapshot: the multiplexor's row, and one per attached transport.
 *
 * @category models
 * @since 0.1.0
 */
export interface Snapshot {
  readonly mux: MuxStats
  readonly transports: ReadonlyArray<TransportStats>
}

/**
 * KCM metrics (Effect `Metric`), across all multiplexors of the process.
 *
 * @category metrics
 * @since 0.1.0
 */
export const metrics = {
  rxMessages: Metric.counter("plexus_kcm_rx_messages", { description: "messages received across multiplexors" }),
  rxBytes: Metric.counter("plexus_kcm_rx_bytes", { description: "message payload bytes received" }),
  txMessages: Metric.counter("plexus_kcm_tx_messages", { description: "messages sent" }),
  txBytes: Metric.counter("plexus_kcm_tx_bytes", { description: "message payload bytes sent" }),
  attached: Metric.gauge("plexus_kcm_attached", { description: "transports attached now" }),
  errors: Metric.counter("plexus_kcm_errors", { description: "transports detached because of an error" }),
  tooBig: Metric.counter("plexus_kcm_too_big", { description: "transports detached for an oversized message" }),
  timeouts: Metric.counter("plexus_kcm_timeouts", { description: "partial messages past their deadline" }),
  paused: Metric.counter("plexus_kcm_rx_pauses", { description: "times a transport's reading paused" })
}
