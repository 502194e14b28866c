/**
 * The conformance suite over `RpcSocket`: message calls on one
 * length-prefixed TCP connection.
 */
import { socketOnTcp } from "./fixtures/Connect.ts"
import { rpcSuite } from "./fixtures/RpcSuite.ts"

rpcSuite("RpcSocket on TCP", socketOnTcp)
