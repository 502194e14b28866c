/**
 * The channels engine (docs/spec/channels.md): the state of one connection
 * and all its channels, in plain TypeScript. The reader fiber hands it each
 * transport message (`receive`); the writer fiber asks it for the next batch
 * of transport messages (`takeBatch`); channels call into it to send, read,
 * close, abort, migrate and merge. Nothing here waits: where a caller must
 * wait, the engine keeps a waker, and the Effect layer (`Channels.ts`) turns
 * it into a suspended fiber.
 *
 * Wakers never run while the engine walks its own state: resuming a fiber
 * runs it at once, and it may call straight back in. They are queued with
 * `wake` and run by `flushWakes`, which every entry point of the Effect
 * layer calls last.
 *
 * Ordering (spec: Ordering: markers): one queue, `out`, holds every data
 * message and every marker in the order they were produced, and data only
 * enters it once it has credit, so a marker can never overtake the data
 * before it. WINDOW grants are appended when a batch is built (after every
 * marker queued so far, so they name channels by the ids the peer already
 * knows); PONG and GOAWAY go ahead in `urgent`.
 *
 * @internal
 */
import {
  ChannelClosed,
  ChannelError,
  ChannelIdsExhausted,
  Code,
  DecryptFailed,
  FlowControlViolation,
  GoneAway,
  InvalidMessage,
  LimitExceeded,
  MessageTooLarge,
  ProtocolViolation,
  RequestFailed,
  TransportClosed
} from "../ChannelError.ts"
import { ChannelCipher, DEFAULT_SEAL_LIMITS, randomNonce, type SealLimits } from "./channelCrypto.ts"
import * as F from "./channelFrames.ts"
import { type Answer, cloneFilter, cloneParams, fanoutOf, type FanoutHooks, refusalOf } from "./channelFanout.ts"

type Waker = () => void

/** Limits and defaults of one connection; every field has a spec default in `Channels.ts`. */
export interface EngineConfig {
  readonly side: F.Side
  /** The negotiated per-channel extensions, by handshake name. */
  readonly extensions: ReadonlySet<string>
  /** The key a key id names, for encrypted channels (spec: Encryption). */
  readonly keys?: ((keyId: number) => Uint8Array | undefined) | undefined
  /** What one channel key may seal per direction; the spec's limits unless set. */
  readonly sealLimits?: SealLimits | undefined
  readonly windowMessages: number
  readonly windowBytes: number
  /** How far a busy channel's receive window may grow (see `growWindow`). */
  readonly maxWindowMessages: number
  readonly maxWindowBytes: number
  readonly maxChannels: number
  readonly acceptBacklog: number
  readonly maxPeerRequests: number
  readonly receiveBudget: number
  readonly maxControlQueue: number
  readonly floodLimit: number
  readonly floodWindowMs: number
  readonly pingsPerSecond: number
  /** Bytes of `out` beyond which senders wait for the writer. */
  readonly writeHighWater: number
}

export interface EngineHooks {
  /** The writer has work: wake it. */
  readonly wakeWriter: () => void
  /** The connection failed (an error) or ended gracefully (undefined). */
  readonly onEnd: (error: ChannelError | undefined) => void
  readonly now: () => number
  /** Decides the peer's fanout requests; without it they are refused. */
  readonly fanout?: FanoutHooks<ChannelState> | undefined
}

/** Counters exposed for tests, budgets and dashboards. */
export interface EngineStats {
  /** Channels live at this side (channel 0 included), closing ones too. */
  openChannels: number
  /** Channels created by the peer and live. */
  peerChannels: number
  /** Created by the peer and not yet accepted. */
  backlog: number
  /** Requests of the peer not answered yet. */
  peerPendingRequests: number
  /** Requests of ours not answered yet. */
  pendingRequests: number
  /** Payload bytes received and not yet consumed, over all channels. */
  bufferedBytes: number
  bufferedMessages: number
  /** Sum of the base receive windows (bytes) of live channels: the receive budget used. */
  budgetUsed: number
  /** Bytes queued for the transport and not yet handed to it. */
  queuedBytes: number
  /** Control messages queued and not yet handed to the transport. */
  controlQueued: number
  messagesIn: number
  messagesOut: number
  /** WINDOW messages sent and the grants they carried. */
  windowsSent: number
  grantsSent: number
  /** Grants that grew a busy channel's receive window. */
  windowGrowths: number
  refusedCreates: number
  windowViolations: number
  /** Data messages dropped: refused or aborting channels. */
  discardedMessages: number
  ignoredReplies: number
  ignoredGrants: number
  pingsAnswered: number
  /** Requests answered with ERROR (unknown types, refusals). */
  errorsSent: number
  /** Events counted against the flood budget in the current second. */
  floodCount: number
}

/** A merge group: two or more channels whose received messages reach every member. */
export class Group {
  readonly members = new Set<ChannelState>()
}

/** One channel. Fields are plain so that many idle channels stay small. */
export class ChannelState {
  /** The id the peer labels this channel with (inbound lookups). */
  id: number
  /** The id this side labels its messages and control messages with. */
  sendId: number
  /** This side created it (or: it has this side's parity). */
  readonly outbound: boolean
  label = ""
  phase: "opening" | "accepting" | "open" | "closed" = "open"
  /** The peer's CREATE request id, while accepting. */
  createRequestId = 0
  // closing
  /** The application closed its sending side: DESTROY (or DESTROY_ACK) once the queue drains. */
  localEnding = false
  closeCode: number = Code.NO_ERROR
  closeReason = ""
  sentDestroy = false
  destroyAcked = false
  gotPeerDestroy = false
  peerDestroyRequestId = 0
  sentDestroyAck = false
  /** Discard everything that arrives until the peer's closing step. */
  aborting = false
  /** No more messages will arrive: the stream of messages ends after the buffer. */
  remoteEnded = false
  /** What the application sees once set. */
  failure: ChannelError | undefined = undefined
  // receive side
  recv: Array<Uint8Array> | undefined = undefined
  recvBytes = 0
  recvMessages = 0
  /** Credit the peer still has. */
  recvMsgWindow: number
  recvByteWindow: number
  baseRecvMessages: number
  baseRecvBytes: number
  consumedMessages = 0
  consumedBytes = 0
  grantQueued = false
  readWaker: Waker | undefined = undefined
  // send side
  send: Array<Uint8Array> | undefined = undefined
  sendHead = 0
  sendMsgWindow: number
  sendByteWindow: number
  baseSendBytes: number
  /** Requests in flight that hold this channel's data (MERGE, UNMERGE). */
  paused = 0
  writeWakers: Array<Waker> | undefined = undefined
  // structure
  group: Group | undefined = undefined
  /** Our MIGRATE in flight: the old id stays the inbound id until its ACK. */
  migrating: { readonly oldId: number; readonly newId: number } | undefined = undefined
  stateWakers: Array<Waker> | undefined = undefined
  /** The encryption state, if the channel is encrypted (see channelCrypto.ts). */
  cipher: ChannelCipher | undefined = undefined
  // fanout (see channelFanout.ts)
  /** The channel's link, if it has one (either side linked it). */
  link: F.FanoutParams | undefined = undefined
  /** A fanout request on it is being decided or answered. */
  linkBusy = false
  /** Payload bytes of `send` not yet moved to `out` (waiting for credit). */
  sendQueuedBytes = 0
  /**
   * Which entries of `send` are messages of a fanout flow (index for index),
   * once one was queued: those can still be withdrawn (`withdrawFlow`).
   */
  sendFlow: Array<boolean> | undefined = undefined
  /** Flow messages in `send` not yet moved to `out`. */
  flowQueued = 0

  constructor(id: number, outbound: boolean, config: EngineConfig) {
    this.id = id
    this.sendId = id
    this.outbound = outbound
    this.recvMsgWindow = this.baseRecvMessages = config.windowMessages
    this.recvByteWindow = this.baseRecvBytes = config.windowBytes
    this.sendMsgWindow = config.windowMessages
    this.sendByteWindow = this.baseSendBytes = config.windowBytes
  }

  get queued(): number {
    return this.send === undefined ? 0 : this.send.length - this.sendHead
  }
}

/** A request of ours waiting for its answer. */
interface PendingRequest {
  readonly type: number
  readonly channel: ChannelState | undefined
  /** Channels held (paused) until the answer. */
  readonly involved: ReadonlyArray<ChannelState> | undefined
  /** Answers the request: the reply, or why there will be none. */
  readonly done: (reply: F.ControlMessage | ChannelError) => void
  /** The requester gave up: the answer is still processed, and nobody is told. */
  abandoned: boolean
}

const MAX_ID = 0xfffe

const violation = (detail: string, code: number = Code.PROTOCOL_ERROR, offset?: number): ChannelError =>
  new ChannelError({ reason: new ProtocolViolation({ detail, code, offset }) })

export class Engine {
  readonly config: EngineConfig
  readonly hooks: EngineHooks
  readonly peerSide: F.Side
  /** Live channels by the id the peer labels them with. */
  readonly channels = new Map<number, ChannelState>()
  /** Ids of this side's parity in use: live channels, MIGRATE targets. */
  private readonly ownIds = new Set<number>()
  /** Peer ids refused, with the default window their early data may still use. */
  private readonly refused = new Map<number, { messages: number; bytes: number }>()
  private lastId: number
  readonly backlog: Array<ChannelState> = []
  readonly acceptWakers: Array<Waker> = []
  readonly outWakers: Array<Waker> = []
  private readonly requests = new Map<number, PendingRequest>()
  private nextRequestId = 1
  private readonly pongs = new Map<number, () => void>()
  private out: Array<Uint8Array> = []
  private urgent: Array<Uint8Array> = []
  /**
   * Messages of encrypted channels queued in `out` whose sealed bytes are
   * still being computed, in `out` order: the writer takes `out` only up to
   * the first of them.
   */
  private readonly sealing: Array<Uint8Array> = []
  private readonly grants: Array<ChannelState> = []
  private readonly wakes: Array<Waker> = []
  private flushing = false
  readonly defaultChannel: ChannelState
  failure: ChannelError | undefined = undefined
  /** The code of the GOAWAY this side sent when it failed the connection. */
  failureCode: number | undefined = undefined
  goingAway = false
  peerGoneAway = false
  ended = false
  private floodWindowStart = 0
  private pingWindowStart = 0
  private pingCount = 0
  readonly stats: EngineStats = {
    openChannels: 0,
    peerChannels: 0,
    backlog: 0,
    peerPendingRequests: 0,
    pendingRequests: 0,
    bufferedBytes: 0,
    bufferedMessages: 0,
    budgetUsed: 0,
    queuedBytes: 0,
    controlQueued: 0,
    messagesIn: 0,
    messagesOut: 0,
    windowsSent: 0,
    grantsSent: 0,
    windowGrowths: 0,
    refusedCreates: 0,
    windowViolations: 0,
    discardedMessages: 0,
    ignoredReplies: 0,
    ignoredGrants: 0,
    pingsAnswered: 0,
    errorsSent: 0,
    floodCount: 0
  }

