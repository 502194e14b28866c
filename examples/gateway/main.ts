/**
 * Fanout through a gateway and an edge: a content service publishes a price
 * feed at a gateway, and many WebSocket clients of an edge gateway subscribe
 * to it; the feed crosses the gateway↔edge WebSocket once. Prints the feed,
 * long-haul and delivered byte counts. See `demo.ts` and the README.
 *
 * Run: `npx node examples/gateway/main.ts [clients] [messages]`
 */
import * as Effect from "effect/Effect"
import { gatewayDemo } from "./demo.ts"

const [clients, messages] = process.argv.slice(2).map(Number)

Effect.runPromise(
  gatewayDemo({
    clients: Number.isFinite(clients) && clients > 0 ? clients : undefined,
    messages: Number.isFinite(messages) && messages > 0 ? messages : undefined
  }).pipe(Effect.scoped, Effect.timeout("60 seconds"))
).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
