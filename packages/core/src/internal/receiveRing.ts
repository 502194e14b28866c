/**
 * A stream's receive buffer while it is read with `readInto`: one block of
 * memory, written and read around in a circle, that grows (doubling) only
 * when flow control let the peer send more than it holds. Bytes go in with
 * one copy from the session's read memory and come out with one copy into
 * the caller's memory, so a stream read this way allocates nothing per
 * frame once its window stopped growing.
 *
 * @internal
 */
export class ReceiveRing {
  private memory: Uint8Array
  private start = 0
  size = 0

  constructor(capacity: number) {
    this.memory = new Uint8Array(Math.max(1024, capacity))
  }

  get capacity(): number {
    return this.memory.length
  }

  /** Appends a copy of `piece`. */
  put(piece: Uint8Array): void {
    const n = piece.length
    if (this.size + n > this.memory.length) this.grow(this.size + n)
    const memory = this.memory
    const cap = memory.length
    let end = this.start + this.size
    if (end >= cap) end -= cap
    const first = Math.min(n, cap - end)
    memory.set(first === n ? piece : piece.subarray(0, first), end)
    if (first < n) memory.set(piece.subarray(first), 0)
    this.size += n
  }

  /** Moves up to `target.length` bytes into `target`; answers how many. */
  take(target: Uint8Array): number {
    const n = Math.min(target.length, this.size)
    if (n === 0) return 0
    const memory = this.memory
    const cap = memory.length
    const first = Math.min(n, cap - this.start)
    target.set(memory.subarray(this.start, this.start + first), 0)
    if (first < n) target.set(memory.subarray(0, n - first), first)
    this.start += n
    if (this.start >= cap) this.start -= cap
    this.size -= n
    if (this.size === 0) this.start = 0
    return n
  }

  /** Everything held, in fresh memory (for a `Reader`, which keeps its chunks). */
  takeAll(): Uint8Array {
    const out = new Uint8Array(this.size)
    this.take(out)
    return out
  }

  clear(): void {
    this.start = 0
    this.size = 0
  }

  private grow(needed: number): void {
    let cap = this.memory.length * 2
    while (cap < needed) cap *= 2
    const next = new Uint8Array(cap)
    const held = this.size
    this.take(next)
    this.memory = next
    this.start = 0
    this.size = held
  }
}
