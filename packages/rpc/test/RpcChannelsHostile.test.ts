/**
 * Hostile peers and faults around RPC over Channels and WebSocket: RPC
 * bytes on channel 0, on a channel that was never created, before the
 * secondary handshake's 101, or before a session's SETTINGS; connections
 * lost and servers draining with calls in flight.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import { RpcSerialization } from "effect/rpc"
import * as Net from "node:net"
import WebSocket from "ws"
import { Channels, Session } from "@plexus/core"
import { Tcp, TcpServer } from "@plexus/transport-tcp"
import { NodeWs } from "@plexus/transport-ws"
import { RpcChannels, RpcMessages, RpcSession } from "../src/index.ts"
import { makeProbe } from "./fixtures/Api.ts"
import { channelsOnMemory, channelsOnWs } from "./fixtures/Connect.ts"
import { clientOf, eventually, serveApi, start, transportError } from "./fixtures/RpcSuite.ts"

const text = new TextEncoder()
/** An RPC message (ENVELOPE, JSON) holding a request, as a client library would write it. */
const requestMessage = (id: number): Uint8Array => {
  const body = text.encode(JSON.stringify({ _tag: "Request", id, tag: "Echo", payload: { text: "x" }, headers: [] }))
  const out = new Uint8Array(body.length + 1)
  out.set(body, 1)
  return out
}
/** A channels data message: the channel id, then the payload. */
const onChannel = (id: number, payload: Uint8Array): Uint8Array => {
  const out = new Uint8Array(payload.length + 2)
  out[0] = id >>> 8
  out[1] = id & 0xff
  out.set(payload, 2)
  return out
}

interface RawOutcome {
  readonly received: Array<Uint8Array>
  readonly code: number
}

/** A raw `ws` client: sends `messages` once open, collects what comes back until the server closes (or `until` holds). */
const rawWs = (
  url: string,
  protocols: ReadonlyArray<string>,
  messages: ReadonlyArray<Uint8Array>,
  until?: (received: ReadonlyArray<Uint8Array>) => boolean
) =>
  Effect.callback<RawOutcome>((resume) => {
    const ws = new WebSocket(url, [...protocols])
    const received: Array<Uint8Array> = []
    ws.on("open", () => {
      for (const m of messages) ws.send(m)
    })
    ws.on("message", (data: Buffer) => {
      received.push(new Uint8Array(data))
      if (until?.(received)) resume(Effect.succeed({ received, code: -1 }))
    })
    ws.on("close", (code: number) => resume(Effect.succeed({ received, code })))
    ws.on("error", () => {})
    return Effect.sync(() => ws.terminate())
  }).pipe(Effect.timeout("10 seconds"), Effect.orDie)

/** Whether `m` is a DESTROY (docs/spec/channels.md) of `channel` with `code`. */
const isDestroy = (m: Uint8Array, channel: number, code: number): boolean =>
  m.length >= 12 && m[0] === 0xff && m[1] === 0xff && m[2] === 0x02 &&
  ((m[8]! << 8) | m[9]!) === channel && ((m[10]! << 8) | m[11]!) === code

const json = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.provideService(effect, RpcSerialization.RpcSerialization, RpcSerialization.json)

describe("RPC over channels: calls before the handshake completes", () => {
  it.live("RPC bytes on channel 0 destroy channel 0 with REFUSED, run nothing, and the server keeps serving", () =>
    json(Effect.gen(function*() {
      const probe = makeProbe()
      const pair = yield* channelsOnWs({ server: { listen: { channelExtensions: [] } } })
      const client = yield* start(pair, probe)
      const outcome = yield* rawWs(
        pair.url,
        [RpcChannels.PROTOCOL],
        [onChannel(0, requestMessage(1))],
        (received) => received.some((m) => isDestroy(m, 0, RpcChannels.REFUSED))
      )
      assert.isTrue(outcome.received.some((m) => isDestroy(m, 0, RpcChannels.REFUSED)))
      assert.strictEqual((yield* pair.serverControl.stats).started, 0)
      assert.strictEqual(yield* client.Echo({ text: "still serving" }), "still serving")
    })))

  it.live("RPC bytes on a channel never created end that connection only", () =>
    json(Effect.gen(function*() {
      const pair = yield* channelsOnWs()
      const client = yield* start(pair, makeProbe())
      const outcome = yield* rawWs(pair.url, [RpcChannels.PROTOCOL], [onChannel(3, requestMessage(1))])
      // GOAWAY with PROTOCOL_ERROR or INVALID_ID, then the close.
      const goAway = outcome.received.find((m) => m.length >= 10 && m[0] === 0xff && m[1] === 0xff && m[2] === 0x41)
      assert.isDefined(goAway)
      assert.include([0x0001, 0x0005], (goAway![8]! << 8) | goAway![9]!)
      assert.notStrictEqual(outcome.code, -1)
      assert.strictEqual((yield* pair.serverControl.stats).started, 0)
      assert.strictEqual(yield* client.Echo({ text: "unharmed" }), "unharmed")
    })))

  it.live("RPC bytes before the secondary handshake's 101 are answered 400 and close 1002, and the server keeps serving", () =>
    json(Effect.gen(function*() {
      const pair = yield* channelsOnWs()
      const client = yield* start(pair, makeProbe())
      const outcome = yield* rawWs(pair.url, ["plexus-negotiate.v1"], [onChannel(0, requestMessage(1))])
      assert.strictEqual(outcome.code, 1002)
      assert.match(new TextDecoder().decode(outcome.received[0]), /^PLEXUS\/1 400 /)
      const stats = yield* pair.ws.stats
      assert.strictEqual(stats.secondaryFailed, 1)
      assert.strictEqual((yield* pair.serverControl.stats).started, 0)
      assert.strictEqual(yield* client.Echo({ text: "after the intruder" }), "after the intruder")
    })))

  it.live("request bytes before a session's SETTINGS end that connection only", () =>
    Effect.gen(function*() {
      const context = yield* Layer.build(
        RpcSession.layerServer().pipe(Layer.provideMerge(Tcp.layerServer({ host: "127.0.0.1", port: 0 })))
      )
      const port = Context.get(context, TcpServer.TcpServer).port
      const control = Context.get(context, RpcSession.SessionServer)
      const probe = makeProbe()
      yield* serveApi(control.protocol, probe)
      // A length-prefixed RPC message where the session's first frame belongs.
      const message = requestMessage(1)
      const framed = new Uint8Array(4 + message.length)
      new DataView(framed.buffer).setUint32(0, message.length)
      framed.set(message, 4)
      const closed = yield* Effect.callback<boolean>((resume) => {
        const socket = Net.connect(port, "127.0.0.1", () => socket.write(framed))
        socket.on("data", () => {})
        socket.on("close", () => resume(Effect.succeed(true)))
        socket.on("error", () => {})
        return Effect.sync(() => socket.destroy())
      }).pipe(Effect.timeout("10 seconds"))
      assert.isTrue(closed)
      assert.strictEqual(probe.started, 0)
      const client = yield* clientOf(yield* RpcSession.makeClientProtocol({
        dial: Effect.flatMap(Tcp.dial({ host: "127.0.0.1", port }), (socket) => Session.make(socket, { role: "client" }))
      }))
      assert.strictEqual(yield* client.Echo({ text: "unharmed" }), "unharmed")
    }))
})

