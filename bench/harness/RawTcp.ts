/**
 * The raw `node:net` sender every throughput baseline uses: connect to
 * 127.0.0.1:`port`, write `chunk` until `total` bytes went out (waiting for
 * `'drain'` whenever `write()` answers false), then half-close.
 */
import * as Net from "node:net"

export const sendRaw = (port: number, total: number, chunk: Uint8Array): Promise<void> =>
  new Promise<void>((resolve, reject) => {
    const socket = Net.connect({ host: "127.0.0.1", port, noDelay: true })
    let sent = 0
    const pump = () => {
      while (sent < total) {
        sent += chunk.length
        if (!socket.write(chunk)) {
          socket.once("drain", pump)
          return
        }
      }
      socket.end(resolve)
    }
    socket.once("connect", pump)
    socket.once("error", reject)
  })
