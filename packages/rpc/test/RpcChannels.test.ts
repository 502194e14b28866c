/**
 * The conformance suite over Channels: a call channel on a memory message
 * pair, and on a real WebSocket (the client on the global WebSocket through
 * the secondary handshake, as a page dials, and our Node server).
 */
import { channelsOnMemory, channelsOnWs } from "./fixtures/Connect.ts"
import { rpcSuite } from "./fixtures/RpcSuite.ts"

rpcSuite("channels on a memory message pair", () => channelsOnMemory())
rpcSuite("channels on a WebSocket", () => channelsOnWs())
