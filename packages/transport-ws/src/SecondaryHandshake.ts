/**
 * The secondary handshake (docs/spec/handshake.md, "Secondary handshake"):
 * negotiation inside an open WebSocket, for clients that cannot send
 * extension headers (browsers). The client selects `plexus-negotiate.v1`
 * in the opening handshake, then sends a request naming the real
 * sub-protocols, extensions and optional credentials; the server answers
 * `101` (accepted, with its choices) or `401` (send credentials), and the
 * client may retry with credentials.
 *
 * The one thing to know: no application message may cross the socket
 * before the `101`. A server reads exactly one message per attempt, and
 * anything that is not a request fails the connection (close 1002).
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import type * as Socket from "effect/socket/Socket"
import type { Adapter } from "./internal/adapter.ts"
import * as Text from "./internal/handshakeText.ts"
import {
  type ChannelExtensionPolicy,
  channelExtensionsOf,
  channelsExtension,
  checkChannelExtensions,
  checkProtocol,
  formatExtensions,
  type Negotiated,
  parseExtensions,
  parseProtocols,
  type ProtocolPolicy,
  selectChannelExtensions,
  selectProtocol
} from "./Negotiation.ts"
import {
  AuthenticationFailed,
  ExtensionNotOffered,
  InvalidNegotiation,
  make as wsError,
  MalformedHandshake,
  type WsError
} from "./WsError.ts"

/**
 * The largest request or answer, in bytes.
 *
 * @category constants
 * @since 0.1.0
 */
export const MAX_MESSAGE_BYTES = Text.MAX_MESSAGE_BYTES

/**
 * The most header lines in a request or answer.
 *
 * @category constants
 * @since 0.1.0
 */
export const MAX_HEADER_LINES = Text.MAX_HEADER_LINES

/**
 * Requests a server reads on one connection before it gives up (the answer
 * to the last one is 403 unless it is 101).
 *
 * @category constants
 * @since 0.1.0
 */
export const DEFAULT_MAX_ATTEMPTS = 3

/**
 * The longest key material the server may attach, in bytes.
 *
 * @category constants
 * @since 0.1.0
 */
export const MAX_KEY_MATERIAL_BYTES = 1024

/**
 * What the server's authentication hook sees.
 *
 * @category models
 * @since 0.1.0
 */
export interface AuthRequest {
  readonly protocols: ReadonlyArray<string>
  readonly channelExtensions: ReadonlyArray<string> | undefined
  /** The `Authorization` value, absent on a request without credentials. */
  readonly authorization: string | undefined
  /** 1 for the first request on the connection. */
  readonly attempt: number
}

/**
 * The hook's answer: accept (optionally attaching key material, sent to the
 * client in the 101 and kept on both connections), challenge (401, with a
 * `WWW-Authenticate` value), or reject (403, close).
 *
 * @category models
 * @since 0.1.0
 */
export type AuthDecision =
  | { readonly _tag: "Accept"; readonly keyMaterial?: Uint8Array | undefined }
  | { readonly _tag: "Challenge"; readonly challenge?: string | undefined }
  | { readonly _tag: "Reject"; readonly detail?: string | undefined }

/**
 * @category models
 * @since 0.1.0
 */
export interface ServerOptions {
  readonly protocols?: ProtocolPolicy | undefined
  readonly requireProtocol?: boolean | undefined
  readonly channelExtensions?: ChannelExtensionPolicy | undefined
  readonly authenticate?: ((request: AuthRequest) => Effect.Effect<AuthDecision>) | undefined
  /** Default `DEFAULT_MAX_ATTEMPTS`. */
  readonly maxAttempts?: number | undefined
}

/**
 * @category models
 * @since 0.1.0
 */
export interface ClientOptions {
  /**
   * Credentials for the retry after a 401: a fixed `Authorization` value, or
   * a function of the server's challenge. Without them a 401 ends the dial.
   */
  readonly authorization?: string | ((challenge: string | undefined) => Effect.Effect<string | undefined>) | undefined
  /** Send `authorization` (when a string) with the first request already. Default false. */
  readonly eager?: boolean | undefined
  /** Retries after a 401. Default 1. */
  readonly maxRetries?: number | undefined
}

/**
 * The outcome on either side.
 *
 * @category models
 * @since 0.1.0
 */
