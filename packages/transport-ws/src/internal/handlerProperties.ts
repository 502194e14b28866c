/**
 * The `on<event>` properties of an EventTarget, as WebSocket has them: each
 * property holds one handler (or null), and the handler runs from a
 * listener added when the property was first set, so it keeps that place
 * among the target's listeners whatever it is changed to later.
 *
 * @internal
 */
type AnyHandler = ((this: EventTarget, event: Event) => unknown) | null

/** @internal */
export class HandlerProperties {
  readonly #target: EventTarget
  readonly #handlers = new Map<string, AnyHandler>()

  constructor(target: EventTarget) {
    this.#target = target
  }

  /** The handler set for `type`, or null; `H` is the property's type. */
  get<H>(type: string): H {
    return (this.#handlers.get(type) ?? null) as H
  }

  set(type: string, f: unknown): void {
    if (!this.#handlers.has(type)) {
      const target = this.#target
      target.addEventListener(type, (event) => {
        const current = this.#handlers.get(type)
        if (typeof current === "function") current.call(target, event)
      })
    }
    this.#handlers.set(type, typeof f === "function" ? f as AnyHandler : null)
  }
}
