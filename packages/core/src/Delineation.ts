/**
 * A `Delineation` says where messages begin and end in a byte stream: the
 * part of Linux KCM that a BPF program plays. Three kinds: a length prefix
 * (field width, byte order, offset, adjustment), a delimiter, and a custom
 * parser that, given the bytes of a message received so far, answers its
 * length, "need more", or a failure.
 *
 * Decoding is incremental across arbitrary chunk boundaries and copy-free
 * where the bytes allow: a message inside one chunk is handed on as a
 * `subarray` of it, and a message split across chunks is copied once. No
 * declared length is trusted: every length is checked against
 * `maxMessageSize` before anything is buffered for it, and buffers grow
 * with the bytes that actually arrived, never with what a header claims.
 *
 * `maxMessageSize` bounds a whole frame as it appears on the wire, header
 * and delimiter excluded only where the kind strips them (see each
 * constructor). A decoding failure leaves the byte stream unusable: the
 * decoder stays failed, and the connection must be closed.
 *
 * @since 0.1.0
 */
import type { NonEmptyReadonlyArray } from "effect/Array"
import * as Duration from "effect/Duration"
import * as Predicate from "effect/Predicate"
import { allocFrame } from "./internal/bytes.ts"
import {
  DelimiterInPayload,
  DelineationError,
  type DelineationErrorReason,
  InvalidLength,
  LengthMismatch,
  MessageTooLarge,
  ParserFailed,
  TruncatedMessage
} from "./DelineationError.ts"

/**
 * @category type IDs
 * @since 0.1.0
 */
export const TypeId = "~@plexus/core/Delineation"

/**
 * @category type IDs
 * @since 0.1.0
 */
export type TypeId = typeof TypeId

/**
 * The default bound on a message: 1 MiB.
 *
 * @category constants
 * @since 0.1.0
 */
export const DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024

/**
 * Messages up to this size are copied into one contiguous write buffer
 * together with their headers when several are framed at once; larger ones
 * are passed on by reference.
 *
 * @category constants
 * @since 0.1.0
 */
export const COALESCE_LIMIT = 16 * 1024

/**
 * An incremental decoder for one byte stream.
 *
 * @category models
 * @since 0.1.0
 */
export interface Decoder {
  /**
   * Feeds one chunk. Complete messages are appended to `out`, in order, as
   * views that stay valid after the call. Returns the failure, if any; after
   * a failure the decoder answers the same failure forever.
   */
  readonly push: (chunk: Uint8Array, out: Array<Uint8Array>) => DelineationError | undefined
  /** The end of the stream: a failure if it cut a message short. */
  readonly end: () => DelineationError | undefined
  /** Whether some bytes of an incomplete message are held. */
  readonly partial: boolean
  /** How many bytes of an incomplete message are held. */
  readonly buffered: number
  /** Memory held for the incomplete message: at most 4x `buffered`, never the declared size. */
  readonly retained: number
  /**
   * Removes and returns the bytes held for the incomplete message, as
   * received (header included), so that other code can take the byte stream
   * over from here. The decoder starts afresh at a message boundary.
   */
  readonly takePending: () => Uint8Array
}

/**
 * How messages are cut out of a byte stream and framed for sending.
 *
 * @category models
 * @since 0.1.0
 */
export interface Delineation {
  readonly [TypeId]: TypeId
  readonly kind: "LengthPrefix" | "Delimiter" | "Custom"
  readonly maxMessageSize: number
  /** How long a message may stay incomplete after its first byte arrived. */
  readonly partialTimeout: Duration.Duration | undefined
  /** A fresh decoder, one per byte stream. */
  readonly decoder: () => Decoder
  /**
   * Frames messages for sending: the chunks to write, in order. Small
   * messages are coalesced with their headers into one buffer; large ones
   * are passed on by reference.
   */
  readonly encode: (messages: ReadonlyArray<Uint8Array>) => NonEmptyReadonlyArray<Uint8Array> | DelineationError
}

