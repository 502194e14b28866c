import { transportSuite } from "@plexus/core/test/fixtures/TransportSuite.ts"
import { proxiedHarness, tcpHarness, tlsHarness } from "./helpers.ts"

transportSuite("tcp", tcpHarness())
transportSuite("tcp, 4 KiB read high-water mark", tcpHarness({ highWaterMark: 4096 }))
transportSuite("tls", tlsHarness)
transportSuite("tcp through the fault proxy, 1460-byte slices, 1 ms latency", proxiedHarness({ slice: 1460, latency: "1 millis" }))
