/**
 * The session engine (docs/spec/mux.md): the state of one session and all
 * its streams, in plain TypeScript. The reader fiber feeds it decoded frames
 * (it is the codec's `FrameSink`); the writer fiber asks it for the next
 * batch of frames to write; streams call into it to read, write, close and
 * reset. Nothing here waits: where a caller must wait, the engine stores a
 * resume callback and the Effect layer (`Session.ts`, `MuxStream.ts`) turns
 * it into a suspended fiber.
 *
 * @internal
 */
import {
  CODE_CANCEL,
  CODE_ENHANCE_YOUR_CALM,
  CODE_FLOW_CONTROL_ERROR,
  CODE_ID_EXHAUSTED,
  CODE_INTERNAL_ERROR,
  CODE_NO_ERROR,
  CODE_PROTOCOL_ERROR,
  CODE_REFUSED_STREAM,
  CODE_STREAM_CLOSED,
  type FrameEncoder,
  type FrameSink,
  SETTING_ACCEPT_BACKLOG,
  SETTING_MAX_FRAME_SIZE,
  SETTING_MAX_STREAMS
} from "./muxFrames.ts"
import { ReceiveRing } from "./receiveRing.ts"

/** Every stream starts with this window in both directions (spec: Flow control). */
export const INITIAL_WINDOW = 256 * 1024
const MAX_WINDOW_VALUE = 0xffffffff
const MAX_CLIENT_ID = 0xffffffff
const MAX_SERVER_ID = 0xfffffffe

export interface EngineConfig {
  readonly client: boolean
  readonly codec: "yamux" | "plexus"
  readonly maxWindow: number
  readonly sessionBudget: number
  readonly acceptBacklog: number
  readonly maxInboundStreams: number
  readonly maxOutboundStreams: number
  /** Largest DATA payload we send (yamux: 64 KiB; plexus: the peer's setting). */
  readonly sendFrameSize: number
  /** Largest DATA payload we accept (plexus; announced in SETTINGS). */
  readonly receiveFrameSize: number
  readonly maxControlQueue: number
  readonly writeBatchBytes: number
  readonly sendBufferBytes: number
  /** Frames for closed streams, pings and refused opens tolerated per `floodWindowMs`. */
  readonly floodLimit: number
  readonly floodWindowMs: number
  readonly firstStreamId?: number | undefined
}

/** How a stream ended abruptly, as the engine knows it. */
export interface StreamFailure {
  readonly kind: "reset" | "refused" | "session"
  readonly code: number
  readonly byPeer: boolean
  readonly retryable: boolean
}

/** How the session ended. */
export interface SessionFailure {
  readonly kind: "protocol" | "limit" | "goaway" | "keepalive" | "transport" | "exhausted"
  readonly code: number
  readonly detail: string
  readonly offset?: number | undefined
  readonly limit?: { readonly name: string; readonly value: number; readonly max: number } | undefined
  readonly byPeer: boolean
  readonly lastStreamId?: number | undefined
}

type Waker = () => void

/** One stream. Fields are plain so that 10,000 idle streams stay small. */
export class StreamState {
  readonly id: number
  readonly outbound: boolean
  type = 0
  urgency = 3
  incremental = true
  /** The peer acknowledged it (outbound) or the application accepted it (inbound). */
  acked = false
  /** The opening frame went out (outbound). */
  announced = false
  remoteFin = false
  /** The application will write no more. */
  localFin = false
  finSent = false
  /** The application stopped reading: arriving data is dropped (and credited back). */
  readClosed = false
  failure: StreamFailure | undefined = undefined
  // receive side
  recv: Array<Uint8Array> | undefined = undefined
  /** Set once the stream is read with `readInto`: received bytes are kept here instead of in `recv`. */
  ring: ReceiveRing | undefined = undefined
  recvBytes = 0
  /** Credit the peer still has. */
  recvWindow = INITIAL_WINDOW
  windowSize = INITIAL_WINDOW
  consumed = 0
  lastGrantAt = 0
  readWaker: Waker | undefined = undefined
  // send side
  send: Array<Uint8Array> | undefined = undefined
  sendHead = 0
  sendBytes = 0
  sendWindow = INITIAL_WINDOW
  writeWakers: Array<Waker> | undefined = undefined
  /** Waiting for the stream to fail (`MuxStream.failed`), whatever its read and write sides are doing. */
  failureWakers: Array<Waker> | undefined = undefined
  /** DATA frames sent after the peer's FIN: each may draw a WINDOW_UPDATE that arrives after the stream closed. */
  lateFrames = 0
  // scheduler
  ready = false
  next: StreamState | undefined = undefined

  constructor(id: number, outbound: boolean) {
    this.id = id
    this.outbound = outbound
  }

  get done(): boolean {
    return this.failure !== undefined || (this.finSent && this.remoteFin && this.recvBytes === 0)
  }
}

