/**
 * The `ws` library as an adapter `Driver`: pause and resume reach the TCP
 * socket, send callbacks give write backpressure, and ws's own frame checks
 * (maxPayload on every frame header and on the inflated size) arrive as
 * typed errors.
 *
 * @internal
 */
import * as Socket from "effect/socket/Socket"
import type * as Net from "node:net"
import type WebSocket from "ws"
import { asReadError, make as wsError, PayloadTooLarge } from "../WsError.ts"
import { Adapter, type AdapterOptions, type Driver } from "./adapter.ts"

const OPEN = 1

/**
 * ws writes every message to the TCP socket as it is sent: one system call
 * per message. When the connection's socket is known, the first send of a
 * burst corks it and the uncork is queued with `process.nextTick`, so all
 * messages a fiber sends before it yields or waits leave in one `writev`.
 * Nothing is held past the current task: the uncork runs as soon as the
 * code that is sending returns to the event loop.
 */
const driverOf = (ws: WebSocket, socket: Net.Socket | undefined): Driver => {
  let corked = false
  const uncork = () => {
    corked = false
    socket!.uncork()
  }
  return {
    send: socket === undefined
      ? (data, done) => ws.send(data, done)
      : (data, done) => {
        if (!corked && ws.readyState === OPEN) {
          corked = true
          socket.cork()
          process.nextTick(uncork)
        }
        ws.send(data, done)
      },
    sendCallbacks: true,
    bufferedAmount: () => ws.bufferedAmount,
    close: (code, reason) => ws.close(code, reason),
    terminate: () => ws.terminate(),
    pause: () => ws.pause(),
    resume: () => ws.resume(),
    defer: (f) => {
      setImmediate(f)
    }
  }
}

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
 * from the network until a reader exists. `socket`, the connection's TCP
 * socket (the upgraded request's), lets sends be corked into one write.
 *
 * @internal
 */
export const adapterFromWs = (
  ws: WebSocket,
  maxPayload: number,
  options?: AdapterOptions,
  socket?: Net.Socket | undefined
): Adapter => {
  const adapter = new Adapter(driverOf(ws, socket), options)
  ws.on("message", (data: WebSocket.RawData) => {
    adapter.onMessage(data as Uint8Array)
  })
  ws.on("error", (error: Error) => adapter.onError(readFailure(error, maxPayload)))
  ws.on("close", (code: number, reason: Buffer) => adapter.onClose(code, reason.toString()))
  return adapter
}
