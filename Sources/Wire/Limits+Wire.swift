import BerthCore

extension Limits {
    /// Limits as a stored request or status carries them, unchecked (0 or empty: none; no disk:
    /// the default disk).
    public init(_ wire: Berth_V1_Limits) {
        self.init(diskBytes: wire.diskBytes == 0 ? Limits.defaultDiskBytes : wire.diskBytes)
        func given<T: BinaryInteger>(_ value: T) -> T? { value == 0 ? nil : value }
        memoryBytes = given(wire.memoryBytes)
        swapBytes = wire.hasSwapBytes ? wire.swapBytes : nil
        pids = given(wire.pids)
        cpuUnits = given(wire.cpuUnits)
        cpuLimitPercent = given(wire.cpuLimitPct)
        cpus = wire.cpus.isEmpty ? nil : wire.cpus
        files = given(wire.files)
        diskInodes = given(wire.diskInodes)
        ioWeight = given(wire.ioWeight)
        ioBytesPerSecond = given(wire.ioBps)
        ioOperationsPerSecond = given(wire.ioIops)
    }
}

/// The wire form of limits, converted in this one place for the CLI, the agent and the
/// controller: 0 or empty means "not given", except swap, which has presence (0 = no swap).
extension Berth_V1_Limits {
    public init(_ limits: Limits) {
        self.init()
        memoryBytes = limits.memoryBytes ?? 0
        if let swap = limits.swapBytes { swapBytes = swap }
        pids = limits.pids ?? 0
        cpuUnits = limits.cpuUnits ?? 0
        cpuLimitPct = limits.cpuLimitPercent ?? 0
        cpus = limits.cpus ?? ""
        files = limits.files ?? 0
        diskBytes = limits.diskBytes
        diskInodes = limits.diskInodes ?? 0
        ioWeight = limits.ioWeight ?? 0
        ioBps = limits.ioBytesPerSecond ?? 0
        ioIops = limits.ioOperationsPerSecond ?? 0
    }

    /// What a create or set request asks to change.
    public var update: LimitsUpdate {
        func given<T: BinaryInteger>(_ value: T) -> T? { value == 0 ? nil : value }
        var update = LimitsUpdate()
        update.memoryBytes = given(memoryBytes)
        update.swapBytes = hasSwapBytes ? swapBytes : nil
        update.pids = given(pids)
        update.cpuUnits = given(cpuUnits)
        update.cpuLimitPercent = given(cpuLimitPct)
        update.cpus = cpus.isEmpty ? nil : cpus
        update.files = given(files)
        update.diskBytes = given(diskBytes)
        update.diskInodes = given(diskInodes)
        update.ioWeight = given(ioWeight)
        update.ioBytesPerSecond = given(ioBps)
        update.ioOperationsPerSecond = given(ioIops)
        return update
    }

    /// The limits a create request asks for, checked, before any node is chosen (what the
    /// scheduler charges); the node's agent checks them again against its own CPUs.
    public var requested: Limits {
        get throws(BerthError) { try Limits().merging(update, onlineCPUs: nil) }
    }
}
