import CIsolation

/// Usage counters in the beancounter shape (held, peak, limit, failcount). A nil limit means
/// unlimited; a peak of 0 means the kernel does not track it for that resource.
public struct CgroupUsage: Equatable, Sendable {
    public var memoryBytes: UInt64 = 0
    public var memoryPeakBytes: UInt64 = 0
    public var memoryLimitBytes: UInt64?
    public var memoryFailcount: UInt64 = 0
    /// Processes the OOM killer ended inside this cgroup.
    public var oomKills: UInt64 = 0
    public var ioBytes: UInt64 = 0
    public var ioOperations: UInt64 = 0
    public var swapBytes: UInt64 = 0
    public var swapPeakBytes: UInt64 = 0
    public var swapLimitBytes: UInt64?
    public var swapFailcount: UInt64 = 0
    public var pids: UInt64 = 0
    public var pidsPeak: UInt64 = 0
    public var pidsLimit: UInt64?
    public var pidsFailcount: UInt64 = 0
    public var cpuNanoseconds: UInt64 = 0
    public var cpuThrottledPeriods: UInt64 = 0
    public var cpuThrottledNanoseconds: UInt64 = 0
    public init() {}
}
