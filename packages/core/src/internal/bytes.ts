/**
 * Byte helpers shared across modules.
 *
 * @internal
 */

/** A big-endian u32 at `p`. */
export const readU32 = (b: Uint8Array, p: number): number =>
  ((b[p] << 24) | (b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3]) >>> 0

/** Writes `v` as a big-endian u32 at `p`. */
export const writeU32 = (b: Uint8Array, p: number, v: number): void => {
  b[p] = v >>> 24
  b[p + 1] = (v >>> 16) & 0xff
  b[p + 2] = (v >>> 8) & 0xff
  b[p + 3] = v & 0xff
}

/** Joins chunks into one buffer; a single chunk is returned as it is, uncopied. */
export const concatBytes = (chunks: ReadonlyArray<Uint8Array>): Uint8Array => {
  if (chunks.length === 1) return chunks[0]
  let size = 0
  for (let i = 0; i < chunks.length; i++) size += chunks[i].length
  const out = new Uint8Array(size)
  let at = 0
  for (let i = 0; i < chunks.length; i++) {
    out.set(chunks[i], at)
    at += chunks[i].length
  }
  return out
}

// Small, like Node's own Buffer pool, so that a frame kept alive by a
// receiver (memory transports hand the same bytes over) pins little.
const SLAB_SIZE = 16 * 1024
/** Requests above this get a buffer of their own. */
const SLAB_MAX = 2 * 1024
let slab = new Uint8Array(SLAB_SIZE)
let slabUsed = 0

/**
 * A fresh buffer for a small frame, cut from a shared slab: one allocation
 * serves many frames, which keeps per-message framing off the allocator
 * and the garbage collector (the way Node pools small Buffers). Regions are
 * never handed out twice; a slab is freed when its last frame is.
 */
export const allocFrame = (size: number): Uint8Array => {
  if (size > SLAB_MAX) return new Uint8Array(size)
  if (slabUsed + size > SLAB_SIZE) {
    slab = new Uint8Array(SLAB_SIZE)
    slabUsed = 0
  }
  const out = slab.subarray(slabUsed, slabUsed + size)
  // Keep regions 8-byte aligned, as Node's pool does.
  slabUsed = (slabUsed + size + 7) & ~7
  return out
}
