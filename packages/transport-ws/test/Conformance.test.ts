import { transportSuite } from "@plexus/core/test/fixtures/TransportSuite.ts"
import { NodeWs } from "../src/index.ts"
import * as Effect from "effect/Effect"
import { freePort, maxBufferedWhileStalled, wsHarness } from "./helpers.ts"

transportSuite("websocket (ws client, ws server)", wsHarness())
transportSuite("websocket, 16 KiB messages and a 64 KiB read high-water mark", wsHarness({
  listen: { highWaterMark: 64 * 1024, splitSize: 16 * 1024 },
  dial: { highWaterMark: 64 * 1024, splitSize: 16 * 1024 }
}))
// permessage-deflate is not run here: the suite's patterned bytes compress so well that
// the kernel buffers hold far more than the stalled-writer bound (deflate is covered in Negotiation.test.ts and Hostile.test.ts).
transportSuite("websocket, Node's built-in WebSocket as the client (the browser code path)", {
  connect: Effect.gen(function*() {
    const { Ws } = yield* Effect.promise(() => import("../src/browser.ts"))
    const server = yield* NodeWs.listen()
    const client = yield* Ws.dial({ url: server.url })
    const accepted = yield* server.accept
    return [client.socket, accepted.socket] as const
  }),
  connectFailure: Effect.flatMap(freePort, (port) =>
    Effect.flatMap(Effect.promise(() => import("../src/browser.ts")), ({ Ws }) => Ws.dial({ url: `ws://127.0.0.1:${port}/` }))),
  halfClose: false,
  // The built-in client cannot pause: its reader fails past maxBuffered (16 MiB) instead.
  maxBufferedWhileStalled: maxBufferedWhileStalled()
})
