/**
 * The WebSocket server on `node:http` and the `ws` library (in `noServer`
 * mode, so every upgrade passes our checks first): the handshake deadline
 * from the first TCP byte, header count and size limits, the origin
 * allow-list (403), the connection cap (503), sub-protocol and
 * plexus-channels selection, then ws's upgrade, then (when the client
 * selected `plexus-negotiate.v1`) the secondary handshake. Connections
 * whose handshake completed queue, paused, for `run`, `accept` and
 * `connections`.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as NetAddress from "effect/net/NetAddress"
import * as Queue from "effect/Queue"
import * as Result from "effect/Result"
import type * as Scope from "effect/Scope"
import * as SocketServer from "effect/socket/SocketServer"
import { Acceptor } from "@plexus/core"
import * as Http from "node:http"
import type * as Net from "node:net"
import { WebSocketServer } from "ws"
import type WebSocket from "ws"
import {
  type ChannelExtensionPolicy,
  channelExtensionsOf,
  channelsExtension,
  formatExtensions,
  NEGOTIATE_PROTOCOL,
  parseExtensions,
  parseProtocols,
  type ProtocolPolicy,
  selectChannelExtensions,
  selectProtocol
} from "../Negotiation.ts"
import * as SecondaryHandshake from "../SecondaryHandshake.ts"
import { fromAdapter } from "../WsConnection.ts"
import { InvalidNegotiation } from "../WsError.ts"
import type { Connection, Stats, WsServer } from "../WsServer.ts"
import { type Adapter, sockets } from "./adapter.ts"
import { adapterFromWs } from "./nodeDriver.ts"

/** @internal */
export interface ListenOptions {
  readonly host?: string | undefined
  readonly port?: number | undefined
  readonly path?: string | undefined
  readonly protocols?: ProtocolPolicy | undefined
  readonly requireProtocol?: boolean | undefined
  readonly channelExtensions?: ChannelExtensionPolicy | undefined
  readonly deflate?: boolean | { readonly threshold?: number | undefined } | undefined
  readonly allowedOrigins?: ReadonlyArray<string> | ((origin: string | undefined) => boolean) | undefined
  readonly maxPayload?: number | undefined
  readonly handshakeTimeout?: Duration.Input | undefined
  readonly maxConnections?: number | undefined
  readonly maxHeaderSize?: number | undefined
  readonly maxHeaderCount?: number | undefined
  readonly highWaterMark?: number | undefined
  readonly writeHighWaterMark?: number | undefined
  readonly splitSize?: number | undefined
  readonly secondary?:
    | Omit<SecondaryHandshake.ServerOptions, "protocols" | "channelExtensions" | "requireProtocol"> & {
      /**
       * Refuse (401, before upgrading) a client that does not select the
       * negotiation sub-protocol. Default: true when `authenticate` is set,
       * so the authentication hook cannot be bypassed by skipping it.
       */
      readonly required?: boolean | undefined
    }
    | boolean
    | undefined
}

/** @internal */
export const DEFAULT_MAX_HEADER_SIZE = 8 * 1024
/** @internal */
export const DEFAULT_MAX_HEADER_COUNT = 64

const openError = (cause: unknown) =>
  new SocketServer.SocketServerError({ reason: new SocketServer.SocketServerOpenError({ cause }) })

const STATUS_TEXT: Readonly<Record<number, string>> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  431: "Request Header Fields Too Large",
  503: "Service Unavailable"
}

interface Selection {
  readonly protocol: string | undefined
  readonly channelExtensions: ReadonlyArray<string> | undefined
  readonly negotiate: boolean
}

