/**
 * Hostile input and faults (docs/spec/rpc.md, Limits): requests a client
 * library would never send, written raw on the wire; floods of
 * cancellations; connections lost and servers draining with calls in
 * flight.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import { RpcSerialization } from "effect/rpc"
import * as Scope from "effect/Scope"
import { Memory, MuxStream, Session } from "@plexus/core"
import { Idempotent, RpcSession } from "../src/index.ts"
import * as FramedStream from "../src/internal/framedStream.ts"
import { Api, makeProbe, type Probe } from "./fixtures/Api.ts"
import { kcmOnMemory, sessionOnMemory } from "./fixtures/Connect.ts"
import { clientOf, eventually, type Protocols, serveApi, start, transportError } from "./fixtures/RpcSuite.ts"

const json = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.provideService(effect, RpcSerialization.RpcSerialization, RpcSerialization.json)

const text = new TextEncoder()
const envelope = (value: unknown): Uint8Array => {
  const body = text.encode(JSON.stringify(value))
  const out = new Uint8Array(body.length + 1)
  out.set(body, 1)
  return out
}
const parse = (message: Uint8Array): any => JSON.parse(new TextDecoder().decode(message.subarray(1)))

/** One raw call on its own stream: what came back, and the reset code if the server reset it. */
const rawCall = (session: Session.Session, message: Uint8Array) =>
  Effect.scoped(Effect.gen(function*() {
    const stream = yield* session.open({ type: RpcSession.STREAM_TYPE })
    const framed = yield* FramedStream.make(stream, 1024 * 1024)
    yield* framed.send(message)
    const received: Array<any> = []
    while (true) {
      const next = yield* Effect.result(framed.next)
      if (next._tag === "Failure") {
        const failure = next.failure
        const typed = failure._tag === "Stream" ? MuxStream.streamError(failure.error) : undefined
        return { received, reset: typed?.reason._tag === "StreamReset" ? typed.reason.code : -1 }
      }
      if (next.success === undefined) return { received, reset: undefined }
      received.push(parse(next.success))
      if (received[received.length - 1]._tag === "Exit") return { received, reset: undefined }
    }
  }))

const request = (id: number, tag: string, payload: unknown) => ({ _tag: "Request", id, tag, payload, headers: [] })

const dieMessage = (exit: any): string => JSON.stringify(exit?.exit?.cause ?? exit)

/** 1,000 calls cancelled at once: each handler is interrupted, and none is left running. */
const cancellationStorm = (
  protocols: Protocols & { readonly serverControl: { readonly stats: Effect.Effect<{ readonly running: number }> } }
) =>
  Effect.gen(function*() {
    const probe = makeProbe()
    const client = yield* start(protocols, probe)
    const calls = yield* Effect.forEach(
      Array.from({ length: 1000 }),
      // Forked by the test's fiber itself, so they live until interrupted.
      () => Effect.forkChild(client.Hang({}))
    )
    yield* eventually("1,000 handlers running", () => probe.running === 1000, 30)
    yield* Effect.forEach(calls, Fiber.interrupt, { concurrency: "unbounded", discard: true })
    yield* eventually("every handler exited", () => probe.running === 0, 30)
    assert.strictEqual(probe.interrupted, 1000)
    assert.strictEqual((yield* protocols.serverControl.stats).running, 0)
  })

/**
 * A dial for a client that connects to a new server each time: server `i`
 * reports to `probes[i]`. The servers live in `scope`.
 */
const serverPerDial = (probes: ReadonlyArray<Probe>, scope: Scope.Scope) => {
  const servers: Array<{ readonly control: RpcSession.Server; readonly pair: Memory.BytePair }> = []
  const dial = Effect.gen(function*() {
    const index = servers.length
    const pair = yield* Memory.makeBytePair().pipe(Scope.provide(scope))
    const serverSession = yield* Session.make(pair.b, { role: "server" }).pipe(Scope.provide(scope))
    const control = yield* RpcSession.makeServer().pipe(Scope.provide(scope))
    yield* control.attach(serverSession).pipe(Scope.provide(scope))
    yield* serveApi(control.protocol, probes[index]).pipe(Scope.provide(scope))
    servers.push({ control, pair })
    return yield* Session.make(pair.a, { role: "client" })
  })
  return { dial, servers }
}

