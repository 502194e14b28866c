/**
 * The browser client platform: the global `WebSocket` (also Node's built-in
 * one). It cannot send extension headers (plexus-channels goes through the
 * secondary handshake instead), cannot pause (the adapter bounds its queue
 * and fails with `BufferOverflow`), cannot abort (a reset is sent as close
 * code 4000), and has no `maxPayload` (the adapter checks each message on
 * arrival, after the browser buffered it, and closes with 1009).
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Socket from "effect/socket/Socket"
import { parseExtensions } from "../Negotiation.ts"
import { InvalidNegotiation, make as wsError } from "../WsError.ts"
import { Adapter, type Driver } from "./adapter.ts"
import type { Connect, Opened } from "./connector.ts"

/** The part of the DOM WebSocket this module uses. @internal */
export interface BrowserWebSocket {
  binaryType: string
  readonly readyState: number
  readonly protocol: string
  readonly extensions: string
  readonly bufferedAmount: number
  send(data: string | Uint8Array<ArrayBuffer>): void
  close(code?: number, reason?: string): void
  addEventListener(type: string, listener: (event: any) => void): void
  removeEventListener(type: string, listener: (event: any) => void): void
}

/** @internal */
export type BrowserWebSocketConstructor = new(url: string, protocols?: string | Array<string>) => BrowserWebSocket

const openError = (cause: unknown): Socket.SocketError =>
  new Socket.SocketError({ reason: new Socket.SocketOpenError({ kind: "Unknown", cause }) })

const driverOf = (ws: BrowserWebSocket): Driver => ({
  send: (data, done) => {
    ws.send(data as string | Uint8Array<ArrayBuffer>)
    done?.()
  },
  sendCallbacks: false,
  bufferedAmount: () => ws.bufferedAmount,
  close: (code, reason) => ws.close(code, reason),
  terminate: () => ws.close(4000, "reset"),
  pause: undefined,
  resume: undefined
})

/** A Connect over a DOM-style WebSocket constructor (default: the global one). @internal */
export const makeConnect = (ctor?: BrowserWebSocketConstructor | undefined): Connect => (request) =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(
      restore(Effect.callback<Opened, Socket.SocketError | InvalidNegotiationError>((resume) => {
        if (request.extensions.length > 0) {
          resume(Effect.fail(wsError(
            new InvalidNegotiation({
              field: "Sec-WebSocket-Extensions",
              detail: "a browser WebSocket cannot send extension offers; use the secondary handshake"
            })
          )))
          return
        }
        const Ctor = ctor ?? (globalThis as { WebSocket?: BrowserWebSocketConstructor }).WebSocket
        if (Ctor === undefined) {
          resume(Effect.fail(openError(new Error("no global WebSocket constructor"))))
          return
        }
        let ws: BrowserWebSocket
        try {
          ws = new Ctor(request.url, [...request.protocols])
          ws.binaryType = "arraybuffer"
        } catch (cause) {
          resume(Effect.fail(openError(cause)))
          return
        }
        let adapter: Adapter | undefined
        const onMessage = (event: { data: unknown }) => {
          const data = event.data
          adapter?.onMessage(
            data instanceof ArrayBuffer ? new Uint8Array(data) : typeof data === "string" ? data : new Uint8Array(0)
          )
        }
        const onCloseAfterOpen = (event: { code: number; reason: string }) => adapter?.onClose(event.code, event.reason)
        const onFailure = (event: unknown) => {
          ws.removeEventListener("open", onOpen)
          ws.removeEventListener("error", onFailure)
          ws.removeEventListener("close", onFailure)
          resume(Effect.fail(openError(event)))
        }
        const onOpen = () => {
          ws.removeEventListener("error", onFailure)
          ws.removeEventListener("close", onFailure)
          adapter = new Adapter(driverOf(ws), request.adapter)
          ws.addEventListener("message", onMessage)
          ws.addEventListener("close", onCloseAfterOpen)
          ws.addEventListener("error", () => {})
          const parsed = ws.extensions === "" ? [] : parseExtensions(ws.extensions)
          const all = parsed instanceof InvalidNegotiation ? [] : parsed
          resume(Effect.succeed({
            adapter,
            protocol: ws.protocol === "" ? undefined : ws.protocol,
            extensions: all.filter((e) => e.name !== "permessage-deflate"),
            deflate: all.some((e) => e.name === "permessage-deflate")
          }))
        }
        ws.addEventListener("open", onOpen)
        ws.addEventListener("error", onFailure)
        ws.addEventListener("close", onFailure)
        return Effect.sync(() => {
          ws.removeEventListener("open", onOpen)
          ws.removeEventListener("error", onFailure)
          ws.removeEventListener("close", onFailure)
          ws.close()
        })
      })),
      (opened) => Effect.as(Effect.addFinalizer(() => Effect.sync(() => opened.adapter.release())), opened)
    )
  )

type InvalidNegotiationError = ReturnType<typeof wsError>
