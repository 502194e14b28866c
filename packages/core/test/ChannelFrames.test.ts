import { assert, describe, it } from "@effect/vitest"
import * as ChannelError from "../src/ChannelError.ts"
import * as F from "../src/internal/channelFrames.ts"

const { Code } = ChannelError

// Deterministic PRNG so a failing fuzz case reproduces from its seed.
const prng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const hex = (text: string): Uint8Array => Uint8Array.from(text.trim().split(/\s+/).map((h) => parseInt(h, 16)))
const toHex = (bytes: Uint8Array): string => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ")
const ascii = (text: string): Uint8Array<ArrayBuffer> => new TextEncoder().encode(text)
const range = (from: number, count: number): Uint8Array<ArrayBuffer> =>
  Uint8Array.from({ length: count }, (_, i) => from + i)

const isError = (u: unknown): u is ChannelError.ChannelError => u instanceof ChannelError.ChannelError

const encode = (message: F.OutgoingControl): Uint8Array => {
  const out = F.encodeControl(message)
  if (isError(out)) throw out
  return out
}

/** Decodes a whole transport message that must be a control message. */
const decode = (message: Uint8Array, options?: F.DecodeOptions): F.ControlMessage | ChannelError.ChannelError => {
  const data = F.decodeMessage(message)
  if (isError(data)) return data
  assert.strictEqual(data.channelId, F.CONTROL_CHANNEL)
  return F.decodeControl(data.payload, options)
}

/** Decodes a control payload (what follows the channel id) written in hex. */
const decodePayload = (payload: string, options?: F.DecodeOptions) => F.decodeControl(hex(payload), options)

const reasonOf = (result: unknown): ChannelError.ChannelErrorReason => {
  if (!isError(result)) assert.fail(`expected a ChannelError, got ${JSON.stringify(result)}`)
  return result.reason
}

const assertViolation = (result: unknown, code: number = Code.PROTOCOL_ERROR) => {
  const reason = reasonOf(result)
  assert.strictEqual(reason._tag, "ProtocolViolation", reason.message)
  if (reason._tag === "ProtocolViolation") assert.strictEqual(reason.code, code, reason.message)
}

const assertRejected = (result: unknown, code: number, requestId: number) => {
  const reason = reasonOf(result)
  assert.strictEqual(reason._tag, "RequestRejected", reason.message)
  if (reason._tag === "RequestRejected") {
    assert.strictEqual(reason.code, code)
    assert.strictEqual(reason.requestId, requestId)
  }
}

const assertInvalid = (result: unknown) => assert.strictEqual(reasonOf(result)._tag, "InvalidMessage")

const fanout: F.FanoutParams = {
  role: F.ROLE_SUBSCRIBE,
  flowId: ascii("prices"),
  scope: ascii("acme"),
  filter: { _tag: "Prefixes", prefixes: [ascii("EUR"), ascii("GBP")] }
}

/** One sample of every control message this version sends. */
const samples: ReadonlyArray<F.OutgoingControl> = [
  {
    _tag: "Create",
    requestId: 1,
    channelId: 3,
    extraMessages: 16,
    extraBytes: 65536,
    label: "chat ✓",
    extensions: [
      { _tag: "Fanout", ...fanout },
      { _tag: "Encryption", suite: F.SUITE_AES_256_GCM, keyId: 0xdeadbeef, nonce: range(0, 16) }
    ]
  },
  {
    _tag: "Create",
    requestId: 0xffffffff,
    channelId: 0xfffd,
    extraMessages: 0,
    extraBytes: 0,
    label: "",
    extensions: []
  },
  {
    _tag: "CreateAck",
    requestId: 1,
    channelId: 3,
    extraMessages: 1,
    extraBytes: 0xffffffff,
    extensions: [{ _tag: "Encryption", nonce: range(0xf0, 16) }, { _tag: "Fanout" }]
  },
  { _tag: "Destroy", requestId: 2, channelId: 0, abort: false, code: 1000, reason: "bye" },
  { _tag: "Destroy", requestId: 3, channelId: 5, abort: true, code: Code.DECRYPT_FAILED, reason: "" },
  { _tag: "DestroyAck", requestId: 3, channelId: 5 },
  { _tag: "Migrate", requestId: 4, oldId: 3, newId: 7 },
  { _tag: "MigrateAck", requestId: 4, oldId: 3, newId: 7 },
  { _tag: "Merge", requestId: 5, target: 0, members: [2, 3, 0xfffe] },
  { _tag: "MergeAck", requestId: 5, target: 0 },
  { _tag: "Unmerge", requestId: 6, members: [3] },
  { _tag: "UnmergeAck", requestId: 6 },
  { _tag: "Link", requestId: 7, channelId: 0, fanout },
  {
    _tag: "Link",
    requestId: 8,
    channelId: 9,
    fanout: { ...fanout, role: F.ROLE_PUBLISH, filter: { _tag: "All" } }
  },
  { _tag: "LinkAck", requestId: 7, channelId: 0 },
  { _tag: "Unlink", requestId: 9, channelId: 0 },
  { _tag: "UnlinkAck", requestId: 9, channelId: 0 },
  { _tag: "Filter", requestId: 10, channelId: 4, filter: { _tag: "Application", kind: 0x80, data: ascii("x > 1") } },
  { _tag: "FilterAck", requestId: 10, channelId: 4 },
  { _tag: "Ping", requestId: 11 },
  { _tag: "Pong", requestId: 11 },
  {
    _tag: "Window",
    grants: [{ channelId: 0, messages: 1, bytes: 2 }, { channelId: 0xfffe, messages: 0xffffffff, bytes: 0 }]
  },
  { _tag: "GoAway", code: Code.NO_ERROR, reason: "restarting" },
  { _tag: "Error", requestId: 1, code: Code.REFUSED, detail: "busy" }
]

