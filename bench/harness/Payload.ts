/**
 * Payloads and receipts for message benchmarks: a pool of pseudo-random
 * messages (the same bytes in every process, from a fixed seed) and an
 * order-sensitive hash the receiver folds each message into, so a row
 * checks that what arrived is what was sent, in order, without copying it.
 */
import { Buffer } from "node:buffer"

/** `count` messages of `size` bytes, the same on every call. */
export const makePool = (count: number, size: number): Array<Buffer> => {
  let seed = 0x9e3779b9
  return Array.from({ length: count }, () => {
    const b = Buffer.allocUnsafe(size)
    for (let i = 0; i < size; i++) {
      seed = (Math.imul(seed, 1103515245) + 12345) | 0
      b[i] = seed >>> 24
    }
    return b
  })
}

/** Folds one message (at least 4 bytes) into `h`: its first and last 32-bit words. */
export const messageHash = (h: number, m: Uint8Array): number => {
  const n = m.length
  const first = m[0]! | (m[1]! << 8) | (m[2]! << 16) | (m[3]! << 24)
  const last = m[n - 4]! | (m[n - 3]! << 8) | (m[n - 2]! << 16) | (m[n - 1]! << 24)
  return (Math.imul(Math.imul(h, 31) + first, 31) + last) | 0
}
