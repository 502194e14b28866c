/**
 * Channels (docs/spec/channels.md) over a real WebSocket on loopback (and,
 * for the same cases, over a memory pair): our client and our server with
 * Channels at both ends, and the `ws` client as
 * an outside peer that speaks the channels wire by hand (2-byte channel id,
 * control messages built byte by byte) against our server, including
 * hostile input. Each hostile case ends the offending connection with a
 * typed reaction and leaves the server serving others.
 */
import { assert, describe, it } from "@effect/vitest"
import { ChannelError, Channels, Memory } from "@plexus/core"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import WebSocket from "ws"
import { Negotiation, NodeWs } from "../src/index.ts"
import { eventually, listenChannels } from "./channelServer.ts"
import { bytes, decode, text, within } from "./helpers.ts"

const Code = ChannelError.Code

/** Our client and our server, Channels at both ends of one WebSocket on loopback. */
const overWebSocket = (options: Omit<Channels.Options, "role">) =>
  Effect.gen(function*() {
    const server = yield* NodeWs.listen()
    const dialled = yield* NodeWs.dial({ url: server.url })
    const accepted = yield* server.accept
    const client = yield* Channels.make(yield* dialled.messages, { ...options, role: "client" })
    const serverSide = yield* Channels.make(yield* accepted.messages, { ...options, role: "server" })
    return { client, server: serverSide }
  })

/** The same over an in-memory message pair. */
const overMemory = (options: Omit<Channels.Options, "role">) =>
  Effect.gen(function*() {
    const link = yield* Memory.makeMessagePair()
    const client = yield* Channels.make(link.a, { ...options, role: "client" })
    const server = yield* Channels.make(link.b, { ...options, role: "server" })
    return { client, server }
  })

const connectionKinds = [
  ["a WebSocket on loopback", overWebSocket],
  ["a memory pair", overMemory]
] as const

/** Opens a channel at `client` while `server` accepts it (CREATE_ACK waits for the accept). */
const openAccepted = (client: Channels.Channels, server: Channels.Channels, label: string) =>
  Effect.all([client.open({ label }), server.accept], { concurrency: 2 })

const take = (channel: Channels.Channel, n: number) =>
  Effect.gen(function*() {
    const out: Array<Uint8Array> = []
    while (out.length < n) out.push(...(yield* channel.pull))
    return out
  })

// ---------------------------------------------------------------------------
// The raw peer: the `ws` client speaking the wire by hand
// ---------------------------------------------------------------------------

const u16 = (n: number) => [(n >> 8) & 0xff, n & 0xff]
const u32 = (n: number) => [(n >>> 24) & 0xff, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff]

/** A data message: channel id, then the payload (spec "Framing"). */
const dataMessage = (channel: number, payload: string | Uint8Array) =>
  new Uint8Array([...u16(channel), ...(typeof payload === "string" ? text.encode(payload) : payload)])

/** CREATE (spec "CREATE (0x01)"): no extra credit, a label, no extensions. */
const create = (requestId: number, channel: number, label: string) => {
  const l = text.encode(label)
  return new Uint8Array([0xff, 0xff, 0x01, 0x00, ...u32(requestId), ...u16(channel), ...u32(0), ...u32(0), l.length, ...l])
}

interface Control {
  readonly type: number
  readonly requestId: number
  readonly body: Uint8Array
}

const controlOf = (m: Uint8Array): Control | undefined =>
  m.length >= 8 && m[0] === 0xff && m[1] === 0xff
    ? { type: m[2]!, requestId: ((m[4]! << 24) >>> 0) + (m[5]! << 16) + (m[6]! << 8) + m[7]!, body: m.subarray(8) }
    : undefined

interface RawPeer {
  readonly ws: WebSocket
  readonly inbox: Array<Uint8Array>
  /** Waits for the first received message that `match` accepts. */
  readonly waitFor: (what: string, match: (m: Uint8Array) => boolean) => Effect.Effect<Uint8Array>
  /** Waits for the close; answers its code. */
  readonly closed: Effect.Effect<number>
  readonly send: (...messages: ReadonlyArray<Uint8Array | string>) => void
}

