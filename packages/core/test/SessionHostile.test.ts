/**
 * Hostile input against a session, driven with raw bytes (docs/spec/mux.md,
 * /work/shared/HOSTILE.md). The test plays the peer by hand: it writes frames
 * built here (not with the session's own encoder) on one end of a memory
 * pair and decodes what the session answers with a parser of its own. Every
 * case asserts a typed error, a bound read from the session's counters, and
 * that the rest of the session (or the process) is unaffected.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import type * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import { TestClock } from "effect/testing"
import * as v8 from "node:v8"
import * as vm from "node:vm"
import * as Memory from "../src/Memory.ts"
import * as MuxStream from "../src/MuxStream.ts"
import * as Session from "../src/Session.ts"
import type { SessionError } from "../src/SessionError.ts"
import * as Transport from "../src/Transport.ts"
import { concat, readToEnd } from "./fixtures/Streams.ts"

// ---------------------------------------------------------------------------
// The wire, by hand
// ---------------------------------------------------------------------------

const DATA = 0x0
const WINDOW_UPDATE = 0x1
const PING = 0x2
const GO_AWAY = 0x3
const RESET = 0x4
const OPEN = 0x5
const PRIORITY = 0x6
const SETTINGS = 0x7

const SYN = 0x1
const ACK = 0x2
const FIN = 0x4
const RST = 0x8

const KiB = 1024
const MiB = 1024 * 1024

/** A 12-byte header, big endian, then the payload. */
const frame = (
  version: number,
  type: number,
  flags: number,
  id: number,
  length: number,
  payload: Uint8Array = new Uint8Array(0)
): Uint8Array => {
  const bytes = new Uint8Array(12 + payload.length)
  const view = new DataView(bytes.buffer)
  view.setUint8(0, version)
  view.setUint8(1, type)
  view.setUint16(2, flags)
  view.setUint32(4, id)
  view.setUint32(8, length)
  bytes.set(payload, 12)
  return bytes
}

const u32s = (...values: ReadonlyArray<number>): Uint8Array => {
  const bytes = new Uint8Array(values.length * 4)
  const view = new DataView(bytes.buffer)
  values.forEach((v, i) => view.setUint32(i * 4, v))
  return bytes
}

/** The frames a test sends, per codec: what a (possibly hostile) peer would write. */
const wire = (codec: Session.Codec) => {
  const v = codec === "yamux" ? 0 : 1
  const plexus = codec === "plexus"
  return {
    version: v,
    open: (id: number, o?: { readonly delta?: number; readonly urgency?: number; readonly type?: number }) =>
      plexus
        ? frame(1, OPEN, 0, id, 12, concat([u32s(o?.type ?? 0), new Uint8Array([o?.urgency ?? 3, 1, 0, 0]), u32s(o?.delta ?? 0)]))
        : frame(0, WINDOW_UPDATE, SYN, id, o?.delta ?? 0),
    data: (id: number, payload: Uint8Array, flags = 0) => frame(v, DATA, flags, id, payload.length, payload),
    /** A DATA header alone, declaring `length` bytes. */
    dataHeader: (id: number, length: number) => frame(v, DATA, 0, id, length),
    windowUpdate: (id: number, delta: number, flags = 0) =>
      plexus ? frame(1, WINDOW_UPDATE, flags, id, 4, u32s(delta)) : frame(0, WINDOW_UPDATE, flags, id, delta),
    reset: (id: number, code = Session.Code.CANCEL) =>
      plexus ? frame(1, RESET, 0, id, 4, u32s(code)) : frame(0, WINDOW_UPDATE, RST, id, 0),
    ping: (opaque: number) => plexus ? frame(1, PING, SYN, 0, 4, u32s(opaque)) : frame(0, PING, SYN, 0, opaque),
    goAway: (code: number) => plexus ? frame(1, GO_AWAY, 0, 0, 8, u32s(code, 0)) : frame(0, GO_AWAY, 0, 0, code)
  }
}

/** One frame the session sent. */
interface Frame {
  readonly version: number
  readonly type: number
  readonly flags: number
  readonly id: number
  readonly length: number
  /** plexus: the payload; yamux: DATA payload only. */
  readonly payload: Uint8Array
}

/** An incremental parser of what the session writes (independent of muxFrames.ts). */
class WireParser {
  private pending: Uint8Array = new Uint8Array(0)
  readonly codec: Session.Codec
  constructor(codec: Session.Codec) {
    this.codec = codec
  }
  push(chunk: Uint8Array): Array<Frame> {
    this.pending = concat([this.pending, chunk])
    const out: Array<Frame> = []
    for (;;) {
      if (this.pending.length < 12) return out
      const view = new DataView(this.pending.buffer, this.pending.byteOffset, this.pending.byteLength)
      const type = view.getUint8(1)
      const length = view.getUint32(8)
      const payloadLength = this.codec === "plexus" || type === DATA ? length : 0
      if (this.pending.length < 12 + payloadLength) return out
      out.push({
        version: view.getUint8(0),
        type,
        flags: view.getUint16(2),
        id: view.getUint32(4),
        length,
        payload: this.pending.slice(12, 12 + payloadLength)
      })
      this.pending = this.pending.subarray(12 + payloadLength)
    }
  }
}

const payloadU32 = (f: Frame, at = 0) => new DataView(f.payload.buffer, f.payload.byteOffset).getUint32(at)

const isGoAway = (f: Frame) => f.type === GO_AWAY
/** The GO_AWAY code: plexus carries it in the payload, yamux in Length (0, 1 or 2). */
const goAwayCode = (codec: Session.Codec, f: Frame) => codec === "plexus" ? payloadU32(f) : f.length
/** ENHANCE_YOUR_CALM as each codec puts it on the wire (yamux has only 0, 1, 2). */
const calmOnWire = (codec: Session.Codec) => codec === "plexus" ? Session.Code.ENHANCE_YOUR_CALM : 2

const isReset = (codec: Session.Codec, f: Frame) =>
  codec === "plexus" ? f.type === RESET : (f.type === WINDOW_UPDATE || f.type === DATA) && (f.flags & RST) !== 0