/**
 * @category guards
 * @since 0.1.0
 */
export const isDelineation = (u: unknown): u is Delineation => Predicate.hasProperty(u, TypeId)

/**
 * Options shared by every kind.
 *
 * @category models
 * @since 0.1.0
 */
export interface CommonOptions {
  /** Bound on one frame, in bytes. Default 1 MiB. */
  readonly maxMessageSize?: number | undefined
  /** Deadline for an incomplete message, from its first byte. Default: none. */
  readonly partialTimeout?: Duration.Input | undefined
}

const fail = (reason: DelineationErrorReason) => new DelineationError({ reason })

const resolveCommon = (options: CommonOptions | undefined) => {
  const max = options?.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE
  if (!Number.isSafeInteger(max) || max < 0) {
    throw new RangeError(`maxMessageSize must be a non-negative safe integer, got ${max}`)
  }
  return {
    maxMessageSize: max,
    partialTimeout: options?.partialTimeout === undefined ? undefined : Duration.fromInputUnsafe(options.partialTimeout)
  }
}

// ---------------------------------------------------------------------------
// Length prefix
// ---------------------------------------------------------------------------

/**
 * Options of a length prefix.
 *
 * The frame length is `value + lengthAdjustment`, plus the header size
 * (`lengthFieldOffset + lengthFieldLength`) unless `lengthIncludesHeader`.
 * `maxMessageSize` bounds that frame length.
 *
 * @category models
 * @since 0.1.0
 */
export interface LengthPrefixOptions extends CommonOptions {
  /** Width of the length field in bytes. Default 4. */
  readonly lengthFieldLength?: 1 | 2 | 4 | 8 | undefined
  /** Bytes of header before the length field. Default 0. */
  readonly lengthFieldOffset?: number | undefined
  /** Byte order of the field. Default big endian. */
  readonly littleEndian?: boolean | undefined
  /** Added to the field's value. Default 0. */
  readonly lengthAdjustment?: number | undefined
  /** Whether the field counts the header as well as the body. Default false. */
  readonly lengthIncludesHeader?: boolean | undefined
  /**
   * Whether received messages are delivered without their header (and sent
   * messages are given a header). Default true. When false, messages carry
   * their own header both ways: received frames are delivered whole, and a
   * sent message must already declare its own length.
   */
  readonly stripHeader?: boolean | undefined
}

/**
 * A length-prefixed delineation: `lengthPrefix()` is a 4-byte big-endian
 * length of the body, followed by the body.
 *
 * @category constructors
 * @since 0.1.0
 */
