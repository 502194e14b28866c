/**
 * The encryption extension of channels (docs/spec/channels.md, Encryption):
 * the per-channel key derived with HKDF-SHA-256 from the key a key id names
 * and both sides' nonces, and AES-GCM sealing and opening with the spec's IV
 * (direction ‖ 0 ‖ 0 ‖ 0 ‖ u64 counter) and AAD (channel id ‖ direction).
 *
 * Only WebCrypto (`globalThis.crypto.subtle`) is used, so the same code runs
 * in Node and in browsers. WebCrypto answers with promises; what must stay
 * in order is decided synchronously, before the first `await`:
 *
 * - sealing: the engine calls `seal` when a message takes its credit, in
 *   the order messages go on the wire, so the counter and the channel id of
 *   the AAD are those of the message's place on the wire; the sealed bytes
 *   are written into a buffer the engine already queued;
 * - opening: `openBatch` reserves the counters of a batch when the consumer
 *   takes it, and the channel id each message travelled on is recorded when
 *   it arrives (`arrived`), so a MIGRATE in between changes nothing.
 *
 * A cipher never throws and its promises never reject: failures come back
 * as values.
 *
 * @internal
 */
import * as F from "./channelFrames.ts"

/** How much one channel key may seal in one direction (spec: Encryption, Limits). */
export interface SealLimits {
  readonly messages: number
  readonly bytes: number
}

export const DEFAULT_SEAL_LIMITS: SealLimits = { messages: F.MAX_SEALED_MESSAGES, bytes: F.MAX_SEALED_BYTES }

/** The suites by their public names. */
export type SuiteName = "AES-128-GCM" | "AES-256-GCM"

export const suiteByName = (name: SuiteName): number =>
  name === "AES-128-GCM" ? F.SUITE_AES_128_GCM : F.SUITE_AES_256_GCM

export const suiteName = (suite: number): SuiteName =>
  suite === F.SUITE_AES_128_GCM ? "AES-128-GCM" : "AES-256-GCM"

const subtle = (): SubtleCrypto => globalThis.crypto.subtle

/** 16 random bytes: one side's contribution to the channel key. */
export const randomNonce = (): Uint8Array<ArrayBuffer> => globalThis.crypto.getRandomValues(new Uint8Array(F.NONCE_SIZE))

/** A copy of `bytes` that owns its buffer (WebCrypto wants an `ArrayBuffer`-backed view). */
const own = (bytes: Uint8Array): Uint8Array<ArrayBuffer> => {
  const copy = new Uint8Array(bytes.length)
  copy.set(bytes)
  return copy
}

/**
 * The channel key: HKDF-SHA-256 over the key named by the key id, salt =
 * creator nonce ‖ acceptor nonce, info = `plexus-channels-v1` ‖ suite, 16 or
 * 32 bytes for AES-128-GCM or AES-256-GCM. Not extractable.
 */
export const deriveChannelKey = async (
  material: Uint8Array,
  suite: number,
  creatorNonce: Uint8Array,
  acceptorNonce: Uint8Array
): Promise<CryptoKey> => {
  const length = F.suiteKeyLength(suite)
  if (length === undefined) throw new Error(`unknown suite ${suite}`)
  const base = await subtle().importKey("raw", own(material), "HKDF", false, ["deriveKey"])
  return subtle().deriveKey(
    { name: "HKDF", hash: "SHA-256", salt: F.hkdfSalt(creatorNonce, acceptorNonce), info: F.hkdfInfo(suite) },
    base,
    { name: "AES-GCM", length: 8 * length },
    false,
    ["encrypt", "decrypt"]
  )
}

/** What `openBatch` answers: the messages opened in order, and the counter of the first that failed. */
export interface Opened {
  readonly opened: Array<Uint8Array>
  /** The counter of the first message that did not open; the rest of the batch is dropped. */
  readonly failedCounter: number | undefined
}

const TAG_BITS = 8 * F.TAG_SIZE

/** The encryption state of one channel, both directions. */
export class ChannelCipher {
  readonly suite: number
  readonly keyId: number
  readonly creatorNonce: Uint8Array<ArrayBuffer>
  /** Set on the acceptor at once, on the creator by the CREATE_ACK. */
  acceptorNonce: Uint8Array<ArrayBuffer> | undefined
  /** The channel key once derived; nothing is sealed or opened before. */
  key: CryptoKey | undefined = undefined
  private ready: Promise<CryptoKey | undefined> | undefined = undefined
  private material: Uint8Array | undefined
  readonly limits: SealLimits
  private readonly sendDirection: number
  private readonly recvDirection: number
  // Sending: counted when a message is admitted (limits), numbered when it is sealed.
  admittedMessages = 0
  admittedBytes = 0
  private sendCounter = 0
  // Receiving: arrivals numbered as they come, counters reserved as they are taken.
  private arrivals = 0
  private recvCounter = 0
  /** Where the inbound id changed: [first counter, channel id] pairs, oldest first. */
  private readonly inboundIds: Array<number> = []