export interface Outcome {
  readonly negotiated: Negotiated
  readonly keyMaterial: Uint8Array | undefined
  /** Server side: the `Authorization` of the accepted request. */
  readonly authorization: string | undefined
}

const CLOSE_PROTOCOL = 1002
const CLOSE_POLICY = 1008

/** Reads one message at a time from the adapter. */
const oneAtATime = (adapter: Adapter) =>
  Effect.map(adapter.acquireOneReader, (reader) => Effect.map(reader.pull, (batch) => batch[0] as Uint8Array))

const send = (adapter: Adapter, text: string) => adapter.sendMessages([Text.utf8(text)])

const failAndClose = (adapter: Adapter, error: WsError, code: number): Effect.Effect<never, WsError> =>
  Effect.suspend(() => {
    adapter.failWith(error, code)
    return Effect.fail(error)
  })

const malformed = (detail: string) => wsError(new MalformedHandshake({ detail, closeCode: CLOSE_PROTOCOL }))

/**
 * Runs the server side over a freshly opened connection.
 *
 * @internal
 */
export const serve = (
  adapter: Adapter,
  options: ServerOptions
): Effect.Effect<Outcome, WsError | Socket.SocketError> =>
  Effect.scoped(Effect.gen(function*() {
    const next = yield* oneAtATime(adapter)
    const maxAttempts = Math.max(1, options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS)
    const answer = (status: number, headers: ReadonlyArray<readonly [string, string | undefined]> = []) =>
      send(adapter, Text.format(`${Text.VERSION} ${status} ${Text.REASONS[status] ?? ""}`, headers))
    const badRequest = (detail: string) =>
      Effect.andThen(Effect.ignore(answer(400, [["Reason", detail.slice(0, 200)]])), failAndClose(adapter, malformed(detail), CLOSE_PROTOCOL))

    for (let attempt = 1;; attempt++) {
      const message = yield* next
      const parsed = Text.parse(message)
      if (typeof parsed === "string") return yield* badRequest(parsed)
      if (parsed.startLine !== Text.REQUEST_LINE) return yield* badRequest("not a NEGOTIATE request")
      const protocolHeader = parsed.headers.get("protocol")
      if (protocolHeader === undefined) return yield* badRequest("no Protocol header")
      const offered = parseProtocols(protocolHeader)
      if (offered instanceof InvalidNegotiation) return yield* badRequest(offered.message)
      const extensionHeader = parsed.headers.get("extensions")
      let offeredChannels: ReadonlyArray<string> | undefined
      if (extensionHeader !== undefined && extensionHeader !== "") {
        const extensions = parseExtensions(extensionHeader)
        if (extensions instanceof InvalidNegotiation) return yield* badRequest(extensions.message)
        const channels = channelExtensionsOf(extensions)
        if (channels instanceof InvalidNegotiation) return yield* badRequest(channels.message)
        offeredChannels = channels
      }
      const protocol = options.protocols === undefined ? offered[0] : selectProtocol(offered, options.protocols)
      if (protocol === undefined && (options.requireProtocol ?? true)) {
        return yield* badRequest("no acceptable protocol")
      }
      const authorization = parsed.headers.get("authorization")
      const decision: AuthDecision = options.authenticate === undefined
        ? { _tag: "Accept" }
        : yield* options.authenticate({ protocols: offered, channelExtensions: offeredChannels, authorization, attempt })
      if (decision._tag === "Accept") {
        const channelExtensions = offeredChannels === undefined || options.channelExtensions === undefined
          ? undefined
          : selectChannelExtensions(offeredChannels, options.channelExtensions)
        const keyMaterial = decision.keyMaterial?.subarray(0, MAX_KEY_MATERIAL_BYTES)
        yield* answer(101, [
          ["Protocol", protocol],
          ["Extensions", channelExtensions === undefined ? undefined : formatExtensions([channelsExtension(channelExtensions)])],
          ["Key-Material", keyMaterial === undefined ? undefined : Text.toBase64(keyMaterial)]
        ])
        return { negotiated: { protocol, channelExtensions, deflate: false }, keyMaterial, authorization }
      }
      if (decision._tag === "Reject" || attempt >= maxAttempts) {
        const detail = decision._tag === "Reject"
          ? decision.detail ?? "rejected"
          : `no acceptable credentials in ${attempt} attempts`
        yield* Effect.ignore(answer(403, [["Reason", detail.slice(0, 200)]]))
        return yield* failAndClose(
          adapter,
          wsError(new AuthenticationFailed({ status: 403, attempts: attempt, detail, closeCode: CLOSE_POLICY })),
          CLOSE_POLICY
        )
      }
      yield* answer(401, [["WWW-Authenticate", decision.challenge]])
    }
  }))

