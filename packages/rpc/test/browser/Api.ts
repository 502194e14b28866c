/**
 * The API of the real-browser RPC test: a unary call, a streaming one and a
 * typed failure. Imports nothing from Node, so the page bundles it.
 */
import * as Effect from "effect/Effect"
import { Rpc, RpcGroup } from "effect/rpc"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"

export class NotFound extends Schema.TaggedError<NotFound>()("NotFound", { name: Schema.String }) {}

export const PageApi = RpcGroup.make(
  Rpc.make("Greet", { payload: { name: Schema.String }, success: Schema.String }),
  Rpc.make("Count", { payload: { to: Schema.Number }, success: Schema.Number, stream: true }),
  Rpc.make("Find", { payload: { name: Schema.String }, success: Schema.String, error: NotFound })
)

export const PageHandlers = PageApi.toLayer(Effect.succeed(PageApi.of({
  Greet: ({ name }) => Effect.succeed(`hello, ${name}`),
  Count: ({ to }) => Stream.range(1, to),
  Find: ({ name }) => Effect.fail(new NotFound({ name }))
})))
