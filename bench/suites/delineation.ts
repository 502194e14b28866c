/**
 * Delineation: cutting length-prefixed messages out of a byte stream.
 *
 * `length-prefix-1KiB` feeds the same stream (1 KiB bodies behind a 4-byte
 * big-endian length, cut into 64 KiB Buffers as a TCP socket delivers them)
 * to plexus's `Delineation.lengthPrefix()` decoder and to a hand-written
 * decoder of the kind a competent user writes. Both produce every message
 * as a `Uint8Array` (a view where the message lies inside one chunk, a copy
 * where it straddles two) and both check the length against a maximum; the
 * count is checked, so neither side can skip work.
 */
import { Delineation } from "@plexus/core"
import { Buffer } from "node:buffer"
import type { Suite } from "../harness/Suite.ts"

const BODY = 1024
const FRAME = BODY + 4
const CHUNK = 64 * 1024
const MAX = Delineation.DEFAULT_MAX_MESSAGE_SIZE

/** The wire bytes of `count` messages, as 64 KiB chunks. */
const makeStream = (count: number): Array<Uint8Array> => {
  const wire = Buffer.allocUnsafeSlow(count * FRAME)
  for (let i = 0; i < count; i++) {
    const at = i * FRAME
    wire.writeUInt32BE(BODY, at)
    wire.fill(i & 0xff, at + 4, at + FRAME)
    wire.writeUInt32BE(i, at + 4)
  }
  const chunks: Array<Uint8Array> = []
  for (let at = 0; at < wire.length; at += CHUNK) chunks.push(wire.subarray(at, Math.min(at + CHUNK, wire.length)))
  return chunks
}

interface Decoder {
  readonly push: (chunk: Uint8Array, out: Array<Uint8Array>) => unknown
}

/**
 * The baseline: 4-byte big-endian length, bodies cut out with `subarray`,
 * and for a message split across chunks a carry buffer allocated at the
 * message's size (a partial header is held in a 4-byte buffer).
 */
const handWritten = (): Decoder => {
  const head = new Uint8Array(4)
  let headFilled = 0
  let body: Uint8Array | undefined
  let bodyFilled = 0
  const start = (length: number) => {
    if (length > MAX) throw new RangeError(`message of ${length} bytes exceeds ${MAX}`)
    body = new Uint8Array(length)
    bodyFilled = 0
  }
  return {
    push: (chunk, out) => {
      const n = chunk.length
      let pos = 0
      if (headFilled > 0) {
        while (headFilled < 4 && pos < n) head[headFilled++] = chunk[pos++]
        if (headFilled < 4) return
        headFilled = 0
        start(((head[0] << 24) | (head[1] << 16) | (head[2] << 8) | head[3]) >>> 0)
      }
      if (body !== undefined) {
        const take = Math.min(body.length - bodyFilled, n - pos)
        body.set(chunk.subarray(pos, pos + take), bodyFilled)
        bodyFilled += take
        pos += take
        if (bodyFilled < body.length) return
        out.push(body)
        body = undefined
      }
      while (n - pos >= 4) {
        const length = ((chunk[pos] << 24) | (chunk[pos + 1] << 16) | (chunk[pos + 2] << 8) | chunk[pos + 3]) >>> 0
        if (length > MAX) throw new RangeError(`message of ${length} bytes exceeds ${MAX}`)
        if (pos + 4 + length > n) break
        out.push(chunk.subarray(pos + 4, pos + 4 + length))
        pos += 4 + length
      }
      if (pos === n) return
      if (n - pos < 4) {
        head.set(chunk.subarray(pos), 0)
        headFilled = n - pos
        return
      }
      start(((chunk[pos] << 24) | (chunk[pos + 1] << 16) | (chunk[pos + 2] << 8) | chunk[pos + 3]) >>> 0)
      body!.set(chunk.subarray(pos + 4), 0)
      bodyFilled = n - pos - 4
    }
  }
}

const plexus = (): Decoder => Delineation.lengthPrefix({ maxMessageSize: MAX + 4 }).decoder()

/** Decodes every chunk `passes` times over, with a fresh decoder each pass; answers the message count. */
const decodeAll = (make: () => Decoder, chunks: ReadonlyArray<Uint8Array>, passes: number): number => {
  const out: Array<Uint8Array> = []
  let count = 0
  for (let p = 0; p < passes; p++) {
    const decoder = make()
    for (let i = 0; i < chunks.length; i++) {
      if (decoder.push(chunks[i], out) !== undefined) throw new Error("decoding failed")
      count += out.length
      out.length = 0
    }
  }
  return count
}

/** Checks a decoder yields every message, intact and in order. */
const verify = (name: string, make: () => Decoder, chunks: ReadonlyArray<Uint8Array>, count: number) => {
  const decoder = make()
  let seen = 0
  const out: Array<Uint8Array> = []
  for (const chunk of chunks) {
    decoder.push(chunk, out)
    for (const message of out) {
      const index = Buffer.from(message.buffer, message.byteOffset, message.byteLength).readUInt32BE(0)
      if (message.length !== BODY || index !== seen || message[BODY - 1] !== (seen & 0xff)) {
        throw new Error(`${name} decoder returned a wrong message at ${seen}`)
      }
      seen++
    }
    out.length = 0
  }
  if (seen !== count) throw new Error(`${name} decoder returned ${seen} of ${count} messages`)
}

export const suite: Suite = {
  group: "delineation",
  rows: [
    {
      name: "length-prefix-1KiB",
      unit: "msg/s",
      baseline: "hand-written decoder loop",
      goal: ">= 0.9",
      warmup: 2,
      repetitions: 7,
      description: "decode 1 KiB length-prefixed messages from 64 KiB chunks",
      setup: async ({ quick }) => {
        // 128 MiB of wire decoded 8 times per repetition: ~1 M messages, ~0.2 s.
        const count = quick ? 16 * 1024 : 128 * 1024
        const passes = quick ? 4 : 8
        const chunks = makeStream(count)
        verify("plexus", plexus, chunks, count)
        verify("hand-written", handWritten, chunks, count)
        const measure = (make: () => Decoder) => async () => {
          const started = performance.now()
          const decoded = decodeAll(make, chunks, passes)
          const seconds = (performance.now() - started) / 1000
          if (decoded !== count * passes) throw new Error(`decoded ${decoded} of ${count * passes} messages`)
          return decoded / seconds
        }
        return { subject: measure(plexus), baseline: measure(handWritten) }
      }
    }
  ]
}