export const lengthPrefix = (options?: LengthPrefixOptions): Delineation => {
  const common = resolveCommon(options)
  const fieldLength = options?.lengthFieldLength ?? 4
  if (fieldLength !== 1 && fieldLength !== 2 && fieldLength !== 4 && fieldLength !== 8) {
    throw new RangeError(`lengthFieldLength must be 1, 2, 4 or 8, got ${fieldLength}`)
  }
  const offset = options?.lengthFieldOffset ?? 0
  const adjustment = options?.lengthAdjustment ?? 0
  if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`invalid lengthFieldOffset ${offset}`)
  if (!Number.isSafeInteger(adjustment)) throw new RangeError(`invalid lengthAdjustment ${adjustment}`)
  const littleEndian = options?.littleEndian ?? false
  const includesHeader = options?.lengthIncludesHeader ?? false
  const strip = options?.stripHeader ?? true
  const headerSize = offset + fieldLength
  const max = common.maxMessageSize
  const fieldMax = fieldLength === 8 ? Number.MAX_SAFE_INTEGER : 2 ** (fieldLength * 8) - 1
  const base = adjustment + (includesHeader ? 0 : headerSize)
  const layout = new LengthLayout(offset, fieldLength, littleEndian, base, headerSize, max)
  const decoder = (): Decoder => new FrameDecoder(max, headerSize, strip ? headerSize : 0, layout)

  const writeHeader = (target: Uint8Array, at: number, bodyLength: number) => {
    const value = bodyLength + headerSize - base
    for (let i = 0; i < offset; i++) target[at + i] = 0
    const p = at + offset
    if (fieldLength === 8) {
      const hi = Math.floor(value / 2 ** 32)
      const lo = value >>> 0
      writeUint32(target, littleEndian ? p + 4 : p, hi, littleEndian)
      writeUint32(target, littleEndian ? p : p + 4, lo, littleEndian)
    } else if (fieldLength === 4) {
      writeUint32(target, p, value, littleEndian)
    } else if (fieldLength === 2) {
      target[littleEndian ? p : p + 1] = value & 0xff
      target[littleEndian ? p + 1 : p] = (value >>> 8) & 0xff
    } else {
      target[p] = value
    }
  }

  // The frame size of a message, or a failure.
  const frameSize = (message: Uint8Array): number | DelineationError => {
    if (!strip) {
      if (message.length < headerSize) {
        return fail(new LengthMismatch({ declared: headerSize, actual: message.length }))
      }
      const declared = layout.measure(message, 0, message.length)
      if (declared < 0) return fail(layout.failure!)
      if (declared !== message.length) return fail(new LengthMismatch({ declared, actual: message.length }))
      return declared
    }
    const frame = headerSize + message.length
    if (frame > max) return fail(new MessageTooLarge({ size: frame, max }))
    const value = message.length + headerSize - base
    if (value < 0) {
      return fail(new InvalidLength({
        value: String(value),
        detail: `a ${message.length}-byte message is shorter than the length adjustment allows`
      }))
    }
    if (value > fieldMax) {
      return fail(new MessageTooLarge({ size: frame, max: Math.min(max, fieldMax - headerSize + base) }))
    }
    return frame
  }

  return {
    [TypeId]: TypeId,
    kind: "LengthPrefix",
    maxMessageSize: max,
    partialTimeout: common.partialTimeout,
    decoder,
    encode: (messages) =>
      coalesce(messages, frameSize, strip ? headerSize : 0, strip ? writeHeader : undefined, undefined)
  }
}

/**
 * Reads a length field. `measure` answers the frame length at `at`, 0 when
 * fewer than a header's bytes are available, or -1 with `failure` set.
 * A class, so that the decoder's hot loop calls one monomorphic method.
 */
class LengthLayout implements Measure {
  failure: DelineationErrorReason | undefined = undefined
  readonly offset: number
  readonly fieldLength: number
  readonly littleEndian: boolean
  readonly base: number
  readonly headerSize: number
  readonly max: number
  constructor(offset: number, fieldLength: number, littleEndian: boolean, base: number, headerSize: number, max: number) {
    this.offset = offset
    this.fieldLength = fieldLength
    this.littleEndian = littleEndian
    this.base = base
    this.headerSize = headerSize
    this.max = max
  }

  measure(buf: Uint8Array, at: number, available: number): number {
    if (available < this.headerSize) return 0
    const p = at + this.offset
    let value: number
    if (this.fieldLength === 4 && !this.littleEndian) {
      value = ((buf[p] << 24) | (buf[p + 1] << 16) | (buf[p + 2] << 8) | buf[p + 3]) >>> 0
    } else {
      value = this.readOther(buf, p)
      if (value < 0) return -1
    }
    const frame = value + this.base
    if (frame > this.max) {
      this.failure = new MessageTooLarge({ size: frame, max: this.max })
      return -1
    }
    if (frame < this.headerSize) {
      this.failure = new InvalidLength({
        value: String(value),
        detail: `frame of ${frame} bytes is shorter than its ${this.headerSize}-byte header`
      })
      return -1
    }
    return frame
  }

