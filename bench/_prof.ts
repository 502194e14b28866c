import { Effect } from "effect"
import { Session } from "@plexus/core"
import { Tcp } from "@plexus/transport-tcp"
const text = new Uint8Array(1024)
const program = Effect.gen(function*() {
  const listener = yield* Tcp.listen({ host: "127.0.0.1", port: 0 })
  yield* Effect.forkScoped(listener.run((socket) => Effect.scoped(Effect.gen(function*() {
    const session = yield* Session.make(socket, { role: "server", keepAlive: false, maxInboundStreams: 20000 })
    yield* Effect.forkScoped(session.run((stream) => Effect.gen(function*() {
      const r = yield* stream.reader
      let n = 0
      while (n < 1024) { const res = yield* Effect.result(r.pull); if (res._tag === "Failure") break; for (const c of res.success) n += (c as Uint8Array).length }
      const w = yield* stream.writer
      yield* w.write(text)
    }).pipe(Effect.scoped, Effect.ignore)))
    yield* session.closed.pipe(Effect.ignore)
  }))))
  const socket = yield* Tcp.dial({ host: "127.0.0.1", port: listener.port })
  const session = yield* Session.make(socket, { role: "client", keepAlive: false, maxOutboundStreams: 20000 })
  const one = Effect.scoped(Effect.gen(function*() {
    const s = yield* session.open()
    yield* Effect.scoped(Effect.flatMap(s.writer, (w) => w.write(text)))
    const r = yield* s.reader
    while (true) { const res = yield* Effect.result(r.pull); if (res._tag === "Failure") break }
  }))
  const N = 20000
  const t0 = performance.now()
  yield* Effect.forEach(Array.from({ length: N }), () => one, { concurrency: 64, discard: true })
  console.log("streams/s", Math.round(N / ((performance.now() - t0) / 1000)))
})
Effect.runPromise(Effect.scoped(program))