/** The code of a reset (yamux's RST has none). */
const resetCode = (codec: Session.Codec, f: Frame) => codec === "plexus" ? payloadU32(f) : undefined
const isPong = (codec: Session.Codec, f: Frame, opaque: number) =>
  f.type === PING && (f.flags & ACK) !== 0 && (codec === "plexus" ? payloadU32(f) : f.length) === opaque

// ---------------------------------------------------------------------------
// A session with a raw peer
// ---------------------------------------------------------------------------

interface RawPeer {
  readonly codec: Session.Codec
  readonly session: Session.Session
  readonly pair: Memory.BytePair
  readonly w: ReturnType<typeof wire>
  /** Writes frames (each a chunk of its own, as separate writes would arrive). */
  readonly send: (...frames: ReadonlyArray<Uint8Array>) => Effect.Effect<void, Socket.SocketError>
  /** Reads until a frame matches; fails when the session closes the transport first. */
  readonly until: (predicate: (f: Frame) => boolean) => Effect.Effect<Frame, string>
  /** Reads everything up to the end of the transport. */
  readonly drain: Effect.Effect<Array<Frame>>
  /** Every frame read so far. */
  readonly seen: Array<Frame>
  /** A barrier: a ping the session answers after everything sent before it (one flood unit). */
  readonly sync: Effect.Effect<void, string | Socket.SocketError>
  readonly stats: Effect.Effect<Session.Stats>
}

const rawPeer = (
  codec: Session.Codec,
  options?: Partial<Session.Options>,
  pairOptions?: Memory.PairOptions
): Effect.Effect<RawPeer, Socket.SocketError, Scope.Scope> =>
  Effect.gen(function*() {
    const pair = yield* Memory.makeBytePair(pairOptions)
    const session = yield* Session.make(pair.b, { keepAlive: false, ...options, role: "server", codec })
    const reader = yield* pair.a.reader
    const writer = yield* pair.a.writer
    const parser = new WireParser(codec)
    const queue: Array<Frame> = []
    const seen: Array<Frame> = []
    let closed = false
    const pullMore: Effect.Effect<boolean> = Effect.suspend(() => {
      if (closed) return Effect.succeed(false)
      return Effect.matchEffect(reader.pull, {
        onFailure: () => {
          closed = true
          return Effect.succeed(false)
        },
        onSuccess: (chunks) =>
          Effect.sync(() => {
            for (const chunk of chunks) {
              for (const f of parser.push(typeof chunk === "string" ? new TextEncoder().encode(chunk) : chunk)) {
                queue.push(f)
                seen.push(f)
              }
            }
            return true
          })
      })
    })
    const until = (predicate: (f: Frame) => boolean): Effect.Effect<Frame, string> =>
      Effect.suspend(() => {
        while (queue.length > 0) {
          const f = queue.shift()!
          if (predicate(f)) return Effect.succeed(f)
        }
        return Effect.flatMap(pullMore, (more) =>
          more ? until(predicate) : Effect.fail("the session closed the transport before the expected frame"))
      })
    const drain: Effect.Effect<Array<Frame>> = Effect.gen(function*() {
      const out: Array<Frame> = []
      while (true) {
        while (queue.length > 0) out.push(queue.shift()!)
        if (!(yield* pullMore)) return out
      }
    })
    const w = wire(codec)
    let opaque = 0x5000
    const send = (...frames: ReadonlyArray<Uint8Array>) =>
      frames.length === 0 ? Effect.void : writer.writeAll(frames as [Uint8Array, ...Array<Uint8Array>])
    const sync = Effect.suspend(() => {
      const o = opaque++
      return Effect.andThen(send(w.ping(o)), until((f) => isPong(codec, f, o)))
    }).pipe(Effect.asVoid)
    return { codec, session, pair, w, send, until, drain, seen, sync, stats: session.stats }
  })

/** Waits (without time passing) until `check` holds; fails after many scheduler turns. */
const eventually = (check: Effect.Effect<boolean>, what: string, turns = 10_000): Effect.Effect<void, string> =>
  Effect.gen(function*() {
    for (let i = 0; i < turns; i++) {
      if (yield* check) return
      yield* Effect.yieldNow
    }
    return yield* Effect.fail(`never happened: ${what}`)
  })

const sessionFailure = (session: Session.Session): Effect.Effect<SessionError, string> =>
  Effect.flip(session.closed).pipe(
    Effect.mapError(() => "the session ended gracefully")
  )

const assertProtocolViolation = (error: SessionError, detail?: RegExp) => {
  assert.strictEqual(error.reason._tag, "ProtocolViolation", error.message)
  if (error.reason._tag !== "ProtocolViolation") return
  assert.strictEqual(error.reason.code, Session.Code.PROTOCOL_ERROR)
  if (detail !== undefined) assert.match(error.reason.detail, detail)
}

const assertLimitExceeded = (error: SessionError, limit: RegExp) => {
  assert.strictEqual(error.reason._tag, "LimitExceeded", error.message)
  if (error.reason._tag !== "LimitExceeded") return
  assert.match(error.reason.limit, limit)
  assert.isAbove(error.reason.value, error.reason.max)
}

/** The session ended with a protocol violation and told the peer so with GO_AWAY(PROTOCOL_ERROR). */
const expectProtocolViolation = (peer: RawPeer, detail?: RegExp) =>
  Effect.gen(function*() {
    const error = yield* sessionFailure(peer.session)
    assertProtocolViolation(error, detail)
    const goAway = yield* peer.until(isGoAway)
    // PROTOCOL_ERROR is 1 in both codecs.
    assert.strictEqual(goAwayCode(peer.codec, goAway), Session.Code.PROTOCOL_ERROR)
    const stats = yield* peer.stats
    assert.strictEqual(stats.openStreams, 0)
    assert.strictEqual(stats.bufferedBytes, 0)
    assert.isAtMost(stats.partialFrameBytes, 12)
    return error
  })

/** Reads a stream to its end, as one buffer. */
const readAll = (stream: Socket.Socket) => Effect.map(readToEnd(stream), concat)

const text = (s: string) => new TextEncoder().encode(s)
const str = (b: Uint8Array) => new TextDecoder().decode(b)

