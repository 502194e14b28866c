/**
 * The conformance suite over KCM pools: three memory connections, and three
 * TCP connections built from the layers.
 */
import { kcmOnMemory, kcmOnTcp } from "./fixtures/Connect.ts"
import { rpcSuite } from "./fixtures/RpcSuite.ts"

rpcSuite("a KCM pool on memory", () => kcmOnMemory())
rpcSuite("a KCM pool on TCP", kcmOnTcp)