  constructor(config: EngineConfig, hooks: EngineHooks) {
    this.config = config
    this.hooks = hooks
    this.peerSide = config.side === "client" ? "server" : "client"
    // The first allocation takes the side's lowest id.
    this.lastId = config.side === "client" ? MAX_ID - 1 : MAX_ID
    this.defaultChannel = new ChannelState(F.DEFAULT_CHANNEL, false, config)
    this.live(this.defaultChannel)
  }

  // -------------------------------------------------------------------------
  // Wake-ups
  // -------------------------------------------------------------------------

  wake(waker: Waker): void {
    this.wakes.push(waker)
  }

  private wakeAll(list: Array<Waker> | undefined): void {
    if (list === undefined || list.length === 0) return
    const taken = list.splice(0, list.length)
    for (let i = 0; i < taken.length; i++) this.wakes.push(taken[i])
  }

  private wakeChannel(ch: ChannelState): void {
    const reader = ch.readWaker
    if (reader !== undefined) {
      ch.readWaker = undefined
      this.wakes.push(reader)
    }
    this.wakeAll(ch.writeWakers)
    this.wakeAll(ch.stateWakers)
  }

  /** Runs the queued wakers; those they queue in turn run too. */
  flushWakes(): void {
    if (this.flushing) return
    this.flushing = true
    try {
      for (let i = 0; i < this.wakes.length; i++) this.wakes[i]()
    } finally {
      this.wakes.length = 0
      this.flushing = false
    }
  }

  // -------------------------------------------------------------------------
  // Failing
  // -------------------------------------------------------------------------

  /** Ends the connection: GOAWAY with `code` (unless the peer ended it), every channel and waiter fails. */
  fail(error: ChannelError, code: number | undefined): void {
    if (this.failure !== undefined || this.ended) return
    this.failure = error
    this.failureCode = code
    if (code !== undefined) {
      const detail = error.reason._tag === "ProtocolViolation" ? error.reason.detail : error.reason.message
      const goAway = F.encodeControl({ _tag: "GoAway", code, reason: detail })
      if (!(goAway instanceof ChannelError)) this.urgent.push(goAway)
    }
    for (const ch of this.channels.values()) this.failChannel(ch, error)
    for (const ch of this.backlog) this.failChannel(ch, error)
    const pending = Array.from(this.requests.values())
    this.requests.clear()
    this.stats.pendingRequests = 0
    for (const request of pending) request.done(error)
    for (const done of this.pongs.values()) this.wakes.push(done)
    this.pongs.clear()
    this.wakeAll(this.acceptWakers)
    this.wakeAll(this.outWakers)
    this.hooks.wakeWriter()
    this.hooks.onEnd(error)
  }

  private protocolError(detail: string, code: number = Code.PROTOCOL_ERROR, offset?: number): void {
    this.fail(violation(detail, code, offset), code)
  }

  private calm(limit: string, value: number, max: number): void {
    const error = new ChannelError({
      reason: new LimitExceeded({ limit, value, max, code: Code.ENHANCE_YOUR_CALM })
    })
    this.fail(error, Code.ENHANCE_YOUR_CALM)
  }

  /** Counts work the peer makes us do for nothing; beyond the budget the connection ends. */
  private flood(what: string): boolean {
    const now = this.hooks.now()
    if (now - this.floodWindowStart >= this.config.floodWindowMs) {
      this.floodWindowStart = now
      this.stats.floodCount = 0
    }
    if (++this.stats.floodCount > this.config.floodLimit) {
      this.calm(`${what} (flood budget per ${this.config.floodWindowMs} ms)`, this.stats.floodCount, this.config.floodLimit)
      return true
    }
    return false
  }

  /** Fails one channel for its application (the connection's error, or its own). */
  private failChannel(ch: ChannelState, error: ChannelError): void {
    if (ch.failure === undefined) {
      ch.failure = error.channelId === undefined && ch.phase !== "closed"
        ? new ChannelError({ reason: error.reason, channelId: ch.sendId })
        : error
    }
    this.dropReceived(ch)
    this.dropQueued(ch)
    this.wakeChannel(ch)
  }

  private dropReceived(ch: ChannelState): void {
    if (ch.recv === undefined) return
    this.stats.bufferedBytes -= ch.recvBytes
    this.stats.bufferedMessages -= ch.recvMessages
    ch.recv = undefined
    ch.recvBytes = 0
    ch.recvMessages = 0
  }

  private dropQueued(ch: ChannelState): void {
    ch.send = undefined
    ch.sendFlow = undefined
    ch.sendHead = 0
    ch.sendQueuedBytes = 0
    ch.flowQueued = 0
  }

  // -------------------------------------------------------------------------
  // Books
  // -------------------------------------------------------------------------

  private live(ch: ChannelState): void {
    this.channels.set(ch.id, ch)
    this.stats.openChannels++
    this.stats.budgetUsed += ch.baseRecvBytes
    if (!ch.outbound && ch.id !== F.DEFAULT_CHANNEL) this.stats.peerChannels++
  }

  /** The channel is closed: its ids are free, it leaves its group. */
  private forget(ch: ChannelState): void {
    if (ch.phase === "closed") return
    if (ch.phase === "accepting") this.removeFromBacklog(ch)
    ch.phase = "closed"
    if (this.channels.get(ch.id) === ch) this.channels.delete(ch.id)
    this.ownIds.delete(ch.id)
    this.ownIds.delete(ch.sendId)
    if (ch.migrating !== undefined) {
      this.ownIds.delete(ch.migrating.oldId)
      this.ownIds.delete(ch.migrating.newId)
      if (this.channels.get(ch.migrating.oldId) === ch) this.channels.delete(ch.migrating.oldId)
    }
    this.stats.openChannels--
    this.stats.budgetUsed -= ch.baseRecvBytes
    if (!ch.outbound && ch.id !== F.DEFAULT_CHANNEL) this.stats.peerChannels--
    this.leaveGroup(ch)
    this.dropQueued(ch)
    this.wakeChannel(ch)
    this.maybeFinish()
  }

  private maybeClose(ch: ChannelState): void {
    if (ch.phase === "closed" || !(ch.sentDestroy || ch.gotPeerDestroy)) return
    const ownDone = !ch.sentDestroy || ch.destroyAcked
    const peerDone = !ch.gotPeerDestroy || ch.sentDestroyAck
    if (ownDone && peerDone) this.forget(ch)
  }

  private removeFromBacklog(ch: ChannelState): void {
    const i = this.backlog.indexOf(ch)
    if (i >= 0) {
      this.backlog.splice(i, 1)
      this.stats.backlog--
    }
  }

  // -------------------------------------------------------------------------
  // Sending control messages
  // -------------------------------------------------------------------------

  /** Queues a control message in order with data (markers, replies). */
  private queueControl(message: F.OutgoingControl, urgent = false): boolean {
    const bytes = F.encodeControl(message)
    if (bytes instanceof ChannelError) {
      // Our own value did not encode: a bug here, not the peer's doing.
      this.fail(bytes, Code.INTERNAL_ERROR)
      return false
    }
    if (urgent) this.urgent.push(bytes)
    else this.out.push(bytes)
    this.stats.queuedBytes += bytes.length
    if (++this.stats.controlQueued > this.config.maxControlQueue) {
      // The peer makes us answer faster than it reads.
      this.stats.controlQueued = 0
      const error = new ChannelError({
        reason: new LimitExceeded({
          limit: "outbound control queue",
          value: this.config.maxControlQueue + 1,
          max: this.config.maxControlQueue,
          code: Code.ENHANCE_YOUR_CALM
        })
      })
      this.fail(error, Code.ENHANCE_YOUR_CALM)
      return false
    }
    this.hooks.wakeWriter()
    return true
  }

  private sendError(requestId: number, code: number, detail: string): void {
    this.stats.errorsSent++
    this.queueControl({ _tag: "Error", requestId, code, detail })
  }

  private newRequestId(): number {
    let id = this.nextRequestId
    while (this.requests.has(id) || this.pongs.has(id)) id = (id % 0xffffffff) + 1
    this.nextRequestId = (id % 0xffffffff) + 1
    return id
  }

  private request(
    type: number,
    channel: ChannelState | undefined,
    involved: ReadonlyArray<ChannelState> | undefined,
    build: (requestId: number) => F.OutgoingControl,
    done: (reply: F.ControlMessage | ChannelError) => void
  ): PendingRequest | undefined {
    const requestId = this.newRequestId()
    const pending: PendingRequest = { type, channel, involved, done, abandoned: false }
    if (!this.queueControl(build(requestId))) return undefined
    this.requests.set(requestId, pending)
    this.stats.pendingRequests++
    return pending
  }

  // -------------------------------------------------------------------------
  // Receiving
  // -------------------------------------------------------------------------