describe("RPC over channels: faults", () => {
  it.live("a lost connection fails the call in flight as not retryable, and a call after it as retryable", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const pair = yield* channelsOnMemory({ client: { retries: 1, retryDelay: "1 millis" } })
      const client = yield* start(pair, probe)
      const inFlight = yield* Effect.forkChild(Effect.exit(client.Hang({})))
      yield* eventually("the call reached its handler", () => probe.running === 1)
      yield* pair.pair.abort
      const lost = transportError(yield* Fiber.join(inFlight))
      assert.strictEqual(lost?.reason._tag, "ConnectionLost")
      assert.isFalse(lost?.retryable)
      yield* eventually("the handler of the lost call exited", () => probe.running === 0)
      const after = transportError(yield* Effect.exit(client.Echo({ text: "nobody there" })))
      assert.strictEqual(after?.reason._tag, "NotSent")
      assert.isTrue(after?.retryable)
    }))

  it.live("after a WebSocket is lost with a call in flight, the next call goes out on a new connection", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const pair = yield* channelsOnWs()
      yield* serveApi(pair.server, probe)
      const dialled: Array<{ close: Effect.Effect<void> }> = []
      const client = yield* clientOf(yield* RpcMessages.makeClientProtocol({
        dial: Effect.gen(function*() {
          const connection = yield* NodeWs.dial({ url: pair.url, protocols: [RpcChannels.PROTOCOL], channelExtensions: [] })
          dialled.push(connection)
          const transport = yield* connection.messages
          const channels = yield* Channels.make(transport, { role: "client" })
          return yield* RpcChannels.openChannel(channels)
        })
      }))
      assert.strictEqual(yield* client.Echo({ text: "first" }), "first")
      const inFlight = yield* Effect.forkChild(Effect.exit(client.Hang({})))
      yield* eventually("the call reached its handler", () => probe.running === 1)
      yield* dialled[0]!.close
      const lost = transportError(yield* Fiber.join(inFlight))
      assert.strictEqual(lost?.reason._tag, "ConnectionLost")
      assert.isFalse(lost?.retryable)
      assert.strictEqual(yield* client.Echo({ text: "on a new connection" }), "on a new connection")
      assert.strictEqual(dialled.length, 2)
      yield* eventually("the handler of the lost call exited", () => probe.running === 0)
    }))

  it.live("a draining server finishes the call in flight, the client dials again after GOAWAY, and new calls are refused as retryable", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const pair = yield* channelsOnWs({ client: { retries: 1, retryDelay: "1 millis" } })
      const client = yield* start(pair, probe)
      const inFlight = yield* Effect.forkChild(client.Sleep({ millis: 300 }))
      yield* eventually("the call started", () => probe.running === 1)
      const drained = yield* Effect.forkChild(pair.serverControl.drain({ timeout: "5 seconds" }))
      while ((yield* pair.clientStats).goAways === 0) yield* Effect.sleep("5 millis")
      const refused = transportError(yield* Effect.exit(client.Echo({ text: "late" })))
      assert.strictEqual(refused?.reason._tag, "Refused")
      assert.isTrue(refused?.retryable)
      assert.strictEqual(yield* Fiber.join(inFlight), "slept")
      yield* Fiber.join(drained)
      // The call after GOAWAY went out on a connection of its own.
      assert.isAtLeast((yield* pair.ws.stats).accepted, 2)
      const stats = yield* pair.serverControl.stats
      assert.strictEqual(stats.aborted, 0)
      assert.strictEqual(stats.started, 1)
    }))
})

