/**
 * Encrypted channels over a real WebSocket: the server's secondary-handshake
 * authentication hook hands out key material, both ends use it as the key
 * of one key id, and an encrypted channel round-trips over the socket.
 */
import { Channels } from "@plexus/core"
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import { Negotiation, NodeWs, Ws } from "../src/index.ts"
import { decode, text, within } from "./helpers.ts"

const KEY_ID = 7

describe("Channels encryption over a WebSocket", () => {
  it.live("key material from the secondary handshake keys an encrypted channel both ways", () =>
    Effect.gen(function*() {
      const material = globalThis.crypto.getRandomValues(new Uint8Array(32))
      const server = yield* NodeWs.listen({
        protocols: ["app.v1"],
        channelExtensions: ["encryption"],
        secondary: {
          authenticate: (request) =>
            Effect.succeed(
              request.authorization === "Bearer token"
                ? { _tag: "Accept" as const, keyMaterial: material }
                : { _tag: "Challenge" as const, challenge: "Bearer" }
            )
        }
      })
      const client = yield* Ws.dial({
        url: server.url,
        protocols: ["app.v1"],
        channelExtensions: ["encryption"],
        secondary: { authorization: "Bearer token" }
      })
      const accepted = yield* server.accept.pipe(within("server accepts"))
      assert.deepStrictEqual([...client.keyMaterial!], [...material])

      const keysOf = (keyMaterial: Uint8Array | undefined) =>
        keyMaterial === undefined ? new Map<number, Uint8Array>() : new Map([[KEY_ID, keyMaterial]])
      const atClient = yield* Channels.make(yield* client.messages, {
        role: "client",
        extensions: Negotiation.channelsExtensions(client.negotiated),
        keys: keysOf(client.keyMaterial)
      })
      const atServer = yield* Channels.make(yield* accepted.messages, {
        role: "server",
        extensions: Negotiation.channelsExtensions(accepted.negotiated),
        keys: keysOf(accepted.keyMaterial)
      })

      const opening = yield* Effect.forkChild(atClient.open({ label: "secret", encryption: { keyId: KEY_ID } }))
      const incoming = yield* atServer.accept.pipe(within("channel accepted"))
      const outgoing = yield* Fiber.join(opening).pipe(within("channel opened"))
      assert.deepStrictEqual(incoming.encryption, { keyId: KEY_ID, suite: "AES-256-GCM" })

      const up = Array.from({ length: 50 }, (_, i) => `up ${i}`)
      yield* outgoing.sendAll(up.map((m) => text.encode(m)))
      const got: Array<string> = []
      while (got.length < up.length) for (const m of yield* incoming.pull.pipe(within("server reads"))) got.push(decode(m))
      assert.deepStrictEqual(got, up)

      yield* incoming.send(text.encode("down"))
      const [reply] = yield* outgoing.pull.pipe(within("client reads"))
      assert.strictEqual(decode(reply!), "down")
    }))
})
