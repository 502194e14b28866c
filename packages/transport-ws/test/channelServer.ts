/**
 * A channels server on our WebSocket server, for the channel tests and the
 * browser test: every connection runs Channels (server role) and a small
 * scripted application, and records what reached it (messages, control
 * messages as received, how each channel ended) for the tests to assert.
 *
 * The application: every channel echoes what it receives, except that a
 * message `cmd:…` is a command on that channel: `cmd:close:CODE:REASON`
 * closes it with that code, `cmd:abort:CODE` aborts it, `cmd:push:LABEL`
 * opens a channel LABEL from the server and sends `welcome LABEL` on it.
 */
import { ChannelError, Channels, MessageTransport } from "@plexus/core"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { NodeWs, type WsServer } from "../src/index.ts"

const decoder = new TextDecoder()
const encoder = new TextEncoder()

/** A DESTROY as received on the control channel (docs/spec/channels.md, "DESTROY"). */
export interface SeenDestroy {
  readonly channel: number
  readonly code: number
  readonly reason: string
  readonly abort: boolean
}

/** What one connection's application saw. */
export interface ConnectionLog {
  readonly authorization: string | undefined
  readonly protocol: string | undefined
  /** Messages received, by channel label ("" for channel 0), as raw bytes. */
  readonly received: Array<{ readonly label: string; readonly data: Uint8Array }>
  /** How each channel ended at the server: "done" (the peer's graceful close) or the error's reason tag. */
  readonly ends: Array<{ readonly label: string; readonly how: string }>
  readonly destroys: Array<SeenDestroy>
  channels: Channels.Channels | undefined
  /** How the connection's channels ended: "ok" or the error's reason tag. */
  ended: string | undefined
}

export interface ChannelServer {
  readonly server: WsServer.WsServer["Service"]
  readonly url: string
  readonly connections: Array<ConnectionLog>
  /** Secondary-handshake requests the authentication hook saw, with their `Authorization`. */
  readonly authRequests: Array<string | undefined>
}

/** Records every DESTROY the transport delivers, before Channels reads it. */
const spyDestroys = <E>(transport: MessageTransport.MessageTransport<E>, seen: Array<SeenDestroy>) =>
  MessageTransport.make({
    send: transport.send,
    sendAll: transport.sendAll,
    close: transport.close,
    closeWith: transport.closeWith,
    pull: Effect.tap(transport.pull, (batch) =>
      Effect.sync(() => {
        for (const m of batch) {
          if (m.length >= 12 && m[0] === 0xff && m[1] === 0xff && m[2] === 0x02) {
            seen.push({
              channel: (m[8]! << 8) | m[9]!,
              code: (m[10]! << 8) | m[11]!,
              reason: decoder.decode(m.subarray(12)),
              abort: (m[3]! & 1) === 1
            })
          }
        }
      }))
  })

const serveChannel = (
  channels: Channels.Channels,
  channel: Channels.Channel,
  log: ConnectionLog
): Effect.Effect<void, never, Scope.Scope> => {
  const label = channel.label
  const command = (text: string): Effect.Effect<boolean, ChannelError.ChannelError, Scope.Scope> => {
    const [, verb, arg, ...rest] = text.split(":")
    switch (verb) {
      case "close":
        return Effect.as(channel.closeWith(Number(arg), rest.join(":")), true)
      case "abort":
        return Effect.as(channel.abort(Number(arg), rest.join(":")), true)
      case "push":
        return Effect.gen(function*() {
          const pushed = yield* channels.open({ label: arg ?? "" })
          yield* pushed.send(encoder.encode(`welcome ${arg}`))
          yield* Effect.forkScoped(serveChannel(channels, pushed, log))
          return false
        })
      default:
        return Effect.succeed(false)
    }
  }
  const loop: Effect.Effect<void, ChannelError.ChannelError | Cause.Done, Scope.Scope> = Effect.gen(function*() {
    const batch = yield* channel.pull
    for (const data of batch) {
      log.received.push({ label, data: data.slice() })
      const text = data.length < 200 ? decoder.decode(data) : ""
      if (text.startsWith("cmd:")) {
        if (yield* command(text)) return
      } else {
        yield* channel.send(data)
      }
    }
    yield* loop
  })
  return loop.pipe(
    Effect.catchCause((cause) =>
      Effect.sync(() => {
        const error = Cause.squash(cause)
        log.ends.push({
          label,
          how: Cause.isDone(error)
            ? "done"
            : error instanceof ChannelError.ChannelError
            ? error.reason._tag
            : String(error)
        })
      })
    ),
    Effect.andThen(Effect.sync(() => {
      // A command ended the loop: the channel closes or aborts from here.
      if (!log.ends.some((e) => e.label === label)) log.ends.push({ label, how: "command" })
    }))
  )
}