/** Counters exposed for tests, budgets and metrics. */
export interface EngineStats {
  openStreams: number
  inboundStreams: number
  outboundStreams: number
  backlog: number
  bytesIn: number
  bytesOut: number
  bufferedBytes: number
  queuedSendBytes: number
  controlQueued: number
  grantedWindow: number
  resetsSent: number
  resetsReceived: number
  refused: number
  windowStalls: number
  ignoredFrames: number
  pingsAnswered: number
}

export interface EngineHooks {
  /** The writer has work: wake it. */
  readonly wakeWriter: () => void
  /** A new inbound stream passed every check (it is in the backlog, or typed). */
  readonly onIncoming: (stream: StreamState) => void
  /** A ping answer arrived. */
  /** Answers whether the ping was outstanding. */
  readonly onPong: (opaque: number) => boolean
  /** The session failed or finished going away; the Effect layer tears down. */
  readonly onEnd: (failure: SessionFailure | undefined) => void
  /** Whether a handler exists for a stream type (plexus typed streams). */
  readonly hasHandler: (type: number) => boolean
  readonly now: () => number
}

export class Engine implements FrameSink {
  readonly config: EngineConfig
  readonly encoder: FrameEncoder
  readonly hooks: EngineHooks
  readonly streams = new Map<number, StreamState>()
  readonly stats: EngineStats = {
    openStreams: 0,
    inboundStreams: 0,
    outboundStreams: 0,
    backlog: 0,
    bytesIn: 0,
    bytesOut: 0,
    bufferedBytes: 0,
    queuedSendBytes: 0,
    controlQueued: 0,
    grantedWindow: 0,
    resetsSent: 0,
    resetsReceived: 0,
    refused: 0,
    windowStalls: 0,
    ignoredFrames: 0,
    pingsAnswered: 0
  }
  /**
   * Whether the DATA payloads the decoder hands over are views of memory the
   * transport reads into again (a borrowed reader): then whatever is kept is
   * copied first.
   */
  copyInput = false
  /** Inbound streams not yet accepted, in arrival order. */
  readonly backlog: Array<StreamState> = []
  backlogHead = 0
  readonly acceptWakers: Array<Waker> = []
  /** Openers waiting for a slot (peer backlog, stream limit). */
  readonly openWakers: Array<Waker> = []
  nextLocalId: number
  lastLocalId = 0
  lastPeerId = 0
  /** Highest peer stream id the application accepted (for our GO_AWAY). */
  lastAcceptedPeerId = 0
  unacked = 0
  // peer settings
  peerBacklog = 256
  peerMaxStreams = Infinity
  sendFrameSize: number
  // ending
  failure: SessionFailure | undefined = undefined
  goingAway = false
  peerGoneAway = false
  peerLastStreamId: number | undefined = undefined
  ended = false
  // scheduler: one round-robin list per urgency
  private readonly heads: Array<StreamState | undefined> = [undefined, undefined, undefined, undefined, undefined, undefined, undefined, undefined]
  private readonly tails: Array<StreamState | undefined> = [undefined, undefined, undefined, undefined, undefined, undefined, undefined, undefined]
  private readyCount = 0
  private readonly readWake: Array<StreamState> = []
  // the DATA frame being received
  private dataStream: StreamState | undefined = undefined
  // flood accounting
  private floodCount = 0
  private floodWindowStart = 0
  /**
   * Frames for closed streams that were legitimately in flight, not counted
   * as a flood: every stream that closes may be followed by one, plus one
   * WINDOW_UPDATE per DATA frame sent after the peer's FIN (libp2p-yamux
   * credits every DATA frame at once, before it reads our FIN). Capped at
   * the flood limit, so a peer gains at most that many free frames.
   */
  private lateAllowance = 0

  constructor(config: EngineConfig, encoder: FrameEncoder, hooks: EngineHooks) {
    this.config = config
    this.encoder = encoder
    this.hooks = hooks
    this.nextLocalId = config.firstStreamId ?? (config.client ? 1 : 2)
    this.sendFrameSize = config.sendFrameSize
    if (config.codec === "plexus") {
      encoder.settings([
        [SETTING_ACCEPT_BACKLOG, config.acceptBacklog],
        [SETTING_MAX_FRAME_SIZE, config.receiveFrameSize],
        [SETTING_MAX_STREAMS, config.maxInboundStreams]
      ])
    }
  }

  // -------------------------------------------------------------------------
  // Failing
  // -------------------------------------------------------------------------

  /** Ends the session: tells the peer, fails every stream and waiter. */
  fail(failure: SessionFailure): void {
    if (this.failure !== undefined || this.ended) return
    this.failure = failure
    if (failure.kind !== "transport" && !(failure.kind === "goaway" && failure.byPeer)) {
      this.encoder.goAway(failure.code, this.lastAcceptedPeerId, failure.detail)
      this.stats.controlQueued++
    }
    const streamFailure: StreamFailure = { kind: "session", code: failure.code, byPeer: failure.byPeer, retryable: false }
    for (const stream of this.streams.values()) this.failStream(stream, streamFailure, false)
    this.wakeAll(this.acceptWakers)
    this.wakeAll(this.openWakers)
    this.flushReadWakes()
    this.hooks.wakeWriter()
    this.hooks.onEnd(failure)
  }

