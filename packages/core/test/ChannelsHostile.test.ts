/**
 * Hostile peers against the channels engine (HOSTILE.md): every message the
 * peer sends here is built by hand, byte by byte, never by our encoder. Each
 * test asserts the typed error and a bound read from the engine's counters.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as ChannelError from "../src/ChannelError.ts"
import * as Channels from "../src/Channels.ts"
import * as F from "../src/internal/channelFrames.ts"
import * as Memory from "../src/Memory.ts"
import type * as MessageTransport from "../src/MessageTransport.ts"
import { within } from "./fixtures/Within.ts"

// Raw message builders --------------------------------------------------------

const u16 = (v: number) => [v >>> 8, v & 0xff]
const u32 = (v: number) => [v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff]
const bytes = (...parts: Array<number | Array<number>>) => new Uint8Array(parts.flat())
const control = (type: number, flags: number, requestId: number, ...body: Array<number | Array<number>>) =>
  bytes(0xff, 0xff, type, flags, u32(requestId), ...body)
const create = (requestId: number, channel: number, extra: { messages?: number; bytes?: number } = {}) =>
  control(0x01, 0, requestId, u16(channel), u32(extra.messages ?? 0), u32(extra.bytes ?? 0), 0)
const data = (channel: number, ...payload: Array<number>) => bytes(u16(channel), payload)
const windowGrant = (channel: number, messages: number, size: number) =>
  control(0x40, 0, 0, u16(channel), u32(messages), u32(size))

/** Our engine as the server; the test is the (hostile) client on the raw transport. */
const rawPeer = (options?: Partial<Channels.Options>) =>
  Effect.gen(function*() {
    const link = yield* Memory.makeMessagePair()
    const server = yield* Channels.make(link.a, { ...options, role: "server" })
    const raw = link.b
    return { server, raw, link }
  })

/** Reads raw messages until a control message matches; answers it. */
const expectControl = (
  raw: MessageTransport.MessageTransport<unknown>,
  match: (m: F.ControlMessage) => boolean
): Effect.Effect<F.ControlMessage, unknown> =>
  Effect.gen(function*() {
    while (true) {
      const batch = yield* raw.pull
      for (const message of batch) {
        if (F.channelIdOf(message) !== F.CONTROL_CHANNEL) continue
        const decoded = F.decodeControl(message.subarray(2))
        if (decoded instanceof ChannelError.ChannelError) continue
        if (match(decoded)) return decoded
      }
    }
  })

const expectGoAway = (raw: MessageTransport.MessageTransport<unknown>, code: number) =>
  Effect.map(expectControl(raw, (m) => m._tag === "GoAway"), (m) => {
    assert.strictEqual((m as F.GoAway).code, code, `GOAWAY ${ChannelError.codeName((m as F.GoAway).code)}`)
    return m as F.GoAway
  })

const errorOf = <A>(exit: Exit.Exit<A, ChannelError.ChannelError | Cause.Done>): ChannelError.ChannelError => {
  assert.isTrue(Exit.isFailure(exit))
  if (!Exit.isFailure(exit)) throw new Error("unreachable")
  const error = Cause.findErrorOption(exit.cause)
  if (error._tag !== "Some" || Cause.isDone(error.value)) throw new Error(`not a typed failure: ${Cause.pretty(exit.cause)}`)
  return error.value
}

const connectionError = (server: Channels.Channels) =>
  Effect.map(Effect.exit(server.closed.pipe(within("the connection ends"))), errorOf)

