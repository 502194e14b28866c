/**
 * The channels client for pages, in Node against our server over loopback:
 * each channel behaves as a browser WebSocket (event order, readyState,
 * binaryType, close codes both ways), channels the server opens arrive as
 * `channel` events, and closing the connection ends everything.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { ChannelClient, ChannelSocket } from "../src/index.ts"
import { eventually, listenChannels } from "./channelServer.ts"
import { decode, text } from "./helpers.ts"

type Socket = ChannelSocket.ChannelSocket

/**
 * The next `type` event of `target`, listened for from this call on (so an
 * event that fires before the Effect runs is not missed); fails after
 * `millis`.
 */
const next = <E extends Event = Event>(target: EventTarget, type: string, millis = 5_000) => {
  const event = new Promise<E>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} event within ${millis} ms`)), millis)
    target.addEventListener(type, (e) => {
      clearTimeout(timer)
      resolve(e as E)
    }, { once: true })
  })
  event.catch(() => {})
  return Effect.promise(() => event)
}

/** Resolves once `socket` is OPEN (at once if it is already). */
const opened = (socket: Socket) => socket.readyState === socket.OPEN ? Effect.void : Effect.asVoid(next(socket, "open"))

/** Records the type of every event of `socket` (with message text). */
const record = (socket: Socket): Array<string> => {
  const seen: Array<string> = []
  socket.addEventListener("open", () => seen.push("open"))
  socket.addEventListener("message", (e) => {
    const data = (e as MessageEvent).data
    seen.push(data instanceof ArrayBuffer ? `message:${decode(new Uint8Array(data))}` : "message:blob")
  })
  socket.addEventListener("error", () => seen.push("error"))
  socket.addEventListener("close", (e) => seen.push(`close:${(e as ChannelSocket.ChannelCloseEvent).code}`))
  return seen
}

const connect = (url: string, options?: ChannelClient.ConnectOptions) =>
  Effect.acquireRelease(
    Effect.promise(() => ChannelClient.connect(url, options)),
    (client) => Effect.promise(() => client.close())
  )

const messageText = (e: MessageEvent) =>
  Effect.promise(async () => {
    const data = e.data as ArrayBuffer | Blob
    return decode(new Uint8Array(data instanceof Blob ? await data.arrayBuffer() : data))
  })

describe("ChannelClient and ChannelSocket", () => {
  it.live("a channel goes CONNECTING → OPEN → CLOSING → CLOSED with events open, message, close in that order", () =>
    Effect.gen(function*() {
      const { url, connections } = yield* listenChannels()
      const client = yield* connect(url)
      const ws = client.open("echo")
      ws.binaryType = "arraybuffer"
      const seen = record(ws)
      const states: Array<number> = [ws.readyState]
      assert.throws(() => ws.send("too early"), /not open/)
      yield* next(ws, "open")
      states.push(ws.readyState)
      assert.isAbove(ws.id, 0)
      assert.strictEqual(ws.id % 2, 1, "the client allocates odd ids")
      ws.send("hello")
      yield* next(ws, "message")
      ws.close(4001, "bye")
      states.push(ws.readyState)
      const closed = yield* next<ChannelSocket.ChannelCloseEvent>(ws, "close")
      states.push(ws.readyState)
      assert.deepStrictEqual(states, [ws.CONNECTING, ws.OPEN, ws.CLOSING, ws.CLOSED])
      assert.deepStrictEqual(seen, ["open", "message:hello", "close:4001"])
      assert.strictEqual(closed.code, 4001)
      assert.strictEqual(closed.reason, "bye")
      assert.isTrue(closed.wasClean)
      // The close code reached the server's channel as a graceful DESTROY.
      const log = connections[0]!
      assert.deepStrictEqual(log.destroys.filter((d) => d.channel === ws.id), [
        { channel: ws.id, code: 4001, reason: "bye", abort: false }
      ])
      yield* eventually("the server's channel ends", () => log.ends.some((e) => e.label === "echo"))
      assert.deepStrictEqual(log.ends.filter((e) => e.label === "echo"), [{ label: "echo", how: "done" }])
    }))

  it.live("binaryType blob (the default) delivers Blobs, arraybuffer delivers ArrayBuffers, and strings go out as UTF-8", () =>
    Effect.gen(function*() {
      const { url, connections } = yield* listenChannels()
      const client = yield* connect(url)
      const ws = client.open("echo")
      yield* next(ws, "open")
      assert.strictEqual(ws.binaryType, "blob")
      ws.send("héllo ✓")
      const asBlob = yield* next<MessageEvent>(ws, "message")
      assert.instanceOf(asBlob.data, Blob)
      assert.strictEqual(yield* messageText(asBlob), "héllo ✓")
      assert.deepStrictEqual([...connections[0]!.received.find((r) => r.label === "echo")!.data], [...text.encode("héllo ✓")])
      ws.binaryType = "arraybuffer"
      ws.binaryType = "nonsense" as never
      assert.strictEqual(ws.binaryType, "arraybuffer")
      ws.send(new Uint8Array([0, 1, 2, 255]).subarray(1, 3))
      const asBuffer = yield* next<MessageEvent>(ws, "message")
      assert.instanceOf(asBuffer.data, ArrayBuffer)
      assert.deepStrictEqual([...new Uint8Array(asBuffer.data as ArrayBuffer)], [1, 2])
    }))

  it.live("sends of Blobs, ArrayBuffers, views and strings keep their order and bufferedAmount drains to 0", () =>
    Effect.gen(function*() {
      const { url } = yield* listenChannels()
      const client = yield* connect(url)
      const ws = client.open("echo")
      ws.binaryType = "arraybuffer"
      yield* next(ws, "open")
      const got: Array<string> = []
      const all = Effect.promise(() =>
        new Promise<void>((resolve) => {
          ws.onmessage = (e) => {
            got.push(decode(new Uint8Array(e.data as ArrayBuffer)))
            if (got.length === 4) resolve()
          }
        })
      )
      ws.send(new Blob(["one"]))
      ws.send(text.encode("two").buffer as ArrayBuffer)
      ws.send(new DataView(text.encode("three").buffer))
      ws.send("four")
      assert.strictEqual(ws.bufferedAmount, 3 + 3 + 5 + 4)
      yield* all
      assert.deepStrictEqual(got, ["one", "two", "three", "four"])
      assert.strictEqual(ws.bufferedAmount, 0)
    }))

  it.live("a close from the server arrives with its code and reason; an abort arrives as error then an unclean close", () =>
    Effect.gen(function*() {
      const { url } = yield* listenChannels()
      const client = yield* connect(url)
      const graceful = client.open("a")
      const aborted = client.open("b")
      yield* opened(graceful)
      yield* opened(aborted)
      const gracefulSeen = record(graceful)
      const abortedSeen = record(aborted)
      graceful.send("cmd:close:4002:server says bye")
      const closed = yield* next<ChannelSocket.ChannelCloseEvent>(graceful, "close")
      assert.strictEqual(closed.code, 4002)
      assert.strictEqual(closed.reason, "server says bye")
      assert.isTrue(closed.wasClean)
      assert.deepStrictEqual(gracefulSeen, ["close:4002"])
      aborted.send("cmd:abort:4003:stop")
      const abortClose = yield* next<ChannelSocket.ChannelCloseEvent>(aborted, "close")
      assert.strictEqual(abortClose.code, 4003)
      assert.isFalse(abortClose.wasClean)
      assert.deepStrictEqual(abortedSeen, ["error", "close:4003"])
      assert.strictEqual(aborted.readyState, aborted.CLOSED)
      // The connection and its other channels go on.
      const still = client.open("echo")
      still.binaryType = "arraybuffer"
      yield* next(still, "open")
      still.send("alive")
      assert.strictEqual(yield* messageText(yield* next<MessageEvent>(still, "message")), "alive")
    }))

  it.live("a channel the server opens arrives as a channel event, then its open event, then its first message", () =>
    Effect.gen(function*() {
      const { url } = yield* listenChannels()
      const client = yield* connect(url)
      const order: Array<string> = []
      const arrived = Effect.promise(() =>
        new Promise<Socket>((resolve) => {
          client.onchannel = (e) => {
            const ws = e.channel
            order.push(`channel:${ws.label}:${ws.readyState}`)
            ws.binaryType = "arraybuffer"
            ws.onopen = () => order.push("open")
            ws.onmessage = (m) => {
              order.push(`message:${decode(new Uint8Array(m.data as ArrayBuffer))}`)
              resolve(ws)
            }
          }
        })
      )
      client.defaultChannel.send("cmd:push:news")
      const pushed = yield* arrived
      assert.deepStrictEqual(order, ["channel:news:1", "open", "message:welcome news"])
      assert.strictEqual(pushed.id % 2, 0, "the server allocates even ids")
      pushed.send("ping")
      assert.strictEqual(yield* messageText(yield* next<MessageEvent>(pushed, "message")), "ping")
    }))

  it.live("channel 0 is open from the start and exchanges messages", () =>
    Effect.gen(function*() {
      const { url } = yield* listenChannels()
      const client = yield* connect(url)
      const zero = client.defaultChannel
      assert.strictEqual(zero.id, 0)
      assert.strictEqual(zero.readyState, zero.OPEN)
      yield* next(zero, "open")
      zero.send("on zero")
      assert.strictEqual(yield* messageText(yield* next<MessageEvent>(zero, "message")), "on zero")
    }))

  it.live("the secondary handshake's 401 round runs with credentials from a function of the challenge", () =>
    Effect.gen(function*() {
      const { url, authRequests, connections } = yield* listenChannels({ token: "s3cret" })
      const challenges: Array<string | undefined> = []
      const client = yield* connect(url, {
        authorization: async (challenge) => {
          challenges.push(challenge)
          return "Bearer s3cret"
        }
      })
      assert.deepStrictEqual(authRequests, [undefined, "Bearer s3cret"])
      assert.deepStrictEqual(challenges, ["Bearer realm=\"plexus\""])
      assert.deepStrictEqual([...client.extensions], [])
      const ws = client.open("echo")
      yield* next(ws, "open")
      assert.strictEqual(connections[0]!.authorization, "Bearer s3cret")
      const refused = yield* Effect.flip(Effect.tryPromise(() => ChannelClient.connect(url)))
      assert.match(String(refused.cause), /AuthenticationFailed|credentials/)
    }))

  it.live("a message larger than the channel's window fails the channel with error then close 1009; the connection goes on", () =>
    Effect.gen(function*() {
      const { url, connections } = yield* listenChannels()
      const client = yield* connect(url)
      const ws = client.open("echo")
      yield* opened(ws)
      const seen = record(ws)
      const failed = next<ChannelSocket.ChannelErrorEvent>(ws, "error")
      const closing = next<ChannelSocket.ChannelCloseEvent>(ws, "close")
      ws.send(new Uint8Array(256 * 1024 + 1))
      const error = yield* failed
      assert.match(error.message, /exceeds the maximum/)
      const closed = yield* closing
      assert.strictEqual(closed.code, 1009)
      assert.isFalse(closed.wasClean)
      assert.deepStrictEqual(seen, ["error", "close:1009"])
      assert.isFalse(connections[0]!.received.some((r) => r.label === "echo"), "nothing of it was sent")
      client.defaultChannel.binaryType = "arraybuffer"
      client.defaultChannel.send("still up")
      assert.strictEqual(yield* messageText(yield* next<MessageEvent>(client.defaultChannel, "message")), "still up")
    }))

  it.live("a channel the server will not take fails with error then close 1006", () =>
    Effect.gen(function*() {
      const { url, connections } = yield* listenChannels({ channels: { drainTimeout: "5 seconds" } })
      const client = yield* connect(url)
      yield* opened(client.defaultChannel)
      yield* eventually("the server runs channels", () => connections[0]?.channels !== undefined)
      // The server goes away gracefully: it refuses new channels (GOING_AWAY),
      // or this side already knows and fails the open itself.
      yield* Effect.forkChild(connections[0]!.channels!.close)
      const ws = client.open("late")
      const seen = record(ws)
      const closed = yield* next<ChannelSocket.ChannelCloseEvent>(ws, "close")
      assert.strictEqual(closed.code, 1006)
      assert.isFalse(closed.wasClean)
      assert.deepStrictEqual(seen, ["error", "close:1006"])
      assert.strictEqual(ws.readyState, ws.CLOSED)
    }))

  it.live("with secondary: false the opening handshake alone negotiates, and channels work the same", () =>
    Effect.gen(function*() {
      const { url, connections } = yield* listenChannels({ listen: { protocols: ["app.v1"] } })
      const client = yield* connect(url, { secondary: false, protocols: ["app.v1"] })
      assert.strictEqual(client.protocol, "app.v1")
      const ws = client.open("echo")
      ws.binaryType = "arraybuffer"
      yield* opened(ws)
      ws.send("plain")
      assert.strictEqual(yield* messageText(yield* next<MessageEvent>(ws, "message")), "plain")
      assert.strictEqual(connections[0]!.protocol, "app.v1")
    }))

  it.live("close validates its code and reason as WebSocket does", () =>
    Effect.gen(function*() {
      const { url } = yield* listenChannels()
      const client = yield* connect(url)
      const ws = client.open("echo")
      yield* next(ws, "open")
      assert.throws(() => ws.close(1001), /neither 1000/)
      assert.throws(() => ws.close(4000, "x".repeat(124)), /longer than 123/)
      ws.close(1000)
      const closed = yield* next<ChannelSocket.ChannelCloseEvent>(ws, "close")
      assert.strictEqual(closed.code, 1000)
      ws.send("after close")
      assert.strictEqual(ws.bufferedAmount, "after close".length, "as WebSocket: counted, not sent")
    }))

  it.live("closing the connection ends every open channel with 1001 and the server sees the connection end", () =>
    Effect.gen(function*() {
      const { url, connections } = yield* listenChannels()
      const client = yield* Effect.promise(() => ChannelClient.connect(url))
      const a = client.open("echo")
      const b = client.open("echo")
      yield* opened(a)
      yield* opened(b)
      const codes: Array<number> = []
      for (const ws of [a, b, client.defaultChannel]) {
        ws.addEventListener("close", (e) => codes.push((e as ChannelSocket.ChannelCloseEvent).code))
      }
      const connectionClosed = next(client, "close")
      yield* Effect.promise(() => client.close())
      yield* connectionClosed
      assert.deepStrictEqual(codes, [1001, 1001, 1001])
      assert.strictEqual(client.readyState, ChannelClient.ChannelClient.CLOSED)
      const late = client.open("echo")
      const lateClose = yield* next<ChannelSocket.ChannelCloseEvent>(late, "close")
      assert.strictEqual(lateClose.code, 1006)
      yield* eventually("the server's channels end", () => connections[0]!.ended !== undefined)
    }))

  it.live("when the server goes away, open channels see error then close and the connection fires close", () =>
    Effect.gen(function*() {
      const { url, connections } = yield* listenChannels({ channels: { drainTimeout: "200 millis" } })
      const client = yield* Effect.promise(() => ChannelClient.connect(url))
      const ws = client.open("echo")
      yield* next(ws, "open")
      const seen = record(ws)
      const clientClosed = next<ChannelSocket.ChannelCloseEvent>(client, "close")
      yield* connections[0]!.channels!.close
      const event = yield* clientClosed
      assert.include([1000, 1001, 1006], event.code)
      assert.strictEqual(ws.readyState, ws.CLOSED)
      assert.strictEqual(seen.at(-1)!.startsWith("close:"), true)
    }))
})
