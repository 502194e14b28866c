/**
 * @plexus/rpc: effect/rpc protocols over plexus. Calls over a `Session`
 * (one stream per call) and over a message carrier (a KCM pool), with
 * deadlines on the wire, cancellation end to end, graceful draining and
 * retries only where the server provably never started a call.
 *
 * @since 0.1.0
 */
export * as Deadline from "./Deadline.ts"
export * as Idempotent from "./Idempotent.ts"
export * as RpcSession from "./RpcSession.ts"
export * as RpcTransportError from "./RpcTransportError.ts"
export * as RpcKcm from "./RpcKcm.ts"
export * as RpcMessages from "./RpcMessages.ts"