describe("ChannelFrames: data messages", () => {
  it("labels a payload with its big-endian channel id", () => {
    assert.strictEqual(toHex(F.encodeData(3, ascii("hi"))), "00 03 68 69")
    assert.strictEqual(toHex(F.encodeData(0xfffe, new Uint8Array(0))), "ff fe")
  })

  it("sends a message as a shared per-channel header and the payload, neither copied", () => {
    const header = F.makeHeader(0x1234)
    const payload = ascii("payload")
    const [h, p] = F.encodeDataChunks(header, payload)
    assert.strictEqual(h, header)
    assert.strictEqual(p, payload)
    assert.strictEqual(toHex(h), "12 34")
    // The header is never rewritten, so a second message can share it.
    const [h2] = F.encodeDataChunks(header, ascii("next"))
    assert.strictEqual(h2, header)
  })

  it("hands the received payload on as a view of the message", () => {
    const message = hex("00 07 01 02 03")
    const decoded = F.decodeMessage(message)
    if (isError(decoded)) return assert.fail(decoded.message)
    assert.strictEqual(decoded.channelId, 7)
    assert.strictEqual(decoded.payload.buffer, message.buffer)
    assert.strictEqual(decoded.payload.byteOffset, 2)
    assert.strictEqual(toHex(decoded.payload), "01 02 03")
    assert.strictEqual(F.channelIdOf(message), 7)
  })

  it("accepts an empty payload as a message", () => {
    const decoded = F.decodeMessage(hex("00 00"))
    if (isError(decoded)) return assert.fail(decoded.message)
    assert.strictEqual(decoded.channelId, F.DEFAULT_CHANNEL)
    assert.strictEqual(decoded.payload.length, 0)
  })

  it("rejects runt messages shorter than the channel id", () => {
    assertViolation(F.decodeMessage(new Uint8Array(0)))
    assertViolation(F.decodeMessage(hex("00")))
    assert.strictEqual(F.channelIdOf(hex("ff")), -1)
  })

  it("tells which side owns an id by its parity", () => {
    assert.strictEqual(F.ownerOf(1), "client")
    assert.strictEqual(F.ownerOf(0xfffd), "client")
    assert.strictEqual(F.ownerOf(2), "server")
    assert.strictEqual(F.ownerOf(0), undefined)
    assert.strictEqual(F.ownerOf(0xffff), undefined)
    assert.isTrue(F.isDataChannelId(0))
    assert.isFalse(F.isDataChannelId(0xffff))
    assert.isFalse(F.isAllocatableId(0))
  })
})