/** `gc()` when this process can reach it (node --expose-gc, or the flag set at run time). */
const gc: (() => void) | undefined = (() => {
  const global = (globalThis as { gc?: () => void }).gc
  if (typeof global === "function") return global
  try {
    v8.setFlagsFromString("--expose-gc")
    const fn = vm.runInNewContext("gc") as unknown
    return typeof fn === "function" ? (fn as () => void) : undefined
  } catch {
    return undefined
  }
})()

const heapAfterGc = (): number | undefined => {
  if (gc === undefined) return undefined
  gc()
  gc()
  return process.memoryUsage().heapUsed
}

const codecs = ["plexus", "yamux"] as const

// ---------------------------------------------------------------------------
// Lying lengths
// ---------------------------------------------------------------------------

describe("SessionHostile: lying lengths", () => {
  it.effect("plexus: a DATA header declaring 0xFFFFFFFF bytes is a protocol violation before anything is allocated", () =>
    Effect.gen(function*() {
      const peer = yield* rawPeer("plexus")
      yield* peer.send(peer.w.open(1), peer.w.dataHeader(1, 0xffffffff))
      yield* expectProtocolViolation(peer, /exceeds the maximum/)
      const stats = yield* peer.stats
      assert.strictEqual(stats.bytesIn, 0, "no DATA was taken in")
    }))

  it.effect("yamux: a DATA header declaring 0xFFFFFFFF bytes exceeds the largest window and is a protocol violation", () =>
    Effect.gen(function*() {
      const peer = yield* rawPeer("yamux")
      yield* peer.send(peer.w.open(1), peer.w.dataHeader(1, 0xffffffff))
      yield* expectProtocolViolation(peer, /exceeds the maximum/)
    }))

  it.effect("yamux: a DATA frame beyond the stream window resets the stream and its bytes are never buffered", () =>
    Effect.gen(function*() {
      const peer = yield* rawPeer("yamux")
      // 8 MiB: within the largest frame yamux accepts (the window maximum), far beyond this stream's window.
      yield* peer.send(peer.w.open(1), peer.w.dataHeader(1, 8 * MiB))
      const rst = yield* peer.until((f) => isReset("yamux", f) && f.id === 1)
      assert.strictEqual(rst.id, 1)
      // The payload follows and is skipped as it arrives: nothing is held.
      let max = 0
      for (let i = 0; i < 8; i++) {
        yield* peer.send(new Uint8Array(MiB))
        max = Math.max(max, (yield* peer.stats).bufferedBytes)
      }
      yield* peer.sync
      const stats = yield* peer.stats
      assert.strictEqual(max, 0)
      assert.strictEqual(stats.bufferedBytes, 0)
      assert.strictEqual(stats.openStreams, 0)
      assert.strictEqual(stats.resetsSent, 1)
      // The session goes on: a new stream carries data.
      yield* peer.send(peer.w.open(3), peer.w.data(3, text("still here"), FIN))
      const stream = yield* peer.session.accept
      assert.strictEqual(stream.id, 3)
      assert.strictEqual(str(yield* readAll(stream)), "still here")
    }))

  it.effect("plexus: a PING declaring a 1 GiB payload is a protocol violation at once, holding no partial frame", () =>
    Effect.gen(function*() {
      const peer = yield* rawPeer("plexus")
      yield* peer.send(frame(1, PING, SYN, 0, 1024 * MiB), new Uint8Array(4096))
      yield* expectProtocolViolation(peer, /control frame type 2/)
      assert.strictEqual((yield* peer.stats).partialFrameBytes, 0)
    }))

  it.effect("plexus: a frame of an unknown type longer than the largest frame is a protocol violation, not a long skip", () =>
    Effect.gen(function*() {
      const peer = yield* rawPeer("plexus")
      yield* peer.send(frame(1, 0x20, 0, 0, 0xffffffff))
      yield* expectProtocolViolation(peer, /exceeds the maximum/)
    }))

  it.effect("a header cut into pieces is held as at most 12 bytes until it completes", () =>
    Effect.gen(function*() {
      const peer = yield* rawPeer("plexus")
      yield* peer.sync
      const ping = peer.w.ping(77)
      let max = 0
      for (let i = 0; i < ping.length; i++) {
        yield* peer.send(ping.subarray(i, i + 1))
        yield* eventually(
          Effect.map(peer.pair.aToB.stats, (s) => s.buffered === 0),
          "the byte was delivered"
        )
        yield* Effect.yieldNow
        max = Math.max(max, (yield* peer.stats).partialFrameBytes)
      }
      yield* peer.until((f) => isPong("plexus", f, 77))
      assert.isAtMost(max, 12)
      assert.strictEqual((yield* peer.stats).partialFrameBytes, 0)
    }))
})

// ---------------------------------------------------------------------------
// Versions and types
// ---------------------------------------------------------------------------

for (const codec of codecs) {
  describe(`SessionHostile: versions and types (${codec})`, () => {
    it.effect("a frame with a version byte the codec does not speak is a protocol violation", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec)
        const other = codec === "plexus" ? 0 : 1
        yield* peer.send(frame(other, PING, SYN, 0, 4, u32s(1)))
        yield* expectProtocolViolation(peer, /unknown version/)
      }))

    it.effect("a frame with version 0xFF is a protocol violation", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec)
        yield* peer.send(frame(0xff, DATA, 0, 1, 0))
        yield* expectProtocolViolation(peer, /unknown version 255/)
      }))
  })
}

describe("SessionHostile: frame types", () => {
  it.effect("yamux: an unknown frame type is a protocol violation (its length means nothing)", () =>
    Effect.gen(function*() {
      const peer = yield* rawPeer("yamux")
      yield* peer.send(frame(0, RESET, 0, 1, 4))
      yield* expectProtocolViolation(peer, /unknown frame type 4/)
    }))

  it.effect("plexus: an unknown frame type with a small payload is skipped and the session keeps working", () =>
    Effect.gen(function*() {
      const peer = yield* rawPeer("plexus")
      yield* peer.send(
        frame(1, 0x20, 0, 0, 5, new Uint8Array([1, 2, 3, 4, 5])),
        frame(1, 0xff, 0xffff, 7, 0),
        peer.w.open(1),
        frame(1, 0x21, 0, 1, 3, new Uint8Array([9, 9, 9])),
        peer.w.data(1, text("after the unknown frames"), FIN)
      )
      const stream = yield* peer.session.accept
      assert.strictEqual(str(yield* readAll(stream)), "after the unknown frames")
      yield* peer.sync
      const stats = yield* peer.stats
      assert.strictEqual(stats.partialFrameBytes, 0)
      assert.strictEqual(stats.bufferedBytes, 0)
    }))
})

