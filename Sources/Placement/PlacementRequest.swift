import BerthCore

public struct PlacementRequest: Sendable, Equatable {
    public var cpuMillis: UInt64
    public var memoryBytes: UInt64
    public var diskBytes: UInt64
    /// Every constraint must equal the node's label.
    public var constraints: [String: String]
    public var antiAffinityGroup: String?
    /// The template the VPS is created from: only nodes holding it qualify.
    public var template: String?
    /// The VPS's addresses known at placement: each must lie in one of the node's ranges.
    public var addresses: [IPAddress] = []

    /// What a VPS committing `commitment` asks of a node (BerthCore's rule, in the scheduler's
    /// units: CPU in thousandths of a CPU).
    public init(_ commitment: Commitment, constraints: [String: String] = [:], antiAffinityGroup: String? = nil, template: String? = nil) {
        self.init(
            cpuMillis: commitment.cpuPercent &* 10, memoryBytes: commitment.memoryBytes, diskBytes: commitment.diskBytes,
            constraints: constraints, antiAffinityGroup: antiAffinityGroup, template: template)
    }

    public init(
        cpuMillis: UInt64 = 0, memoryBytes: UInt64 = 0, diskBytes: UInt64 = 0,
        constraints: [String: String] = [:], antiAffinityGroup: String? = nil, template: String? = nil
    ) {
        self.template = template
        self.cpuMillis = cpuMillis
        self.memoryBytes = memoryBytes
        self.diskBytes = diskBytes
        self.constraints = constraints
        self.antiAffinityGroup = antiAffinityGroup
    }
}