describe("Channels against a hostile peer", () => {
  describe("connection-ending violations", () => {
    it.live("a runt message ends the connection with PROTOCOL_ERROR", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer()
        yield* raw.send(bytes(0x00))
        yield* expectGoAway(raw, ChannelError.Code.PROTOCOL_ERROR).pipe(within("GOAWAY"))
        const error = yield* connectionError(server)
        assert.strictEqual(error.reason._tag, "ProtocolViolation")
        // The application's channels fail with the same typed error.
        const exit = yield* Effect.exit(server.defaultChannel.pull)
        assert.strictEqual(errorOf(exit).reason._tag, "ProtocolViolation")
      }))

    it.live("data for an idle channel id ends the connection", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer()
        yield* raw.send(data(7, 1, 2, 3))
        yield* expectGoAway(raw, ChannelError.Code.PROTOCOL_ERROR).pipe(within("GOAWAY"))
        const error = yield* connectionError(server)
        assert.match((error.reason as ChannelError.ProtocolViolation).detail, /idle channel 7/)
      }))

    it.live("a control message above 4096 bytes is rejected as MessageTooLarge before it is read", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer()
        const huge = new Uint8Array(2 + 4097)
        huge[0] = 0xff
        huge[1] = 0xff
        huge[2] = 0x01
        yield* raw.send(huge)
        yield* expectGoAway(raw, ChannelError.Code.PROTOCOL_ERROR).pipe(within("GOAWAY"))
        const error = yield* connectionError(server)
        assert.strictEqual(error.reason._tag, "MessageTooLarge")
      }))

    it.live("a truncated CREATE is a protocol violation, not an exception", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer()
        yield* raw.send(control(0x01, 0, 1, u16(1), 0, 0, 0))
        yield* expectGoAway(raw, ChannelError.Code.PROTOCOL_ERROR).pipe(within("GOAWAY"))
        assert.strictEqual((yield* connectionError(server)).reason._tag, "ProtocolViolation")
      }))

    it.live("a CREATE with the receiver's parity ends the connection with INVALID_ID", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer()
        yield* raw.send(create(1, 2))
        yield* expectGoAway(raw, ChannelError.Code.INVALID_ID).pipe(within("GOAWAY"))
        const error = yield* connectionError(server)
        assert.strictEqual((error.reason as ChannelError.ProtocolViolation).code, ChannelError.Code.INVALID_ID)
      }))

    it.live("a CREATE for an id in use ends the connection with INVALID_ID", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer()
        yield* raw.send(create(1, 3))
        yield* raw.send(create(2, 3))
        yield* expectGoAway(raw, ChannelError.Code.INVALID_ID).pipe(within("GOAWAY"))
        assert.strictEqual((yield* connectionError(server)).reason._tag, "ProtocolViolation")
      }))

    it.live("a MIGRATE of a channel that is not open ends the connection with INVALID_ID", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer()
        yield* raw.send(control(0x03, 0, 1, u16(5), u16(7)))
        yield* expectGoAway(raw, ChannelError.Code.INVALID_ID).pipe(within("GOAWAY"))
        assert.strictEqual((yield* connectionError(server)).reason._tag, "ProtocolViolation")
      }))

    it.live("a peer's GOAWAY with an error code fails the connection with GoneAway", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer()
        yield* raw.send(control(0x41, 0, 0, u16(ChannelError.Code.INTERNAL_ERROR), [0x6f, 0x6f, 0x70, 0x73]))
        const error = yield* connectionError(server)
        const reason = error.reason as ChannelError.GoneAway
        assert.strictEqual(reason._tag, "GoneAway")
        assert.strictEqual(reason.reason, "oops")
        assert.isTrue(reason.byPeer)
      }))
  })

  describe("requests answered with ERROR, the connection goes on", () => {
    it.live("an unknown request type is answered with UNKNOWN_TYPE", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer()
        yield* raw.send(control(0x20, 0, 42))
        const reply = yield* expectControl(raw, (m) => m._tag === "Error").pipe(within("ERROR"))
        assert.strictEqual((reply as F.ErrorReply).requestId, 42)
        assert.strictEqual((reply as F.ErrorReply).code, ChannelError.Code.UNKNOWN_TYPE)
        yield* raw.send(data(0, 0x68, 0x69))
        const got = yield* server.defaultChannel.pull.pipe(within("channel 0 still works"))
        assert.deepStrictEqual(Array.from(got[0]), [0x68, 0x69])
      }))

    it.live("unknown notifications are ignored and replies to unknown requests are counted, not answered", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer()
        yield* raw.send(control(0x55, 0, 0, [1, 2, 3]))
        yield* raw.send(control(0x89, 0, 777))
        yield* raw.send(data(0, 1))
        yield* server.defaultChannel.pull.pipe(within("channel 0 still works"))
        const stats = yield* server.stats
        assert.strictEqual(stats.ignoredReplies, 1)
      }))

    it.live("a CREATE with an extension that was not negotiated is refused with EXTENSION_NOT_NEGOTIATED", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer()
        const tlv = [0x02, ...u16(21), 0x02, ...u32(7), ...new Array(16).fill(0)]
        yield* raw.send(control(0x01, 0, 9, u16(1), u32(0), u32(0), 0, tlv))
        const reply = yield* expectControl(raw, (m) => m._tag === "Error").pipe(within("ERROR"))
        assert.strictEqual((reply as F.ErrorReply).code, ChannelError.Code.EXTENSION_NOT_NEGOTIATED)
        assert.strictEqual((yield* server.stats).backlog, 0)
      }))

    it.live("a DESTROY for an idle id is answered with UNKNOWN_CHANNEL", () =>
      Effect.gen(function*() {
        const { raw } = yield* rawPeer()
        yield* raw.send(control(0x02, 0, 5, u16(9), u16(0)))
        const reply = yield* expectControl(raw, (m) => m._tag === "Error").pipe(within("ERROR"))
        assert.strictEqual((reply as F.ErrorReply).code, ChannelError.Code.UNKNOWN_CHANNEL)
      }))
  })

  describe("floods are bounded", () => {
    it.live("creates beyond the backlog are refused at once, and a flood of them ends the connection", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer({ acceptBacklog: 8, floodLimit: 100 })
        const batch: Array<Uint8Array> = []
        for (let i = 0; i < 50; i++) batch.push(create(i + 1, 2 * i + 1))
        yield* raw.sendAll(batch)
        let refused = 0
        yield* expectControl(raw, (m) => m._tag === "Error" && ++refused === 42).pipe(within("42 refusals"))
        const stats = yield* server.stats
        assert.strictEqual(stats.backlog, 8)
        assert.strictEqual(stats.refusedCreates, 42)
        assert.isAtMost(stats.peerChannels, 8)
        // Another 100 refusals in the same second exceed the flood budget.
        const more: Array<Uint8Array> = []
        for (let i = 50; i < 150; i++) more.push(create(i + 1, 2 * i + 1))
        yield* raw.sendAll(more)
        yield* expectGoAway(raw, ChannelError.Code.ENHANCE_YOUR_CALM).pipe(within("GOAWAY"))
        const error = yield* connectionError(server)
        assert.strictEqual(error.reason._tag, "LimitExceeded")
        assert.isAtMost((yield* server.stats).backlog, 8)
      }))

    it.live("more unanswered requests than allowed end the connection with ENHANCE_YOUR_CALM", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer({ maxPeerRequests: 4 })
        yield* raw.sendAll([create(1, 1), create(2, 3), create(3, 5), create(4, 7), create(5, 9)])
        yield* expectGoAway(raw, ChannelError.Code.ENHANCE_YOUR_CALM).pipe(within("GOAWAY"))
        const reason = (yield* connectionError(server)).reason as ChannelError.LimitExceeded
        assert.strictEqual(reason.limit, "unanswered requests")
      }))

    it.live("pings beyond the rate end the connection with ENHANCE_YOUR_CALM", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer({ pingsPerSecond: 10 })
        const pings: Array<Uint8Array> = []
        for (let i = 1; i <= 11; i++) pings.push(control(0x09, 0, i))
        yield* raw.sendAll(pings)
        yield* expectGoAway(raw, ChannelError.Code.ENHANCE_YOUR_CALM).pipe(within("GOAWAY"))
        const stats = yield* server.stats
        assert.strictEqual(stats.pingsAnswered, 10)
        assert.strictEqual((yield* connectionError(server)).reason._tag, "LimitExceeded")
      }))

    it.live("early data of a refused channel is discarded within the default window", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer({ acceptBacklog: 0, windowMessages: 4 })
        yield* raw.sendAll([create(1, 1), data(1, 1), data(1, 2), data(1, 3), data(0, 9)])
        yield* server.defaultChannel.pull.pipe(within("channel 0 still works"))
        const stats = yield* server.stats
        assert.strictEqual(stats.discardedMessages, 3)
        assert.strictEqual(stats.bufferedMessages, 0)
      }))
  })

  describe("flow-control violations abort one channel only", () => {
    it.live("a message beyond channel 0's window aborts channel 0 with FLOW_CONTROL_ERROR, and the connection goes on", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer({ windowMessages: 8 })
        const flood: Array<Uint8Array> = []
        for (let i = 0; i < 9; i++) flood.push(data(0, i))
        yield* raw.sendAll(flood)
        const destroy = (yield* expectControl(raw, (m) => m._tag === "Destroy").pipe(within("DESTROY"))) as F.Destroy
        assert.isTrue(destroy.abort)
        assert.strictEqual(destroy.channelId, 0)
        assert.strictEqual(destroy.code, ChannelError.Code.FLOW_CONTROL_ERROR)
        const exit = yield* Effect.exit(server.defaultChannel.pull)
        assert.strictEqual(errorOf(exit).reason._tag, "FlowControlViolation")
        const stats = yield* server.stats
        assert.strictEqual(stats.windowViolations, 1)
        assert.strictEqual(stats.bufferedMessages, 0)
        // The connection goes on: a new channel is accepted and carries data.
        yield* raw.send(control(0x82, 0, destroy.requestId, u16(0)))
        yield* raw.send(create(1, 1))
        const accepted = yield* Effect.scoped(Effect.gen(function*() {
          const ch = yield* server.accept.pipe(within("accept after the violation"))
          yield* raw.send(data(1, 0x42))
          return (yield* ch.pull.pipe(within("data on the new channel")))[0]
        }))
        assert.deepStrictEqual(Array.from(accepted), [0x42])
      }))

    it.live("data beyond the window of a channel still being accepted is answered with ERROR FLOW_CONTROL_ERROR", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer({ windowMessages: 2 })
        yield* raw.sendAll([create(1, 1), data(1, 1), data(1, 2), data(1, 3)])
        const reply = (yield* expectControl(raw, (m) => m._tag === "Error").pipe(within("ERROR"))) as F.ErrorReply
        assert.strictEqual(reply.requestId, 1)
        assert.strictEqual(reply.code, ChannelError.Code.FLOW_CONTROL_ERROR)
        const stats = yield* server.stats
        assert.strictEqual(stats.backlog, 0)
        assert.strictEqual(stats.bufferedMessages, 0)
      }))

    it.live("a grant that takes a window above 2^32-1 aborts that channel with FLOW_CONTROL_ERROR", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer()
        yield* raw.send(windowGrant(0, 0xffffffff, 1))
        const destroy = (yield* expectControl(raw, (m) => m._tag === "Destroy").pipe(within("DESTROY"))) as F.Destroy
        assert.strictEqual(destroy.code, ChannelError.Code.FLOW_CONTROL_ERROR)
        const exit = yield* Effect.exit(server.defaultChannel.send(new Uint8Array(1)))
        assert.strictEqual(errorOf(exit).reason._tag, "FlowControlViolation")
      }))

    it.live("a stalled consumer never makes the engine buffer more than its window", () =>
      Effect.gen(function*() {
        const { server, raw } = yield* rawPeer({ windowMessages: 16, windowBytes: 16 * 1024 })
        // Exactly the window, in 1 KiB messages: accepted and buffered.
        const fill: Array<Uint8Array> = []
        for (let i = 0; i < 16; i++) fill.push(bytes(0, 0, new Array(1024).fill(i)))
        yield* raw.sendAll(fill)
        yield* raw.send(control(0x09, 0, 1))
        yield* expectControl(raw, (m) => m._tag === "Pong").pipe(within("PONG after the data"))
        const stats = yield* server.stats
        assert.strictEqual(stats.bufferedMessages, 16)
        assert.strictEqual(stats.bufferedBytes, 16 * 1024)
        assert.strictEqual(stats.windowViolations, 0)
      }))
  })

  it.live("answers a raw CREATE with CREATE_ACK when the application accepts, and the peer's data arrives", () =>
    Effect.gen(function*() {
      const { server, raw } = yield* rawPeer()
      const accepting = yield* Effect.forkChild(Effect.scoped(Effect.gen(function*() {
        const ch = yield* server.accept
        return Array.from((yield* ch.pull)[0])
      })))
      yield* raw.sendAll([create(3, 1, { messages: 10 }), data(1, 7, 7)])
      const ack = (yield* expectControl(raw, (m) => m._tag === "CreateAck").pipe(within("CREATE_ACK"))) as F.CreateAck
      assert.strictEqual(ack.requestId, 3)
      assert.strictEqual(ack.channelId, 1)
      assert.deepStrictEqual(yield* Fiber.join(accepting).pipe(within("early data delivered")), [7, 7])
    }))
})