// ---------------------------------------------------------------------------
// Stream id state machine
// ---------------------------------------------------------------------------

for (const codec of codecs) {
  describe(`SessionHostile: stream ids (${codec})`, () => {
    it.effect("DATA for a stream id never opened is a protocol violation", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec)
        yield* peer.send(peer.w.data(9, text("who?")))
        yield* expectProtocolViolation(peer, /idle stream 9/)
      }))

    it.effect("a WINDOW_UPDATE for a stream id above the last one opened is a protocol violation", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec)
        yield* peer.send(peer.w.open(1), peer.w.windowUpdate(3, 1000))
        yield* expectProtocolViolation(peer, /idle stream 3/)
      }))

    it.effect("a frame for a stream of the session's own parity it never opened is a protocol violation", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec)
        yield* peer.send(peer.w.windowUpdate(2, 1000))
        yield* expectProtocolViolation(peer, /idle stream 2/)
      }))

    it.effect("opening the same stream id twice is a protocol violation", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec)
        yield* peer.send(peer.w.open(1), peer.w.open(1))
        yield* expectProtocolViolation(peer, /stream 1 reused/)
      }))

    it.effect("opening a lower stream id after a higher one is a protocol violation", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec)
        yield* peer.send(peer.w.open(5), peer.w.open(3))
        yield* expectProtocolViolation(peer, /stream 3 reused or out of order/)
      }))

    it.effect("a client opening an even stream id toward a server is a protocol violation", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec)
        yield* peer.send(peer.w.open(2))
        yield* expectProtocolViolation(peer, /wrong parity/)
      }))

    it.effect("frames for closed streams are ignored and counted; a flood of them ends the session with ENHANCE_YOUR_CALM", () =>
      Effect.gen(function*() {
        const floodLimit = 50
        const peer = yield* rawPeer(codec, { floodLimit })
        // Stream 1 opens, carries a little, and is reset by the peer: it is closed from now on.
        yield* peer.send(peer.w.open(1), peer.w.data(1, text("x")), peer.w.reset(1))
        // Late frames (they may have been in flight): ignored, and counted.
        const late = [peer.w.data(1, new Uint8Array(1000)), peer.w.windowUpdate(1, 10), peer.w.data(1, new Uint8Array(0))]
        for (let i = 0; i < 10; i++) yield* peer.send(...late)
        yield* peer.sync
        let stats = yield* peer.stats
        assert.strictEqual(stats.ignoredFrames, 30)
        assert.strictEqual(stats.bufferedBytes, 0)
        assert.strictEqual(stats.openStreams, 0)
        // Still working: another stream goes through.
        yield* peer.send(peer.w.open(3), peer.w.data(3, text("ok"), FIN))
        const stream = yield* peer.session.accept
        assert.strictEqual(str(yield* readAll(stream)), "ok")
        // Now a flood: 1 reset + 30 ignored + 1 ping so far, the limit is 50 per second.
        for (let i = 0; i < 10; i++) yield* peer.send(...late)
        const error = yield* sessionFailure(peer.session)
        assertLimitExceeded(error, /frames for closed streams/)
        const goAway = yield* peer.until(isGoAway)
        assert.strictEqual(goAwayCode(codec, goAway), calmOnWire(codec))
        stats = yield* peer.stats
        assert.isAtMost(stats.ignoredFrames, floodLimit)
        assert.strictEqual(stats.openStreams, 0)
        assert.strictEqual(stats.bufferedBytes, 0)
      }))
  })
}

// ---------------------------------------------------------------------------
// Flow control
// ---------------------------------------------------------------------------

for (const codec of codecs) {
  describe(`SessionHostile: flow control (${codec})`, () => {
    it.effect("a WINDOW_UPDATE that takes the send window above 2^32-1 resets that stream with FLOW_CONTROL_ERROR", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec)
        yield* peer.send(peer.w.open(1), peer.w.open(3))
        const victim = yield* peer.session.accept
        const other = yield* peer.session.accept
        assert.strictEqual(victim.id, 1)
        // 256 KiB initial window + 0xFFFFFFFF.
        yield* peer.send(peer.w.windowUpdate(1, 0xffffffff))
        const rst = yield* peer.until((f) => isReset(codec, f) && f.id === 1)
        if (codec === "plexus") assert.strictEqual(resetCode(codec, rst), Session.Code.FLOW_CONTROL_ERROR)
        const error = MuxStream.streamError(yield* Effect.flip(readAll(victim)))
        assert.strictEqual(error?.reason._tag, "StreamReset")
        assert.strictEqual((error?.reason as { code?: number }).code, Session.Code.FLOW_CONTROL_ERROR)
        // The other stream and the session are unaffected.
        yield* peer.send(peer.w.data(3, text("fine"), FIN))
        assert.strictEqual(str(yield* readAll(other)), "fine")
        const stats = yield* peer.stats
        assert.strictEqual(stats.resetsSent, 1)
        assert.strictEqual(stats.openStreams, 1)
      }))

    it.effect("DATA beyond the 256 KiB window resets the stream, its data is discarded, and other streams continue", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec)
        yield* peer.send(peer.w.open(1), peer.w.open(3))
        const victim = yield* peer.session.accept
        const other = yield* peer.session.accept
        // Nobody reads `victim`: four 64 KiB frames fill its window exactly.
        for (let i = 0; i < 4; i++) yield* peer.send(peer.w.data(1, new Uint8Array(64 * KiB)))
        yield* peer.sync
        assert.strictEqual((yield* peer.stats).bufferedBytes, 256 * KiB)
        // One byte more than the window.
        yield* peer.send(peer.w.data(1, new Uint8Array(1)))
        const rst = yield* peer.until((f) => isReset(codec, f) && f.id === 1)
        if (codec === "plexus") assert.strictEqual(resetCode(codec, rst), Session.Code.FLOW_CONTROL_ERROR)
        let stats = yield* peer.stats
        assert.strictEqual(stats.bufferedBytes, 0, "the stream's data was discarded")
        const error = MuxStream.streamError(yield* Effect.flip(readAll(victim)))
        assert.strictEqual((error?.reason as { code?: number }).code, Session.Code.FLOW_CONTROL_ERROR)
        // Frames still in flight for the reset stream are ignored, not buffered.
        yield* peer.send(peer.w.data(1, new Uint8Array(64 * KiB)))
        yield* peer.send(peer.w.data(3, text("the other stream"), FIN))
        assert.strictEqual(str(yield* readAll(other)), "the other stream")
        stats = yield* peer.stats
        assert.strictEqual(stats.bufferedBytes, 0)
        assert.strictEqual(stats.ignoredFrames, 1)
      }))
  })
}

