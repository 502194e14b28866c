/**
 * The channels wire codec (docs/spec/channels.md): the 2-byte channel id in
 * front of every message, every control message, and the byte layouts of the
 * encryption extension's IV and AAD.
 *
 * Plain TypeScript, no Effect: data messages are labelled and unlabelled
 * without copying the payload (a received payload is a `subarray` of the
 * message; a sent one can go out as two chunks behind a per-channel header
 * made once). Control messages are small and rare, so their codec favours
 * strictness over speed.
 *
 * The control decoder is total and bounded: it answers a `ControlMessage`
 * or a `ChannelError`, never throws, checks a message against the 4096-byte
 * limit before reading it and every inner length against what is left of the
 * message before using it, and hands byte fields (flow ids, scopes, filters,
 * nonces) on as views of the message: copy them to keep them. Decoding errors
 * have three reasons: `ProtocolViolation` and `MessageTooLarge` end the
 * connection; `RequestRejected` is a well-formed request to answer with ERROR.
 *
 * @internal
 */
import {
  ChannelError,
  Code,
  InvalidMessage,
  MessageTooLarge,
  ProtocolViolation,
  RequestRejected
} from "../ChannelError.ts"
import { allocFrame, readU32, writeU32 } from "./bytes.ts"

// ---------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------

/** Bytes of the channel id in front of every message (spec: Framing). */
export const HEADER_SIZE = 2
/** The default channel, open from the start (spec: Framing). */
export const DEFAULT_CHANNEL = 0x0000
/** The control channel (spec: Framing). */
export const CONTROL_CHANNEL = 0xffff
/** Type, flags and request id in front of every control message (spec: Control messages). */
export const CONTROL_HEADER_SIZE = 6
/** The largest control message, after the channel id (spec: Control messages). */
export const MAX_CONTROL_SIZE = 4096

/** Control message types (spec: Types). */
export const TYPE_CREATE = 0x01
export const TYPE_DESTROY = 0x02
export const TYPE_MIGRATE = 0x03
export const TYPE_MERGE = 0x04
export const TYPE_UNMERGE = 0x05
export const TYPE_LINK = 0x06
export const TYPE_UNLINK = 0x07
export const TYPE_FILTER = 0x08
export const TYPE_PING = 0x09
export const TYPE_WINDOW = 0x40
export const TYPE_GOAWAY = 0x41
export const TYPE_ERROR = 0x80
/** An acknowledgement's type is its request's type with this bit (spec: Types). */
export const ACK_BIT = 0x80
export const TYPE_CREATE_ACK = TYPE_CREATE | ACK_BIT
export const TYPE_DESTROY_ACK = TYPE_DESTROY | ACK_BIT
export const TYPE_MIGRATE_ACK = TYPE_MIGRATE | ACK_BIT
export const TYPE_MERGE_ACK = TYPE_MERGE | ACK_BIT
export const TYPE_UNMERGE_ACK = TYPE_UNMERGE | ACK_BIT
export const TYPE_LINK_ACK = TYPE_LINK | ACK_BIT
export const TYPE_UNLINK_ACK = TYPE_UNLINK | ACK_BIT
export const TYPE_FILTER_ACK = TYPE_FILTER | ACK_BIT
export const TYPE_PONG = TYPE_PING | ACK_BIT

/** DESTROY's only flag (spec: DESTROY). */
export const FLAG_ABORT = 0x01

/** Extension ids of the CREATE TLVs (spec: CREATE). */
export const EXT_FANOUT = 0x01
export const EXT_ENCRYPTION = 0x02

/** Encryption suites (spec: Encryption). */
export const SUITE_AES_128_GCM = 0x01
export const SUITE_AES_256_GCM = 0x02

/** Fanout roles (spec: Fanout). */
export const ROLE_SUBSCRIBE = 0x01
export const ROLE_PUBLISH = 0x02

/** Filter kinds (spec: Fanout, Filters); 0x80–0xFF belong to applications. */
export const FILTER_ALL = 0x00
export const FILTER_PREFIXES = 0x01
export const FILTER_APPLICATION_MIN = 0x80

/** Size limits (spec: Limits and hostile peers). */
export const MAX_LABEL = 255
export const MAX_DESTROY_REASON = 123
export const MAX_TEXT = 256
export const MAX_FLOW_ID = 255
export const MAX_SCOPE = 255
export const MAX_FILTER = 1024
export const MAX_PREFIXES = 32
export const MAX_MERGE_MEMBERS = 63
export const MAX_UNMERGE_MEMBERS = 64
export const WINDOW_GRANT_SIZE = 10
export const MAX_WINDOW_GRANTS = Math.floor((MAX_CONTROL_SIZE - CONTROL_HEADER_SIZE) / WINDOW_GRANT_SIZE)

/** Default window of every channel direction (spec: Flow control). */
export const DEFAULT_WINDOW_MESSAGES = 64
export const DEFAULT_WINDOW_BYTES = 256 * 1024
export const MAX_WINDOW = 0xffffffff

/** Encryption layouts (spec: Encryption). */
export const NONCE_SIZE = 16
export const IV_SIZE = 12
export const TAG_SIZE = 16
export const AAD_SIZE = 3
export const ENCRYPTION_PARAMS_SIZE = 1 + 4 + NONCE_SIZE
export const DIRECTION_CLIENT = 0x00
export const DIRECTION_SERVER = 0x01
/** Usage limits of one channel key, per direction. */
export const MAX_SEALED_MESSAGES = 2 ** 32
export const MAX_SEALED_BYTES = 2 ** 36
/** The HKDF info prefix; the suite byte follows it. */
export const HKDF_INFO_PREFIX = "plexus-channels-v1"