describe("ChannelFrames: control round trips", () => {
  for (const sample of samples) {
    it(`decodes an encoded ${sample._tag} to the same message`, () => {
      const bytes = encode(sample)
      assert.strictEqual(F.channelIdOf(bytes), F.CONTROL_CHANNEL)
      assert.deepStrictEqual(decode(bytes), sample)
    })
  }

  it("round-trips a WINDOW that fills the largest control message", () => {
    const grants = Array.from({ length: F.MAX_WINDOW_GRANTS }, (_, i) => ({ channelId: i, messages: i, bytes: 2 * i }))
    const bytes = encode({ _tag: "Window", grants })
    assert.strictEqual(bytes.length, F.HEADER_SIZE + F.MAX_CONTROL_SIZE)
    assert.deepStrictEqual(decode(bytes), { _tag: "Window", grants })
  })

  it("checks parity against the sender when it is known", () => {
    const create = encode(samples[0])
    assert.strictEqual((decode(create, { sender: "client" }) as F.Create).channelId, 3)
    assertViolation(decode(create, { sender: "server" }), Code.INVALID_ID)
    const ack = encode(samples[2])
    assert.strictEqual((decode(ack, { sender: "server" }) as F.CreateAck).channelId, 3)
    assertViolation(decode(ack, { sender: "client" }), Code.INVALID_ID)
    const migrate = encode({ _tag: "Migrate", requestId: 1, oldId: 2, newId: 4 })
    assert.strictEqual(decode(migrate, { sender: "server" })._tag, "Migrate")
    assertViolation(decode(migrate, { sender: "client" }), Code.INVALID_ID)
    const migrateAck = encode({ _tag: "MigrateAck", requestId: 1, oldId: 2, newId: 4 })
    assert.strictEqual(decode(migrateAck, { sender: "client" })._tag, "MigrateAck")
    assertViolation(decode(migrateAck, { sender: "server" }), Code.INVALID_ID)
  })

  it("hands byte fields on as views of the message, never copies", () => {
    const bytes = encode(samples[0])
    const create = decode(bytes) as F.Create
    for (const extension of create.extensions) {
      if (extension._tag === "Fanout") {
        assert.strictEqual(extension.flowId.buffer, bytes.buffer)
        assert.strictEqual(extension.scope.buffer, bytes.buffer)
      } else {
        assert.strictEqual(extension.nonce.buffer, bytes.buffer)
      }
    }
  })
})

describe("ChannelFrames: the spec's examples, byte for byte", () => {
  it("CREATE with a label", () => {
    const message: F.Create = {
      _tag: "Create",
      requestId: 1,
      channelId: 3,
      extraMessages: 0,
      extraBytes: 0,
      label: "chat",
      extensions: []
    }
    const wire = "ff ff 01 00 00 00 00 01 00 03 00 00 00 00 00 00 00 00 04 63 68 61 74"
    assert.strictEqual(toHex(encode(message)), wire)
    assert.deepStrictEqual(decode(hex(wire)), message)
  })

  it("CREATE with encryption, and its CREATE_ACK", () => {
    const create: F.Create = {
      _tag: "Create",
      requestId: 2,
      channelId: 4,
      extraMessages: 16,
      extraBytes: 65536,
      label: "",
      extensions: [{ _tag: "Encryption", suite: F.SUITE_AES_256_GCM, keyId: 7, nonce: range(0, 16) }]
    }
    assert.strictEqual(
      toHex(encode(create)),
      "ff ff 01 00 00 00 00 02 00 04 00 00 00 10 00 01 00 00 00 " +
        "02 00 15 02 00 00 00 07 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"
    )
    const ack: F.CreateAck = {
      _tag: "CreateAck",
      requestId: 2,
      channelId: 4,
      extraMessages: 0,
      extraBytes: 0,
      extensions: [{ _tag: "Encryption", nonce: range(0xf0, 16) }]
    }
    assert.strictEqual(
      toHex(encode(ack)),
      "ff ff 81 00 00 00 00 02 00 04 00 00 00 00 00 00 00 00 " +
        "02 00 10 f0 f1 f2 f3 f4 f5 f6 f7 f8 f9 fa fb fc fd fe ff"
    )
  })

  it("DESTROY with ABORT", () => {
    const wire = "ff ff 02 01 00 00 00 09 00 05 00 16"
    const destroy: F.Destroy = {
      _tag: "Destroy",
      requestId: 9,
      channelId: 5,
      abort: true,
      code: Code.DECRYPT_FAILED,
      reason: ""
    }
    assert.strictEqual(toHex(encode(destroy)), wire)
    assert.isTrue((decode(hex(wire)) as F.Destroy).abort)
  })

  it("MIGRATE", () => {
    assert.strictEqual(
      toHex(encode({ _tag: "Migrate", requestId: 5, oldId: 3, newId: 7 })),
      "ff ff 03 00 00 00 00 05 00 03 00 07"
    )
  })

  it("WINDOW", () => {
    assert.strictEqual(
      toHex(encode({ _tag: "Window", grants: [{ channelId: 3, messages: 16, bytes: 65536 }] })),
      "ff ff 40 00 00 00 00 00 00 03 00 00 00 10 00 01 00 00"
    )
  })

  it("ERROR", () => {
    assert.strictEqual(
      toHex(encode({ _tag: "Error", requestId: 1, code: Code.REFUSED, detail: "busy" })),
      "ff ff 80 00 00 00 00 01 00 07 62 75 73 79"
    )
  })

  it("LINK with a prefix filter", () => {
    const link: F.Link = {
      _tag: "Link",
      requestId: 3,
      channelId: 0,
      fanout: { ...fanout, filter: { _tag: "Prefixes", prefixes: [ascii("EUR")] } }
    }
    const wire = "ff ff 06 00 00 00 00 03 00 00 01 06 70 72 69 63 65 73 04 61 63 6d 65 01 00 04 03 45 55 52"
    assert.strictEqual(toHex(encode(link)), wire)
    assert.deepStrictEqual(decode(hex(wire)), link)
  })

  it("the IV and AAD of the server's message 5 on channel 3", () => {
    assert.strictEqual(toHex(F.makeIv(F.DIRECTION_SERVER, 5)), "01 00 00 00 00 00 00 00 00 00 00 05")
    assert.strictEqual(toHex(F.makeAad(3, F.DIRECTION_SERVER)), "00 03 01")
    // The counter is a full u64 field, not 32 bits.
    assert.strictEqual(toHex(F.makeIv(F.DIRECTION_CLIENT, 2 ** 40 + 5)), "00 00 00 00 00 00 01 00 00 00 00 05")
  })
})