// ---------------------------------------------------------------------------
// Floods
// ---------------------------------------------------------------------------

for (const codec of codecs) {
  describe(`SessionHostile: floods (${codec})`, () => {
    it.effect("a reset storm leaves no stream behind, and beyond the flood limit ends with ENHANCE_YOUR_CALM", () =>
      Effect.gen(function*() {
        const floodLimit = 1000
        const peer = yield* rawPeer(codec, { floodLimit, acceptBacklog: 16 })
        let id = 1
        const storm = (n: number) => {
          const frames: Array<Uint8Array> = []
          for (let i = 0; i < n; i++, id += 2) frames.push(peer.w.open(id), peer.w.reset(id))
          return frames
        }
        // Below the limit: every stream is gone again, and none took a place in the backlog.
        for (let round = 0; round < 9; round++) {
          yield* peer.send(...storm(100))
          yield* peer.sync
          const stats = yield* peer.stats
          assert.strictEqual(stats.openStreams, 0)
          assert.strictEqual(stats.backlog, 0)
          assert.strictEqual(stats.refused, 0)
        }
        assert.strictEqual((yield* peer.stats).resetsReceived, 900)
        // A legitimate stream is still accepted.
        yield* peer.send(peer.w.open(id), peer.w.data(id, text("legit"), FIN))
        id += 2
        const stream = yield* peer.session.accept
        assert.strictEqual(str(yield* readAll(stream)), "legit")
        // Beyond it: ENHANCE_YOUR_CALM.
        yield* peer.send(...storm(200))
        const error = yield* sessionFailure(peer.session)
        assertLimitExceeded(error, /resets per 1000 ms/)
        const goAway = yield* peer.until(isGoAway)
        assert.strictEqual(goAwayCode(codec, goAway), calmOnWire(codec))
        const stats = yield* peer.stats
        assert.strictEqual(stats.openStreams, 0)
        assert.strictEqual(stats.backlog, 0)
      }))

    it.effect("frames that carry nothing count toward the flood limit and end with ENHANCE_YOUR_CALM", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec, { floodLimit: 50 })
        yield* peer.send(peer.w.open(1))
        yield* peer.sync
        // Zero-delta window updates, empty DATA without flags, and answers to pings never sent.
        const nothing: Array<Uint8Array> = []
        for (let i = 0; i < 20; i++) {
          nothing.push(
            peer.w.windowUpdate(1, 0),
            peer.w.data(1, new Uint8Array(0)),
            codec === "plexus" ? frame(1, PING, ACK, 0, 4, u32s(0x9000 + i)) : frame(0, PING, ACK, 0, 0x9000 + i)
          )
        }
        yield* peer.send(...nothing)
        const error = yield* sessionFailure(peer.session)
        assertLimitExceeded(error, /per 1000 ms/)
        const goAway = yield* peer.until(isGoAway)
        assert.strictEqual(goAwayCode(codec, goAway), calmOnWire(codec))
      }))

    it.effect("a stream opened by a peer that already sent GO_AWAY is refused", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec)
        yield* peer.send(peer.w.goAway(Session.Code.NO_ERROR), peer.w.open(1))
        const refusal = yield* peer.until((f) => isReset(codec, f) && f.id === 1)
        if (codec === "plexus") assert.strictEqual(resetCode(codec, refusal), Session.Code.REFUSED_STREAM)
        assert.strictEqual((yield* peer.stats).openStreams, 0)
      }))

    it.effect("a stream reset before it was accepted frees its place in the backlog", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec, { acceptBacklog: 2 })
        yield* peer.send(peer.w.open(1), peer.w.open(3), peer.w.reset(1), peer.w.open(5))
        yield* peer.sync
        const stats = yield* peer.stats
        assert.strictEqual(stats.refused, 0, "stream 5 was refused although the backlog held one live stream")
        assert.strictEqual(stats.backlog, 2)
        assert.strictEqual((yield* peer.session.accept).id, 3)
        assert.strictEqual((yield* peer.session.accept).id, 5)
        assert.strictEqual((yield* peer.stats).backlog, 0)
      }))

    it.effect("pings are answered up to the flood limit, then the session ends with ENHANCE_YOUR_CALM", () =>
      Effect.gen(function*() {
        const floodLimit = 50
        const peer = yield* rawPeer(codec, { floodLimit })
        const pings: Array<Uint8Array> = []
        for (let i = 1; i <= 200; i++) pings.push(peer.w.ping(i))
        yield* peer.send(...pings)
        const error = yield* sessionFailure(peer.session)
        assertLimitExceeded(error, /pings per 1000 ms/)
        const frames = yield* peer.drain
        const pongs = frames.filter((f) => f.type === PING && (f.flags & ACK) !== 0)
        assert.strictEqual(pongs.length, floodLimit)
        const goAway = frames.find(isGoAway)
        assert.isDefined(goAway)
        assert.strictEqual(goAwayCode(codec, goAway!), calmOnWire(codec))
        assert.strictEqual((yield* peer.stats).pingsAnswered, floodLimit)
        // Nothing is answered after the session failed: GO_AWAY is the last frame.
        assert.strictEqual(frames[frames.length - 1], goAway)
      }))

    it.effect("ping answers that pile up behind a peer that never reads end the session at the control queue cap", () =>
      Effect.gen(function*() {
        const maxControlQueue = 100
        const peer = yield* rawPeer(
          codec,
          { maxControlQueue, floodLimit: 1_000_000 },
          { bToA: { highWaterMark: 1024 } }
        )
        // The test never reads: the session's writes block once 1 KiB is buffered.
        let opaque = 1
        let maxQueued = 0
        let failed: SessionError | undefined
        const closed = yield* Effect.forkChild(sessionFailure(peer.session))
        for (let round = 0; round < 100 && failed === undefined; round++) {
          const batch: Array<Uint8Array> = []
          for (let i = 0; i < 20; i++) batch.push(peer.w.ping(opaque++))
          yield* peer.send(...batch)
          yield* eventually(Effect.map(peer.pair.aToB.stats, (s) => s.buffered === 0), "the pings were read")
          for (let i = 0; i < 10; i++) yield* Effect.yieldNow
          maxQueued = Math.max(maxQueued, (yield* peer.stats).controlQueued)
          const done = closed.pollUnsafe()
          if (done !== undefined && done._tag === "Success") failed = done.value
        }
        assert.isDefined(failed, "the session never hit its control queue cap")
        assertLimitExceeded(failed!, /outbound control queue/)
        assert.isAtMost(maxQueued, maxControlQueue)
        const bToA = yield* peer.pair.bToA.stats
        assert.isAtMost(bToA.buffered, 1024 + 256 * KiB, "the transport buffer stayed bounded")
        // Once the peer reads, it learns why: GO_AWAY(ENHANCE_YOUR_CALM).
        const goAway = yield* peer.until(isGoAway)
        assert.strictEqual(goAwayCode(codec, goAway), calmOnWire(codec))
      }))

    it.effect("refusals that pile up behind a peer that never reads end the session at the control queue cap", () =>
      Effect.gen(function*() {
        const maxControlQueue = 100
        const peer = yield* rawPeer(
          codec,
          { maxControlQueue, floodLimit: 1_000_000, acceptBacklog: 1 },
          { bToA: { highWaterMark: 1024 } }
        )
        let id = 1
        let maxQueued = 0
        let failed: SessionError | undefined
        const closed = yield* Effect.forkChild(sessionFailure(peer.session))
        for (let round = 0; round < 200 && failed === undefined; round++) {
          const batch: Array<Uint8Array> = []
          for (let i = 0; i < 20; i++, id += 2) batch.push(peer.w.open(id))
          yield* peer.send(...batch)
          yield* eventually(Effect.map(peer.pair.aToB.stats, (s) => s.buffered === 0), "the opens were read")
          for (let i = 0; i < 10; i++) yield* Effect.yieldNow
          maxQueued = Math.max(maxQueued, (yield* peer.stats).controlQueued)
          const done = closed.pollUnsafe()
          if (done !== undefined && done._tag === "Success") failed = done.value
        }
        assert.isDefined(failed, "refusals piled up without bound")
        assertLimitExceeded(failed!, /outbound control queue/)
        assert.isAtMost(maxQueued, maxControlQueue)
      }))

    it.effect("opens the application never accepts wait in a bounded backlog; the rest are refused with REFUSED_STREAM", () =>
      Effect.gen(function*() {
        const acceptBacklog = 16
        const floodLimit = 1000
        const peer = yield* rawPeer(codec, { acceptBacklog, floodLimit })
        let id = 1
        const opens = (n: number) => {
          const frames: Array<Uint8Array> = []
          for (let i = 0; i < n; i++, id += 2) frames.push(peer.w.open(id))
          return frames
        }
        yield* peer.send(...opens(500))
        yield* peer.sync
        let stats = yield* peer.stats
        assert.strictEqual(stats.backlog, acceptBacklog)
        assert.strictEqual(stats.openStreams, acceptBacklog)
        assert.strictEqual(stats.refused, 500 - acceptBacklog)
        const refusals = peer.seen.filter((f) => isReset(codec, f))
        assert.strictEqual(refusals.length, 500 - acceptBacklog)
        assert.strictEqual(refusals[0].id, 2 * acceptBacklog + 1)
        if (codec === "plexus") {
          assert.isTrue(refusals.every((f) => resetCode(codec, f) === Session.Code.REFUSED_STREAM))
        }
        // The application accepts the first one: it is the first that arrived, and works.
        const first = yield* peer.session.accept
        assert.strictEqual(first.id, 1)
        yield* peer.send(peer.w.data(1, text("first"), FIN))
        assert.strictEqual(str(yield* readAll(first)), "first")
        // Thousands more: still bounded, then ENHANCE_YOUR_CALM.
        let maxBacklog = 0
        let maxOpen = 0
        const closed = yield* Effect.forkChild(sessionFailure(peer.session))
        for (let round = 0; round < 10 && closed.pollUnsafe() === undefined; round++) {
          yield* peer.send(...opens(200))
          for (let i = 0; i < 10; i++) yield* Effect.yieldNow
          stats = yield* peer.stats
          maxBacklog = Math.max(maxBacklog, stats.backlog)
          maxOpen = Math.max(maxOpen, stats.openStreams)
        }
        const error = yield* Fiber.join(closed)
        assertLimitExceeded(error, /refused streams per 1000 ms/)
        assert.isAtMost(maxBacklog, acceptBacklog)
        // The backlog, plus the one stream the application accepted.
        assert.isAtMost(maxOpen, acceptBacklog + 1)
        const goAway = yield* peer.until(isGoAway)
        assert.strictEqual(goAwayCode(codec, goAway), calmOnWire(codec))
      }))
  })
}

