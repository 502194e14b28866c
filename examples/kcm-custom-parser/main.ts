/**
 * A KCM server for a made-up "telemetry frame" protocol, cut into messages
 * by a custom delineation parser (the part Linux KCM gives to a BPF program).
 *
 * Frame layout, 8-byte header then body:
 *
 *   offset 0  2 bytes  magic "TM" (0x54 0x4d)
 *   offset 2  1 byte   version, must be 1
 *   offset 3  1 byte   type: 1 reading, 2 heartbeat, 3 alert
 *   offset 4  4 bytes  body length, unsigned little-endian
 *   offset 8  ...      body
 *
 * The parser checks the header byte by byte as it arrives, so a stream that
 * is not telemetry fails on its first wrong byte instead of after a length
 * read out of garbage. A failure code is negative; the multiplexor turns it
 * into a typed `DelineationError` (`ParserFailed` with the code) and drops
 * that connection, reporting it as a `Detached` event. The other connections
 * are untouched.
 *
 * Run: `npx node examples/kcm-custom-parser/main.ts`
 */
import { Delineation, type DelineationError } from "@plexus/core"
import { Kcm, type KcmEvent } from "@plexus/kcm"
import { Tcp, TcpServer } from "@plexus/transport-tcp"
import * as Console from "effect/Console"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Stream from "effect/Stream"

// ---------------------------------------------------------------------------
// The protocol
// ---------------------------------------------------------------------------

const MAGIC_0 = 0x54 // "T"
const MAGIC_1 = 0x4d // "M"
const VERSION = 1
const HEADER = 8
const MAX_FRAME = 64 * 1024

const FrameType = { reading: 1, heartbeat: 2, alert: 3 } as const
type FrameType = keyof typeof FrameType
const typeName = (code: number): FrameType | undefined =>
  (Object.keys(FrameType) as Array<FrameType>).find((name) => FrameType[name] === code)

/** Failure codes of the parser (negative, as the custom delineation expects). */
const Fault = { badMagic: -1, badVersion: -2, unknownType: -3 } as const
const faultName = (code: number | undefined): string =>
  code === Fault.badMagic
    ? "bad magic: not a telemetry stream"
    : code === Fault.badVersion
    ? "unsupported protocol version"
    : code === Fault.unknownType
    ? "unknown frame type"
    : "unknown failure"

/**
 * Given the bytes of the next frame received so far (from its first byte),
 * answers its total length, 0 for "need more", or a negative fault code.
 */
const parseTelemetry = (bytes: Uint8Array): number => {
  if (bytes[0] !== MAGIC_0) return Fault.badMagic
  if (bytes.length < 2) return Delineation.NEED_MORE
  if (bytes[1] !== MAGIC_1) return Fault.badMagic
  if (bytes.length < 3) return Delineation.NEED_MORE
  if (bytes[2] !== VERSION) return Fault.badVersion
  if (bytes.length < 4) return Delineation.NEED_MORE
  if (typeName(bytes[3]) === undefined) return Fault.unknownType
  if (bytes.length < HEADER) return Delineation.NEED_MORE
  const bodyLength = (bytes[4] | (bytes[5] << 8) | (bytes[6] << 16) | (bytes[7] << 24)) >>> 0
  // A huge declared length is answered as is: the delineation rejects it
  // against maxMessageSize before buffering anything for it.
  return HEADER + bodyLength
}

const telemetry = Delineation.custom({
  parse: parseTelemetry,
  maxMessageSize: MAX_FRAME,
  partialTimeout: "2 seconds"
})

/** A whole frame: header and body. Frames carry their own header, so KCM sends them as they are. */
const encodeFrame = (type: FrameType, body: Uint8Array, version = VERSION): Uint8Array => {
  const frame = new Uint8Array(HEADER + body.length)
  frame[0] = MAGIC_0
  frame[1] = MAGIC_1
  frame[2] = version
  frame[3] = FrameType[type]
  new DataView(frame.buffer).setUint32(4, body.length, true)
  frame.set(body, HEADER)
  return frame
}

/** A sensor's frame: sensor id, sequence number, a value, and padding that varies the size. */
const sensorFrame = (sensor: number, seq: number): Uint8Array => {
  const type: FrameType = seq % 50 === 49 ? "alert" : seq % 10 === 0 ? "heartbeat" : "reading"
  const body = new Uint8Array(14 + ((sensor * 131 + seq * 17) % 400))
  const view = new DataView(body.buffer)
  view.setUint16(0, sensor, true)
  view.setUint32(2, seq, true)
  view.setFloat64(6, 20 + Math.sin(seq / 10) * 5, true)
  return encodeFrame(type, body)
}

// ---------------------------------------------------------------------------
// The demonstration
// ---------------------------------------------------------------------------

const SENSORS = 6
const FRAMES_PER_SENSOR = 500
const TOTAL = SENSORS * FRAMES_PER_SENSOR

