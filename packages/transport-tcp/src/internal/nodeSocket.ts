/**
 * The adapter from one connected `node:net` (or `node:tls`) socket to an
 * `effect/socket` `Socket`, following plexus's byte transport conventions
 * (see `@plexus/core` `Transport`).
 *
 * Reads: sockets this package makes (dialled or accepted) are read through
 * node's `onread` option, into memory the adapter chooses. For a `Reader`
 * every read of 32 KiB or more goes into fresh memory that is handed on as
 * it is; a smaller read is copied out and its memory read into again. For a
 * borrowed reader (`Transport.BorrowedReads`) one buffer is read into again
 * and again, so a bulk receiver allocates nothing per read. Sockets made
 * elsewhere (TLS, `fromNetSocket`) are read from `'data'` events, each
 * Buffer handed on as received, and offer no borrowed reader (a `Reader`
 * keeps their fresh Buffers without a copy).
 *
 * Chunks for a `Reader` go into a list whose byte count pauses the socket at
 * the high-water mark (and resumes it when a `pull` takes the list). A
 * waiting `pull` is woken once per event-loop turn with everything that turn
 * read, so a busy connection costs one fiber resumption per batch, not per
 * chunk. Writes respect `write()`'s return value and wait for `'drain'`. All
 * per-chunk work is plain code on one connection object; Effect only
 * appears where a fiber has to wait.
 *
 * @internal
 */
import type { NonEmptyReadonlyArray } from "effect/Array"
import * as Effect from "effect/Effect"
import * as Scope from "effect/Scope"
import * as Socket from "effect/socket/Socket"
import { Transport } from "@plexus/core"
import { Buffer } from "node:buffer"
import * as Net from "node:net"

const NetSocket = Net.Socket

/** Node reads at most this much at a time; our read memory is this size. */
const READ_SIZE = 64 * 1024

/** A read at least this large is handed to a Reader in place; a smaller one is copied out. */
const HAND_ON_BYTES = READ_SIZE >>> 1

/** @internal */
export const DEFAULT_HIGH_WATER_MARK = 1024 * 1024

/** A waiting pull is woken at once when this much arrived in one turn. */
const WAKE_BYTES = 256 * 1024

/** @internal */
export const DEFAULT_LINGER_MS = 2_000

/** @internal */
export interface AdapterOptions {
  /** Bytes buffered for the reader before the socket is paused. */
  readonly highWaterMark?: number | undefined
}

/**
 * Node's `onread` option for one socket, and the memory it reads into next.
 * Made before the socket (node takes `onread` at construction only), bound
 * to the socket's adapter when that is made.
 */
class ReadInto {
  connection: Connection | undefined = undefined
  memory: Uint8Array | undefined = undefined
  /** Reads that arrived before the adapter existed (node starts reading a dialled socket at connect). */
  early: Array<Uint8Array> | undefined = undefined
  readonly onread = {
    buffer: (): Uint8Array => this.memory ??= Buffer.allocUnsafeSlow(READ_SIZE),
    callback: (n: number, memory: Uint8Array): boolean => {
      const connection = this.connection
      if (connection !== undefined) connection.onRead(n, memory, this)
      else (this.early ??= []).push(Buffer.from(memory.subarray(0, n)))
      return true
    }
  }
}

const readIntos = new WeakMap<Net.Socket, ReadInto>()

/**
 * Makes a node socket that reads into the adapter's memory: `make` gets the
 * `onread` option to pass to `Net.connect` or `new Net.Socket`.
 *
 * @internal
 */
export const readingInto = (make: (onread: ReadInto["onread"]) => Net.Socket): Net.Socket => {
  const into = new ReadInto()
  const conn = make(into.onread)
  readIntos.set(conn, into)
  return conn
}

/**
 * Takes over an accepted connection's handle with a socket that reads into
 * the adapter's memory (node's server has no `onread` option). The accepted
 * socket must not have read yet (`pauseOnConnect`). It stays behind,
 * without a handle, until the new socket closes, so the server's connection
 * count (and `maxConnections`) still covers this connection. Where the
 * handle cannot be taken, the accepted socket is used as it is.
 *
 * @internal
 */
