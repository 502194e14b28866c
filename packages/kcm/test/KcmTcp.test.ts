/**
 * KCM over real TCP on loopback: the multiplexor's promises (atomic
 * messages, a pool kept at its size, failed transports leaving without
 * taking other traffic down, steering by write backlog) checked on kernel
 * sockets, with the fault proxy standing in for a hostile network.
 *
 * Servers bind 127.0.0.1 port 0; every wait has a deadline; the test's
 * Scope closes every listener, proxy, multiplexor and connection.
 */
import { assert, describe, it } from "@effect/vitest"
import { Transport } from "@plexus/core"
import { FaultProxy, Tcp, Tls } from "@plexus/transport-tcp"
import * as Fs from "node:fs"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Result from "effect/Result"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import type * as Socket from "effect/socket/Socket"
import * as Stream from "effect/Stream"
import { Kcm, type MessageSocket } from "../src/index.ts"
import { message, verify, within } from "./fixtures/Pool.ts"
import { awaitAttached, eventually, kcmServer, recordEvents } from "./fixtures/Tcp.ts"

const range = (n: number): ReadonlyArray<number> => Array.from({ length: n }, (_, i) => i)

/** Mostly small messages, with a few that span many TCP segments. */
const sizeOf = (sender: number, seq: number): number =>
  seq % 20 === 7 ? 20_000 + ((sender * 7919 + seq * 104_729) % 100_000) : 12 + ((sender * 97 + seq * 13) % 3000)

/** `senders` concurrent senders, each sending `perSender` checksummed messages in turn. */
const blast = (socket: MessageSocket.MessageSocket, base: number, senders: number, perSender: number) =>
  Effect.forEach(
    range(senders),
    (s) => Effect.forEach(range(perSender), (i) => socket.send(message(base + s, i, sizeOf(base + s, i))), { discard: true }),
    { concurrency: "unbounded", discard: true }
  )

/** Checks that `received` is exactly the messages of senders `base`.. `base + senders`, each once and intact. */
const assertExactlyOnce = (
  received: Iterable<Uint8Array>,
  base: number,
  senders: number,
  perSender: number
): void => {
  const seen = new Set<string>()
  for (const m of received) {
    const { sender, seq } = verify(m)
    assert.isTrue(sender >= base && sender < base + senders && seq < perSender, `unexpected message ${sender}/${seq}`)
    const key = `${sender}/${seq}`
    assert.isFalse(seen.has(key), `duplicate message ${key}`)
    seen.add(key)
  }
  assert.strictEqual(seen.size, senders * perSender, "every message arrived")
}

const collect = (socket: MessageSocket.MessageSocket, count: number) =>
  socket.messages.pipe(Stream.take(count), Stream.runCollect, Effect.forkChild)

const text = new TextEncoder()
const decode = new TextDecoder()

