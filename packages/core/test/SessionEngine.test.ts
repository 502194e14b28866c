import { assert, describe, it } from "@effect/vitest"
import { Engine, type EngineConfig, type EngineHooks } from "../src/internal/muxEngine.ts"
import { type FrameSink, PlexusDecoder, PlexusEncoder } from "../src/internal/muxFrames.ts"

const config: EngineConfig = {
  client: true,
  codec: "plexus",
  maxWindow: 16 * 1024 * 1024,
  sessionBudget: 64 * 1024 * 1024,
  acceptBacklog: 256,
  maxInboundStreams: 1000,
  maxOutboundStreams: 1000,
  sendFrameSize: 16 * 1024,
  receiveFrameSize: 64 * 1024,
  maxControlQueue: 1000,
  writeBatchBytes: 1024 * 1024,
  sendBufferBytes: 1024 * 1024,
  floodLimit: 1000,
  floodWindowMs: 1000
}

const hooks = (): EngineHooks => ({
  wakeWriter: () => {},
  onIncoming: () => {},
  onPong: () => true,
  onEnd: () => {},
  hasHandler: () => false,
  now: () => 0
})

/** Decodes a batch into the sequence of (stream id, DATA bytes) it carries. */
const dataOrder = (batch: ReadonlyArray<Uint8Array>) => {
  const order: Array<[number, number]> = []
  const sink: FrameSink = {
    open: () => {},
    ack: () => {},
    dataStart: (id, length) => {
      order.push([id, length])
      return false
    },
    data: () => {},
    fin: () => {},
    reset: () => {},
    windowUpdate: () => {},
    ping: () => {},
    goAway: () => {},
    priority: () => {},
    setting: () => {},
    empty: () => {},
    malformed: (detail) => {
      throw new Error(detail)
    }
  }
  const decoder = new PlexusDecoder(sink, 1 << 20)
  for (const chunk of batch) decoder.push(chunk)
  return order
}

describe("Session scheduler", () => {
  it("serves the most urgent stream first, and takes turns within an urgency", () => {
    const engine = new Engine(config, new PlexusEncoder(), hooks())
    const background = engine.openStream(0, 7, true)
    const a = engine.openStream(0, 1, true)
    const b = engine.openStream(0, 1, true)
    const block = new Uint8Array(48 * 1024)
    engine.write(background, block)
    engine.write(a, block)
    engine.write(b, block)
    const order = dataOrder(engine.nextBatch()!)
    // 16 KiB frames: a and b alternate until both are done, then the background stream.
    assert.deepStrictEqual(order.map(([id]) => id), [a.id, b.id, a.id, b.id, a.id, b.id, background.id, background.id, background.id])
  })

  it("a raised urgency takes effect for data already queued", () => {
    const engine = new Engine(config, new PlexusEncoder(), hooks())
    const first = engine.openStream(0, 3, true)
    const second = engine.openStream(0, 3, true)
    engine.write(first, new Uint8Array(32 * 1024))
    engine.write(second, new Uint8Array(32 * 1024))
    engine.setPriority(second, 0, true)
    const order = dataOrder(engine.nextBatch()!)
    assert.deepStrictEqual(order.map(([id]) => id), [second.id, second.id, first.id, first.id])
  })

  it("puts control frames ahead of queued data", () => {
    const engine = new Engine(config, new PlexusEncoder(), hooks())
    const stream = engine.openStream(0, 3, true)
    engine.write(stream, new Uint8Array(64 * 1024))
    engine.encoder.ping(false, 42)
    const batch = engine.nextBatch()!
    const kinds: Array<string> = []
    const decoder = new PlexusDecoder({
      open: () => kinds.push("open"),
      ack: () => {},
      dataStart: () => {
        kinds.push("data")
        return false
      },
      data: () => {},
      fin: () => {},
      reset: () => {},
      windowUpdate: () => {},
      ping: () => kinds.push("ping"),
      goAway: () => {},
      priority: () => {},
      setting: () => kinds.push("setting"),
      empty: () => {},
      malformed: (detail) => {
        throw new Error(detail)
      }
    }, 1 << 20)
    for (const chunk of batch) decoder.push(chunk)
    assert.deepStrictEqual(kinds.filter((k) => k !== "setting"), ["open", "ping", "data", "data", "data", "data"])
  })

  it("never sends more than the peer's window, and resumes when it grows", () => {
    const engine = new Engine(config, new PlexusEncoder(), hooks())
    const stream = engine.openStream(0, 3, true)
    engine.write(stream, new Uint8Array(300 * 1024))
    const first = dataOrder(engine.nextBatch()!)
    assert.strictEqual(first.reduce((n, [, len]) => n + len, 0), 256 * 1024)
    assert.isUndefined(engine.nextBatch())
    engine.windowUpdate(stream.id, 10 * 1024)
    const second = dataOrder(engine.nextBatch()!)
    assert.strictEqual(second.reduce((n, [, len]) => n + len, 0), 10 * 1024)
  })
})