  /** One transport message from the peer. */
  receive(message: Uint8Array): void {
    if (this.failure !== undefined || this.ended) return
    this.stats.messagesIn++
    if (message.length < F.HEADER_SIZE) {
      return this.protocolError(`runt message of ${message.length} byte(s): shorter than the 2-byte channel id`)
    }
    const id = (message[0] << 8) | message[1]
    const payload = message.subarray(F.HEADER_SIZE)
    if (id === F.CONTROL_CHANNEL) return this.control(payload)
    const ch = this.channels.get(id)
    if (ch === undefined) {
      const refused = this.refused.get(id)
      if (refused === undefined) return this.protocolError(`data for idle channel ${id}`)
      // Early data of a refused channel: discarded, but only within the default window.
      this.stats.discardedMessages++
      refused.messages--
      refused.bytes -= payload.length
      if (refused.messages < 0 || refused.bytes < 0) this.flood("data beyond the window of a refused channel")
      return
    }
    this.data(ch, payload)
  }

  private data(ch: ChannelState, payload: Uint8Array): void {
    if (ch.aborting) {
      // Until the peer's closing step: dropped, counted against the window
      // that was open when we aborted.
      this.stats.discardedMessages++
      ch.recvMsgWindow--
      ch.recvByteWindow -= payload.length
      if (ch.recvMsgWindow < 0 || ch.recvByteWindow < 0) this.flood("data beyond the window of an aborted channel")
      return
    }
    if (ch.remoteEnded) return this.protocolError(`data on channel ${ch.id} after the peer's closing step`)
    if (ch.phase === "opening") return this.protocolError(`data on channel ${ch.id} before its CREATE_ACK`)
    const size = payload.length
    const group = ch.group
    if (group === undefined) {
      if (ch.recvMsgWindow < 1 || ch.recvByteWindow < size) return this.windowViolation(ch, size)
      // Its AAD names the id it travelled on, which a MIGRATE may change before it is opened.
      if (ch.cipher !== undefined) ch.cipher.arrived(ch.id)
      this.deliver(ch, payload)
      return
    }
    for (const member of group.members) {
      if (member.recvMsgWindow < 1 || member.recvByteWindow < size) return this.windowViolation(member, size)
    }
    for (const member of group.members) this.deliver(member, payload)
  }

  private deliver(ch: ChannelState, payload: Uint8Array): void {
    ch.recvMsgWindow--
    ch.recvByteWindow -= payload.length
    if (ch.recv === undefined) ch.recv = [payload]
    else ch.recv.push(payload)
    ch.recvBytes += payload.length
    ch.recvMessages++
    this.stats.bufferedBytes += payload.length
    this.stats.bufferedMessages++
    const reader = ch.readWaker
    if (reader !== undefined) {
      ch.readWaker = undefined
      this.wakes.push(reader)
    }
  }

  /** A message beyond the window: discarded, and the channel (only) is aborted. */
  private windowViolation(ch: ChannelState, size: number): void {
    this.stats.windowViolations++
    this.stats.discardedMessages++
    const error = new ChannelError({
      reason: new FlowControlViolation({
        detail: `a ${size}-byte message with ${ch.recvMsgWindow} message(s) and ${ch.recvByteWindow} byte(s) of window left`
      }),
      channelId: ch.sendId
    })
    if (this.flood("window violations")) return
    if (ch.phase === "accepting") return this.refuseAccepting(ch, Code.FLOW_CONTROL_ERROR, "message beyond the window")
    this.abortWith(ch, Code.FLOW_CONTROL_ERROR, "", error)
  }

  private control(payload: Uint8Array): void {
    const message = F.decodeControl(payload, { sender: this.peerSide })
    if (message instanceof ChannelError) {
      const reason = message.reason
      if (reason._tag === "RequestRejected") {
        if (this.countPeerRequest()) return
        this.sendError(reason.requestId, reason.code, reason.detail)
        return
      }
      const code = "code" in reason && typeof reason.code === "number" ? reason.code : Code.PROTOCOL_ERROR
      return this.fail(message, code)
    }
    switch (message._tag) {
      case "Create":
        if (this.countPeerRequest()) return
        return this.onCreate(message)
      case "Destroy":
        if (this.countPeerRequest()) return
        return this.onDestroy(message)
      case "Migrate":
        if (this.countPeerRequest()) return
        return this.onMigrate(message)
      case "Merge":
        if (this.countPeerRequest()) return
        return this.onMerge(message)
      case "Unmerge":
        if (this.countPeerRequest()) return
        return this.onUnmerge(message)
      case "Link":
      case "Unlink":
      case "Filter":
        if (this.countPeerRequest()) return
        return this.onFanout(message)
      case "Ping":
        return this.onPing(message.requestId)
      case "Window":
        return this.onWindow(message)
      case "GoAway":
        return this.onGoAway(message.code, message.reason)
      case "UnknownNotification":
        return
      case "Pong": {
        const done = this.pongs.get(message.requestId)
        if (done === undefined) {
          this.stats.ignoredReplies++
          this.flood("replies to unknown requests")
          return
        }
        this.pongs.delete(message.requestId)
        this.wakes.push(done)
        return
      }
      default:
        return this.onReply(message)
    }
  }

  /** Answers true when the peer has too many requests unanswered (the connection ended). */
  private countPeerRequest(): boolean {
    if (this.stats.peerPendingRequests >= this.config.maxPeerRequests) {
      this.calm("unanswered requests", this.stats.peerPendingRequests + 1, this.config.maxPeerRequests)
      return true
    }
    return false
  }

  private onCreate(m: F.Create): void {
    const id = m.channelId
    if (this.channels.has(id)) return this.protocolError(`CREATE for channel ${id}, which is in use`, Code.INVALID_ID)
    this.refused.delete(id)
    const refuse = (code: number, detail: string) => {
      this.stats.refusedCreates++
      this.refused.set(id, { messages: this.config.windowMessages, bytes: this.config.windowBytes })
      this.sendError(m.requestId, code, detail)
      this.flood("refused creates")
    }
    if (this.goingAway || this.peerGoneAway) return refuse(Code.GOING_AWAY, "going away")
    let cipher: ChannelCipher | undefined
    for (const extension of m.extensions) {
      const name = extension._tag === "Fanout" ? "fanout" : "encryption"
      if (!this.config.extensions.has(name)) return refuse(Code.EXTENSION_NOT_NEGOTIATED, `${name} was not negotiated`)
      // The application's fanout handler decides on the channel (linkCreated).
      if (extension._tag === "Fanout" && this.hooks.fanout !== undefined) continue
      if (extension._tag === "Encryption") {
        const material = this.config.keys?.(extension.keyId)
        if (material === undefined) return refuse(Code.UNKNOWN_KEY, `no key ${extension.keyId}`)
        cipher = new ChannelCipher({
          suite: extension.suite,
          keyId: extension.keyId,
          material,
          side: this.config.side,
          creatorNonce: extension.nonce,
          acceptorNonce: randomNonce(),
          limits: this.config.sealLimits ?? DEFAULT_SEAL_LIMITS
        })
        continue
      }
      return refuse(Code.BAD_EXTENSION_PARAMS, `${name} is not available on this connection`)
    }
    if (this.stats.peerChannels >= this.config.maxChannels) return refuse(Code.CHANNEL_LIMIT, "too many channels")
    if (this.stats.backlog >= this.config.acceptBacklog) return refuse(Code.REFUSED, "accept backlog full")
    if (this.stats.budgetUsed + this.config.windowBytes > this.config.receiveBudget) {
      return refuse(Code.CHANNEL_LIMIT, "receive budget exhausted")
    }
    const sendMessages = this.config.windowMessages + m.extraMessages
    const sendBytes = this.config.windowBytes + m.extraBytes
    if (sendMessages > F.MAX_WINDOW || sendBytes > F.MAX_WINDOW) {
      return refuse(Code.FLOW_CONTROL_ERROR, "a window above 2^32-1")
    }
    const ch = new ChannelState(id, false, this.config)
    ch.phase = "accepting"
    ch.label = m.label
    ch.createRequestId = m.requestId
    ch.sendMsgWindow = sendMessages
    ch.sendByteWindow = ch.baseSendBytes = sendBytes
    ch.cipher = cipher
    this.live(ch)
    const fanout = fanoutOf(m.extensions)
    if (fanout !== undefined) {
      this.stats.peerPendingRequests++
      return this.linkCreated(ch, fanout)
    }
    this.backlog.push(ch)
    this.stats.backlog++
    this.stats.peerPendingRequests++
    if (this.acceptWakers.length > 0) this.wakes.push(this.acceptWakers.shift()!)
  }

  // -------------------------------------------------------------------------
  // Fanout: the peer's requests, answered for the application's handler
  // -------------------------------------------------------------------------

  /**
   * A CREATE with fanout (and maybe encryption): accepted (CREATE_ACK with
   * the fanout TLV, and the acceptor's nonce when encrypted) or refused as
   * the handler answers.
   */
  private linkCreated(ch: ChannelState, params: F.FanoutParams): void {
    ch.link = cloneParams(params)
    ch.linkBusy = true
    let answered = false
    this.hooks.fanout!.link(ch, ch.link, true, (refusal, commit) => {
      if (answered) return commit?.(false)
      answered = true
      ch.linkBusy = false
      // Destroyed while being decided, or the connection ended: already answered.
      if (ch.phase !== "accepting" || this.failure !== undefined || this.ended) return commit?.(false)
      if (refusal !== undefined) {
        ch.link = undefined
        this.refuseAccepting(ch, refusal.code, refusal.detail)
        this.flood("refused creates")
        return
      }
      this.stats.peerPendingRequests--
      ch.phase = "open"
      const cipher = ch.cipher
      const acked = this.queueControl({
        _tag: "CreateAck",
        requestId: ch.createRequestId,
        channelId: ch.sendId,
        extraMessages: 0,
        extraBytes: 0,
        extensions: cipher === undefined
          ? [{ _tag: "Fanout" }]
          : [{ _tag: "Fanout" }, { _tag: "Encryption", nonce: cipher.acceptorNonce! }]
      })
      // The link takes effect behind the CREATE_ACK: nothing of the flow can precede it.
      commit?.(acked)
      if (!acked) return
      if (cipher !== undefined) this.deriveKey(ch)
      this.maybeGrant(ch)
      this.pump(ch)
      this.wakeChannel(ch)
    })
  }

