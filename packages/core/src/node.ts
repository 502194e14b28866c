/**
 * `@plexus/core/node`: the Node-only parts of core, kept out of the main
 * entry so that it bundles for browsers.
 *
 * @since 0.1.0
 */
export * as NodeDuplex from "./NodeDuplex.ts"
