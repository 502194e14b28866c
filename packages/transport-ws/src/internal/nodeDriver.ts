/**
 * The `ws` library as an adapter `Driver`: pause and resume reach the TCP
 * socket, send callbacks give write backpressure, and ws's own frame checks
 * (maxPayload on every frame header and on the inflated size) arrive as
 * typed errors.
 *
 * @internal
 */
import * as Socket from "effect/socket/Socket"
import type WebSocket from "ws"
import { asReadError, make as wsError, PayloadTooLarge } from "../WsError.ts"
import { Adapter, type AdapterOptions, type Driver } from "./adapter.ts"

const driverOf = (ws: WebSocket): Driver => ({
  send: (data, done) => ws.send(data, done),
  sendCallbacks: true,
  bufferedAmount: () => ws.bufferedAmount,
  close: (code, reason) => ws.close(code, reason),
  terminate: () => ws.terminate(),
  pause: () => ws.pause(),
  resume: () => ws.resume()
})

/** Maps an error event of ws to the reader's failure. @internal */
export const readFailure = (error: Error, maxPayload: number): Socket.SocketError => {
  const code = (error as { code?: unknown }).code
  if (code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH") {
    return asReadError(wsError(new PayloadTooLarge({ max: maxPayload, closeCode: 1009 })))
  }
  return new Socket.SocketError({ reason: new Socket.SocketReadError({ cause: error }) })
}

/**
 * Wraps an open ws WebSocket. The adapter starts paused: nothing is read
 * from the network until a reader exists.
 *
 * @internal
 */
export const adapterFromWs = (ws: WebSocket, maxPayload: number, options?: AdapterOptions): Adapter => {
  const adapter = new Adapter(driverOf(ws), options)
  ws.on("message", (data: WebSocket.RawData) => {
    adapter.onMessage(data as Uint8Array)
  })
  ws.on("error", (error: Error) => adapter.onError(readFailure(error, maxPayload)))
  ws.on("close", (code: number, reason: Buffer) => adapter.onClose(code, reason.toString()))
  return adapter
}