const TYPE_NAMES: Readonly<Record<number, string>> = {
  [TYPE_CREATE]: "CREATE",
  [TYPE_DESTROY]: "DESTROY",
  [TYPE_MIGRATE]: "MIGRATE",
  [TYPE_MERGE]: "MERGE",
  [TYPE_UNMERGE]: "UNMERGE",
  [TYPE_LINK]: "LINK",
  [TYPE_UNLINK]: "UNLINK",
  [TYPE_FILTER]: "FILTER",
  [TYPE_PING]: "PING",
  [TYPE_WINDOW]: "WINDOW",
  [TYPE_GOAWAY]: "GOAWAY",
  [TYPE_ERROR]: "ERROR",
  [TYPE_CREATE_ACK]: "CREATE_ACK",
  [TYPE_DESTROY_ACK]: "DESTROY_ACK",
  [TYPE_MIGRATE_ACK]: "MIGRATE_ACK",
  [TYPE_MERGE_ACK]: "MERGE_ACK",
  [TYPE_UNMERGE_ACK]: "UNMERGE_ACK",
  [TYPE_LINK_ACK]: "LINK_ACK",
  [TYPE_UNLINK_ACK]: "UNLINK_ACK",
  [TYPE_FILTER_ACK]: "FILTER_ACK",
  [TYPE_PONG]: "PONG"
}

/** The spec's name of a control type, or its hex value. */
export const controlTypeName = (type: number): string =>
  TYPE_NAMES[type] ?? `0x${type.toString(16).padStart(2, "0")}`

// ---------------------------------------------------------------------------
// Channel ids
// ---------------------------------------------------------------------------

/** Which end of the connection: the client dialed it, the server accepted it. */
export type Side = "client" | "server"

/** The side that allocates `id` (spec: Channel IDs); none for 0x0000 and 0xFFFF. */
export const ownerOf = (id: number): Side | undefined =>
  id === DEFAULT_CHANNEL || id === CONTROL_CHANNEL ? undefined : (id & 1) === 1 ? "client" : "server"

/** An id that may label data: 0x0000–0xFFFE. */
export const isDataChannelId = (id: number): boolean => Number.isInteger(id) && id >= 0 && id < CONTROL_CHANNEL

/** An id a side may allocate: 0x0001–0xFFFE. */
export const isAllocatableId = (id: number): boolean => isDataChannelId(id) && id !== DEFAULT_CHANNEL

/** The IV and AAD direction byte of messages sent by `side`. */
export const directionOf = (side: Side): number => side === "client" ? DIRECTION_CLIENT : DIRECTION_SERVER

// ---------------------------------------------------------------------------
// Data messages
// ---------------------------------------------------------------------------

/** A received channel message: the payload is a view of the transport message. */
export interface DataMessage {
  readonly channelId: number
  readonly payload: Uint8Array
}

/** Writes a channel id at `offset`. `channelId` must be 0x0000–0xFFFF. */
export const writeHeader = (target: Uint8Array, offset: number, channelId: number): void => {
  target[offset] = channelId >>> 8
  target[offset + 1] = channelId & 0xff
}

/**
 * A 2-byte header for one channel. Make it once per channel (again after a
 * MIGRATE) and send every message as `[header, payload]`: it is never
 * written again, so queued chunks that share it stay valid.
 */
export const makeHeader = (channelId: number): Uint8Array => {
  const header = new Uint8Array(HEADER_SIZE)
  writeHeader(header, 0, channelId)
  return header
}

/**
 * One message, header and payload in one buffer (one copy of the payload).
 * `channelId` comes from this side's own allocation: it is not checked.
 */
export const encodeData = (channelId: number, payload: Uint8Array): Uint8Array => {
  // Small messages share a slab: one allocation per many messages.
  const out = allocFrame(HEADER_SIZE + payload.length)
  writeHeader(out, 0, channelId)
  out.set(payload, HEADER_SIZE)
  return out
}

/**
 * One message as two chunks, for transports that gather writes: a header
 * from `makeHeader` and the payload itself, neither copied.
 */
export const encodeDataChunks = (header: Uint8Array, payload: Uint8Array): readonly [Uint8Array, Uint8Array] => [
  header,
  payload
]

/** The channel id of a message, or -1 for a runt (hot loops). */
export const channelIdOf = (message: Uint8Array): number =>
  message.length < HEADER_SIZE ? -1 : (message[0] << 8) | message[1]

/**
 * Splits a transport message into its channel id and payload (a view, not a
 * copy). A runt, shorter than the header, is a protocol violation.
 */
export const decodeMessage = (message: Uint8Array): DataMessage | ChannelError => {
  if (message.length < HEADER_SIZE) {
    return violation(`runt message of ${message.length} byte(s): shorter than the 2-byte channel id`, 0)
  }
  return { channelId: (message[0] << 8) | message[1], payload: message.subarray(HEADER_SIZE) }
}

// ---------------------------------------------------------------------------
// Control message model
// ---------------------------------------------------------------------------

/** A per-consumer fanout filter (spec: Fanout, Filters). */
export type ConsumerFilter =
  | { readonly _tag: "All" }
  | { readonly _tag: "Prefixes"; readonly prefixes: ReadonlyArray<Uint8Array> }
  | { readonly _tag: "Application"; readonly kind: number; readonly data: Uint8Array }

/** Fanout parameters: the fanout TLV of CREATE and the tail of LINK. */
export interface FanoutParams {
  readonly role: number
  readonly flowId: Uint8Array
  readonly scope: Uint8Array
  readonly filter: ConsumerFilter
}

/** An extension switched on by CREATE. */
export type CreateExtension =
  | ({ readonly _tag: "Fanout" } & FanoutParams)
  | {
    readonly _tag: "Encryption"
    readonly suite: number
    readonly keyId: number
    readonly nonce: Uint8Array
  }

/** The acceptor's part of an extension, in CREATE_ACK. */
export type AcceptedExtension =
  | { readonly _tag: "Fanout" }
  | { readonly _tag: "Encryption"; readonly nonce: Uint8Array }

