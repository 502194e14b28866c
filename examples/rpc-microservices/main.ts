/**
 * Three services calling each other: Inventory and Orders over RpcSession
 * on TCP, and a Storefront that pages call over WebSocket (RpcChannels).
 * Prints a checkout, typed errors, a stock stream, a deadline and a
 * graceful drain. See `demo.ts` and the README.
 *
 * Run: `npx node examples/rpc-microservices/main.ts`
 */
import * as Effect from "effect/Effect"
import { microservicesDemo } from "./demo.ts"

Effect.runPromise(microservicesDemo().pipe(Effect.scoped, Effect.timeout("30 seconds"))).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