  private protocolError(detail: string, offset?: number): void {
    this.fail({ kind: "protocol", code: CODE_PROTOCOL_ERROR, detail, offset, byPeer: true })
  }

  private calm(name: string, value: number, max: number): void {
    this.fail({
      kind: "limit",
      code: CODE_ENHANCE_YOUR_CALM,
      detail: `${name}: ${value} exceeds ${max}`,
      limit: { name, value, max },
      byPeer: true
    })
  }

  /** Counts frames that make us work for nothing; too many is a flood. */
  private flood(what: string): boolean {
    const now = this.hooks.now()
    if (now - this.floodWindowStart > this.config.floodWindowMs) {
      this.floodWindowStart = now
      this.floodCount = 0
    }
    if (++this.floodCount > this.config.floodLimit) {
      this.calm(`${what} per ${this.config.floodWindowMs} ms`, this.floodCount, this.config.floodLimit)
      return true
    }
    return false
  }

  private wakeAll(wakers: Array<Waker>): void {
    const list = wakers.splice(0, wakers.length)
    for (let i = 0; i < list.length; i++) list[i]()
  }

  /** Fails one stream: drops its queues, wakes its waiters, forgets it. */
  failStream(stream: StreamState, failure: StreamFailure, notifyPeer: boolean): void {
    if (stream.failure !== undefined) return
    stream.failure = failure
    if (notifyPeer && this.failure === undefined) {
      this.encoder.reset(stream.id, failure.code)
      this.stats.resetsSent++
      // Counted against the cap like every queued control frame: a peer that
      // provokes resets without reading its socket must not grow the queue.
      this.control()
    }
    this.stats.bufferedBytes -= stream.recvBytes
    stream.recv = undefined
    stream.ring = undefined
    stream.recvBytes = 0
    this.stats.queuedSendBytes -= stream.sendBytes
    stream.send = undefined
    stream.sendBytes = 0
    // Out of the scheduler too, so an idle writer knows there is nothing left.
    if (stream.ready) {
      this.unlink(stream)
      stream.ready = false
    }
    this.forget(stream)
    if (stream.readWaker !== undefined) this.readWake.push(stream)
    if (stream.writeWakers !== undefined) this.wakeAll(stream.writeWakers)
    if (stream.failureWakers !== undefined) this.wakeAll(stream.failureWakers)
  }

  /** Removes a finished stream from the session's books. */
  private forget(stream: StreamState): void {
    if (this.streams.get(stream.id) !== stream) return
    this.streams.delete(stream.id)
    this.stats.openStreams--
    if (stream.outbound) {
      this.stats.outboundStreams--
      if (!stream.acked && stream.announced) this.unacked--
    } else {
      this.stats.inboundStreams--
      // A stream that ends before the application accepted it (the peer reset
      // it) gives its place in the backlog back at once: the opener already
      // counts it as gone, and may open another in its place.
      if (stream.type === 0 && !stream.acked) this.stats.backlog--
    }
    this.stats.grantedWindow -= stream.windowSize
    this.lateAllowance = Math.min(this.lateAllowance + 1 + stream.lateFrames, this.config.floodLimit)
    if (this.openWakers.length > 0) this.wakeAll(this.openWakers)
    this.maybeFinishGoAway()
  }

  private maybeForget(stream: StreamState): void {
    if (stream.done && stream.failure === undefined) this.forget(stream)
  }

  // -------------------------------------------------------------------------
  // Receiving (FrameSink)
  // -------------------------------------------------------------------------

  private isPeerId(id: number): boolean {
    return (id & 1) === (this.config.client ? 0 : 1)
  }

  /** A frame for an id that is not open: idle (never used) is a violation, closed is ignored. */
  private unknownStream(id: number, what: string): void {
    const last = this.isPeerId(id) ? this.lastPeerId : this.lastLocalId
    if (id > last) return this.protocolError(`${what} for idle stream ${id}`)
    this.stats.ignoredFrames++
    if (this.lateAllowance > 0) {
      this.lateAllowance--
      return
    }
    this.flood("frames for closed streams")
  }

