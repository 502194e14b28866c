/**
 * Negotiation of the opening handshake (docs/spec/handshake.md, "Opening
 * handshake"): the `Sec-WebSocket-Protocol` sub-protocol list and the
 * `Sec-WebSocket-Extensions` list, including plexus's own
 * `plexus-channels` extension whose `ext` parameter names the per-channel
 * extensions (`plexus-channels; ext="fanout,encryption"`).
 *
 * The client offers; the server picks (one sub-protocol, a subset of the
 * per-channel extensions); the client checks that the server picked only
 * what it offered. Every parser here is a single linear pass, bounded by
 * `MAX_HEADER_LENGTH` and `MAX_ENTRIES`, and answers a value or an
 * `InvalidNegotiation`; none throws. Used on both sides, and in browsers.
 *
 * @since 0.1.0
 */
import { Channels } from "@plexus/core"
import { ExtensionNotOffered, InvalidNegotiation, ProtocolNotOffered } from "./WsError.ts"

/**
 * The name of plexus's extension.
 *
 * @category constants
 * @since 0.1.0
 */
export const CHANNELS_EXTENSION = "plexus-channels"

/**
 * The parameter of `plexus-channels` that lists the per-channel extensions.
 *
 * @category constants
 * @since 0.1.0
 */
export const CHANNELS_PARAMETER = "ext"

/**
 * The sub-protocol a client selects to run the secondary handshake over the
 * open socket (spec: Secondary handshake).
 *
 * @category constants
 * @since 0.1.0
 */
export const NEGOTIATE_PROTOCOL = "plexus-negotiate.v1"

/**
 * The longest negotiation header value accepted, in characters.
 *
 * @category constants
 * @since 0.1.0
 */
export const MAX_HEADER_LENGTH = 4096

/**
 * The most entries in any one list: sub-protocols, extensions, parameters
 * of one extension, per-channel extensions.
 *
 * @category constants
 * @since 0.1.0
 */
export const MAX_ENTRIES = 32

/**
 * The longest per-channel extension name.
 *
 * @category constants
 * @since 0.1.0
 */
export const MAX_NAME_LENGTH = 64

/**
 * One parameter of an extension; `value` is absent for a bare flag.
 *
 * @category models
 * @since 0.1.0
 */
export interface Parameter {
  readonly name: string
  readonly value: string | undefined
}

/**
 * One entry of `Sec-WebSocket-Extensions`.
 *
 * @category models
 * @since 0.1.0
 */
export interface Extension {
  readonly name: string
  readonly params: ReadonlyArray<Parameter>
}

/**
 * What the opening handshake (or the secondary handshake) settled.
 *
 * @category models
 * @since 0.1.0
 */
export interface Negotiated {
  /** The selected sub-protocol; absent when none was selected. */
  readonly protocol: string | undefined
  /** The accepted per-channel extensions; absent when `plexus-channels` was not negotiated. */
  readonly channelExtensions: ReadonlyArray<string> | undefined
  /** Whether permessage-deflate is on for this connection. */
  readonly deflate: boolean
}

/**
 * The negotiated per-channel extensions that `Channels` implements, for its
 * `extensions` option (names it does not know are left out); none when
 * `plexus-channels` was not negotiated.
 *
 * @category accessors
 * @since 0.1.0
 */
export const channelsExtensions = (negotiated: Negotiated): ReadonlyArray<Channels.Extension> =>
  (negotiated.channelExtensions ?? []).filter(Channels.isExtension)

/**
 * How a server picks the sub-protocol: a preference list (the first entry
 * the client also offered wins), or a hook given the client's offers in its
 * order. A hook's answer that the client did not offer counts as none.
 *
 * @category models
 * @since 0.1.0
 */
export type ProtocolPolicy =
  | ReadonlyArray<string>
  | ((offered: ReadonlyArray<string>) => string | undefined)

/**
 * How a server picks the per-channel extensions: the ones it supports, or a
 * hook. The answer is cut down to what the client offered, in the client's
 * order.
 *
 * @category models
 * @since 0.1.0
 */
export type ChannelExtensionPolicy =
  | ReadonlyArray<string>
  | ((offered: ReadonlyArray<string>) => ReadonlyArray<string>)

// RFC 7230 tchar: ! # $ % & ' * + - . ^ _ ` | ~ DIGIT ALPHA
const TCHAR = (() => {
  const table = new Uint8Array(128)
  for (let c = 0x30; c <= 0x39; c++) table[c] = 1
  for (let c = 0x41; c <= 0x5a; c++) table[c] = 1
  for (let c = 0x61; c <= 0x7a; c++) table[c] = 1
  for (const ch of "!#$%&'*+-.^_`|~") table[ch.charCodeAt(0)] = 1
  return table
})()

const isTchar = (code: number): boolean => code < 128 && TCHAR[code] === 1

