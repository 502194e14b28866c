/**
 * The conformance suite over a WebSocket's two views: a session on its
 * byte view (a stream per call), and message-carrier calls straight on its
 * message view (one WebSocket message per RPC message).
 */
import { messagesOnWs, sessionOnWs } from "./fixtures/Connect.ts"
import { rpcSuite } from "./fixtures/RpcSuite.ts"

rpcSuite("a session on a WebSocket", sessionOnWs)
rpcSuite("message calls on a WebSocket", messagesOnWs)