export const adoptReadingInto = (
  accepted: Net.Socket,
  options: { readonly noDelay: boolean; readonly keepAlive: boolean; readonly keepAliveInitialDelay: number }
): Net.Socket => {
  const holder = accepted as unknown as { _handle?: unknown }
  const handle = holder._handle
  if (handle === undefined || handle === null || accepted.destroyed || accepted.readableFlowing === true) {
    return accepted
  }
  let conn: Net.Socket
  try {
    conn = readingInto((onread) =>
      new NetSocket({
        handle: handle as never,
        allowHalfOpen: accepted.allowHalfOpen,
        // The server applied these to the handle already; the new socket
        // records them the way the accepted one did.
        noDelay: options.noDelay,
        keepAlive: options.keepAlive,
        keepAliveInitialDelay: options.keepAliveInitialDelay,
        readable: true,
        writable: true,
        pauseOnCreate: true,
        onread
      } as Net.SocketConstructorOpts))
  } catch {
    return accepted
  }
  holder._handle = null
  conn.once("close", () => accepted.destroy())
  return conn
}

type Batch = NonEmptyReadonlyArray<Uint8Array>
type ReadResume = (effect: Effect.Effect<Batch, Socket.SocketError>) => void
type DrainResume = (effect: Effect.Effect<void, Socket.SocketError>) => void

const writeError = (cause: unknown): Socket.SocketError =>
  new Socket.SocketError({ reason: new Socket.SocketWriteError({ cause }) })

const errorCode = (error: Error): string => {
  const code = (error as NodeJS.ErrnoException).code
  return typeof code === "string" ? code : error.name
}

interface ReaderHandle {
  closed: boolean
}

const readerClosedError = Transport.closedError(Transport.CLOSE_NORMAL, "reader closed")
const writeSideClosed = writeError(new Error("write side closed"))

class Connection {
  readonly conn: Net.Socket
  readonly highWaterMark: number
  readonly wakeBytes: number
  chunks: Array<Uint8Array> = []
  buffered = 0
  /** Whether we asked the socket to stop flowing (before the first reader, or at the high-water mark). */
  paused = true
  started = false
  wakeScheduled = false
  /** When set, incoming data is dropped: this side closed its read direction. */
  discard = false
  waiter: ReadResume | undefined = undefined
  waiterReader: ReaderHandle | undefined = undefined
  /** Terminal read state, delivered once the buffered chunks were pulled. */
  readError: Socket.SocketError | undefined = undefined
  /** Terminal write state. */
  writeError: Socket.SocketError | undefined = undefined
  drainWaiters: Array<DrainResume> = []
  /** The borrowed reader's chunk handler, while one reads. */
  borrower: ((chunk: Uint8Array) => void) | undefined = undefined
  /** Ends the borrowed read with the terminal read state. */
  borrowEnd: ((effect: Effect.Effect<never, Socket.SocketError>) => void) | undefined = undefined

  constructor(conn: Net.Socket, options?: AdapterOptions) {
    this.conn = conn
    this.highWaterMark = Math.max(1, options?.highWaterMark ?? DEFAULT_HIGH_WATER_MARK)
    this.wakeBytes = Math.min(WAKE_BYTES, Math.ceil(this.highWaterMark / 2))
    // Pause before adding the data listener, or adding it would start the flow
    // and lose bytes that arrive before a reader exists.
    conn.pause()
    conn.on("data", this.onData)
    conn.on("end", this.onEnd)
    conn.on("error", this.onError)
    conn.on("close", this.onClose)
    conn.on("drain", this.onDrain)
    if (conn.destroyed) this.onClose()
    const into = readIntos.get(conn)
    if (into !== undefined) {
      into.connection = this
      const early = into.early
      into.early = undefined
      if (early !== undefined) for (const chunk of early) this.onData(chunk)
    }
  }

  // ---------------------------------------------------------------- read side

  /** A read into our memory (`onread`). */
  onRead(n: number, memory: Uint8Array, into: ReadInto): void {
    if (this.discard) return
    if (this.borrower !== undefined) {
      // Lent: the same memory is read into again once the borrower returns.
      this.lend(memory.subarray(0, n))
      return
    }
    let chunk: Uint8Array
    if (n >= HAND_ON_BYTES && memory === into.memory) {
      // The memory was never initialised: what the read did not fill is
      // cleared, so `chunk.buffer` shows nothing but these bytes.
      if (n < memory.length) memory.fill(0, n)
      chunk = memory.subarray(0, n)
      into.memory = undefined
    } else {
      chunk = Buffer.allocUnsafe(n)
      chunk.set(memory.subarray(0, n))
    }
    this.onData(chunk)
  }

