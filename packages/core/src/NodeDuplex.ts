/**
 * Node `Duplex` adapters, for Node libraries that take a stream: a
 * session's `MuxStream` as a `Duplex`. Node-only, so it lives outside the
 * main entry (`@plexus/core/node`), which keeps `@plexus/core` free of
 * `node:` imports and bundlable for pages.
 *
 * @since 0.1.0
 */
import { Duplex } from "node:stream"
import { CODE_CANCEL } from "./internal/muxEngine.ts"
import type { MuxStream, MuxStreamImpl } from "./MuxStream.ts"

/**
 * Adapts a session stream to a Node `Duplex`: writes queue on the stream (the
 * callback waits while its send buffer is full), reads push what arrives,
 * `end()` half-closes, `destroy()` resets.
 *
 * @category conversions
 * @since 0.1.0
 */
export const fromMuxStream = (stream: MuxStream): Duplex => {
  const impl = stream as MuxStreamImpl
  const state = impl.state
  const engine = impl.engine
  let reading = false
  const duplex: Duplex = new Duplex({
    allowHalfOpen: true,
    read() {
      if (reading) return
      reading = true
      pump()
    },
    write(chunk: Uint8Array, _encoding, callback) {
      if (state.failure !== undefined) return callback(impl.typedError())
      if (state.localFin) return callback(new Error("write side closed"))
      if (!engine.write(state, chunk)) return callback()
      const wait = () => {
        if (state.failure !== undefined) return callback(impl.typedError())
        if (state.sendBytes < engine.config.sendBufferBytes) return callback()
        ;(state.writeWakers ??= []).push(wait)
      }
      ;(state.writeWakers ??= []).push(wait)
    },
    final(callback) {
      engine.closeWrite(state)
      callback()
    },
    destroy(error, callback) {
      if (!state.done) engine.resetStream(state, CODE_CANCEL)
      callback(error)
    }
  })
  const pump = (): void => {
    for (;;) {
      const chunks = engine.takeReceived(state)
      if (chunks !== undefined) {
        let more = true
        for (let i = 0; i < chunks.length; i++) more = duplex.push(chunks[i])
        if (!more) {
          reading = false
          return
        }
        continue
      }
      if (state.failure !== undefined) {
        duplex.destroy(impl.typedError())
        return
      }
      if (state.remoteFin) {
        duplex.push(null)
        return
      }
      state.readWaker = pump
      return
    }
  }
  return duplex
}
