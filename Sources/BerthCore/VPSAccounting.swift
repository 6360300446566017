/// A VPS's beancounters (`berth stats`): per resource what it holds, its peak, its limit and how
/// often the limit refused it, and the CPU time it used.
public struct VPSAccounting: Sendable, Equatable {
    public struct Counter: Sendable, Equatable {
        public var resource: String
        public var held: UInt64
        /// 0 where the kernel does not track a peak.
        public var peak: UInt64
        /// nil: unlimited.
        public var limit: UInt64?
        public var failures: UInt64

        public init(resource: String, held: UInt64, peak: UInt64, limit: UInt64?, failures: UInt64) {
            self.resource = resource
            self.held = held
            self.peak = peak
            self.limit = limit
            self.failures = failures
        }
    }

    public var name: String
    public var cpuNanoseconds: UInt64
    public var counters: [Counter]

    public init(name: String, cpuNanoseconds: UInt64, counters: [Counter]) {
        self.name = name
        self.cpuNanoseconds = cpuNanoseconds
        self.counters = counters
    }

    /// `berth stats NAME` as text: one row per resource and the cumulative CPU time. The agent
    /// writes the same text into the VPS as its beancounter file.
    public var table: String {
        let rows =
            [["RESOURCE", "HELD", "PEAK", "LIMIT", "FAILCNT"]]
            + counters.map {
                [$0.resource, String($0.held), String($0.peak), $0.limit.map(String.init) ?? "unlimited", String($0.failures)]
            }
        return textTable(rows) + "cpu time: \(cpuNanoseconds / 1_000_000) ms\n"
    }
}
