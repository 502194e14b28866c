/**
 * The session's frame codecs (docs/spec/mux.md): incremental decoders that
 * turn bytes into engine events, and batch encoders that turn engine calls
 * into as few write buffers as possible.
 *
 * The engine never sees flags or frame types: both codecs speak the same
 * `FrameSink` and `FrameEncoder` vocabulary, and each maps it onto its own
 * wire. DATA payloads are never reassembled: each piece is handed on as a
 * view of the chunk it arrived in, so no declared length is ever allocated.
 *
 * @internal
 */
import { readU32, writeU32 } from "./bytes.ts"

/** Frame types (spec: Types). */
export const TYPE_DATA = 0x0
export const TYPE_WINDOW_UPDATE = 0x1
export const TYPE_PING = 0x2
export const TYPE_GO_AWAY = 0x3
export const TYPE_RESET = 0x4
export const TYPE_OPEN = 0x5
export const TYPE_PRIORITY = 0x6
export const TYPE_SETTINGS = 0x7

/** Flags (spec: Flags). */
export const FLAG_SYN = 0x1
export const FLAG_ACK = 0x2
export const FLAG_FIN = 0x4
export const FLAG_RST = 0x8

export const HEADER_SIZE = 12
export const YAMUX_VERSION = 0
export const PLEXUS_VERSION = 1

/** Settings ids (spec: Settings). */
export const SETTING_ACCEPT_BACKLOG = 0x1
export const SETTING_MAX_FRAME_SIZE = 0x2
export const SETTING_MAX_STREAMS = 0x3

/** Codes (spec: Codes). */
export const CODE_NO_ERROR = 0x0
export const CODE_PROTOCOL_ERROR = 0x1
export const CODE_INTERNAL_ERROR = 0x2
export const CODE_FLOW_CONTROL_ERROR = 0x3
export const CODE_STREAM_CLOSED = 0x4
export const CODE_REFUSED_STREAM = 0x5
export const CODE_CANCEL = 0x6
export const CODE_ENHANCE_YOUR_CALM = 0x7
export const CODE_KEEPALIVE_TIMEOUT = 0x8
export const CODE_ID_EXHAUSTED = 0x9

/** The largest GO_AWAY reason, in bytes. */
export const MAX_GO_AWAY_REASON = 256

/** What a decoded frame means to the engine. */
export interface FrameSink {
  /** A new stream from the peer. `windowDelta` is credit beyond the initial window. */
  open(id: number, type: number, urgency: number, incremental: boolean, windowDelta: number): void
  /** The peer accepted a stream we opened. */
  ack(id: number): void
  /** A DATA frame's header. Answer false to have its payload skipped. */
  dataStart(id: number, length: number): boolean
  /** A piece of DATA payload (a view of the received chunk). */
  data(id: number, piece: Uint8Array): void
  /** The peer half-closed the stream. */
  fin(id: number): void
  reset(id: number, code: number): void
  windowUpdate(id: number, delta: number): void
  ping(ack: boolean, opaque: number): void
  goAway(code: number, lastStreamId: number | undefined, reason: string): void
  priority(id: number, urgency: number, incremental: boolean): void
  setting(id: number, value: number): void
  /** A frame that asks nothing and carries nothing (a flood when many). */
  empty(id: number): void
  /** A frame the codec cannot accept: the session must end. */
  malformed(detail: string, offset: number): void
}

/** An incremental decoder for one byte stream. */
export interface FrameDecoder {
  /** Feeds a chunk; events go to the sink. After `malformed` or `stop` it ignores input. */
  push(chunk: Uint8Array): void
  /** Ignores all further input (the session has ended). */
  stop(): void
  /** Bytes of a frame header or control payload held across chunks. */
  readonly buffered: number
}


const utf8 = new TextDecoder("utf-8", { fatal: false })
const utf8Encoder = new TextEncoder()