  lend(chunk: Uint8Array): void {
    try {
      this.borrower!(chunk)
    } catch (cause) {
      // A borrower that throws ends the read with its error; the connection
      // cannot be trusted to be in step any more.
      this.borrower = undefined
      this.discardReads(Transport.closedError(Transport.CLOSE_ABNORMAL, `borrowed reader failed: ${String(cause)}`))
      abort(this.conn)
    }
  }

  readonly onData = (chunk: Uint8Array): void => {
    if (this.discard) return
    if (this.borrower !== undefined) {
      this.lend(chunk)
      return
    }
    this.chunks.push(chunk)
    this.buffered += chunk.byteLength
    if (!this.paused && this.buffered >= this.highWaterMark) {
      this.paused = true
      this.conn.pause()
    }
    // Wake a waiting pull once per event-loop turn, after the reads of this
    // turn's poll phase arrived (node reads up to 64 KiB at a time, often
    // dozens per turn): one resumption per batch instead of per chunk. A
    // batch that grows large wakes it at once, well before the high-water
    // mark would pause the socket.
    if (this.waiter !== undefined) {
      if (this.buffered >= this.wakeBytes) this.wake()
      else if (!this.wakeScheduled) {
        this.wakeScheduled = true
        setImmediate(this.onImmediate)
      }
    }
  }

  readonly onImmediate = (): void => {
    this.wakeScheduled = false
    this.wake()
  }

  wake(): void {
    const waiter = this.waiter
    if (waiter === undefined || this.chunks.length === 0) return
    this.waiter = undefined
    this.waiterReader = undefined
    waiter(this.takeChunks())
  }

  takeChunks(): Effect.Effect<Batch> {
    const out = this.chunks as unknown as Batch
    this.chunks = []
    this.buffered = 0
    if (this.paused && this.readError === undefined && !this.conn.destroyed) {
      this.paused = false
      this.conn.resume()
    }
    return Effect.succeed(out)
  }

  take(reader: ReaderHandle): Effect.Effect<Batch, Socket.SocketError> {
    if (reader.closed) return Effect.fail(readerClosedError)
    if (this.chunks.length > 0) return this.takeChunks()
    if (this.readError !== undefined) return Effect.fail(this.readError)
    this.waiterReader = reader
    return this.wait
  }

  // One effect object and one cancel effect for every wait: allocation on
  // this path is paid again in GC work under sustained load.
  readonly clearWaiter = Effect.sync(() => {
    this.waiter = undefined
    this.waiterReader = undefined
  })

  readonly wait: Effect.Effect<Batch, Socket.SocketError> = Effect.callback<Batch, Socket.SocketError>((resume) => {
    this.waiter = resume
    return this.clearWaiter
  })

  /** Sets the terminal read state and wakes a waiting pull with it. */
  endRead(error: Socket.SocketError, dropBuffered: boolean): void {
    this.readError ??= error
    if (dropBuffered) {
      this.chunks = []
      this.buffered = 0
    }
    const borrowEnd = this.borrowEnd
    if (borrowEnd !== undefined) {
      this.borrowEnd = undefined
      borrowEnd(Effect.fail(this.readError))
    }
    const waiter = this.waiter
    if (waiter !== undefined && this.chunks.length === 0) {
      this.waiter = undefined
      this.waiterReader = undefined
      waiter(Effect.fail(this.readError))
    }
  }

  /** Stops reading on this side: drops what is buffered and what arrives. */
  discardReads(error: Socket.SocketError): void {
    this.discard = true
    this.endRead(error, true)
    if (this.paused && !this.conn.destroyed) {
      // Keep draining until the peer's FIN, so both directions end and the
      // socket closes itself instead of lingering half-open.
      this.paused = false
      this.conn.resume()
    }
  }

  readonly acquireReader: Effect.Effect<Socket.Reader, Socket.SocketError, Scope.Scope> = Effect.flatMap(
    Effect.scope,
    (scope) => Effect.suspend(() => this.openReader(scope))
  )

  openReader(scope: Scope.Scope): Effect.Effect<Socket.Reader, Socket.SocketError> {
    if (this.readError !== undefined && this.chunks.length === 0) return Effect.fail(this.readError)
    const handle: ReaderHandle = { closed: false }
    if (!this.started) {
      this.started = true
      if (this.readError === undefined && this.buffered < this.highWaterMark) {
        this.paused = false
        this.conn.resume()
      }
    }
    const reader: Socket.Reader = {
      pull: Effect.suspend(() => this.take(handle)),
      upgrade: Socket.SocketUpgradeError.unsupported
    }
    return Effect.as(Scope.addFinalizer(scope, Effect.sync(() => this.closeReader(handle))), reader)
  }

