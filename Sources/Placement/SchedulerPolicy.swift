import BerthCore

public struct SchedulerPolicy: Sendable, Equatable {
    public enum Strategy: String, Sendable { case binpack, spread }
    public var strategy: Strategy
    /// Overcommit ratios: capacity × ratio is what may be committed (1.0 = none).
    public var cpuOvercommit: Double
    public var memoryOvercommit: Double
    public var diskOvercommit: Double

    public init(strategy: Strategy = .spread, cpuOvercommit: Double = 4.0, memoryOvercommit: Double = 1.0, diskOvercommit: Double = 1.0) {
        self.strategy = strategy
        self.cpuOvercommit = cpuOvercommit
        self.memoryOvercommit = memoryOvercommit
        self.diskOvercommit = diskOvercommit
    }
}