/**
 * The shared state machine: a header is gathered (copying at most 12 bytes
 * across chunk boundaries), then a DATA payload streams through as views, or
 * a control payload (bounded, small) is gathered and interpreted.
 */
abstract class BaseDecoder implements FrameDecoder {
  protected readonly sink: FrameSink
  private readonly header = new Uint8Array(HEADER_SIZE)
  private headerFill = 0
  /** Stream bytes consumed so far, for error offsets. */
  protected offset = 0
  /** Remaining DATA payload of the current frame; -1 when reading a header. */
  private dataLeft = -1
  private dataId = 0
  private dataFlags = 0
  private dataKeep = true
  /** The current payload belongs to a frame type being skipped. */
  private skipping = false
  /** Control payload being gathered. */
  private control: Uint8Array | undefined = undefined
  private controlFill = 0
  private controlType = 0
  private controlFlags = 0
  private controlId = 0
  protected dead = false
  protected readonly maxData: number

  constructor(sink: FrameSink, maxData: number) {
    this.sink = sink
    this.maxData = maxData
  }

  get buffered(): number {
    return this.headerFill + this.controlFill
  }

  stop(): void {
    this.dead = true
  }

  protected fail(detail: string): void {
    if (this.dead) return
    this.dead = true
    this.sink.malformed(detail, this.offset)
  }

  push(chunk: Uint8Array): void {
    const n = chunk.length
    let pos = 0
    while (pos < n && !this.dead) {
      if (this.dataLeft >= 0) {
        const take = Math.min(this.dataLeft, n - pos)
        if (take > 0 && this.dataKeep) this.sink.data(this.dataId, chunk.subarray(pos, pos + take))
        pos += take
        this.offset += take
        this.dataLeft -= take
        if (this.dataLeft === 0) this.endData()
        continue
      }
      if (this.control !== undefined) {
        const take = Math.min(this.control.length - this.controlFill, n - pos)
        this.control.set(chunk.subarray(pos, pos + take), this.controlFill)
        this.controlFill += take
        pos += take
        this.offset += take
        if (this.controlFill === this.control.length) {
          const payload = this.control
          this.control = undefined
          this.controlFill = 0
          this.onControl(this.controlType, this.controlFlags, this.controlId, payload)
        }
        continue
      }
      // A header: straight from the chunk when it is all there.
      let h: Uint8Array
      let at: number
      if (this.headerFill === 0 && n - pos >= HEADER_SIZE) {
        h = chunk
        at = pos
        pos += HEADER_SIZE
      } else {
        const take = Math.min(HEADER_SIZE - this.headerFill, n - pos)
        for (let i = 0; i < take; i++) this.header[this.headerFill + i] = chunk[pos + i]
        this.headerFill += take
        pos += take
        if (this.headerFill < HEADER_SIZE) {
          this.offset += take
          return
        }
        this.headerFill = 0
        h = this.header
        at = 0
        this.offset -= HEADER_SIZE - take
      }
      const version = h[at]
      const type = h[at + 1]
      const flags = (h[at + 2] << 8) | h[at + 3]
      const id = readU32(h, at + 4)
      const length = readU32(h, at + 8)
      this.onHeader(version, type, flags, id, length)
      this.offset += HEADER_SIZE
    }
  }

  protected abstract onHeader(version: number, type: number, flags: number, id: number, length: number): void
  protected abstract onControl(type: number, flags: number, id: number, payload: Uint8Array): void
  protected abstract onDataEnd(id: number, flags: number): void

  protected beginData(id: number, flags: number, length: number): void {
    if (length > this.maxData) return this.fail(`DATA frame of ${length} bytes exceeds the maximum of ${this.maxData}`)
    if (length === 0 && (flags & (FLAG_SYN | FLAG_ACK | FLAG_FIN | FLAG_RST)) === 0) return this.sink.empty(id)
    this.dataId = id
    this.dataFlags = flags
    this.dataKeep = this.sink.dataStart(id, length)
    if (this.dead) return
    this.dataLeft = length
    if (length === 0) this.endData()
  }

