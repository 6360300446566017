import BerthCore

public struct NodeSnapshot: Sendable, Equatable {
    public var name: String
    public var state: NodeState
    public var labels: [String: String]
    /// Allocatable capacity (already net of host reservations).
    public var cpuMillis: UInt64
    public var memoryBytes: UInt64
    public var diskBytes: UInt64
    /// What placed VPSs have committed.
    public var usedCpuMillis: UInt64 = 0
    public var usedMemoryBytes: UInt64 = 0
    public var usedDiskBytes: UInt64 = 0
    /// Anti-affinity groups that already have a member here.
    public var groups: Set<String> = []
    /// VPSs placed here (the tie-breaker of spread: equal load goes to the node with fewer).
    public var vpsCount = 0
    /// Templates the node holds; nil when unknown (then any template is assumed present).
    public var templates: Set<String>? = nil
    /// The addresses a VPS placed here may have (the node's `network.ranges`).
    public var networkRanges: [CIDR] = []

    public init(
        name: String, state: NodeState = .ready, labels: [String: String] = [:],
        cpuMillis: UInt64, memoryBytes: UInt64, diskBytes: UInt64
    ) {
        self.name = name
        self.state = state
        self.labels = labels
        self.cpuMillis = cpuMillis
        self.memoryBytes = memoryBytes
        self.diskBytes = diskBytes
    }
}