  private onFanout(m: F.Link | F.Unlink | F.Filter): void {
    const ch = this.channels.get(m.channelId)
    const hooks = this.hooks.fanout
    const refusal = refusalOf(m, ch, this.config.extensions.has("fanout"), hooks !== undefined)
    if (refusal !== undefined || ch === undefined || hooks === undefined) {
      this.sendError(m.requestId, refusal?.code ?? Code.UNKNOWN_FLOW, refusal?.detail ?? "this side serves no flows")
      this.flood("refused fanout requests")
      return
    }
    ch.linkBusy = true
    this.stats.peerPendingRequests++
    let answered = false
    const answer: Answer = (refused, commit) => {
      if (answered) return commit?.(false)
      answered = true
      ch.linkBusy = false
      this.stats.peerPendingRequests--
      if (this.failure !== undefined || this.ended) return commit?.(false)
      if (refused !== undefined) {
        this.sendError(m.requestId, refused.code, refused.detail)
        this.flood("refused fanout requests")
        return
      }
      let acked: boolean
      switch (m._tag) {
        case "Link":
          ch.link = link
          acked = this.queueControl({ _tag: "LinkAck", requestId: m.requestId, channelId: ch.sendId })
          break
        case "Unlink":
          ch.link = undefined
          acked = this.queueControl({ _tag: "UnlinkAck", requestId: m.requestId, channelId: ch.sendId })
          break
        case "Filter":
          if (ch.link !== undefined) ch.link = { ...ch.link, filter }
          acked = this.queueControl({ _tag: "FilterAck", requestId: m.requestId, channelId: ch.sendId })
          break
      }
      // The change takes effect behind its ACK (spec: Fanout, Changing and ending): what the
      // channel sends from now on follows the ACK on the wire.
      commit?.(acked)
    }
    const link = m._tag === "Link" ? cloneParams(m.fanout) : undefined
    const filter = m._tag === "Filter" ? cloneFilter(m.filter) : { _tag: "All" as const }
    if (m._tag === "Link") hooks.link(ch, link!, false, answer)
    else if (m._tag === "Unlink") hooks.unlink(ch, answer)
    else hooks.filter(ch, filter, answer)
  }

  /**
   * Our LINK, UNLINK or FILTER on a channel (`params` for LINK, `filter`
   * for FILTER). `done` gets the answer; the channel's link follows it.
   */
  fanoutRequest(
    ch: ChannelState,
    request:
      | { readonly _tag: "Link"; readonly params: F.FanoutParams }
      | { readonly _tag: "Unlink" }
      | { readonly _tag: "Filter"; readonly filter: F.ConsumerFilter },
    done: (error: ChannelError | undefined) => void
  ): ChannelError | undefined {
    const blocker = this.failure ?? ch.failure
    if (blocker !== undefined) return blocker
    const type = request._tag === "Link" ? F.TYPE_LINK : request._tag === "Unlink" ? F.TYPE_UNLINK : F.TYPE_FILTER
    if (!this.config.extensions.has("fanout")) {
      return requestFailedLocal(type, Code.EXTENSION_NOT_NEGOTIATED, "fanout was not negotiated")
    }
    if (ch.phase !== "open" || ch.localEnding || ch.gotPeerDestroy) {
      return requestFailedLocal(type, Code.UNKNOWN_CHANNEL, `channel ${ch.sendId} is not open`)
    }
    const pending = this.request(type, ch, undefined, (requestId): F.OutgoingControl =>
      request._tag === "Link"
        ? { _tag: "Link", requestId, channelId: ch.sendId, fanout: request.params }
        : request._tag === "Unlink"
        ? { _tag: "Unlink", requestId, channelId: ch.sendId }
        : { _tag: "Filter", requestId, channelId: ch.sendId, filter: request.filter }, (reply) => {
      if (reply instanceof ChannelError) return done(reply)
      if (reply._tag === "Error") return done(requestFailedLocal(type, reply.code, reply.detail))
      if (request._tag === "Link") ch.link = cloneParams(request.params)
      else if (request._tag === "Unlink") ch.link = undefined
      else if (ch.link !== undefined) ch.link = { ...ch.link, filter: cloneFilter(request.filter) }
      done(undefined)
    })
    return pending === undefined ? this.failure : undefined
  }

  /** Refuses a channel still in the backlog (its CREATE gets ERROR); its later data is discarded. */
  private refuseAccepting(ch: ChannelState, code: number, detail: string): void {
    this.stats.peerPendingRequests--
    this.sendError(ch.createRequestId, code, detail)
    this.stats.refusedCreates++
    this.dropReceived(ch)
    const left = { messages: ch.recvMsgWindow, bytes: ch.recvByteWindow }
    this.forget(ch)
    this.refused.set(ch.id, left)
  }

  private onDestroy(m: F.Destroy): void {
    const ch = this.channels.get(m.channelId)
    if (ch === undefined || ch.gotPeerDestroy) {
      // It may have crossed our own closing step.
      this.sendError(m.requestId, Code.UNKNOWN_CHANNEL, `channel ${m.channelId} is not open`)
      this.flood("destroys of unknown channels")
      return
    }
    if (ch.phase === "accepting") {
      // Answered after the answer to its CREATE: never seen by the application.
      this.refuseAccepting(ch, Code.REFUSED, "destroyed before it was accepted")
      this.refused.delete(ch.id)
      this.queueControl({ _tag: "DestroyAck", requestId: m.requestId, channelId: ch.sendId })
      this.flood("create and destroy churn")
      return
    }
    ch.gotPeerDestroy = true
    ch.peerDestroyRequestId = m.requestId
    ch.remoteEnded = true
    this.stats.peerPendingRequests++
    if (m.abort) {
      ch.aborting = false
      this.failChannel(
        ch,
        new ChannelError({
          reason: new ChannelClosed({ code: m.code, reason: m.reason, byPeer: true, aborted: true }),
          channelId: ch.sendId
        })
      )
      this.answerDestroy(ch)
    } else {
      ch.closeCode = m.code
      ch.closeReason = m.reason
      ch.localEnding = true
      // Answered once what this side still has queued is out.
      if (ch.sentDestroy || ch.queued === 0) this.answerDestroy(ch)
      this.wakeChannel(ch)
    }
    this.maybeClose(ch)
  }

  private answerDestroy(ch: ChannelState): void {
    if (ch.sentDestroyAck) return
    ch.sentDestroyAck = true
    this.stats.peerPendingRequests--
    this.dropQueued(ch)
    this.queueControl({ _tag: "DestroyAck", requestId: ch.peerDestroyRequestId, channelId: ch.sendId })
  }

  private onMigrate(m: F.Migrate): void {
    const ch = this.channels.get(m.oldId)
    if (ch === undefined || ch.phase !== "open" || ch.outbound) {
      return this.protocolError(`MIGRATE of channel ${m.oldId}, which is not an open channel of the peer`, Code.INVALID_ID)
    }
    if (this.channels.has(m.newId) || this.refused.has(m.newId)) {
      return this.protocolError(`MIGRATE to channel ${m.newId}, which is in use`, Code.INVALID_ID)
    }
    // The peer switched at its MIGRATE; this side switches at its ACK, which
    // follows everything it already queued on the old id.
    this.channels.delete(m.oldId)
    ch.id = m.newId
    this.channels.set(m.newId, ch)
    this.queueControl({ _tag: "MigrateAck", requestId: m.requestId, oldId: m.oldId, newId: m.newId })
    ch.sendId = m.newId
  }

  private resolveMembers(ids: ReadonlyArray<number>): Array<ChannelState> | number {
    const out: Array<ChannelState> = []
    for (const id of ids) {
      const ch = this.channels.get(id)
      if (ch === undefined || ch.phase !== "open" || ch.localEnding || ch.gotPeerDestroy || ch.failure !== undefined) {
        return id
      }
      out.push(ch)
    }
    return out
  }

  /** Whether a channel is involved in one of our MERGE/UNMERGE requests in flight. */
  private involvedInOwn(channels: ReadonlyArray<ChannelState>): boolean {
    for (const request of this.requests.values()) {
      if (request.involved === undefined) continue
      for (const ch of channels) {
        if (request.involved.includes(ch)) return true
        if (ch.group !== undefined) for (const m of ch.group.members) if (request.involved.includes(m)) return true
      }
    }
    return false
  }

  private onMerge(m: F.Merge): void {
    const resolved = this.resolveMembers([m.target, ...m.members])
    if (typeof resolved === "number") {
      return this.sendError(m.requestId, Code.UNKNOWN_CHANNEL, `channel ${resolved} is not open`)
    }
    const [target, ...members] = resolved
    const error = this.mergeRefusal(target, members)
    if (error !== undefined) return this.sendError(m.requestId, error.code, error.detail)
    // Concurrent requests: the client's wins.
    if (this.config.side === "client" && this.involvedInOwn(resolved)) {
      return this.sendError(m.requestId, Code.CONFLICT, "a request of ours involves these channels")
    }
    // Marker: our messages after the ACK count as merged.
    this.queueControl({ _tag: "MergeAck", requestId: m.requestId, target: m.target })
    this.applyMerge(target, members)
  }

  mergeRefusal(target: ChannelState, members: ReadonlyArray<ChannelState>): { code: number; detail: string } | undefined {
    // Each encrypted channel has a key of its own: none of them can take part in a group.
    if (target.cipher !== undefined || members.some((m) => m.cipher !== undefined)) {
      return { code: Code.INCOMPATIBLE_CHANNELS, detail: "encrypted channels cannot be merged" }
    }
    let size = target.group === undefined ? 1 : target.group.members.size
    for (const member of members) {
      if (member === target) return { code: Code.PROTOCOL_ERROR, detail: "the target is also a member" }
      if (member.group !== undefined && member.group !== target.group) {
        return { code: Code.ALREADY_MERGED, detail: `channel ${member.sendId} is in another group` }
      }
      if (member.group === undefined) size++
    }
    if (size > 64) return { code: Code.MERGE_LIMIT, detail: `a group of ${size} channels` }
    return undefined
  }