export interface Create {
  readonly _tag: "Create"
  readonly requestId: number
  readonly channelId: number
  readonly extraMessages: number
  readonly extraBytes: number
  readonly label: string
  readonly extensions: ReadonlyArray<CreateExtension>
}
export interface CreateAck {
  readonly _tag: "CreateAck"
  readonly requestId: number
  readonly channelId: number
  readonly extraMessages: number
  readonly extraBytes: number
  readonly extensions: ReadonlyArray<AcceptedExtension>
}
export interface Destroy {
  readonly _tag: "Destroy"
  readonly requestId: number
  readonly channelId: number
  readonly abort: boolean
  readonly code: number
  readonly reason: string
}
export interface DestroyAck {
  readonly _tag: "DestroyAck"
  readonly requestId: number
  readonly channelId: number
}
export interface Migrate {
  readonly _tag: "Migrate"
  readonly requestId: number
  readonly oldId: number
  readonly newId: number
}
export interface MigrateAck {
  readonly _tag: "MigrateAck"
  readonly requestId: number
  readonly oldId: number
  readonly newId: number
}
export interface Merge {
  readonly _tag: "Merge"
  readonly requestId: number
  readonly target: number
  readonly members: ReadonlyArray<number>
}
export interface MergeAck {
  readonly _tag: "MergeAck"
  readonly requestId: number
  readonly target: number
}
export interface Unmerge {
  readonly _tag: "Unmerge"
  readonly requestId: number
  readonly members: ReadonlyArray<number>
}
export interface UnmergeAck {
  readonly _tag: "UnmergeAck"
  readonly requestId: number
}
export interface Link {
  readonly _tag: "Link"
  readonly requestId: number
  readonly channelId: number
  readonly fanout: FanoutParams
}
export interface LinkAck {
  readonly _tag: "LinkAck"
  readonly requestId: number
  readonly channelId: number
}
export interface Unlink {
  readonly _tag: "Unlink"
  readonly requestId: number
  readonly channelId: number
}
export interface UnlinkAck {
  readonly _tag: "UnlinkAck"
  readonly requestId: number
  readonly channelId: number
}
export interface Filter {
  readonly _tag: "Filter"
  readonly requestId: number
  readonly channelId: number
  readonly filter: ConsumerFilter
}
export interface FilterAck {
  readonly _tag: "FilterAck"
  readonly requestId: number
  readonly channelId: number
}
export interface Ping {
  readonly _tag: "Ping"
  readonly requestId: number
}
export interface Pong {
  readonly _tag: "Pong"
  readonly requestId: number
}
/** One credit grant of a WINDOW. */
export interface WindowGrant {
  readonly channelId: number
  readonly messages: number
  readonly bytes: number
}
export interface Window {
  readonly _tag: "Window"
  readonly grants: ReadonlyArray<WindowGrant>
}
export interface GoAway {
  readonly _tag: "GoAway"
  readonly code: number
  readonly reason: string
}
export interface ErrorReply {
  readonly _tag: "Error"
  readonly requestId: number
  readonly code: number
  readonly detail: string
}
/** A notification of a type this version does not know: ignore it. */
export interface UnknownNotification {
  readonly _tag: "UnknownNotification"
  readonly controlType: number
}

/** Every control message this version can send. */
export type OutgoingControl =
  | Create
  | CreateAck
  | Destroy
  | DestroyAck
  | Migrate
  | MigrateAck
  | Merge
  | MergeAck
  | Unmerge
  | UnmergeAck
  | Link
  | LinkAck
  | Unlink
  | UnlinkAck
  | Filter
  | FilterAck
  | Ping
  | Pong
  | Window
  | GoAway
  | ErrorReply

/** Every control message the decoder can answer. */
export type ControlMessage = OutgoingControl | UnknownNotification

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

const readU16 = (b: Uint8Array, p: number): number => (b[p] << 8) | b[p + 1]


// `ignoreBOM` keeps a leading U+FEFF, so every string round-trips.
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true })
const utf8Encoder = new TextEncoder()

/** Strict UTF-8, or undefined for invalid bytes. */
const decodeText = (b: Uint8Array, start: number, end: number): string | undefined => {
  if (start === end) return ""
  try {
    return utf8.decode(b.subarray(start, end))
  } catch {
    return undefined
  }
}

/** UTF-8 cut to at most `max` bytes on a character boundary. */
const truncatedText = (text: string, max: number): Uint8Array => {
  const bytes = utf8Encoder.encode(text)
  if (bytes.length <= max) return bytes
  let end = max
  // Back off continuation bytes (10xxxxxx) so the cut never splits a character.
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--
  return bytes.subarray(0, end)
}

const violation = (detail: string, offset: number, code: number = Code.PROTOCOL_ERROR): ChannelError =>
  new ChannelError({ reason: new ProtocolViolation({ detail, offset, code }) })

const invalid = (detail: string): ChannelError => new ChannelError({ reason: new InvalidMessage({ detail }) })

const isU8 = (v: number): boolean => Number.isInteger(v) && v >= 0 && v <= 0xff
const isU16 = (v: number): boolean => Number.isInteger(v) && v >= 0 && v <= 0xffff
const isU32 = (v: number): boolean => Number.isInteger(v) && v >= 0 && v <= MAX_WINDOW

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/**
 * One encoding: fields go into a scratch buffer as large as the biggest
 * control message; writes beyond it are counted, not stored, so an oversized
 * message is measured and refused without growing anything.
 */
class Out {
  static readonly scratch = new Uint8Array(HEADER_SIZE + MAX_CONTROL_SIZE)
  pos = 0
  error: ChannelError | undefined = undefined

  fail(detail: string): void {
    if (this.error === undefined) this.error = invalid(detail)
  }
  u8(v: number, what: string): void {
    if (!isU8(v)) return this.fail(`${what} ${v} is not a u8`)
    if (this.pos < Out.scratch.length) Out.scratch[this.pos] = v
    this.pos += 1
  }
  u16(v: number, what: string): void {
    if (!isU16(v)) return this.fail(`${what} ${v} is not a u16`)
    if (this.pos + 2 <= Out.scratch.length) writeHeader(Out.scratch, this.pos, v)
    this.pos += 2
  }
  u32(v: number, what: string): void {
    if (!isU32(v)) return this.fail(`${what} ${v} is not a u32`)
    if (this.pos + 4 <= Out.scratch.length) writeU32(Out.scratch, this.pos, v)
    this.pos += 4
  }
  bytes(b: Uint8Array): void {
    if (this.pos + b.length <= Out.scratch.length) Out.scratch.set(b, this.pos)
    this.pos += b.length
  }
  /** A data channel id (0x0000–0xFFFE); `allocatable` also excludes 0x0000. */
  channel(v: number, what: string, allocatable = false): void {
    if (!(allocatable ? isAllocatableId(v) : isDataChannelId(v))) {
      return this.fail(`${what} ${v} is not ${allocatable ? "an allocatable" : "a data"} channel id`)
    }
    this.u16(v, what)
  }
  /** Reserves a u16 to be patched later; answers its position. */
  hole16(): number {
    const at = this.pos
    this.pos += 2
    return at
  }
  patch16(at: number, v: number): void {
    if (at + 2 <= Out.scratch.length) writeHeader(Out.scratch, at, v)
  }
}