  open(id: number, type: number, urgency: number, incremental: boolean, windowDelta: number): void {
    if (!this.isPeerId(id)) return this.protocolError(`stream ${id} opened with the wrong parity`)
    if (id <= this.lastPeerId) return this.protocolError(`stream ${id} reused or out of order`)
    this.lastPeerId = id
    const refuse = (code: number) => {
      this.encoder.reset(id, code)
      this.stats.refused++
      this.control()
      this.flood("refused streams")
    }
    // Neither side opens streams after GO_AWAY: ours, or the peer's own.
    if (this.goingAway || this.peerGoneAway || this.failure !== undefined) return refuse(CODE_REFUSED_STREAM)
    if (this.stats.inboundStreams >= this.config.maxInboundStreams) return refuse(CODE_REFUSED_STREAM)
    if (type !== 0 && !this.hooks.hasHandler(type)) return refuse(CODE_REFUSED_STREAM)
    if (type === 0 && this.stats.backlog >= this.config.acceptBacklog) return refuse(CODE_REFUSED_STREAM)
    const stream = new StreamState(id, false)
    stream.type = type
    stream.urgency = urgency
    stream.incremental = incremental
    const window = INITIAL_WINDOW + windowDelta
    if (window > MAX_WINDOW_VALUE) return this.protocolError(`stream ${id} opened with a window above 2^32-1`)
    stream.sendWindow = window
    stream.lastGrantAt = this.hooks.now()
    this.streams.set(id, stream)
    this.stats.openStreams++
    this.stats.inboundStreams++
    this.stats.grantedWindow += stream.windowSize
    if (type === 0) {
      // Streams reset while waiting stay in the array until `takeAccepted`
      // passes them; drop them before they outnumber the live ones, so an
      // open+reset storm the application never accepts holds no memory.
      if (this.backlog.length - this.backlogHead >= 2 * this.config.acceptBacklog + 16) this.compactBacklog()
      this.backlog.push(stream)
      this.stats.backlog++
      if (this.acceptWakers.length > 0) this.acceptWakers.shift()!()
    }
    this.hooks.onIncoming(stream)
  }

  ack(id: number): void {
    const stream = this.streams.get(id)
    if (stream === undefined) return this.unknownStream(id, "ACK")
    if (!stream.outbound || stream.acked) return
    stream.acked = true
    this.unacked--
    if (this.openWakers.length > 0) this.wakeAll(this.openWakers)
  }

  dataStart(id: number, length: number): boolean {
    this.stats.bytesIn += length
    const stream = this.streams.get(id)
    this.dataStream = undefined
    if (stream === undefined) {
      this.unknownStream(id, "DATA")
      return false
    }
    if (stream.remoteFin) {
      if (length > 0) this.failStream(stream, this.localReset(CODE_STREAM_CLOSED), true)
      return false
    }
    if (length > stream.recvWindow) {
      this.failStream(stream, this.localReset(CODE_FLOW_CONTROL_ERROR), true)
      return false
    }
    stream.recvWindow -= length
    if (stream.readClosed) {
      // Nobody will read it: credit it back at once so the peer is not stuck.
      stream.consumed += length
      this.grant(stream)
      return false
    }
    this.dataStream = stream
    return true
  }

  data(_id: number, piece: Uint8Array): void {
    const stream = this.dataStream!
    // The application may reset the stream, or stop reading it, while a
    // frame's payload is still arriving: the rest of it must not be held for
    // a stream nobody will read (and once reset, nothing will free it).
    if (stream.failure !== undefined) return
    if (stream.readClosed) {
      stream.consumed += piece.length
      if (stream.consumed >= stream.windowSize >>> 1) this.grant(stream)
      return
    }
    if (stream.ring !== undefined) stream.ring.put(piece)
    else {
      let kept = piece
      if (this.copyInput) {
        kept = new Uint8Array(piece.length)
        kept.set(piece)
      }
      if (stream.recv === undefined) stream.recv = [kept]
      else stream.recv.push(kept)
    }
    stream.recvBytes += piece.length
    this.stats.bufferedBytes += piece.length
    if (stream.readWaker !== undefined) this.readWake.push(stream)
  }

  fin(id: number): void {
    const stream = this.streams.get(id)
    if (stream === undefined) return this.unknownStream(id, "FIN")
    if (stream.remoteFin) return
    stream.remoteFin = true
    if (stream.readWaker !== undefined) this.readWake.push(stream)
    this.maybeForget(stream)
  }

  reset(id: number, code: number): void {
    const stream = this.streams.get(id)
    if (stream === undefined) return this.unknownStream(id, "RESET")
    this.stats.resetsReceived++
    // A stream the peer refused before acknowledging it was not processed,
    // provably so only when it says REFUSED_STREAM (plexus).
    const refused = stream.outbound && !stream.acked
    const retryable = refused && code === CODE_REFUSED_STREAM && this.config.codec === "plexus"
    this.failStream(stream, { kind: refused ? "refused" : "reset", code, byPeer: true, retryable }, false)
    this.flood("resets")
  }

