/**
 * Bench peer: every server of the RPC suite (`bench/suites/rpc.ts`), each
 * on an ephemeral 127.0.0.1 port, all serving `BenchApi` (`rpc-api.ts`):
 *
 * - `session`: effect/rpc over `RpcSession.layerServer()` on
 *   `Tcp.layerServer` (a session per connection, a stream per call);
 * - `messages`: effect/rpc over `RpcSocket.layerServer()` on
 *   `Tcp.layerServer` (`RpcMessages`, length-prefixed on each connection);
 * - `kcm`: effect/rpc over `RpcKcm.layerServer()` on `Kcm.layerServer()`
 *   on `Tcp.layerServer` (every connection joins one multiplexor);
 * - `socket`: effect/rpc's own socket protocol
 *   (`RpcServer.layerProtocolSocketServer`) on `@effect/platform-node`'s
 *   `NodeSocketServer`, schema-binary like the two above;
 * - `grpc`: an `@grpc/grpc-js` server with the generic `/bench.Bench/Ping`
 *   service (identity serializers, the handler answers the request bytes);
 * - `raw`: `node:net`: a client writes a decimal byte count and a newline,
 *   and the server writes that many bytes in 64 KiB writes (waiting for
 *   `'drain'`), then ends the connection.
 *
 * Every effect/rpc server runs with `disableTracing: true`. It announces
 * `{ type: "ready", session, messages, kcm, socket, grpc, raw }` (the ports) and
 * serves until the bench goes away.
 */
import * as Grpc from "@grpc/grpc-js"
import { NodeSocketServer } from "@effect/platform-node"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import { RpcSerialization, RpcServer } from "effect/rpc"
import * as SocketServer from "effect/socket/SocketServer"
import * as Net from "node:net"
import { Kcm } from "@plexus/kcm"
import { RpcKcm, RpcSession, RpcSocket } from "@plexus/rpc"
import { Tcp, TcpServer } from "@plexus/transport-tcp"
import { announce } from "../harness/Child.ts"
import { BenchApi, grpcService, handlers } from "./rpc-api.ts"

const HOST = "127.0.0.1"
const RAW_CHUNK = 64 * 1024
/** Largest byte count the raw server accepts in one request (bounds the work a request asks for). */
const RAW_MAX = 4 * 1024 * 1024 * 1024

const rpcServer = RpcServer.layer(BenchApi, { disableTracing: true }).pipe(Layer.provide(handlers))

const plexusPorts = Effect.gen(function*() {
  const session = yield* Layer.build(
    rpcServer.pipe(
      Layer.provideMerge(RpcSession.layerServer()),
      Layer.provideMerge(Tcp.layerServer({ host: HOST, port: 0 }))
    )
  )
  const messages = yield* Layer.build(
    rpcServer.pipe(
      Layer.provideMerge(RpcSocket.layerServer()),
      Layer.provideMerge(Tcp.layerServer({ host: HOST, port: 0 }))
    )
  )
  const kcm = yield* Layer.build(
    rpcServer.pipe(
      Layer.provideMerge(RpcKcm.layerServer()),
      Layer.provideMerge(Kcm.layerServer()),
      Layer.provideMerge(Tcp.layerServer({ host: HOST, port: 0 }))
    )
  )
  const socket = yield* Layer.build(
    rpcServer.pipe(
      Layer.provideMerge(RpcServer.layerProtocolSocketServer),
      Layer.provideMerge(NodeSocketServer.layer({ host: HOST, port: 0 })),
      Layer.provide(RpcSerialization.layerSchemaBinary())
    )
  )
  const address = Context.get(socket, SocketServer.SocketServer).address
  if (address._tag === "UnixPathAddress") throw new Error("the socket server is not on TCP")
  return {
    session: Context.get(session, TcpServer.TcpServer).port,
    messages: Context.get(messages, TcpServer.TcpServer).port,
    kcm: Context.get(kcm, TcpServer.TcpServer).port,
    socket: address.port
  }
})

const grpcPort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = new Grpc.Server()
    server.addService(grpcService, {
      Ping: (call: Grpc.ServerUnaryCall<Buffer, Buffer>, callback: Grpc.sendUnaryData<Buffer>) =>
        callback(null, call.request)
    })
    server.bindAsync(`${HOST}:0`, Grpc.ServerCredentials.createInsecure(), (error, port) =>
      error === null ? resolve(port) : reject(error))
  })

const rawPort = (): Promise<number> =>
  new Promise((resolve) => {
    const chunk = new Uint8Array(RAW_CHUNK).fill(0x5a)
    const server = Net.createServer({ noDelay: true }, (socket) => {
      let request = ""
      socket.on("error", () => socket.destroy())
      socket.on("data", (data) => {
        if (request.includes("\n")) return
        request += data.toString("latin1")
        if (request.length > 32) return socket.destroy()
        if (!request.includes("\n")) return
        const total = Number(request.trim())
        if (!Number.isSafeInteger(total) || total < 0 || total > RAW_MAX) return socket.destroy()
        let sent = 0
        const pump = () => {
          while (sent < total) {
            const n = Math.min(RAW_CHUNK, total - sent)
            sent += n
            if (!socket.write(n === RAW_CHUNK ? chunk : chunk.subarray(0, n))) {
              socket.once("drain", pump)
              return
            }
          }
          socket.end()
        }
        pump()
      })
    })
    server.listen({ host: HOST, port: 0 }, () => resolve((server.address() as Net.AddressInfo).port))
  })

// The servers live as long as the process: their scope is never closed.
const scope = Effect.runSync(Scope.make())
const plexus = await Effect.runPromise(Scope.provide(plexusPorts, scope))
announce({ type: "ready", ...plexus, grpc: await grpcPort(), raw: await rawPort() })
// Exits (writing a `--cpu-prof` profile, when asked for one) once its parent is gone.
process.once("disconnect", () => process.exit(0))
