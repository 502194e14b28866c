/**
 * @plexus/transport-ws: WebSocket as a plexus transport. Each connection is
 * a byte transport (an `effect/socket` Socket, for a Session) and a message
 * transport; sub-protocol and extension negotiation happen in the opening
 * handshake or in a secondary handshake over the open socket;
 * `ChannelClient` gives pages channels that behave as WebSockets. The Node
 * entry point; `./browser` (picked by bundlers through the `browser`
 * condition) leaves out the Node-only modules.
 *
 * @since 0.1.0
 */
export * as ChannelClient from "./ChannelClient.ts"
export * as ChannelSocket from "./ChannelSocket.ts"
export * as Negotiation from "./Negotiation.ts"
export * as NodeWs from "./NodeWs.ts"
export * as SecondaryHandshake from "./SecondaryHandshake.ts"
export * as Ws from "./Ws.ts"
export * as WsConnection from "./WsConnection.ts"
export * as WsError from "./WsError.ts"
export * as WsServer from "./WsServer.ts"
