/**
 * The baseline sender of WebSocket rows, as a user of plain `ws` writes it:
 * one `send` per message, and while `bufferedAmount` is above 1 MiB (our
 * write high-water mark) it waits for a send's callback before going on.
 */
import type { Buffer } from "node:buffer"

const WRITE_HIGH_WATER_MARK = 1024 * 1024

/**
 * Dials `url` with `ws`, sends `count` messages of `pool` round robin
 * starting at `offset`, then closes (1000).
 */
export const sendPlainWs = async (
  url: string,
  pool: ReadonlyArray<Buffer>,
  count: number,
  options: { readonly offset?: number; readonly maxPayload?: number } = {}
): Promise<void> => {
  const { default: WebSocket } = await import("ws")
  const offset = options.offset ?? 0
  const ws = new WebSocket(url, {
    perMessageDeflate: false,
    ...(options.maxPayload === undefined ? {} : { maxPayload: options.maxPayload })
  })
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve())
    ws.once("error", reject)
  })
  let i = 0
  await new Promise<void>((resolve, reject) => {
    const pump = () => {
      while (i < count) {
        const m = pool[(offset + i) % pool.length]!
        i++
        if (ws.bufferedAmount + m.length > WRITE_HIGH_WATER_MARK) {
          ws.send(m, (error) => (error ? reject(error) : pump()))
          return
        }
        ws.send(m)
      }
      resolve()
    }
    pump()
  })
  ws.close(1000)
}
