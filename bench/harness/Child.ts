/**
 * Peer processes: benchmarks put the two ends of a connection in separate
 * processes, as on a real network, so neither end steals the other's CPU
 * from inside one event loop. The parent spawns a peer script from
 * `bench/peers/` with the same Node binary (`process.execPath`) and talks to
 * it over Node's IPC channel: the peer announces itself (e.g. its port)
 * with `announce`, and reports with `report`.
 *
 * Every spawned peer is killed when the parent exits, however it exits, and
 * a peer exits by itself when its parent disappears (the IPC channel
 * closes), so no benchmark leaves processes behind.
 */
import * as ChildProcess from "node:child_process"
import * as Path from "node:path"
import * as Url from "node:url"

/** A message between the parent and a peer: a JSON object with a `type`. */
export interface Message {
  readonly type: string
  readonly [key: string]: unknown
}

/** A running peer process, seen from the parent. */
export interface Peer {
  readonly pid: number
  /** The next message from the peer; rejects if the peer exits first or `timeoutMs` passes. */
  readonly next: (timeoutMs?: number) => Promise<Message>
  /** Sends a message to the peer. */
  readonly send: (message: Message) => void
  /** Sends a message and answers the peer's next message. */
  readonly request: (message: Message, timeoutMs?: number) => Promise<Message>
  /** Stops the peer (SIGTERM, then SIGKILL after a second) and waits for it to exit. */
  readonly kill: () => Promise<void>
}

/** The directory holding peer scripts. */
export const PEERS_DIR = Path.join(Path.dirname(Url.fileURLToPath(import.meta.url)), "..", "peers")

const DEFAULT_TIMEOUT_MS = 60_000
const OUTPUT_TAIL = 4096

const live = new Set<ChildProcess.ChildProcess>()
let exitHookInstalled = false
const installExitHook = () => {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.on("exit", () => {
    for (const child of live) child.kill("SIGKILL")
  })
}

/**
 * Spawns `bench/peers/<script>` with `args` and waits for its first message
 * (its announcement), which is answered alongside the peer.
 */
export const spawn = async (
  script: string,
  args: ReadonlyArray<string> = [],
  options: { readonly timeoutMs?: number | undefined } = {}
): Promise<{ readonly peer: Peer; readonly announcement: Message }> => {
  installExitHook()
  const child = ChildProcess.spawn(process.execPath, [Path.join(PEERS_DIR, script), ...args], {
    stdio: ["ignore", "pipe", "pipe", "ipc"],
    serialization: "json"
  })
  live.add(child)
  let output = ""
  const collect = (chunk: Buffer) => {
    output = (output + chunk.toString("utf8")).slice(-OUTPUT_TAIL)
  }
  child.stdout!.on("data", collect)
  child.stderr!.on("data", collect)

  const inbox: Array<Message> = []
  const waiters: Array<{ resolve: (m: Message) => void; reject: (e: Error) => void }> = []
  let exitError: Error | undefined
  const exited = new Promise<void>((resolve) => {
    child.once("exit", (code, signal) => {
      live.delete(child)
      exitError = new Error(
        `peer ${script} exited (${signal ?? `code ${code}`})${output.length > 0 ? `; its output ended with: ${output.trim()}` : ""}`
      )
      for (const waiter of waiters.splice(0)) waiter.reject(exitError)
      resolve()
    })
  })
  child.on("error", (error) => {
    for (const waiter of waiters.splice(0)) waiter.reject(error)
  })
  child.on("message", (message: Message) => {
    const waiter = waiters.shift()
    if (waiter !== undefined) waiter.resolve(message)
    else inbox.push(message)
  })

  const next = (timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Message> => {
    const queued = inbox.shift()
    if (queued !== undefined) return Promise.resolve(queued)
    if (exitError !== undefined) return Promise.reject(exitError)
    return new Promise<Message>((resolve, reject) => {
      const waiter = {
        resolve: (m: Message) => {
          clearTimeout(timer)
          resolve(m)
        },
        reject: (e: Error) => {
          clearTimeout(timer)
          reject(e)
        }
      }
      const timer = setTimeout(() => {
        const at = waiters.indexOf(waiter)
        if (at >= 0) waiters.splice(at, 1)
        reject(new Error(`peer ${script} sent nothing for ${timeoutMs} ms`))
      }, timeoutMs)
      waiters.push(waiter)
    })
  }

  const send = (message: Message) => {
    if (!child.connected) throw exitError ?? new Error(`peer ${script} is not connected`)
    child.send(message)
  }

  const kill = async () => {
    if (exitError !== undefined) return
    child.kill("SIGTERM")
    const force = setTimeout(() => child.kill("SIGKILL"), 1000)
    await exited
    clearTimeout(force)
  }

  const peer: Peer = {
    pid: child.pid ?? -1,
    next,
    send,
    request: (message, timeoutMs) => {
      send(message)
      return next(timeoutMs)
    },
    kill
  }
  try {
    const announcement = await next(options.timeoutMs ?? DEFAULT_TIMEOUT_MS)
    return { peer, announcement }
  } catch (error) {
    await kill()
    throw error
  }
}

// ---------------------------------------------------------------------------
// Peer side
// ---------------------------------------------------------------------------

/**
 * Peer side: sends a message to the parent. Throws when the script was not
 * started by `spawn` (no IPC channel).
 */
export const report = (message: Message): void => {
  if (process.send === undefined) throw new Error("not started as a bench peer (no IPC channel)")
  process.send(message)
}

/**
 * Peer side: makes the peer exit when its parent goes away, then sends its
 * announcement (e.g. `{ type: "ready", port }`).
 */
export const announce = (message: Message): void => {
  process.once("disconnect", () => process.exit(0))
  report(message)
}

/** Peer side: messages from the parent. */
export const onMessage = (handler: (message: Message) => void): void => {
  process.on("message", (message) => handler(message as Message))
}
