/**
 * The pieces both ends of the KCM suite share (`bench/suites/kcm.ts` in the
 * bench process, `bench/peers/kcm-peer.ts` in the peer): the message format
 * and its verification, the hand-written `node:net` pool that is the
 * baseline, and the sender and receiver loops over a KCM multiplexor.
 *
 * Messages: message `id` of a round is `size` bytes whose first four bytes
 * are `id` (big endian), whose last four are `tag(id)`, and whose bytes in
 * between are a fixed pattern. Each sender stamps ids into its own scratch
 * buffers; both `send` paths frame (copy) a message before they return, so
 * a scratch buffer is reused only once its message is on its way. A
 * receiver checks each message's length, its tail against its id, one
 * pattern byte, and that its id was not seen before in the round; a round
 * completes when every id below the round's count arrived, so a lost,
 * duplicated, truncated or torn message fails the round instead of
 * producing a number.
 */
import * as Effect from "effect/Effect"
import { Buffer } from "node:buffer"
import type * as Net from "node:net"
import type { Kcm, MessageSocket } from "@plexus/kcm"

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

/** Smallest message size the format allows: id, one pattern byte, tag. */
export const MIN_SIZE = 9

/** The tail of message `id`: a mix of its bits, so a torn message rarely passes. */
export const tag = (id: number): number => (Math.imul(id ^ 0x5bd1e995, 0x9e3779b1) ^ (id >>> 7)) >>> 0

const patternByte = (i: number): number => (i * 29 + 0x5a) & 0xff

/** A message buffer of `size` bytes holding the fixed pattern; `stamp` gives it an id. */
export const scratch = (size: number): Uint8Array => {
  if (size < MIN_SIZE) throw new RangeError(`messages need at least ${MIN_SIZE} bytes, got ${size}`)
  const m = new Uint8Array(size)
  for (let i = 4; i < size - 4; i++) m[i] = patternByte(i)
  return m
}

const writeU32 = (m: Uint8Array, at: number, v: number): void => {
  m[at] = v >>> 24
  m[at + 1] = (v >>> 16) & 0xff
  m[at + 2] = (v >>> 8) & 0xff
  m[at + 3] = v & 0xff
}

const readU32 = (m: Uint8Array, at: number): number =>
  ((m[at] << 24) | (m[at + 1] << 16) | (m[at + 2] << 8) | m[at + 3]) >>> 0

/** Makes a scratch buffer message `id`. */
export const stamp = (m: Uint8Array, id: number): Uint8Array => {
  writeU32(m, 0, id)
  writeU32(m, m.length - 4, tag(id))
  return m
}

/**
 * Counts the messages of rounds of `expect` messages of `size` bytes each.
 * Rounds follow one another: the round after a complete one starts at once,
 * so messages of round n + 1 that overtake the news that round n began are
 * counted where they belong.
 */
export class Rounds {
  readonly expect: number
  readonly size: number
  private seen: Uint8Array
  private count = 0
  /** Rounds completed so far. */
  completed = 0
  /** The first damage seen; every later wait fails with it. */
  error: Error | undefined = undefined
  private readonly waiters: Array<{ round: number; resolve: () => void; reject: (e: Error) => void }> = []
  private readonly mid: number
  constructor(expect: number, size: number) {
    this.expect = expect
    this.size = size
    this.seen = new Uint8Array(expect)
    this.mid = size >>> 1
  }

  /** Records one received message. */
  add(m: Uint8Array): void {
    if (this.error !== undefined) return
    if (m.length !== this.size) return this.fail(`a message of ${m.length} bytes, expected ${this.size}`)
    const id = readU32(m, 0)
    if (id >= this.expect) return this.fail(`message id ${id} out of range (round of ${this.expect})`)
    if (readU32(m, m.length - 4) !== tag(id)) return this.fail(`message ${id} has a damaged tail`)
    if (m[this.mid] !== patternByte(this.mid)) return this.fail(`message ${id} is damaged in the middle`)
    if (this.seen[id] !== 0) return this.fail(`message ${id} arrived twice in round ${this.completed + 1}`)
    this.seen[id] = 1
    if (++this.count === this.expect) {
      this.completed++
      this.count = 0
      this.seen = new Uint8Array(this.expect)
      this.wake()
    }
  }

