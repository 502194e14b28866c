/**
 * The conformance suite over sessions: on an in-memory pair, TCP and TLS.
 */
import { sessionOnMemory, sessionOnTcp, sessionOnTls } from "./fixtures/Connect.ts"
import { rpcSuite } from "./fixtures/RpcSuite.ts"

rpcSuite("a session on memory", () => sessionOnMemory())
rpcSuite("a session on TCP", sessionOnTcp)
rpcSuite("a session on TLS", sessionOnTls)