  private applyMerge(target: ChannelState, members: ReadonlyArray<ChannelState>): void {
    let group = target.group
    if (group === undefined) {
      group = new Group()
      group.members.add(target)
      target.group = group
    }
    for (const member of members) {
      group.members.add(member)
      member.group = group
    }
  }

  private onUnmerge(m: F.Unmerge): void {
    const resolved = this.resolveMembers(m.members)
    if (typeof resolved === "number") {
      return this.sendError(m.requestId, Code.UNKNOWN_CHANNEL, `channel ${resolved} is not open`)
    }
    for (const ch of resolved) {
      if (ch.group === undefined) return this.sendError(m.requestId, Code.NOT_MERGED, `channel ${ch.sendId} is in no group`)
    }
    if (this.config.side === "client" && this.involvedInOwn(resolved)) {
      return this.sendError(m.requestId, Code.CONFLICT, "a request of ours involves these channels")
    }
    this.queueControl({ _tag: "UnmergeAck", requestId: m.requestId })
    for (const ch of resolved) this.leaveGroup(ch)
  }

  private leaveGroup(ch: ChannelState): void {
    const group = ch.group
    if (group === undefined) return
    group.members.delete(ch)
    ch.group = undefined
    if (group.members.size === 1) {
      for (const last of group.members) last.group = undefined
      group.members.clear()
    }
    // Members that waited for this one's credit may go on.
    for (const member of group.members) this.pump(member)
  }

  private onPing(requestId: number): void {
    const now = this.hooks.now()
    if (now - this.pingWindowStart >= 1000) {
      this.pingWindowStart = now
      this.pingCount = 0
    }
    if (++this.pingCount > this.config.pingsPerSecond) {
      return this.calm("pings per second", this.pingCount, this.config.pingsPerSecond)
    }
    this.stats.pingsAnswered++
    this.queueControl({ _tag: "Pong", requestId }, true)
  }

  private onWindow(m: F.Window): void {
    for (const grant of m.grants) {
      const ch = this.channels.get(grant.channelId)
      // It may have crossed a closing step.
      if (ch === undefined || ch.phase === "closed") {
        this.stats.ignoredGrants++
        continue
      }
      if (grant.messages === 0 && grant.bytes === 0) {
        if (this.flood("empty grants")) return
        continue
      }
      if (ch.sendMsgWindow + grant.messages > F.MAX_WINDOW || ch.sendByteWindow + grant.bytes > F.MAX_WINDOW) {
        this.stats.windowViolations++
        if (this.flood("window violations")) return
        this.abortWith(
          ch,
          Code.FLOW_CONTROL_ERROR,
          "",
          new ChannelError({
            reason: new FlowControlViolation({ detail: "a grant above 2^32-1" }),
            channelId: ch.sendId
          })
        )
        continue
      }
      ch.sendMsgWindow += grant.messages
      ch.sendByteWindow += grant.bytes
      if (ch.group === undefined) this.pump(ch)
      else for (const member of ch.group.members) this.pump(member)
    }
  }

  private onGoAway(code: number, reason: string): void {
    if (code !== Code.NO_ERROR) {
      const error = new ChannelError({ reason: new GoneAway({ code, byPeer: true, reason }) })
      return this.fail(error, undefined)
    }
    this.peerGoneAway = true
    this.wakeAll(this.acceptWakers)
    this.maybeFinish()
  }

  private onReply(m: F.ControlMessage): void {
    if (!("requestId" in m)) return
    const pending = this.requests.get(m.requestId)
    if (pending === undefined) {
      // A request we gave up on, or never made.
      this.stats.ignoredReplies++
      this.flood("replies to unknown requests")
      return
    }
    if (m._tag !== "Error" && typeOfTag[m._tag] !== (pending.type | F.ACK_BIT)) {
      return this.protocolError(`a ${F.controlTypeName(typeOfTag[m._tag])} answering a ${F.controlTypeName(pending.type)}`)
    }
    this.requests.delete(m.requestId)
    this.stats.pendingRequests--
    switch (m._tag) {
      case "CreateAck": {
        const ch = pending.channel!
        if (m.channelId !== ch.sendId) return this.protocolError(`CREATE_ACK for channel ${m.channelId}, not ${ch.sendId}`)
        const fanoutAcked = m.extensions.some((e) => e._tag === "Fanout")
        const encryptionAcked = m.extensions.find((e) => e._tag === "Encryption")
        if (
          m.extensions.length !== (fanoutAcked ? 1 : 0) + (encryptionAcked === undefined ? 0 : 1) ||
          fanoutAcked !== (ch.link !== undefined) || (encryptionAcked !== undefined) !== (ch.cipher !== undefined)
        ) {
          return this.protocolError("CREATE_ACK whose extensions are not those asked for")
        }
        if (ch.phase === "opening") {
          ch.phase = "open"
          if (ch.cipher !== undefined && encryptionAcked !== undefined) {
            ch.cipher.acceptorNonce = new Uint8Array(encryptionAcked.nonce)
            this.deriveKey(ch)
          }
          ch.sendMsgWindow += m.extraMessages
          ch.sendByteWindow += m.extraBytes
          ch.baseSendBytes += m.extraBytes
          if (ch.sendMsgWindow > F.MAX_WINDOW || ch.sendByteWindow > F.MAX_WINDOW) {
            return this.protocolError("CREATE_ACK grants a window above 2^32-1", Code.FLOW_CONTROL_ERROR)
          }
          if (pending.abandoned) this.abortWith(ch, Code.CANCEL, "", undefined)
          this.pump(ch)
        }
        break
      }
      case "Error": {
        const ch = pending.channel
        if (pending.type === F.TYPE_CREATE && ch !== undefined && ch.phase === "opening") {
          if (ch.failure === undefined) {
            ch.failure = new ChannelError({
              reason: new RequestFailed({ controlType: F.TYPE_CREATE, code: m.code, detail: m.detail }),
              channelId: ch.sendId
            })
          }
          this.forget(ch)
        } else if (pending.type === F.TYPE_DESTROY && ch !== undefined) {
          // The peer no longer knows it: it crossed the peer's own closing step.
          ch.destroyAcked = true
          ch.remoteEnded = true
          this.maybeClose(ch)
          this.wakeChannel(ch)
        }
        break
      }
      case "DestroyAck": {
        const ch = pending.channel!
        ch.destroyAcked = true
        ch.remoteEnded = true
        ch.aborting = false
        this.wakeChannel(ch)
        this.maybeClose(ch)
        break
      }
      case "MigrateAck": {
        const ch = pending.channel!
        const migration = ch.migrating
        if (migration === undefined || m.oldId !== migration.oldId || m.newId !== migration.newId) {
          return this.protocolError(`MIGRATE_ACK ${m.oldId}->${m.newId} does not match the request`, Code.INVALID_ID)
        }
        ch.migrating = undefined
        if (ch.phase !== "closed") {
          if (this.channels.get(migration.oldId) === ch) this.channels.delete(migration.oldId)
          ch.id = migration.newId
          this.channels.set(migration.newId, ch)
        }
        this.ownIds.delete(migration.oldId)
        break
      }
      case "MergeAck":
      case "UnmergeAck":
      case "LinkAck":
      case "UnlinkAck":
      case "FilterAck":
        break
    }
    if (pending.involved !== undefined) {
      for (const ch of pending.involved) ch.paused--
    }
    if (!pending.abandoned) pending.done(m)
    if (pending.involved !== undefined) for (const ch of pending.involved) this.pump(ch)
  }

  /** The transport ended under us. */
  transportEnded(detail: string, cause?: unknown): void {
    if (this.failure !== undefined || this.ended) return
    if (this.peerGoneAway && this.liveCount() === 0) return this.finish()
    const error = new ChannelError({ reason: new TransportClosed({ detail, cause }) })
    this.fail(error, undefined)
  }

  // -------------------------------------------------------------------------
  // The application: opening and accepting
  // -------------------------------------------------------------------------

  /** Why no channel can be opened now, or undefined. */
  openBlocker(): ChannelError | undefined {
    if (this.failure !== undefined) return this.failure
    if (this.goingAway || this.peerGoneAway || this.ended) {
      return new ChannelError({ reason: new GoneAway({ code: Code.NO_ERROR, byPeer: this.peerGoneAway }) })
    }
    return undefined
  }

  /** The next free id of this side's parity after the last one allocated, or undefined. */
  allocateId(): number | undefined {
    const first = this.config.side === "client" ? 1 : 2
    const last = this.config.side === "client" ? MAX_ID - 1 : MAX_ID
    let id = this.lastId
    for (let n = 0; n < 32767; n++) {
      id = id + 2 > last ? first : id + 2
      if (!this.ownIds.has(id) && !this.channels.has(id)) {
        this.lastId = id
        this.ownIds.add(id)
        return id
      }
    }
    return undefined
  }

