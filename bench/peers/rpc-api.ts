/**
 * The API both ends of the RPC suite (`bench/suites/rpc.ts`,
 * `bench/peers/rpc-server.ts`) speak: a unary call with a tiny payload and a
 * streaming call that sends `total` bytes as `chunk`-byte `Uint8Array`s, one
 * per stream element, the same buffer every time (the handler allocates
 * nothing per chunk, like the raw baseline). The gRPC baseline's `Ping`
 * is a generic service method with identity serializers: bytes in, the
 * same bytes out.
 */
import type * as Grpc from "@grpc/grpc-js"
import * as Effect from "effect/Effect"
import { Rpc, RpcGroup } from "effect/rpc"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"

export const BenchApi = RpcGroup.make(
  Rpc.make("Ping", { payload: { n: Schema.Number }, success: Schema.Number }),
  Rpc.make("Bytes", {
    payload: { total: Schema.Number, chunk: Schema.Number },
    success: Schema.Uint8Array,
    stream: true
  })
)

/** Largest chunk the stream handler sends; bounds what a request can make the peer allocate. */
export const MAX_CHUNK = 1024 * 1024

export const handlers = BenchApi.toLayer({
  Ping: ({ n }) => Effect.succeed(n),
  Bytes: ({ chunk, total }) => {
    const size = Math.max(1, Math.min(MAX_CHUNK, Math.floor(chunk)))
    const count = Math.ceil(Math.max(0, total) / size)
    const buffer = new Uint8Array(size).fill(0x5a)
    // One buffer per element and per Chunk message, as a reader of a file would send it.
    return Stream.fromIterable(Array.from({ length: count }, () => buffer), { chunkSize: 1 })
  }
})

const identity = (b: Buffer): Buffer => b

/** The gRPC service: `/bench.Bench/Ping`, bytes in, the same bytes out. */
export const grpcService: Grpc.ServiceDefinition = {
  Ping: {
    path: "/bench.Bench/Ping",
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity
  }
}
