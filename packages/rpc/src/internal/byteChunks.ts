/**
 * Streams of byte chunks (`success: Schema.Uint8Array` with `stream: true`)
 * without schema-binary's per-chunk cost. effect/rpc encodes every Chunk's
 * values with `codecFor(NonEmptyArray(success))`; for bytes, schema-binary
 * writes them through a growing arena and copies them out again on the
 * receiving side, which is most of a 64 KiB chunk's CPU. This codec writes
 * the very same bytes (a frame length, the array marker, a count, then
 * each value's length and bytes) with one copy, and reads them back as
 * views of the received message, with no copy.
 *
 * It is used only where it agrees with the serialization it stands in for:
 * when made, it encodes sample values both ways and compares them byte for
 * byte; any difference (another serialization, another schema-binary
 * layout) leaves the serialization's own codec in place. Input it cannot
 * read goes to the serialization's decoder, which reports it as usual.
 */
import * as Effect from "effect/Effect"
import type { RpcSerialization } from "effect/rpc"
import * as Schema from "effect/Schema"
import * as SchemaAST from "effect/SchemaAST"
import * as SchemaTransformation from "effect/SchemaTransformation"

type Service = RpcSerialization.RpcSerialization["Service"]
type CodecFor = Service["codecFor"]

/** The array marker schema-binary writes after a frame's length (checked against it, below). */
const ARRAY_MARKER = 0x20

/** Whether `schema` is exactly `NonEmptyArray(Schema.Uint8Array)`, with no checks or transformations. */
const isByteChunks = (schema: Schema.Top): boolean => {
  const ast = schema.ast
  if (!SchemaAST.isArrays(ast) || ast.checks !== undefined || ast.encoding !== undefined) return false
  const bytes = Schema.Uint8Array.ast
  return ast.elements.length === 1 && ast.rest.length === 1 && ast.elements[0] === bytes && ast.rest[0] === bytes
}

const uvarintSize = (n: number): number => {
  let size = 1
  while (n >= 0x80) {
    n = Math.floor(n / 128)
    size++
  }
  return size
}

const writeUvarint = (out: Uint8Array, at: number, n: number): number => {
  while (n >= 0x80) {
    out[at++] = (n & 0x7f) | 0x80
    n = Math.floor(n / 128)
  }
  out[at++] = n
  return at
}

/**
 * A frame of byte chunks whose values are held by reference: the parts to
 * write, in order (small headers between the values themselves).
 */
export class ByteFrame {
  readonly parts: ReadonlyArray<Uint8Array>
  readonly length: number
  constructor(parts: ReadonlyArray<Uint8Array>, length: number) {
    this.parts = parts
    this.length = length
  }
}

/** Frames values without copying them: the headers are written, the values referenced. */
export const frame = (values: ReadonlyArray<Uint8Array>): ByteFrame => {
  let body = 1 + uvarintSize(values.length)
  for (let i = 0; i < values.length; i++) body += uvarintSize(values[i].length) + values[i].length
  const parts = new Array<Uint8Array>(2 * values.length)
  let head = new Uint8Array(uvarintSize(body) + 1 + uvarintSize(values.length) + uvarintSize(values[0].length))
  let at = writeUvarint(head, 0, body)
  head[at++] = ARRAY_MARKER
  at = writeUvarint(head, at, values.length)
  writeUvarint(head, at, values[0].length)
  parts[0] = head
  parts[1] = values[0]
  for (let i = 1; i < values.length; i++) {
    head = new Uint8Array(uvarintSize(values[i].length))
    writeUvarint(head, 0, values[i].length)
    parts[2 * i] = head
    parts[2 * i + 1] = values[i]
  }
  return new ByteFrame(parts, uvarintSize(body) + body)
}

/** Encodes values as one frame: the values are copied once, into the frame. */
export const encode = (values: ReadonlyArray<Uint8Array>): Uint8Array => join(frame(values))

/** The frame's bytes in one buffer. */
export const join = (frame: ByteFrame): Uint8Array => {
  const out = new Uint8Array(frame.length)
  let at = 0
  for (let i = 0; i < frame.parts.length; i++) {
    out.set(frame.parts[i], at)
    at += frame.parts[i].length
  }
  return out
}

/**
 * Reads a frame's values as views of `bytes`; undefined when the bytes are
 * not exactly one well-formed frame of at least one value.
 */