// ---------------------------------------------------------------------------
// Slow readers
// ---------------------------------------------------------------------------

for (const codec of codecs) {
  describe(`SessionHostile: slow readers (${codec})`, () => {
    it.effect("a peer that grants window but never reads holds the session to its send buffer, and keepalive ends it", () =>
      Effect.gen(function*() {
        const sendBufferSize = 256 * KiB
        const chunk = 64 * KiB
        const highWaterMark = 64 * KiB
        const peer = yield* rawPeer(
          codec,
          { keepAlive: { interval: "15 seconds", timeout: "10 seconds" }, sendBufferSize },
          { bToA: { highWaterMark } }
        )
        yield* peer.pair.bToA.stall
        // A huge window: only the transport can hold the session back.
        yield* peer.send(peer.w.open(1, { delta: 0xffffffff - 256 * KiB }))
        const stream = yield* peer.session.accept
        const writer = yield* Effect.forkChild(Effect.scoped(Effect.gen(function*() {
          const w = yield* stream.writer
          for (let i = 0; i < 1024; i++) yield* w.write(new Uint8Array(chunk))
        })))
        yield* eventually(
          Effect.map(peer.stats, (s) => s.queuedSendBytes >= sendBufferSize),
          "the stream's send buffer filled"
        )
        // Let everything that can run, run: nothing grows past the bounds.
        for (let i = 0; i < 100; i++) yield* Effect.yieldNow
        const stats = yield* peer.stats
        const link = yield* peer.pair.bToA.stats
        assert.isUndefined(writer.pollUnsafe(), "the application's writer should be suspended")
        assert.isAtMost(stats.queuedSendBytes, sendBufferSize + chunk)
        // The transport holds at most its mark plus one write (a batch of at most 256 KiB + headers).
        assert.isAtMost(link.buffered, highWaterMark + 256 * KiB + 64 * KiB)
        assert.isAtLeast(link.waitingWriters, 1, "the session's socket write is blocked")
        assert.isAtMost(stats.bytesOut, highWaterMark + 2 * (256 * KiB))
        // Keepalive: a ping at 15 s that cannot even be written, no answer by 25 s.
        const closed = yield* Effect.forkChild(sessionFailure(peer.session))
        yield* TestClock.adjust("24999 millis")
        assert.isUndefined(closed.pollUnsafe(), "the session ended before interval + timeout")
        yield* TestClock.adjust("1 millis")
        const error = yield* Fiber.join(closed)
        assert.strictEqual(error.reason._tag, "KeepaliveTimeout")
        // The application's writer is woken with a typed error.
        const writeError = MuxStream.streamError(yield* Effect.flip(Fiber.join(writer)))
        assert.strictEqual(writeError?.reason._tag, "SessionEnded")
        assert.strictEqual((yield* peer.stats).queuedSendBytes, 0)
        // Let the session's teardown (which waits a moment for the blocked writer) finish.
        yield* TestClock.adjust("2 seconds")
      }))
  })
}