describe("Kcm over TCP", () => {
  it.live("keeps every message whole when 100 senders share 4 TCP connections in both directions", () =>
    Effect.gen(function*() {
      const server = yield* kcmServer()
      const client = yield* Kcm.makePool({ dial: Tcp.dial({ port: server.port }), connections: 4 })
      yield* awaitAttached(server.mux, 4)
      const clientSocket = yield* client.socket()
      const serverSocket = yield* server.mux.socket()
      const senders = 100
      const perSender = 40
      const total = senders * perSender
      const atServer = yield* collect(serverSocket, total)
      const atClient = yield* collect(clientSocket, total)
      yield* Effect.all([blast(clientSocket, 0, senders, perSender), blast(serverSocket, 1000, senders, perSender)], {
        concurrency: 2,
        discard: true
      }).pipe(within("sending both ways", 40))
      const [up, down] = yield* Effect.all([Fiber.join(atServer), Fiber.join(atClient)]).pipe(
        within("receiving both ways", 40)
      )
      assertExactlyOnce(up, 0, senders, perSender)
      assertExactlyOnce(down, 1000, senders, perSender)
      for (const [side, mux] of [["client", client], ["server", server.mux]] as const) {
        const stats = yield* mux.stats
        assert.strictEqual(stats.mux.txMessages, total, `${side} sent every message once`)
        assert.strictEqual(stats.mux.rxMessages, total, `${side} received every message once`)
        assert.strictEqual(stats.mux.attached, 4)
        assert.strictEqual(stats.mux.errors, 0)
        assert.strictEqual(stats.transports.length, 4)
        for (const t of stats.transports) {
          assert.isAbove(t.txMessages, 0, `${side} ${t.label} carried messages out`)
          assert.isAbove(t.rxMessages, 0, `${side} ${t.label} carried messages in`)
        }
      }
    }))

  it.live("Kcm.layerServer over Tcp.layerServer attaches each connection Kcm.layerClient dials, and requests get their responses", () =>
    Effect.gen(function*() {
      const server = yield* kcmServer()
      const serverEvents = yield* recordEvents(server.mux)
      // The server answers each request on whichever of its two sockets takes it.
      for (let i = 0; i < 2; i++) {
        const responder = yield* server.mux.socket()
        yield* Effect.forkScoped(responder.messages.pipe(Stream.runForEach((request) => {
          const n = decode.decode(request).slice("request ".length)
          return responder.send(text.encode(`response ${n}`))
        })))
      }
      const requests = 200
      // Client code written against the Kcm service; the layer dials the pool.
      const program = Effect.gen(function*() {
        const mux = yield* Kcm.Kcm
        assert.strictEqual(yield* mux.attached, 4, "the layer dialled its 4 connections before it was built")
        const socket = yield* mux.socket()
        const replies = yield* collect(socket, requests)
        yield* Effect.forEach(range(requests), (n) => socket.send(text.encode(`request ${n}`)), {
          concurrency: 32,
          discard: true
        })
        const received = yield* Fiber.join(replies).pipe(within("the responses"))
        const stats = yield* mux.stats
        return { replies: [...received].map((m) => decode.decode(m)), stats }
      }).pipe(Effect.scoped, Effect.provide(Kcm.layerClient({ dial: Tcp.dial({ port: server.port }), connections: 4 })))
      const { replies, stats } = yield* program
      assert.deepStrictEqual(
        replies.sort(),
        range(requests).map((n) => `response ${n}`).sort(),
        "each request got exactly its response"
      )
      assert.strictEqual(stats.mux.txMessages, requests)
      assert.strictEqual(stats.mux.rxMessages, requests)
      assert.isTrue(stats.transports.every((t) => t.txMessages > 0), "requests went out over all 4 connections")
      assert.strictEqual((yield* server.tcp.stats).accepted, 4, "the server accepted exactly the 4 dialled connections")
      assert.strictEqual(serverEvents.ofTag("Attached").length, 4, "the server attached each accepted connection")
      const serverStats = yield* server.mux.stats
      assert.strictEqual(serverStats.mux.rxMessages, requests)
      assert.strictEqual(serverStats.mux.txMessages, requests)
      // Releasing the client layer closed its connections cleanly: the server saw each one leave.
      const gone = yield* serverEvents.awaitTag("Detached", 4)
      assert.isTrue(gone.every((e) => e.reason._tag === "PeerClosed"), gone.map((e) => e.reason._tag).join(","))
      assert.strictEqual(yield* server.mux.attached, 0)
    }))

  it.live("keeps the client pool at its size when every connection is reset, and traffic resumes", () =>
    Effect.gen(function*() {
      const server = yield* kcmServer()
      const proxy = yield* FaultProxy.make({ target: server.port })
      const client = yield* Kcm.makePool({
        dial: Tcp.dial({ port: proxy.port }),
        connections: 4,
        reconnect: Schedule.spaced("20 millis")
      })
      yield* awaitAttached(server.mux, 4)
      const clientEvents = yield* recordEvents(client)
      const serverEvents = yield* recordEvents(server.mux)
      yield* proxy.reset
      const detached = yield* clientEvents.awaitTag("Detached", 4)
      assert.isTrue(
        detached.every((e) => e.reason._tag === "TransportFailed"),
        detached.map((e) => e.reason._tag).join(",")
      )
      const attached = yield* clientEvents.awaitTag("Attached", 4)
      assert.deepStrictEqual(
        attached.map((e) => e.label).sort(),
        ["connection-5", "connection-6", "connection-7", "connection-8"],
        "four new connections were dialled"
      )
      const stats = yield* eventually("the pool back at its size", client.stats, (s) => s.mux.attached === 4)
      assert.strictEqual(stats.mux.attaches, 8)
      assert.strictEqual(stats.mux.detaches, 4)
      assert.strictEqual(stats.mux.errors, 4)
      // The server saw the resets too, and attached the new connections.
      const serverDetached = yield* serverEvents.awaitTag("Detached", 4)
      assert.isTrue(serverDetached.every((e) => e.reason._tag === "TransportFailed"))
      yield* awaitAttached(server.mux, 4)

      const tx = yield* client.socket()
      const rx = yield* server.mux.socket()
      const received = yield* collect(rx, 400)
      yield* blast(tx, 0, 20, 20).pipe(within("sending after the reconnect"))
      assertExactlyOnce(yield* Fiber.join(received).pipe(within("receiving after the reconnect")), 0, 20, 20)
      assert.isTrue((yield* client.stats).transports.every((t) => t.txMessages > 0))
    }))

  it.live("reports DialFailed on the reconnect schedule while the server is down, and refills when it is back", () =>
    Effect.gen(function*() {
      const firstScope = yield* Scope.make()
      const first = yield* kcmServer().pipe(Scope.provide(firstScope))
      const port = first.port
      const client = yield* Kcm.makePool({
        dial: Tcp.dial({ port }),
        connections: 3,
        reconnect: Schedule.spaced("100 millis")
      })
      yield* awaitAttached(first.mux, 3)
      const events = yield* recordEvents(client)
      yield* Scope.close(firstScope, Exit.void)
      const detached = yield* events.awaitTag("Detached", 3)
      assert.isTrue(
        detached.every((e) => e.reason._tag === "PeerClosed"),
        `a server closing at a message boundary is a clean close: ${detached.map((e) => e.reason._tag).join(",")}`
      )
      const failures = yield* events.awaitTag("DialFailed", 4)
      assert.isTrue(failures.every((e) => e.attached === 0), "no connection was up while the dials failed")
      const times = events.events.filter((e) => e.event._tag === "DialFailed").map((e) => e.at)
      for (let i = 1; i < 4; i++) {
        assert.isAtLeast(times[i] - times[i - 1], 80, `dial ${i + 1} waited for the schedule`)
      }
      assert.strictEqual((yield* client.stats).mux.attached, 0)

      // The server comes back on the same port: the pool refills by itself.
      const second = yield* kcmServer({ port })
      yield* awaitAttached(second.mux, 3)
      const stats = yield* eventually("the pool back at its size", client.stats, (s) => s.mux.attached === 3)
      assert.isAtLeast(stats.mux.dialFailures, 4)
      assert.strictEqual(stats.mux.dialFailures, events.ofTag("DialFailed").length)
      const tx = yield* client.socket()
      const rx = yield* second.mux.socket()
      const received = yield* collect(rx, 100)
      yield* blast(tx, 0, 10, 10).pipe(within("sending to the new server"))
      assertExactlyOnce(yield* Fiber.join(received).pipe(within("receiving at the new server")), 0, 10, 10)
    }))

  it.live("a reset mid-message detaches only that connection, and waiting senders go out on the others", () =>
    Effect.gen(function*() {
      const server = yield* kcmServer()
      const serverEvents = yield* recordEvents(server.mux)
      const proxy = yield* FaultProxy.make({ target: server.port })
      // The first connection goes through the proxy, the other three straight to the server.
      let dials = 0
      const client = yield* Kcm.makePool({
        dial: Effect.suspend(() => Tcp.dial({ port: dials++ === 0 ? proxy.port : server.port })),
        connections: 4,
        reconnect: false
      })
      yield* awaitAttached(server.mux, 4)
      const clientEvents = yield* recordEvents(client)
      const tx = yield* client.socket()
      const rx = yield* server.mux.socket()

      // Four large messages sent at once take the four connections, one each;
      // the proxied one trickles, so the server holds part of it.
      yield* proxy.set("upstream", { bandwidth: 50_000 })
      const bigSize = 300_000
      yield* Effect.forEach(range(4), (i) => tx.send(message(500, i, bigSize)), { concurrency: 4, discard: true })
      const big = yield* collect(rx, 3)
      const bigArrived = yield* Fiber.join(big).pipe(within("the three unhindered large messages"))
      for (const m of bigArrived) assert.strictEqual(verify(m).sender, 500)
      yield* eventually("part of the fourth message at the server", server.mux.stats, (s) =>
        s.transports.some((t) => t.partialBytes > 0))
      // From now on the proxied connection forwards nothing.
      yield* proxy.set("upstream", { blackhole: true })

      const senders = 100
      const perSender = 20
      const arrived: Array<Uint8Array> = []
      const receiving = yield* Effect.forkScoped(
        rx.messages.pipe(Stream.runForEach((m) => Effect.sync(() => arrived.push(m))))
      )
      const outcomes = yield* Effect.forEach(
        range(senders),
        (s) => Effect.forEach(range(perSender), (i) => Effect.exit(tx.send(message(s, i, 200 + ((s * 7919 + i * 104_729) % 40_000))))),
        { concurrency: "unbounded" }
      ).pipe(Effect.forkChild)
      yield* eventually("traffic flowing on the other connections", Effect.sync(() => arrived.length), (n) => n >= 300)
      const waitsBefore = (yield* client.stats).mux.sendWaits
      yield* proxy.reset
      const arrivedAtReset = arrived.length
      const exits = (yield* Fiber.join(outcomes).pipe(within("every sender finishing", 30))).flat()

      // The client: the proxied connection left with TransportFailed; the others stayed.
      const clientDetached = yield* clientEvents.awaitTag("Detached", 1)
      assert.strictEqual(clientDetached.length, 1)
      assert.strictEqual(clientDetached[0].label, "connection-1")
      assert.strictEqual(clientDetached[0].reason._tag, "TransportFailed")
      // The server: its side of that connection died holding part of a message, which it never delivered.
      const serverDetached = yield* serverEvents.awaitTag("Detached", 1)
      assert.strictEqual(serverDetached.length, 1)
      assert.strictEqual(serverDetached[0].reason._tag, "TransportFailed")
      assert.isAbove(serverDetached[0].lostPartialBytes, 0, "the reset cut a message short")

      // Every send either went out or failed as cut off; none failed any other way.
      const failures = exits.filter(Exit.isFailure)
      for (const exit of failures) {
        const error = Cause.findError(exit.cause)
        assert.isTrue(Result.isSuccess(error), String(exit.cause))
        if (Result.isSuccess(error)) assert.strictEqual(error.success.reason._tag, "MessageCutOff", error.success.message)
      }
      assert.isAtMost(failures.length, 1, "at most the one message being written on the connection was cut off")

      // Everything sent on the surviving connections arrived, exactly once.
      const stats = yield* client.stats
      assert.strictEqual(stats.mux.attached, 3)
      assert.strictEqual(stats.mux.waitingSenders, 0)
      assert.isAbove(stats.mux.sendWaits, waitsBefore, "senders waited for a connection after the reset")
      assert.isBelow(arrivedAtReset, senders * perSender / 2, "the reset came while the senders were busy")
      const onSurvivors = stats.transports.reduce((n, t) => n + t.txMessages, 0) - 3
      yield* eventually("the survivors' messages at the server", Effect.sync(() => arrived.length), (n) => n >= onSurvivors)
      yield* Fiber.interrupt(receiving)
      assert.strictEqual(arrived.length, onSurvivors, "exactly the messages sent on the surviving connections arrived")
      const seen = new Set<string>()
      for (const m of arrived) {
        const { sender, seq } = verify(m)
        assert.isBelow(sender, senders, "the cut-off large message never arrived")
        seen.add(`${sender}/${seq}`)
      }
      assert.strictEqual(seen.size, arrived.length, "no duplicates")
      assert.isAbove(onSurvivors, senders * perSender / 2, "the surviving connections carried most of the traffic")
      assert.strictEqual((yield* server.mux.stats).mux.attached, 3)
    }))

  it.live("least-pending steers messages away from a connection whose writes are backed up", () =>
    Effect.gen(function*() {
      const server = yield* kcmServer()
      const proxy = yield* FaultProxy.make({ target: server.port })
      yield* proxy.set("upstream", { blackhole: true })
      const client = yield* Kcm.make({ policy: "least-pending" })
      const stalled: Socket.Socket = yield* Tcp.dial({ port: proxy.port })
      yield* client.attach(stalled, { label: "stalled" })
      // Closed before the attachments' own finalizers run: a detach waits for a write in progress.
      yield* Effect.addFinalizer(() => client.close)
      const tx = yield* client.socket()

      // Alone in the pool, the blackholed connection takes messages until the
      // kernel buffers are full and bytes start to wait in the socket itself.
      let seq = 0
      const backlog = () => Transport.writeBacklog(stalled) ?? 0
      yield* Effect.gen(function*() {
        while (true) {
          while (backlog() === 0) yield* tx.send(message(900, seq++, 4096))
          yield* Effect.sleep("50 millis")
          if (backlog() > 0) return
        }
      }).pipe(within("filling the stalled connection"))
      const before = (yield* client.stats).transports[0]
      assert.isFalse(before.busy, "a small backlog leaves the connection free to take more")

      for (let i = 1; i <= 3; i++) yield* client.attach(yield* Tcp.dial({ port: server.port }), { label: `fast-${i}` })
      yield* awaitAttached(server.mux, 4)
      const rx = yield* server.mux.socket()
      const senders = 16
      const perSender = 50
      const arrived: Array<Uint8Array> = []
      yield* Effect.forkScoped(rx.messages.pipe(Stream.runForEach((m) => Effect.sync(() => arrived.push(m)))))
      yield* Effect.forEach(
        range(senders),
        (s) => Effect.forEach(range(perSender), (i) => tx.send(message(s, i, 1024)), { discard: true }),
        { concurrency: "unbounded", discard: true }
      ).pipe(within("sending past the stalled connection"))
      const after = yield* client.stats
      const byLabel = new Map(after.transports.map((t) => [t.label, t]))
      const stalledShare = byLabel.get("stalled")!.txMessages - before.txMessages
      const fast = [1, 2, 3].map((i) => byLabel.get(`fast-${i}`)!.txMessages)
      assert.isAtMost(stalledShare, 4, `the backed-up connection got ${stalledShare} of ${senders * perSender}`)
      for (const n of fast) assert.isAbove(n, senders * perSender / 10, `fast connections shared the load: ${fast}`)
      const onFast = fast.reduce((a, b) => a + b, 0)
      assert.strictEqual(onFast + stalledShare, senders * perSender)
      // What went out on the fast connections arrived, intact and once each.
      yield* eventually("the fast connections' messages at the server", Effect.sync(() => arrived.length), (n) => n >= onFast)
      const seen = new Set(arrived.map((m) => {
        const { sender, seq } = verify(m)
        return `${sender}/${seq}`
      }))
      assert.strictEqual(seen.size, onFast)
    }))

  it.live("the Detached event of a reset connection lists the message whose write it cut off", () =>
    Effect.gen(function*() {
      const server = yield* kcmServer()
      const proxy = yield* FaultProxy.make({ target: server.port })
      yield* proxy.set("upstream", { blackhole: true })
      const client = yield* Kcm.make()
      const socket = yield* Tcp.dial({ port: proxy.port })
      yield* client.attach(socket, { label: "doomed" })
      yield* Effect.addFinalizer(() => client.close)
      const events = yield* recordEvents(client)
      const tx = yield* client.socket()
      // Send until one send cannot finish: its write waits for a drain that never comes.
      let seq = 0
      const stuck = yield* Effect.gen(function*() {
        while (true) {
          const m = message(1, seq++, 64 * 1024)
          const fiber = yield* Effect.forkScoped(Effect.exit(tx.send(m)))
          yield* Effect.sleep("20 millis")
          if (fiber.pollUnsafe() === undefined) return { fiber, m }
        }
      }).pipe(within("a send stuck on the blackholed connection"))
      yield* proxy.reset
      const exit = yield* Fiber.join(stuck.fiber).pipe(within("the stuck send failing"))
      assert.isTrue(Exit.isFailure(exit), "the stuck send failed")
      const detached = (yield* events.awaitTag("Detached", 1))[0]
      assert.strictEqual(detached.reason._tag, "TransportFailed")
      // KcmEvent: failedMessages are the messages whose write the failure cut off (their senders got MessageCutOff).
      assert.strictEqual(detached.failedMessages.length, 1, "the cut-off message is reported with the transport")
      assert.strictEqual(detached.failedMessages[0], stuck.m)
    }))

  it.live("a sender waiting for a connection is never handed one that has just failed", () =>
    Effect.gen(function*() {
      const server = yield* kcmServer()
      const doomedProxy = yield* FaultProxy.make({ target: server.port })
      const heldProxy = yield* FaultProxy.make({ target: server.port })
      yield* doomedProxy.set("upstream", { blackhole: true })
      yield* heldProxy.set("upstream", { blackhole: true })
      // A tiny receive budget: once a message waits unread, the client's readers stop pulling.
      const client = yield* Kcm.make({ receiveBudget: 1 })
      yield* client.attach(yield* Tcp.dial({ port: doomedProxy.port }), { label: "doomed" })
      yield* client.attach(yield* Tcp.dial({ port: heldProxy.port }), { label: "held" })
      yield* Effect.addFinalizer(() => client.close)
      yield* awaitAttached(server.mux, 2)
      const events = yield* recordEvents(client)
      const serverSocket = yield* server.mux.socket()
      // One at a time, so that round-robin gives each connection some.
      for (let i = 0; i < 4; i++) yield* serverSocket.send(message(7, i, 100))
      yield* Effect.forkScoped(Stream.runDrain(serverSocket.messages))
      yield* eventually("both client readers paused", client.stats, (s) => s.transports.every((t) => t.paused))

      // Both connections fill up and stay busy; the other senders wait in line.
      const tx = yield* client.socket()
      const senders = yield* Effect.forEach(range(300), (i) => Effect.exit(tx.send(message(1, i, 64 * 1024))), {
        concurrency: "unbounded"
      }).pipe(Effect.forkChild)
      yield* eventually("both connections busy and senders waiting", client.stats, (s) =>
        s.mux.waitingSenders > 0 && s.transports.every((t) => t.busy))
      yield* doomedProxy.reset
      yield* events.awaitTag("Detached", 1)
      yield* heldProxy.set("upstream", {})
      const exits = yield* Fiber.join(senders).pipe(within("every sender finishing over the held connection", 30))
      const cutOff = exits.filter(Exit.isFailure)
      // Only the message being written on the failed connection may be cut off; a waiting
      // sender's message was never started, so it must go out on the other connection.
      assert.strictEqual(cutOff.length, 1, `${cutOff.length} sends failed: ${cutOff.map((e) => String(e.cause)).join(" | ")}`)
    }))

  it.live("closing the scope of an attachment does not wait forever for a write the peer never reads", () =>
    Effect.gen(function*() {
      // A peer that accepts and never reads: writes to it stall once the kernel buffers are full.
      const listener = yield* Tcp.listen()
      const client = yield* Kcm.make()
      const attachScope = yield* Scope.make()
      yield* client.attach(yield* Tcp.dial({ port: listener.port }).pipe(Scope.provide(attachScope))).pipe(
        Scope.provide(attachScope)
      )
      yield* listener.accept
      const tx = yield* client.socket()
      yield* Effect.forkScoped(Effect.forever(tx.send(message(1, 0, 512 * 1024))))
      yield* eventually("a send stuck on the connection", client.stats, (s) => s.transports[0]?.busy === true && s.mux.txMessages > 4)
      yield* Effect.sleep("100 millis")
      assert.isTrue((yield* client.stats).transports[0].busy, "the write stays stuck")
      // Closing the scope the transport was attached in detaches it; that must finish.
      const closing = yield* Effect.forkDetach(Scope.close(attachScope, Exit.void))
      const closed = yield* Effect.exit(Fiber.join(closing).pipe(Effect.timeout("3 seconds")))
      // (If it hangs, closing the test's Scope interrupts the stuck sender, which fails the
      // transport and so releases the detach: the test ends either way.)
      assert.isTrue(Exit.isSuccess(closed), "the attachment's scope closed within 3 s")
    }))

  it.live("a pool of TLS connections carries whole messages both ways", () =>
    Effect.gen(function*() {
      const fixtures = new URL("../../transport-tcp/test/fixtures/", import.meta.url)
      const key = Fs.readFileSync(new URL("key.pem", fixtures), "utf8")
      const cert = Fs.readFileSync(new URL("cert.pem", fixtures), "utf8")
      const listener = yield* Tls.listen({ key, cert })
      const server = yield* Kcm.make()
      const client = yield* Kcm.makePool({
        dial: Tls.dial({ port: listener.port, ca: cert, servername: "localhost" }),
        connections: 3
      })
      for (let i = 0; i < 3; i++) yield* server.attach((yield* listener.accept).socket)
      const tx = yield* client.socket()
      const rx = yield* server.socket()
      const receiving = yield* rx.messages.pipe(Stream.take(300), Stream.runCollect, Effect.forkChild)
      yield* Effect.forEach(Array.from({ length: 300 }, (_, i) => i), (i) => tx.send(message(i % 10, i, 100 + i * 37)), {
        concurrency: 10,
        discard: true
      })
      const got = yield* Fiber.join(receiving).pipe(within("receive over TLS"))
      assert.strictEqual(new Set(got.map((m) => verify(m).seq)).size, 300)
      const back = yield* server.socket()
      const replies = yield* (yield* client.socket()).messages.pipe(Stream.take(30), Stream.runCollect, Effect.forkChild)
      yield* Effect.forEach(Array.from({ length: 30 }, (_, i) => i), (i) => back.send(message(99, i, 500)), { discard: true })
      assert.strictEqual((yield* Fiber.join(replies).pipe(within("replies over TLS"))).length, 30)
    }))
})
