/**
 * @plexus/core: transport-agnostic building blocks. Byte transports (the
 * `effect/socket` Socket), message transports, delineation, in-memory
 * transports with fault injection, and their typed errors.
 *
 * @since 0.1.0
 */
export * as Delineation from "./Delineation.ts"
export * as Acceptor from "./Acceptor.ts"
export * as ChannelError from "./ChannelError.ts"
export * as Channels from "./Channels.ts"
export * as DelineationError from "./DelineationError.ts"
export * as Fanout from "./Fanout.ts"
export * as Memory from "./Memory.ts"
export * as MessageTransport from "./MessageTransport.ts"
export * as MuxStream from "./MuxStream.ts"
export * as Session from "./Session.ts"
export * as SessionError from "./SessionError.ts"
export * as Transport from "./Transport.ts"