  private readOther(buf: Uint8Array, p: number): number {
    const le = this.littleEndian
    switch (this.fieldLength) {
      case 1:
        return buf[p]
      case 2:
        return le ? buf[p] | (buf[p + 1] << 8) : (buf[p] << 8) | buf[p + 1]
      case 4:
        return le
          ? (buf[p] | (buf[p + 1] << 8) | (buf[p + 2] << 16) | (buf[p + 3] << 24)) >>> 0
          : ((buf[p] << 24) | (buf[p + 1] << 16) | (buf[p + 2] << 8) | buf[p + 3]) >>> 0
      default: {
        const lo = le
          ? (buf[p] | (buf[p + 1] << 8) | (buf[p + 2] << 16) | (buf[p + 3] << 24)) >>> 0
          : ((buf[p + 4] << 24) | (buf[p + 5] << 16) | (buf[p + 6] << 8) | buf[p + 7]) >>> 0
        const hi = le
          ? (buf[p + 4] | (buf[p + 5] << 8) | (buf[p + 6] << 16) | (buf[p + 7] << 24)) >>> 0
          : ((buf[p] << 24) | (buf[p + 1] << 16) | (buf[p + 2] << 8) | buf[p + 3]) >>> 0
        if (hi >= 0x200000) {
          // Beyond 2^53: no real frame is this long.
          this.failure = new MessageTooLarge({ size: hi * 2 ** 32 + lo, max: this.max })
          return -1
        }
        return hi * 2 ** 32 + lo
      }
    }
  }
}

const writeUint32 = (target: Uint8Array, at: number, value: number, littleEndian: boolean) => {
  if (littleEndian) {
    target[at] = value & 0xff
    target[at + 1] = (value >>> 8) & 0xff
    target[at + 2] = (value >>> 16) & 0xff
    target[at + 3] = (value >>> 24) & 0xff
  } else {
    target[at] = (value >>> 24) & 0xff
    target[at + 1] = (value >>> 16) & 0xff
    target[at + 2] = (value >>> 8) & 0xff
    target[at + 3] = value & 0xff
  }
}

// ---------------------------------------------------------------------------
// Custom parser
// ---------------------------------------------------------------------------

/**
 * The answer of a custom parser meaning "not enough bytes yet".
 *
 * @category constants
 * @since 0.1.0
 */
export const NEED_MORE = 0

/**
 * A custom parser: given the bytes of the next message received so far
 * (starting at its first byte), answers the message's total length in bytes
 * (a positive integer), `NEED_MORE` (0), or a negative integer failure code.
 * It is called again, with more bytes, after each "need more". Anything else
 * it answers, and anything it throws, fails the stream with `ParserFailed`.
 *
 * @category models
 * @since 0.1.0
 */
export type Parser = (bytes: Uint8Array) => number

/**
 * Options of a custom delineation.
 *
 * @category models
 * @since 0.1.0
 */
export interface CustomOptions extends CommonOptions {
  readonly parse: Parser
  /** The parser is not called before this many bytes are held. Default 1. */
  readonly minBytes?: number | undefined
  /**
   * Frames one outgoing message; default: messages carry their own header,
   * so a message is sent as it is, after checking the parser measures it as
   * exactly its own length.
   */
  readonly frame?: ((message: Uint8Array) => Uint8Array) | undefined
}

/**
 * A delineation driven by a user parser: KCM's BPF program. Received
 * messages are delivered whole (header included).
 *
 * @category constructors
 * @since 0.1.0
 */