  /** Skips a payload of a frame type the codec does not know. */
  protected skip(length: number): void {
    this.skipping = true
    this.dataKeep = false
    this.dataLeft = length
    if (length === 0) this.endData()
  }

  private endData(): void {
    this.dataLeft = -1
    if (this.skipping) {
      this.skipping = false
      return
    }
    this.onDataEnd(this.dataId, this.dataFlags)
  }

  protected gather(type: number, flags: number, id: number, length: number): void {
    this.controlType = type
    this.controlFlags = flags
    this.controlId = id
    if (length === 0) return this.onControl(type, flags, id, EMPTY)
    this.control = new Uint8Array(length)
    this.controlFill = 0
  }
}

const EMPTY = new Uint8Array(0)

/** yamux: Length means a payload length for DATA only (spec: Types). */
export class YamuxDecoder extends BaseDecoder {
  protected onHeader(version: number, type: number, flags: number, id: number, length: number): void {
    if (version !== YAMUX_VERSION) return this.fail(`unknown version ${version}`)
    const sink = this.sink
    switch (type) {
      case TYPE_DATA:
      case TYPE_WINDOW_UPDATE: {
        if (id === 0) return this.fail(`${type === TYPE_DATA ? "DATA" : "WINDOW_UPDATE"} on stream 0`)
        if (flags & FLAG_SYN) {
          sink.open(id, 0, 3, true, type === TYPE_WINDOW_UPDATE ? length : 0)
          if (this.dead) return
        }
        if (flags & FLAG_ACK) {
          sink.ack(id)
          if (this.dead) return
        }
        if (type === TYPE_DATA) return this.beginData(id, flags, length)
        if (!(flags & FLAG_SYN) && length > 0) sink.windowUpdate(id, length)
        else if ((flags & (FLAG_SYN | FLAG_ACK | FLAG_FIN | FLAG_RST)) === 0) return sink.empty(id)
        if (this.dead) return
        return this.onDataEnd(id, flags)
      }
      case TYPE_PING:
        if (id !== 0) return this.fail(`PING on stream ${id}`)
        return sink.ping((flags & FLAG_ACK) !== 0, length)
      case TYPE_GO_AWAY:
        if (id !== 0) return this.fail(`GO_AWAY on stream ${id}`)
        return sink.goAway(length, undefined, "")
      default:
        return this.fail(`unknown frame type ${type}`)
    }
  }

  protected onControl(): void {}

  protected onDataEnd(id: number, flags: number): void {
    if (flags & FLAG_FIN) this.sink.fin(id)
    if (this.dead) return
    if (flags & FLAG_RST) this.sink.reset(id, CODE_CANCEL)
  }
}

/** Exact (or bounded) payload sizes of plexus control frames. */
const CONTROL_MIN = [0, 4, 4, 8, 4, 12, 2, 0]
const CONTROL_MAX = [0, 4, 4, 8 + MAX_GO_AWAY_REASON, 4, 12, 2, 6 * 16]

/** plexus: Length is always the payload length; unknown types are skipped. */
export class PlexusDecoder extends BaseDecoder {
  protected onHeader(version: number, type: number, flags: number, id: number, length: number): void {
    if (version !== PLEXUS_VERSION) return this.fail(`unknown version ${version}`)
    if (type === TYPE_DATA) {
      if (id === 0) return this.fail("DATA on stream 0")
      if (flags & (FLAG_SYN | FLAG_RST)) return this.fail("SYN or RST flag on a plexus DATA frame")
      if (flags & FLAG_ACK) {
        this.sink.ack(id)
        if (this.dead) return
      }
      return this.beginData(id, flags, length)
    }
    if (type > TYPE_SETTINGS) {
      // Forward compatibility: skip what we do not know, within the frame limit.
      if (length > this.maxData) return this.fail(`frame of ${length} bytes exceeds the maximum of ${this.maxData}`)
      this.sink.empty(0)
      if (this.dead) return
      return this.skip(length)
    }
    if (length < CONTROL_MIN[type] || length > CONTROL_MAX[type] || (type === TYPE_SETTINGS && length % 6 !== 0)) {
      return this.fail(`control frame type ${type} with a ${length}-byte payload`)
    }
    const sessionFrame = type === TYPE_PING || type === TYPE_GO_AWAY || type === TYPE_SETTINGS
    if (sessionFrame !== (id === 0)) return this.fail(`frame type ${type} on stream ${id}`)
    this.gather(type, flags, id, length)
  }

