/// A change to a VPS's limits, as `berth create` and `berth set` give it: nil leaves a limit as
/// it is (on create: no limit, or the default disk).
public struct LimitsUpdate: Equatable, Sendable {
    public var memoryBytes: UInt64?
    /// 0 is "no swap" (vzctl's `--swap 0`), not "unchanged".
    public var swapBytes: UInt64?
    public var pids: UInt32?
    public var cpuUnits: UInt32?
    public var cpuLimitPercent: UInt32?
    public var cpus: String?
    public var files: UInt64?
    public var diskBytes: UInt64?
    public var diskInodes: UInt64?
    public var ioWeight: UInt32?
    public var ioBytesPerSecond: UInt64?
    public var ioOperationsPerSecond: UInt32?

    public init() {}

    /// Every limit of `limits` as asked for (what a create asks of a fresh VPS).
    public init(_ limits: Limits) {
        memoryBytes = limits.memoryBytes
        swapBytes = limits.swapBytes
        pids = limits.pids
        cpuUnits = limits.cpuUnits
        cpuLimitPercent = limits.cpuLimitPercent
        cpus = limits.cpus
        files = limits.files
        diskBytes = limits.diskBytes
        diskInodes = limits.diskInodes
        ioWeight = limits.ioWeight
        ioBytesPerSecond = limits.ioBytesPerSecond
        ioOperationsPerSecond = limits.ioOperationsPerSecond
    }
}