export const custom = (options: CustomOptions): Delineation => {
  const common = resolveCommon(options)
  const max = common.maxMessageSize
  const minBytes = Math.max(1, options.minBytes ?? 1)
  const parse = options.parse
  let failure: DelineationErrorReason | undefined

  // Validates a parser answer; -1 with `failure` set when it is unusable.
  const ask = (bytes: Uint8Array): number => {
    let answer: unknown
    try {
      answer = parse(bytes)
    } catch (cause) {
      failure = new ParserFailed({ detail: "the parser threw", cause })
      return -1
    }
    if (typeof answer !== "number" || Number.isNaN(answer)) {
      failure = new ParserFailed({ detail: `the parser answered ${describe(answer)}, not a length` })
      return -1
    }
    if (answer === NEED_MORE) return 0
    if (answer < 0) {
      failure = Number.isInteger(answer)
        ? new ParserFailed({ detail: `the parser reported failure ${answer}`, code: answer })
        : new InvalidLength({ value: String(answer), detail: "negative length" })
      return -1
    }
    if (!Number.isFinite(answer) || answer > max) {
      failure = new MessageTooLarge({ size: answer, max })
      return -1
    }
    if (!Number.isInteger(answer)) {
      failure = new InvalidLength({ value: String(answer), detail: "not a whole number of bytes" })
      return -1
    }
    return answer
  }

  const measure: Measure = {
    get failure() {
      return failure
    },
    measure: (buf, at, available) => {
      if (available < minBytes) return 0
      return ask(at === 0 && available === buf.length ? buf : buf.subarray(at, at + available))
    }
  }
  const decoder = (): Decoder => new FrameDecoder(max, minBytes, 0, measure)

  const frame = options.frame
  const frameSize = (message: Uint8Array): number | DelineationError => {
    const size = ask(message)
    if (size < 0) return fail(failure!)
    if (size !== message.length) return fail(new LengthMismatch({ declared: size, actual: message.length }))
    return size
  }

  return {
    [TypeId]: TypeId,
    kind: "Custom",
    maxMessageSize: max,
    partialTimeout: common.partialTimeout,
    decoder,
    encode: (messages) => coalesce(frame === undefined ? messages : messages.map(frame), frameSize, 0, undefined, undefined)
  }
}

const describe = (u: unknown): string => {
  if (typeof u === "number") return String(u)
  if (typeof u === "string") return `the string ${JSON.stringify(u.slice(0, 32))}`
  return u === null ? "null" : typeof u
}

// ---------------------------------------------------------------------------
// Delimiter
// ---------------------------------------------------------------------------

/**
 * Options of a delimiter delineation.
 *
 * @category models
 * @since 0.1.0
 */
export interface DelimiterOptions extends CommonOptions {
  /** The bytes that end a message, e.g. "\n" or "\r\n". Not empty. */
  readonly delimiter: Uint8Array | string
  /**
   * Whether sent messages are scanned for the delimiter first (a message
   * containing it would arrive as two). Default true.
   */
  readonly checkPayload?: boolean | undefined
}

/**
 * Messages ended by a delimiter. Received messages are delivered without
 * it; `maxMessageSize` bounds a message without its delimiter.
 *
 * @category constructors
 * @since 0.1.0
 */
export const delimiter = (options: DelimiterOptions): Delineation => {
  const common = resolveCommon(options)
  const delim = typeof options.delimiter === "string" ? new TextEncoder().encode(options.delimiter) : options.delimiter
  if (delim.length === 0) throw new RangeError("the delimiter must not be empty")
  const max = common.maxMessageSize
  const check = options.checkPayload ?? true
  const frameSize = (message: Uint8Array): number | DelineationError => {
    if (message.length > max) return fail(new MessageTooLarge({ size: message.length, max }))
    if (check) {
      const at = indexOf(message, delim, 0, message.length)
      if (at >= 0) return fail(new DelimiterInPayload({ offset: at }))
    }
    return message.length + delim.length
  }
  return {
    [TypeId]: TypeId,
    kind: "Delimiter",
    maxMessageSize: max,
    partialTimeout: common.partialTimeout,
    decoder: () => new DelimiterDecoder(delim, max),
    encode: (messages) => coalesce(messages, frameSize, 0, undefined, delim)
  }
}

// The first full occurrence of `delim` in `buf[from, to)`, or -1.
const indexOf = (buf: Uint8Array, delim: Uint8Array, from: number, to: number): number => {
  const first = delim[0]
  const n = delim.length
  let i = buf.indexOf(first, from)
  while (i >= 0 && i + n <= to) {
    let j = 1
    while (j < n && buf[i + j] === delim[j]) j++
    if (j === n) return i
    i = buf.indexOf(first, i + 1)
  }
  return -1
}

