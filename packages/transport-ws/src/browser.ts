/**
 * @plexus/transport-ws for browsers: the client over the global
 * `WebSocket`, negotiation, the secondary handshake, and the channels
 * client whose channels behave as WebSockets (`ChannelClient.connect`).
 * Nothing here imports a Node module, so it bundles for a page.
 *
 * @since 0.1.0
 */
export * as ChannelClient from "./ChannelClient.ts"
export * as ChannelSocket from "./ChannelSocket.ts"
export * as Negotiation from "./Negotiation.ts"
export * as SecondaryHandshake from "./SecondaryHandshake.ts"
export * as Ws from "./Ws.ts"
export * as WsConnection from "./WsConnection.ts"
export * as WsError from "./WsError.ts"
