/**
 * The connection's side of fanout (docs/spec/channels.md, Fanout; LINK,
 * UNLINK, FILTER): which requests the engine refuses on its own (a channel
 * that is not open, ALREADY_LINKED, NOT_LINKED, a request already being
 * decided), and copies of the parameters it keeps. Everything else (scopes,
 * flows, filters an application understands) is decided by the fanout
 * handler the application registered; the engine only answers for it.
 *
 * Byte fields of a decoded control message are views of the transport's
 * message; a link outlives that message, so its parameters are copied.
 *
 * @internal
 */
import { Code } from "../ChannelError.ts"
import type * as F from "./channelFrames.ts"

/** A refusal: the ERROR code and detail that answer the request. */
export interface Refusal {
  readonly code: number
  readonly detail: string
}

/**
 * What an accepted request changes at the application, run by the engine
 * in the same step that queues the request's acknowledgement (`acked`), so
 * that the change and the ACK sit at one point of the channel's wire order;
 * `acked` is false when no ACK went out (the channel or the connection ended
 * first). Called exactly once; it must not wait, and must not resume fibers
 * that call back into the engine before it returns.
 */
export type Commit = (acked: boolean) => void

/**
 * How the application answers a fanout request: a refusal refuses;
 * otherwise it is accepted, and `commit` (if any) runs with the ACK.
 */
export type Answer = (refusal?: Refusal, commit?: Commit) => void

/** What a channel must look like for the engine (the fields it reads). */
export interface LinkableChannel {
  readonly phase: string
  readonly localEnding: boolean
  readonly gotPeerDestroy: boolean
  readonly failure: unknown
  readonly link: F.FanoutParams | undefined
  readonly linkBusy: boolean
}

/**
 * The application's fanout decisions, called by the engine. Each call must
 * eventually answer exactly once; the engine ignores later answers.
 */
export interface FanoutHooks<Ch> {
  /** A CREATE with the fanout extension (`created`) or a LINK on an open channel. */
  readonly link: (channel: Ch, params: F.FanoutParams, created: boolean, answer: Answer) => void
  readonly unlink: (channel: Ch, answer: Answer) => void
  readonly filter: (channel: Ch, filter: F.ConsumerFilter, answer: Answer) => void
}

/** Why the engine refuses a peer's LINK, UNLINK or FILTER without asking the application, or undefined. */
export const refusalOf = (
  request: F.Link | F.Unlink | F.Filter,
  channel: LinkableChannel | undefined,
  negotiated: boolean,
  hasHandler: boolean
): Refusal | undefined => {
  if (!negotiated) return { code: Code.EXTENSION_NOT_NEGOTIATED, detail: "fanout was not negotiated" }
  if (
    channel === undefined || channel.phase !== "open" || channel.localEnding || channel.gotPeerDestroy ||
    channel.failure !== undefined
  ) {
    return { code: Code.UNKNOWN_CHANNEL, detail: `channel ${request.channelId} is not open` }
  }
  if (channel.linkBusy) return { code: Code.CONFLICT, detail: "a fanout request on this channel is being decided" }
  if (request._tag === "Link") {
    if (channel.link !== undefined) return { code: Code.ALREADY_LINKED, detail: "the channel is linked" }
    if (!hasHandler) return { code: Code.UNKNOWN_FLOW, detail: "this side serves no flows" }
    return undefined
  }
  if (channel.link === undefined) return { code: Code.NOT_LINKED, detail: "the channel has no link" }
  return undefined
}

export const cloneFilter = (filter: F.ConsumerFilter): F.ConsumerFilter => {
  switch (filter._tag) {
    case "All":
      return filter
    case "Prefixes":
      return { _tag: "Prefixes", prefixes: filter.prefixes.map((p) => p.slice()) }
    case "Application":
      return { _tag: "Application", kind: filter.kind, data: filter.data.slice() }
  }
}

export const cloneParams = (params: F.FanoutParams): F.FanoutParams => ({
  role: params.role,
  flowId: params.flowId.slice(),
  scope: params.scope.slice(),
  filter: cloneFilter(params.filter)
})

/** The fanout parameters among a CREATE's extensions, if any. */
export const fanoutOf = (extensions: ReadonlyArray<F.CreateExtension>): F.FanoutParams | undefined => {
  for (const extension of extensions) {
    if (extension._tag === "Fanout") return extension
  }
  return undefined
}