  windowUpdate(id: number, delta: number): void {
    const stream = this.streams.get(id)
    if (stream === undefined) return this.unknownStream(id, "WINDOW_UPDATE")
    if (stream.sendWindow + delta > MAX_WINDOW_VALUE) {
      return this.failStream(stream, this.localReset(CODE_FLOW_CONTROL_ERROR), true)
    }
    stream.sendWindow += delta
    if (stream.sendBytes > 0 || (stream.localFin && !stream.finSent)) this.markReady(stream)
  }

  ping(ack: boolean, opaque: number): void {
    if (ack) {
      // An answer nobody asked for is work for nothing.
      if (!this.hooks.onPong(opaque)) this.flood("unsolicited ping answers")
      return
    }
    if (this.flood("pings")) return
    this.encoder.ping(true, opaque)
    this.stats.pingsAnswered++
    this.control()
  }

  goAway(code: number, lastStreamId: number | undefined, reason: string): void {
    if (this.peerGoneAway) return
    this.peerGoneAway = true
    this.peerLastStreamId = lastStreamId
    for (const stream of this.streams.values()) {
      if (!stream.outbound) continue
      // Above the last stream id (plexus) or never sent (either codec): not processed.
      const unprocessed = lastStreamId !== undefined ? stream.id > lastStreamId : !stream.announced
      if (unprocessed) {
        this.failStream(stream, { kind: "session", code, byPeer: true, retryable: true }, false)
      }
    }
    this.wakeAll(this.openWakers)
    this.flushReadWakes()
    // Still graceful: open streams at or below the last id may finish. The
    // code says why; it becomes the session's error if the transport then
    // closes under streams that did not finish.
    this.peerGoAwayCode = code
    this.peerGoAwayReason = reason
    this.maybeFinishGoAway()
  }

  peerGoAwayCode = CODE_NO_ERROR
  peerGoAwayReason = ""

  /** The transport ended: graceful if the peer went away and nothing was left. */
  transportEnded(detail: string): void {
    if (this.ended || this.failure !== undefined) return
    if (this.peerGoneAway && this.streams.size === 0 && this.peerGoAwayCode === CODE_NO_ERROR) {
      this.maybeFinishGoAway()
      return
    }
    if (this.peerGoneAway) {
      return this.fail({
        kind: "goaway",
        code: this.peerGoAwayCode,
        detail: this.peerGoAwayReason === "" ? `peer went away with code ${this.peerGoAwayCode}` : this.peerGoAwayReason,
        byPeer: true,
        lastStreamId: this.peerLastStreamId
      })
    }
    this.fail({ kind: "transport", code: CODE_INTERNAL_ERROR, detail, byPeer: true })
  }

  priority(id: number, urgency: number, incremental: boolean): void {
    const stream = this.streams.get(id)
    if (stream === undefined) return this.unknownStream(id, "PRIORITY")
    this.setPriority(stream, urgency, incremental)
  }

  setting(id: number, value: number): void {
    switch (id) {
      case SETTING_ACCEPT_BACKLOG:
        this.peerBacklog = Math.max(1, value)
        if (this.openWakers.length > 0) this.wakeAll(this.openWakers)
        return
      case SETTING_MAX_FRAME_SIZE:
        if (value < 16 * 1024 || value > 16 * 1024 * 1024) return this.protocolError(`MAX_FRAME_SIZE ${value} out of range`)
        this.sendFrameSize = Math.min(value, this.config.sendFrameSize * 256)
        return
      case SETTING_MAX_STREAMS:
        this.peerMaxStreams = value
        return
    }
  }

  empty(id: number): void {
    if (id !== 0 && !this.streams.has(id)) return this.unknownStream(id, "an empty frame")
    this.flood("empty frames")
  }

  malformed(detail: string, offset: number): void {
    this.protocolError(detail, offset)
  }

  private localReset(code: number): StreamFailure {
    return { kind: "reset", code, byPeer: false, retryable: false }
  }

  /** Wakes readers that got data or an end during the last chunk. */
  flushReadWakes(): void {
    const list = this.readWake
    for (let i = 0; i < list.length; i++) {
      const waker = list[i].readWaker
      if (waker !== undefined) {
        list[i].readWaker = undefined
        waker()
      }
    }
    list.length = 0
  }

  // -------------------------------------------------------------------------
  // Streams: reading
  // -------------------------------------------------------------------------

  /** Takes everything received on a stream, and credits it back to the peer. */
  takeReceived(stream: StreamState): Array<Uint8Array> | undefined {
    let chunks = stream.recv
    if (stream.ring !== undefined && stream.ring.size > 0) chunks = [stream.ring.takeAll()]
    if (chunks === undefined || chunks.length === 0) return undefined
    this.consume(stream, stream.recvBytes)
    stream.recv = undefined
    return chunks
  }