const writeFilter = (out: Out, filter: ConsumerFilter): void => {
  switch (filter._tag) {
    case "All":
      out.u8(FILTER_ALL, "filter kind")
      out.u16(0, "filter length")
      return
    case "Prefixes": {
      const n = filter.prefixes.length
      if (n < 1 || n > MAX_PREFIXES) return out.fail(`${n} prefixes: a PREFIXES filter has 1 to ${MAX_PREFIXES}`)
      let size = 0
      for (const prefix of filter.prefixes) {
        if (prefix.length < 1 || prefix.length > 255) return out.fail(`a prefix of ${prefix.length} bytes`)
        size += 1 + prefix.length
      }
      if (size > MAX_FILTER) return out.fail(`filter of ${size} bytes exceeds ${MAX_FILTER}`)
      out.u8(FILTER_PREFIXES, "filter kind")
      out.u16(size, "filter length")
      for (const prefix of filter.prefixes) {
        out.u8(prefix.length, "prefix length")
        out.bytes(prefix)
      }
      return
    }
    case "Application": {
      if (filter.kind < FILTER_APPLICATION_MIN || !isU8(filter.kind)) {
        return out.fail(`filter kind ${filter.kind} is not an application kind (0x80-0xFF)`)
      }
      const size = filter.data.length
      if (size > MAX_FILTER) return out.fail(`filter of ${size} bytes exceeds ${MAX_FILTER}`)
      out.u8(filter.kind, "filter kind")
      out.u16(filter.data.length, "filter length")
      out.bytes(filter.data)
      return
    }
  }
}

const writeFanout = (out: Out, fanout: FanoutParams): void => {
  const { flowId, scope } = fanout
  if (flowId.length < 1 || flowId.length > MAX_FLOW_ID) return out.fail(`flow id of ${flowId.length} bytes`)
  if (scope.length < 1 || scope.length > MAX_SCOPE) return out.fail(`scope of ${scope.length} bytes`)
  out.u8(fanout.role, "role")
  out.u8(flowId.length, "flow id length")
  out.bytes(flowId)
  out.u8(scope.length, "scope length")
  out.bytes(scope)
  writeFilter(out, fanout.filter)
}

/** Writes a TLV around `value`, patching in its length afterwards. */
const writeTlv = (out: Out, id: number, value: () => void): void => {
  out.u8(id, "extension id")
  const at = out.hole16()
  const start = out.pos
  value()
  const length = out.pos - start
  if (length > 0xffff) return out.fail(`extension value of ${length} bytes`)
  out.patch16(at, length)
}

const writeExtensions = (out: Out, extensions: ReadonlyArray<CreateExtension | AcceptedExtension>): void => {
  let seen = 0
  for (const extension of extensions) {
    const bit = extension._tag === "Fanout" ? 1 : 2
    if (seen & bit) return out.fail(`extension ${extension._tag} appears twice`)
    seen |= bit
    if (extension._tag === "Fanout") {
      writeTlv(out, EXT_FANOUT, () => {
        if ("role" in extension) writeFanout(out, extension)
      })
      continue
    }
    if (extension.nonce.length !== NONCE_SIZE) return out.fail(`a nonce of ${extension.nonce.length} bytes`)
    writeTlv(out, EXT_ENCRYPTION, () => {
      if ("suite" in extension) {
        out.u8(extension.suite, "suite")
        out.u32(extension.keyId, "key id")
      }
      out.bytes(extension.nonce)
    })
  }
}

const writeMembers = (out: Out, members: ReadonlyArray<number>, max: number, target?: number): void => {
  if (members.length < 1 || members.length > max) return out.fail(`${members.length} members: 1 to ${max} allowed`)
  for (let i = 0; i < members.length; i++) {
    const m = members[i]
    if (m === target) return out.fail(`the target ${m} is also a member`)
    for (let j = 0; j < i; j++) if (members[j] === m) return out.fail(`member ${m} appears twice`)
    out.channel(m, "member")
  }
}

const typeOf = (message: OutgoingControl): number => {
  switch (message._tag) {
    case "Create":
      return TYPE_CREATE
    case "CreateAck":
      return TYPE_CREATE_ACK
    case "Destroy":
      return TYPE_DESTROY
    case "DestroyAck":
      return TYPE_DESTROY_ACK
    case "Migrate":
      return TYPE_MIGRATE
    case "MigrateAck":
      return TYPE_MIGRATE_ACK
    case "Merge":
      return TYPE_MERGE
    case "MergeAck":
      return TYPE_MERGE_ACK
    case "Unmerge":
      return TYPE_UNMERGE
    case "UnmergeAck":
      return TYPE_UNMERGE_ACK
    case "Link":
      return TYPE_LINK
    case "LinkAck":
      return TYPE_LINK_ACK
    case "Unlink":
      return TYPE_UNLINK
    case "UnlinkAck":
      return TYPE_UNLINK_ACK
    case "Filter":
      return TYPE_FILTER
    case "FilterAck":
      return TYPE_FILTER_ACK
    case "Ping":
      return TYPE_PING
    case "Pong":
      return TYPE_PONG
    case "Window":
      return TYPE_WINDOW
    case "GoAway":
      return TYPE_GOAWAY
    case "Error":
      return TYPE_ERROR
  }
}