describe("RPC hostile input over a session", () => {
  it.live("a schema-invalid payload is answered with a defect and the handler never runs", () =>
    json(Effect.gen(function*() {
      const probe = makeProbe()
      const pair = yield* sessionOnMemory()
      yield* start(pair, probe)
      const { received } = yield* rawCall(pair.clientSession, envelope(request(1, "Sleep", { millis: "soon" })))
      assert.strictEqual(received.length, 1)
      assert.strictEqual(received[0].exit._tag, "Failure")
      assert.strictEqual(received[0].exit.cause[0]._tag, "Die")
      assert.strictEqual(probe.started, 0)
    })))

  it.live("unknown method names, __proto__ and constructor among them, are answered as unknown", () =>
    json(Effect.gen(function*() {
      const probe = makeProbe()
      const pair = yield* sessionOnMemory()
      const client = yield* start(pair, probe)
      for (const tag of ["Nope", "__proto__", "constructor", "toString", "hasOwnProperty"]) {
        const { received } = yield* rawCall(pair.clientSession, envelope(request(1, tag, {})))
        assert.strictEqual(received.length, 1, tag)
        assert.include(dieMessage(received[0]), "Unknown request tag", tag)
      }
      assert.strictEqual(yield* client.Echo({ text: "unharmed" }), "unharmed")
    })))

  it.live("a message that is no request resets its stream and leaves the session serving", () =>
    json(Effect.gen(function*() {
      const pair = yield* sessionOnMemory()
      const client = yield* start(pair, makeProbe())
      const garbage = yield* rawCall(pair.clientSession, new Uint8Array([0, 0x7b, 0x7b]))
      assert.strictEqual(garbage.reset, Session.Code.PROTOCOL_ERROR)
      const notRequest = yield* rawCall(pair.clientSession, envelope({ _tag: "Ack", requestId: 1 }))
      assert.strictEqual(notRequest.reset, Session.Code.PROTOCOL_ERROR)
      assert.strictEqual((yield* pair.serverControl.stats).malformed, 2)
      assert.strictEqual(yield* client.Echo({ text: "still serving" }), "still serving")
    })))

  it.live("an oversized request is refused by the client before sending, and by the server before reading", () =>
    Effect.gen(function*() {
      const pair = yield* sessionOnMemory({ server: { maxRequestBytes: 64 * 1024 } })
      const client = yield* start(pair, makeProbe())
      const exit = yield* Effect.exit(client.Size({ bytes: new Uint8Array(5 * 1024 * 1024) }))
      const error = transportError(exit)
      assert.strictEqual(error?.reason._tag, "MessageTooLarge")
      assert.isTrue(error?.retryable)
      // Past the server's own limit (64 KiB here) but within the client's.
      const big = yield* Effect.exit(client.Size({ bytes: new Uint8Array(256 * 1024) }))
      assert.strictEqual(transportError(big)?.reason._tag, "MessageTooLarge")
      assert.strictEqual((yield* pair.serverControl.stats).oversized, 1)
      assert.strictEqual(yield* client.Size({ bytes: new Uint8Array(1000) }), 1000)
    }))

  it.live("a storm of 1,000 cancelled calls leaves no handler running", () =>
    Effect.flatMap(sessionOnMemory(), cancellationStorm))

  it.live("a lost connection fails a call in flight as not retryable, and one never sent as retryable", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const pair = yield* sessionOnMemory({ session: { maxOutboundStreams: 1 } })
      const client = yield* start(pair, probe)
      const inFlight = yield* Effect.forkChild(Effect.exit(client.Hang({})))
      yield* eventually("the first call reached its handler", () => probe.running === 1)
      const waiting = yield* Effect.forkChild(Effect.exit(client.Echo({ text: "never sent" })))
      // The second call waits for a stream: the client may open only one.
      yield* Effect.sleep("50 millis")
      yield* pair.pair.abort
      const first = transportError(yield* Fiber.join(inFlight))
      const second = transportError(yield* Fiber.join(waiting))
      assert.strictEqual(first?.reason._tag, "ConnectionLost")
      assert.isFalse(first?.retryable)
      assert.isTrue(second?.retryable)
      yield* eventually("the handler of the lost call exited", () => probe.running === 0)
    }))

  it.live("a call that may have run is retried on another connection only when its Rpc is idempotent", () =>
    Effect.gen(function*() {
      const probes = [makeProbe(), makeProbe(), makeProbe()]
      const { dial, servers } = serverPerDial(probes, yield* Effect.scope)
      const client = yield* clientOf(
        yield* RpcSession.makeClientProtocol({ dial }, { idempotent: Idempotent.tagsOf(Api) })
      )
      // Both calls reach the first server and run there; their answers never come back.
      yield* client.Echo({ text: "warm" })
      yield* servers[0].pair.bToA.stall
      const read = yield* Effect.forkChild(client.Read({ key: "k" }))
      const sleep = yield* Effect.forkChild(Effect.exit(client.Sleep({ millis: 1 })))
      yield* eventually("both calls ran on the first server", () => probes[0].started === 2)
      yield* servers[0].pair.abort
      // Read is idempotent: run again on a new connection, it answers.
      assert.strictEqual(yield* Fiber.join(read), "value of k")
      // Sleep may have run: it is not repeated.
      const error = transportError(yield* Fiber.join(sleep))
      assert.strictEqual(error?.reason._tag, "ConnectionLost")
      assert.isFalse(error?.retryable)
      assert.strictEqual(probes[1].started + probes[2].started, 1, "only Read ran again")
    }))

  it.live("a draining server finishes its call in flight; a call it never started goes out on another connection", () =>
    Effect.gen(function*() {
      const probes = [makeProbe(), makeProbe()]
      // Each dial connects to a server of its own.
      const { dial, servers } = serverPerDial(probes, yield* Effect.scope)
      const client = yield* clientOf(yield* RpcSession.makeClientProtocol({ dial }))
      const inFlight = yield* Effect.forkChild(client.Sleep({ millis: 300 }))
      yield* eventually("the first call reached its handler", () => probes[0].running === 1)
      // The next call's stream leaves the client but never reaches the server.
      yield* servers[0].pair.aToB.stall
      const neverStarted = yield* Effect.forkChild(client.Echo({ text: "on the second server" }))
      yield* Effect.sleep("20 millis")
      const drained = yield* Effect.forkChild(servers[0].control.drain({ timeout: "5 seconds" }))
      assert.strictEqual(yield* Fiber.join(neverStarted), "on the second server")
      assert.strictEqual(yield* Fiber.join(inFlight), "slept")
      assert.strictEqual(servers.length, 2)
      assert.strictEqual((yield* servers[0].control.stats).started, 1)
      assert.strictEqual((yield* servers[1].control.stats).started, 1)
      yield* servers[0].pair.aToB.resume
      yield* Fiber.join(drained)
    }))
})

