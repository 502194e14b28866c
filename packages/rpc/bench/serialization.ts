/**
 * Compares effect/rpc's `json` and `schemaBinary` serializations on one
 * request envelope and its success exit, for a small payload and 64 KiB
 * ones (text, bytes, and numbers): bytes on the wire and encode+decode
 * round trips per second. Run: `npx node packages/rpc/bench/serialization.ts`.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import { Rpc, RpcSerialization } from "effect/rpc"

const Small = Schema.Struct({ id: Schema.Number, name: Schema.String, admin: Schema.Boolean })
const Text = Schema.Struct({ id: Schema.Number, body: Schema.String })
const Bytes = Schema.Struct({ id: Schema.Number, body: Schema.Uint8Array })
const Numbers = Schema.Struct({ id: Schema.Number, values: Schema.Array(Schema.Number) })

const cases = [
  { name: "small struct", schema: Small, value: { id: 42, name: "ann", admin: false } },
  { name: "64 KiB string", schema: Text, value: { id: 1, body: "x".repeat(64 * 1024) } },
  { name: "64 KiB bytes", schema: Bytes, value: { id: 1, body: new Uint8Array(64 * 1024).map((_, i) => i & 0xff) } },
  {
    name: "8192 floats (64 KiB)",
    schema: Numbers,
    value: { id: 1, values: Array.from({ length: 8192 }, (_, i) => i * 1.5) }
  }
] as const

const run = (label: string, serialization: RpcSerialization.RpcSerialization["Service"]) => {
  for (const c of cases) {
    const rpc = Rpc.make("Echo", { payload: c.schema, success: c.schema })
    const codec = serialization.codecFor(rpc.payloadSchema as Schema.Top)
    const exitCodec = serialization.codecFor(Rpc.exitSchema(rpc as any) as Schema.Top)
    const encodePayload = Schema.encodeSync(codec as any)
    const decodePayload = Schema.decodeUnknownSync(codec as any)
    const encodeExit = Schema.encodeSync(exitCodec as any)
    const decodeExit = Schema.decodeUnknownSync(exitCodec as any)
    const sender = serialization.makeUnsafe()
    const receiver = serialization.makeUnsafe()
    const roundTrip = () => {
      const request = sender.encode({
        _tag: "Request", id: 1, tag: "Echo", payload: encodePayload(c.value), headers: []
      })!
      const [decoded] = receiver.decode(request) as Array<any>
      const payload = decodePayload(decoded.payload)
      const response = receiver.encode({
        _tag: "Exit", requestId: 1, exit: encodeExit(Exit.succeed(payload))
      })!
      const [exit] = sender.decode(response) as Array<any>
      decodeExit(exit.exit)
      return (typeof request === "string" ? Buffer.byteLength(request) : request.length) +
        (typeof response === "string" ? Buffer.byteLength(response) : response.length)
    }
    const bytes = roundTrip()
    for (let i = 0; i < 200; i++) roundTrip()
    const budget = 400
    const start = performance.now()
    let n = 0
    while (performance.now() - start < budget) {
      roundTrip()
      n++
    }
    const perSecond = Math.round(n / ((performance.now() - start) / 1000))
    console.log(`${label.padEnd(14)} ${c.name.padEnd(22)} ${String(bytes).padStart(8)} B/round trip ${String(perSecond).padStart(9)} round trips/s`)
  }
}

run("json", RpcSerialization.json)
const binary = await Effect.runPromise(
  Effect.scoped(Effect.map(Layer.build(RpcSerialization.layerSchemaBinary()), Context.get(RpcSerialization.RpcSerialization)))
)
run("schema-binary", binary)