/**
 * Listens on 127.0.0.1:0 and serves channels on every connection until the
 * Scope closes. With `requireCredentials`, the secondary handshake answers
 * 401 to a request without `Authorization: Bearer <token>` and accepts it.
 */
export const listenChannels = (options: {
  readonly listen?: NodeWs.ListenOptions | undefined
  readonly channels?: Omit<Channels.Options, "role"> | undefined
  readonly token?: string | undefined
} = {}): Effect.Effect<ChannelServer, unknown, Scope.Scope> =>
  Effect.gen(function*() {
    const authRequests: Array<string | undefined> = []
    const token = options.token
    const server = yield* NodeWs.listen({
      channelExtensions: ["fanout", "encryption"],
      secondary: token === undefined ? true : {
        authenticate: (request) =>
          Effect.sync(() => {
            authRequests.push(request.authorization)
            return request.authorization === `Bearer ${token}`
              ? { _tag: "Accept" as const }
              : { _tag: "Challenge" as const, challenge: "Bearer realm=\"plexus\"" }
          })
      },
      ...options.listen
    })
    const connections: Array<ConnectionLog> = []
    const outer = yield* Effect.scope
    const serveOne = Effect.gen(function*() {
      const scope = yield* Scope.fork(outer)
      const connection = yield* Scope.provide(server.accept, scope)
      const log: ConnectionLog = {
        authorization: connection.authorization,
        protocol: connection.protocol,
        received: [],
        ends: [],
        destroys: [],
        channels: undefined,
        ended: undefined
      }
      connections.push(log)
      const run = Effect.gen(function*() {
        const transport = spyDestroys(yield* connection.messages, log.destroys)
        const channels = yield* Channels.make(transport, { ...options.channels, role: "server" })
        log.channels = channels
        yield* Effect.forkScoped(serveChannel(channels, channels.defaultChannel, log))
        const accepting: Effect.Effect<void, never, Scope.Scope> = Effect.gen(function*() {
          const exit = yield* Effect.exit(channels.accept)
          if (Exit.isFailure(exit)) return
          yield* Effect.forkScoped(serveChannel(channels, exit.value, log))
          yield* accepting
        })
        yield* Effect.forkScoped(accepting)
        const end = yield* Effect.exit(channels.closed)
        log.ended = Exit.isSuccess(end) ? "ok" : String((Cause.squash(end.cause) as ChannelError.ChannelError).reason?._tag)
      })
      yield* Effect.forkIn(
        run.pipe(Scope.provide(scope), Effect.ignore, Effect.ensuring(Scope.close(scope, Exit.void))),
        outer
      )
    })
    yield* Effect.forkScoped(Effect.forever(serveOne).pipe(Effect.ignore))
    return { server, url: server.url, connections, authRequests }
  })

/**
 * Waits until `condition` holds, checking every few milliseconds, for what
 * the server records after the client side already returned; fails after
 * 5 s.
 */
export const eventually = (what: string, condition: () => boolean): Effect.Effect<void> => {
  const started = Date.now()
  const check: Effect.Effect<void> = Effect.suspend(() => {
    if (condition()) return Effect.void
    if (Date.now() - started > 5_000) return Effect.die(new Error(`${what}: not within 5 s`))
    return Effect.andThen(Effect.sleep(5), check)
  })
  return check
}
