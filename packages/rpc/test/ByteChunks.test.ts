/**
 * The codec of byte chunks (internal/byteChunks.ts): the bytes schema-binary
 * writes, read back as views, and out of the way of any serialization that
 * writes byte chunks otherwise.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { RpcSerialization } from "effect/rpc"
import * as Schema from "effect/Schema"
import { ByteFrame, decode, encode, join, withByteChunks } from "../src/internal/byteChunks.ts"

type Service = RpcSerialization.RpcSerialization["Service"]

const schemaBinary: Service = Effect.runSync(
  Effect.provide(RpcSerialization.RpcSerialization, RpcSerialization.layerSchemaBinary())
)

const chunks = Schema.NonEmptyArray(Schema.Uint8Array)
const values: [Uint8Array, ...Array<Uint8Array>] = [new Uint8Array(300).fill(1), Uint8Array.of(), Uint8Array.of(2, 3)]

describe("byte chunks", () => {
  it("are written exactly as schema-binary writes them", () => {
    const theirs = Schema.encodeSync(schemaBinary.codecFor(chunks))(values)
    assert.deepStrictEqual(Array.from(encode(values)), Array.from(theirs as Uint8Array))
    const byReference = Schema.encodeSync(withByteChunks(schemaBinary, { byReference: true }).codecFor(chunks))(values)
    assert.instanceOf(byReference, ByteFrame)
    assert.deepStrictEqual(Array.from(join(byReference as ByteFrame)), Array.from(theirs as Uint8Array))
  })

  it("hold the values by reference in a ByteFrame, never copied", () => {
    const frame = Schema.encodeSync(withByteChunks(schemaBinary, { byReference: true }).codecFor(chunks))(values) as ByteFrame
    assert.strictEqual(frame.parts[1], values[0])
    assert.strictEqual(frame.parts[5], values[2])
  })

  it("are read as views of the received bytes, without a copy", () => {
    const bytes = encode(values)
    const read = Schema.decodeUnknownSync(withByteChunks(schemaBinary).codecFor(chunks))(bytes)
    assert.deepStrictEqual(read.map((v) => Array.from(v)), values.map((v) => Array.from(v)))
    assert.strictEqual(read[0].buffer, bytes.buffer)
  })

  it("hand bytes they cannot read to the serialization's decoder, which rejects them", () => {
    const bytes = encode(values)
    // A count of 3 that the bytes cannot hold: a lie.
    const lying = bytes.slice(0, 8)
    assert.isUndefined(decode(lying))
    const exit = Schema.decodeUnknownExit(withByteChunks(schemaBinary).codecFor(chunks))(lying)
    assert.isTrue(Exit.isFailure(exit))
    assert.isUndefined(decode(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])))
    assert.isUndefined(decode(new Uint8Array(0)))
  })

  it("leave a serialization that writes byte chunks otherwise (JSON) unchanged", () => {
    const json = RpcSerialization.json
    assert.strictEqual(withByteChunks(json), json)
  })

  it("leave every other schema to the serialization", () => {
    const wrapped = withByteChunks(schemaBinary)
    const numbers = Schema.NonEmptyArray(Schema.Number)
    assert.strictEqual(wrapped.codecFor(numbers), schemaBinary.codecFor(numbers))
  })
})