const rawPeer = (url: string, protocols: ReadonlyArray<string> = []) =>
  Effect.acquireRelease(
    Effect.callback<RawPeer>((resume) => {
      const ws = new WebSocket(url, [...protocols])
      const inbox: Array<Uint8Array> = []
      const listeners = new Set<() => void>()
      let closeCode: number | undefined
      ws.on("message", (data: Buffer) => {
        inbox.push(new Uint8Array(data))
        for (const l of listeners) l()
      })
      ws.on("close", (code: number) => {
        closeCode = code
        for (const l of listeners) l()
      })
      ws.on("error", () => {})
      const until = <A>(what: string, check: () => A | undefined): Effect.Effect<A> =>
        Effect.callback<A>((resume) => {
          const l = () => {
            const found = check()
            if (found !== undefined) {
              listeners.delete(l)
              resume(Effect.succeed(found))
            }
          }
          listeners.add(l)
          l()
          return Effect.sync(() => listeners.delete(l))
        }).pipe(within(what))
      ws.on("open", () =>
        resume(Effect.succeed({
          ws,
          inbox,
          waitFor: (what, match) => until(what, () => inbox.find(match)),
          closed: until("close", () => closeCode),
          send: (...messages) => {
            for (const m of messages) ws.send(m)
          }
        })))
    }).pipe(within("raw peer open")),
    (peer) => Effect.sync(() => peer.ws.terminate())
  )

const isGoAway = (code: number) => (m: Uint8Array) => {
  const c = controlOf(m)
  return c !== undefined && c.type === 0x41 && ((c.body[0]! << 8) | c.body[1]!) === code
}

/** A well-behaved raw peer still gets its channel-0 echo: the server is up. */
const stillServing = (url: string) =>
  Effect.scoped(Effect.gen(function*() {
    const peer = yield* rawPeer(url)
    peer.send(dataMessage(0, "still there?"))
    const echo = yield* peer.waitFor("channel 0 echo", (m) => m[0] === 0 && m[1] === 0)
    assert.strictEqual(decode(echo.subarray(2)), "still there?")
  }))

describe.each(connectionKinds)("Channels over %s: our client and our server", (_, makePair) => {
  const pair = (options: Omit<Channels.Options, "role"> = {}) => makePair(options)

  it.live("several channels carry their messages in order, concurrently", () =>
    Effect.gen(function*() {
      const { client, server } = yield* pair()
      const n = 5
      const perChannel = 300
      yield* Effect.forkScoped(Effect.forever(Effect.gen(function*() {
        const channel = yield* server.accept
        yield* Effect.forkScoped(Effect.forever(Effect.flatMap(channel.pull, (batch) => channel.sendAll(batch))))
      })))
      const results = yield* Effect.forEach(Array.from({ length: n }, (_, i) => i), (i) =>
        Effect.gen(function*() {
          const channel = yield* client.open({ label: `c${i}` })
          const sending = yield* Effect.forkChild(Effect.forEach(
            Array.from({ length: perChannel }, (_, k) => k),
            (k) => channel.send(text.encode(`${i}:${k}`)),
            { discard: true }
          ))
          const got = (yield* take(channel, perChannel)).map(decode)
          yield* Fiber.join(sending)
          return got
        }), { concurrency: "unbounded" }).pipe(within("echo on every channel", 30))
      results.forEach((got, i) => assert.deepStrictEqual(got, Array.from({ length: perChannel }, (_, k) => `${i}:${k}`)))
    }))

  it.live("a consumer that stops reading holds its own channel at the window while another channel flows", () =>
    Effect.gen(function*() {
      const { client, server } = yield* pair({ windowMessages: 8, windowBytes: 64 * 1024 })
      const [stalled, stalledAtServer] = yield* openAccepted(client, server, "stalled")
      const [lively, livelyAtServer] = yield* openAccepted(client, server, "lively")
      // Eight messages fill the window; the ninth waits for credit.
      for (let i = 0; i < 8; i++) yield* stalled.send(bytes(100, i))
      const ninth = yield* Effect.forkChild(stalled.send(bytes(100, 9)))
      yield* lively.send(text.encode("ping"))
      assert.strictEqual(decode((yield* take(livelyAtServer, 1))[0]!), "ping")
      yield* livelyAtServer.send(text.encode("pong"))
      assert.strictEqual(decode((yield* take(lively, 1))[0]!), "pong")
      assert.isUndefined(ninth.pollUnsafe(), "the ninth message is still waiting for credit")
      const first = yield* take(stalledAtServer, 9).pipe(within("the stalled consumer reads on"))
      assert.strictEqual(first.length, 9)
      yield* Fiber.join(ninth).pipe(within("the ninth send completes once credit came back"))
      const stats = yield* server.stats
      assert.isAtMost(stats.windowViolations ?? 0, 0)
    }))

  it.live("a migrated channel keeps its messages flowing both ways on the new id", () =>
    Effect.gen(function*() {
      const { client, server } = yield* pair()
      const [channel, remote] = yield* openAccepted(client, server, "moving")
      yield* channel.send(text.encode("before"))
      const oldId = channel.id
      const newId = yield* channel.migrate
      assert.notStrictEqual(newId, oldId)
      assert.strictEqual(newId % 2, 1)
      yield* channel.send(text.encode("after"))
      assert.deepStrictEqual((yield* take(remote, 2)).map(decode), ["before", "after"])
      yield* remote.send(text.encode("reply"))
      assert.deepStrictEqual((yield* take(channel, 1)).map(decode), ["reply"])
    }))

  it.live("after a merge a message sent on one member is received on every member", () =>
    Effect.gen(function*() {
      const { client, server } = yield* pair()
      const [a, remoteA] = yield* openAccepted(client, server, "a")
      const [b] = yield* openAccepted(client, server, "b")
      yield* client.merge(a, [b])
      yield* remoteA.send(text.encode("to the group"))
      assert.deepStrictEqual((yield* take(a, 1)).map(decode), ["to the group"])
      assert.deepStrictEqual((yield* take(b, 1)).map(decode), ["to the group"])
      yield* client.unmerge([b])
      yield* remoteA.send(text.encode("only a"))
      assert.deepStrictEqual((yield* take(a, 1)).map(decode), ["only a"])
    }))
})

