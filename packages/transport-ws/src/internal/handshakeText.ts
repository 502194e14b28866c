/**
 * The text format of the secondary handshake (docs/spec/handshake.md,
 * "Message format"): a start line, header lines, an empty line, all ending
 * in CRLF, in one UTF-8 message. Parsing is one linear pass with hard limits
 * on size and header count, and answers a value or a problem description;
 * it never throws.
 *
 * @internal
 */

/** @internal */
export const MAX_MESSAGE_BYTES = 8192
/** @internal */
export const MAX_HEADER_LINES = 32
/** @internal */
export const VERSION = "PLEXUS/1"
/** @internal */
export const REQUEST_LINE = `NEGOTIATE * ${VERSION}`

/** @internal */
export interface Parsed {
  readonly startLine: string
  /** Lower-cased names. */
  readonly headers: ReadonlyMap<string, string>
}

const decoder = new TextDecoder("utf-8", { fatal: true })
const encoder = new TextEncoder()

const isTchar = (c: number) =>
  (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) ||
  (c < 128 && "!#$%&'*+-.^_`|~".includes(String.fromCharCode(c)))

/** @internal */
export const parse = (message: Uint8Array): Parsed | string => {
  if (message.byteLength > MAX_MESSAGE_BYTES) {
    return `message of ${message.byteLength} bytes exceeds ${MAX_MESSAGE_BYTES}`
  }
  let text: string
  try {
    text = decoder.decode(message)
  } catch {
    return "not UTF-8"
  }
  if (!text.endsWith("\r\n\r\n")) return "does not end with an empty line"
  const lines = text.slice(0, text.length - 4).split("\r\n")
  if (lines.length - 1 > MAX_HEADER_LINES) return `more than ${MAX_HEADER_LINES} header lines`
  const startLine = lines[0]!
  const headers = new Map<string, string>()
  for (let l = 1; l < lines.length; l++) {
    const line = lines[l]!
    const colon = line.indexOf(":")
    if (colon <= 0) return `header line ${l} has no name`
    for (let i = 0; i < colon; i++) if (!isTchar(line.charCodeAt(i))) return `header line ${l} has a bad name`
    for (let i = colon + 1; i < line.length; i++) {
      const c = line.charCodeAt(i)
      if ((c < 0x20 && c !== 0x09) || c > 0x7e) return `header line ${l} has a bad character`
    }
    const name = line.slice(0, colon).toLowerCase()
    if (headers.has(name)) return `header "${name}" repeated`
    headers.set(name, line.slice(colon + 1).trim())
  }
  for (let i = 0; i < startLine.length; i++) {
    const c = startLine.charCodeAt(i)
    if (c < 0x20 || c > 0x7e) return "bad character in the start line"
  }
  return { startLine, headers }
}

/** @internal */
export const format = (startLine: string, headers: ReadonlyArray<readonly [string, string | undefined]>): string => {
  let out = `${startLine}\r\n`
  for (const [name, value] of headers) if (value !== undefined) out += `${name}: ${value}\r\n`
  return `${out}\r\n`
}

/** The status code of a response start line, or undefined. @internal */
export const statusOf = (startLine: string): number | undefined => {
  const m = /^PLEXUS\/1 ([1-5][0-9][0-9])(?: [\x20-\x7e]*)?$/.exec(startLine)
  return m === null ? undefined : Number(m[1])
}

/** @internal */
export const REASONS: Readonly<Record<number, string>> = {
  101: "Switching Protocols",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden"
}

/** @internal */
export const toBase64 = (bytes: Uint8Array): string => {
  let s = ""
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]!)
  return btoa(s)
}

/** @internal */
export const fromBase64 = (text: string): Uint8Array | undefined => {
  try {
    const s = atob(text)
    const out = new Uint8Array(s.length)
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i)
    return out
  } catch {
    return undefined
  }
}

/** @internal */
export const utf8 = (text: string): Uint8Array => encoder.encode(text)
