/**
 * @plexus/transport-ws for browsers: the client over the global
 * `WebSocket`, negotiation, and the secondary handshake. Nothing here
 * imports a Node module, so it bundles for a page.
 *
 * @since 0.1.0
 */
export * as Negotiation from "./Negotiation.ts"
export * as SecondaryHandshake from "./SecondaryHandshake.ts"
export * as Ws from "./Ws.ts"
export * as WsConnection from "./WsConnection.ts"
export * as WsError from "./WsError.ts"