// ---------------------------------------------------------------------------
// Shared machinery
// ---------------------------------------------------------------------------

/**
 * Measures the frame at `at` from `available` bytes: its length, 0 for
 * "need more", or -1 with `failure` recorded.
 */
interface Measure {
  readonly failure: DelineationErrorReason | undefined
  measure(buf: Uint8Array, at: number, available: number): number
}

/**
 * Growable holding area for the one message in progress. It grows with the
 * bytes that arrived: doubling, and straight to `cap` (the frame's known
 * length, or the maximum) once that is within 4x of what is held. Memory
 * follows what the peer sent, never more than 4x, not what it declared.
 */
class Accumulator {
  buf: Uint8Array = EMPTY
  length = 0
  append(src: Uint8Array, from: number, to: number, cap: number): void {
    const needed = this.length + (to - from)
    if (needed > this.buf.length) {
      const size = needed * 4 >= cap ? cap : Math.min(Math.max(needed, this.buf.length * 2, 256), cap)
      const grown = new Uint8Array(Math.max(size, needed))
      grown.set(this.buf.subarray(0, this.length))
      this.buf = grown
    }
    this.buf.set(src.subarray(from, to), this.length)
    this.length = needed
  }
  // The held bytes, trimmed to their length; the accumulator starts afresh.
  takeExact(): Uint8Array {
    const length = this.length
    const out = this.take()
    return length === out.length ? out : out.slice(0, length)
  }
  // Hands the held bytes over; the accumulator starts afresh.
  take(): Uint8Array {
    const out = this.buf
    this.buf = EMPTY
    this.length = 0
    return out
  }
}

const EMPTY = new Uint8Array(0)

/**
 * Decoder for kinds that learn a frame's length from its first bytes
 * (length prefix and custom parser), through a `Measure`.
 */
class FrameDecoder implements Decoder {
  private readonly acc = new Accumulator()
  private frame = 0
  private error: DelineationError | undefined
  private readonly max: number
  private readonly headerHint: number
  private readonly strip: number
  private readonly layout: Measure
  /** Set for the common length layout, which the hot loop reads inline. */
  private readonly fast: LengthLayout | undefined
  constructor(max: number, headerHint: number, strip: number, layout: Measure) {
    this.max = max
    this.headerHint = headerHint
    this.strip = strip
    this.layout = layout
    this.fast = layout instanceof LengthLayout && layout.fieldLength === 4 && !layout.littleEndian &&
        layout.offset === 0
      ? layout
      : undefined
  }

  get partial(): boolean {
    return this.acc.length > 0
  }

  get buffered(): number {
    return this.acc.length
  }

  get retained(): number {
    return this.acc.buf.length
  }

  takePending(): Uint8Array {
    this.frame = 0
    return this.acc.takeExact()
  }

  private failed(): DelineationError {
    this.error = fail(this.layout.failure!)
    this.acc.take()
    return this.error
  }