export const decode = (bytes: Uint8Array): Array<Uint8Array> | undefined => {
  const end = bytes.length
  let at = 0
  // A uvarint of at most 7 bytes (below 2^49), read at `at`; -1 when malformed.
  const uvarint = (): number => {
    let n = 0
    let scale = 1
    for (let i = 0; i < 7; i++) {
      if (at >= end) return -1
      const b = bytes[at++]
      n += (b & 0x7f) * scale
      if (b < 0x80) return n
      scale *= 128
    }
    return -1
  }
  const body = uvarint()
  if (body < 0 || body !== end - at || at >= end || bytes[at++] !== ARRAY_MARKER) return undefined
  const count = uvarint()
  // Each value takes at least one byte: a count beyond that is a lie.
  if (count < 1 || count > end - at) return undefined
  const values = new Array<Uint8Array>(count)
  for (let i = 0; i < count; i++) {
    const length = uvarint()
    if (length < 0 || length > end - at) return undefined
    values[i] = bytes.subarray(at, at + length)
    at += length
  }
  return at === end ? values : undefined
}

const sameBytes = (a: unknown, b: unknown): boolean => {
  if (!(a instanceof Uint8Array) || !(b instanceof Uint8Array) || a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

/** Sample values whose encodings exercise one- to three-byte lengths and counts. */
const samples = (): ReadonlyArray<ReadonlyArray<Uint8Array>> => [
  [new Uint8Array(0)],
  [Uint8Array.of(1, 2, 3)],
  [new Uint8Array(200).fill(7), Uint8Array.of(9)],
  [new Uint8Array(20_000).fill(0x5a)],
  Array.from({ length: 130 }, (_, i) => Uint8Array.of(i))
]

/** Whether this codec writes and reads exactly what `codecFor` does. */
const agrees = (codecFor: CodecFor): boolean => {
  try {
    const theirs = codecFor(Schema.NonEmptyArray(Schema.Uint8Array))
    const encodeTheirs = Schema.encodeSync(theirs)
    const decodeTheirs = Schema.decodeUnknownSync(theirs)
    for (const values of samples()) {
      const ours = encode(values)
      if (!sameBytes(ours, encodeTheirs(values as [Uint8Array, ...Array<Uint8Array>]))) return false
      const back = decode(ours)
      const backTheirs = decodeTheirs(ours)
      if (back === undefined || back.length !== backTheirs.length) return false
      for (let i = 0; i < back.length; i++) if (!sameBytes(back[i], backTheirs[i])) return false
    }
    return true
  } catch {
    return false
  }
}

/**
 * The serialization with byte chunks taken care of here, or the
 * serialization unchanged when its own encoding of them differs.
 *
 * `byReference` encodes them as a `ByteFrame` rather than bytes: for a
 * server protocol, whose only use of such a codec is the Chunks it writes
 * itself (spec: CHUNK), never inside an envelope.
 */
export const withByteChunks = (serialization: Service, options?: { readonly byReference?: boolean }): Service => {
  const byReference = options?.byReference === true
  const codecFor = serialization.codecFor
  if (!agrees(codecFor)) return serialization
  const cache = new WeakMap<Schema.Top, unknown>()
  const fastCodecFor = (schema: Schema.Top) => {
    if (!isByteChunks(schema)) return codecFor(schema)
    const cached = cache.get(schema)
    if (cached !== undefined) return cached
    const decodeTheirs = Schema.decodeUnknownEffect(codecFor(schema))
    // The encoded side is checked here, not by a schema: it is bytes, or a ByteFrame.
    const codec = Schema.Unknown.pipe(
      Schema.decodeTo(
        schema as unknown as Schema.NonEmptyArray<Schema.Uint8Array>,
        SchemaTransformation.transformEffect({
          decode: (bytes: unknown) => {
            const values = bytes instanceof Uint8Array ? decode(bytes) : undefined
            if (values !== undefined) return Effect.succeed(values as [Uint8Array, ...Array<Uint8Array>])
            // Not ours to judge: the serialization's decoder reports it.
            return Effect.mapError(decodeTheirs(bytes), (error) => error.issue) as Effect.Effect<
              [Uint8Array, ...Array<Uint8Array>],
              Schema.SchemaError["issue"]
            >
          },
          encode: (values: readonly [Uint8Array, ...Array<Uint8Array>]) =>
            Effect.succeed<unknown>(byReference ? frame(values) : encode(values))
        })
      )
    )
    cache.set(schema, codec)
    return codec
  }
  return { ...serialization, codecFor: fastCodecFor as CodecFor }
}