describe("ChannelFrames: hostile control messages", () => {
  it("rejects a control message shorter than its header", () => {
    for (let n = 0; n < F.CONTROL_HEADER_SIZE; n++) assertViolation(F.decodeControl(new Uint8Array(n)))
  })

  it("rejects an oversized control message before reading it", () => {
    const big = new Uint8Array(F.MAX_CONTROL_SIZE + 1)
    big[0] = F.TYPE_WINDOW
    const reason = reasonOf(F.decodeControl(big))
    assert.strictEqual(reason._tag, "MessageTooLarge")
    if (reason._tag === "MessageTooLarge") {
      assert.strictEqual(reason.size, F.MAX_CONTROL_SIZE + 1)
      assert.strictEqual(reason.max, F.MAX_CONTROL_SIZE)
    }
  })

  it("answers an unknown request type with UNKNOWN_TYPE for its request id", () => {
    assertRejected(decodePayload("0a 00 00 00 00 2a 01 02"), Code.UNKNOWN_TYPE, 42)
    assertRejected(decodePayload("3f 00 00 00 00 01"), Code.UNKNOWN_TYPE, 1)
  })

  it("ignores an unknown notification", () => {
    assert.deepStrictEqual(decodePayload("42 00 00 00 00 00 01 02 03"), {
      _tag: "UnknownNotification",
      controlType: 0x42
    })
  })

  it("rejects reserved types and replies to requests never sent", () => {
    assertViolation(decodePayload("00 00 00 00 00 01"))
    assertViolation(decodePayload("8a 00 00 00 00 01"))
    assertViolation(decodePayload("c0 00 00 00 00 00"))
    assertViolation(decodePayload("ff 00 00 00 00 00"))
  })

  it("rejects request id 0 on requests and replies, and a request id on notifications", () => {
    assertViolation(decodePayload("09 00 00 00 00 00"))
    assertViolation(decodePayload("0a 00 00 00 00 00"))
    assertViolation(decodePayload("89 00 00 00 00 00"))
    assertViolation(decodePayload("80 00 00 00 00 00 00 07"))
    assertViolation(decodePayload("40 00 00 00 00 01 00 03 00 00 00 10 00 01 00 00"))
    assertViolation(decodePayload("42 00 00 00 00 01"))
  })

  it("ignores unknown flag bits", () => {
    assert.deepStrictEqual(decodePayload("09 fe 00 00 00 07"), { _tag: "Ping", requestId: 7 })
    assert.isFalse((decodePayload("02 fe 00 00 00 01 00 05 00 00") as F.Destroy).abort)
  })

  it("rejects truncated fixed fields and trailing bytes", () => {
    assertViolation(decodePayload("03 00 00 00 00 05 00 03 00")) // MIGRATE, 3 of 4 bytes
    assertViolation(decodePayload("03 00 00 00 00 05 00 03 00 07 00")) // MIGRATE, one byte more
    assertViolation(decodePayload("82 00 00 00 00 05 00")) // DESTROY_ACK
    assertViolation(decodePayload("01 00 00 00 00 01 00 03 00 00 00 00 00 00 00")) // CREATE without label length
    assertViolation(decodePayload("89 00 00 00 00 01 00")) // PONG with a body
    assertViolation(decodePayload("40 00 00 00 00 00 00 03 00 00 00 10 00 01 00")) // WINDOW, 9-byte grant
    assertViolation(decodePayload("40 00 00 00 00 00")) // WINDOW with no grant
    assertViolation(decodePayload("04 00 00 00 00 01 00 03")) // MERGE with no member
    assertViolation(decodePayload("04 00 00 00 00 01 00 03 00 05 00")) // MERGE, half a member
  })

  it("rejects lying lengths without reading past the message", () => {
    // CREATE whose label length says 255 with 4 bytes left.
    assertViolation(decodePayload("01 00 00 00 00 01 00 03 00 00 00 00 00 00 00 00 ff 63 68 61 74"))
    // An extension TLV claiming 0xFFFF bytes.
    assertViolation(decodePayload("01 00 00 00 00 01 00 03 00 00 00 00 00 00 00 00 00 02 ff ff 01"))
    // A truncated TLV header.
    assertViolation(decodePayload("01 00 00 00 00 01 00 03 00 00 00 00 00 00 00 00 00 02 00"))
    // LINK whose flow id length runs past the end.
    assertViolation(decodePayload("06 00 00 00 00 03 00 00 01 ff 70 72"))
    // LINK whose scope length runs past the end.
    assertViolation(decodePayload("06 00 00 00 00 03 00 00 01 01 70 09 61 00 00 00"))
    // LINK whose filter length is 0xFFFF.
    assertViolation(decodePayload("06 00 00 00 00 03 00 00 01 01 70 01 61 01 ff ff 03 45 55 52"))
    // FILTER with a prefix length running past the filter.
    assertViolation(decodePayload("08 00 00 00 00 03 00 00 01 00 04 09 45 55 52"))
    // FILTER with bytes after the filter.
    assertViolation(decodePayload("08 00 00 00 00 03 00 00 00 00 00 01"))
    // An encryption TLV of the wrong size.
    assertViolation(decodePayload("01 00 00 00 00 01 00 03 00 00 00 00 00 00 00 00 00 02 00 01 01"))
  })

  it("rejects empty flow ids, scopes and prefixes, and an ALL filter with data", () => {
    assertViolation(decodePayload("06 00 00 00 00 03 00 00 01 00 01 61 00 00 00"))
    assertViolation(decodePayload("06 00 00 00 00 03 00 00 01 01 70 00 00 00 00"))
    assertViolation(decodePayload("08 00 00 00 00 03 00 00 01 00 01 00"))
    assertViolation(decodePayload("08 00 00 00 00 03 00 00 01 00 00"))
    assertViolation(decodePayload("08 00 00 00 00 03 00 00 00 00 01 61"))
  })

  it("rejects the control channel, channel 0 and the wrong parity in CREATE", () => {
    assertViolation(decodePayload("01 00 00 00 00 01 ff ff 00 00 00 00 00 00 00 00 00"), Code.INVALID_ID)
    assertViolation(decodePayload("01 00 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00"), Code.INVALID_ID)
    assertViolation(
      decodePayload("01 00 00 00 00 01 00 04 00 00 00 00 00 00 00 00 00", { sender: "client" }),
      Code.INVALID_ID
    )
    assertViolation(
      decodePayload("01 00 00 00 00 01 00 03 00 00 00 00 00 00 00 00 00", { sender: "server" }),
      Code.INVALID_ID
    )
  })

  it("rejects bad MIGRATE ids: reserved, to itself, across parities", () => {
    assertViolation(decodePayload("03 00 00 00 00 01 00 03 ff ff"), Code.INVALID_ID)
    assertViolation(decodePayload("03 00 00 00 00 01 00 00 00 02"), Code.INVALID_ID)
    assertViolation(decodePayload("03 00 00 00 00 01 00 03 00 03"), Code.INVALID_ID)
    assertViolation(decodePayload("03 00 00 00 00 01 00 03 00 04"), Code.INVALID_ID)
  })

  it("rejects the control channel wherever a channel is named", () => {
    assertViolation(decodePayload("02 00 00 00 00 01 ff ff 00 00"), Code.INVALID_ID)
    assertViolation(decodePayload("04 00 00 00 00 01 00 03 ff ff"), Code.INVALID_ID)
    assertViolation(decodePayload("05 00 00 00 00 01 ff ff"), Code.INVALID_ID)
    assertViolation(decodePayload("07 00 00 00 00 01 ff ff"), Code.INVALID_ID)
    assertViolation(decodePayload("40 00 00 00 00 00 ff ff 00 00 00 01 00 00 00 01"), Code.INVALID_ID)
  })

  it("rejects duplicate merge members and a target among them", () => {
    assertViolation(decodePayload("04 00 00 00 00 01 00 03 00 05 00 05"))
    assertViolation(decodePayload("04 00 00 00 00 01 00 03 00 05 00 03"))
    assertViolation(decodePayload("05 00 00 00 00 01 00 05 00 05"))
  })

  it("rejects invalid UTF-8 and over-long texts", () => {
    assertViolation(decodePayload("01 00 00 00 00 01 00 03 00 00 00 00 00 00 00 00 02 c3 28"))
    assertViolation(decodePayload("80 00 00 00 00 01 00 07 ff"))
    const longReason = Array.from({ length: 124 }, () => "61").join(" ")
    assertViolation(decodePayload(`02 00 00 00 00 01 00 05 00 00 ${longReason}`))
  })

  it("rejects a duplicate extension", () => {
    const enc = "02 00 15 01 00 00 00 07 " + toHex(range(0, 16))
    assertViolation(decodePayload(`01 00 00 00 00 01 00 03 00 00 00 00 00 00 00 00 00 ${enc} ${enc}`))
  })

  it("refuses a well-formed CREATE with an unknown extension as not negotiated", () => {
    assertRejected(
      decodePayload("01 00 00 00 00 09 00 03 00 00 00 00 00 00 00 00 00 07 00 02 aa bb"),
      Code.EXTENSION_NOT_NEGOTIATED,
      9
    )
  })

  it("refuses unknown suites, roles and reserved filter kinds as requests", () => {
    const nonce = toHex(range(0, 16))
    assertRejected(
      decodePayload(`01 00 00 00 00 04 00 03 00 00 00 00 00 00 00 00 00 02 00 15 09 00 00 00 07 ${nonce}`),
      Code.BAD_EXTENSION_PARAMS,
      4
    )
    assertRejected(decodePayload("06 00 00 00 00 05 00 00 07 01 70 01 61 00 00 00"), Code.BAD_EXTENSION_PARAMS, 5)
    assertRejected(decodePayload("08 00 00 00 00 06 00 00 02 00 00"), Code.BAD_FILTER, 6)
  })

  it("treats a malformed message as a violation even when it would also be refused", () => {
    // An unknown extension, then a truncated TLV: the connection must end.
    assertViolation(decodePayload("01 00 00 00 00 09 00 03 00 00 00 00 00 00 00 00 00 07 00 00 01 00"))
  })

  it("rejects a CREATE_ACK carrying an extension never asked for", () => {
    assertViolation(decodePayload("81 00 00 00 00 01 00 03 00 00 00 00 00 00 00 00 07 00 00"))
    assertViolation(decodePayload("81 00 00 00 00 01 00 03 00 00 00 00 00 00 00 00 01 00 01 00"))
  })
})

