import { assert, describe, it } from "@effect/vitest"
import * as Schema from "effect/Schema"
import * as Delineation from "../src/Delineation.ts"
import * as DelineationError from "../src/DelineationError.ts"
import { concat } from "./fixtures/Streams.ts"

// Deterministic PRNG so a failing split reproduces from its seed.
const prng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const frame = (d: Delineation.Delineation, messages: ReadonlyArray<Uint8Array>): Uint8Array => {
  const frames = d.encode(messages)
  if (frames instanceof DelineationError.DelineationError) throw frames
  return concat(frames)
}

// Cuts `bytes` at random points: sizes from 1 to `maxChunk`.
const split = (bytes: Uint8Array, seed: number, maxChunk: number): Array<Uint8Array> => {
  const rand = prng(seed)
  const out: Array<Uint8Array> = []
  for (let at = 0; at < bytes.length;) {
    const size = 1 + Math.floor(rand() * maxChunk)
    out.push(bytes.subarray(at, at + size))
    at += size
  }
  return out
}

const decodeAll = (d: Delineation.Delineation, chunks: ReadonlyArray<Uint8Array>) => {
  const decoder = d.decoder()
  const out: Array<Uint8Array> = []
  for (const chunk of chunks) {
    const error = decoder.push(chunk, out)
    if (error !== undefined) return { out, error, decoder }
  }
  return { out, error: decoder.end(), decoder }
}

const bytes = (...values: Array<number>) => Uint8Array.from(values)
const pattern = (size: number, salt = 0) => Uint8Array.from({ length: size }, (_, i) => (i * 31 + salt) & 0xff)

const reasonOf = (error: DelineationError.DelineationError | undefined) => error?.reason._tag

const configs: ReadonlyArray<[string, Delineation.LengthPrefixOptions]> = [
  ["4-byte big endian (default)", {}],
  ["1-byte field", { lengthFieldLength: 1, maxMessageSize: 300 }],
  ["2-byte little endian", { lengthFieldLength: 2, littleEndian: true }],
  ["8-byte big endian", { lengthFieldLength: 8 }],
  ["8-byte little endian", { lengthFieldLength: 8, littleEndian: true }],
  ["field at an offset, length counting the header", {
    lengthFieldOffset: 3,
    lengthFieldLength: 2,
    lengthIncludesHeader: true
  }],
  ["length adjustment", { lengthFieldLength: 4, lengthAdjustment: 2 }]
]

const Messages = Schema.Array(Schema.Uint8Array)

