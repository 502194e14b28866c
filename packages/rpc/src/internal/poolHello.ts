/**
 * The pool hello (docs/spec/rpc.md, Calls over a KCM pool): the first bytes
 * a client pool's connection sends, naming the pool, so that a server can
 * keep each client process's connections together. Parsed from the first
 * bytes of the stream, with a hard bound on what is held.
 */
import * as Effect from "effect/Effect"
import * as Socket from "effect/socket/Socket"

/** "PXPH" */
const MAGIC = [0x50, 0x58, 0x50, 0x48] as const
const VERSION = 1
/** Magic, version, id length. */
const HEADER = 6
/** Longest pool id. */
export const MAX_POOL_ID_BYTES = 64

const encoder = new TextEncoder()
const decoder = new TextDecoder("utf-8", { fatal: true })

/** The hello of a pool id (1–64 bytes of UTF-8). */
export const encode = (poolId: string): Uint8Array => {
  const id = encoder.encode(poolId)
  if (id.length === 0 || id.length > MAX_POOL_ID_BYTES) throw new RangeError("a pool id is 1 to 64 bytes of UTF-8")
  const out = new Uint8Array(HEADER + id.length)
  out.set(MAGIC, 0)
  out[4] = VERSION
  out[5] = id.length
  out.set(id, HEADER)
  return out
}

/** A fresh random pool id. */
export const randomPoolId = (): string => {
  const bytes = new Uint8Array(16)
  globalThis.crypto.getRandomValues(bytes)
  let out = ""
  for (let i = 0; i < bytes.length; i++) out += bytes[i].toString(16).padStart(2, "0")
  return out
}

/** Why a hello was refused. */
export type HelloFailure = { readonly _tag: "BadHello"; readonly detail: string } | { readonly _tag: "Closed" }

/**
 * Reads a hello from the start of a stream: the pool id and the bytes that
 * followed it in the same chunk. Never holds more than the hello's own
 * bound (70 bytes) beyond the chunk that completes it.
 */
export const read = (
  reader: Socket.Reader
): Effect.Effect<{ readonly poolId: string; readonly rest: Uint8Array | undefined }, HelloFailure> => {
  let held = new Uint8Array(0)
  const step: Effect.Effect<{ readonly poolId: string; readonly rest: Uint8Array | undefined }, HelloFailure> = Effect
    .flatMap(
      Effect.mapError(reader.pull, (): HelloFailure => ({ _tag: "Closed" })),
      (chunks) => {
        for (const chunk of chunks) {
          const bytes = typeof chunk === "string" ? encoder.encode(chunk) : chunk
          const next = new Uint8Array(held.length + bytes.length)
          next.set(held, 0)
          next.set(bytes, held.length)
          held = next
        }
        const known = Math.min(held.length, 5)
        for (let i = 0; i < known; i++) {
          if (i < 4 ? held[i] !== MAGIC[i] : held[i] !== VERSION) {
            return Effect.fail<HelloFailure>({ _tag: "BadHello", detail: i < 4 ? "no pool hello" : `version ${held[i]}` })
          }
        }
        if (held.length < HEADER) return step
        const length = held[5]
        if (length === 0 || length > MAX_POOL_ID_BYTES) {
          return Effect.fail<HelloFailure>({ _tag: "BadHello", detail: `pool id of ${length} bytes` })
        }
        if (held.length < HEADER + length) return step
        let poolId: string
        try {
          poolId = decoder.decode(held.subarray(HEADER, HEADER + length))
        } catch {
          return Effect.fail<HelloFailure>({ _tag: "BadHello", detail: "pool id is not UTF-8" })
        }
        const rest = held.length > HEADER + length ? held.subarray(HEADER + length) : undefined
        return Effect.succeed({ poolId, rest })
      }
    )
  return step
}

/** A socket whose writer sends `hello` once, before anything else. */
export const sendingHello = (socket: Socket.Socket, hello: Uint8Array): Socket.Socket => {
  let sent = false
  return Socket.make({
    reader: socket.reader,
    writer: Effect.tap(socket.writer, (writer) => {
      if (sent) return Effect.void
      sent = true
      return Effect.ignore(writer.write(hello))
    })
  })
}

/** A socket over an acquired reader that first hands back `rest`. */
export const resuming = (
  socket: Socket.Socket,
  reader: Socket.Reader,
  rest: Uint8Array | undefined
): Socket.Socket => {
  let pending = rest
  const pull: Socket.Reader["pull"] = Effect.suspend(() => {
    if (pending === undefined) return reader.pull
    const first = pending
    pending = undefined
    return Effect.succeed([first] as const)
  })
  return Socket.make({
    reader: Effect.succeed({ ...reader, pull }),
    writer: socket.writer
  })
}