  /**
   * Sends CREATE for a new channel. `done` gets the answer (or why there is
   * none); the channel is in `opening` until then.
   */
  open(
    options: {
      readonly label: string
      readonly extraMessages: number
      readonly extraBytes: number
      readonly fanout?: F.FanoutParams | undefined
      readonly encryption?: { readonly suite: number; readonly keyId: number } | undefined
    },
    done: (error: ChannelError | undefined) => void
  ): { channel: ChannelState; abandon: () => void } | ChannelError {
    const blocker = this.openBlocker()
    if (blocker !== undefined) return blocker
    if (options.fanout !== undefined && !this.config.extensions.has("fanout")) {
      return requestFailedLocal(F.TYPE_CREATE, Code.EXTENSION_NOT_NEGOTIATED, "fanout was not negotiated")
    }
    let cipher: ChannelCipher | undefined
    const encryption = options.encryption
    if (encryption !== undefined) {
      if (!this.config.extensions.has("encryption")) {
        return requestFailedLocal(F.TYPE_CREATE, Code.EXTENSION_NOT_NEGOTIATED, "encryption was not negotiated")
      }
      if (!Number.isInteger(encryption.keyId) || encryption.keyId < 0 || encryption.keyId > 0xffffffff) {
        return new ChannelError({ reason: new InvalidMessage({ detail: `key id ${encryption.keyId} is not a u32` }) })
      }
      const material = this.config.keys?.(encryption.keyId)
      if (material === undefined) {
        return requestFailedLocal(F.TYPE_CREATE, Code.UNKNOWN_KEY, `no local key ${encryption.keyId}`)
      }
      cipher = new ChannelCipher({
        suite: encryption.suite,
        keyId: encryption.keyId,
        material,
        side: this.config.side,
        creatorNonce: randomNonce(),
        acceptorNonce: undefined,
        limits: this.config.sealLimits ?? DEFAULT_SEAL_LIMITS
      })
    }
    const id = this.allocateId()
    if (id === undefined) return new ChannelError({ reason: new ChannelIdsExhausted({ side: this.config.side }) })
    const ch = new ChannelState(id, true, this.config)
    ch.phase = "opening"
    ch.label = options.label
    ch.recvMsgWindow = ch.baseRecvMessages = this.config.windowMessages + options.extraMessages
    ch.recvByteWindow = ch.baseRecvBytes = this.config.windowBytes + options.extraBytes
    if (options.fanout !== undefined) ch.link = cloneParams(options.fanout)
    ch.cipher = cipher
    this.live(ch)
    const extensions: Array<F.CreateExtension> = []
    if (ch.link !== undefined) extensions.push({ _tag: "Fanout", ...ch.link })
    if (cipher !== undefined) {
      extensions.push({ _tag: "Encryption", suite: cipher.suite, keyId: cipher.keyId, nonce: cipher.creatorNonce })
    }
    const pending = this.request(F.TYPE_CREATE, ch, undefined, (requestId) => ({
      _tag: "Create",
      requestId,
      channelId: id,
      extraMessages: options.extraMessages,
      extraBytes: options.extraBytes,
      label: options.label,
      extensions
    }), (reply) => {
      if (reply instanceof ChannelError) return done(reply)
      if (reply._tag === "Error") return done(ch.failure)
      done(undefined)
    })
    if (pending === undefined) {
      this.forget(ch)
      return this.failure ?? new ChannelError({ reason: new TransportClosed({ detail: "connection failed" }) })
    }
    return {
      channel: ch,
      abandon: () => {
        pending.abandoned = true
      }
    }
  }

  /** The next channel of the backlog, accepted (CREATE_ACK sent), or undefined. */
  takeAccepted(): ChannelState | undefined {
    const ch = this.backlog.shift()
    if (ch === undefined) return undefined
    this.stats.backlog--
    this.stats.peerPendingRequests--
    ch.phase = "open"
    const cipher = ch.cipher
    this.queueControl({
      _tag: "CreateAck",
      requestId: ch.createRequestId,
      channelId: ch.sendId,
      extraMessages: 0,
      extraBytes: 0,
      extensions: cipher === undefined ? [] : [{ _tag: "Encryption", nonce: cipher.acceptorNonce! }]
    })
    if (cipher !== undefined) this.deriveKey(ch)
    // Early data may have used up half the window already.
    this.maybeGrant(ch)
    return ch
  }

  // -------------------------------------------------------------------------
  // Encryption (see channelCrypto.ts)
  // -------------------------------------------------------------------------

  /** Derives the channel key (both nonces known); its queued messages go out once it is there. */
  private deriveKey(ch: ChannelState): void {
    ch.cipher!.derive().then((failure) => {
      if (failure !== undefined) {
        // WebCrypto refused the key material: the channel cannot carry anything.
        if (ch.phase !== "closed") this.abortWith(ch, Code.INTERNAL_ERROR, "channel key derivation failed", undefined)
      } else {
        this.pump(ch)
      }
      this.flushWakes()
    })
  }

  /**
   * A sealed message's bytes are in place: the writer may take `out`
   * further. When sealing failed, the message (never written: the writer
   * stops at it) leaves `out`, and its channel alone is aborted, since its
   * sequence now has a gap; the other channels go on.
   */
  private sealed(ch: ChannelState, message: Uint8Array, failure: unknown): void {
    const sealing = this.sealing
    const first = sealing[0] === message
    if (first) sealing.shift()
    else {
      const i = sealing.indexOf(message)
      if (i >= 0) sealing.splice(i, 1)
    }
    if (failure === undefined) {
      if (first) this.hooks.wakeWriter()
      return
    }
    const at = this.out.indexOf(message)
    if (at >= 0) {
      this.out.splice(at, 1)
      this.stats.queuedBytes -= message.length
    }
    if (this.failure === undefined && ch.phase !== "closed" && ch.failure === undefined) {
      this.abortWith(ch, Code.INTERNAL_ERROR, "sealing a message failed", undefined)
    }
    this.hooks.wakeWriter()
    this.flushWakes()
  }

  /** A message of an encrypted channel did not open: that channel alone is aborted with DECRYPT_FAILED. */
  decryptFailed(ch: ChannelState, counter: number): void {
    if (ch.phase === "closed" || ch.failure !== undefined) return
    this.abortWith(ch, Code.DECRYPT_FAILED, "", new ChannelError({
      reason: new DecryptFailed({ counter }),
      channelId: ch.sendId
    }))
  }

  // -------------------------------------------------------------------------
  // The application: reading
  // -------------------------------------------------------------------------

  /** Takes every message received on a channel, and credits it back. */
  takeReceived(ch: ChannelState): Array<Uint8Array> | undefined {
    const messages = ch.recv
    if (messages === undefined) return undefined
    ch.recv = undefined
    this.stats.bufferedBytes -= ch.recvBytes
    this.stats.bufferedMessages -= ch.recvMessages
    ch.consumedBytes += ch.recvBytes
    ch.consumedMessages += ch.recvMessages
    ch.recvBytes = 0
    ch.recvMessages = 0
    this.maybeGrant(ch)
    return messages
  }

  /** Queues a grant once half the base window (messages or bytes) was consumed. */
  private maybeGrant(ch: ChannelState): void {
    if (ch.grantQueued || ch.phase !== "open" || ch.remoteEnded || ch.aborting) return
    if (ch.consumedMessages * 2 >= ch.baseRecvMessages || ch.consumedBytes * 2 >= ch.baseRecvBytes) {
      ch.grantQueued = true
      this.grants.push(ch)
      this.hooks.wakeWriter()
    }
  }

  // -------------------------------------------------------------------------
  // The application: writing
  // -------------------------------------------------------------------------

  /** Why a channel cannot take a message now, or undefined. */
  sendBlocker(ch: ChannelState, size: number): ChannelError | undefined {
    if (ch.failure !== undefined) return ch.failure
    if (this.failure !== undefined) return this.failure
    if (ch.localEnding || ch.phase === "closed") {
      return new ChannelError({
        reason: new ChannelClosed({
          code: ch.closeCode,
          reason: ch.closeReason,
          byPeer: ch.gotPeerDestroy,
          aborted: false
        }),
        channelId: ch.sendId
      })
    }
    if (size > ch.baseSendBytes) {
      return new ChannelError({
        reason: new MessageTooLarge({ size, max: ch.baseSendBytes, code: Code.FLOW_CONTROL_ERROR }),
        channelId: ch.sendId
      })
    }
    return undefined
  }

  /**
   * One plain message on a channel with nothing queued and credit for it
   * goes straight to `out`, without the channel's queue: the common case of
   * a sender its window keeps up with. Anything else takes `enqueue`.
   */
  sendOne(ch: ChannelState, message: Uint8Array): ChannelError | undefined {
    const size = message.length
    if (
      ch.send !== undefined || ch.cipher !== undefined || ch.group !== undefined || ch.paused > 0 ||
      ch.phase !== "open" || ch.localEnding || this.failure !== undefined || ch.failure !== undefined ||
      ch.sendMsgWindow < 1 || ch.sendByteWindow < size || size > ch.baseSendBytes
    ) {
      return this.enqueue(ch, [message])
    }
    ch.sendMsgWindow--
    ch.sendByteWindow -= size
    const framed = F.encodeData(ch.sendId, message)
    this.out.push(framed)
    this.stats.queuedBytes += framed.length
    this.wakeAll(ch.writeWakers)
    this.hooks.wakeWriter()
    return undefined
  }

  /**
   * Queues messages on a channel and sends what its credit allows. `flow`:
   * they are messages of a fanout flow, which `withdrawFlow` may still take
   * back until they leave.
   */
  enqueue(ch: ChannelState, messages: ReadonlyArray<Uint8Array>, flow = false): ChannelError | undefined {
    const cipher = ch.cipher
    const overhead = cipher === undefined ? 0 : F.TAG_SIZE
    for (let i = 0; i < messages.length; i++) {
      const error = this.sendBlocker(ch, messages[i].length + overhead)
      if (error !== undefined) return error
    }
    if (cipher !== undefined && !cipher.admit(messages)) {
      // What was admitted still goes out, then DESTROY KEY_EXHAUSTED (spec: Encryption, Limits).
      this.close(ch, Code.KEY_EXHAUSTED, "channel key exhausted")
      return new ChannelError({
        reason: new ChannelClosed({ code: Code.KEY_EXHAUSTED, reason: "channel key exhausted", byPeer: false, aborted: false }),
        channelId: ch.sendId
      })
    }
    if (ch.send === undefined) ch.send = messages.slice()
    else for (let i = 0; i < messages.length; i++) ch.send.push(messages[i])
    for (let i = 0; i < messages.length; i++) ch.sendQueuedBytes += messages[i].length
    const marks = ch.sendFlow
    if (marks !== undefined) {
      // Marks run index for index with `send`.
      for (let i = 0; i < messages.length; i++) marks.push(flow)
      if (flow) ch.flowQueued += messages.length
    }
    this.pump(ch)
    if (flow && marks === undefined && ch.send !== undefined) {
      // Marked only when some of them wait, so a consumer that keeps up costs nothing more. The
      // pump takes from the head, so what is left of them is the queue's tail.
      const queue = ch.send
      const left = Math.min(queue.length - ch.sendHead, messages.length)
      if (left > 0) {
        const made = new Array<boolean>(queue.length).fill(false)
        for (let i = queue.length - left; i < queue.length; i++) made[i] = true
        ch.sendFlow = made
        ch.flowQueued += left
      }
    }
    return undefined
  }