describe("ChannelFrames: encoding refuses what the wire cannot carry", () => {
  const create: F.Create = samples[1] as F.Create

  it("refuses a label above 255 bytes and a DESTROY reason above 123", () => {
    assertInvalid(F.encodeControl({ ...create, label: "x".repeat(256) }))
    const destroy: F.Destroy = { _tag: "Destroy", requestId: 1, channelId: 1, abort: false, code: 0, reason: "" }
    assert.notInstanceOf(F.encodeControl({ ...destroy, reason: "é".repeat(61) }), ChannelError.ChannelError)
    assertInvalid(F.encodeControl({ ...destroy, reason: "é".repeat(62) }))
  })

  it("cuts ERROR and GOAWAY texts at 256 bytes on a character boundary", () => {
    const bytes = encode({ _tag: "GoAway", code: 0, reason: "é".repeat(200) })
    assert.isAtMost(bytes.length, F.HEADER_SIZE + F.CONTROL_HEADER_SIZE + 2 + F.MAX_TEXT)
    const decoded = decode(bytes)
    if (isError(decoded)) return assert.fail(decoded.message)
    assert.strictEqual((decoded as F.GoAway).reason, "é".repeat(128))
  })

  it("refuses request id 0, ids out of range and reserved ids", () => {
    assertInvalid(F.encodeControl({ ...create, requestId: 0 }))
    assertInvalid(F.encodeControl({ ...create, requestId: 2 ** 32 }))
    assertInvalid(F.encodeControl({ ...create, channelId: 0 }))
    assertInvalid(F.encodeControl({ ...create, channelId: 0xffff }))
    assertInvalid(F.encodeControl({ ...create, channelId: 1.5 }))
    assertInvalid(F.encodeControl({ _tag: "DestroyAck", requestId: 1, channelId: 0x10000 }))
    assertInvalid(F.encodeControl({ _tag: "Migrate", requestId: 1, oldId: 3, newId: 4 }))
    assertInvalid(F.encodeControl({ _tag: "Migrate", requestId: 1, oldId: 3, newId: 3 }))
    assertInvalid(F.encodeControl({ _tag: "Window", grants: [{ channelId: 1, messages: -1, bytes: 0 }] }))
  })

  it("refuses bad member lists, grant counts, nonces, filters and repeated extensions", () => {
    assertInvalid(F.encodeControl({ _tag: "Merge", requestId: 1, target: 1, members: [] }))
    assertInvalid(F.encodeControl({ _tag: "Merge", requestId: 1, target: 1, members: [1] }))
    assertInvalid(F.encodeControl({ _tag: "Unmerge", requestId: 1, members: [3, 3] }))
    const members = Array.from({ length: F.MAX_MERGE_MEMBERS + 1 }, (_, i) => i + 1)
    assertInvalid(F.encodeControl({ _tag: "Merge", requestId: 1, target: 0, members }))
    assertInvalid(F.encodeControl({ _tag: "Window", grants: [] }))
    assertInvalid(
      F.encodeControl({
        _tag: "Window",
        grants: Array.from({ length: F.MAX_WINDOW_GRANTS + 1 }, () => ({ channelId: 1, messages: 1, bytes: 1 }))
      })
    )
    const encryption = { _tag: "Encryption" as const, suite: 1, keyId: 1, nonce: range(0, 16) }
    assertInvalid(F.encodeControl({ ...create, extensions: [{ ...encryption, nonce: range(0, 15) }] }))
    assertInvalid(F.encodeControl({ ...create, extensions: [encryption, encryption] }))
    const withFanout = (changes: Partial<F.FanoutParams>) =>
      F.encodeControl({ ...create, extensions: [{ _tag: "Fanout", ...fanout, ...changes }] })
    assertInvalid(withFanout({ flowId: new Uint8Array(0) }))
    assertInvalid(withFanout({ scope: new Uint8Array(256) }))
    const withFilter = (filter: F.ConsumerFilter) =>
      F.encodeControl({ _tag: "Filter", requestId: 1, channelId: 1, filter })
    assertInvalid(withFilter({ _tag: "Prefixes", prefixes: [] }))
    assertInvalid(withFilter({ _tag: "Prefixes", prefixes: [new Uint8Array(0)] }))
    assertInvalid(withFilter({ _tag: "Application", kind: 2, data: ascii("") }))
    assertInvalid(withFilter({ _tag: "Application", kind: 0x80, data: new Uint8Array(F.MAX_FILTER + 1) }))
  })
})

