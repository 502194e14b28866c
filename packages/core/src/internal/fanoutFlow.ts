/**
 * One data flow at a fanout node (docs/spec/channels.md, Fanout): the
 * consumers linked to it and the hot path that hands each message of the
 * flow to every consumer whose filter passes it. Plain TypeScript: the
 * Effect side (`Fanout.ts`) decides who joins and leaves; this file only
 * walks the list.
 *
 * A consumer's channel queues what its credit does not cover yet, as flow
 * messages that a new filter or an unlink can still withdraw; when that
 * queue goes beyond the node's bound the consumer is reported slow and
 * leaves the list at once, so the others never wait for it. An encrypted
 * consumer channel gets the plaintext and seals it with its own key when
 * the message takes its credit, in wire order.
 *
 * @internal
 */
import type * as Channels from "../Channels.ts"

/** A compiled filter: undefined lets every message through. */
export type Match = ((payload: Uint8Array) => boolean) | undefined

/** Why a consumer leaves a flow. */
export type LeaveReason = "unlinked" | "closed" | "slow" | "failed" | "source-ended"

export class Consumer {
  readonly channel: Channels.Channel
  readonly flow: Flow
  /** The channel was created for the link (the node owns it). */
  readonly created: boolean
  match: Match
  gone = false
  delivered = 0
  constructor(channel: Channels.Channel, flow: Flow, created: boolean, match: Match) {
    this.channel = channel
    this.flow = flow
    this.created = created
    this.match = match
  }
}

export interface FlowCounters {
  messagesIn: number
  bytesIn: number
  messagesDelivered: number
  bytesDelivered: number
  filteredOut: number
}

export class Flow {
  readonly key: string
  readonly flowId: Uint8Array
  readonly scope: Uint8Array
  readonly consumers: Array<Consumer> = []
  /** Local and linked publishers feeding it. */
  publishers = 0
  /** Handlers waiting for the upstream channel before they join. */
  waiting = 0
  /** The node's upstream subscription, while it has one. */
  upstream: unknown = undefined
  retired = false
  constructor(key: string, flowId: Uint8Array, scope: Uint8Array) {
    this.key = key
    this.flowId = flowId
    this.scope = scope
  }

  add(consumer: Consumer): void {
    this.consumers.push(consumer)
  }

  /** Takes a consumer off the list; answers whether it was on it. */
  remove(consumer: Consumer): boolean {
    const list = this.consumers
    const i = list.indexOf(consumer)
    if (i < 0) return false
    list[i] = list[list.length - 1]
    list.pop()
    return true
  }

  /**
   * Hands one message to every consumer whose filter passes it. Consumers
   * beyond the bound, or whose channel no longer takes messages, are taken
   * off the list and reported.
   */
  deliver(
    payload: Uint8Array,
    bound: { readonly messages: number; readonly bytes: number },
    counters: FlowCounters,
    onLeave: (consumer: Consumer, reason: LeaveReason) => void
  ): void {
    counters.messagesIn++
    counters.bytesIn += payload.length
    const list = this.consumers
    let dropped: Array<Consumer> | undefined
    for (let i = 0; i < list.length; i++) {
      const consumer = list[i]
      const match = consumer.match
      if (match !== undefined && !safeMatch(match, payload)) {
        counters.filteredOut++
        continue
      }
      const channel = consumer.channel
      if (channel.offerFlowUnsafe(payload) !== undefined) {
        ;(dropped ??= []).push(consumer)
        continue
      }
      consumer.delivered++
      counters.messagesDelivered++
      counters.bytesDelivered += payload.length
      if (channel.queuedMessages > bound.messages || channel.queuedBytes > bound.bytes) {
        ;(dropped ??= []).push(consumer)
        consumer.gone = true
      }
    }
    if (dropped === undefined) return
    for (const consumer of dropped) {
      const slow = consumer.gone
      consumer.gone = true
      this.remove(consumer)
      onLeave(consumer, slow ? "slow" : "failed")
    }
  }
}

/** An application predicate that throws passes nothing: its consumer simply gets less. */
export const safeMatch = (match: (payload: Uint8Array) => boolean, payload: Uint8Array): boolean => {
  try {
    return match(payload) === true
  } catch {
    return false
  }
}

const hex = (bytes: Uint8Array): string => {
  let out = ""
  for (let i = 0; i < bytes.length; i++) out += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16)
  return out
}

/** The map key of a (flow, scope): flows only meet within one scope, byte for byte. */
export const flowKey = (flowId: Uint8Array, scope: Uint8Array): string => `${hex(scope)}/${hex(flowId)}`

const decoder = new TextDecoder("utf-8", { fatal: true })

/** A flow id or scope for messages: its text when it is UTF-8, else hex. */
export const show = (bytes: Uint8Array): string => {
  try {
    return decoder.decode(bytes)
  } catch {
    return `0x${hex(bytes)}`
  }
}
