/// A node's capacity, its overcommit and what its VPSs commit of it, as its agent reports them
/// (every heartbeat, and `node_info`) and the controller keeps them (the `node.info` column, as
/// JSON, so the Codable names are a stored format); the wire form is converted in
/// Sources/Wire/NodeReport+Wire.swift.
public struct NodeReport: Codable, Sendable, Equatable {
    public var name = ""
    public var kernel = ""
    /// "v1" or "v2".
    public var cgroupMode = ""
    public var cpus = 0
    public var memoryBytes: UInt64 = 0
    /// The filesystem holding the VPS disks.
    public var diskBytes: UInt64 = 0
    public var diskFreeBytes: UInt64 = 0
    /// The btrfs storage pool, 0 while it is not mounted.
    public var poolBytes: UInt64 = 0
    public var poolFreeBytes: UInt64 = 0
    /// 0 each until the node has reported (a node known only from its enrolment).
    public var overcommit = Overcommit(cpu: 0, memory: 0, disk: 0)
    /// The sum of every VPS's `Limits.commitment`.
    public var committed = Commitment()
    /// The disk sizes of pool VPSs.
    public var committedPoolBytes: UInt64 = 0
    public var vpsTotal = 0
    public var vpsRunning = 0
    /// The node's `network.ranges`: the only addresses a VPS placed there may have.
    public var networkRanges: [String] = []
    /// What the replicas of HA VPSs this node holds reference (Docs/ha.md).
    public var replicaBytes: UInt64 = 0

    public init(name: String = "") { self.name = name }

    enum CodingKeys: String, CodingKey {
        case name, kernel, cgroupMode, cpus, memoryBytes, diskBytes, diskFreeBytes, poolBytes, poolFreeBytes, overcommit
        case committedCPUPercent, committedMemoryBytes, committedDiskBytes, committedPoolBytes, vpsTotal, vpsRunning, networkRanges, replicaBytes
    }

    // `Commitment` is stored as three flat keys (it is no Codable type of its own).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        kernel = try c.decode(String.self, forKey: .kernel)
        cgroupMode = try c.decode(String.self, forKey: .cgroupMode)
        cpus = try c.decode(Int.self, forKey: .cpus)
        memoryBytes = try c.decode(UInt64.self, forKey: .memoryBytes)
        diskBytes = try c.decode(UInt64.self, forKey: .diskBytes)
        diskFreeBytes = try c.decode(UInt64.self, forKey: .diskFreeBytes)
        poolBytes = try c.decode(UInt64.self, forKey: .poolBytes)
        poolFreeBytes = try c.decode(UInt64.self, forKey: .poolFreeBytes)
        overcommit = try c.decode(Overcommit.self, forKey: .overcommit)
        committed = Commitment(
            cpuPercent: try c.decode(UInt64.self, forKey: .committedCPUPercent),
            memoryBytes: try c.decode(UInt64.self, forKey: .committedMemoryBytes),
            diskBytes: try c.decode(UInt64.self, forKey: .committedDiskBytes))
        committedPoolBytes = try c.decode(UInt64.self, forKey: .committedPoolBytes)
        vpsTotal = try c.decode(Int.self, forKey: .vpsTotal)
        vpsRunning = try c.decode(Int.self, forKey: .vpsRunning)
        networkRanges = try c.decodeIfPresent([String].self, forKey: .networkRanges) ?? []  // reports stored before ranges were reported have none
        replicaBytes = try c.decodeIfPresent(UInt64.self, forKey: .replicaBytes) ?? 0
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(kernel, forKey: .kernel)
        try c.encode(cgroupMode, forKey: .cgroupMode)
        try c.encode(cpus, forKey: .cpus)
        try c.encode(memoryBytes, forKey: .memoryBytes)
        try c.encode(diskBytes, forKey: .diskBytes)
        try c.encode(diskFreeBytes, forKey: .diskFreeBytes)
        try c.encode(poolBytes, forKey: .poolBytes)
        try c.encode(poolFreeBytes, forKey: .poolFreeBytes)
        try c.encode(overcommit, forKey: .overcommit)
        try c.encode(committed.cpuPercent, forKey: .committedCPUPercent)
        try c.encode(committed.memoryBytes, forKey: .committedMemoryBytes)
        try c.encode(committed.diskBytes, forKey: .committedDiskBytes)
        try c.encode(committedPoolBytes, forKey: .committedPoolBytes)
        try c.encode(vpsTotal, forKey: .vpsTotal)
        try c.encode(vpsRunning, forKey: .vpsRunning)
        try c.encode(networkRanges, forKey: .networkRanges)
        try c.encode(replicaBytes, forKey: .replicaBytes)
    }
}
