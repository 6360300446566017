import BerthCore

extension Berth_V1_VpsStats {
    /// The wire form of a VPS's beancounters (`unlimited` for no limit, as OpenVZ writes it).
    public init(_ accounting: VPSAccounting) {
        self.init()
        name = accounting.name
        cpuNanoseconds = accounting.cpuNanoseconds
        counters = accounting.counters.map { counter in
            var wire = Berth_V1_ResourceCounter()
            wire.resource = counter.resource
            wire.held = counter.held
            wire.peak = counter.peak
            wire.limit = counter.limit ?? Berth_V1_ResourceCounter.unlimited
            wire.failcnt = counter.failures
            return wire
        }
    }

    public var accounting: VPSAccounting {
        VPSAccounting(
            name: name, cpuNanoseconds: cpuNanoseconds,
            counters: counters.map {
                VPSAccounting.Counter(
                    resource: $0.resource, held: $0.held, peak: $0.peak,
                    limit: $0.limit == Berth_V1_ResourceCounter.unlimited ? nil : $0.limit, failures: $0.failcnt)
            })
    }

    /// `berth stats NAME` as text (VPSAccounting.table).
    public var table: String { accounting.table }
}