  /**
   * Withdraws the flow messages of a channel's queue that `keep` rejects
   * (all of them without `keep`): they have not left, so they never will.
   * The application's own messages stay, in order. Answers how many went.
   */
  withdrawFlow(ch: ChannelState, keep: ((payload: Uint8Array) => boolean) | undefined): number {
    const queue = ch.send
    const marks = ch.sendFlow
    if (queue === undefined || marks === undefined || ch.flowQueued === 0) return 0
    let kept = ch.sendHead
    let messages = 0
    let bytes = 0
    for (let i = ch.sendHead; i < queue.length; i++) {
      const payload = queue[i]
      const isFlow = marks[i]
      if (isFlow && !keeps(keep, payload)) {
        messages++
        bytes += payload.length
        continue
      }
      queue[kept] = payload
      marks[kept] = isFlow
      kept++
    }
    if (messages === 0) return 0
    queue.length = kept
    marks.length = kept
    ch.flowQueued -= messages
    ch.sendQueuedBytes -= bytes
    const cipher = ch.cipher
    if (cipher !== undefined) {
      // Never sealed: they no longer count towards the key's limits.
      cipher.admittedMessages -= messages
      cipher.admittedBytes -= bytes
    }
    if (ch.sendHead === kept) {
      ch.send = undefined
      ch.sendFlow = undefined
      ch.sendHead = 0
    }
    // A close waiting for the queue may go on, and so may senders waiting for it to drain.
    this.pump(ch)
    this.wakeAll(ch.writeWakers)
    return messages
  }

  /** Moves a channel's queued messages to `out` while credit allows; then its closing step. */
  pump(ch: ChannelState): void {
    if (this.failure !== undefined || ch.phase === "closed" || ch.phase === "accepting") return
    const queue = ch.send
    const cipher = ch.cipher
    // An encrypted channel sends nothing before its key exists: no early data (spec: Encryption).
    if (queue !== undefined && ch.paused === 0 && (cipher === undefined || cipher.key !== undefined)) {
      const group = ch.group
      const overhead = cipher === undefined ? 0 : F.TAG_SIZE
      let moved = false
      while (ch.sendHead < queue.length) {
        const payload = queue[ch.sendHead]
        const size = payload.length
        // Credit counts the payload as on the wire: a sealed one carries its tag.
        const wire = size + overhead
        if (group === undefined) {
          if (ch.sendMsgWindow < 1 || ch.sendByteWindow < wire) break
          ch.sendMsgWindow--
          ch.sendByteWindow -= wire
        } else {
          let fits = true
          for (const m of group.members) {
            if (m.sendMsgWindow < 1 || m.sendByteWindow < wire || m.paused > 0) {
              fits = false
              break
            }
          }
          if (!fits) break
          for (const m of group.members) {
            m.sendMsgWindow--
            m.sendByteWindow -= wire
          }
        }
        const marks = ch.sendFlow
        if (marks !== undefined && marks[ch.sendHead]) ch.flowQueued--
        queue[ch.sendHead++] = EMPTY
        ch.sendQueuedBytes -= size
        let message: Uint8Array
        if (cipher === undefined) {
          message = F.encodeData(ch.sendId, payload)
        } else {
          // Sealed here, in wire order, under the id it travels on; the writer waits for the bytes.
          message = new Uint8Array(F.HEADER_SIZE + wire)
          F.writeHeader(message, 0, ch.sendId)
          this.sealing.push(message)
          const sealedMessage = message
          cipher.seal(ch.sendId, payload, message, (failure) => this.sealed(ch, sealedMessage, failure))
        }
        this.out.push(message)
        this.stats.queuedBytes += message.length
        moved = true
      }
      if (ch.sendHead === queue.length) {
        ch.send = undefined
        ch.sendFlow = undefined
        ch.sendHead = 0
      } else if (ch.sendHead > 64 && ch.sendHead * 2 > queue.length) {
        queue.splice(0, ch.sendHead)
        ch.sendFlow?.splice(0, ch.sendHead)
        ch.sendHead = 0
      }
      if (moved) {
        this.wakeAll(ch.writeWakers)
        this.hooks.wakeWriter()
      }
    }
    if (ch.localEnding && ch.queued === 0 && !ch.sentDestroy && !ch.sentDestroyAck && ch.phase === "open") {
      if (ch.gotPeerDestroy) this.answerDestroy(ch)
      else this.sendDestroy(ch, false)
      this.maybeClose(ch)
    }
  }

  private sendDestroy(ch: ChannelState, abort: boolean): void {
    ch.sentDestroy = true
    this.request(F.TYPE_DESTROY, ch, undefined, (requestId) => ({
      _tag: "Destroy",
      requestId,
      channelId: ch.sendId,
      abort,
      code: ch.closeCode,
      reason: ch.closeReason
    }), () => {})
  }

  // -------------------------------------------------------------------------
  // The application: closing
  // -------------------------------------------------------------------------

  /** Graceful close: what is queued goes out, then DESTROY (or the answer to the peer's). */
  close(ch: ChannelState, code: number, reason: string): void {
    if (ch.localEnding || ch.phase === "closed" || ch.failure !== undefined) return
    ch.localEnding = true
    ch.closeCode = code
    ch.closeReason = reason
    if (ch.phase === "opening") {
      // Allowed before CREATE_ACK: the peer answers it after the CREATE.
      this.sendDestroy(ch, false)
      return
    }
    this.pump(ch)
    this.wakeChannel(ch)
  }

  /** Abort: drops what is queued and received; DESTROY with ABORT (or the answer to the peer's). */
  abort(ch: ChannelState, code: number, reason = ""): void {
    if (ch.phase === "closed") return
    if (ch.sentDestroy && ch.aborting) return
    this.abortWith(ch, code, reason, undefined)
  }

  private abortWith(ch: ChannelState, code: number, reason: string, error: ChannelError | undefined): void {
    this.failChannel(
      ch,
      error ?? new ChannelError({
        reason: new ChannelClosed({ code, reason, byPeer: false, aborted: true }),
        channelId: ch.sendId
      })
    )
    ch.localEnding = true
    ch.closeCode = code
    ch.closeReason = reason
    if (ch.gotPeerDestroy) {
      this.answerDestroy(ch)
    } else if (!ch.sentDestroy) {
      ch.aborting = true
      ch.remoteEnded = true
      this.sendDestroy(ch, true)
    } else {
      // Our graceful DESTROY is out: discard what still arrives until its ACK.
      ch.aborting = !ch.destroyAcked
    }
    this.leaveGroup(ch)
    this.maybeClose(ch)
  }

  // -------------------------------------------------------------------------
  // The application: migrate, merge, ping
  // -------------------------------------------------------------------------

  migrate(ch: ChannelState, done: (result: number | ChannelError) => void): ChannelError | undefined {
    const blocker = this.failure ?? ch.failure
    if (blocker !== undefined) return blocker
    if (ch.id === F.DEFAULT_CHANNEL || !ch.outbound) {
      return violationLocal(`channel ${ch.sendId} is not this side's to migrate`)
    }
    if (ch.phase !== "open" || ch.sentDestroy || ch.sentDestroyAck) {
      return violationLocal(`channel ${ch.sendId} is not open`)
    }
    if (ch.migrating !== undefined) return violationLocal(`channel ${ch.sendId} is already migrating`)
    const newId = this.allocateId()
    if (newId === undefined) return new ChannelError({ reason: new ChannelIdsExhausted({ side: this.config.side }) })
    const oldId = ch.sendId
    ch.migrating = { oldId, newId }
    const pending = this.request(
      F.TYPE_MIGRATE,
      ch,
      undefined,
      (requestId) => ({ _tag: "Migrate", requestId, oldId, newId }),
      (reply) => done(reply instanceof ChannelError ? reply : newId)
    )
    if (pending === undefined) return this.failure
    // From the MIGRATE on, our messages and control messages name the new id.
    ch.sendId = newId
    return undefined
  }

  merge(
    target: ChannelState,
    members: ReadonlyArray<ChannelState>,
    done: (error: ChannelError | undefined) => void
  ): ChannelError | undefined {
    const all = [target, ...members]
    const local = this.localGroupCheck(all)
    if (local !== undefined) return local
    const refusal = this.mergeRefusal(target, members)
    if (refusal !== undefined) return requestFailedLocal(F.TYPE_MERGE, refusal.code, refusal.detail)
    const involved = this.involve(all)
    const pending = this.request(F.TYPE_MERGE, undefined, involved, (requestId) => ({
      _tag: "Merge",
      requestId,
      target: target.sendId,
      members: members.map((m) => m.sendId)
    }), (reply) => {
      if (reply instanceof ChannelError) return done(reply)
      if (reply._tag === "Error") return done(requestFailedLocal(F.TYPE_MERGE, reply.code, reply.detail))
      // The requester's messages count as merged once the ACK is in.
      if (this.localGroupCheck(all) === undefined && this.mergeRefusal(target, members) === undefined) {
        this.applyMerge(target, members)
      }
      done(undefined)
    })
    if (pending === undefined) {
      for (const ch of involved) ch.paused--
      return this.failure
    }
    return undefined
  }

  unmerge(members: ReadonlyArray<ChannelState>, done: (error: ChannelError | undefined) => void): ChannelError | undefined {
    const local = this.localGroupCheck(members)
    if (local !== undefined) return local
    for (const ch of members) {
      if (ch.group === undefined) {
        return requestFailedLocal(F.TYPE_UNMERGE, Code.NOT_MERGED, `channel ${ch.sendId} is in no group`)
      }
    }
    const involved = this.involve(members)
    const pending = this.request(F.TYPE_UNMERGE, undefined, involved, (requestId) => ({
      _tag: "Unmerge",
      requestId,
      members: members.map((m) => m.sendId)
    }), (reply) => {
      if (reply instanceof ChannelError) return done(reply)
      if (reply._tag === "Error") return done(requestFailedLocal(F.TYPE_UNMERGE, reply.code, reply.detail))
      for (const ch of members) this.leaveGroup(ch)
      done(undefined)
    })
    if (pending === undefined) {
      for (const ch of involved) ch.paused--
      return this.failure
    }
    return undefined
  }