  push(chunk: Uint8Array, out: Array<Uint8Array>): DelineationError | undefined {
    if (this.error !== undefined) return this.error
    const n = chunk.length
    let pos = 0
    const acc = this.acc
    // Finish the message in progress first.
    while (acc.length > 0 && pos < n) {
      if (this.frame === 0) {
        // Header incomplete: take just enough bytes for the header hint, then
        // everything (a parser may need more than the hint), never beyond max.
        const want = acc.length < this.headerHint ? this.headerHint - acc.length : n - pos
        const take = Math.min(want, n - pos, this.max + 1 - acc.length)
        acc.append(chunk, pos, pos + take, this.max)
        pos += take
        const frame = this.layout.measure(acc.buf, 0, acc.length)
        if (frame < 0) return this.failed()
        if (frame === 0) {
          if (acc.length > this.max) return this.tooLarge(acc.length)
          continue
        }
        if (frame <= acc.length) {
          // The frame ended inside the bytes just taken: give the rest back.
          pos -= acc.length - frame
          acc.length = frame
          this.deliver(out)
          continue
        }
        this.frame = frame
      }
      const take = Math.min(this.frame - acc.length, n - pos)
      acc.append(chunk, pos, pos + take, this.frame)
      pos += take
      if (acc.length === this.frame) this.deliver(out)
    }
    // Then cut whole frames straight out of the chunk: first with the common
    // layout read inline (4-byte big-endian length at offset 0), then the
    // general way for whatever is left (other layouts, a partial frame, errors).
    const fast = this.fast
    if (fast !== undefined) {
      const strip = this.strip
      while (n - pos >= 4) {
        const frame = (((chunk[pos] << 24) | (chunk[pos + 1] << 16) | (chunk[pos + 2] << 8) | chunk[pos + 3]) >>> 0) +
          fast.base
        if (frame > fast.max || frame < 4 || frame > n - pos) break
        out.push(chunk.subarray(pos + strip, pos + frame))
        pos += frame
      }
    }
    while (pos < n) {
      const available = n - pos
      const frame = this.layout.measure(chunk, pos, available)
      if (frame < 0) return this.failed()
      if (frame > 0 && frame <= available) {
        out.push(chunk.subarray(pos + this.strip, pos + frame))
        pos += frame
        continue
      }
      if (frame === 0 && available > this.max) return this.tooLarge(available)
      this.frame = frame
      acc.append(chunk, pos, n, frame === 0 ? this.max : frame)
      return undefined
    }
    return undefined
  }

  private tooLarge(size: number): DelineationError {
    this.error = fail(new MessageTooLarge({ size, max: this.max }))
    this.acc.take()
    return this.error
  }

  private deliver(out: Array<Uint8Array>): void {
    const length = this.acc.length
    out.push(this.acc.take().subarray(this.strip, length))
    this.frame = 0
  }

  end(): DelineationError | undefined {
    if (this.error !== undefined) return this.error
    if (this.acc.length === 0) return undefined
    return fail(new TruncatedMessage({ buffered: this.acc.length }))
  }
}

/** Decoder for delimited messages. */
class DelimiterDecoder implements Decoder {
  private readonly acc = new Accumulator()
  private error: DelineationError | undefined
  private readonly delim: Uint8Array
  private readonly max: number
  constructor(delim: Uint8Array, max: number) {
    this.delim = delim
    this.max = max
  }

  get partial(): boolean {
    return this.acc.length > 0
  }

  get buffered(): number {
    return this.acc.length
  }

  get retained(): number {
    return this.acc.buf.length
  }

  takePending(): Uint8Array {
    return this.acc.takeExact()
  }

  push(chunk: Uint8Array, out: Array<Uint8Array>): DelineationError | undefined {
    if (this.error !== undefined) return this.error
    const delim = this.delim
    const d = delim.length
    const n = chunk.length
    const acc = this.acc
    let pos = 0
    if (acc.length > 0) {
      // A delimiter may straddle the held bytes and this chunk.
      let end = -1
      let resume = 0
      for (let k = Math.min(d - 1, acc.length); k >= 1 && end < 0; k--) {
        if (n < d - k) continue
        let j = 0
        while (j < k && acc.buf[acc.length - k + j] === delim[j]) j++
        if (j < k) continue
        while (j < d && chunk[j - k] === delim[j]) j++
        if (j === d) {
          end = acc.length - k
          resume = d - k
        }
      }
      if (end >= 0) {
        if (end > this.max) return this.tooLarge(end)
        acc.length = end
        out.push(acc.take().subarray(0, end))
        pos = resume
      } else {
        const at = indexOf(chunk, delim, 0, n)
        if (at < 0) {
          if (acc.length + n - (d - 1) > this.max) return this.tooLarge(acc.length + n)
          acc.append(chunk, 0, n, this.max + d)
          return undefined
        }
        if (acc.length + at > this.max) return this.tooLarge(acc.length + at)
        acc.append(chunk, 0, at, acc.length + at)
        const length = acc.length
        out.push(acc.take().subarray(0, length))
        pos = at + d
      }
    }
    while (pos < n) {
      const at = indexOf(chunk, delim, pos, n)
      if (at < 0) break
      if (at - pos > this.max) return this.tooLarge(at - pos)
      out.push(chunk.subarray(pos, at))
      pos = at + d
    }
    if (pos < n) {
      if (n - pos - (d - 1) > this.max) return this.tooLarge(n - pos)
      acc.append(chunk, pos, n, this.max + d)
    }
    return undefined
  }

