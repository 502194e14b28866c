/**
 * @plexus/rpc: effect/rpc protocols over plexus. Calls over a `Session`
 * (one stream per call), over a message carrier (a KCM pool, a channel of
 * a Channels connection: over a WebSocket, from a page), with deadlines on
 * the wire, cancellation end to end, graceful draining and retries only
 * where the server provably never started a call.
 *
 * The Node entry point; `./browser` (picked by bundlers through the
 * `browser` condition) leaves out the Node-only server of `NodeRpcChannels`.
 *
 * @since 0.1.0
 */
export * as Deadline from "./Deadline.ts"
export * as Idempotent from "./Idempotent.ts"
export * as NodeRpcChannels from "./NodeRpcChannels.ts"
export * as RpcChannels from "./RpcChannels.ts"
export * as RpcSession from "./RpcSession.ts"
export * as RpcSocket from "./RpcSocket.ts"
export * as RpcTransportError from "./RpcTransportError.ts"
export * as RpcKcm from "./RpcKcm.ts"
export * as RpcMessages from "./RpcMessages.ts"