describe("ChannelFrames: fuzz", () => {
  const encoded = samples.map(encode)
  const tryDecode = (bytes: Uint8Array) => {
    const data = F.decodeMessage(bytes)
    if (isError(data) || data.channelId !== F.CONTROL_CHANNEL) return data
    return F.decodeControl(data.payload)
  }

  it("never throws on any truncation of a valid control message", () => {
    let errors = 0
    for (const bytes of encoded) {
      for (let n = 0; n < bytes.length; n++) {
        const result = tryDecode(bytes.subarray(0, n))
        if (isError(result)) errors++
      }
    }
    // Most prefixes are malformed; a few are valid shorter messages (a cut text, fewer grants).
    assert.isAbove(errors, encoded.reduce((n, b) => n + b.length, 0) / 2)
  })

  it("never throws on any split of a valid control message into two messages", () => {
    for (const bytes of encoded) {
      for (let k = 0; k <= bytes.length; k++) {
        tryDecode(bytes.slice(0, k))
        tryDecode(bytes.slice(k))
      }
    }
  })

  it("never throws on mutated messages, and what decodes re-encodes to the same bytes", () => {
    const rand = prng(0xc0ffee)
    let decoded = 0
    for (let round = 0; round < 20000; round++) {
      const source = encoded[Math.floor(rand() * encoded.length)]
      const bytes = source.slice()
      const flips = 1 + Math.floor(rand() * 3)
      for (let i = 0; i < flips; i++) {
        // Mostly the control part; now and then the channel id.
        const at = rand() < 0.05 ? Math.floor(rand() * 2) : 2 + Math.floor(rand() * (bytes.length - 2))
        bytes[at] = rand() < 0.5 ? Math.floor(rand() * 256) : bytes[at] ^ (1 << Math.floor(rand() * 8))
      }
      const result = tryDecode(bytes)
      if (isError(result) || !("_tag" in result) || result._tag === "UnknownNotification") continue
      if (!(F.channelIdOf(bytes) === F.CONTROL_CHANNEL)) continue
      decoded++
      const again = F.encodeControl(result as F.OutgoingControl)
      if (isError(again)) return assert.fail(`${toHex(bytes)} decoded but does not re-encode: ${again.message}`)
      const expected = bytes.slice()
      expected[3] = (result as F.OutgoingControl)._tag === "Destroy" ? expected[3] & F.FLAG_ABORT : 0
      assert.strictEqual(toHex(again), toHex(expected))
    }
    assert.isAbove(decoded, 100)
  })

  it("never throws on random bytes", () => {
    const rand = prng(7)
    for (let round = 0; round < 20000; round++) {
      const size = Math.floor(rand() * 64)
      const bytes = Uint8Array.from({ length: size }, () => Math.floor(rand() * 256))
      if (size >= 2 && rand() < 0.9) bytes[0] = bytes[1] = 0xff
      if (size >= 3 && rand() < 0.8) bytes[2] = [1, 2, 3, 4, 5, 6, 8, 0x40, 0x80, 0x81][Math.floor(rand() * 10)]
      tryDecode(bytes)
    }
  })
})