describe("Channels over a WebSocket: the ws client speaking the wire by hand", () => {
  it.live("data on channel 0, a hand-built CREATE answered by CREATE_ACK, then data on the new channel", () =>
    Effect.gen(function*() {
      const { url, connections } = yield* listenChannels()
      const peer = yield* rawPeer(url)
      peer.send(dataMessage(0, "hi"))
      const zero = yield* peer.waitFor("echo on channel 0", (m) => m[0] === 0 && m[1] === 0)
      assert.strictEqual(decode(zero.subarray(2)), "hi")
      // Request 1, channel 3 (odd: the client's), label "chat", early data right behind it.
      peer.send(create(1, 3, "chat"), dataMessage(3, "early"))
      const ack = controlOf(yield* peer.waitFor("CREATE_ACK", (m) => controlOf(m)?.type === 0x81))!
      assert.strictEqual(ack.requestId, 1)
      assert.strictEqual((ack.body[0]! << 8) | ack.body[1]!, 3)
      assert.strictEqual(ack.body.length, 10, "channel, extra messages, extra bytes, no extensions")
      const early = yield* peer.waitFor("echo on channel 3", (m) => m[0] === 0 && m[1] === 3)
      assert.strictEqual(decode(early.subarray(2)), "early")
      peer.send(dataMessage(3, "more"))
      yield* peer.waitFor("second echo on channel 3", (m) => m[0] === 0 && m[1] === 3 && decode(m.subarray(2)) === "more")
      assert.deepStrictEqual(
        connections[0]!.received.map((r) => `${r.label}:${decode(r.data)}`),
        [":hi", "chat:early", "chat:more"]
      )
    }))

  it.live("data on an idle channel id ends the connection: GOAWAY PROTOCOL_ERROR, then close 1002", () =>
    Effect.gen(function*() {
      const { url, connections } = yield* listenChannels()
      const peer = yield* rawPeer(url)
      peer.send(dataMessage(9, "nobody"))
      yield* peer.waitFor("GOAWAY PROTOCOL_ERROR", isGoAway(Code.PROTOCOL_ERROR))
      assert.strictEqual(yield* peer.closed, 1002)
      assert.strictEqual(connections[0]!.ended, "ProtocolViolation")
      yield* stillServing(url)
    }))

  it.live("a runt (1-byte) message ends the connection: GOAWAY PROTOCOL_ERROR, then close 1002", () =>
    Effect.gen(function*() {
      const { url, connections } = yield* listenChannels()
      const peer = yield* rawPeer(url)
      peer.send(new Uint8Array([0x00]))
      yield* peer.waitFor("GOAWAY PROTOCOL_ERROR", isGoAway(Code.PROTOCOL_ERROR))
      assert.strictEqual(yield* peer.closed, 1002)
      assert.strictEqual(connections[0]!.ended, "ProtocolViolation")
      yield* stillServing(url)
    }))

  it.live("malformed control messages end the connection with GOAWAY PROTOCOL_ERROR, then close 1002: a cut CREATE, request id 0, a label running past the end", () =>
    Effect.gen(function*() {
      const { url, connections } = yield* listenChannels()
      const cases: ReadonlyArray<Uint8Array> = [
        create(1, 3, "chat").subarray(0, 12),
        create(0, 3, "chat"),
        (() => {
          const m = create(1, 3, "chat")
          m[18] = 200
          return m
        })()
      ]
      for (const [i, malformed] of cases.entries()) {
        const peer = yield* rawPeer(url)
        peer.send(malformed)
        yield* peer.waitFor("GOAWAY PROTOCOL_ERROR", isGoAway(Code.PROTOCOL_ERROR))
        assert.strictEqual(yield* peer.closed, 1002)
        assert.strictEqual(connections[i]!.ended, "ProtocolViolation")
      }
      yield* stillServing(url)
    }))

  it.live("a CREATE with the server's parity ends the connection with GOAWAY INVALID_ID, then close 1002", () =>
    Effect.gen(function*() {
      const { url } = yield* listenChannels()
      const peer = yield* rawPeer(url)
      peer.send(create(1, 4, "even"))
      yield* peer.waitFor("GOAWAY INVALID_ID", isGoAway(Code.INVALID_ID))
      assert.strictEqual(yield* peer.closed, 1002)
      yield* stillServing(url)
    }))

  it.live("a channel message above maxPayload closes that connection with 1009; the channels end with TransportClosed", () =>
    Effect.gen(function*() {
      const { url, connections } = yield* listenChannels({ listen: { maxPayload: 4096 } })
      const peer = yield* rawPeer(url)
      peer.send(dataMessage(0, bytes(4094)))
      yield* peer.waitFor("echo of a message of exactly maxPayload", (m) => m.length === 4096)
      peer.send(dataMessage(0, bytes(4095)))
      assert.strictEqual(yield* peer.closed, 1009)
      yield* eventually("the server's channels end", () => connections[0]?.ended !== undefined)
      assert.strictEqual(connections[0]!.ended, "TransportClosed")
      yield* stillServing(url)
    }))

  it.live("channel data sent while a 401 round of the secondary handshake is pending fails the connection with 400 and 1002", () =>
    Effect.gen(function*() {
      const { url, connections } = yield* listenChannels({ token: "t" })
      const peer = yield* rawPeer(url, [Negotiation.NEGOTIATE_PROTOCOL])
      peer.send("NEGOTIATE * PLEXUS/1\r\nProtocol: app\r\n\r\n", dataMessage(0, "too soon"))
      const answers = peer.inbox
      assert.strictEqual(yield* peer.closed, 1002)
      assert.deepStrictEqual(answers.map((a) => decode(a).split("\r\n")[0]), [
        "PLEXUS/1 401 Unauthorized",
        "PLEXUS/1 400 Bad Request"
      ])
      assert.strictEqual(connections.length, 0, "no connection reached Channels")
      // A client that authenticates is still served.
      yield* Effect.scoped(Effect.gen(function*() {
        const next = yield* rawPeer(url, [Negotiation.NEGOTIATE_PROTOCOL])
        next.send("NEGOTIATE * PLEXUS/1\r\nProtocol: app\r\nAuthorization: Bearer t\r\n\r\n")
        yield* next.waitFor("101", (m) => decode(m).startsWith("PLEXUS/1 101"))
        next.send(dataMessage(0, "still there?"))
        const echo = yield* next.waitFor("channel 0 echo", (m) => m[0] === 0 && m[1] === 0)
        assert.strictEqual(decode(echo.subarray(2)), "still there?")
      }))
    }))
})