describe("Delineation", () => {
  describe("length prefix", () => {
    for (const [name, options] of configs) {
      it.prop(`${name}: decodes the same messages wherever the chunk boundaries fall`, {
        messages: Messages,
        seed: Schema.Int
      }, ({ messages, seed }) => {
        const d = Delineation.lengthPrefix(options)
        const small = messages.filter((m) => m.length <= 200 && m.length >= (options.lengthAdjustment ?? 0))
        const wire = frame(d, small)
        for (const chunks of [split(wire, seed, 1), split(wire, seed, 7), split(wire, seed, 300), [wire]]) {
          const { out, error } = decodeAll(d, chunks)
          assert.isUndefined(error)
          assert.deepStrictEqual(out.map((m) => Array.from(m)), small.map((m) => Array.from(m)))
        }
      })
    }

    it("delivers a message lying inside one chunk as a view of that chunk, with no copy", () => {
      const d = Delineation.lengthPrefix()
      const wire = frame(d, [pattern(100), pattern(50)])
      const { out } = decodeAll(d, [wire])
      assert.strictEqual(out.length, 2)
      assert.strictEqual(out[0].buffer, wire.buffer)
      assert.strictEqual(out[1].buffer, wire.buffer)
    })

    it("copies a message split across chunks once, into a buffer of exactly its frame size", () => {
      const d = Delineation.lengthPrefix()
      const wire = frame(d, [pattern(100_000)])
      const { out } = decodeAll(d, split(wire, 7, 9000))
      assert.strictEqual(out.length, 1)
      assert.strictEqual(out[0].buffer.byteLength, 100_004)
      assert.deepStrictEqual(out[0], pattern(100_000))
    })

    it("decodes a million-byte stream fed one byte at a time", () => {
      const d = Delineation.lengthPrefix()
      const messages = Array.from({ length: 100 }, (_, i) => pattern(i * 97, i))
      const wire = frame(d, messages)
      const { out, error } = decodeAll(d, split(wire, 1, 1))
      assert.isUndefined(error)
      assert.strictEqual(out.length, 100)
      assert.deepStrictEqual(out[99], messages[99])
    })

    it("delivers empty messages", () => {
      const d = Delineation.lengthPrefix()
      const { out } = decodeAll(d, [frame(d, [new Uint8Array(0), pattern(3), new Uint8Array(0)])])
      assert.deepStrictEqual(out.map((m) => m.length), [0, 3, 0])
    })

    it("rejects a length of 0xFFFFFFFF from its header alone, holding nothing", () => {
      const d = Delineation.lengthPrefix()
      const decoder = d.decoder()
      const out: Array<Uint8Array> = []
      const error = decoder.push(bytes(0xff, 0xff, 0xff, 0xff, 1, 2, 3), out)
      assert.strictEqual(reasonOf(error), "MessageTooLarge")
      assert.strictEqual((error!.reason as DelineationError.MessageTooLarge).size, 0xffffffff + 4)
      assert.strictEqual(decoder.retained, 0)
      assert.strictEqual(out.length, 0)
    })

    it("rejects 2^63 in an 8-byte field", () => {
      const d = Delineation.lengthPrefix({ lengthFieldLength: 8 })
      const { error } = decodeAll(d, [bytes(0x80, 0, 0, 0, 0, 0, 0, 0)])
      assert.strictEqual(reasonOf(error), "MessageTooLarge")
    })

    it("reads a length with the high bit set as unsigned, never as a negative number", () => {
      const d = Delineation.lengthPrefix({ maxMessageSize: Number.MAX_SAFE_INTEGER })
      const decoder = d.decoder()
      const error = decoder.push(bytes(0x80, 0, 0, 0, 9), [])
      // 2^31 + 4 bytes declared, one body byte arrived: still waiting, holding one byte's worth.
      assert.isUndefined(error)
      assert.strictEqual(decoder.buffered, 5)
      assert.isAtMost(decoder.retained, 256)
    })

    it("rejects a frame shorter than its own header", () => {
      const d = Delineation.lengthPrefix({ lengthIncludesHeader: true })
      const { error } = decodeAll(d, [bytes(0, 0, 0, 2)])
      assert.strictEqual(reasonOf(error), "InvalidLength")
    })

    it("rejects a negative frame length produced by the adjustment", () => {
      const d = Delineation.lengthPrefix({ lengthAdjustment: -10 })
      const { error } = decodeAll(d, [bytes(0, 0, 0, 1)])
      assert.strictEqual(reasonOf(error), "InvalidLength")
    })

    it("accepts a frame of exactly the maximum and rejects one byte more", () => {
      const d = Delineation.lengthPrefix({ maxMessageSize: 104 })
      assert.isUndefined(decodeAll(d, [frame(d, [pattern(100)])]).error)
      const { error } = decodeAll(d, [bytes(0, 0, 0, 101)])
      assert.strictEqual(reasonOf(error), "MessageTooLarge")
      assert.strictEqual(reasonOf(d.encode([pattern(101)]) as DelineationError.DelineationError), "MessageTooLarge")
    })

    it("holds memory in proportion to the bytes received, not to a lying length", () => {
      const d = Delineation.lengthPrefix({ maxMessageSize: 64 * 1024 * 1024 })
      const decoder = d.decoder()
      const header = bytes(0x02, 0xff, 0xff, 0xff)
      assert.isUndefined(decoder.push(header, []))
      for (let i = 0; i < 100; i++) decoder.push(pattern(100), [])
      assert.strictEqual(decoder.buffered, 10_004)
      assert.isAtMost(decoder.retained, 4 * decoder.buffered)
    })

    it("stays failed after a failure", () => {
      const d = Delineation.lengthPrefix({ maxMessageSize: 10 })
      const decoder = d.decoder()
      const first = decoder.push(bytes(0, 0, 0, 100), [])
      const out: Array<Uint8Array> = []
      assert.strictEqual(decoder.push(frame(Delineation.lengthPrefix(), [pattern(1)]), out), first)
      assert.strictEqual(out.length, 0)
      assert.strictEqual(decoder.end(), first)
    })

    it("reports a stream that ends inside a message as truncated", () => {
      const d = Delineation.lengthPrefix()
      const { error } = decodeAll(d, [bytes(0, 0, 0, 5, 1, 2)])
      assert.strictEqual(reasonOf(error), "TruncatedMessage")
      assert.strictEqual((error!.reason as DelineationError.TruncatedMessage).buffered, 6)
    })

    it("refuses to frame a message shorter than the length adjustment", () => {
      const d = Delineation.lengthPrefix({ lengthAdjustment: 2 })
      assert.strictEqual(reasonOf(d.encode([pattern(1)]) as DelineationError.DelineationError), "InvalidLength")
    })

    it("refuses to frame a message whose length does not fit the field", () => {
      const d = Delineation.lengthPrefix({ lengthFieldLength: 1 })
      assert.strictEqual(reasonOf(d.encode([pattern(256)]) as DelineationError.DelineationError), "MessageTooLarge")
      assert.notInstanceOf(d.encode([pattern(255)]), DelineationError.DelineationError)
    })

    it("delivers whole frames and checks sent headers when messages carry their own header", () => {
      const d = Delineation.lengthPrefix({ lengthFieldOffset: 2, lengthFieldLength: 2, stripHeader: false })
      const message = bytes(0xaa, 0xbb, 0, 3, 7, 8, 9)
      const { out } = decodeAll(d, [frame(d, [message])])
      assert.deepStrictEqual(out[0], message)
      const lying = d.encode([bytes(0xaa, 0xbb, 0, 9, 7)])
      assert.strictEqual(reasonOf(lying as DelineationError.DelineationError), "LengthMismatch")
    })

    it("coalesces small messages into one write and passes large ones by reference", () => {
      const d = Delineation.lengthPrefix({ maxMessageSize: 1 << 20 })
      const large = pattern(Delineation.COALESCE_LIMIT + 1)
      const frames = d.encode([pattern(10), pattern(20), large, pattern(30)])
      assert.notInstanceOf(frames, DelineationError.DelineationError)
      const chunks = frames as ReadonlyArray<Uint8Array>
      assert.strictEqual(chunks.length, 4) // [10+20 coalesced], header, large, [30]
      assert.strictEqual(chunks[0].length, 38)
      assert.strictEqual(chunks[2], large)
      const { out } = decodeAll(d, [concat(chunks)])
      assert.deepStrictEqual(out.map((m) => m.length), [10, 20, large.length, 30])
    })
  })

  describe("delimiter", () => {
    for (const delimiter of ["\n", "\r\n", "END"]) {
      it.prop(`${JSON.stringify(delimiter)}: decodes the same messages wherever the chunk boundaries fall`, {
        lines: Schema.Array(Schema.String),
        seed: Schema.Int
      }, ({ lines, seed }) => {
        const d = Delineation.delimiter({ delimiter })
        const encoder = new TextEncoder()
        const messages = lines
          .map((line) => line.split(delimiter).join("").replaceAll(delimiter[0], ""))
          .map((line) => encoder.encode(line))
        const wire = frame(d, messages)
        for (const chunks of [split(wire, seed, 1), split(wire, seed, 2), split(wire, seed, 50), [wire]]) {
          const { out, error } = decodeAll(d, chunks)
          assert.isUndefined(error)
          assert.deepStrictEqual(out.map((m) => Array.from(m)), messages.map((m) => Array.from(m)))
        }
      })
    }

    it("finds a delimiter split across three chunks", () => {
      const d = Delineation.delimiter({ delimiter: "END" })
      const { out } = decodeAll(d, [bytes(1, 2, 69), bytes(78), bytes(68, 3)])
      assert.deepStrictEqual(out.map((m) => Array.from(m)), [[1, 2]])
    })

    it("keeps a partial delimiter that turns out to be data", () => {
      const d = Delineation.delimiter({ delimiter: "\r\n" })
      const { out } = decodeAll(d, [bytes(65, 13), bytes(13, 10)])
      assert.deepStrictEqual(out.map((m) => Array.from(m)), [[65, 13]])
    })

    it("rejects a message that grows past the maximum without a delimiter, holding at most the maximum", () => {
      const d = Delineation.delimiter({ delimiter: "\n", maxMessageSize: 1000 })
      const decoder = d.decoder()
      let error: DelineationError.DelineationError | undefined
      let peak = 0
      for (let i = 0; i < 100 && error === undefined; i++) {
        error = decoder.push(pattern(64).fill(65), [])
        peak = Math.max(peak, decoder.retained)
      }
      assert.strictEqual(reasonOf(error), "MessageTooLarge")
      assert.isAtMost(peak, 1001)
    })

    it("refuses to send a message that contains the delimiter", () => {
      const d = Delineation.delimiter({ delimiter: "\n" })
      const result = d.encode([new TextEncoder().encode("one\ntwo")])
      assert.strictEqual(reasonOf(result as DelineationError.DelineationError), "DelimiterInPayload")
    })
  })

  describe("custom parser", () => {
    // A header of [type, len_hi, len_lo] where len counts the whole message.
    const parse: Delineation.Parser = (b) => (b.length < 3 ? Delineation.NEED_MORE : (b[1] << 8) | b[2])
    const message = (type: number, body: Uint8Array) => {
      const out = new Uint8Array(3 + body.length)
      out[0] = type
      out[1] = out.length >> 8
      out[2] = out.length & 0xff
      out.set(body, 3)
      return out
    }

    it.prop("decodes the same messages wherever the chunk boundaries fall", {
      messages: Messages,
      seed: Schema.Int
    }, ({ messages, seed }) => {
      const d = Delineation.custom({ parse })
      const framed = messages.filter((m) => m.length < 1000).map((m, i) => message(i & 0xff, m))
      const wire = frame(d, framed)
      for (const chunks of [split(wire, seed, 1), split(wire, seed, 5), [wire]]) {
        const { out, error } = decodeAll(d, chunks)
        assert.isUndefined(error)
        assert.deepStrictEqual(out.map((m) => Array.from(m)), framed.map((m) => Array.from(m)))
      }
    })

    it("contains a parser that throws", () => {
      const d = Delineation.custom({
        parse: () => {
          throw new Error("boom")
        }
      })
      const { error } = decodeAll(d, [bytes(1, 2, 3)])
      assert.strictEqual(reasonOf(error), "ParserFailed")
    })

    const answers: ReadonlyArray<[string, unknown, string]> = [
      ["NaN", NaN, "ParserFailed"],
      ["3.5", 3.5, "InvalidLength"],
      ["-1", -1, "ParserFailed"],
      ["-0.5", -0.5, "InvalidLength"],
      ["Infinity", Infinity, "MessageTooLarge"],
      ["a string", "7", "ParserFailed"],
      ["undefined", undefined, "ParserFailed"],
      ["more than the maximum", 2 ** 40, "MessageTooLarge"]
    ]
    for (const [name, answer, reason] of answers) {
      it(`turns a parser answer of ${name} into ${reason}`, () => {
        const d = Delineation.custom({ parse: () => answer as number })
        const { error } = decodeAll(d, [bytes(1, 2, 3)])
        assert.strictEqual(reasonOf(error), reason)
      })
    }

    it("passes a negative failure code through", () => {
      const d = Delineation.custom({ parse: () => -42 })
      const { error } = decodeAll(d, [bytes(1)])
      assert.strictEqual((error!.reason as DelineationError.ParserFailed).code, -42)
    })

    it("stops a parser that asks for more forever at the maximum, calling it once per chunk", () => {
      let calls = 0
      const d = Delineation.custom({
        maxMessageSize: 4096,
        parse: () => {
          calls++
          return Delineation.NEED_MORE
        }
      })
      const decoder = d.decoder()
      let error: DelineationError.DelineationError | undefined
      let pushes = 0
      let peak = 0
      while (error === undefined && pushes < 10_000) {
        error = decoder.push(bytes(pushes & 0xff), [])
        peak = Math.max(peak, decoder.retained)
        pushes++
      }
      assert.strictEqual(reasonOf(error), "MessageTooLarge")
      assert.strictEqual(pushes, 4097)
      assert.strictEqual(calls, 4097)
      assert.isAtMost(peak, 4097)
    })

    it("does not call the parser before minBytes are held", () => {
      const seen: Array<number> = []
      const d = Delineation.custom({
        minBytes: 3,
        parse: (b) => {
          seen.push(b.length)
          return parse(b)
        }
      })
      decodeAll(d, split(message(1, pattern(10)), 3, 1))
      assert.isTrue(seen.every((n) => n >= 3))
    })

    it("refuses to send a message the parser measures differently", () => {
      const d = Delineation.custom({ parse })
      const m = message(1, pattern(4))
      m[2] = 99
      assert.strictEqual(reasonOf(d.encode([m]) as DelineationError.DelineationError), "LengthMismatch")
    })
  })
})
