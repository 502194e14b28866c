/**
 * The secondary handshake (docs/spec/handshake.md): our client and server
 * together, and a raw `ws` client or server playing a hostile peer.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import WebSocket, { WebSocketServer } from "ws"
import { Negotiation, NodeWs, Ws, WsError } from "../src/index.ts"
import { decode, text, within } from "./helpers.ts"

const NEGOTIATE = Negotiation.NEGOTIATE_PROTOCOL
const request = (lines: ReadonlyArray<string>) => ["NEGOTIATE * PLEXUS/1", ...lines, "", ""].join("\r\n")

/** A raw ws client that selected plexus-negotiate.v1: sends `messages` in order, collects answers until close. */
const rawPeer = (url: string, messages: ReadonlyArray<string | Uint8Array>) =>
  Effect.callback<{ readonly answers: Array<string>; readonly code: number }>((resume) => {
    const ws = new WebSocket(url, [NEGOTIATE])
    const answers: Array<string> = []
    ws.on("open", () => {
      for (const m of messages) ws.send(m)
    })
    ws.on("message", (data: Buffer) => answers.push(decode(data)))
    ws.on("close", (code: number) => resume(Effect.succeed({ answers, code })))
    ws.on("error", () => {})
    return Effect.sync(() => ws.terminate())
  }).pipe(within("raw peer until close"))

const reasonOf = (u: unknown) => WsError.fromSocketError(u)?.reason