  private tooLarge(size: number): DelineationError {
    this.error = fail(new MessageTooLarge({ size, max: this.max }))
    this.acc.take()
    return this.error
  }

  end(): DelineationError | undefined {
    if (this.error !== undefined) return this.error
    if (this.acc.length === 0) return undefined
    return fail(new TruncatedMessage({ buffered: this.acc.length }))
  }
}

/**
 * Frames a batch: runs of small messages are copied, each behind its header
 * and before its trailer, into one buffer; large messages go out by
 * reference behind a header of their own.
 */
const coalesce = (
  messages: ReadonlyArray<Uint8Array>,
  frameSize: (message: Uint8Array) => number | DelineationError,
  headerSize: number,
  writeHeader: ((target: Uint8Array, at: number, bodyLength: number) => void) | undefined,
  trailer: Uint8Array | undefined
): NonEmptyReadonlyArray<Uint8Array> | DelineationError => {
  const count = messages.length
  if (count === 0) return [EMPTY]
  // Fast path: one message.
  if (count === 1) {
    const message = messages[0]
    const size = frameSize(message)
    if (typeof size !== "number") return size
    if (writeHeader === undefined && trailer === undefined) return [message]
    if (size <= COALESCE_LIMIT) {
      const out = allocFrame(size)
      if (writeHeader !== undefined) writeHeader(out, 0, message.length)
      out.set(message, headerSize)
      if (trailer !== undefined) out.set(trailer, headerSize + message.length)
      return [out]
    }
    const head = writeHeader === undefined ? undefined : new Uint8Array(headerSize)
    if (head !== undefined) writeHeader!(head, 0, message.length)
    return head === undefined ? [message, trailer!] : trailer === undefined ? [head, message] : [head, message, trailer]
  }
  const sizes = new Array<number>(count)
  let small = 0
  for (let i = 0; i < count; i++) {
    const size = frameSize(messages[i])
    if (typeof size !== "number") return size
    sizes[i] = size
    if (messages[i].length <= COALESCE_LIMIT) small += size
  }
  const out: Array<Uint8Array> = []
  // A small arena (the usual batch of small messages) is cut from the shared slab.
  const arena = small > 0 ? allocFrame(small) : EMPTY
  let used = 0
  let runStart = 0
  for (let i = 0; i < count; i++) {
    const message = messages[i]
    if (message.length <= COALESCE_LIMIT) {
      if (writeHeader !== undefined) writeHeader(arena, used, message.length)
      arena.set(message, used + headerSize)
      if (trailer !== undefined) arena.set(trailer, used + headerSize + message.length)
      used += sizes[i]
      continue
    }
    if (used > runStart) out.push(arena.subarray(runStart, used))
    runStart = used
    if (writeHeader !== undefined) {
      const head = new Uint8Array(headerSize)
      writeHeader(head, 0, message.length)
      out.push(head)
    }
    out.push(message)
    if (trailer !== undefined) out.push(trailer)
  }
  if (used > runStart) out.push(arena.subarray(runStart, used))
  return out as unknown as NonEmptyReadonlyArray<Uint8Array>
}
