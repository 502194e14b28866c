/**
 * The Node client platform: the `ws` library. Unlike a browser it can send
 * `Sec-WebSocket-Extensions` (plexus-channels is appended to ws's own
 * permessage-deflate offer just before the request goes out), enforces
 * `maxPayload` on frame headers before reading payloads, and pauses the TCP
 * socket when the reader lags.
 *
 * ws accepts no extension in the answer but permessage-deflate, so the
 * `upgrade` listener takes the answer's plexus entries out of the header
 * before ws checks it, after checking them itself against the offer.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Socket from "effect/socket/Socket"
import type * as Http from "node:http"
import type * as Net from "node:net"
import WebSocket from "ws"
import { checkProtocol, type Extension, formatExtensions, parseExtensions } from "../Negotiation.ts"
import { ExtensionNotOffered, HandshakeRejected, InvalidNegotiation, make as wsError, type WsError } from "../WsError.ts"
import type { Connect, Opened } from "./connector.ts"
import { adapterFromWs } from "./nodeDriver.ts"

const DEFLATE = "permessage-deflate"

const openError = (cause: unknown): Socket.SocketError =>
  new Socket.SocketError({ reason: new Socket.SocketOpenError({ kind: "Unknown", cause }) })

/** @internal */
export const connect: Connect = (request) =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(
      restore(Effect.callback<Opened, Socket.SocketError | WsError>((resume) => {
        let failure: WsError | undefined
        let lastError: Error | undefined
        let accepted: ReadonlyArray<Extension> = []
        let selected: string | undefined
        let socket: Net.Socket | undefined
        let ws: WebSocket
        const ours = request.extensions.length > 0 ? formatExtensions(request.extensions) : undefined
        try {
          ws = new WebSocket(request.url, [...request.protocols], {
            perMessageDeflate: request.deflate,
            maxPayload: request.maxPayload,
            followRedirects: false,
            ...(request.headers !== undefined ? { headers: { ...request.headers } } : {}),
            ...(ours !== undefined
              ? {
                finishRequest: (req: Http.ClientRequest) => {
                  const current = req.getHeader("sec-websocket-extensions")
                  req.setHeader("Sec-WebSocket-Extensions", typeof current === "string" ? `${current}, ${ours}` : ours)
                  req.end()
                }
              }
              : {})
          })
        } catch (cause) {
          resume(Effect.fail(openError(cause)))
          return
        }
        const abort = (error: WsError) => {
          failure ??= error
          ws.terminate()
        }
        ws.on("upgrade", (res: Http.IncomingMessage) => {
          socket = res.socket
          selected = res.headers["sec-websocket-protocol"]
          const protocolError = checkProtocol(selected, request.protocols, request.requireProtocol)
          if (protocolError !== undefined) return abort(wsError(protocolError))
          // ws fails an answer without a sub-protocol when some were offered;
          // the dial allows it, so ws is shown the first offer (the real answer is kept).
          if (selected === undefined && request.protocols.length > 0) {
            res.headers["sec-websocket-protocol"] = request.protocols[0]
          }
          const header = res.headers["sec-websocket-extensions"]
          if (header === undefined) return
          const parsed = parseExtensions(header)
          if (parsed instanceof InvalidNegotiation) return abort(wsError(parsed))
          const plexus: Array<Extension> = []
          const rest: Array<Extension> = []
          for (const e of parsed) {
            if (e.name === DEFLATE && request.deflate) rest.push(e)
            else if (request.extensions.some((o) => o.name === e.name)) plexus.push(e)
            else return abort(wsError(new ExtensionNotOffered({ extension: e.name })))
          }
          accepted = plexus
          if (rest.length === 0) delete res.headers["sec-websocket-extensions"]
          else res.headers["sec-websocket-extensions"] = formatExtensions(rest)
        })
        ws.on("unexpected-response", (_req: Http.ClientRequest, res: Http.IncomingMessage) => {
          res.resume()
          abort(wsError(new HandshakeRejected({ status: res.statusCode ?? 0, detail: res.statusMessage ?? "" })))
        })
        const onError = (error: Error) => {
          lastError = error
        }
        const onClose = () => {
          ws.off("open", onOpen)
          ws.off("error", onError)
          resume(Effect.fail(failure ?? openError(lastError ?? new Error("closed during the opening handshake"))))
        }
        const onOpen = () => {
          ws.off("error", onError)
          ws.off("close", onClose)
          const adapter = adapterFromWs(ws, request.maxPayload, request.adapter, socket)
          resume(Effect.succeed({
            adapter,
            protocol: selected === "" ? undefined : selected,
            extensions: accepted,
            deflate: ws.extensions.includes(DEFLATE)
          }))
        }
        ws.on("open", onOpen)
        ws.on("error", onError)
        ws.on("close", onClose)
        return Effect.sync(() => {
          ws.off("open", onOpen)
          ws.off("close", onClose)
          ws.on("error", () => {})
          ws.terminate()
        })
      })),
      (opened) => Effect.as(Effect.addFinalizer(() => Effect.sync(() => opened.adapter.release())), opened)
    )
  )