  /** Records a failure of the receiving side itself. */
  fail(message: string): void {
    if (this.error !== undefined) return
    this.error = new Error(message)
    for (const w of this.waiters.splice(0)) w.reject(this.error)
  }

  /** Settles once `round` rounds are complete (at once for rounds of no messages). */
  wait(round: number): Promise<void> {
    if (this.error !== undefined) return Promise.reject(this.error)
    if (this.expect === 0 || this.completed >= round) return Promise.resolve()
    return new Promise<void>((resolve, reject) => this.waiters.push({ round, resolve, reject }))
  }

  /** Messages of the current round so far (for error reports). */
  get partial(): number {
    return this.count
  }

  private wake(): void {
    for (let i = 0; i < this.waiters.length;) {
      const w = this.waiters[i]
      if (w.round <= this.completed) {
        this.waiters.splice(i, 1)
        w.resolve()
      } else i++
    }
  }
}

// ---------------------------------------------------------------------------
// The baseline: a hand-written pool over raw node:net
// ---------------------------------------------------------------------------

/** The same bound on a message as the KCM default delineation. */
const MAX_MESSAGE = 1024 * 1024

/**
 * A 4-byte big-endian length-prefix decoder for one connection, of the kind
 * a user writes: bodies cut out of a chunk with `subarray`, a carry buffer
 * for the message that straddles chunks.
 */
export class LengthPrefixDecoder {
  private readonly head = new Uint8Array(4)
  private headFilled = 0
  private body: Uint8Array | undefined = undefined
  private bodyFilled = 0

  private begin(length: number): void {
    if (length > MAX_MESSAGE) throw new RangeError(`a message of ${length} bytes exceeds ${MAX_MESSAGE}`)
    this.body = new Uint8Array(length)
    this.bodyFilled = 0
  }

  push(chunk: Uint8Array, out: Array<Uint8Array>): void {
    const n = chunk.length
    let pos = 0
    if (this.headFilled > 0) {
      while (this.headFilled < 4 && pos < n) this.head[this.headFilled++] = chunk[pos++]
      if (this.headFilled < 4) return
      this.headFilled = 0
      this.begin(readU32(this.head, 0))
    }
    if (this.body !== undefined) {
      const body = this.body
      const take = Math.min(body.length - this.bodyFilled, n - pos)
      body.set(chunk.subarray(pos, pos + take), this.bodyFilled)
      this.bodyFilled += take
      pos += take
      if (this.bodyFilled < body.length) return
      out.push(body)
      this.body = undefined
    }
    while (n - pos >= 4) {
      const length = readU32(chunk, pos)
      if (length > MAX_MESSAGE) throw new RangeError(`a message of ${length} bytes exceeds ${MAX_MESSAGE}`)
      if (pos + 4 + length > n) break
      out.push(chunk.subarray(pos + 4, pos + 4 + length))
      pos += 4 + length
    }
    if (pos === n) return
    if (n - pos < 4) {
      this.head.set(chunk.subarray(pos), 0)
      this.headFilled = n - pos
      return
    }
    this.begin(readU32(chunk, pos))
    this.body!.set(chunk.subarray(pos + 4), 0)
    this.bodyFilled = n - pos - 4
  }
}

/** Bytes of received messages queued before the pool stops reading (as KCM's default `receiveBudget`). */
const RECEIVE_BUDGET = 4 * 1024 * 1024

/**
 * What a user would write instead of KCM: connected `node:net` sockets,
 * round-robin sends of length-prefixed frames (one write each, waiting for
 * `'drain'` when `write()` answers false), a decoder per connection, and one
 * receive queue that consumers take batches from. Reading pauses when the
 * queue holds `RECEIVE_BUDGET` bytes, and resumes below half of it.
 */