const writeBody = (out: Out, m: OutgoingControl): void => {
  switch (m._tag) {
    case "Create": {
      const label = utf8Encoder.encode(m.label)
      if (label.length > MAX_LABEL) return out.fail(`label of ${label.length} bytes exceeds ${MAX_LABEL}`)
      out.channel(m.channelId, "channel", true)
      out.u32(m.extraMessages, "extra messages")
      out.u32(m.extraBytes, "extra bytes")
      out.u8(label.length, "label length")
      out.bytes(label)
      return writeExtensions(out, m.extensions)
    }
    case "CreateAck":
      out.channel(m.channelId, "channel", true)
      out.u32(m.extraMessages, "extra messages")
      out.u32(m.extraBytes, "extra bytes")
      return writeExtensions(out, m.extensions)
    case "Destroy": {
      const reason = utf8Encoder.encode(m.reason)
      if (reason.length > MAX_DESTROY_REASON) {
        return out.fail(`reason of ${reason.length} bytes exceeds ${MAX_DESTROY_REASON}`)
      }
      out.channel(m.channelId, "channel")
      out.u16(m.code, "code")
      return out.bytes(reason)
    }
    case "Migrate":
    case "MigrateAck":
      if (m.oldId === m.newId) return out.fail(`migrating channel ${m.oldId} to itself`)
      if (ownerOf(m.oldId) !== ownerOf(m.newId)) return out.fail("old and new ids of different parity")
      out.channel(m.oldId, "old channel", true)
      return out.channel(m.newId, "new channel", true)
    case "Merge":
      out.channel(m.target, "target")
      return writeMembers(out, m.members, MAX_MERGE_MEMBERS, m.target)
    case "MergeAck":
      return out.channel(m.target, "target")
    case "Unmerge":
      return writeMembers(out, m.members, MAX_UNMERGE_MEMBERS)
    case "Link":
      out.channel(m.channelId, "channel")
      return writeFanout(out, m.fanout)
    case "Filter":
      out.channel(m.channelId, "channel")
      return writeFilter(out, m.filter)
    case "DestroyAck":
    case "Unlink":
    case "LinkAck":
    case "UnlinkAck":
    case "FilterAck":
      return out.channel(m.channelId, "channel")
    case "UnmergeAck":
    case "Ping":
    case "Pong":
      return
    case "Window": {
      const n = m.grants.length
      if (n < 1 || n > MAX_WINDOW_GRANTS) return out.fail(`${n} grants: 1 to ${MAX_WINDOW_GRANTS} allowed`)
      for (const grant of m.grants) {
        out.channel(grant.channelId, "channel")
        out.u32(grant.messages, "messages")
        out.u32(grant.bytes, "bytes")
      }
      return
    }
    case "GoAway":
      out.u16(m.code, "code")
      return out.bytes(truncatedText(m.reason, MAX_TEXT))
    case "Error":
      out.u16(m.code, "code")
      return out.bytes(truncatedText(m.detail, MAX_TEXT))
  }
}

/**
 * Encodes a control message as a whole transport message, channel id
 * 0xFFFF included. A value the wire cannot carry is an `InvalidMessage`;
 * a message above 4096 bytes a `MessageTooLarge`. Texts of ERROR and GOAWAY
 * are cut at 256 bytes; a label or DESTROY reason that is too long is
 * refused (the application chose it).
 */