  /**
   * Copies up to `target.length` received bytes into `target` and answers
   * how many (0: nothing received yet). From the first call on, the stream
   * keeps what it receives in a ring of its own instead of a chunk list.
   */
  readInto(stream: StreamState, target: Uint8Array): number {
    let ring = stream.ring
    if (ring === undefined) {
      if (stream.failure !== undefined) return 0
      ring = stream.ring = new ReceiveRing(stream.windowSize)
      const chunks = stream.recv
      stream.recv = undefined
      if (chunks !== undefined) for (let i = 0; i < chunks.length; i++) ring.put(chunks[i])
    }
    const n = ring.take(target)
    if (n > 0) this.consume(stream, n)
    return n
  }

  /** `bytes` were read: credit them back (half a window at a time). */
  private consume(stream: StreamState, bytes: number): void {
    stream.recvBytes -= bytes
    this.stats.bufferedBytes -= bytes
    stream.consumed += bytes
    if (stream.consumed >= stream.windowSize >>> 1) this.grant(stream)
    if (stream.remoteFin && stream.recvBytes === 0) this.maybeForget(stream)
  }

  /**
   * Gives consumed credit back, doubling the window when a whole window went
   * by in under two round trips (auto-tuning), within the session budget.
   */
  private grant(stream: StreamState): void {
    if (stream.failure !== undefined || stream.remoteFin || this.failure !== undefined) return
    const now = this.hooks.now()
    let growth = 0
    const rtt = this.rttMillis
    if (
      rtt !== undefined && stream.windowSize < this.config.maxWindow &&
      now - stream.lastGrantAt < 2 * rtt &&
      this.stats.grantedWindow + stream.windowSize <= this.config.sessionBudget
    ) {
      growth = Math.min(stream.windowSize, this.config.maxWindow - stream.windowSize)
    }
    const delta = stream.consumed + growth
    stream.consumed = 0
    stream.recvWindow += delta
    stream.windowSize += growth
    this.stats.grantedWindow += growth
    stream.lastGrantAt = now
    this.encoder.windowUpdate(stream.id, delta)
    this.control()
  }

  /** Smoothed round-trip time, when measured. */
  rttMillis: number | undefined = undefined

  recordRtt(sample: number): void {
    this.rttMillis = this.rttMillis === undefined ? sample : this.rttMillis * 0.875 + sample * 0.125
  }

  /** The application stops reading (it closed the stream's read side). */
  closeRead(stream: StreamState): void {
    if (stream.readClosed) return
    stream.readClosed = true
    const pending = stream.recvBytes
    if (pending > 0) {
      this.stats.bufferedBytes -= pending
      stream.recv = undefined
      stream.ring?.clear()
      stream.recvBytes = 0
      stream.consumed += pending
      this.grant(stream)
    }
  }

  // -------------------------------------------------------------------------
  // Streams: writing
  // -------------------------------------------------------------------------

  /** Queues bytes; answers whether the writer should wait (send buffer full). */
  write(stream: StreamState, chunk: Uint8Array): boolean {
    if (chunk.length === 0) return false
    if (stream.send === undefined) stream.send = [chunk]
    else stream.send.push(chunk)
    stream.sendBytes += chunk.length
    this.stats.queuedSendBytes += chunk.length
    if (stream.sendWindow > 0) this.markReady(stream)
    else this.stats.windowStalls++
    return stream.sendBytes >= this.config.sendBufferBytes
  }

  /** The application will write no more: FIN after what is queued. */
  closeWrite(stream: StreamState): void {
    if (stream.localFin || stream.failure !== undefined) return
    stream.localFin = true
    if (stream.sendBytes === 0) {
      this.encoder.fin(stream.id)
      stream.finSent = true
      this.control()
      this.maybeForget(stream)
    } else {
      this.markReady(stream)
    }
  }

  /** Resets a stream from this side. */
  resetStream(stream: StreamState, code: number): void {
    if (stream.failure !== undefined) return
    if (stream.done) return
    this.failStream(stream, this.localReset(code), true)
    this.flushReadWakes()
  }

  setPriority(stream: StreamState, urgency: number, incremental: boolean): void {
    const u = Math.max(0, Math.min(7, urgency | 0))
    if (stream.ready && u !== stream.urgency) {
      this.unlink(stream)
      stream.urgency = u
      this.link(stream)
    } else {
      stream.urgency = u
    }
    stream.incremental = incremental
  }

  // -------------------------------------------------------------------------
  // Opening and accepting
  // -------------------------------------------------------------------------

  /** Why a stream cannot be opened now: a failure, "wait", or undefined (go ahead). */
  openBlocker(): SessionFailure | "wait" | undefined {
    if (this.failure !== undefined) return this.failure
    const max = this.config.client ? MAX_CLIENT_ID : MAX_SERVER_ID
    if (this.nextLocalId > max) {
      return { kind: "exhausted", code: CODE_ID_EXHAUSTED, detail: "stream ids exhausted", byPeer: false, lastStreamId: this.lastLocalId }
    }
    if (this.goingAway || this.peerGoneAway) {
      return {
        kind: "goaway",
        code: this.peerGoneAway ? this.peerGoAwayCode : CODE_NO_ERROR,
        detail: "session is going away",
        byPeer: this.peerGoneAway,
        lastStreamId: this.peerLastStreamId
      }
    }
    if (this.unacked >= this.peerBacklog) return "wait"
    if (this.stats.outboundStreams >= Math.min(this.config.maxOutboundStreams, this.peerMaxStreams)) return "wait"
    return undefined
  }