describe("secondary handshake", () => {
  it.live("a 401 then credentials then 101 round negotiates protocol and extensions and carries key material", () =>
    Effect.gen(function*() {
      const seen: Array<string | undefined> = []
      const server = yield* NodeWs.listen({
        protocols: ["chat.v2", "chat.v1"],
        channelExtensions: ["encryption"],
        secondary: {
          authenticate: (req) =>
            Effect.sync(() => {
              seen.push(req.authorization)
              return req.authorization === "Bearer secret"
                ? { _tag: "Accept" as const, keyMaterial: new Uint8Array([1, 2, 3]) }
                : { _tag: "Challenge" as const, challenge: "Bearer realm=\"plexus\"" }
            })
        }
      })
      const challenges: Array<string | undefined> = []
      const client = yield* Ws.dial({
        url: server.url,
        protocols: ["chat.v1", "chat.v2"],
        channelExtensions: ["fanout", "encryption"],
        secondary: {
          authorization: (challenge) => Effect.sync(() => {
            challenges.push(challenge)
            return "Bearer secret"
          })
        }
      })
      const accepted = yield* server.accept
      assert.deepStrictEqual(seen, [undefined, "Bearer secret"])
      assert.deepStrictEqual(challenges, ["Bearer realm=\"plexus\""])
      for (const side of [client, accepted]) {
        assert.isTrue(side.secondary)
        assert.strictEqual(side.protocol, "chat.v2")
        assert.deepStrictEqual(side.negotiated.channelExtensions, ["encryption"])
        assert.deepStrictEqual([...side.keyMaterial!], [1, 2, 3])
      }
      assert.strictEqual(accepted.authorization, "Bearer secret")
      // Application data flows once the handshake is done, in both directions.
      const a = yield* client.messages
      const b = yield* accepted.messages
      yield* a.send(text.encode("hello"))
      assert.strictEqual(decode((yield* b.pull)[0]!), "hello")
      yield* b.send(text.encode("back"))
      assert.strictEqual(decode((yield* a.pull)[0]!), "back")
    }))

  it.live("data the server sends right after its 101 reaches the client's application, not the handshake", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ protocols: ["p"], secondary: true })
      yield* Effect.forkScoped(server.run((socket) =>
        Effect.flatMap(socket.writer, (w) => Effect.andThen(w.write(text.encode("first")), Effect.never))
      ))
      const client = yield* Ws.dial({ url: server.url, protocols: ["p"], secondary: true })
      const messages = yield* client.messages
      assert.strictEqual(decode((yield* messages.pull.pipe(within("first message")))[0]!), "first")
    }))

  it.live("the client rejects a 101 naming a protocol or an extension it did not offer", () =>
    Effect.gen(function*() {
      const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 })
      yield* Effect.addFinalizer(() => Effect.callback<void>((resume) => {
        for (const c of wss.clients) c.terminate()
        wss.close(() => resume(Effect.void))
      }))
      yield* Effect.callback<void>((resume) => {
      wss.on("listening", () => resume(Effect.void))
    })
      wss.on("connection", (ws, req) => {
        ws.on("message", () => {
          ws.send(req.url === "/ext"
            ? "PLEXUS/1 101 Switching Protocols\r\nProtocol: good\r\nExtensions: plexus-channels; ext=\"evil\"\r\n\r\n"
            : "PLEXUS/1 101 Switching Protocols\r\nProtocol: evil\r\n\r\n")
        })
      })
      const url = `ws://127.0.0.1:${(wss.address() as { port: number }).port}`
      const protocol = yield* Effect.flip(Ws.dial({ url: `${url}/`, protocols: ["good"], secondary: true }))
      assert.strictEqual(reasonOf(protocol)?._tag, "ProtocolNotOffered")
      const extension = yield* Effect.flip(
        Ws.dial({ url: `${url}/ext`, protocols: ["good"], channelExtensions: ["fanout"], secondary: true })
      )
      assert.strictEqual(reasonOf(extension)?._tag, "ExtensionNotOffered")
    }))

  it.live("a client without credentials, or with rejected ones after its one retry, fails with AuthenticationFailed", () =>
    Effect.gen(function*() {
      let requests = 0
      const server = yield* NodeWs.listen({
        protocols: ["p"],
        secondary: { authenticate: () => Effect.sync(() => (requests++, { _tag: "Challenge" as const })) }
      })
      const none = yield* Effect.flip(Ws.dial({ url: server.url, protocols: ["p"], secondary: true }))
      assert.strictEqual(reasonOf(none)?._tag, "AuthenticationFailed")
      assert.strictEqual(requests, 1)
      const wrong = yield* Effect.flip(Ws.dial({ url: server.url, protocols: ["p"], secondary: { authorization: "Bearer wrong" } }))
      const reason = reasonOf(wrong) as WsError.AuthenticationFailed
      assert.strictEqual(reason._tag, "AuthenticationFailed")
      assert.strictEqual(reason.attempts, 2)
      assert.strictEqual(requests, 3)
    }))

  it.live("a server with an authentication hook refuses, before upgrading, a client that skips the secondary handshake", () =>
    Effect.gen(function*() {
      let requests = 0
      const server = yield* NodeWs.listen({
        protocols: ["p"],
        secondary: { authenticate: () => Effect.sync(() => (requests++, { _tag: "Accept" as const })) }
      })
      const status = yield* Effect.callback<number>((resume) => {
        const ws = new WebSocket(server.url, ["p"])
        ws.on("unexpected-response", (_req, res) => {
          resume(Effect.succeed(res.statusCode ?? 0))
          ws.terminate()
        })
        ws.on("open", () => resume(Effect.succeed(101)))
        ws.on("error", () => {})
        return Effect.sync(() => ws.terminate())
      }).pipe(within("plain client answered"))
      assert.strictEqual(status, 401)
      // Our own client, dialling without the secondary handshake, fails the same way.
      yield* Effect.flip(Ws.dial({ url: server.url, protocols: ["p"] }))
      assert.strictEqual(requests, 0)
      assert.isAtLeast((yield* server.stats).secondaryFailed, 2)
      // With the handshake, the same server accepts.
      const client = yield* Ws.dial({ url: server.url, protocols: ["p"], secondary: true })
      assert.isTrue(client.secondary)
      assert.strictEqual(requests, 1)
    }))

  it.live("a server whose secondary handshake is optional still serves a plain client", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({
        protocols: ["p"],
        secondary: { required: false, authenticate: () => Effect.succeed({ _tag: "Accept" as const }) }
      })
      const client = yield* Ws.dial({ url: server.url, protocols: ["p"] })
      assert.isFalse(client.secondary)
      assert.strictEqual(client.protocol, "p")
    }))

  it.live("the attempts cap ends endless retries with 403 and close 1008", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({
        protocols: ["p"],
        secondary: { maxAttempts: 3, authenticate: () => Effect.succeed({ _tag: "Challenge" as const }) }
      })
      const req = request(["Protocol: p", "Authorization: Bearer guess"])
      const { answers, code } = yield* rawPeer(server.url, [req, req, req, req, req])
      assert.deepStrictEqual(answers.map((a) => a.split("\r\n")[0]), [
        "PLEXUS/1 401 Unauthorized",
        "PLEXUS/1 401 Unauthorized",
        "PLEXUS/1 403 Forbidden"
      ])
      assert.strictEqual(code, 1008)
      assert.strictEqual((yield* server.stats).secondaryFailed, 1)
    }))

  it.live("header abuse is answered 400 and closed 1002: oversized, too many header lines, garbage, not UTF-8", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ protocols: ["p"], secondary: true })
      const cases: ReadonlyArray<string | Uint8Array> = [
        request(["Protocol: p", `X-Pad: ${"a".repeat(9000)}`]),
        request(["Protocol: p", ...Array.from({ length: 40 }, (_, i) => `X-${i}: y`)]),
        "GET / HTTP/1.1\r\n\r\n",
        request(["Protocol p"]),
        request(["Protocol: p,,q"]),
        new Uint8Array([0xff, 0xfe, 0x0d, 0x0a, 0x0d, 0x0a])
      ]
      for (const abuse of cases) {
        const { answers, code } = yield* rawPeer(server.url, [abuse])
        assert.match(answers[0] ?? "", /^PLEXUS\/1 400 /)
        assert.strictEqual(code, 1002)
      }
      assert.strictEqual((yield* server.stats).accepted, 0)
    }))

  it.live("application data before the handshake completes fails the connection with 400 and close 1002", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ protocols: ["p"], secondary: true })
      const { answers, code } = yield* rawPeer(server.url, [new Uint8Array([1, 2, 3]), request(["Protocol: p"])])
      assert.strictEqual(answers.length, 1)
      assert.match(answers[0]!, /^PLEXUS\/1 400 /)
      assert.strictEqual(code, 1002)
    }))

  it.live("a client that never sends its request is dropped at the handshake deadline", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ protocols: ["p"], secondary: true, handshakeTimeout: "300 millis" })
      const started = Date.now()
      const { answers } = yield* rawPeer(server.url, [])
      assert.strictEqual(answers.length, 0)
      assert.isBelow(Date.now() - started, 2000)
      const stats = yield* server.stats
      assert.strictEqual(stats.timedOut, 1)
      assert.strictEqual(stats.accepted, 0)
    }))

  it.live("the client's deadline covers the secondary handshake: a server that never answers fails with HandshakeTimeout", () =>
    Effect.gen(function*() {
      const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 })
      yield* Effect.addFinalizer(() => Effect.callback<void>((resume) => {
        for (const c of wss.clients) c.terminate()
        wss.close(() => resume(Effect.void))
      }))
      yield* Effect.callback<void>((resume) => {
      wss.on("listening", () => resume(Effect.void))
    })
      const url = `ws://127.0.0.1:${(wss.address() as { port: number }).port}/`
      const error = yield* Effect.flip(Ws.dial({ url, protocols: ["p"], secondary: true, handshakeTimeout: "300 millis" }))
      assert.strictEqual(reasonOf(error)?._tag, "HandshakeTimeout")
    }))
})