export class RawPool {
  private readonly conns: Array<Net.Socket> = []
  private readonly drains = new Map<Net.Socket, Promise<void>>()
  private next = 0
  private queue: Array<Uint8Array> = []
  private head = 0
  private queuedBytes = 0
  private paused = false
  private readonly takers: Array<{ max: number; resolve: (batch: Array<Uint8Array>) => void }> = []
  private readonly incoming: Array<Uint8Array> = []
  /** Set when a connection fails or its byte stream is unusable. */
  onError: (error: Error) => void = () => {}

  /** Adds a connected socket. */
  attach(socket: Net.Socket): void {
    socket.setNoDelay(true)
    const decoder = new LengthPrefixDecoder()
    this.conns.push(socket)
    if (this.paused) socket.pause()
    socket.on("data", (chunk: Buffer) => {
      try {
        decoder.push(chunk, this.incoming)
      } catch (error) {
        socket.destroy()
        this.onError(error as Error)
        return
      }
      this.enqueue(this.incoming)
      this.incoming.length = 0
    })
    socket.on("error", (error) => this.onError(error))
  }

  /** Connections attached. */
  get size(): number {
    return this.conns.length
  }

  /** Sends one message on the next connection; a promise only when that connection asks to wait. */
  send(message: Uint8Array): Promise<void> | undefined {
    const socket = this.conns[this.next]
    this.next = this.next + 1 === this.conns.length ? 0 : this.next + 1
    const frame = Buffer.allocUnsafe(4 + message.length)
    frame.writeUInt32BE(message.length, 0)
    frame.set(message, 4)
    if (socket.write(frame)) return undefined
    let drained = this.drains.get(socket)
    if (drained === undefined) {
      drained = new Promise<void>((resolve) => {
        socket.once("drain", () => {
          this.drains.delete(socket)
          resolve()
        })
      })
      this.drains.set(socket, drained)
    }
    return drained
  }

  /** Up to `max` received messages, waiting for at least one. */
  take(max: number): Promise<Array<Uint8Array>> {
    if (this.takers.length === 0 && this.head < this.queue.length) return Promise.resolve(this.takeNow(max))
    return new Promise((resolve) => this.takers.push({ max, resolve }))
  }

  /** Closes every connection. */
  destroy(): void {
    for (const socket of this.conns) socket.destroy()
  }

  private enqueue(messages: Array<Uint8Array>): void {
    for (let i = 0; i < messages.length; i++) {
      this.queue.push(messages[i])
      this.queuedBytes += messages[i].length
    }
    while (this.takers.length > 0 && this.head < this.queue.length) {
      const taker = this.takers.shift()!
      taker.resolve(this.takeNow(taker.max))
    }
    if (!this.paused && this.queuedBytes >= RECEIVE_BUDGET) {
      this.paused = true
      for (const socket of this.conns) socket.pause()
    }
  }

  private takeNow(max: number): Array<Uint8Array> {
    const end = Math.min(this.queue.length, this.head + max)
    const batch = this.queue.slice(this.head, end)
    for (let i = 0; i < batch.length; i++) this.queuedBytes -= batch[i].length
    this.head = end
    if (this.head === this.queue.length) {
      this.queue = []
      this.head = 0
    }
    if (this.paused && this.queuedBytes < RECEIVE_BUDGET / 2) {
      this.paused = false
      for (const socket of this.conns) socket.resume()
    }
    return batch
  }
}

/** `consumers` loops taking batches of up to 256 messages off the pool's queue into `rounds`. */
export const consumeRaw = (pool: RawPool, rounds: Rounds, consumers: number): void => {
  pool.onError = (error) => rounds.fail(`raw pool: ${error.message}`)
  const loop = async () => {
    while (true) {
      const batch = await pool.take(256)
      for (let i = 0; i < batch.length; i++) rounds.add(batch[i])
    }
  }
  for (let i = 0; i < consumers; i++) void loop()
}

