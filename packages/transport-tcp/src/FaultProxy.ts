/**
 * An in-process TCP proxy that injects faults, for testing the layers above
 * TCP on a machine without netem. It listens on `127.0.0.1:0` and forwards
 * each connection to a target port; each direction (`upstream`: client to
 * target, `downstream`: target to client) can be given latency, a bandwidth
 * cap, slicing into small writes, or a blackhole, and `reset` resets every
 * connection on both sides.
 *
 * The one thing to know: faults only delay or cut, they never drop or alter
 * bytes. A blackhole holds what it receives (reading stops once a bounded
 * amount is held, so the sender feels TCP backpressure) and lets it flow on
 * when lifted. Closing the proxy's Scope closes everything.
 *
 * @since 0.1.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as SocketServer from "effect/socket/SocketServer"
import * as Net from "node:net"
import { abort } from "./internal/nodeSocket.ts"

/**
 * Faults of one direction. Unset fields are off.
 *
 * @category models
 * @since 0.1.0
 */
export interface Faults {
  /** Delay added to every chunk. */
  readonly latency?: Duration.Input | undefined
  /** Bytes per second, paced in pieces of about 20 ms. */
  readonly bandwidth?: number | undefined
  /** Forward in writes of at most this many bytes, one per event-loop turn. */
  readonly slice?: number | undefined
  /** Stop forwarding (hold the bytes) while keeping the connection. */
  readonly blackhole?: boolean | undefined
}

/**
 * `upstream` is client to target, `downstream` target to client.
 *
 * @category models
 * @since 0.1.0
 */
export type Direction = "upstream" | "downstream" | "both"

/**
 * @category models
 * @since 0.1.0
 */
export interface Stats {
  /** Connections accepted since the proxy started. */
  readonly connections: number
  /** Connections with at least one side still open. */
  readonly open: number
  readonly upstreamBytes: number
  readonly downstreamBytes: number
  /** Writes made toward the target and toward the client. */
  readonly upstreamWrites: number
  readonly downstreamWrites: number
}

/**
 * @category models
 * @since 0.1.0
 */
export interface FaultProxy {
  /** The port clients connect to (on 127.0.0.1). */
  readonly port: number
  /** Replaces the faults of a direction, for open and future connections. */
  readonly set: (direction: Direction, faults: Faults) => Effect.Effect<void>
  /** Resets (RST) both sides of every open connection. */
  readonly reset: Effect.Effect<void>
  readonly stats: Effect.Effect<Stats>
}

interface FaultState {
  latency: number
  bandwidth: number
  slice: number
  blackhole: boolean
  bytes: number
  writes: number
}

const HELD_HIGH_WATER_MARK = 256 * 1024

const toState = (state: FaultState, faults: Faults): void => {
  state.latency = faults.latency === undefined ? 0 : Duration.toMillis(faults.latency)
  state.bandwidth = faults.bandwidth ?? 0
  state.slice = faults.slice === undefined ? 0 : Math.max(1, Math.floor(faults.slice))
  state.blackhole = faults.blackhole ?? false
}

/** One direction of one proxied connection. */
class Pipe {
  readonly src: Net.Socket
  readonly dst: Net.Socket
  readonly faults: FaultState
  queue: Array<{ data: Buffer; at: number }> = []
  held = 0
  nextAt = 0
  timer: ReturnType<typeof setTimeout> | undefined = undefined
  immediate: ReturnType<typeof setImmediate> | undefined = undefined
  waitingDrain = false
  srcEnded = false
  dstEnded = false

  constructor(src: Net.Socket, dst: Net.Socket, faults: FaultState) {
    this.src = src
    this.dst = dst
    this.faults = faults
    src.on("data", (data: Buffer) => {
      this.queue.push({ data, at: performance.now() + this.faults.latency })
      this.held += data.length
      if (this.held >= HELD_HIGH_WATER_MARK) src.pause()
      this.pump()
    })
    src.on("end", () => {
      this.srcEnded = true
      this.pump()
    })
  }

  readonly wake = () => {
    this.timer = undefined
    this.immediate = undefined
    this.pump()
  }

  readonly onDrain = () => {
    this.waitingDrain = false
    this.pump()
  }

