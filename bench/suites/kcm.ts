/**
 * KCM: `@plexus/kcm` multiplexors over pools of loopback TCP connections
 * (`@plexus/transport-tcp`), client in this process, server in a peer
 * process (`bench/peers/kcm-peer.ts`), as over a real network.
 *
 * Pool rows move 1 KiB messages both ways at once: each side sends its
 * messages from 64 concurrent senders (fibers for KCM, async loops for the
 * baseline) and receives on two message sockets (two consumers of one queue
 * for the baseline). A repetition starts when the bench tells the peer to
 * begin (over IPC) and starts sending itself, and stops when this side has
 * received every message of the round and the peer has reported the same;
 * the value counts the messages of both directions. Connections are dialled
 * once per row and carry every repetition.
 *
 * The baseline is what a user would write instead of KCM: raw `node:net`
 * connections, round-robin sends of length-prefixed frames (one `write`
 * each, waiting for `'drain'`), a hand-written 4-byte big-endian
 * length-prefix decoder per connection, and one receive queue (`RawPool` in
 * `bench/peers/kcm-pool.ts`), on both ends.
 *
 * `batched-64B` moves 64-byte messages one way over 4 connections: batches
 * of 256 through `sendAll` against the same messages through `send`, over
 * the same multiplexors and connections.
 *
 * One peer process serves the whole run (each row configures fresh servers
 * in it), so its start-up is paid once; pool rows warm up twice, since the
 * KCM path in a fresh peer is still speeding up after one round.
 *
 * Every message is verified on arrival (size, id, tail, a pattern byte, no
 * id twice), and a round only completes when every id arrived, so a broken
 * run fails instead of reporting a number.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as Net from "node:net"
import { Kcm, type MessageSocket } from "@plexus/kcm"
import { Tcp } from "@plexus/transport-tcp"
import * as Child from "../harness/Child.ts"
import type { Contest, Row, RunOptions, Suite } from "../harness/Suite.ts"
import {
  BATCH,
  consumeRaw,
  RawPool,
  receiveKcm,
  Rounds,
  sendKcm,
  sendRaw,
  SENDERS
} from "../peers/kcm-pool.ts"

const HOST = "127.0.0.1"

/** Message sizes and counts per repetition, per mode. */
const sizes = (quick: boolean) => ({
  /** 1 KiB messages each way in a pool row. */
  poolMessages: quick ? 1_000 : 100_000,
  /** 64-byte messages one way in the batched row. */
  batchedMessages: quick ? 5_000 : 300_000
})

const POOL_SIZE = 1024
const SMALL_SIZE = 64

type Peer = Awaited<ReturnType<typeof Child.spawn>>["peer"]

/**
 * One peer process serves every row of a run (spawning it, with Effect and
 * the packages loaded, costs about a second): each row configures fresh
 * servers in it and resets them when done. It is killed when the bench
 * exits, like every peer.
 */
let shared: Promise<Peer> | undefined
let epochs = 0

const sharedPeer = (): Promise<Peer> => {
  if (shared === undefined) {
    const spawning = Child.spawn("kcm-peer.ts").then(async ({ peer, announcement }) => {
      if (announcement.type !== "ready") {
        await peer.kill()
        throw new Error(`kcm-peer: ${String(announcement.message ?? announcement.type)}`)
      }
      return peer
    })
    shared = spawning
    spawning.catch(() => {
      if (shared === spawning) shared = undefined
    })
  }
  return shared
}

/** Stops the shared peer (for tools and tests); the next row starts a new one. */
export const stopPeer = async (): Promise<void> => {
  const spawning = shared
  shared = undefined
  const peer = await spawning?.catch(() => undefined)
  await peer?.kill()
}

/** The peer's next answer for configuration `epoch` of one of `types`, dropping what earlier rows left behind. */
const answer = async (peer: Peer, epoch: number, types: ReadonlyArray<string>): Promise<Child.Message> => {
  while (true) {
    const message = await peer.next()
    if (message.epoch !== epoch) continue
    if (message.type === "error") throw new Error(`kcm-peer: ${String(message.message)}`)
    if (types.includes(message.type)) return message
  }
}