/** @internal */
export const listen = (options: ListenOptions): Effect.Effect<WsServer["Service"], SocketServer.SocketServerError, Scope.Scope> =>
  Effect.gen(function*() {
    const maxPayload = options.maxPayload ?? 1024 * 1024
    const deadlineMs = Duration.toMillis(Duration.fromInputUnsafe(options.handshakeTimeout ?? Duration.seconds(5)))
    const maxHeaderCount = options.maxHeaderCount ?? DEFAULT_MAX_HEADER_COUNT
    const requireProtocol = options.requireProtocol ?? options.protocols !== undefined
    const secondary = options.secondary === undefined || options.secondary === false
      ? undefined
      : {
        ...(options.secondary === true ? {} : options.secondary),
        protocols: options.protocols,
        channelExtensions: options.channelExtensions,
        requireProtocol
      }
    const secondaryRequired = typeof options.secondary === "object" &&
      (options.secondary.required ?? options.secondary.authenticate !== undefined)
    const allowed = options.allowedOrigins
    const originAllowed = allowed === undefined
      ? () => true
      : typeof allowed === "function"
      ? allowed
      : (origin: string | undefined) => origin === undefined || allowed.includes(origin)
    const adapterOptions = { highWaterMark: options.highWaterMark, writeHighWaterMark: options.writeHighWaterMark }

    const pending = yield* Queue.unbounded<Connection, Cause.Done>()
    const live = new Set<Adapter>()
    const raw = new Map<Net.Socket, ReturnType<typeof setTimeout>>()
    const handshakes = new Set<Fiber.Fiber<unknown, unknown>>()
    const selections = new WeakMap<Http.IncomingMessage, Selection>()
    let upgrading = 0
    let closed = false
    const counts = { accepted: 0, rejectedOrigin: 0, refused: 0, badRequests: 0, timedOut: 0, secondaryFailed: 0 }

    const http = Http.createServer({ maxHeaderSize: options.maxHeaderSize ?? DEFAULT_MAX_HEADER_SIZE })
    // node's parser fails a head with more lines than this (HPE_HEADER_OVERFLOW, like an oversized one).
    http.maxHeadersCount = maxHeaderCount
    const wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      maxPayload,
      perMessageDeflate: options.deflate === undefined || options.deflate === false
        ? false
        : { threshold: options.deflate === true ? 1024 : options.deflate.threshold ?? 1024 },
      handleProtocols: (_offers: Set<string>, req: Http.IncomingMessage) => selections.get(req)?.protocol ?? false
    })
    wss.on("headers", (headers: Array<string>, req: Http.IncomingMessage) => {
      const channels = selections.get(req)?.channelExtensions
      if (channels !== undefined) {
        headers.push(`Sec-WebSocket-Extensions: ${formatExtensions([channelsExtension(channels)])}`)
      }
    })

    const clearDeadline = (socket: Net.Socket) => {
      const timer = raw.get(socket)
      if (timer !== undefined) clearTimeout(timer)
      raw.set(socket, undefined as never)
    }

    http.on("connection", (socket: Net.Socket) => {
      if (closed) {
        socket.destroy()
        return
      }
      const timer = setTimeout(() => {
        counts.timedOut++
        socket.destroy()
      }, deadlineMs)
      raw.set(socket, timer)
      socket.once("close", () => {
        const t = raw.get(socket)
        if (t !== undefined) clearTimeout(t)
        raw.delete(socket)
      })
    })
    // Oversized heads, too many header lines, malformed requests.
    http.on("clientError", (error: Error, socket: Net.Socket) => {
      counts.badRequests++
      const overflow = (error as { code?: unknown }).code === "HPE_HEADER_OVERFLOW"
      if (socket.writable) {
        socket.end(overflow
          ? "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n"
          : "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
        socket.once("finish", () => socket.destroy())
      } else socket.destroy()
    })
    http.on("request", (_req: Http.IncomingMessage, res: Http.ServerResponse) => {
      counts.badRequests++
      res.writeHead(426, { Connection: "close", Upgrade: "websocket", "Content-Length": "0" })
      res.end()
    })

    const enqueue = (adapter: Adapter, req: Http.IncomingMessage, outcome: SecondaryHandshake.Outcome) => {
      clearDeadline(req.socket)
      if (closed) return adapter.release()
      counts.accepted++
      const connection: Connection = {
        ...fromAdapter(adapter, sockets(adapter, options.splitSize), outcome.negotiated, {
          secondary: selections.get(req)?.negotiate ?? false,
          keyMaterial: outcome.keyMaterial
        }),
        remoteAddress: req.socket.remoteAddress ?? "",
        remotePort: req.socket.remotePort ?? 0,
        origin: req.headers.origin,
        path: req.url ?? "/",
        authorization: outcome.authorization
      }
      Queue.offerUnsafe(pending, connection)
    }

    const onUpgraded = (ws: WebSocket, req: Http.IncomingMessage, socket: Net.Socket, selection: Selection) => {
      const adapter = adapterFromWs(ws, maxPayload, adapterOptions, socket)
      live.add(adapter)
      ws.once("close", () => live.delete(adapter))
      if (closed) return adapter.release()
      if (selection.negotiate && secondary !== undefined) {
        const fiber = Effect.runFork(SecondaryHandshake.serve(adapter, secondary).pipe(
          Effect.matchEffect({
            onFailure: () =>
              Effect.sync(() => {
                counts.secondaryFailed++
                adapter.release()
              }),
            onSuccess: (outcome) => Effect.sync(() => enqueue(adapter, req, outcome))
          })
        ))
        handshakes.add(fiber)
        fiber.addObserver(() => handshakes.delete(fiber))
        return
      }
      enqueue(adapter, req, {
        negotiated: {
          protocol: selection.protocol,
          channelExtensions: selection.channelExtensions,
          deflate: ws.extensions.includes("permessage-deflate")
        },
        keyMaterial: undefined,
        authorization: undefined
      })
    }

    http.on("upgrade", (req: Http.IncomingMessage, socket: Net.Socket, head: Buffer) => {
      if (closed) return socket.destroy()
      const reject = (status: number, detail: string) => {
        socket.end(
          `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? ""}\r\nConnection: close\r\nContent-Type: text/plain\r\n` +
            `Content-Length: ${Buffer.byteLength(detail)}\r\n\r\n${detail}`
        )
        socket.once("finish", () => socket.destroy())
      }
      const bad = (status: number, detail: string) => {
        counts.badRequests++
        reject(status, detail)
      }
      if (options.path !== undefined) {
        const url = req.url ?? "/"
        const q = url.indexOf("?")
        if ((q === -1 ? url : url.slice(0, q)) !== options.path) return bad(404, "no WebSocket endpoint here")
      }
      if (req.rawHeaders.length / 2 > maxHeaderCount) return bad(431, `more than ${maxHeaderCount} headers`)
      if (!originAllowed(req.headers.origin)) {
        counts.rejectedOrigin++
        return reject(403, "origin not allowed")
      }
      if (options.maxConnections !== undefined && live.size + upgrading >= options.maxConnections) {
        counts.refused++
        return reject(503, "connection limit reached")
      }
      const protocolHeader = req.headers["sec-websocket-protocol"]
      const offered = protocolHeader === undefined ? [] : parseProtocols(protocolHeader)
      if (offered instanceof InvalidNegotiation) return bad(400, offered.message)
      const negotiate = secondary !== undefined && offered.includes(NEGOTIATE_PROTOCOL)
      if (!negotiate && secondaryRequired) {
        counts.secondaryFailed++
        return reject(401, `authentication required: select the ${NEGOTIATE_PROTOCOL} sub-protocol`)
      }
      const protocol = negotiate
        ? NEGOTIATE_PROTOCOL
        : options.protocols === undefined
        ? undefined
        : selectProtocol(offered.filter((p) => p !== NEGOTIATE_PROTOCOL), options.protocols)
      if (protocol === undefined && offered.length > 0 && requireProtocol) {
        return bad(400, "no acceptable sub-protocol")
      }
      let channelExtensions: ReadonlyArray<string> | undefined
      const extensionHeader = req.headers["sec-websocket-extensions"]
      if (extensionHeader !== undefined) {
        const extensions = parseExtensions(extensionHeader)
        if (extensions instanceof InvalidNegotiation) return bad(400, extensions.message)
        const channels = channelExtensionsOf(extensions)
        if (channels instanceof InvalidNegotiation) return bad(400, channels.message)
        if (channels !== undefined && !negotiate && options.channelExtensions !== undefined) {
          channelExtensions = selectChannelExtensions(channels, options.channelExtensions)
        }
        // ws reads only permessage-deflate, and only from a header it can parse.
        const deflate = extensions.filter((e) => e.name === "permessage-deflate")
        if (deflate.length === 0) delete req.headers["sec-websocket-extensions"]
        else req.headers["sec-websocket-extensions"] = formatExtensions(deflate)
      }
      selections.set(req, { protocol, channelExtensions, negotiate })
      upgrading++
      let counted = true
      const done = () => {
        if (counted) {
          counted = false
          upgrading--
        }
      }
      socket.once("close", done)
      wss.handleUpgrade(req, socket, head, (ws) => {
        done()
        socket.off("close", done)
        onUpgraded(ws, req, socket, selections.get(req)!)
      })
    })

    yield* Effect.addFinalizer(() =>
      Effect.flatMap(Queue.clear(pending), (waiting) =>
        Effect.andThen(
          Fiber.interruptAll(handshakes),
          Effect.callback<void>((resume) => {
            closed = true
            Queue.endUnsafe(pending)
            for (const c of waiting) Effect.runSync(c.close)
            for (const adapter of live) adapter.release()
            for (const [socket, timer] of raw) {
              if (timer !== undefined) socket.destroy()
            }
            const force = setTimeout(() => {
              for (const socket of raw.keys()) socket.destroy()
            }, 1_000)
            http.close(() => {
              clearTimeout(force)
              resume(Effect.void)
            })
          })
        ))
    )

    yield* Effect.callback<void, SocketServer.SocketServerError>((resume) => {
      const onError = (cause: Error) => resume(Effect.fail(openError(cause)))
      http.once("error", onError)
      http.listen({ host: options.host ?? "127.0.0.1", port: options.port ?? 0 }, () => {
        http.off("error", onError)
        resume(Effect.void)
      })
    })
    http.on("error", () => {})

    const bound = http.address() as Net.AddressInfo
    const address = NetAddress.inetAddressFromIpString(bound.address, bound.port)
    if (Result.isFailure(address)) return yield* Effect.fail(openError(address.failure))

    const { run, accept, connections } = Acceptor.fromQueue(pending, "WebSocket")

    const host = bound.family === "IPv6" ? `[${bound.address}]` : bound.address
    return {
      address: address.success,
      port: bound.port,
      url: `ws://${host}:${bound.port}${options.path ?? "/"}`,
      run,
      accept,
      connections,
      stats: Effect.sync((): Stats => ({ ...counts, open: live.size }))
    }
  })