  protected onControl(type: number, flags: number, id: number, p: Uint8Array): void {
    const sink = this.sink
    switch (type) {
      case TYPE_WINDOW_UPDATE: {
        if (flags & FLAG_SYN) return this.fail("SYN flag on a plexus WINDOW_UPDATE")
        if (flags & FLAG_ACK) {
          sink.ack(id)
          if (this.dead) return
        }
        const delta = readU32(p, 0)
        if (delta > 0) sink.windowUpdate(id, delta)
        else if ((flags & (FLAG_ACK | FLAG_FIN)) === 0) return sink.empty(id)
        if (this.dead) return
        if (flags & FLAG_FIN) sink.fin(id)
        return
      }
      case TYPE_PING:
        return sink.ping((flags & FLAG_ACK) !== 0, readU32(p, 0))
      case TYPE_GO_AWAY:
        return sink.goAway(readU32(p, 0), readU32(p, 4), utf8.decode(p.subarray(8)))
      case TYPE_RESET:
        return sink.reset(id, readU32(p, 0))
      case TYPE_OPEN: {
        const urgency = p[4]
        if (urgency > 7) return this.fail(`urgency ${urgency} out of range`)
        return sink.open(id, readU32(p, 0), urgency, p[5] !== 0, readU32(p, 8))
      }
      case TYPE_PRIORITY: {
        const urgency = p[0]
        if (urgency > 7) return this.fail(`urgency ${urgency} out of range`)
        return sink.priority(id, urgency, p[1] !== 0)
      }
      case TYPE_SETTINGS:
        for (let i = 0; i < p.length && !this.dead; i += 6) sink.setting((p[i] << 8) | p[i + 1], readU32(p, i + 2))
        return
    }
  }

  protected onDataEnd(id: number, flags: number): void {
    if (flags & FLAG_FIN) this.sink.fin(id)
  }
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/** Payloads up to this size are copied into the batch instead of referenced. */
const COPY_LIMIT = 1024
const SLAB = 16 * 1024

/**
 * Collects frames into a batch of write buffers: headers, control frames and
 * small payloads are laid out contiguously in a slab, large payloads are
 * referenced, so one batch is a handful of buffers for one `writev`.
 */
export abstract class FrameEncoder {
  protected slab: Uint8Array = new Uint8Array(SLAB)
  private used = 0
  private runStart = 0
  private out: Array<Uint8Array> = []
  /** Bytes in the batch. */
  bytes = 0
  /** Frames in the batch. */
  frames = 0

  /** Room for `size` contiguous bytes in the slab; answers their offset. */
  protected reserve(size: number): number {
    if (this.used + size > this.slab.length) {
      if (this.used > this.runStart) this.out.push(this.slab.subarray(this.runStart, this.used))
      this.slab = new Uint8Array(Math.max(SLAB, size))
      this.used = 0
      this.runStart = 0
    }
    const at = this.used
    this.used += size
    this.bytes += size
    return at
  }

