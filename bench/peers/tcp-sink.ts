/**
 * Bench peer: a TCP receiver that counts bytes. Started by the transport
 * suite as `tcp-sink.ts <impl>`, it listens on an ephemeral 127.0.0.1 port,
 * announces `{ type: "ready", port }`, and for every connection reports
 * `{ type: "received", bytes }` once the sender has closed its side.
 *
 * Implementations, each reading the way its users would:
 * - `raw`: `node:net` with `'data'` events;
 * - `raw-onread`: `node:net` reading into one reused 64 KiB buffer through
 *   the `onread` option (node's server has none, so each accepted, paused
 *   socket's handle is taken over by a socket made with it): raw node:net
 *   at its leanest;
 * - `plexus`: `@plexus/transport-tcp` `Tcp.listen`, a `reader.pull` loop;
 * - `plexus-borrowed`: the same server, each connection read borrowed
 *   (`Transport.borrowedReads`), counting the bytes of every lent read;
 * - `platform-node`: `@effect/platform-node` `NodeSocketServer.make`, the
 *   same `reader.pull` loop.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import * as Net from "node:net"
import { announce, report } from "../harness/Child.ts"

const HOST = "127.0.0.1"

/** Pulls until the peer's clean close, then reports the byte count. */
const sink = (socket: Socket.Socket): Effect.Effect<void> =>
  Effect.suspend(() => {
    let bytes = 0
    return Effect.gen(function*() {
      const { pull } = yield* socket.reader
      while (true) {
        const batch = yield* pull
        for (let i = 0; i < batch.length; i++) bytes += batch[i].length
      }
    }).pipe(
      Effect.scoped,
      Effect.catchReason("SocketError", "SocketCloseError", () => Effect.sync(() => report({ type: "received", bytes }))),
      Effect.catch((error) => Effect.sync(() => report({ type: "error", message: String(error) })))
    )
  })

/** Runs an effect server until the process is killed. */
const serve = (
  listen: Effect.Effect<{ readonly port: number; readonly run: Effect.Effect<never, unknown> }, unknown, Scope.Scope>
) =>
  Effect.runFork(
    Effect.scoped(Effect.gen(function*() {
      const server = yield* listen
      announce({ type: "ready", port: server.port })
      return yield* server.run
    })).pipe(Effect.tapCause((cause) => Effect.sync(() => process.stderr.write(`tcp-sink: ${String(cause)}\n`))))
  )

const impl = process.argv[2]
switch (impl) {
  case "raw": {
    const server = Net.createServer((socket) => {
      let bytes = 0
      socket.on("data", (chunk: Buffer) => {
        bytes += chunk.length
      })
      socket.on("end", () => {
        report({ type: "received", bytes })
        socket.end()
      })
      socket.on("error", (error) => report({ type: "error", message: String(error) }))
    })
    server.listen({ host: HOST, port: 0 }, () => {
      announce({ type: "ready", port: (server.address() as Net.AddressInfo).port })
    })
    break
  }
  case "raw-onread": {
    const memory = Buffer.alloc(64 * 1024)
    const server = Net.createServer({ pauseOnConnect: true }, (accepted) => {
      let bytes = 0
      const handle = (accepted as unknown as { _handle: unknown })._handle
      ;(accepted as unknown as { _handle: unknown })._handle = null
      const socket = new Net.Socket({
        handle: handle as never,
        readable: true,
        writable: true,
        onread: {
          buffer: memory,
          callback: (n: number) => {
            bytes += n
            return true
          }
        }
      } as Net.SocketConstructorOpts)
      socket.on("end", () => {
        report({ type: "received", bytes })
        socket.end()
        accepted.destroy()
      })
      socket.on("error", (error) => report({ type: "error", message: String(error) }))
      socket.resume()
    })
    server.listen({ host: HOST, port: 0 }, () => {
      announce({ type: "ready", port: (server.address() as Net.AddressInfo).port })
    })
    break
  }
  case "plexus": {
    const { Tcp } = await import("@plexus/transport-tcp")
    serve(Effect.map(Tcp.listen({ host: HOST, port: 0 }), (server) => ({ port: server.port, run: server.run(sink) })))
    break
  }
  case "plexus-borrowed": {
    const { Tcp } = await import("@plexus/transport-tcp")
    const { Transport } = await import("@plexus/core")
    const sinkBorrowed = (socket: Socket.Socket): Effect.Effect<void> =>
      Effect.suspend(() => {
        let bytes = 0
        const reads = Transport.borrowedReads(socket)
        if (reads === undefined) return Effect.sync(() => report({ type: "error", message: "no borrowed reads" }))
        return reads.readBorrowed((chunk) => {
          bytes += chunk.length
        }).pipe(
          Effect.scoped,
          Effect.catchReason("SocketError", "SocketCloseError", () => Effect.sync(() => report({ type: "received", bytes }))),
          Effect.catch((error) => Effect.sync(() => report({ type: "error", message: String(error) })))
        )
      })
    serve(Effect.map(Tcp.listen({ host: HOST, port: 0 }), (server) => ({ port: server.port, run: server.run(sinkBorrowed) })))
    break
  }
  case "platform-node": {
    const { NodeSocketServer } = await import("@effect/platform-node")
    serve(Effect.flatMap(NodeSocketServer.make({ host: HOST, port: 0 }), (server) =>
      server.address._tag === "UnixPathAddress"
        ? Effect.die(new Error("expected a TCP address"))
        : Effect.succeed({ port: server.address.port, run: server.run(sink) })))
    break
  }
  default:
    process.stderr.write(`tcp-sink: unknown implementation ${JSON.stringify(impl)} (raw | plexus | platform-node)\n`)
    process.exit(2)
}
