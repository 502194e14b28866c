/**
 * RPC messages (docs/spec/rpc.md, RPC messages): a kind byte, then an
 * effect/rpc envelope written by an `RpcSerialization`, or a call id and
 * what the kind carries. Plain functions over bytes: both carriers and both
 * sides use them.
 */
import type { RpcSerialization } from "effect/rpc"
import type { FromClientEncoded, FromServerEncoded } from "effect/rpc/RpcMessage"
import { ByteFrame } from "./byteChunks.ts"

/** Message kinds (spec: RPC messages). */
export const KIND_ENVELOPE = 0x00
export const KIND_REFUSED = 0x01
export const KIND_DEADLINE = 0x02
export const KIND_DEFECT = 0x03
export const KIND_GOAWAY = 0x04
export const KIND_ABORTED = 0x05
export const KIND_PROBE = 0x06
export const KIND_UNKNOWN = 0x07
export const KIND_CHUNK = 0x08

/** Reset codes of the application range (spec: Reset codes used). */
export const CODE_DEADLINE_EXCEEDED = 0x100
export const CODE_MESSAGE_TOO_LARGE = 0x101

const encoder = new TextEncoder()
const decoder = new TextDecoder("utf-8", { fatal: true })

const MAX_ID_BYTES = 0xffff

/** The text form of a request id, the key of every table of calls. */
export const idKey = (id: string | number): string => typeof id === "string" ? id : String(id)

/** Whether every code unit of `s` is ASCII (then its UTF-8 is its code units). */
const isAscii = (s: string): boolean => {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return false
  return true
}

/** A kind with a call id and an optional tail. */
export const control = (kind: number, id: string, tail?: Uint8Array): Uint8Array => {
  // Ids are mostly decimal numbers: written straight in, no encoder and no second buffer.
  const ascii = id.length <= MAX_ID_BYTES && isAscii(id)
  const idBytes = ascii ? undefined : encoder.encode(id)
  const length = ascii ? id.length : Math.min(idBytes!.length, MAX_ID_BYTES)
  const out = new Uint8Array(3 + length + (tail?.length ?? 0))
  out[0] = kind
  out[1] = length >>> 8
  out[2] = length & 0xff
  if (ascii) for (let i = 0; i < length; i++) out[3 + i] = id.charCodeAt(i)
  else out.set(idBytes!.subarray(0, length), 3)
  if (tail !== undefined) out.set(tail, 3 + length)
  return out
}

/** An ENVELOPE message around serialized bytes (or text). */
export const envelope = (bytes: Uint8Array | string): Uint8Array => {
  const body = typeof bytes === "string" ? encoder.encode(bytes) : bytes
  const out = new Uint8Array(1 + body.length)
  out[0] = KIND_ENVELOPE
  out.set(body, 1)
  return out
}

/** A decoded RPC message, or why it is malformed. */
export type Decoded<M> =
  | { readonly kind: typeof KIND_ENVELOPE; readonly message: M }
  | {
    readonly kind:
      | typeof KIND_REFUSED
      | typeof KIND_DEADLINE
      | typeof KIND_DEFECT
      | typeof KIND_GOAWAY
      | typeof KIND_ABORTED
      | typeof KIND_PROBE
      | typeof KIND_UNKNOWN
      | typeof KIND_CHUNK
    readonly id: string
    readonly tail: Uint8Array
  }
  | { readonly kind: "malformed"; readonly detail: string }

/**
 * Encodes and decodes RPC messages with one serialization. The parser is
 * made once and made again after it fails (a failed parser refuses further
 * input), so one bad message costs only itself.
 */
export class Codec<In, Out> {
  private parser: RpcSerialization.Parser
  readonly serialization: RpcSerialization.RpcSerialization["Service"]
  constructor(serialization: RpcSerialization.RpcSerialization["Service"]) {
    this.serialization = serialization
    this.parser = serialization.makeUnsafe()
  }

  /** The ENVELOPE message of one effect/rpc envelope; throws when it cannot be serialized. */
  encode(message: Out): Uint8Array {
    return envelope(this.serialize(message))
  }

  /** One envelope, serialized, without a kind; throws when it cannot be serialized. */
  serialize(message: Out): Uint8Array {
    const bytes = this.parser.encode(message)
    if (bytes === undefined) throw new Error("the serialization produced nothing")
    return typeof bytes === "string" ? encoder.encode(bytes) : bytes
  }