export const encodeControl = (message: OutgoingControl): Uint8Array | ChannelError => {
  const out = new Out()
  out.u16(CONTROL_CHANNEL, "channel")
  out.u8(typeOf(message), "type")
  out.u8(message._tag === "Destroy" && message.abort ? FLAG_ABORT : 0, "flags")
  if ("requestId" in message) {
    if (message.requestId === 0) return invalid("request id 0 is reserved for notifications")
    out.u32(message.requestId, "request id")
  } else {
    out.u32(0, "request id")
  }
  writeBody(out, message)
  if (out.error !== undefined) return out.error
  const size = out.pos - HEADER_SIZE
  if (size > MAX_CONTROL_SIZE) {
    return new ChannelError({
      reason: new MessageTooLarge({ size, max: MAX_CONTROL_SIZE, code: Code.PROTOCOL_ERROR })
    })
  }
  return Out.scratch.slice(0, out.pos)
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/** What the decoder may know about the message's sender. */
export interface DecodeOptions {
  /** The side that sent the message: enables the parity checks of the spec. */
  readonly sender?: Side | undefined
}

/**
 * One decoding. Syntax errors stop it at once; a reason to refuse a
 * well-formed request is remembered and answered only once the whole
 * message has proved well formed, since a malformed message must end the
 * connection rather than earn a polite ERROR.
 */
class In {
  readonly b: Uint8Array
  readonly type: number
  readonly requestId: number
  readonly sender: Side | undefined
  rejection: RequestRejected | undefined = undefined

  constructor(b: Uint8Array, type: number, requestId: number, sender: Side | undefined) {
    this.b = b
    this.type = type
    this.requestId = requestId
    this.sender = sender
  }

  reject(code: number, detail: string): void {
    if (this.rejection === undefined) {
      this.rejection = new RequestRejected({ controlType: this.type, requestId: this.requestId, code, detail })
    }
  }

  fail(detail: string, offset: number, code: number = Code.PROTOCOL_ERROR): ChannelError {
    return violation(`${controlTypeName(this.type)}: ${detail}`, offset, code)
  }

  /** A channel field that may name any data channel: not 0xFFFF. */
  channel(at: number, what: string): number | ChannelError {
    const id = readU16(this.b, at)
    return id === CONTROL_CHANNEL ? this.fail(`${what} is the control channel`, at, Code.INVALID_ID) : id
  }

  /** A channel field that must be allocated by `owner` (when known). */
  owned(at: number, what: string, owner: Side | undefined): number | ChannelError {
    const id = readU16(this.b, at)
    if (id === CONTROL_CHANNEL || id === DEFAULT_CHANNEL) {
      return this.fail(`${what} ${id} is reserved`, at, Code.INVALID_ID)
    }
    if (owner !== undefined && ownerOf(id) !== owner) {
      return this.fail(`${what} ${id} does not have the ${owner}'s parity`, at, Code.INVALID_ID)
    }
    return id
  }

  text(start: number, end: number, max: number, what: string): string | ChannelError {
    if (end - start > max) return this.fail(`${what} of ${end - start} bytes exceeds ${max}`, start)
    const text = decodeText(this.b, start, end)
    return text === undefined ? this.fail(`${what} is not valid UTF-8`, start) : text
  }

  /** Exactly `size` body bytes. */
  exact(size: number): ChannelError | undefined {
    const body = this.b.length - CONTROL_HEADER_SIZE
    return body === size ? undefined : this.fail(`a ${body}-byte body where ${size} bytes belong`, CONTROL_HEADER_SIZE)
  }

  /** At least `size` body bytes. */
  atLeast(size: number): ChannelError | undefined {
    const body = this.b.length - CONTROL_HEADER_SIZE
    return body >= size ? undefined : this.fail(`a ${body}-byte body, shorter than ${size} bytes`, this.b.length)
  }

  done<A>(message: A): A | ChannelError {
    return this.rejection === undefined ? message : new ChannelError({ reason: this.rejection })
  }
}

const isError = (u: unknown): u is ChannelError => u instanceof ChannelError

/** A filter in [start, end), consumed exactly. */
const readFilter = (d: In, start: number, end: number): ConsumerFilter | ChannelError => {
  const b = d.b
  if (end - start < 3) return d.fail("truncated filter", end)
  const kind = b[start]
  const length = readU16(b, start + 1)
  const data = start + 3
  if (length > MAX_FILTER) return d.fail(`filter of ${length} bytes exceeds ${MAX_FILTER}`, start + 1)
  if (length > end - data) return d.fail(`filter length ${length} runs past the end`, start + 1)
  if (length !== end - data) return d.fail(`${end - data - length} byte(s) after the filter`, data + length)
  if (kind === FILTER_ALL) {
    return length === 0 ? { _tag: "All" } : d.fail("an ALL filter with data", data)
  }
  if (kind === FILTER_PREFIXES) {
    const prefixes: Array<Uint8Array> = []
    let p = data
    while (p < end) {
      if (prefixes.length === MAX_PREFIXES) return d.fail(`more than ${MAX_PREFIXES} prefixes`, p)
      const n = b[p]
      if (n === 0) return d.fail("an empty prefix", p)
      if (n > end - p - 1) return d.fail(`prefix length ${n} runs past the filter`, p)
      prefixes.push(b.subarray(p + 1, p + 1 + n))
      p += 1 + n
    }
    return prefixes.length === 0 ? d.fail("a PREFIXES filter with no prefix", data) : { _tag: "Prefixes", prefixes }
  }
  if (kind < FILTER_APPLICATION_MIN) d.reject(Code.BAD_FILTER, `filter kind 0x${kind.toString(16)} is reserved`)
  return { _tag: "Application", kind, data: b.subarray(data, end) }
}

/** Fanout parameters in [start, end), consumed exactly. */
const readFanout = (d: In, start: number, end: number): FanoutParams | ChannelError => {
  const b = d.b
  let p = start
  if (end - p < 2) return d.fail("truncated fanout parameters", end)
  const role = b[p]
  const flowLength = b[p + 1]
  p += 2
  if (flowLength === 0) return d.fail("an empty flow id", p - 1)
  if (flowLength > end - p) return d.fail(`flow id length ${flowLength} runs past the end`, p - 1)
  const flowId = b.subarray(p, p + flowLength)
  p += flowLength
  if (end - p < 1) return d.fail("truncated fanout parameters", end)
  const scopeLength = b[p]
  p += 1
  if (scopeLength === 0) return d.fail("an empty scope", p - 1)
  if (scopeLength > end - p) return d.fail(`scope length ${scopeLength} runs past the end`, p - 1)
  const scope = b.subarray(p, p + scopeLength)
  p += scopeLength
  const filter = readFilter(d, p, end)
  if (isError(filter)) return filter
  if (role !== ROLE_SUBSCRIBE && role !== ROLE_PUBLISH) {
    d.reject(Code.BAD_EXTENSION_PARAMS, `unknown fanout role ${role}`)
  }
  return { role, flowId, scope, filter }
}

/** The TLVs of CREATE (`accepted` false) or CREATE_ACK (true) from `start` to the end. */
const readExtensions = <A extends boolean>(
  d: In,
  start: number,
  accepted: A
): Array<A extends true ? AcceptedExtension : CreateExtension> | ChannelError => {
  type Ext = A extends true ? AcceptedExtension : CreateExtension
  const b = d.b
  const end = b.length
  const out: Array<Ext> = []
  // One bit per extension id seen: 256 bits.
  const seen = [0, 0, 0, 0, 0, 0, 0, 0]
  let p = start
  while (p < end) {
    if (end - p < 3) return d.fail("truncated extension header", p)
    const id = b[p]
    const length = readU16(b, p + 1)
    const value = p + 3
    if (length > end - value) return d.fail(`extension length ${length} runs past the end`, p + 1)
    if (seen[id >>> 5] & (1 << (id & 31))) return d.fail(`extension 0x${id.toString(16)} appears twice`, p)
    seen[id >>> 5] |= 1 << (id & 31)
    const valueEnd = value + length
    if (id === EXT_FANOUT) {
      if (accepted) {
        if (length !== 0) return d.fail("an accepted fanout extension with a value", value)
        out.push({ _tag: "Fanout" } as Ext)
      } else {
        const fanout = readFanout(d, value, valueEnd)
        if (isError(fanout)) return fanout
        out.push({ _tag: "Fanout", ...fanout } as Ext)
      }
    } else if (id === EXT_ENCRYPTION) {
      if (accepted) {
        if (length !== NONCE_SIZE) return d.fail(`an accepted encryption value of ${length} bytes`, p + 1)
        out.push({ _tag: "Encryption", nonce: b.subarray(value, valueEnd) } as Ext)
      } else {
        if (length !== ENCRYPTION_PARAMS_SIZE) return d.fail(`encryption parameters of ${length} bytes`, p + 1)
        const suite = b[value]
        if (suite !== SUITE_AES_128_GCM && suite !== SUITE_AES_256_GCM) {
          d.reject(Code.BAD_EXTENSION_PARAMS, `unknown encryption suite ${suite}`)
        }
        out.push(
          {
            _tag: "Encryption",
            suite,
            keyId: readU32(b, value + 1),
            nonce: b.subarray(value + 5, valueEnd)
          } as Ext
        )
      }
    } else if (accepted) {
      return d.fail(`an accepted extension 0x${id.toString(16)} that was never asked for`, p)
    } else {
      d.reject(Code.EXTENSION_NOT_NEGOTIATED, `unknown extension 0x${id.toString(16)}`)
    }
    p = valueEnd
  }
  return out
}

/** Member ids from `start` to the end, distinct, none equal to `target`. */
const readMembers = (d: In, start: number, max: number, target?: number): Array<number> | ChannelError => {
  const b = d.b
  const bytes = b.length - start
  if (bytes === 0 || bytes % 2 !== 0) return d.fail(`a member list of ${bytes} bytes`, start)
  const n = bytes / 2
  if (n > max) return d.fail(`${n} members: at most ${max}`, start)
  const members: Array<number> = []
  for (let i = 0; i < n; i++) {
    const at = start + 2 * i
    const m = d.channel(at, "member")
    if (isError(m)) return m
    if (m === target) return d.fail(`the target ${m} is also a member`, at)
    if (members.includes(m)) return d.fail(`member ${m} appears twice`, at)
    members.push(m)
  }
  return members
}

const other = (side: Side | undefined): Side | undefined =>
  side === undefined ? undefined : side === "client" ? "server" : "client"

const decodeBody = (d: In): ControlMessage | ChannelError => {
  const b = d.b
  const requestId = d.requestId
  const B = CONTROL_HEADER_SIZE
  let e: ChannelError | undefined
  switch (d.type) {
    case TYPE_CREATE: {
      if ((e = d.atLeast(11))) return e
      const channelId = d.owned(B, "channel", d.sender)
      if (isError(channelId)) return channelId
      const labelLength = b[B + 10]
      const labelEnd = B + 11 + labelLength
      if (labelEnd > b.length) return d.fail(`label length ${labelLength} runs past the end`, B + 10)
      const label = d.text(B + 11, labelEnd, MAX_LABEL, "label")
      if (isError(label)) return label
      const extensions = readExtensions(d, labelEnd, false)
      if (isError(extensions)) return extensions
      return d.done<Create>({
        _tag: "Create",
        requestId,
        channelId,
        extraMessages: readU32(b, B + 2),
        extraBytes: readU32(b, B + 6),
        label,
        extensions
      })
    }
    case TYPE_CREATE_ACK: {
      if ((e = d.atLeast(10))) return e
      const channelId = d.owned(B, "channel", other(d.sender))
      if (isError(channelId)) return channelId
      const extensions = readExtensions(d, B + 10, true)
      if (isError(extensions)) return extensions
      return {
        _tag: "CreateAck",
        requestId,
        channelId,
        extraMessages: readU32(b, B + 2),
        extraBytes: readU32(b, B + 6),
        extensions
      }
    }
    case TYPE_DESTROY: {
      if ((e = d.atLeast(4))) return e
      const channelId = d.channel(B, "channel")
      if (isError(channelId)) return channelId
      const reason = d.text(B + 4, b.length, MAX_DESTROY_REASON, "reason")
      if (isError(reason)) return reason
      return {
        _tag: "Destroy",
        requestId,
        channelId,
        abort: (b[1] & FLAG_ABORT) !== 0,
        code: readU16(b, B + 2),
        reason
      }
    }
    case TYPE_MIGRATE:
    case TYPE_MIGRATE_ACK: {
      if ((e = d.exact(4))) return e
      const owner = d.type === TYPE_MIGRATE ? d.sender : other(d.sender)
      const oldId = d.owned(B, "old channel", owner)
      if (isError(oldId)) return oldId
      const newId = d.owned(B + 2, "new channel", owner)
      if (isError(newId)) return newId
      if (oldId === newId) return d.fail(`channel ${oldId} migrated to itself`, B + 2, Code.INVALID_ID)
      if (ownerOf(oldId) !== ownerOf(newId)) {
        return d.fail(`old id ${oldId} and new id ${newId} differ in parity`, B + 2, Code.INVALID_ID)
      }
      return { _tag: d.type === TYPE_MIGRATE ? "Migrate" : "MigrateAck", requestId, oldId, newId }
    }
    case TYPE_MERGE: {
      if ((e = d.atLeast(4))) return e
      const target = d.channel(B, "target")
      if (isError(target)) return target
      const members = readMembers(d, B + 2, MAX_MERGE_MEMBERS, target)
      if (isError(members)) return members
      return { _tag: "Merge", requestId, target, members }
    }
    case TYPE_MERGE_ACK: {
      if ((e = d.exact(2))) return e
      const target = d.channel(B, "target")
      return isError(target) ? target : { _tag: "MergeAck", requestId, target }
    }
    case TYPE_UNMERGE: {
      if ((e = d.atLeast(2))) return e
      const members = readMembers(d, B, MAX_UNMERGE_MEMBERS)
      return isError(members) ? members : { _tag: "Unmerge", requestId, members }
    }
    case TYPE_UNMERGE_ACK:
      return (e = d.exact(0)) ? e : { _tag: "UnmergeAck", requestId }
    case TYPE_LINK: {
      if ((e = d.atLeast(2))) return e
      const channelId = d.channel(B, "channel")
      if (isError(channelId)) return channelId
      const fanout = readFanout(d, B + 2, b.length)
      if (isError(fanout)) return fanout
      return d.done<Link>({ _tag: "Link", requestId, channelId, fanout })
    }
    case TYPE_FILTER: {
      if ((e = d.atLeast(2))) return e
      const channelId = d.channel(B, "channel")
      if (isError(channelId)) return channelId
      const filter = readFilter(d, B + 2, b.length)
      if (isError(filter)) return filter
      return d.done<Filter>({ _tag: "Filter", requestId, channelId, filter })
    }
    case TYPE_UNLINK:
    case TYPE_DESTROY_ACK:
    case TYPE_LINK_ACK:
    case TYPE_UNLINK_ACK:
    case TYPE_FILTER_ACK: {
      if ((e = d.exact(2))) return e
      const channelId = d.channel(B, "channel")
      if (isError(channelId)) return channelId
      const tag = d.type === TYPE_UNLINK
        ? "Unlink" as const
        : d.type === TYPE_DESTROY_ACK
        ? "DestroyAck" as const
        : d.type === TYPE_LINK_ACK
        ? "LinkAck" as const
        : d.type === TYPE_UNLINK_ACK
        ? "UnlinkAck" as const
        : "FilterAck" as const
      return { _tag: tag, requestId, channelId }
    }
    case TYPE_PING:
      return (e = d.exact(0)) ? e : { _tag: "Ping", requestId }
    case TYPE_PONG:
      return (e = d.exact(0)) ? e : { _tag: "Pong", requestId }
    case TYPE_WINDOW: {
      const body = b.length - B
      if (body === 0 || body % WINDOW_GRANT_SIZE !== 0) {
        return d.fail(`a ${body}-byte body is not a whole number of 10-byte grants`, B)
      }
      const grants: Array<WindowGrant> = []
      for (let p = B; p < b.length; p += WINDOW_GRANT_SIZE) {
        const channelId = d.channel(p, "channel")
        if (isError(channelId)) return channelId
        grants.push({ channelId, messages: readU32(b, p + 2), bytes: readU32(b, p + 6) })
      }
      return { _tag: "Window", grants }
    }
    case TYPE_GOAWAY:
    case TYPE_ERROR: {
      if ((e = d.atLeast(2))) return e
      const text = d.text(B + 2, b.length, MAX_TEXT, d.type === TYPE_ERROR ? "detail" : "reason")
      if (isError(text)) return text
      const code = readU16(b, B)
      return d.type === TYPE_ERROR
        ? { _tag: "Error", requestId, code, detail: text }
        : { _tag: "GoAway", code, reason: text }
    }
  }
  // Unknown types (spec: Types): requests are refused, notifications ignored,
  // anything else is a violation.
  if (d.type >= 0x01 && d.type <= 0x3f) {
    return new ChannelError({
      reason: new RequestRejected({
        controlType: d.type,
        requestId,
        code: Code.UNKNOWN_TYPE,
        detail: `unknown request type 0x${d.type.toString(16)}`
      })
    })
  }
  if (d.type >= 0x40 && d.type <= 0x7f) return { _tag: "UnknownNotification", controlType: d.type }
  return d.fail(d.type > TYPE_ERROR && d.type < 0xc0 ? "a reply to a request type never sent" : "reserved type", 0)
}

/**
 * Decodes the payload of a message on channel 0xFFFF (what `decodeMessage`
 * answers as `payload`). Offsets in errors count from the first byte of that
 * payload.
 */
export const decodeControl = (payload: Uint8Array, options?: DecodeOptions): ControlMessage | ChannelError => {
  const size = payload.length
  if (size > MAX_CONTROL_SIZE) {
    return new ChannelError({
      reason: new MessageTooLarge({ size, max: MAX_CONTROL_SIZE, code: Code.PROTOCOL_ERROR })
    })
  }
  if (size < CONTROL_HEADER_SIZE) {
    return violation(`control message of ${size} byte(s): shorter than its 6-byte header`, size)
  }
  const type = payload[0]
  const requestId = readU32(payload, 2)
  const d = new In(payload, type, requestId, options?.sender)
  // Requests and replies carry a request id, notifications do not (spec: Control messages).
  const notification = type >= 0x40 && type <= 0x7f
  if (type !== 0 && type < 0xc0) {
    if (notification && requestId !== 0) return d.fail(`a notification with request id ${requestId}`, 2)
    if (!notification && requestId === 0) return d.fail("request id 0 on a request or reply", 2)
  }
  return decodeBody(d)
}

// ---------------------------------------------------------------------------
// Fanout filters
// ---------------------------------------------------------------------------

/**
 * Whether a filter lets `payload` through; undefined for an application
 * filter, which only the application's predicate can answer.
 */
export const filterMatches = (filter: ConsumerFilter, payload: Uint8Array): boolean | undefined => {
  switch (filter._tag) {
    case "All":
      return true
    case "Application":
      return undefined
    case "Prefixes":
      for (const prefix of filter.prefixes) {
        if (prefix.length > payload.length) continue
        let i = 0
        while (i < prefix.length && prefix[i] === payload[i]) i++
        if (i === prefix.length) return true
      }
      return false
  }
}

// ---------------------------------------------------------------------------
// Encryption layouts
// ---------------------------------------------------------------------------

/**
 * Writes the 12-byte IV of message number `counter` (0 ≤ counter < 2^53) in
 * one direction (spec: Encryption): direction, three zero bytes, the counter
 * as a big-endian u64.
 */
export const writeIv = (target: Uint8Array, offset: number, direction: number, counter: number): void => {
  target[offset] = direction
  target[offset + 1] = 0
  target[offset + 2] = 0
  target[offset + 3] = 0
  writeU32(target, offset + 4, Math.floor(counter / 0x100000000))
  writeU32(target, offset + 8, counter >>> 0)
}

/** A fresh IV, typed as WebCrypto's `BufferSource` wants it. */
export const makeIv = (direction: number, counter: number): Uint8Array<ArrayBuffer> => {
  const iv = new Uint8Array(IV_SIZE)
  writeIv(iv, 0, direction, counter)
  return iv
}

/** The 3-byte AAD: the channel id the message travels on, then the direction. */
export const makeAad = (channelId: number, direction: number): Uint8Array<ArrayBuffer> => {
  const aad = new Uint8Array(AAD_SIZE)
  writeHeader(aad, 0, channelId)
  aad[2] = direction
  return aad
}

/** HKDF salt: creator nonce ‖ acceptor nonce. */
export const hkdfSalt = (creatorNonce: Uint8Array, acceptorNonce: Uint8Array): Uint8Array<ArrayBuffer> => {
  const salt = new Uint8Array(2 * NONCE_SIZE)
  salt.set(creatorNonce.subarray(0, NONCE_SIZE), 0)
  salt.set(acceptorNonce.subarray(0, NONCE_SIZE), NONCE_SIZE)
  return salt
}

/** HKDF info: `plexus-channels-v1` then the suite byte. */
export const hkdfInfo = (suite: number): Uint8Array<ArrayBuffer> => {
  const prefix = utf8Encoder.encode(HKDF_INFO_PREFIX)
  const info = new Uint8Array(prefix.length + 1)
  info.set(prefix, 0)
  info[prefix.length] = suite
  return info
}

/** Key length in bytes of a suite, or undefined for an unknown one. */
export const suiteKeyLength = (suite: number): number | undefined =>
  suite === SUITE_AES_128_GCM ? 16 : suite === SUITE_AES_256_GCM ? 32 : undefined