describe("RPC hostile input over a KCM pool", () => {
  it.live("a duplicate request id is dropped while its call runs, and the call goes on", () =>
    json(Effect.gen(function*() {
      const probe = makeProbe()
      const pool = yield* kcmOnMemory({ raw: true })
      yield* serveApi(pool.server, probe)
      const socket = yield* pool.clientMux.socket()
      yield* socket.send(envelope(request(7, "Sleep", { millis: 200 })))
      yield* eventually("the call started", () => probe.started === 1)
      yield* socket.send(envelope(request(7, "Sleep", { millis: 200 })))
      while ((yield* pool.serverControl.stats).duplicates === 0) yield* Effect.sleep("5 millis")
      const [answer] = yield* socket.pull
      const exit = parse(answer)
      assert.strictEqual(exit._tag, "Exit")
      assert.strictEqual(exit.exit._tag, "Success")
      const stats = yield* pool.serverControl.stats
      assert.strictEqual(stats.duplicates, 1)
      assert.strictEqual(probe.started, 1)
    })))

  it.live("unknown method names and schema-invalid payloads are answered, not run", () =>
    json(Effect.gen(function*() {
      const probe = makeProbe()
      const pool = yield* kcmOnMemory({ raw: true })
      yield* serveApi(pool.server, probe)
      const socket = yield* pool.clientMux.socket()
      const tags = ["__proto__", "constructor", "Nope"]
      for (let i = 0; i < tags.length; i++) yield* socket.send(envelope(request(i, tags[i], {})))
      yield* socket.send(envelope(request(9, "Sleep", { millis: "soon" })))
      const answers: Array<any> = []
      while (answers.length < 4) answers.push(...(yield* socket.pull).map(parse))
      for (const answer of answers) {
        assert.strictEqual(answer._tag, "Exit")
        assert.strictEqual(answer.exit.cause[0]._tag, "Die")
      }
      assert.strictEqual(probe.started, 0)
    })))

  it.live("a storm of 1,000 cancelled calls leaves no handler running", () =>
    Effect.flatMap(kcmOnMemory(), cancellationStorm))

  it.live("a draining server refuses new calls as retryable and finishes the one in flight", () =>
    Effect.gen(function*() {
      const probe = makeProbe()
      const pool = yield* kcmOnMemory({ client: { retries: 1 } })
      const client = yield* start(pool, probe)
      const inFlight = yield* Effect.forkChild(client.Sleep({ millis: 300 }))
      yield* eventually("the call started", () => probe.running === 1)
      const drained = yield* Effect.forkChild(pool.serverControl.drain({ timeout: "5 seconds" }))
      const refused = transportError(yield* Effect.exit(client.Echo({ text: "late" })))
      assert.strictEqual(refused?.reason._tag, "Refused")
      assert.isTrue(refused?.retryable)
      assert.strictEqual(yield* Fiber.join(inFlight), "slept")
      yield* Fiber.join(drained)
      const stats = yield* pool.serverControl.stats
      assert.strictEqual(stats.refused, 2)
      assert.strictEqual(stats.aborted, 0)
    }))
})