  /**
   * A Chunk whose values the serialization already wrote as bytes (the
   * schema-binary `codecFor` does; byte chunks arrive as a `ByteFrame`
   * holding them by reference) as a CHUNK message in parts: its head (kind
   * and call id), then the values' bytes, by reference, never copied nor
   * serialized again. Undefined for any other message.
   */
  chunkParts(message: Out): ReadonlyArray<Uint8Array> | undefined {
    const m = message as { readonly _tag?: unknown; readonly requestId?: unknown; readonly values?: unknown }
    if (m._tag !== "Chunk") return undefined
    if (typeof m.requestId !== "string" && typeof m.requestId !== "number") return undefined
    const values = m.values
    if (values instanceof ByteFrame) return [control(KIND_CHUNK, idKey(m.requestId)), ...values.parts]
    if (values instanceof Uint8Array) return [control(KIND_CHUNK, idKey(m.requestId)), values]
    return undefined
  }

  /** The envelope inside a DEFECT's tail. */
  decodeTail(tail: Uint8Array): In | undefined {
    const decoded = this.decode(envelope(tail))
    return decoded.kind === KIND_ENVELOPE ? decoded.message : undefined
  }

  decode(bytes: Uint8Array): Decoded<In> {
    if (bytes.length === 0) return { kind: "malformed", detail: "empty message" }
    const kind = bytes[0]
    if (kind === KIND_ENVELOPE) {
      let out: ReadonlyArray<unknown>
      try {
        const body = bytes.subarray(1)
        out = this.parser.decode(body)
      } catch (cause) {
        this.parser = this.serialization.makeUnsafe()
        return { kind: "malformed", detail: `unparseable envelope: ${String(cause)}` }
      }
      if (out.length !== 1) {
        this.parser = this.serialization.makeUnsafe()
        return { kind: "malformed", detail: `a message holds ${out.length} envelopes` }
      }
      const message = out[0]
      if (typeof message !== "object" || message === null || typeof (message as any)._tag !== "string") {
        return { kind: "malformed", detail: "not an envelope" }
      }
      return { kind: KIND_ENVELOPE, message: message as In }
    }
    if (kind > KIND_CHUNK) return { kind: "malformed", detail: `unknown kind ${kind}` }
    if (bytes.length < 3) return { kind: "malformed", detail: "runt control message" }
    const length = (bytes[1] << 8) | bytes[2]
    if (bytes.length < 3 + length) return { kind: "malformed", detail: "call id beyond the message" }
    let id: string
    try {
      id = decoder.decode(bytes.subarray(3, 3 + length))
    } catch {
      return { kind: "malformed", detail: "call id is not UTF-8" }
    }
    return { kind: kind as 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8, id, tail: bytes.subarray(3 + length) }
  }
}

/** The parts of a CHUNK message as one message. */
export const joinParts = (parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  let length = 0
  for (let i = 0; i < parts.length; i++) length += parts[i].length
  const out = new Uint8Array(length)
  let at = 0
  for (let i = 0; i < parts.length; i++) {
    out.set(parts[i], at)
    at += parts[i].length
  }
  return out
}

/** The Chunk envelope of a CHUNK message, for the call it belongs to. */
export const chunkOf = (requestId: string | number, values: Uint8Array): FromServerEncoded =>
  ({ _tag: "Chunk", requestId, values }) as unknown as FromServerEncoded

export type ClientCodec = Codec<FromServerEncoded, FromClientEncoded>
export type ServerCodec = Codec<FromClientEncoded, FromServerEncoded>

/** The `plexus-timeout` header's value in milliseconds, if it has a usable one. */
export const timeoutOf = (headers: ReadonlyArray<readonly [string, string]> | undefined): number | undefined => {
  if (headers === undefined) return undefined
  for (let i = 0; i < headers.length; i++) {
    const h = headers[i]
    if (h[0].toLowerCase() !== TIMEOUT_HEADER) continue
    const value = h[1]
    if (!/^\d{1,10}$/.test(value)) return undefined
    const n = Number(value)
    return n >= 1 && n <= 0x7fffffff ? n : undefined
  }
  return undefined
}

/** The header that carries a call's deadline (spec: Metadata and deadlines). */
export const TIMEOUT_HEADER = "plexus-timeout"
