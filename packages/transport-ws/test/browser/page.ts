/**
 * The page of the real-browser test: bundled for the browser from the
 * `@plexus/transport-ws/browser` entry, it connects to the test's channels
 * server with `ChannelClient.connect` (secondary handshake, credentials
 * after a 401), uses channels as WebSockets (channel 0, two it opens, one
 * the server opens), and reports what it saw to the test.
 */
import { ChannelClient, type ChannelSocket } from "../../src/browser.ts"

/** What the page reports back. */
export interface PageReport {
  readonly userAgent: string
  readonly protocol: string
  readonly challenges: Array<string | undefined>
  readonly zeroEcho: string
  readonly textEcho: string
  readonly binaryEcho: Array<number>
  readonly binaryWasBlob: boolean
  readonly pushed: { readonly label: string; readonly id: number; readonly events: Array<string> }
  readonly closeOfA: { readonly code: number; readonly reason: string; readonly wasClean: boolean }
  readonly states: Array<number>
  readonly connectionClosed: boolean
}

type Socket = ChannelSocket.ChannelSocket

const once = <E extends Event>(target: EventTarget, type: string): Promise<E> =>
  new Promise((resolve) => target.addEventListener(type, (e) => resolve(e as E), { once: true }))

const opened = (socket: Socket): Promise<unknown> =>
  socket.readyState === socket.OPEN ? Promise.resolve() : once(socket, "open")

const bytesOf = async (data: unknown): Promise<Uint8Array> =>
  new Uint8Array(data instanceof Blob ? await data.arrayBuffer() : data as ArrayBuffer)

const run = async (url: string, token: string): Promise<PageReport> => {
  const challenges: Array<string | undefined> = []
  const client = await ChannelClient.connect(url, {
    protocols: ["app.v1"],
    authorization: async (challenge) => {
      challenges.push(challenge)
      return `Bearer ${token}`
    }
  })
  const decoder = new TextDecoder()

  const zero = client.defaultChannel
  zero.binaryType = "arraybuffer"
  await opened(zero)
  const zeroMessage = once<MessageEvent>(zero, "message")
  zero.send("hello on channel 0")
  const zeroEcho = decoder.decode(await bytesOf((await zeroMessage).data))

  const a = client.open("echo")
  const b = client.open("binary")
  const states = [a.readyState]
  a.binaryType = "arraybuffer"
  await Promise.all([opened(a), opened(b)])
  states.push(a.readyState)

  const textMessage = once<MessageEvent>(a, "message")
  a.send("text on a")
  const textEcho = decoder.decode(await bytesOf((await textMessage).data))

  const binaryMessage = once<MessageEvent>(b, "message")
  b.send(new Uint8Array([1, 2, 3, 250]))
  const binaryData = (await binaryMessage).data
  const binaryEcho = [...await bytesOf(binaryData)]

  const pushedEvents: Array<string> = []
  const pushed = new Promise<Socket>((resolve) => {
    client.onchannel = (event) => {
      const channel = event.channel
      pushedEvents.push(`channel:${channel.label}`)
      channel.binaryType = "arraybuffer"
      channel.onopen = () => pushedEvents.push("open")
      channel.onmessage = (m) => {
        pushedEvents.push(`message:${decoder.decode(new Uint8Array(m.data as ArrayBuffer))}`)
        resolve(channel)
      }
    }
  })
  zero.send("cmd:push:news")
  const news = await pushed

  const closeEvent = once<ChannelSocket.ChannelCloseEvent>(a, "close")
  a.close(4001, "page done")
  states.push(a.readyState)
  const closed = await closeEvent
  states.push(a.readyState)

  const connectionClose = once(client, "close")
  await client.close()
  await connectionClose
  return {
    userAgent: navigator.userAgent,
    protocol: client.protocol,
    challenges,
    zeroEcho,
    textEcho,
    binaryEcho,
    binaryWasBlob: binaryData instanceof Blob,
    pushed: { label: news.label, id: news.id, events: pushedEvents },
    closeOfA: { code: closed.code, reason: closed.reason, wasClean: closed.wasClean },
    states,
    connectionClosed: client.readyState === ChannelClient.ChannelClient.CLOSED
  }
}

;(globalThis as { runChannels?: typeof run }).runChannels = run