/** Fresh servers in the shared peer; `reset` stops them (and the peer too if it no longer answers). */
const configure = async (config: {
  readonly kcmConnections: number
  readonly rawConnections: number
  readonly size: number
  readonly sends: number
  readonly expects: number
}) => {
  const peer = await sharedPeer()
  const epoch = ++epochs
  const reset = async () => {
    try {
      peer.send({ type: "reset", epoch })
      await answer(peer, epoch, ["reset"])
    } catch {
      if (shared !== undefined && (await shared.catch(() => undefined)) === peer) shared = undefined
      await peer.kill()
    }
  }
  try {
    peer.send({ type: "configure", epoch, ...config })
    const reply = await answer(peer, epoch, ["configured"])
    return { peer, epoch, kcmPort: reply.kcmPort as number, rawPort: reply.rawPort as number, reset }
  } catch (error) {
    await reset()
    throw error
  }
}

/** A KCM client pool of `connections` TCP connections, two message sockets receiving into `rounds`. */
const kcmClient = async (port: number, connections: number, rounds: Rounds) => {
  const scope = Effect.runSync(Scope.make())
  try {
    const sockets = await Effect.runPromise(Scope.provide(
      Effect.gen(function*() {
        const mux = yield* Kcm.makePool({
          dial: Tcp.dial({ host: HOST, port, noDelay: true }),
          connections,
          reconnect: false
        })
        return yield* receiveKcm(mux, rounds, 2)
      }),
      scope
    ))
    return { sockets, close: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
  } catch (error) {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    throw error
  }
}

const connect = (port: number): Promise<Net.Socket> =>
  new Promise((resolve, reject) => {
    const socket = Net.connect({ host: HOST, port, noDelay: true })
    socket.once("connect", () => {
      socket.off("error", reject)
      resolve(socket)
    })
    socket.once("error", reject)
  })

/** A hand-written pool of `connections` raw connections, two consumers receiving into `rounds`. */
const rawClient = async (port: number, connections: number, rounds: Rounds) => {
  const pool = new RawPool()
  consumeRaw(pool, rounds, 2)
  try {
    for (let i = 0; i < connections; i++) pool.attach(await connect(port))
  } catch (error) {
    pool.destroy()
    throw error
  }
  return pool
}

/**
 * One timed round against the peer: tells it to start round `round` of
 * `impl`, runs `send` here, and waits until this side received its round
 * (`local`) and the peer reported its own. Answers `messages` per second.
 */
const timedRound = async (
  remote: { readonly peer: Peer; readonly epoch: number },
  impl: "kcm" | "raw",
  round: number,
  messages: number,
  send: () => Promise<void>,
  local: Rounds
): Promise<number> => {
  const started = performance.now()
  remote.peer.send({ type: "round", epoch: remote.epoch, impl, round })
  const reply = answer(remote.peer, remote.epoch, ["done"])
  reply.catch(() => {}) // a failure here is reported below
  await send()
  await local.wait(round)
  const report = await reply
  const seconds = (performance.now() - started) / 1000
  if (report.round !== round || report.impl !== impl) {
    throw new Error(`kcm-peer finished round ${String(report.round)} of ${String(report.impl)}, expected ${round} of ${impl}`)
  }
  if (local.error !== undefined) throw local.error
  return messages / seconds
}

/**
 * 1 KiB messages both ways: a KCM pool of `kcmConnections` against the
 * hand-written pool of `rawConnections`, both with the peer on the other end.
 */
const pools = (kcmConnections: number, rawConnections: number) => async (options: RunOptions): Promise<Contest> => {
  const count = sizes(options.quick).poolMessages
  const remote = await configure({ kcmConnections, rawConnections, size: POOL_SIZE, sends: count, expects: count })
  const kcmRounds = new Rounds(count, POOL_SIZE)
  const rawRounds = new Rounds(count, POOL_SIZE)
  let kcm: Awaited<ReturnType<typeof kcmClient>> | undefined
  let raw: RawPool | undefined
  const close = async () => {
    raw?.destroy()
    await kcm?.close()
    await remote.reset()
  }
  try {
    kcm = await kcmClient(remote.kcmPort, kcmConnections, kcmRounds)
    raw = await rawClient(remote.rawPort, rawConnections, rawRounds)
  } catch (error) {
    await close()
    throw error
  }
  const { sockets } = kcm
  const pool = raw
  let kcmRound = 0
  let rawRound = 0
  return {
    subject: () =>
      timedRound(
        remote,
        "kcm",
        ++kcmRound,
        2 * count,
        () => Effect.runPromise(sendKcm(sockets, count, POOL_SIZE, SENDERS)),
        kcmRounds
      ),
    baseline: () =>
      timedRound(remote, "raw", ++rawRound, 2 * count, () => sendRaw(pool, count, POOL_SIZE, SENDERS), rawRounds),
    close
  }
}

/** 64-byte messages one way over one KCM pool of 4: `sendAll` batches against one `send` per message. */
const batched = async (options: RunOptions): Promise<Contest> => {
  const count = sizes(options.quick).batchedMessages
  const connections = 4
  const remote = await configure({ kcmConnections: connections, rawConnections: 0, size: SMALL_SIZE, sends: 0, expects: count })
  // Nothing comes back: any message received here fails the row.
  const nothing = new Rounds(0, SMALL_SIZE)
  let kcm: Awaited<ReturnType<typeof kcmClient>>
  try {
    kcm = await kcmClient(remote.kcmPort, connections, nothing)
  } catch (error) {
    await remote.reset()
    throw error
  }
  const sockets: ReadonlyArray<MessageSocket.MessageSocket> = kcm.sockets
  let round = 0
  const run = (batch: number | undefined) => () =>
    timedRound(
      remote,
      "kcm",
      ++round,
      count,
      () => Effect.runPromise(sendKcm(sockets, count, SMALL_SIZE, SENDERS, batch)),
      nothing
    )
  return {
    subject: run(BATCH),
    baseline: run(undefined),
    close: async () => {
      await kcm.close()
      await remote.reset()
    }
  }
}

const poolRow = (connections: number): Row => ({
  name: `pool-${connections}-conn-1KiB`,
  unit: "msg/s",
  baseline: `hand-written node:net pool of ${connections}`,
  ...(connections === 4 ? { goal: ">= 0.9" } : {}),
  // The peer's KCM path needs more than one round to settle (JIT); see the file comment.
  warmup: 2,
  timeoutMs: 60_000,
  description:
    `1 KiB messages both ways at once (msg/s summed over both directions) over ${connections} loopback TCP connection(s), ` +
    "64 senders and 2 receiving message sockets per side, server in a peer; baseline: raw node:net, round-robin " +
    "length-prefixed writes, a decoder per connection, one receive queue with 2 consumers, on both ends",
  setup: pools(connections, connections)
})

export const suite: Suite = {
  group: "kcm",
  rows: [
    poolRow(4),
    poolRow(1),
    poolRow(2),
    poolRow(8),
    {
      name: "raw-1-conn-1KiB",
      unit: "msg/s",
      baseline: "raw node:net, one connection",
      warmup: 2,
      timeoutMs: 60_000,
      description:
        "for scale: the KCM pool of 4 of pool-4-conn-1KiB against the hand-written code on a single raw " +
        "connection (64 senders writing length-prefixed frames to it, one decoder, one queue, 2 consumers)",
      setup: pools(4, 1)
    },
    {
      name: "batched-64B",
      unit: "msg/s",
      baseline: "the same messages through send, one by one",
      goal: ">= 3",
      timeoutMs: 60_000,
      description:
        "64-byte messages one way over a KCM pool of 4 TCP connections, 64 senders each handing over " +
        `batches of ${BATCH} with socket.sendAll, received on 2 message sockets in a peer; baseline: the same ` +
        "senders, sockets and connections sending each message with socket.send",
      setup: batched
    }
  ]
}