  /**
   * Writes a header, reserving `extra` bytes after it in the slab, and
   * answers the offset of those bytes.
   */
  protected header(version: number, type: number, flags: number, id: number, length: number, extra: number): number {
    const at = this.reserve(HEADER_SIZE + extra)
    const s = this.slab
    s[at] = version
    s[at + 1] = type
    s[at + 2] = flags >>> 8
    s[at + 3] = flags & 0xff
    writeU32(s, at + 4, id)
    writeU32(s, at + 8, length)
    this.frames++
    return at + HEADER_SIZE
  }

  /**
   * A DATA frame carrying `pieces` (`length` bytes in all): small pieces are
   * copied behind the header, large ones referenced, so one frame can carry
   * several queued writes without copying them.
   */
  protected dataFrame(version: number, flags: number, id: number, pieces: ReadonlyArray<Uint8Array>, length: number): void {
    if (length <= COPY_LIMIT) {
      let at = this.header(version, TYPE_DATA, flags, id, length, length)
      for (let i = 0; i < pieces.length; i++) {
        this.slab.set(pieces[i], at)
        at += pieces[i].length
      }
      return
    }
    this.header(version, TYPE_DATA, flags, id, length, 0)
    for (let i = 0; i < pieces.length; i++) {
      const piece = pieces[i]
      if (piece.length <= COPY_LIMIT) {
        // Reserve first: it may start a new slab.
        const at = this.reserve(piece.length)
        this.slab.set(piece, at)
        continue
      }
      if (this.used > this.runStart) this.out.push(this.slab.subarray(this.runStart, this.used))
      this.runStart = this.used
      this.out.push(piece)
      this.bytes += piece.length
    }
  }

  /** Takes the batch (undefined when empty). */
  flush(): Array<Uint8Array> | undefined {
    if (this.used > this.runStart) this.out.push(this.slab.subarray(this.runStart, this.used))
    this.runStart = this.used
    if (this.out.length === 0) return undefined
    const out = this.out
    this.out = []
    this.bytes = 0
    this.frames = 0
    // Views already handed out stay valid: the slab is only ever appended to.
    if (this.slab.length - this.used < 1024) {
      this.slab = new Uint8Array(SLAB)
      this.used = 0
      this.runStart = 0
    }
    return out
  }