/**
 * Sends messages 0 .. count-1 of `size` bytes from `senders` concurrent
 * loops, each with its own scratch buffer, waiting only when a connection
 * asks to.
 */
export const sendRaw = async (pool: RawPool, count: number, size: number, senders: number): Promise<void> => {
  let next = 0
  const loop = async () => {
    const m = scratch(size)
    while (next < count) {
      const wait = pool.send(stamp(m, next++))
      if (wait !== undefined) await wait
    }
  }
  await Promise.all(Array.from({ length: senders }, loop))
}

// ---------------------------------------------------------------------------
// KCM
// ---------------------------------------------------------------------------

/** Concurrent senders on each side, KCM fibers or async loops alike. */
export const SENDERS = 64

/** Messages one `sendAll` hands over in the batched row. */
export const BATCH = 256

/**
 * Opens `count` message sockets on `mux` and, for each, a fiber pulling
 * batches into `rounds`, in the caller's scope. Answers the sockets (which
 * the senders use too).
 */
export const receiveKcm = (mux: Kcm.Multiplexor, rounds: Rounds, count: number) =>
  Effect.gen(function*() {
    const sockets: Array<MessageSocket.MessageSocket> = []
    for (let i = 0; i < count; i++) {
      const socket = yield* mux.socket()
      sockets.push(socket)
      yield* Effect.forkScoped(
        Effect.gen(function*() {
          while (true) {
            const batch = yield* socket.pull
            for (let k = 0; k < batch.length; k++) rounds.add(batch[k])
          }
        }).pipe(Effect.catchCause((cause) => Effect.sync(() => rounds.fail(`kcm socket ${i}: ${String(cause)}`))))
      )
    }
    return sockets
  })

/**
 * Sends messages 0 .. count-1 of `size` bytes from `senders` concurrent
 * fibers spread over `sockets`: one `send` per message, or with `batch`,
 * one `sendAll` per `batch` messages.
 */
export const sendKcm = (
  sockets: ReadonlyArray<MessageSocket.MessageSocket>,
  count: number,
  size: number,
  senders: number,
  batch?: number
): Effect.Effect<void, unknown> =>
  Effect.suspend(() => {
    let next = 0
    const single = (socket: MessageSocket.MessageSocket) => {
      const m = scratch(size)
      return Effect.whileLoop({
        while: () => next < count,
        body: () => socket.send(stamp(m, next++)),
        step: () => {}
      })
    }
    const batched = (socket: MessageSocket.MessageSocket, per: number) => {
      const buffers = Array.from({ length: per }, () => scratch(size))
      return Effect.whileLoop({
        while: () => next < count,
        body: () => {
          const n = Math.min(per, count - next)
          for (let i = 0; i < n; i++) stamp(buffers[i], next++)
          return socket.sendAll(n === per ? buffers : buffers.slice(0, n))
        },
        step: () => {}
      })
    }
    return Effect.forEach(
      Array.from({ length: senders }, (_, k) => sockets[k % sockets.length]),
      (socket) => (batch === undefined ? single(socket) : batched(socket, batch)),
      { concurrency: "unbounded", discard: true }
    )
  })

/** Waits until `mux` has `connections` transports attached (a server accepts asynchronously). */
export const awaitAttached = (mux: Kcm.Multiplexor, connections: number, timeoutMs = 10_000) =>
  Effect.gen(function*() {
    const deadline = Date.now() + timeoutMs
    while ((yield* mux.attached) < connections) {
      if (Date.now() > deadline) {
        return yield* Effect.fail(new Error(`only ${yield* mux.attached} of ${connections} connections attached`))
      }
      yield* Effect.sleep(1)
    }
  })

/** Waits until `pool` has `connections` sockets attached. */
export const awaitRawAttached = async (pool: RawPool, connections: number, timeoutMs = 10_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (pool.size < connections) {
    if (Date.now() > deadline) throw new Error(`only ${pool.size} of ${connections} raw connections attached`)
    await new Promise((resolve) => setTimeout(resolve, 1))
  }
}
