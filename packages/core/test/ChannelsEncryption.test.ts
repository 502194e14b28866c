/**
 * The encryption extension of channels (docs/spec/channels.md, Encryption)
 * over in-memory message pairs. A tap between the client and the pair
 * records what goes on the wire and lets a test tamper with it, replay it,
 * move it to another channel or reflect it back.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Schedule from "effect/Schedule"
import * as ChannelError from "../src/ChannelError.ts"
import * as Channels from "../src/Channels.ts"
import * as F from "../src/internal/channelFrames.ts"
import * as Memory from "../src/Memory.ts"
import * as MessageTransport from "../src/MessageTransport.ts"
import { pullUntilFailure, take } from "./fixtures/ChannelFailures.ts"
import { within } from "./fixtures/Within.ts"

const text = (s: string) => new TextEncoder().encode(s)
const str = (b: Uint8Array) => new TextDecoder().decode(b)
const Code = ChannelError.Code

const KEY_1 = Uint8Array.from({ length: 32 }, (_, i) => i + 1)
const KEY_2 = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i)
const KEYS = new Map([[1, KEY_1], [2, KEY_2]])

/** What one side writes, message by message: kept as copies, and rewritten by `transform` when set. */
interface Tap {
  readonly sent: Array<Uint8Array>
  /** Both sides' messages, in the order they were written. */
  readonly wire: Array<Uint8Array>
  transform: ((message: Uint8Array) => ReadonlyArray<Uint8Array>) | undefined
}

const tapped = <E>(base: MessageTransport.MessageTransport<E>, tap: Tap): MessageTransport.MessageTransport<E> => {
  const pass = (messages: ReadonlyArray<Uint8Array>): Array<Uint8Array> => {
    const out: Array<Uint8Array> = []
    for (const m of messages) {
      tap.sent.push(m.slice())
      tap.wire.push(tap.sent[tap.sent.length - 1])
      const t = tap.transform
      if (t === undefined) out.push(m)
      else for (const x of t(m)) out.push(x)
    }
    return out
  }
  return MessageTransport.make({
    send: (m) => base.sendAll(pass([m])),
    sendAll: (ms) => base.sendAll(pass(ms)),
    pull: base.pull,
    close: base.close
  })
}

const connect = (
  client?: Partial<Channels.Options>,
  server?: Partial<Channels.Options>
) =>
  Effect.gen(function*() {
    const link = yield* Memory.makeMessagePair()
    const wire: Array<Uint8Array> = []
    const clientTap: Tap = { sent: [], wire, transform: undefined }
    const serverTap: Tap = { sent: [], wire, transform: undefined }
    const base = { extensions: ["encryption"] as const, keys: KEYS }
    const c = yield* Channels.make(tapped(link.a, clientTap), { ...base, ...client, role: "client" })
    const s = yield* Channels.make(tapped(link.b, serverTap), { ...base, ...server, role: "server" })
    return { client: c, server: s, link, clientTap, serverTap }
  })

/** Opens a channel from the client and accepts it at the server. */
const openPair = (
  client: Channels.Channels,
  server: Channels.Channels,
  options: Channels.OpenOptions = { encryption: { keyId: 1 } }
) =>
  Effect.gen(function*() {
    const opening = yield* Effect.forkChild(client.open(options))
    const atServer = yield* server.accept.pipe(within("accept"))
    const atClient = yield* Fiber.join(opening).pipe(within("open"))
    return { atClient, atServer }
  })

const failureOf = <A>(exit: Exit.Exit<A, ChannelError.ChannelError | Cause.Done>): ChannelError.ChannelError => {
  assert.isTrue(Exit.isFailure(exit), "expected a failure")
  if (!Exit.isFailure(exit)) throw new Error("unreachable")
  const error = Cause.findErrorOption(exit.cause)
  if (error._tag !== "Some" || Cause.isDone(error.value)) throw new Error(`not a typed failure: ${Cause.pretty(exit.cause)}`)
  return error.value
}

const dataOn = (messages: ReadonlyArray<Uint8Array>, channelId: number) =>
  messages.filter((m) => F.channelIdOf(m) === channelId)