describe("ChannelFrames: fanout filters", () => {
  it("passes a message that starts with any prefix", () => {
    const filter: F.ConsumerFilter = { _tag: "Prefixes", prefixes: [ascii("EUR"), ascii("GB")] }
    assert.isTrue(F.filterMatches(filter, ascii("EURUSD 1.08")))
    assert.isTrue(F.filterMatches(filter, ascii("GBPUSD")))
    assert.isFalse(F.filterMatches(filter, ascii("EU")))
    assert.isFalse(F.filterMatches(filter, ascii("USDJPY")))
    assert.isTrue(F.filterMatches({ _tag: "All" }, new Uint8Array(0)))
    assert.strictEqual(F.filterMatches({ _tag: "Application", kind: 0x80, data: ascii("") }, ascii("x")), undefined)
  })
})

describe("ChannelFrames: encryption layout with WebCrypto", () => {
  const subtle = globalThis.crypto.subtle

  const channelKey = async (suite: number, creatorNonce: Uint8Array, acceptorNonce: Uint8Array) => {
    const base = await subtle.importKey("raw", range(1, 32), "HKDF", false, ["deriveKey"])
    return subtle.deriveKey(
      { name: "HKDF", hash: "SHA-256", salt: F.hkdfSalt(creatorNonce, acceptorNonce), info: F.hkdfInfo(suite) },
      base,
      { name: "AES-GCM", length: 8 * F.suiteKeyLength(suite)! },
      false,
      ["encrypt", "decrypt"]
    )
  }

  it("seals with the spec's IV and AAD, and a tampered or moved message fails to open", async () => {
    const key = await channelKey(F.SUITE_AES_256_GCM, range(0, 16), range(0xf0, 16))
    const plaintext = ascii("hello channel")
    const params = (channelId: number, counter: number) => ({
      name: "AES-GCM",
      iv: F.makeIv(F.DIRECTION_CLIENT, counter),
      additionalData: F.makeAad(channelId, F.DIRECTION_CLIENT),
      tagLength: 8 * F.TAG_SIZE
    })
    const sealed = new Uint8Array(await subtle.encrypt(params(3, 0), key, plaintext))
    assert.strictEqual(sealed.length, plaintext.length + F.TAG_SIZE)
    const opened = new Uint8Array(await subtle.decrypt(params(3, 0), key, sealed))
    assert.strictEqual(toHex(opened), toHex(plaintext))
    const fails = (p: ReturnType<typeof params>, bytes: Uint8Array<ArrayBuffer>) =>
      subtle.decrypt(p, key, bytes).then(() => false, () => true)
    const tampered = sealed.slice()
    tampered[0] ^= 1
    assert.isTrue(await fails(params(3, 0), tampered))
    assert.isTrue(await fails(params(7, 0), sealed)) // another channel id
    assert.isTrue(await fails(params(3, 1), sealed)) // replayed as the next message
  })

  it("derives a different key when either side's nonce changes", async () => {
    const iv = F.makeIv(F.DIRECTION_SERVER, 0)
    const seal = async (key: CryptoKey) =>
      toHex(new Uint8Array(await subtle.encrypt({ name: "AES-GCM", iv }, key, ascii("same"))))
    const a = await seal(await channelKey(F.SUITE_AES_128_GCM, range(0, 16), range(16, 16)))
    const b = await seal(await channelKey(F.SUITE_AES_128_GCM, range(0, 16), range(17, 16)))
    const c = await seal(await channelKey(F.SUITE_AES_128_GCM, range(1, 16), range(16, 16)))
    assert.notStrictEqual(a, b)
    assert.notStrictEqual(a, c)
  })
})

describe("ChannelError", () => {
  it("names codes, WebSocket close codes and unknown codes", () => {
    assert.strictEqual(ChannelError.codeName(Code.REFUSED), "REFUSED")
    assert.strictEqual(ChannelError.codeName(1000), "ws:1000")
    assert.strictEqual(ChannelError.codeName(0x0200), "0x0200")
  })

  it("is retryable only when the peer promised nothing was processed", () => {
    const failed = (code: number) =>
      new ChannelError.ChannelError({
        reason: new ChannelError.RequestFailed({ controlType: F.TYPE_CREATE, code, detail: "" }),
        channelId: 3
      })
    assert.isTrue(failed(Code.REFUSED).retryable)
    assert.isTrue(failed(Code.GOING_AWAY).retryable)
    assert.isFalse(failed(Code.SCOPE_DENIED).retryable)
    assert.include(failed(Code.REFUSED).message, "channel 3")
    assert.include(failed(Code.REFUSED).message, "safe to retry")
  })

  it("says where a decoding error was found", () => {
    const result = decodePayload("03 00 00 00 00 01 00 03 ff ff")
    assert.include(reasonOf(result).message, "MIGRATE")
    assert.include(reasonOf(result).message, "at byte 8")
  })
})