  readonly readBorrowed = (
    onChunk: (chunk: Uint8Array) => void
  ): Effect.Effect<never, Socket.SocketError, Scope.Scope> =>
    Effect.flatMap(Effect.scope, (scope) =>
      Effect.suspend(() => {
        if (this.borrower !== undefined) return Effect.die(new Error("the socket is already read borrowed"))
        return Effect.andThen(
          Scope.addFinalizer(scope, Effect.sync(() => this.stopBorrowing(onChunk))),
          Effect.callback<never, Socket.SocketError>((resume) => {
            this.borrower = onChunk
            // What a Reader left buffered comes first, in order.
            const left = this.chunks
            this.chunks = []
            this.buffered = 0
            for (let i = 0; i < left.length && this.borrower === onChunk; i++) this.lend(left[i]!)
            if (this.readError !== undefined) return resume(Effect.fail(this.readError))
            this.borrowEnd = resume
            this.started = true
            if (this.paused && !this.conn.destroyed) {
              this.paused = false
              this.conn.resume()
            }
            return Effect.sync(() => {
              if (this.borrowEnd === resume) this.borrowEnd = undefined
            })
          })
        )
      }))

  /** Reads go to the chunk list again, paused at the high-water mark as ever. */
  stopBorrowing(onChunk: (chunk: Uint8Array) => void): void {
    if (this.borrower !== onChunk) return
    this.borrower = undefined
    this.borrowEnd = undefined
  }

  closeReader(handle: ReaderHandle): void {
    handle.closed = true
    const waiter = this.waiter
    if (waiter !== undefined && this.waiterReader === handle) {
      this.waiter = undefined
      this.waiterReader = undefined
      waiter(Effect.fail(readerClosedError))
    }
  }

  readonly onEnd = (): void => {
    this.endRead(Transport.closedError(Transport.CLOSE_NORMAL), false)
  }

  readonly onError = (error: Error): void => {
    // A reset or broken pipe: what was already received is still delivered,
    // then the abrupt close.
    this.endRead(Transport.closedError(Transport.CLOSE_ABNORMAL, errorCode(error)), false)
    this.endWrite(writeError(error))
  }

  readonly onClose = (): void => {
    // Closed without FIN or error seen by us: destroyed on this side.
    this.endRead(Transport.closedError(Transport.CLOSE_ABNORMAL, "ERR_SOCKET_CLOSED"), false)
    this.endWrite(writeError(new Error("socket closed")))
  }

  // --------------------------------------------------------------- write side

  readonly onDrain = (): void => {
    const waiters = this.drainWaiters
    if (waiters.length === 0) return
    this.drainWaiters = []
    for (let i = 0; i < waiters.length; i++) waiters[i]!(Effect.void)
  }

  endWrite(error: Socket.SocketError): void {
    this.writeError ??= error
    const waiters = this.drainWaiters
    if (waiters.length === 0) return
    this.drainWaiters = []
    const failed = Effect.fail(this.writeError)
    for (let i = 0; i < waiters.length; i++) waiters[i]!(failed)
  }

  readonly awaitDrain: Effect.Effect<void, Socket.SocketError> = Effect.callback<void, Socket.SocketError>(
    (resume) => {
      if (this.writeError !== undefined) return resume(Effect.fail(this.writeError))
      this.drainWaiters.push(resume)
      return Effect.sync(() => {
        const i = this.drainWaiters.indexOf(resume)
        if (i >= 0) this.drainWaiters.splice(i, 1)
      })
    }
  )

  writable(): boolean {
    if (this.writeError !== undefined) return false
    const conn = this.conn
    if (conn.destroyed || conn.writableEnded) {
      this.writeError = writeSideClosed
      return false
    }
    return true
  }

  writeNow(chunk: Uint8Array | string | Socket.CloseEvent): Effect.Effect<void, Socket.SocketError> {
    if (typeof chunk === "object" && Socket.isCloseEvent(chunk)) return this.closeWith(chunk)
    if (!this.writable()) return Effect.fail(this.writeError!)
    try {
      return this.conn.write(chunk) ? Effect.void : this.awaitDrain
    } catch (cause) {
      return Effect.fail(writeError(cause))
    }
  }