const program = Effect.gen(function*() {
  yield* Console.log("── KCM with a custom delineation parser: telemetry frames over TCP ──")

  // The server: a KCM multiplexor attached to every connection a TCP listener accepts.
  const server = yield* Layer.build(
    Kcm.layerServer({ delineation: telemetry }).pipe(
      Layer.provideMerge(Tcp.layerServer({ host: "127.0.0.1", port: 0 }))
    )
  )
  const serverMux = Context.get(server, Kcm.Kcm)
  const port = Context.get(server, TcpServer.TcpServer).port
  const detached = yield* Deferred.make<KcmEvent.Detached>()
  const events = yield* serverMux.events
  yield* Effect.forkScoped(Stream.runForEach(events, (event) =>
    event._tag === "Detached" ? Deferred.succeed(detached, event) : Effect.void))
  yield* Console.log(`server listening on 127.0.0.1:${port}, frames cut by a custom parser (max ${MAX_FRAME} bytes)`)

  // Two message sockets share what the server receives; each frame goes to one of them.
  const counts = [
    { reading: 0, heartbeat: 0, alert: 0 },
    { reading: 0, heartbeat: 0, alert: 0 }
  ]
  let received = 0
  const allReceived = yield* Deferred.make<void>()
  for (const tally of counts) {
    const socket = yield* serverMux.socket({ maxPull: 16 })
    yield* Effect.forkScoped(Stream.runForEach(socket.messages, (frame) =>
      Effect.suspend(() => {
        tally[typeName(frame[3])!]++
        return ++received === TOTAL ? Deferred.succeed(allReceived, undefined) : Effect.void
      })))
  }

  // The client: a pool of 3 connections, with several sensors producing at once.
  const client = yield* Kcm.makePool({ dial: Tcp.dial({ port }), connections: 3, delineation: telemetry })
  const tx = yield* client.socket()
  yield* Effect.forEach(
    Array.from({ length: SENSORS }, (_, sensor) => sensor),
    (sensor) =>
      Effect.forEach(Array.from({ length: FRAMES_PER_SENSOR }, (_, seq) => seq), (seq) => tx.send(sensorFrame(sensor, seq)), {
        discard: true
      }),
    { concurrency: "unbounded", discard: true }
  )
  yield* Deferred.await(allReceived)
  yield* Console.log(`${SENSORS} sensors sent ${TOTAL} frames over a pool of 3 connections; the server received all ${received}`)
  for (const [i, c] of counts.entries()) {
    yield* Console.log(
      `  server socket ${i + 1}: ${c.reading + c.heartbeat + c.alert} frames (${c.reading} readings, ${c.heartbeat} heartbeats, ${c.alert} alerts)`
    )
  }
  for (const t of (yield* client.stats).transports) {
    yield* Console.log(`  client ${t.label}: sent ${t.txMessages} frames, ${t.txBytes} bytes`)
  }
  for (const t of (yield* serverMux.stats).transports) {
    yield* Console.log(`  server ${t.label}: received ${t.rxMessages} frames, ${t.rxBytes} bytes`)
  }

  // A frame that does not parse is refused before a byte is written: a typed error for the sender.
  const refused = yield* Effect.flip(tx.send(encodeFrame("reading", new Uint8Array(4), 7)))
  yield* Console.log(`sending a version-7 frame fails at once: ${refused._tag} / ${refused.reason._tag} (${refused.message})`)

  // A misbehaving peer on its own connection: one good frame, then a frame of version 9.
  const rogue = yield* Tcp.dial({ port })
  const rogueWriter = yield* rogue.writer
  const rogueReader = yield* rogue.reader
  yield* rogueWriter.write(encodeFrame("alert", new Uint8Array(14)))
  yield* rogueWriter.write(encodeFrame("reading", new Uint8Array(14), 9))
  const event = yield* Deferred.await(detached)
  const reason = event.reason
  if (reason._tag === "Delineation") {
    const error: DelineationError.DelineationError = reason.error
    const code = error.reason._tag === "ParserFailed" ? error.reason.code : undefined
    yield* Console.log(
      `the server detached ${event.label}: ${reason._tag} / ${error.reason._tag}, code ${code} (${faultName(code)})`
    )
  } else {
    yield* Console.log(`the server detached ${event.label}: ${reason._tag}`)
  }
  const rogueEnd = yield* Effect.flip(Effect.forever(rogueReader.pull))
  yield* Console.log(`the rogue peer's connection was closed on it: ${rogueEnd.reason._tag}`)
  const stats = (yield* serverMux.stats).mux
  yield* Console.log(
    `server: ${stats.rxMessages} frames in (the rogue's good frame among them), ${stats.attached} connections attached, ${stats.errors} dropped for errors`
  )
  yield* Console.log("the other connections kept their frames flowing; done")
})

Effect.runPromise(program.pipe(Effect.scoped, Effect.timeout("15 seconds"))).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