// ---------------------------------------------------------------------------
// Segmentation
// ---------------------------------------------------------------------------

for (const codec of codecs) {
  describe(`SessionHostile: segmentation (${codec})`, () => {
    it.live("delivery one byte at a time moves data intact on several streams, holding at most a header and a control payload", () =>
      Effect.gen(function*() {
        const pair = yield* Memory.makeBytePair({ faults: { split: { min: 1, max: 1 } } })
        const client = yield* Session.make(pair.a, { role: "client", codec, keepAlive: false })
        const server = yield* Session.make(pair.b, { role: "server", codec, keepAlive: false })
        const payload = (i: number) => {
          const b = new Uint8Array(12 * KiB + i * 333)
          for (let j = 0; j < b.length; j++) b[j] = (j * 7 + i * 13) & 0xff
          return b
        }
        yield* Effect.forkScoped(server.run((stream) =>
          Effect.gen(function*() {
            const data = yield* readAll(stream)
            yield* Effect.scoped(Effect.flatMap(stream.writer, (w) => w.writeAll([text("echo:"), data])))
          })
        ))
        let maxPartial = 0
        const sample = Effect.gen(function*() {
          maxPartial = Math.max(maxPartial, (yield* client.stats).partialFrameBytes, (yield* server.stats).partialFrameBytes)
        })
        const sampler = yield* Effect.forkScoped(Effect.forever(Effect.andThen(sample, Effect.yieldNow)))
        const results = yield* Effect.forEach([0, 1, 2, 3], (i) =>
          Effect.scoped(Effect.gen(function*() {
            const stream = yield* client.open()
            yield* Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(payload(i))))
            return yield* readAll(stream)
          })), { concurrency: "unbounded" })
        yield* Fiber.interrupt(sampler)
        results.forEach((r, i) => {
          assert.strictEqual(str(r.subarray(0, 5)), "echo:")
          assert.deepStrictEqual(r.subarray(5), payload(i))
        })
        // A header (12 bytes) or a control payload (at most GO_AWAY's 8 + 256) is all a decoder holds.
        assert.isAtMost(maxPartial, 12 + 8 + 256)
        assert.strictEqual((yield* client.stats).bufferedBytes, 0)
        assert.strictEqual((yield* server.stats).bufferedBytes, 0)
      }))
  })
}

// ---------------------------------------------------------------------------
// Malformed plexus control frames
// ---------------------------------------------------------------------------

describe("SessionHostile: malformed plexus control frames", () => {
  const cases: ReadonlyArray<readonly [string, () => ReadonlyArray<Uint8Array>, RegExp]> = [
    ["an OPEN with urgency 9", () => [wire("plexus").open(1, { urgency: 9 })], /urgency 9/],
    [
      "a PRIORITY with urgency 8",
      () => [wire("plexus").open(1), frame(1, PRIORITY, 0, 1, 2, new Uint8Array([8, 0]))],
      /urgency 8/
    ],
    ["a SETTINGS whose length is not a multiple of 6", () => [frame(1, SETTINGS, 0, 0, 7, new Uint8Array(7))], /7-byte/],
    [
      "a GO_AWAY whose reason is longer than 256 bytes",
      () => [frame(1, GO_AWAY, 0, 0, 8 + 257, new Uint8Array(8 + 257))],
      /265-byte/
    ],
    ["an OPEN with a short payload", () => [frame(1, OPEN, 0, 1, 8, new Uint8Array(8))], /type 5 with a 8-byte/],
    ["a RESET on stream 0", () => [frame(1, RESET, 0, 0, 4, u32s(0))], /type 4 on stream 0/],
    ["a PING on a stream", () => [frame(1, PING, SYN, 1, 4, u32s(0))], /type 2 on stream 1/],
    ["a WINDOW_UPDATE on stream 0", () => [frame(1, WINDOW_UPDATE, 0, 0, 4, u32s(1))], /type 1 on stream 0/],
    ["a DATA frame with SYN", () => [wire("plexus").open(1), frame(1, DATA, SYN, 1, 0)], /SYN or RST/],
    [
      "a SETTINGS with MAX_FRAME_SIZE below 16 KiB",
      () => [frame(1, SETTINGS, 0, 0, 6, concat([new Uint8Array([0, 2]), u32s(100)]))],
      /MAX_FRAME_SIZE 100/
    ]
  ]
  for (const [name, frames, detail] of cases) {
    it.effect(`${name} is a protocol violation`, () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer("plexus")
        yield* peer.send(...frames())
        yield* expectProtocolViolation(peer, detail)
      }))
  }
})