  pump(): void {
    if (this.timer !== undefined || this.immediate !== undefined || this.waitingDrain || this.dst.destroyed) return
    const f = this.faults
    // A bandwidth cap paces pieces of about 20 ms each, so it holds within a chunk too.
    const slice = f.slice > 0 ? f.slice : f.bandwidth > 0 ? Math.max(1, Math.min(16384, Math.floor(f.bandwidth / 50))) : 0
    while (this.queue.length > 0) {
      if (f.blackhole) return
      const now = performance.now()
      const item = this.queue[0]!
      const due = Math.max(item.at, this.nextAt)
      if (due > now) {
        this.timer = setTimeout(this.wake, Math.ceil(due - now))
        return
      }
      let piece = item.data
      if (slice > 0 && piece.length > slice) {
        piece = item.data.subarray(0, slice)
        item.data = item.data.subarray(slice)
      } else {
        this.queue.shift()
      }
      this.held -= piece.length
      if (f.bandwidth > 0) this.nextAt = Math.max(this.nextAt, now) + (piece.length * 1000) / f.bandwidth
      f.bytes += piece.length
      f.writes++
      const ok = this.dst.write(piece)
      if (this.held < HELD_HIGH_WATER_MARK / 2 && this.src.isPaused() && !this.src.destroyed) this.src.resume()
      if (!ok) {
        this.waitingDrain = true
        this.dst.once("drain", this.onDrain)
        return
      }
      if (f.slice > 0) {
        // One slice per turn, so the receiver reads each on its own.
        this.immediate = setImmediate(this.wake)
        return
      }
    }
    if (this.srcEnded && !this.dstEnded && !f.blackhole) {
      this.dstEnded = true
      if (!this.dst.destroyed) this.dst.end()
    }
  }

  stop(): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    if (this.immediate !== undefined) clearImmediate(this.immediate)
    this.timer = undefined
    this.immediate = undefined
    this.queue = []
  }
}

/**
 * Starts a proxy to `target` (a port on 127.0.0.1, or `{ host, port }`).
 *
 * @category constructors
 * @since 0.1.0
 */
export const make = (options: {
  readonly target: number | { readonly host?: string | undefined; readonly port: number }
}): Effect.Effect<FaultProxy, SocketServer.SocketServerError, Scope.Scope> =>
  Effect.suspend(() => {
    const target = typeof options.target === "number" ? { host: "127.0.0.1", port: options.target } : {
      host: options.target.host ?? "127.0.0.1",
      port: options.target.port
    }
    const up: FaultState = { latency: 0, bandwidth: 0, slice: 0, blackhole: false, bytes: 0, writes: 0 }
    const down: FaultState = { latency: 0, bandwidth: 0, slice: 0, blackhole: false, bytes: 0, writes: 0 }
    const pairs = new Set<{ client: Net.Socket; server: Net.Socket; pipes: Array<Pipe> }>()
    let connections = 0

    const server = Net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (client) => {
      connections++
      const upstream = Net.connect({ ...target, allowHalfOpen: true, noDelay: true })
      const pair = { client, server: upstream, pipes: [new Pipe(client, upstream, up), new Pipe(upstream, client, down)] }
      pairs.add(pair)
      let closed = 0
      const onClose = (hadError: boolean, other: Net.Socket) => {
        // An abrupt end on one side is passed on as an abrupt end.
        if (hadError) abort(other)
        if (++closed === 2) {
          for (const p of pair.pipes) p.stop()
          pairs.delete(pair)
        }
      }
      client.on("error", () => {})
      upstream.on("error", () => {})
      client.on("close", (hadError) => onClose(hadError, upstream))
      upstream.on("close", (hadError) => onClose(hadError, client))
      upstream.once("connect", () => client.resume())
    })

    const pumpAll = () => {
      for (const pair of pairs) for (const p of pair.pipes) p.pump()
    }

    const proxy = Effect.callback<FaultProxy, SocketServer.SocketServerError>((resume) => {
      server.once("error", (cause) =>
        resume(Effect.fail(
          new SocketServer.SocketServerError({ reason: new SocketServer.SocketServerOpenError({ cause }) })
        )))
      server.listen({ host: "127.0.0.1", port: 0 }, () => {
        server.on("error", () => {})
        resume(Effect.succeed({
          port: (server.address() as Net.AddressInfo).port,
          set: (direction, faults) =>
            Effect.sync(() => {
              if (direction !== "downstream") toState(up, faults)
              if (direction !== "upstream") toState(down, faults)
              pumpAll()
            }),
          reset: Effect.sync(() => {
            for (const pair of pairs) {
              abort(pair.client)
              abort(pair.server)
            }
          }),
          stats: Effect.sync(() => ({
            connections,
            open: pairs.size,
            upstreamBytes: up.bytes,
            downstreamBytes: down.bytes,
            upstreamWrites: up.writes,
            downstreamWrites: down.writes
          }))
        }))
      })
    })

    return Effect.acquireRelease(proxy, () =>
      Effect.callback<void>((resume) => {
        for (const pair of pairs) {
          for (const p of pair.pipes) p.stop()
          pair.client.destroy()
          pair.server.destroy()
        }
        server.close(() => resume(Effect.void))
      }))
  })