  writeAllNow(chunks: NonEmptyReadonlyArray<Uint8Array | string>): Effect.Effect<void, Socket.SocketError> {
    if (!this.writable()) return Effect.fail(this.writeError!)
    const conn = this.conn
    let ok = true
    try {
      if (chunks.length === 1) {
        ok = conn.write(chunks[0])
      } else {
        conn.cork()
        try {
          for (let i = 0; i < chunks.length; i++) ok = conn.write(chunks[i]!) && ok
        } finally {
          conn.uncork()
        }
      }
    } catch (cause) {
      return Effect.fail(writeError(cause))
    }
    return ok ? Effect.void : this.awaitDrain
  }

  closeWith(event: Socket.CloseEvent): Effect.Effect<void> {
    const conn = this.conn
    if (event.code === Transport.CLOSE_NORMAL) {
      // Graceful: flush what is queued, send FIN, stop reading.
      this.discardReads(Transport.closedError(Transport.CLOSE_NORMAL))
      this.endWrite(writeSideClosed)
      if (!conn.destroyed && !conn.writableEnded) conn.end()
    } else {
      this.discardReads(Transport.closedError(Transport.CLOSE_ABNORMAL, event.reason ?? `closed with code ${event.code}`))
      this.endWrite(writeSideClosed)
      abort(conn)
    }
    return Effect.void
  }

  readonly acquireWriter: Effect.Effect<Socket.Writer, never, Scope.Scope> = Effect.acquireRelease(
    Effect.sync((): Socket.Writer => ({
      write: (chunk) => Effect.suspend(() => this.writeNow(chunk)),
      writeAll: (chunks) => Effect.suspend(() => this.writeAllNow(chunks))
    })),
    () =>
      Effect.sync(() => {
        // Half-close: the peer sees a clean end, our read side keeps going.
        const conn = this.conn
        if (!conn.destroyed && !conn.writableEnded) conn.end()
      })
  )
}

/**
 * Sends RST. A TLS socket's own handle cannot reset, so its TCP socket
 * (`_parent`, set when TLS wraps an existing socket, as both our dial and
 * node's TLS server do) is reset instead.
 *
 * @internal
 */
export const abort = (conn: Net.Socket): void => {
  if (conn.destroyed) return
  const parent = (conn as { _parent?: unknown })._parent
  const target = parent instanceof NetSocket ? parent : conn
  try {
    target.resetAndDestroy()
  } catch {
    // no handle that can reset: a plain close is the best left
  }
  conn.destroy()
}

const registry = new WeakMap<Socket.Socket, Net.Socket>()

/**
 * Presents one connected node socket as a `Socket`. The caller owns the node
 * socket's lifetime (see `release`).
 *
 * @internal
 */
export const fromNodeSocket = (conn: Net.Socket, options?: AdapterOptions): Socket.Socket => {
  const connection = new Connection(conn, options)
  const socket = Socket.make({ reader: connection.acquireReader, writer: connection.acquireWriter })
  registry.set(socket, conn)
  Transport.registerWriteBacklog(socket, () => conn.writableLength)
  // Borrowed reads pay off where reads land in reused memory; a socket read
  // from 'data' events hands over fresh Buffers anyway, which a Reader keeps
  // without a copy.
  if (readIntos.has(conn)) Transport.registerBorrowedReads(socket, { readBorrowed: connection.readBorrowed })
  return socket
}

/** The node socket behind a Socket made by `fromNodeSocket`. @internal */
export const underlying = (socket: Socket.Socket): Net.Socket | undefined => registry.get(socket)

/**
 * Ends a connection: at once when nothing is left to flush, otherwise after
 * flushing queued writes (FIN), resetting it if that takes longer than
 * `lingerMs`. Never truncates a stream silently: a flush that does not finish
 * shows up at the peer as a reset, not as a clean end.
 *
 * @internal
 */
export const release = (conn: Net.Socket, lingerMs: number = DEFAULT_LINGER_MS): void => {
  if (conn.destroyed) return
  if (conn.writableLength === 0 || lingerMs <= 0) {
    if (conn.writableLength === 0) conn.destroy()
    else abort(conn)
    return
  }
  const timer = setTimeout(() => abort(conn), lingerMs)
  timer.unref()
  conn.once("close", () => clearTimeout(timer))
  if (conn.writableFinished) conn.destroy()
  else {
    conn.once("finish", () => conn.destroy())
    if (!conn.writableEnded) conn.end()
  }
}