  abstract open(id: number, type: number, urgency: number, incremental: boolean, windowDelta: number): void
  abstract ack(id: number, windowDelta: number): void
  abstract data(id: number, pieces: ReadonlyArray<Uint8Array>, length: number, fin: boolean): void
  abstract fin(id: number): void
  abstract reset(id: number, code: number): void
  abstract windowUpdate(id: number, delta: number): void
  abstract ping(ack: boolean, opaque: number): void
  abstract goAway(code: number, lastStreamId: number, reason: string): void
  abstract priority(id: number, urgency: number, incremental: boolean): void
  abstract settings(pairs: ReadonlyArray<readonly [number, number]>): void
}

/** yamux maps plexus codes onto its three GO_AWAY codes (spec: Codes). */
const yamuxGoAwayCode = (code: number): number =>
  code === CODE_NO_ERROR ? 0 : code === CODE_PROTOCOL_ERROR || code === CODE_FLOW_CONTROL_ERROR ? 1 : 2

export class YamuxEncoder extends FrameEncoder {
  private frame(type: number, flags: number, id: number, length: number): void {
    this.header(YAMUX_VERSION, type, flags, id, length, 0)
  }
  open(id: number, _type: number, _urgency: number, _incremental: boolean, windowDelta: number): void {
    this.frame(TYPE_WINDOW_UPDATE, FLAG_SYN, id, windowDelta)
  }
  ack(id: number, windowDelta: number): void {
    this.frame(TYPE_WINDOW_UPDATE, FLAG_ACK, id, windowDelta)
  }
  data(id: number, pieces: ReadonlyArray<Uint8Array>, length: number, fin: boolean): void {
    // FIN never rides on DATA in yamux: @chainsafe/libp2p-yamux acts on a
    // frame's flags before its payload, so a FIN on DATA ends its stream
    // first and the payload is dropped. hashicorp/yamux and libp2p-yamux send
    // FIN as a WINDOW_UPDATE of their own; so do we.
    this.dataFrame(YAMUX_VERSION, 0, id, pieces, length)
    if (fin) this.fin(id)
  }
  fin(id: number): void {
    this.frame(TYPE_WINDOW_UPDATE, FLAG_FIN, id, 0)
  }
  reset(id: number, _code: number): void {
    this.frame(TYPE_WINDOW_UPDATE, FLAG_RST, id, 0)
  }
  windowUpdate(id: number, delta: number): void {
    this.frame(TYPE_WINDOW_UPDATE, 0, id, delta)
  }
  ping(ack: boolean, opaque: number): void {
    this.frame(TYPE_PING, ack ? FLAG_ACK : FLAG_SYN, 0, opaque)
  }
  goAway(code: number): void {
    this.frame(TYPE_GO_AWAY, 0, 0, yamuxGoAwayCode(code))
  }
  // yamux carries neither: priorities stay local, settings are the yamux defaults.
  priority(): void {}
  settings(): void {}
}

export class PlexusEncoder extends FrameEncoder {
  private control(type: number, flags: number, id: number, length: number): number {
    return this.header(PLEXUS_VERSION, type, flags, id, length, length)
  }
  open(id: number, type: number, urgency: number, incremental: boolean, windowDelta: number): void {
    const at = this.control(TYPE_OPEN, 0, id, 12)
    const s = this.slab
    writeU32(s, at, type)
    s[at + 4] = urgency
    s[at + 5] = incremental ? 1 : 0
    s[at + 6] = 0
    s[at + 7] = 0
    writeU32(s, at + 8, windowDelta)
  }
  ack(id: number, windowDelta: number): void {
    writeU32(this.slab, this.control(TYPE_WINDOW_UPDATE, FLAG_ACK, id, 4), windowDelta)
  }
  data(id: number, pieces: ReadonlyArray<Uint8Array>, length: number, fin: boolean): void {
    this.dataFrame(PLEXUS_VERSION, fin ? FLAG_FIN : 0, id, pieces, length)
  }
  fin(id: number): void {
    writeU32(this.slab, this.control(TYPE_WINDOW_UPDATE, FLAG_FIN, id, 4), 0)
  }
  reset(id: number, code: number): void {
    writeU32(this.slab, this.control(TYPE_RESET, 0, id, 4), code)
  }
  windowUpdate(id: number, delta: number): void {
    writeU32(this.slab, this.control(TYPE_WINDOW_UPDATE, 0, id, 4), delta)
  }
  ping(ack: boolean, opaque: number): void {
    writeU32(this.slab, this.control(TYPE_PING, ack ? FLAG_ACK : FLAG_SYN, 0, 4), opaque)
  }
  goAway(code: number, lastStreamId: number, reason: string): void {
    let text = utf8Encoder.encode(reason)
    if (text.length > MAX_GO_AWAY_REASON) text = text.subarray(0, MAX_GO_AWAY_REASON)
    const at = this.control(TYPE_GO_AWAY, 0, 0, 8 + text.length)
    const s = this.slab
    writeU32(s, at, code)
    writeU32(s, at + 4, lastStreamId)
    s.set(text, at + 8)
  }
  priority(id: number, urgency: number, incremental: boolean): void {
    const at = this.control(TYPE_PRIORITY, 0, id, 2)
    const s = this.slab
    s[at] = urgency
    s[at + 1] = incremental ? 1 : 0
  }
  settings(pairs: ReadonlyArray<readonly [number, number]>): void {
    const at = this.control(TYPE_SETTINGS, 0, 0, pairs.length * 6)
    const s = this.slab
    for (let i = 0; i < pairs.length; i++) {
      const p = at + i * 6
      s[p] = pairs[i][0] >>> 8
      s[p + 1] = pairs[i][0] & 0xff
      writeU32(s, p + 2, pairs[i][1])
    }
  }
}
