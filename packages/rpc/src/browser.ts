/**
 * @plexus/rpc for browsers: every protocol but the Node server of
 * `NodeRpcChannels`. A page calls services with
 * `RpcChannels.layerClientWs({ url })`. Nothing here imports a Node module
 * of its own.
 *
 * @since 0.1.0
 */
export * as Deadline from "./Deadline.ts"
export * as Idempotent from "./Idempotent.ts"
export * as RpcChannels from "./RpcChannels.ts"
export * as RpcMessages from "./RpcMessages.ts"
export * as RpcSession from "./RpcSession.ts"
export * as RpcTransportError from "./RpcTransportError.ts"
