/**
 * Interop with the `ws` library as an outside peer: its client against our
 * server, our client against its server.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { Transport } from "@plexus/core"
import WebSocket, { WebSocketServer } from "ws"
import { NodeWs, Ws } from "../src/index.ts"
import { decode, text, within } from "./helpers.ts"

describe("interop with ws", () => {
  it.live("a plain ws client exchanges binary messages with our server and sees its sub-protocol choice", () =>
    Effect.gen(function*() {
      const server = yield* NodeWs.listen({ protocols: ["chat.v2", "chat.v1"] })
      const ws = new WebSocket(server.url, ["chat.v1", "chat.v2"])
      yield* Effect.addFinalizer(() => Effect.sync(() => ws.terminate()))
      const replies: Array<string> = []
      const gotTwo = Effect.callback<void>((resume) => {
        ws.on("message", (data: Buffer) => {
          replies.push(decode(data))
          if (replies.length === 2) resume(Effect.void)
        })
      })
      ws.on("open", () => {
        ws.send(text.encode("one"))
        ws.send(text.encode("two"))
      })
      const connection = yield* server.accept
      assert.strictEqual(connection.protocol, "chat.v2")
      const messages = yield* connection.messages
      const got = yield* messages.pull
      const all = [...got]
      if (all.length < 2) all.push(...(yield* messages.pull))
      yield* messages.sendAll(all.map((m) => text.encode(decode(m).toUpperCase())))
      yield* gotTwo.pipe(within("ws client reading the echo"))
      assert.deepStrictEqual(replies, ["ONE", "TWO"])
      assert.strictEqual(ws.protocol, "chat.v2")
    }))

  it.live("our client talks to a plain ws server: messages both ways, then the server's clean close ends our stream", () =>
    Effect.gen(function*() {
      const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: (offers) => offers.has("b") ? "b" : false })
      yield* Effect.addFinalizer(() => Effect.callback<void>((resume) => wss.close(() => resume(Effect.void))))
      yield* Effect.callback<void>((resume) => {
      wss.on("listening", () => resume(Effect.void))
    })
      const port = (wss.address() as { port: number }).port
      wss.on("connection", (ws) => {
        ws.on("message", (data: Buffer) => {
          if (decode(data) === "bye") ws.close(1000)
          else ws.send(Buffer.concat([data, data]))
        })
      })
      const connection = yield* Ws.dial({ url: `ws://127.0.0.1:${port}/`, protocols: ["a", "b"], connector: NodeWs.connector })
      assert.strictEqual(connection.protocol, "b")
      const messages = yield* connection.messages
      yield* messages.send(text.encode("ab"))
      assert.strictEqual(decode((yield* messages.pull)[0]!), "abab")
      yield* messages.send(text.encode("bye"))
      const end = yield* Effect.flip(messages.pull).pipe(within("stream end after the server's close"))
      assert.isTrue(end._tag === "Done" || Transport.isCleanClose(end), `ended with ${String(end)}`)
    }))
})