  constructor(options: {
    readonly suite: number
    readonly keyId: number
    readonly material: Uint8Array
    readonly side: F.Side
    readonly creatorNonce: Uint8Array
    readonly acceptorNonce: Uint8Array | undefined
    readonly limits: SealLimits
  }) {
    this.suite = options.suite
    this.keyId = options.keyId
    this.material = own(options.material)
    this.creatorNonce = own(options.creatorNonce)
    this.acceptorNonce = options.acceptorNonce === undefined ? undefined : own(options.acceptorNonce)
    this.limits = options.limits
    this.sendDirection = F.directionOf(options.side)
    this.recvDirection = F.directionOf(options.side === "client" ? "server" : "client")
  }

  /**
   * Derives the channel key once both nonces are known. Answers undefined
   * when it succeeded, the cause otherwise; the key material is dropped
   * either way.
   */
  derive(): Promise<unknown> {
    const material = this.material
    const acceptorNonce = this.acceptorNonce
    this.material = undefined
    if (this.ready !== undefined) return this.ready.then(() => undefined)
    if (material === undefined || acceptorNonce === undefined) {
      this.ready = Promise.resolve(undefined)
      return Promise.resolve(new Error("no key material or acceptor nonce"))
    }
    let failure: unknown = undefined
    const derived = deriveChannelKey(material, this.suite, this.creatorNonce, acceptorNonce).then(
      (key): CryptoKey | undefined => {
        this.key = key
        return key
      },
      (cause: unknown) => {
        failure = cause
        return undefined
      }
    )
    this.ready = derived
    return derived.then(() => failure)
  }

  /**
   * Admits messages for sealing: false (nothing admitted) when they would
   * take the key past its limits.
   */
  admit(messages: ReadonlyArray<Uint8Array>): boolean {
    let bytes = 0
    for (let i = 0; i < messages.length; i++) bytes += messages[i].length
    if (
      this.admittedMessages + messages.length > this.limits.messages ||
      this.admittedBytes + bytes > this.limits.bytes
    ) return false
    this.admittedMessages += messages.length
    this.admittedBytes += bytes
    return true
  }

  /**
   * Seals the next message of this side on channel `channelId` (the id it
   * travels on) into `target` after its 2-byte header. `done` gets undefined,
   * or the cause when WebCrypto failed. The key must be derived.
   */
  seal(channelId: number, plaintext: Uint8Array, target: Uint8Array, done: (failure: unknown) => void): void {
    const counter = this.sendCounter++
    const key = this.key
    if (key === undefined) {
      done(new Error("sealing before the channel key is derived"))
      return
    }
    subtle().encrypt(
      {
        name: "AES-GCM",
        iv: F.makeIv(this.sendDirection, counter),
        additionalData: F.makeAad(channelId, this.sendDirection),
        tagLength: TAG_BITS
      },
      key,
      plaintext as Uint8Array<ArrayBuffer>
    ).then(
      (sealed) => {
        target.set(new Uint8Array(sealed), F.HEADER_SIZE)
        done(undefined)
      },
      (cause: unknown) => done(cause)
    )
  }

  /** A sealed message arrived on channel `channelId`: remembers the id for its AAD. */
  arrived(channelId: number): void {
    const ids = this.inboundIds
    if (ids.length === 0 || ids[ids.length - 1] !== channelId) ids.push(this.arrivals, channelId)
    this.arrivals++
  }

  /** The id message `counter` arrived on; forgets ids no later message can need. */
  private inboundIdOf(counter: number): number {
    const ids = this.inboundIds
    while (ids.length > 2 && ids[2] <= counter) ids.splice(0, 2)
    return ids[1]
  }

  /**
   * Opens the messages a consumer took, in order. Their counters are
   * reserved now, synchronously, so two consumers that take batches one
   * after the other open them under the right counters whatever order the
   * promises settle in.
   */
  openBatch(messages: ReadonlyArray<Uint8Array>): Promise<Opened> {
    const first = this.recvCounter
    this.recvCounter += messages.length
    const n = messages.length
    const jobs: Array<Promise<Uint8Array | undefined>> = new Array(n)
    for (let i = 0; i < n; i++) {
      const counter = first + i
      const channelId = this.inboundIdOf(counter)
      const sealed = messages[i]
      jobs[i] = sealed.length < F.TAG_SIZE
        ? Promise.resolve(undefined)
        : this.openOne(counter, channelId, sealed)
    }
    return Promise.all(jobs).then((results) => {
      const opened: Array<Uint8Array> = []
      for (let i = 0; i < n; i++) {
        const plain = results[i]
        if (plain === undefined) return { opened, failedCounter: first + i }
        opened.push(plain)
      }
      return { opened, failedCounter: undefined }
    })
  }

  private async openOne(counter: number, channelId: number, sealed: Uint8Array): Promise<Uint8Array | undefined> {
    const key = this.key ?? await this.ready
    if (key === undefined) return undefined
    try {
      const plain = await subtle().decrypt(
        {
          name: "AES-GCM",
          iv: F.makeIv(this.recvDirection, counter),
          additionalData: F.makeAad(channelId, this.recvDirection),
          tagLength: TAG_BITS
        },
        key,
        sealed as Uint8Array<ArrayBuffer>
      )
      return new Uint8Array(plain)
    } catch {
      return undefined
    }
  }
}