  private localGroupCheck(channels: ReadonlyArray<ChannelState>): ChannelError | undefined {
    if (this.failure !== undefined) return this.failure
    for (const ch of channels) {
      if (ch.phase !== "open" || ch.failure !== undefined || ch.localEnding || ch.gotPeerDestroy) {
        return requestFailedLocal(F.TYPE_MERGE, Code.UNKNOWN_CHANNEL, `channel ${ch.sendId} is not open`)
      }
    }
    return undefined
  }

  /** Pauses every channel a request involves (named, and their groups' members). */
  private involve(channels: ReadonlyArray<ChannelState>): Array<ChannelState> {
    const set = new Set<ChannelState>()
    for (const ch of channels) {
      set.add(ch)
      if (ch.group !== undefined) for (const m of ch.group.members) set.add(m)
    }
    const out = Array.from(set)
    for (const ch of out) ch.paused++
    return out
  }

  ping(done: () => void): number | ChannelError {
    if (this.failure !== undefined) return this.failure
    const requestId = this.newRequestId()
    this.pongs.set(requestId, done)
    this.queueControl({ _tag: "Ping", requestId }, true)
    return requestId
  }

  cancelPing(requestId: number): void {
    this.pongs.delete(requestId)
  }

  // -------------------------------------------------------------------------
  // Going away
  // -------------------------------------------------------------------------

  /** GOAWAY NO_ERROR: no new channels either way; backlogged ones are refused. */
  goAway(): void {
    if (this.goingAway || this.failure !== undefined || this.ended) return
    this.goingAway = true
    this.queueControl({ _tag: "GoAway", code: Code.NO_ERROR, reason: "closing" }, false)
    while (this.backlog.length > 0) this.refuseAccepting(this.backlog[0], Code.GOING_AWAY, "going away")
    this.wakeAll(this.acceptWakers)
    this.maybeFinish()
  }

  /** Aborts every live channel (CANCEL). */
  abandon(): void {
    for (const ch of Array.from(this.channels.values())) {
      if (!ch.sentDestroy && !ch.sentDestroyAck) this.abort(ch, Code.CANCEL)
    }
  }

  private liveCount(): number {
    let n = 0
    for (const ch of this.channels.values()) if (ch.phase !== "closed") n++
    return n
  }

  private maybeFinish(): void {
    if ((this.goingAway || this.peerGoneAway) && this.liveCount() === 0) this.finish()
  }

  private finish(): void {
    if (this.ended || this.failure !== undefined) return
    this.ended = true
    this.wakeAll(this.acceptWakers)
    this.hooks.wakeWriter()
    this.hooks.onEnd(undefined)
  }

  // -------------------------------------------------------------------------
  // The writer
  // -------------------------------------------------------------------------

  get hasWork(): boolean {
    return this.urgent.length > 0 || this.grants.length > 0 ||
      (this.out.length > 0 && (this.sealing.length === 0 || this.out[0] !== this.sealing[0]))
  }

  /** Whether senders should wait for the writer. */
  get congested(): boolean {
    return this.stats.queuedBytes >= this.config.writeHighWater
  }

  /** The next batch for the transport: PONG and GOAWAY, then data and markers in order, then WINDOW. */
  takeBatch(): Array<Uint8Array> | undefined {
    if (this.grants.length > 0 && this.failure === undefined) this.buildWindows()
    const ready = this.out
    let held: Array<Uint8Array> | undefined
    if (this.sealing.length > 0) {
      // Everything from the first message still being sealed on waits, in order.
      const at = ready.indexOf(this.sealing[0])
      if (at >= 0) {
        held = ready.slice(at)
        ready.length = at
      }
    }
    let batch: Array<Uint8Array>
    if (this.urgent.length === 0) {
      batch = ready
    } else {
      batch = this.urgent
      for (let i = 0; i < ready.length; i++) batch.push(ready[i])
    }
    this.out = held ?? []
    this.urgent = []
    let heldBytes = 0
    let heldControl = 0
    if (held !== undefined) {
      for (let i = 0; i < held.length; i++) {
        heldBytes += held[i].length
        if (F.channelIdOf(held[i]) === F.CONTROL_CHANNEL) heldControl++
      }
    }
    this.stats.queuedBytes = heldBytes
    this.stats.controlQueued = heldControl
    this.stats.messagesOut += batch.length
    this.wakeAll(this.outWakers)
    return batch.length === 0 ? undefined : batch
  }

  private buildWindows(): void {
    let grants: Array<F.WindowGrant> = []
    for (let i = 0; i < this.grants.length; i++) {
      const ch = this.grants[i]
      ch.grantQueued = false
      if (ch.phase !== "open" || ch.remoteEnded || ch.aborting || ch.failure !== undefined) continue
      let messages = ch.consumedMessages
      let bytes = ch.consumedBytes
      if (messages === 0 && bytes === 0) continue
      ch.consumedMessages = 0
      ch.consumedBytes = 0
      if (this.shouldGrow(ch)) {
        const grownMessages = this.growWindow(ch, "messages")
        const grownBytes = this.growWindow(ch, "bytes")
        messages += grownMessages
        bytes += grownBytes
        if (grownMessages + grownBytes > 0) this.stats.windowGrowths++
      }
      ch.recvMsgWindow += messages
      ch.recvByteWindow += bytes
      grants.push({ channelId: ch.sendId, messages, bytes })
      if (grants.length === F.MAX_WINDOW_GRANTS) {
        this.pushWindow(grants)
        grants = []
      }
    }
    this.grants.length = 0
    if (grants.length > 0) this.pushWindow(grants)
  }

  /**
   * Whether a channel's window grows at this grant: its consumer keeps up
   * (at most half a window buffered). Then the window, not the consumer, is
   * what can hold the peer back, for a round trip per half window; the
   * receiver cannot see whether a grant is still on its way while the peer
   * waits, so it grows the window up to the maximum while the consumer keeps
   * up. A stalled consumer never gets here (no grant without consumption),
   * and one that falls behind keeps messages buffered, so neither grows.
   */
  private shouldGrow(ch: ChannelState): boolean {
    return ch.recvMessages * 2 <= ch.baseRecvMessages && ch.recvBytes * 2 <= ch.baseRecvBytes
  }

  /**
   * Doubles one dimension of a channel's receive window, up to its maximum
   * and within half the receive budget (the rest stays for new channels),
   * and answers the credit added. The spec lets a grant exceed what was
   * consumed; the base grows with it, so grants stay at half the base.
   */
  private growWindow(ch: ChannelState, dimension: "messages" | "bytes"): number {
    if (dimension === "messages") {
      const extra = Math.min(ch.baseRecvMessages, this.config.maxWindowMessages - ch.baseRecvMessages)
      if (extra <= 0) return 0
      ch.baseRecvMessages += extra
      ch.recvMsgWindow += extra
      return extra
    }
    const extra = Math.min(
      ch.baseRecvBytes,
      this.config.maxWindowBytes - ch.baseRecvBytes,
      Math.floor(this.config.receiveBudget / 2) - this.stats.budgetUsed
    )
    if (extra <= 0) return 0
    ch.baseRecvBytes += extra
    ch.recvByteWindow += extra
    this.stats.budgetUsed += extra
    return extra
  }

  private pushWindow(grants: ReadonlyArray<F.WindowGrant>): void {
    const bytes = F.encodeControl({ _tag: "Window", grants })
    if (bytes instanceof ChannelError) return this.fail(bytes, Code.INTERNAL_ERROR)
    this.out.push(bytes)
    this.stats.windowsSent++
    this.stats.grantsSent += grants.length
  }

  /** The connection is being torn down locally: the writer ends once what is queued is out. */
  stopping = false

  stop(): void {
    this.stopping = true
    this.hooks.wakeWriter()
  }

  /** Whether the writer is finished: ended, failed or stopping, with nothing left. */
  get writerDone(): boolean {
    return (this.ended || this.failure !== undefined || this.stopping) && !this.hasWork &&
      (this.failure !== undefined || this.sealing.length === 0)
  }
}

const EMPTY = new Uint8Array(0)

/** A withdrawal predicate that throws keeps nothing, like a fanout filter that throws. */
const keeps = (keep: ((payload: Uint8Array) => boolean) | undefined, payload: Uint8Array): boolean => {
  if (keep === undefined) return false
  try {
    return keep(payload) === true
  } catch {
    return false
  }
}

const typeOfTag: Record<Exclude<F.ControlMessage["_tag"], "UnknownNotification">, number> = {
  Create: F.TYPE_CREATE,
  CreateAck: F.TYPE_CREATE_ACK,
  Destroy: F.TYPE_DESTROY,
  DestroyAck: F.TYPE_DESTROY_ACK,
  Migrate: F.TYPE_MIGRATE,
  MigrateAck: F.TYPE_MIGRATE_ACK,
  Merge: F.TYPE_MERGE,
  MergeAck: F.TYPE_MERGE_ACK,
  Unmerge: F.TYPE_UNMERGE,
  UnmergeAck: F.TYPE_UNMERGE_ACK,
  Link: F.TYPE_LINK,
  LinkAck: F.TYPE_LINK_ACK,
  Unlink: F.TYPE_UNLINK,
  UnlinkAck: F.TYPE_UNLINK_ACK,
  Filter: F.TYPE_FILTER,
  FilterAck: F.TYPE_FILTER_ACK,
  Ping: F.TYPE_PING,
  Pong: F.TYPE_PONG,
  Window: F.TYPE_WINDOW,
  GoAway: F.TYPE_GOAWAY,
  Error: F.TYPE_ERROR
}

/** A local misuse that is refused before anything is sent. */
const violationLocal = (detail: string): ChannelError =>
  new ChannelError({ reason: new ProtocolViolation({ detail, code: Code.INVALID_ID }) })

const requestFailedLocal = (controlType: number, code: number, detail: string): ChannelError =>
  new ChannelError({ reason: new RequestFailed({ controlType, code, detail }) })