/**
 * Runs the client side over a connection whose opening handshake selected
 * `plexus-negotiate.v1`.
 *
 * @internal
 */
export const negotiate = (
  adapter: Adapter,
  offer: { readonly protocols: ReadonlyArray<string>; readonly channelExtensions: ReadonlyArray<string> | undefined; readonly requireProtocol: boolean },
  options: ClientOptions
): Effect.Effect<Outcome, WsError | Socket.SocketError> =>
  Effect.scoped(Effect.gen(function*() {
    const next = yield* oneAtATime(adapter)
    const maxRetries = Math.max(0, options.maxRetries ?? 1)
    const request = (authorization: string | undefined) =>
      send(adapter, Text.format(Text.REQUEST_LINE, [
        ["Protocol", offer.protocols.join(", ")],
        ["Extensions", offer.channelExtensions === undefined ? undefined : formatExtensions([channelsExtension(offer.channelExtensions)])],
        ["Authorization", authorization]
      ]))
    let authorization = options.eager === true && typeof options.authorization === "string"
      ? options.authorization
      : undefined
    for (let attempt = 1;; attempt++) {
      yield* request(authorization)
      const parsed = Text.parse(yield* next)
      if (typeof parsed === "string") return yield* failAndClose(adapter, malformed(`answer: ${parsed}`), CLOSE_PROTOCOL)
      const status = Text.statusOf(parsed.startLine)
      if (status === undefined) return yield* failAndClose(adapter, malformed("answer has no status line"), CLOSE_PROTOCOL)
      if (status === 101) {
        const selected = parsed.headers.get("protocol")
        const protocolError = checkProtocol(selected, offer.protocols, offer.requireProtocol)
        if (protocolError !== undefined) return yield* failAndClose(adapter, wsError(protocolError), CLOSE_PROTOCOL)
        let channelExtensions: ReadonlyArray<string> | undefined
        const extensionHeader = parsed.headers.get("extensions")
        if (extensionHeader !== undefined && extensionHeader !== "") {
          const extensions = parseExtensions(extensionHeader)
          if (extensions instanceof InvalidNegotiation) return yield* failAndClose(adapter, wsError(extensions), CLOSE_PROTOCOL)
          for (const e of extensions) {
            if (e.name !== "plexus-channels") {
              return yield* failAndClose(adapter, wsError(new ExtensionNotOffered({ extension: e.name })), CLOSE_PROTOCOL)
            }
          }
          const channels = channelExtensionsOf(extensions)
          if (channels instanceof InvalidNegotiation) return yield* failAndClose(adapter, wsError(channels), CLOSE_PROTOCOL)
          const notOffered = checkChannelExtensions(channels, offer.channelExtensions)
          if (notOffered !== undefined) return yield* failAndClose(adapter, wsError(notOffered), CLOSE_PROTOCOL)
          channelExtensions = channels
        }
        const keyHeader = parsed.headers.get("key-material")
        const keyMaterial = keyHeader === undefined ? undefined : Text.fromBase64(keyHeader)
        if (keyHeader !== undefined && (keyMaterial === undefined || keyMaterial.length > MAX_KEY_MATERIAL_BYTES)) {
          return yield* failAndClose(adapter, malformed("bad Key-Material"), CLOSE_PROTOCOL)
        }
        return {
          negotiated: { protocol: selected === "" ? undefined : selected, channelExtensions, deflate: false },
          keyMaterial,
          authorization
        }
      }
      const fail = (detail: string) =>
        failAndClose(
          adapter,
          wsError(new AuthenticationFailed({ status, attempts: attempt, detail, closeCode: CLOSE_POLICY })),
          CLOSE_POLICY
        )
      if (status !== 401) return yield* fail(parsed.headers.get("reason") ?? "refused")
      if (attempt > maxRetries || options.authorization === undefined) return yield* fail("credentials required")
      const challenge = parsed.headers.get("www-authenticate")
      const retry = typeof options.authorization === "string"
        ? options.authorization
        : yield* options.authorization(challenge)
      if (retry === undefined) return yield* fail("no credentials for the challenge")
      authorization = retry
    }
  }))