  /** Opens a stream now (after `openBlocker` said go ahead). */
  openStream(type: number, urgency: number, incremental: boolean): StreamState {
    const id = this.nextLocalId
    this.nextLocalId += 2
    this.lastLocalId = id
    const stream = new StreamState(id, true)
    stream.type = type
    stream.urgency = Math.max(0, Math.min(7, urgency | 0))
    stream.incremental = incremental
    stream.lastGrantAt = this.hooks.now()
    this.streams.set(id, stream)
    this.stats.openStreams++
    this.stats.outboundStreams++
    this.stats.grantedWindow += stream.windowSize
    this.encoder.open(id, type, stream.urgency, incremental, 0)
    stream.announced = true
    this.unacked++
    this.control()
    if (this.nextLocalId > (this.config.client ? MAX_CLIENT_ID : MAX_SERVER_ID)) {
      // The last id is used: tell the peer no more will come (spec: Stream IDs).
      this.goAwayNow(CODE_ID_EXHAUSTED, "stream ids exhausted")
    }
    return stream
  }

  /** The next inbound stream from the backlog, accepted (ACK sent). */
  takeAccepted(): StreamState | undefined {
    while (this.backlogHead < this.backlog.length) {
      const stream = this.backlog[this.backlogHead++]
      if (this.backlogHead > 64 && this.backlogHead * 2 > this.backlog.length) {
        this.backlog.splice(0, this.backlogHead)
        this.backlogHead = 0
      }
      // A failed stream gave its place back when it failed (`forget`).
      if (stream.failure !== undefined) continue
      this.stats.backlog--
      this.accept(stream)
      return stream
    }
    return undefined
  }

  /** Drops the failed streams from the backlog array, keeping the order of the rest. */
  private compactBacklog(): void {
    let kept = 0
    for (let i = this.backlogHead; i < this.backlog.length; i++) {
      const stream = this.backlog[i]
      if (stream.failure === undefined) this.backlog[kept++] = stream
    }
    this.backlog.length = kept
    this.backlogHead = 0
  }

  /** Acknowledges an inbound stream. */
  accept(stream: StreamState): void {
    if (stream.acked) return
    stream.acked = true
    if (stream.id > this.lastAcceptedPeerId) this.lastAcceptedPeerId = stream.id
    this.encoder.ack(stream.id, 0)
    this.control()
  }

  // -------------------------------------------------------------------------
  // Going away
  // -------------------------------------------------------------------------

  /** Sends GO_AWAY: no new streams either way; open ones may finish. */
  goAwayNow(code: number, reason: string): void {
    if (this.goingAway || this.failure !== undefined) return
    this.goingAway = true
    this.encoder.goAway(code, this.lastAcceptedPeerId, reason)
    this.control()
    // Streams still in the backlog were never seen by the application
    // (failing one gives its place back, in `forget`).
    while (this.backlogHead < this.backlog.length) {
      const stream = this.backlog[this.backlogHead++]
      this.failStream(stream, { kind: "refused", code: CODE_REFUSED_STREAM, byPeer: false, retryable: true }, true)
    }
    this.wakeAll(this.acceptWakers)
    this.wakeAll(this.openWakers)
    this.maybeFinishGoAway()
  }

  private maybeFinishGoAway(): void {
    if ((this.goingAway || this.peerGoneAway) && this.streams.size === 0 && !this.ended && this.failure === undefined) {
      this.ended = true
      this.hooks.wakeWriter()
      this.hooks.onEnd(undefined)
    }
  }

  /** After the drain deadline: resets what is left and ends. */
  abandon(): void {
    for (const stream of this.streams.values()) this.failStream(stream, this.localReset(CODE_CANCEL), true)
    this.flushReadWakes()
    this.maybeFinishGoAway()
  }

  // -------------------------------------------------------------------------
  // The writer's side: scheduling
  // -------------------------------------------------------------------------

  /** A control frame was queued: bound the queue, wake the writer. */
  private control(): void {
    if (++this.stats.controlQueued > this.config.maxControlQueue) {
      // The peer makes us queue replies faster than it reads them.
      this.stats.controlQueued = 0
      this.fail({
        kind: "limit",
        code: CODE_ENHANCE_YOUR_CALM,
        detail: `outbound control queue: more than ${this.config.maxControlQueue} frames`,
        limit: { name: "outbound control queue", value: this.config.maxControlQueue + 1, max: this.config.maxControlQueue },
        byPeer: true
      })
      return
    }
    this.hooks.wakeWriter()
  }