// ---------------------------------------------------------------------------
// After the end
// ---------------------------------------------------------------------------

for (const codec of codecs) {
  describe(`SessionHostile: after a failure (${codec})`, () => {
    it.effect("nothing the peer sends after a protocol violation is answered or buffered", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec)
        yield* peer.send(peer.w.open(1), peer.w.data(1, new Uint8Array(100)))
        yield* peer.sync
        // One chunk: the violation, then work that would ask for answers.
        const after: Array<Uint8Array> = [peer.w.windowUpdate(99, 1)]
        for (let i = 0; i < 50; i++) after.push(peer.w.ping(1000 + i), peer.w.open(101 + 2 * i))
        after.push(peer.w.data(1, new Uint8Array(1000)))
        yield* peer.send(concat(after))
        const error = yield* sessionFailure(peer.session)
        assertProtocolViolation(error, /idle stream 99/)
        const frames = yield* peer.drain
        const goAway = frames.findIndex(isGoAway)
        assert.isAtLeast(goAway, 0)
        assert.strictEqual(goAway, frames.length - 1, "frames were sent after GO_AWAY")
        // Let the session's reader finish the chunk it failed in.
        for (let i = 0; i < 20; i++) yield* Effect.yieldNow
        const stats = yield* peer.stats
        assert.strictEqual(stats.pingsAnswered, 1, "pings after the failure were answered")
        assert.strictEqual(stats.refused, 0, "opens after the failure were answered")
        assert.strictEqual(stats.bufferedBytes, 0)
        assert.strictEqual(stats.openStreams, 0)
      }))

    it.effect("a stream reset by the application while a DATA frame is arriving drops the rest of that frame", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec)
        yield* peer.send(peer.w.open(1))
        const stream = yield* peer.session.accept
        const payload = new Uint8Array(32 * KiB)
        const full = peer.w.data(1, payload)
        yield* peer.send(full.subarray(0, 12 + 1000))
        // (No ping barrier here: it would be read as payload.)
        yield* eventually(Effect.map(peer.stats, (s) => s.bufferedBytes === 1000), "the first 1000 bytes arrived")
        yield* stream.reset()
        assert.strictEqual((yield* peer.stats).bufferedBytes, 0)
        yield* peer.send(full.subarray(12 + 1000))
        yield* peer.sync
        const stats = yield* peer.stats
        assert.strictEqual(stats.bufferedBytes, 0, "the rest of the frame was buffered for a dead stream")
        assert.strictEqual(stats.openStreams, 0)
      }))

    it.effect("a stream whose reader closed while a DATA frame is arriving credits the rest of that frame back", () =>
      Effect.gen(function*() {
        const peer = yield* rawPeer(codec)
        yield* peer.send(peer.w.open(1))
        const stream = yield* peer.session.accept
        const size = 60 * KiB
        const full = peer.w.data(1, new Uint8Array(size))
        yield* peer.send(full.subarray(0, 12 + 1000))
        yield* eventually(Effect.map(peer.stats, (s) => s.bufferedBytes === 1000), "the first 1000 bytes arrived")
        // Close both ways: the peer may still send, what it sends is dropped and credited back.
        yield* Effect.scoped(Effect.flatMap(stream.writer, (w) => w.write(new Socket.CloseEvent(Transport.CLOSE_NORMAL))))
        yield* peer.send(full.subarray(12 + 1000))
        yield* peer.sync
        assert.strictEqual((yield* peer.stats).bufferedBytes, 0, "the rest of the frame was buffered for a closed reader")
        // One more frame: credited back at once, with what was still owed.
        yield* peer.send(peer.w.data(1, new Uint8Array(size)))
        yield* peer.sync
        assert.strictEqual((yield* peer.stats).bufferedBytes, 0)
        // The window given back covers both frames to the byte, so the peer is never stuck.
        const credited = peer.seen
          .filter((f) => f.type === WINDOW_UPDATE && f.id === 1 && (f.flags & (SYN | ACK | FIN | RST)) === 0)
          .reduce((n, f) => n + (codec === "plexus" ? payloadU32(f) : f.length), 0)
        assert.strictEqual(credited, 2 * size)
      }))
  })
}

// ---------------------------------------------------------------------------
// Containment
// ---------------------------------------------------------------------------

describe("SessionHostile: containment", () => {
  it.effect("a session that fails on hostile input leaves another session in the same process working", () =>
    Effect.gen(function*() {
      const hostile = yield* rawPeer("plexus")
      const honest = yield* rawPeer("plexus")
      yield* honest.send(honest.w.open(1), honest.w.data(1, text("before")))
      const stream = yield* honest.session.accept
      yield* hostile.send(frame(1, 0x20, 0, 0, 0xffffffff), hostile.w.ping(1))
      yield* expectProtocolViolation(hostile)
      yield* honest.send(honest.w.data(1, text(" and after"), FIN))
      assert.strictEqual(str(yield* readAll(stream)), "before and after")
      yield* honest.sync
      assert.strictEqual((yield* honest.stats).openStreams, 1)
    }))
})

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

describe("SessionHostile: memory", () => {
  it.effect.skipIf(gc === undefined)("payloads of reset and closed streams are not retained (heap after GC)", () =>
    Effect.gen(function*() {
      const peer = yield* rawPeer("yamux", { floodLimit: 10_000 })
      yield* peer.send(peer.w.open(1), peer.w.reset(1))
      yield* peer.sync
      const before = heapAfterGc()!
      // 64 MiB of DATA for a closed stream, each frame 1 MiB; none of it may stick.
      for (let i = 0; i < 64; i++) yield* peer.send(peer.w.data(1, new Uint8Array(MiB)))
      yield* peer.sync
      const after = heapAfterGc()!
      const stats = yield* peer.stats
      assert.strictEqual(stats.bufferedBytes, 0)
      assert.strictEqual(stats.ignoredFrames, 64)
      assert.isBelow(after - before, 16 * MiB, `heap grew by ${((after - before) / MiB).toFixed(1)} MiB`)
    }))
})
