/**
 * @plexus/kcm: a message multiplexor over a pool of byte transports, after
 * Linux's Kernel Connection Multiplexor.
 *
 * @since 0.1.0
 */
export * as Kcm from "./Kcm.ts"
export * as KcmError from "./KcmError.ts"
export * as KcmEvent from "./KcmEvent.ts"
export * as KcmStats from "./KcmStats.ts"
export * as MessageSocket from "./MessageSocket.ts"
