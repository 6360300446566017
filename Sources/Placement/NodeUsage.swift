import BerthCore

/// What the VPSs on one node commit: kept up to date by `PlacementLedger` as VPSs are placed,
/// resized and destroyed, so building a snapshot does not read every VPS.
public struct NodeUsage: Sendable, Equatable {
    public var cpuMillis: UInt64 = 0
    public var memoryBytes: UInt64 = 0
    public var diskBytes: UInt64 = 0
    public var count = 0
    /// Anti-affinity groups with their member counts here.
    public var groups: [String: Int] = [:]

    public init() {}

    public mutating func add(group: String, cost: PlacementRequest) {
        cpuMillis &+= cost.cpuMillis
        memoryBytes &+= cost.memoryBytes
        diskBytes &+= cost.diskBytes
        count += 1
        if !group.isEmpty { groups[group, default: 0] += 1 }
    }

    public mutating func remove(group: String, cost: PlacementRequest) {
        cpuMillis = cpuMillis >= cost.cpuMillis ? cpuMillis - cost.cpuMillis : 0
        memoryBytes = memoryBytes >= cost.memoryBytes ? memoryBytes - cost.memoryBytes : 0
        diskBytes = diskBytes >= cost.diskBytes ? diskBytes - cost.diskBytes : 0
        count = max(0, count - 1)
        if !group.isEmpty, let members = groups[group] { groups[group] = members > 1 ? members - 1 : nil }
    }
}
