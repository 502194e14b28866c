/**
 * How one service calls another: an effect/rpc client over `RpcSession`
 * that dials the other service's TCP port itself, and dials again when its
 * session goes away (after the other side drained, say). And how a caller
 * turns the failure of a hop into its own typed `ServiceUnavailable`.
 */
import * as Effect from "effect/Effect"
import { type Rpc, RpcClient, type RpcClientError, type RpcGroup } from "effect/rpc"
import type * as Scope from "effect/Scope"
import { Session } from "@plexus/core"
import { RpcSession, RpcTransportError } from "@plexus/rpc"
import { Tcp } from "@plexus/transport-tcp"
import { ServiceUnavailable } from "./api.ts"

/** A client of `group` at 127.0.0.1:`port`, living in the Scope. */
export const dialService = <Rpcs extends Rpc.Any>(
  group: RpcGroup.RpcGroup<Rpcs>,
  port: number
): Effect.Effect<RpcClient.RpcClient<Rpcs, RpcClientError.RpcClientError>, never, Scope.Scope | Rpc.MiddlewareClient<Rpcs>> =>
  Effect.flatMap(
    RpcSession.makeClientProtocol({
      dial: Effect.flatMap(Tcp.dial({ host: "127.0.0.1", port }), (socket) => Session.make(socket, { role: "client" }))
    }),
    (protocol) => RpcClient.make(group).pipe(Effect.provideService(RpcClient.Protocol, protocol))
  )

/** `ServiceUnavailable` for a failed call to `service`, naming the transport's reason. */
export const unavailable = (service: string) => (error: RpcClientError.RpcClientError): ServiceUnavailable =>
  new ServiceUnavailable({ service, reason: RpcTransportError.fromClientError(error)?.reason._tag ?? error.reason._tag })

/** Replaces a client error of `service` by `ServiceUnavailable`, leaving the typed errors as they are. */
export const orUnavailable = (service: string) =>
<E>(error: E | RpcClientError.RpcClientError): Exclude<E, RpcClientError.RpcClientError> | ServiceUnavailable =>
  isClientError(error) ? unavailable(service)(error) : error as Exclude<E, RpcClientError.RpcClientError>

const isClientError = (u: unknown): u is RpcClientError.RpcClientError =>
  typeof u === "object" && u !== null && (u as { _tag?: unknown })._tag === "RpcClientError"