/**
 * Whether `s` is a non-empty RFC 7230 token.
 *
 * @category guards
 * @since 0.1.0
 */
export const isToken = (s: string): boolean => {
  if (s.length === 0) return false
  for (let i = 0; i < s.length; i++) if (!isTchar(s.charCodeAt(i))) return false
  return true
}

const invalid = (field: string, detail: string) => new InvalidNegotiation({ field, detail })

const isOws = (code: number) => code === 0x20 || code === 0x09

/**
 * Parses `Sec-WebSocket-Protocol`: a comma-separated list of tokens, no
 * duplicates.
 *
 * @category parsing
 * @since 0.1.0
 */
export const parseProtocols = (header: string): Array<string> | InvalidNegotiation => {
  const field = "Sec-WebSocket-Protocol"
  if (header.length > MAX_HEADER_LENGTH) return invalid(field, `longer than ${MAX_HEADER_LENGTH} characters`)
  const out: Array<string> = []
  let i = 0
  const n = header.length
  while (true) {
    while (i < n && isOws(header.charCodeAt(i))) i++
    const start = i
    while (i < n && isTchar(header.charCodeAt(i))) i++
    if (i === start) return invalid(field, `expected a token at ${i}`)
    const token = header.slice(start, i)
    if (out.includes(token)) return invalid(field, `"${token}" listed twice`)
    out.push(token)
    if (out.length > MAX_ENTRIES) return invalid(field, `more than ${MAX_ENTRIES} entries`)
    while (i < n && isOws(header.charCodeAt(i))) i++
    if (i === n) return out
    if (header.charCodeAt(i) !== 0x2c) return invalid(field, `unexpected character at ${i}`)
    i++
  }
}

/**
 * Parses `Sec-WebSocket-Extensions` (RFC 6455 section 9.1): extensions
 * separated by commas, each a token followed by `; name[=value]`
 * parameters, a value a token or a quoted string. Unlike RFC 6455, a quoted
 * value may hold any visible ASCII (plexus-channels lists names separated
 * by commas in it).
 *
 * @category parsing
 * @since 0.1.0
 */
export const parseExtensions = (header: string): Array<Extension> | InvalidNegotiation => {
  const field = "Sec-WebSocket-Extensions"
  if (header.length > MAX_HEADER_LENGTH) return invalid(field, `longer than ${MAX_HEADER_LENGTH} characters`)
  const out: Array<Extension> = []
  const n = header.length
  let i = 0
  const skipOws = () => {
    while (i < n && isOws(header.charCodeAt(i))) i++
  }
  const token = (): string | undefined => {
    const start = i
    while (i < n && isTchar(header.charCodeAt(i))) i++
    return i === start ? undefined : header.slice(start, i)
  }
  while (true) {
    skipOws()
    const name = token()
    if (name === undefined) return invalid(field, `expected an extension name at ${i}`)
    const params: Array<Parameter> = []
    skipOws()
    while (i < n && header.charCodeAt(i) === 0x3b) {
      i++
      skipOws()
      const pname = token()
      if (pname === undefined) return invalid(field, `expected a parameter name at ${i}`)
      skipOws()
      let value: string | undefined
      if (i < n && header.charCodeAt(i) === 0x3d) {
        i++
        skipOws()
        if (i < n && header.charCodeAt(i) === 0x22) {
          i++
          let text = ""
          let start = i
          let closed = false
          while (i < n) {
            const c = header.charCodeAt(i)
            if (c === 0x22) {
              text += header.slice(start, i)
              i++
              closed = true
              break
            }
            if (c === 0x5c) {
              text += header.slice(start, i)
              i++
              if (i === n) break
              const e = header.charCodeAt(i)
              if (e < 0x20 || e > 0x7e) return invalid(field, `bad escaped character at ${i}`)
              start = i
              i++
              continue
            }
            if ((c < 0x20 && c !== 0x09) || c > 0x7e) return invalid(field, `bad character in a quoted value at ${i}`)
            i++
          }
          if (!closed) return invalid(field, "unterminated quoted value")
          value = text
        } else {
          value = token()
          if (value === undefined) return invalid(field, `expected a parameter value at ${i}`)
        }
        skipOws()
      }
      params.push({ name: pname, value })
      if (params.length > MAX_ENTRIES) return invalid(field, `more than ${MAX_ENTRIES} parameters`)
    }
    out.push({ name, params })
    if (out.length > MAX_ENTRIES) return invalid(field, `more than ${MAX_ENTRIES} extensions`)
    if (i === n) return out
    if (header.charCodeAt(i) !== 0x2c) return invalid(field, `unexpected character at ${i}`)
    i++
  }
}

const quote = (value: string): string => isToken(value) ? value : `"${value.replace(/["\\]/g, (c) => `\\${c}`)}"`

/**
 * Formats extensions as a `Sec-WebSocket-Extensions` value.
 *
 * @category formatting
 * @since 0.1.0
 */
