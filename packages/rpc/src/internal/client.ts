/**
 * The client half shared by both carriers: one fiber per call runs its
 * attempts (the effect/rpc `send` of a Request lasts until the call's Exit
 * is delivered, so a failure of the carrier fails exactly that call), the
 * client's deadline backstop, and the retry rule of docs/spec/rpc.md (Retry
 * safety).
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import { RpcClient, type RpcClientError, type RpcSerialization } from "effect/rpc"
import type { FromClientEncoded, FromServerEncoded, RequestEncoded } from "effect/rpc/RpcMessage"
import * as Schema from "effect/Schema"
import { Aborted, DeadlineExceeded, Refused, RpcTransportError, toClientError } from "../RpcTransportError.ts"
import { withByteChunks } from "./byteChunks.ts"
import { KIND_ABORTED, KIND_DEADLINE, KIND_REFUSED, timeoutOf } from "./wire.ts"

/** Options every client protocol takes. */
export interface ClientOptions {
  /** Tags of the Rpcs that may be retried after a failure that may have reached the handler (`Idempotent.tagsOf`). */
  readonly idempotent?: ReadonlySet<string> | undefined
  /** Attempts after the first, for failures that allow one. Default 2. */
  readonly retries?: number | undefined
  /** Pause before a retry, times the attempt number. Default 20 ms. */
  readonly retryDelay?: Duration.Input | undefined
  /** How long past a call's deadline the client waits for the server to say it passed. Default 1 s. */
  readonly deadlineGrace?: Duration.Input | undefined
  /** Largest request message sent. Default 4 MiB. */
  readonly maxRequestBytes?: number | undefined
  /** Largest response message received. Default 16 MiB. */
  readonly maxResponseBytes?: number | undefined
}

/** One attempt of a call on a carrier. */
export type Attempt = (
  request: RequestEncoded,
  deliver: (message: FromServerEncoded) => Effect.Effect<void>,
  /** The call's deadline in milliseconds (its `plexus-timeout` header), if it carries one. */
  timeout: number | undefined
) => Effect.Effect<void, RpcTransportError>

/** What a carrier gives the shared client. */
export interface Carrier {
  readonly attempt: Attempt
  readonly supportsAck: boolean
  readonly ack: (requestId: string | number) => Effect.Effect<void, RpcClientError.RpcClientError>
  readonly interrupt: (requestId: string | number) => Effect.Effect<void>
}

/**
 * The failure of a call the server ended with DEADLINE, REFUSED or ABORTED
 * (docs/spec/rpc.md): only a refused call is safe to retry. `timeout` is
 * the call's deadline, if it carried one.
 */
export const endedByServer = (
  kind: typeof KIND_DEADLINE | typeof KIND_REFUSED | typeof KIND_ABORTED,
  timeout: number | undefined
): RpcTransportError => {
  switch (kind) {
    case KIND_DEADLINE:
      return new RpcTransportError({
        reason: new DeadlineExceeded({ timeoutMillis: timeout ?? 0, byServer: true }),
        retryable: false
      })
    case KIND_REFUSED:
      return new RpcTransportError({ reason: new Refused({ detail: "refused by the server" }), retryable: true })
    case KIND_ABORTED:
      return new RpcTransportError({ reason: new Aborted({ detail: "the server ended the call" }), retryable: false })
  }
}

/** Whether a retry can help: the call never started, and not for a reason that will repeat. */
const retryWorthy = (error: RpcTransportError): boolean =>
  error.retryable && (error.reason._tag === "Refused" || error.reason._tag === "NotSent")

/** A decoder for the defects a server reports with DEFECT. */
export const defectDecoder = (serialization: RpcSerialization.RpcSerialization["Service"]) =>
  Schema.decodeUnknownSync(serialization.codecFor(Schema.Defect()))

/** Builds the effect/rpc client Protocol over a carrier. */
export const makeProtocol = (
  serialization: RpcSerialization.RpcSerialization["Service"],
  options: ClientOptions | undefined,
  carrier: Carrier
): Effect.Effect<RpcClient.Protocol["Service"]> =>
  RpcClient.Protocol.make((writeResponse) =>
    Effect.sync(() => {
      const retries = options?.retries ?? 2
      const retryDelay = Duration.toMillis(Duration.fromInputUnsafe(options?.retryDelay ?? "20 millis"))
      const grace = Duration.toMillis(Duration.fromInputUnsafe(options?.deadlineGrace ?? "1 second"))
      const idempotent = options?.idempotent

      // Called as effect/rpc runs the send, so its state is already per call: no suspension needed.
      const runCall = (clientId: number, request: RequestEncoded): Effect.Effect<void, RpcClientError.RpcClientError> => {
        const timeout = timeoutOf(request.headers)
        const mayRepeat = idempotent?.has(request.tag) ?? false
        let delivered = false
        const deliver = (message: FromServerEncoded): Effect.Effect<void> => {
          if (message._tag === "Chunk") delivered = true
          return writeResponse(clientId, message)
        }
        const once = carrier.attempt(request, deliver, timeout)
        const bounded = timeout === undefined ? once : Effect.timeoutOrElse(once, {
          duration: Duration.millis(timeout + grace),
          orElse: () =>
            Effect.fail(
              new RpcTransportError({
                reason: new DeadlineExceeded({ timeoutMillis: timeout, byServer: false }),
                retryable: false
              })
            )
        })
        const loop = (attempt: number): Effect.Effect<void, RpcClientError.RpcClientError> =>
          Effect.catch(bounded, (error) => {
            const again = attempt < retries && !delivered &&
              (retryWorthy(error) || (mayRepeat && error.reason._tag === "ConnectionLost"))
            if (!again) return Effect.fail(toClientError(error))
            return Effect.andThen(Effect.sleep(Duration.millis(retryDelay * (attempt + 1))), loop(attempt + 1))
          })
        return loop(0)
      }

      const send = (clientId: number, message: FromClientEncoded): Effect.Effect<void, RpcClientError.RpcClientError> => {
        switch (message._tag) {
          case "Request":
            return runCall(clientId, message)
          case "Ack":
            return carrier.ack(message.requestId)
          case "Interrupt":
            return carrier.interrupt(message.requestId)
          default:
            return Effect.void
        }
      }
      return {
        send,
        supportsAck: carrier.supportsAck,
        supportsTransferables: false,
        // Byte chunks are read as views of the message that carried them.
        codecFor: withByteChunks(serialization).codecFor
      }
    })
  )