  private markReady(stream: StreamState): void {
    if (stream.ready || stream.failure !== undefined) return
    stream.ready = true
    this.link(stream)
    this.hooks.wakeWriter()
  }

  private link(stream: StreamState): void {
    const u = stream.urgency
    stream.next = undefined
    const tail = this.tails[u]
    if (tail === undefined) this.heads[u] = stream
    else tail.next = stream
    this.tails[u] = stream
    this.readyCount++
  }

  private unlink(stream: StreamState): void {
    const u = stream.urgency
    let prev: StreamState | undefined = undefined
    let cur = this.heads[u]
    while (cur !== undefined && cur !== stream) {
      prev = cur
      cur = cur.next
    }
    if (cur === undefined) return
    if (prev === undefined) this.heads[u] = cur.next
    else prev.next = cur.next
    if (this.tails[u] === cur) this.tails[u] = prev
    cur.next = undefined
    this.readyCount--
  }

  private popHead(u: number): StreamState | undefined {
    const head = this.heads[u]
    if (head === undefined) return undefined
    this.heads[u] = head.next
    if (this.tails[u] === head) this.tails[u] = undefined
    head.next = undefined
    this.readyCount--
    return head
  }

  get hasWork(): boolean {
    return this.encoder.frames > 0 || this.readyCount > 0
  }

  /**
   * The next batch to write: queued control frames first, then DATA by
   * urgency, round robin within an urgency, one frame per turn.
   */
  nextBatch(): Array<Uint8Array> | undefined {
    let budget = this.config.writeBatchBytes
    const encoder = this.encoder
    const frameSize = this.sendFrameSize
    for (let u = 0; u < 8 && budget > 0; u++) {
      while (budget > 0) {
        const stream = this.popHead(u)
        if (stream === undefined) break
        stream.ready = false
        if (stream.failure !== undefined) continue
        const queue = stream.send
        if (queue === undefined || stream.sendBytes === 0) {
          if (stream.localFin && !stream.finSent) this.sendFin(stream)
          continue
        }
        const allowed = Math.min(stream.sendWindow, frameSize, budget)
        if (allowed === 0) {
          this.stats.windowStalls++
          continue
        }
        // One frame takes as many queued writes as the window, the frame size
        // and the batch allow: fewer frames, fewer wake-ups at the other end.
        const pieces = this.pieces
        let taken = 0
        while (taken < allowed && stream.sendHead < queue.length) {
          const head = queue[stream.sendHead]
          const room = allowed - taken
          if (head.length <= room) {
            pieces.push(head)
            queue[stream.sendHead++] = EMPTY
            taken += head.length
          } else {
            pieces.push(head.subarray(0, room))
            queue[stream.sendHead] = head.subarray(room)
            taken += room
          }
        }
        stream.sendBytes -= taken
        this.stats.queuedSendBytes -= taken
        stream.sendWindow -= taken
        budget -= taken + 12
        this.stats.bytesOut += taken
        if (stream.sendHead === queue.length) {
          stream.send = undefined
          stream.sendHead = 0
        }
        const last = stream.sendBytes === 0
        const fin = last && stream.localFin
        encoder.data(stream.id, pieces, taken, fin)
        pieces.length = 0
        if (stream.remoteFin) stream.lateFrames++
        if (fin) {
          stream.finSent = true
          this.maybeForget(stream)
        }
        if (stream.writeWakers !== undefined && stream.sendBytes < this.config.sendBufferBytes) {
          // Woken after the batch: a woken writer may run at once and queue more.
          this.drained.push(stream)
        }
        if (!last && !stream.ready) {
          if (stream.sendWindow > 0) {
            stream.ready = true
            this.link(stream)
          } else {
            this.stats.windowStalls++
          }
        }
      }
    }
    this.stats.controlQueued = 0
    const batch = encoder.flush()
    const drained = this.drained
    for (let i = 0; i < drained.length; i++) {
      const wakers = drained[i].writeWakers
      if (wakers !== undefined) this.wakeAll(wakers)
    }
    drained.length = 0
    return batch
  }

  /** Scratch list of the pieces of the DATA frame being built. */
  private readonly pieces: Array<Uint8Array> = []

  /** Streams whose writers may go on once the batch is built. */
  private readonly drained: Array<StreamState> = []

  private sendFin(stream: StreamState): void {
    this.encoder.fin(stream.id)
    stream.finSent = true
    this.maybeForget(stream)
  }

  /** Whether the session is finished writing: ended or failed, with nothing left to flush. */
  get writerDone(): boolean {
    return (this.ended || this.failure !== undefined) && this.encoder.frames === 0
  }
}

const EMPTY = new Uint8Array(0)

export { CODE_CANCEL, CODE_INTERNAL_ERROR, CODE_NO_ERROR, CODE_PROTOCOL_ERROR, CODE_REFUSED_STREAM }