export const formatExtensions = (extensions: ReadonlyArray<Extension>): string =>
  extensions.map((e) =>
    [e.name, ...e.params.map((p) => p.value === undefined ? p.name : `${p.name}=${quote(p.value)}`)].join("; ")
  ).join(", ")

/**
 * Parses the per-channel extension list of `plexus-channels` (`ext`): names
 * (tokens of at most `MAX_NAME_LENGTH` characters) separated by commas; an
 * empty value is an empty list.
 *
 * @category parsing
 * @since 0.1.0
 */
export const parseChannelExtensions = (value: string): Array<string> | InvalidNegotiation => {
  const field = `${CHANNELS_EXTENSION} ${CHANNELS_PARAMETER}`
  const out: Array<string> = []
  if (value.trim().length === 0) return out
  const parts = value.split(",", MAX_ENTRIES + 1)
  if (parts.length > MAX_ENTRIES) return invalid(field, `more than ${MAX_ENTRIES} names`)
  for (const part of parts) {
    const name = part.trim()
    if (!isToken(name) || name.length > MAX_NAME_LENGTH) return invalid(field, `"${name.slice(0, 80)}" is not a name`)
    if (!out.includes(name)) out.push(name)
  }
  return out
}

/**
 * The `plexus-channels` entry offering or accepting these per-channel
 * extensions.
 *
 * @category constructors
 * @since 0.1.0
 */
export const channelsExtension = (names: ReadonlyArray<string>): Extension => ({
  name: CHANNELS_EXTENSION,
  params: [{ name: CHANNELS_PARAMETER, value: names.join(",") }]
})

/**
 * The per-channel extensions named by the `plexus-channels` entry of a
 * list; absent when there is none. More than one entry, an unknown
 * parameter or a bad name list is invalid.
 *
 * @category parsing
 * @since 0.1.0
 */
export const channelExtensionsOf = (
  extensions: ReadonlyArray<Extension>
): ReadonlyArray<string> | undefined | InvalidNegotiation => {
  let found: ReadonlyArray<string> | undefined
  for (const e of extensions) {
    if (e.name !== CHANNELS_EXTENSION) continue
    if (found !== undefined) return invalid(CHANNELS_EXTENSION, "listed twice")
    let names: Array<string> = []
    for (const p of e.params) {
      if (p.name !== CHANNELS_PARAMETER) return invalid(CHANNELS_EXTENSION, `unknown parameter "${p.name}"`)
      const parsed = parseChannelExtensions(p.value ?? "")
      if (parsed instanceof InvalidNegotiation) return parsed
      names = parsed
    }
    found = names
  }
  return found
}

/**
 * The server's choice of sub-protocol among the client's offers.
 *
 * @category selection
 * @since 0.1.0
 */
export const selectProtocol = (offered: ReadonlyArray<string>, policy: ProtocolPolicy): string | undefined => {
  if (offered.length === 0) return undefined
  if (typeof policy === "function") {
    const chosen = policy(offered)
    return chosen !== undefined && offered.includes(chosen) ? chosen : undefined
  }
  for (const p of policy) if (offered.includes(p)) return p
  return undefined
}

/**
 * The server's choice of per-channel extensions: a subset of the offers, in
 * the client's order.
 *
 * @category selection
 * @since 0.1.0
 */
export const selectChannelExtensions = (
  offered: ReadonlyArray<string>,
  policy: ChannelExtensionPolicy
): ReadonlyArray<string> => {
  const wanted = typeof policy === "function" ? policy(offered) : policy
  return offered.filter((name) => wanted.includes(name))
}

/**
 * The client's check of the server's sub-protocol: it must be one offered;
 * none is acceptable unless `required`.
 *
 * @category validation
 * @since 0.1.0
 */
export const checkProtocol = (
  selected: string | undefined,
  offered: ReadonlyArray<string>,
  required: boolean
): ProtocolNotOffered | undefined => {
  if (selected === undefined || selected === "") {
    return required && offered.length > 0 ? new ProtocolNotOffered({ offered: [...offered] }) : undefined
  }
  return offered.includes(selected) ? undefined : new ProtocolNotOffered({ selected, offered: [...offered] })
}

/**
 * The client's check of the server's per-channel extensions: each must be
 * one offered, and `plexus-channels` itself must have been offered.
 *
 * @category validation
 * @since 0.1.0
 */
export const checkChannelExtensions = (
  accepted: ReadonlyArray<string> | undefined,
  offered: ReadonlyArray<string> | undefined
): ExtensionNotOffered | undefined => {
  if (accepted === undefined) return undefined
  if (offered === undefined) return new ExtensionNotOffered({ extension: CHANNELS_EXTENSION })
  for (const name of accepted) {
    if (!offered.includes(name)) return new ExtensionNotOffered({ extension: `${CHANNELS_EXTENSION}/${name}` })
  }
  return undefined
}
