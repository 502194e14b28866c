/**
 * Marks an Rpc as idempotent: running it twice has the effect of running it
 * once. Only such calls are retried after a failure that may have reached
 * the handler (docs/spec/rpc.md, Retry safety); every other call is retried
 * only when the server provably never started it.
 *
 * ```ts
 * Rpc.make("GetUser", { payload: { id: Schema.Number }, success: User }).annotate(Idempotent.Idempotent, true)
 * ```
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type { Rpc, RpcGroup } from "effect/rpc"

/**
 * The annotation, `false` unless set.
 *
 * @category annotations
 * @since 0.1.0
 */
export const Idempotent = Context.Reference<boolean>("@plexus/rpc/Idempotent", { defaultValue: () => false })

/**
 * Whether an Rpc carries the annotation.
 *
 * @category guards
 * @since 0.1.0
 */
export const isIdempotent = (rpc: Rpc.AnyWithProps): boolean => Context.get(rpc.annotations, Idempotent)

/**
 * The tags of a group's idempotent Rpcs, the form the client protocols take
 * (a protocol sees tags, not Rpcs).
 *
 * @category constructors
 * @since 0.1.0
 */
export const tagsOf = (group: RpcGroup.Any): ReadonlySet<string> => {
  const tags = new Set<string>()
  for (const rpc of (group as unknown as RpcGroup.RpcGroup<Rpc.AnyWithProps>).requests.values()) {
    if (isIdempotent(rpc)) tags.add(rpc._tag)
  }
  return tags
}
