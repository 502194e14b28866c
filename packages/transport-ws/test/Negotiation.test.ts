/**
 * Opening-handshake negotiation: the header grammar, the server's choices,
 * and the client's checks of the server's answer.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import type * as Http from "node:http"
import { WebSocketServer } from "ws"
import { Negotiation, NodeWs, WsError } from "../src/index.ts"

const fakeServer = (setup: (wss: WebSocketServer) => void, handleProtocols?: () => string | false) =>
  Effect.gen(function*() {
    const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, ...(handleProtocols ? { handleProtocols } : {}) })
    setup(wss)
    yield* Effect.addFinalizer(() => Effect.callback<void>((resume) => {
      for (const c of wss.clients) c.terminate()
      wss.close(() => resume(Effect.void))
    }))
    yield* Effect.callback<void>((resume) => {
      wss.on("listening", () => resume(Effect.void))
    })
    return `ws://127.0.0.1:${(wss.address() as { port: number }).port}/`
  })

const reasonOf = (u: unknown) => WsError.fromSocketError(u)?.reason

describe("negotiation grammar", () => {
  it("parses an extension list with plexus-channels and its quoted per-channel list", () => {
    const parsed = Negotiation.parseExtensions("permessage-deflate; client_max_window_bits, plexus-channels; ext=\"fanout,encryption\"")
    assert.isArray(parsed)
    const list = parsed as Array<Negotiation.Extension>
    assert.deepStrictEqual(list[0], { name: "permessage-deflate", params: [{ name: "client_max_window_bits", value: undefined }] })
    assert.deepStrictEqual(Negotiation.channelExtensionsOf(list), ["fanout", "encryption"])
    assert.strictEqual(Negotiation.formatExtensions([list[1]!]), "plexus-channels; ext=\"fanout,encryption\"")
  })

  it("rejects malformed extension headers with InvalidNegotiation instead of throwing", () => {
    for (const bad of ["", ";", "a;", "a; b=\"unterminated", "a,,b", "a; b=\x01", "plexus-channels; ext=\"fan out\"", "plexus-channels; other=1"]) {
      const parsed = Negotiation.parseExtensions(bad)
      const result = parsed instanceof WsError.InvalidNegotiation ? parsed : Negotiation.channelExtensionsOf(parsed)
      assert.instanceOf(result, WsError.InvalidNegotiation, `accepted ${JSON.stringify(bad)}`)
    }
  })

  it("refuses pathological headers in linear time: 4 KiB cap, 32 entries", () => {
    const start = performance.now()
    assert.instanceOf(Negotiation.parseExtensions("a;".repeat(100_000)), WsError.InvalidNegotiation)
    assert.instanceOf(Negotiation.parseExtensions("a, ".repeat(40)), WsError.InvalidNegotiation)
    assert.instanceOf(Negotiation.parseProtocols(`${"p,".repeat(33)}p`), WsError.InvalidNegotiation)
    assert.instanceOf(Negotiation.parseExtensions(`a; b="${"\\\"".repeat(3000)}"`), WsError.InvalidNegotiation)
    assert.isBelow(performance.now() - start, 50)
  })

  it("the server picks its first preference the client offered; a hook answer outside the offers counts as none", () => {
    assert.strictEqual(Negotiation.selectProtocol(["a", "b", "c"], ["c", "b"]), "c")
    assert.strictEqual(Negotiation.selectProtocol(["a"], ["c"]), undefined)
    assert.strictEqual(Negotiation.selectProtocol(["a", "b"], (offers) => offers[1]), "b")
    assert.strictEqual(Negotiation.selectProtocol(["a", "b"], () => "z"), undefined)
    assert.deepStrictEqual(Negotiation.selectChannelExtensions(["fanout", "encryption", "x"], ["encryption", "fanout"]), ["fanout", "encryption"])
  })
})

describe("negotiation in the opening handshake", () => {
  it.live("both sides see the server's preferred sub-protocol and the accepted subset of per-channel extensions", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ protocols: ["mux.v2", "mux.v1"], channelExtensions: ["fanout"] })
      const client = yield* NodeWs.dial({ url: server.url, protocols: ["mux.v1", "mux.v2"], channelExtensions: ["fanout", "encryption"] })
      const accepted = yield* server.accept
      assert.strictEqual(client.protocol, "mux.v2")
      assert.strictEqual(accepted.protocol, "mux.v2")
      assert.deepStrictEqual(client.negotiated.channelExtensions, ["fanout"])
      assert.deepStrictEqual(accepted.negotiated.channelExtensions, ["fanout"])
      assert.isFalse(client.negotiated.deflate)
    }))

  it.live("a protocol hook chooses among the offers; permessage-deflate is negotiated only when both sides enable it", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ protocols: (offers) => offers.find((p) => p.endsWith(".v1")), deflate: true })
      const plain = yield* NodeWs.dial({ url: server.url, protocols: ["x.v2", "x.v1"] })
      assert.strictEqual(plain.protocol, "x.v1")
      assert.isFalse(plain.negotiated.deflate)
      const deflated = yield* NodeWs.dial({ url: server.url, protocols: ["x.v1"], deflate: true, channelExtensions: ["fanout"] })
      assert.isTrue(deflated.negotiated.deflate)
      assert.strictEqual(deflated.negotiated.channelExtensions, undefined, "the server has no channel extension policy")
    }))

  it.live("a server requiring a sub-protocol answers 400 when it can accept none of the offers", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ protocols: ["a"] })
      const error = yield* Effect.flip(NodeWs.dial({ url: server.url, protocols: ["b"] }))
      const reason = reasonOf(error)
      assert.strictEqual(reason?._tag, "HandshakeRejected")
      assert.strictEqual((reason as WsError.HandshakeRejected).status, 400)
    }))

  it.live("the client rejects a sub-protocol it did not offer with ProtocolNotOffered", () =>
    Effect.gen(function*() {
      const url = yield* fakeServer(() => {}, () => "evil")
      const error = yield* Effect.flip(NodeWs.dial({ url, protocols: ["good"] }))
      const reason = reasonOf(error)
      assert.strictEqual(reason?._tag, "ProtocolNotOffered")
      assert.strictEqual((reason as WsError.ProtocolNotOffered).selected, "evil")
    }))

  it.live("the client rejects a server that selects no sub-protocol when one is required", () =>
    Effect.gen(function*() {
      const url = yield* fakeServer(() => {}, () => false)
      const error = yield* Effect.flip(NodeWs.dial({ url, protocols: ["good"] }))
      assert.strictEqual(reasonOf(error)?._tag, "ProtocolNotOffered")
      const relaxed = yield* NodeWs.dial({ url, protocols: ["good"], requireProtocol: false })
      assert.strictEqual(relaxed.protocol, undefined)
    }))

  it.live("the client rejects a per-channel extension it did not offer, and an extension it never asked for", () =>
    Effect.gen(function*() {
      const url = yield* fakeServer((wss) => {
        wss.on("headers", (headers, req: Http.IncomingMessage) => {
          headers.push(req.url === "/other"
            ? "Sec-WebSocket-Extensions: x-unknown"
            : "Sec-WebSocket-Extensions: plexus-channels; ext=\"fanout,evil\"")
        })
      })
      const error = yield* Effect.flip(NodeWs.dial({ url, channelExtensions: ["fanout"] }))
      assert.strictEqual(reasonOf(error)?._tag, "ExtensionNotOffered")
      assert.strictEqual((reasonOf(error) as WsError.ExtensionNotOffered).extension, "plexus-channels/evil")
      const other = yield* Effect.flip(NodeWs.dial({ url: `${url}other`, channelExtensions: ["fanout"] }))
      assert.strictEqual(reasonOf(other)?._tag, "ExtensionNotOffered")
    }))
})
