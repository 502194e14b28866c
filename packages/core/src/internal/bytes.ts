/**
 * Byte helpers shared across modules.
 *
 * @internal
 */

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
