/**
 * @plexus/transport-tcp: TCP and TLS byte transports (each connection an
 * `effect/socket` Socket following the `@plexus/core` Transport conventions),
 * their servers, and an in-process fault proxy for tests.
 *
 * @since 0.1.0
 */
export * as FaultProxy from "./FaultProxy.ts"
export * as Tcp from "./Tcp.ts"
export * as TcpServer from "./TcpServer.ts"
export * as Tls from "./Tls.ts"