const controlIn = (messages: ReadonlyArray<Uint8Array>) =>
  messages.filter((m) => F.channelIdOf(m) === F.CONTROL_CHANNEL).map((m) => F.decodeControl(m.subarray(2)))

const contains = (haystack: Uint8Array, needle: Uint8Array) => {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer
    return true
  }
  return false
}

/** Checks that a channel still carries messages both ways. */
const stillFlows = (pair: { atClient: Channels.Channel; atServer: Channels.Channel }, tag: string) =>
  Effect.gen(function*() {
    yield* pair.atClient.send(text(`${tag} up`))
    yield* pair.atServer.send(text(`${tag} down`))
    assert.strictEqual(str((yield* take(pair.atServer, 1).pipe(within(`${tag} up`)))[0]), `${tag} up`)
    assert.strictEqual(str((yield* take(pair.atClient, 1).pipe(within(`${tag} down`)))[0]), `${tag} down`)
  })

describe("Channels encryption", () => {
  describe("round trips", () => {
    for (const suite of ["AES-128-GCM", "AES-256-GCM"] as const) {
      it.live(`${suite} carries messages both ways, and both sides see the key id and suite`, () =>
        Effect.gen(function*() {
          const { client, server } = yield* connect()
          const { atClient, atServer } = yield* openPair(client, server, { encryption: { keyId: 2, suite } })
          assert.deepStrictEqual(atClient.encryption, { keyId: 2, suite })
          assert.deepStrictEqual(atServer.encryption, { keyId: 2, suite })
          const up = Array.from({ length: 100 }, (_, i) => `up ${i} ${"x".repeat(i * 13)}`)
          const down = Array.from({ length: 100 }, (_, i) => `down ${i}`)
          yield* Effect.forkChild(atClient.sendAll(up.map(text)))
          yield* Effect.forkChild(Effect.forEach(down, (m) => atServer.send(text(m)), { discard: true }))
          const atServerGot = yield* take(atServer, up.length).pipe(within("server reads"))
          const atClientGot = yield* take(atClient, down.length).pipe(within("client reads"))
          assert.deepStrictEqual(atServerGot.map(str), up)
          assert.deepStrictEqual(atClientGot.map(str), down)
          // Empty messages are messages too.
          yield* atClient.send(new Uint8Array(0))
          assert.strictEqual((yield* take(atServer, 1).pipe(within("empty message")))[0].length, 0)
        }))
    }

    it.live("a plain channel next to an encrypted one stays plain", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect()
        const plain = yield* openPair(client, server, {})
        assert.strictEqual(plain.atServer.encryption, undefined)
        yield* stillFlows(plain, "plain")
      }))
  })

  describe("on the wire", () => {
    it.live("sealed messages are not the plaintext and carry a 16-byte tag; the CREATE carries suite, key id and nonce", () =>
      Effect.gen(function*() {
        const { client, server, clientTap, serverTap } = yield* connect()
        const { atClient, atServer } = yield* openPair(client, server, { encryption: { keyId: 1 } })
        const secret = text("attack at dawn, attack at dawn")
        for (let i = 0; i < 3; i++) yield* atClient.send(secret)
        yield* take(atServer, 3).pipe(within("server reads"))
        const sealed = dataOn(clientTap.sent, atClient.id)
        assert.strictEqual(sealed.length, 3)
        for (const m of sealed) {
          assert.strictEqual(m.length, F.HEADER_SIZE + secret.length + F.TAG_SIZE)
          assert.isFalse(contains(m, text("attack")))
        }
        // The same plaintext seals differently each time (the counter is in the IV).
        assert.notDeepEqual([...sealed[0]], [...sealed[1]])
        const create = controlIn(clientTap.sent).find((m) => !(m instanceof ChannelError.ChannelError) && m._tag === "Create")
        assert.isDefined(create)
        const extension = (create as F.Create).extensions[0]
        assert.strictEqual(extension._tag, "Encryption")
        if (extension._tag === "Encryption") {
          assert.strictEqual(extension.suite, F.SUITE_AES_256_GCM)
          assert.strictEqual(extension.keyId, 1)
          assert.strictEqual(extension.nonce.length, F.NONCE_SIZE)
        }
        const ack = controlIn(serverTap.sent).find((m) => !(m instanceof ChannelError.ChannelError) && m._tag === "CreateAck")
        assert.strictEqual((ack as F.CreateAck).extensions[0]._tag, "Encryption")
      }))

    it.live("the creator's first message goes out after the CREATE_ACK, sealed under the derived key", () =>
      Effect.gen(function*() {
        const { client, server, clientTap } = yield* connect()
        const { atClient, atServer } = yield* openPair(client, server)
        // Sent at once: it waits for the channel key, derived from the ACK's nonce.
        yield* atClient.sendAll([text("first"), text("second")])
        assert.deepStrictEqual((yield* take(atServer, 2).pipe(within("read"))).map(str), ["first", "second"])
        const wire = clientTap.wire
        const ackAt = wire.findIndex((m) => F.channelIdOf(m) === F.CONTROL_CHANNEL && m[2] === F.TYPE_CREATE_ACK)
        const firstDataAt = wire.findIndex((m) => F.channelIdOf(m) === atClient.id)
        assert.isTrue(ackAt >= 0 && firstDataAt > ackAt)
      }))
  })

  describe("conformance", () => {
    /** The spec's IV and AAD, written out here rather than taken from the codec. */
    const iv = (dir: number, counter: number) =>
      new Uint8Array([dir, 0, 0, 0, 0, 0, 0, 0, counter >>> 24, (counter >>> 16) & 0xff, (counter >>> 8) & 0xff, counter & 0xff])
    const aad = (id: number, dir: number) => new Uint8Array([id >>> 8, id & 0xff, dir])

    it.live("what travels on the wire opens with the spec's HKDF, IV and AAD, counters running on across a migrate", () =>
      Effect.gen(function*() {
        const { client, server, clientTap, serverTap } = yield* connect()
        const { atClient, atServer } = yield* openPair(client, server, { encryption: { keyId: 2, suite: "AES-128-GCM" } })
        const oldId = atClient.id
        yield* atClient.sendAll([text("a0"), text("a1")])
        yield* take(atServer, 2).pipe(within("before the move"))
        const newId = yield* atClient.migrate.pipe(within("migrate"))
        yield* atClient.send(text("a2"))
        yield* atServer.send(text("b0"))
        yield* take(atServer, 1).pipe(within("after the move"))
        yield* take(atClient, 1).pipe(within("server's message"))

        const create = controlIn(clientTap.sent).find((m) => !(m instanceof ChannelError.ChannelError) && m._tag === "Create") as F.Create
        const ack = controlIn(serverTap.sent).find((m) => !(m instanceof ChannelError.ChannelError) && m._tag === "CreateAck") as F.CreateAck
        const creatorNonce = (create.extensions[0] as { nonce: Uint8Array }).nonce
        const acceptorNonce = (ack.extensions[0] as { nonce: Uint8Array }).nonce
        const subtle = globalThis.crypto.subtle
        const key = yield* Effect.promise(async () => {
          const salt = new Uint8Array(32)
          salt.set(creatorNonce, 0)
          salt.set(acceptorNonce, 16)
          const info = new Uint8Array([...text("plexus-channels-v1"), 0x01])
          const base = await subtle.importKey("raw", KEY_2, "HKDF", false, ["deriveKey"])
          return subtle.deriveKey({ name: "HKDF", hash: "SHA-256", salt, info }, base, { name: "AES-GCM", length: 128 }, false, ["decrypt"])
        })
        const open = (message: Uint8Array, dir: number, counter: number) =>
          Effect.promise(() =>
            subtle.decrypt(
              { name: "AES-GCM", iv: iv(dir, counter), additionalData: aad(F.channelIdOf(message), dir) },
              key,
              message.slice(2)
            ).then((plain) => str(new Uint8Array(plain)), () => "(does not open)")
          )
        const fromClient = clientTap.sent.filter((m) => F.channelIdOf(m) === oldId || F.channelIdOf(m) === newId)
        assert.deepStrictEqual(fromClient.map(F.channelIdOf), [oldId, oldId, newId])
        const opened: Array<string> = []
        for (let i = 0; i < fromClient.length; i++) opened.push(yield* open(fromClient[i], 0x00, i))
        assert.deepStrictEqual(opened, ["a0", "a1", "a2"])
        const fromServer = dataOn(serverTap.sent, newId)
        assert.strictEqual(yield* open(fromServer[0], 0x01, 0), "b0")
        // The same bytes under the other direction do not open.
        assert.strictEqual(yield* open(fromServer[0], 0x00, 0), "(does not open)")
      }))

    it.live("an unknown suite is refused with BAD_EXTENSION_PARAMS and the connection goes on", () =>
      Effect.gen(function*() {
        const { server, link, serverTap, client } = yield* connect()
        const nonce = Array.from({ length: 16 }, (_, i) => i)
        // CREATE, request 77, channel 101, no extra credit, no label, encryption suite 3, key id 1.
        yield* link.a.send(new Uint8Array([
          0xff, 0xff, 0x01, 0x00, 0, 0, 0, 77, 0, 101, 0, 0, 0, 0, 0, 0, 0, 0, 0,
          0x02, 0x00, 21, 0x03, 0, 0, 0, 1, ...nonce
        ]))
        const refused = yield* Effect.suspend(() => {
          const found = controlIn(serverTap.sent).find((m) =>
            !(m instanceof ChannelError.ChannelError) && m._tag === "Error" && m.requestId === 77
          )
          return found === undefined ? Effect.fail("not yet") : Effect.succeed(found as F.ErrorReply)
        }).pipe(Effect.retry({ schedule: Schedule.spaced("5 millis") }), within("ERROR"))
        assert.strictEqual(refused.code, Code.BAD_EXTENSION_PARAMS)
        yield* stillFlows({ atClient: client.defaultChannel, atServer: server.defaultChannel }, "zero")
      }))
  })

  describe("a message that does not open fails that channel only", () => {
    /** Two encrypted channels and a plain one; `attack` hits the first one's traffic. */
    const scenario = (
      attack: (ctx: {
        readonly victim: number
        readonly other: number
        readonly link: Memory.MessagePair
        readonly clientTap: Tap
        readonly send: (message: string) => Effect.Effect<void, ChannelError.ChannelError>
      }) => Effect.Effect<void, unknown>
    ) =>
      Effect.gen(function*() {
        const { client, server, link, clientTap } = yield* connect()
        const victim = yield* openPair(client, server)
        const other = yield* openPair(client, server)
        const plain = yield* openPair(client, server, {})
        yield* victim.atClient.send(text("m0"))
        assert.strictEqual(str((yield* take(victim.atServer, 1).pipe(within("m0")))[0]), "m0")
        const send = (message: string) => victim.atClient.send(text(message))
        yield* attack({ victim: victim.atClient.id, other: other.atClient.id, link, clientTap, send })
        const { error, got } = yield* pullUntilFailure(victim.atServer).pipe(within("the victim fails"))
        assert.deepStrictEqual(got, [])
        assert.strictEqual((error.reason as ChannelError.DecryptFailed).counter, 1)
        assert.strictEqual(error.reason._tag, "DecryptFailed")
        assert.strictEqual(error.channelId, victim.atServer.id)
        // The peer learns it from DESTROY ABORT DECRYPT_FAILED.
        const atCreator = yield* pullUntilFailure(victim.atClient).pipe(within("the creator learns it"))
        assert.strictEqual(atCreator.error.reason._tag, "ChannelClosed")
        const closed = atCreator.error.reason as ChannelError.ChannelClosed
        assert.strictEqual(closed.code, Code.DECRYPT_FAILED)
        assert.isTrue(closed.aborted && closed.byPeer)
        // Everything else goes on.
        yield* stillFlows(other, "other")
        yield* stillFlows(plain, "plain")
        yield* stillFlows({ atClient: client.defaultChannel, atServer: server.defaultChannel }, "zero")
        yield* victim.atClient.closed.pipe(within("the victim closes"))
        const stats = yield* server.stats
        assert.strictEqual(stats.openChannels, 3)
      })

    it.live("one tampered byte", () =>
      scenario(({ clientTap, send, victim }) => {
        // Message 1 of the channel, sealed under the right counter, one bit off on the way.
        clientTap.transform = (m) => {
          if (F.channelIdOf(m) !== victim) return [m]
          const bad = m.slice()
          bad[F.HEADER_SIZE] ^= 0x40
          return [bad]
        }
        return send("m1")
      }))

    it.live("a message cut shorter than its tag", () =>
      scenario(({ link, victim }) => link.a.send(new Uint8Array([victim >>> 8, victim & 0xff, 1, 2, 3, 4, 5]))))

    it.live("a replayed message", () =>
      scenario(({ link, clientTap, victim }) => link.a.send(dataOn(clientTap.sent, victim)[0])))

    it.live("a message moved to another encrypted channel fails that channel", () =>
      Effect.gen(function*() {
        const { client, server, link, clientTap } = yield* connect()
        const source = yield* openPair(client, server)
        const target = yield* openPair(client, server)
        const bystander = yield* openPair(client, server)
        // Both channels are at counter 0: only the AAD's channel id tells them apart.
        yield* source.atClient.send(text("for source"))
        yield* take(source.atServer, 1).pipe(within("source reads"))
        const moved = dataOn(clientTap.sent, source.atClient.id)[0].slice()
        F.writeHeader(moved, 0, target.atClient.id)
        yield* link.a.send(moved)
        const { error, got } = yield* pullUntilFailure(target.atServer).pipe(within("the target fails"))
        assert.deepStrictEqual(got, [])
        assert.strictEqual(error.reason._tag, "DecryptFailed")
        assert.strictEqual((error.reason as ChannelError.DecryptFailed).counter, 0)
        yield* stillFlows(source, "source")
        yield* stillFlows(bystander, "bystander")
      }))

    it.live("a message reflected back to its sender", () =>
      Effect.gen(function*() {
        const { client, server, link, clientTap } = yield* connect()
        const victim = yield* openPair(client, server)
        const other = yield* openPair(client, server)
        yield* victim.atClient.send(text("to the server"))
        yield* take(victim.atServer, 1).pipe(within("server reads"))
        // The client's own message (client direction, counter 0) arrives at the client as the server's message 0.
        yield* link.b.send(dataOn(clientTap.sent, victim.atClient.id)[0])
        const { error } = yield* pullUntilFailure(victim.atClient).pipe(within("the client's side fails"))
        assert.strictEqual(error.reason._tag, "DecryptFailed")
        const atServer = yield* pullUntilFailure(victim.atServer).pipe(within("the server learns it"))
        assert.strictEqual((atServer.error.reason as ChannelError.ChannelClosed).code, Code.DECRYPT_FAILED)
        yield* stillFlows(other, "other")
      }))

    it.live("a reordered pair of messages", () =>
      Effect.gen(function*() {
        const { client, server, clientTap } = yield* connect()
        const victim = yield* openPair(client, server)
        const other = yield* openPair(client, server)
        let held: Uint8Array | undefined
        clientTap.transform = (m) => {
          if (F.channelIdOf(m) !== victim.atClient.id) return [m]
          if (held === undefined) {
            held = m
            return []
          }
          const first = held
          held = new Uint8Array(0)
          return [m, first]
        }
        yield* victim.atClient.send(text("a"))
        yield* victim.atClient.send(text("b"))
        const { error, got } = yield* pullUntilFailure(victim.atServer).pipe(within("the victim fails"))
        assert.deepStrictEqual(got, [])
        assert.strictEqual((error.reason as ChannelError.DecryptFailed).counter, 0)
        clientTap.transform = undefined
        yield* stillFlows(other, "other")
      }))
  })

  describe("refusals", () => {
    it.live("a key id the acceptor has no key for is refused with UNKNOWN_KEY", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect({}, { keys: new Map([[2, KEY_2]]) })
        const exit = yield* Effect.exit(client.open({ encryption: { keyId: 1 } }).pipe(within("open")))
        const error = failureOf(exit)
        assert.strictEqual(error.reason._tag, "RequestFailed")
        assert.strictEqual((error.reason as ChannelError.RequestFailed).code, Code.UNKNOWN_KEY)
        assert.isFalse(error.retryable)
        assert.strictEqual((yield* server.stats).refusedCreates, 1)
        // The key it has still works.
        yield* stillFlows(yield* openPair(client, server, { encryption: { keyId: 2 } }), "key 2")
      }))

    it.live("a key id with no local key fails the open before anything is sent", () =>
      Effect.gen(function*() {
        const { client, server, clientTap } = yield* connect({ keys: (id) => (id === 2 ? KEY_2 : undefined) })
        const exit = yield* Effect.exit(client.open({ encryption: { keyId: 1 } }))
        assert.strictEqual((failureOf(exit).reason as ChannelError.RequestFailed).code, Code.UNKNOWN_KEY)
        assert.strictEqual(clientTap.sent.length, 0)
        assert.strictEqual((yield* server.stats).refusedCreates, 0)
      }))

    it.live("encryption the acceptor did not negotiate is refused with EXTENSION_NOT_NEGOTIATED", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect({}, { extensions: [] })
        const exit = yield* Effect.exit(client.open({ encryption: { keyId: 1 } }).pipe(within("open")))
        assert.strictEqual((failureOf(exit).reason as ChannelError.RequestFailed).code, Code.EXTENSION_NOT_NEGOTIATED)
        assert.strictEqual((yield* server.stats).refusedCreates, 1)
        yield* stillFlows(yield* openPair(client, server, {}), "plain")
      }))

    it.live("encryption this side did not negotiate fails the open locally", () =>
      Effect.gen(function*() {
        const { client } = yield* connect({ extensions: [] })
        const exit = yield* Effect.exit(client.open({ encryption: { keyId: 1 } }))
        assert.strictEqual((failureOf(exit).reason as ChannelError.RequestFailed).code, Code.EXTENSION_NOT_NEGOTIATED)
      }))

    it.live("an encrypted channel cannot be merged", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect()
        const sealed = yield* openPair(client, server)
        const plain = yield* openPair(client, server, {})
        const exit = yield* Effect.exit(client.merge(plain.atClient, [sealed.atClient]))
        assert.strictEqual((failureOf(exit).reason as ChannelError.RequestFailed).code, Code.INCOMPATIBLE_CHANNELS)
        yield* stillFlows(sealed, "sealed")
      }))
  })

  describe("with fanout", () => {
    const fanout: Channels.FanoutParams = {
      role: Channels.FanoutRole.SUBSCRIBE,
      flowId: text("prices"),
      scope: text("acme"),
      filter: { _tag: "All" }
    }

    it.live("a CREATE with fanout and encryption is accepted with both: the handler's channel is encrypted and the ACK carries both", () =>
      Effect.gen(function*() {
        const linked: Array<Channels.Channel> = []
        const { client, clientTap, serverTap } = yield* connect({ extensions: ["fanout", "encryption"] }, {
          extensions: ["fanout", "encryption"],
          fanout: {
            link: (channel) =>
              Effect.sync(() => {
                linked.push(channel)
                // Sent with the CREATE_ACK's commit: sealed once the key exists.
                return (acked: boolean) => {
                  if (acked) channel.offerFlowUnsafe(text("first of the flow"))
                }
              }),
            unlink: () => Effect.void,
            filter: () => Effect.void
          }
        })
        const channel = yield* client.open({ fanout, encryption: { keyId: 2, suite: "AES-128-GCM" } })
        assert.deepStrictEqual(channel.encryption, { keyId: 2, suite: "AES-128-GCM" })
        assert.isDefined(channel.fanout)
        assert.strictEqual(str((yield* take(channel, 1).pipe(within("the flow's first message")))[0]), "first of the flow")
        assert.strictEqual(linked.length, 1)
        assert.deepStrictEqual(linked[0].encryption, { keyId: 2, suite: "AES-128-GCM" })
        const create = controlIn(clientTap.sent).find((m) => !(m instanceof ChannelError.ChannelError) && m._tag === "Create")
        const ack = controlIn(serverTap.sent).find((m) => !(m instanceof ChannelError.ChannelError) && m._tag === "CreateAck")
        assert.deepStrictEqual(create?._tag === "Create" ? create.extensions.map((e) => e._tag).sort() : [], ["Encryption", "Fanout"])
        assert.deepStrictEqual(ack?._tag === "CreateAck" ? ack.extensions.map((e) => e._tag).sort() : [], ["Encryption", "Fanout"])
        const data = dataOn(serverTap.sent, channel.id)
        assert.strictEqual(data.length, 1)
        assert.strictEqual(data[0].length, 2 + "first of the flow".length + F.TAG_SIZE)
        assert.isFalse(contains(data[0], text("first of the flow")))
      }))
  })

  describe("migrate and limits", () => {
    it.live("migrate carries the counters over: messages before, during and after arrive in order", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect()
        const { atClient, atServer } = yield* openPair(client, server)
        const oldId = atClient.id
        for (let i = 0; i < 5; i++) {
          yield* atClient.send(text(`up ${i}`))
          yield* atServer.send(text(`down ${i}`))
        }
        // The server keeps sending while the MIGRATE crosses.
        const downstream = yield* Effect.forkChild(
          Effect.forEach(Array.from({ length: 20 }, (_, i) => i + 5), (i) => atServer.send(text(`down ${i}`)), { discard: true })
        )
        const newId = yield* atClient.migrate.pipe(within("migrate"))
        assert.notStrictEqual(newId, oldId)
        for (let i = 5; i < 25; i++) yield* atClient.send(text(`up ${i}`))
        yield* Fiber.join(downstream)
        const up = yield* take(atServer, 25).pipe(within("server reads"))
        const down = yield* take(atClient, 25).pipe(within("client reads"))
        assert.deepStrictEqual(up.map(str), Array.from({ length: 25 }, (_, i) => `up ${i}`))
        assert.deepStrictEqual(down.map(str), Array.from({ length: 25 }, (_, i) => `down ${i}`))
        assert.strictEqual(atServer.id, newId)
        // A second move, and the channel still opens both ways.
        yield* atClient.migrate.pipe(within("second migrate"))
        yield* stillFlows({ atClient, atServer }, "after two moves")
      }))

    it.live("a sealed message replayed on the channel's old id after a migrate does not open", () =>
      Effect.gen(function*() {
        const { client, server, link, clientTap } = yield* connect()
        const { atClient, atServer } = yield* openPair(client, server)
        const oldId = atClient.id
        yield* atClient.migrate.pipe(within("migrate"))
        yield* atClient.send(text("on the new id"))
        yield* take(atServer, 1).pipe(within("server reads"))
        // Message 1 of the channel, replayed with the old id in the header: the AAD names the new one.
        const sealed = dataOn(clientTap.sent, atClient.id)[0].slice()
        F.writeHeader(sealed, 0, oldId)
        // The old id is free at the server now: a protocol error, not a silent delivery.
        yield* link.a.send(sealed)
        const exit = yield* Effect.exit(server.closed.pipe(within("connection ends")))
        assert.strictEqual(failureOf(exit).reason._tag, "ProtocolViolation")
      }))

    it.live("a key at its limit ends the channel with KEY_EXHAUSTED after what was admitted", () =>
      Effect.gen(function*() {
        const { client, server, clientTap } = yield* connect({ encryptionLimits: { messages: 3, bytes: 1 << 20 } })
        const { atClient, atServer } = yield* openPair(client, server)
        for (let i = 0; i < 3; i++) yield* atClient.send(text(`m${i}`))
        const exit = yield* Effect.exit(atClient.send(text("one too many")))
        const error = failureOf(exit)
        assert.strictEqual(error.reason._tag, "ChannelClosed")
        assert.strictEqual((error.reason as ChannelError.ChannelClosed).code, Code.KEY_EXHAUSTED)
        // The peer gets the three, then the channel's end.
        const got: Array<string> = []
        while (true) {
          const pulled = yield* Effect.exit(atServer.pull.pipe(within("server reads")))
          if (Exit.isFailure(pulled)) break
          for (const m of pulled.value) got.push(str(m))
        }
        assert.deepStrictEqual(got, ["m0", "m1", "m2"])
        const destroy = controlIn(clientTap.sent).find((m) => !(m instanceof ChannelError.ChannelError) && m._tag === "Destroy")
        assert.strictEqual((destroy as F.Destroy).code, Code.KEY_EXHAUSTED)
        assert.isFalse((destroy as F.Destroy).abort)
      }))

    it.live("the byte limit counts plaintext bytes", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect({ encryptionLimits: { messages: 1000, bytes: 10 } })
        const { atClient } = yield* openPair(client, server)
        yield* atClient.send(new Uint8Array(10))
        const exit = yield* Effect.exit(atClient.send(new Uint8Array(1)))
        assert.strictEqual((failureOf(exit).reason as ChannelError.ChannelClosed).code, Code.KEY_EXHAUSTED)
      }))
  })

  describe("ordering and credit", () => {
    it.live("concurrent senders on one encrypted channel: every message opens, each sender's in order", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect()
        const { atClient, atServer } = yield* openPair(client, server)
        const senders = 4
        const each = 150
        yield* Effect.forkChild(Effect.forEach(
          Array.from({ length: senders }, (_, s) => s),
          (s) =>
            Effect.forEach(Array.from({ length: each }, (_, i) => i), (i) =>
              i % 10 === 0
                ? atClient.sendAll([text(`${s}:${i}:a`), text(`${s}:${i}:b`)])
                : atClient.send(text(`${s}:${i}`)), { discard: true }),
          { concurrency: "unbounded", discard: true }
        ))
        const total = senders * (each + each / 10)
        const got = yield* take(atServer, total).pipe(within("server reads", 15_000))
        const seen = new Map<number, Array<string>>()
        for (const m of got) {
          const [s, ...rest] = str(m).split(":")
          const list = seen.get(Number(s)) ?? []
          list.push(rest.join(":"))
          seen.set(Number(s), list)
        }
        for (let s = 0; s < senders; s++) {
          const expected: Array<string> = []
          for (let i = 0; i < each; i++) {
            if (i % 10 === 0) expected.push(`${i}:a`, `${i}:b`)
            else expected.push(`${i}`)
          }
          assert.deepStrictEqual(seen.get(s), expected)
        }
        // Credit came back for all of it: nothing is left buffered, and the channel still flows.
        const stats = yield* server.stats
        assert.strictEqual(stats.bufferedBytes, 0)
        assert.strictEqual(stats.bufferedMessages, 0)
        yield* stillFlows({ atClient, atServer }, "after")
      }))

    it.live("the window counts sealed bytes: a plaintext that fits only without its tag is too large", () =>
      Effect.gen(function*() {
        const { client, server } = yield* connect({ windowBytes: 1024 }, { windowBytes: 1024 })
        const { atClient, atServer } = yield* openPair(client, server)
        const exit = yield* Effect.exit(atClient.send(new Uint8Array(1024 - F.TAG_SIZE + 1)))
        assert.strictEqual(failureOf(exit).reason._tag, "MessageTooLarge")
        // The largest that fits goes through, again and again (credit comes back).
        yield* Effect.forkChild(
          Effect.forEach([1, 2, 3, 4, 5], () => atClient.send(new Uint8Array(1024 - F.TAG_SIZE)), { discard: true })
        )
        const got = yield* take(atServer, 5).pipe(within("server reads"))
        assert.strictEqual(got.length, 5)
        // Small messages queued ahead of the reader: each takes its tag's bytes of credit too, so
        // the sender never overruns the receiver's 1024-byte window.
        yield* Effect.forkChild(Effect.forEach(Array.from({ length: 30 }, (_, i) => i), (i) =>
          atClient.send(new Uint8Array(100).fill(i)), { discard: true }))
        const small = yield* take(atServer, 30).pipe(within("small messages"))
        assert.deepStrictEqual(small.map((m) => m[99]), Array.from({ length: 30 }, (_, i) => i))
        assert.strictEqual((yield* server.stats).windowViolations, 0)
      }))
  })
})
