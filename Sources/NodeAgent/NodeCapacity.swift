import BerthCore

/// This node's capacity, its overcommit and what its VPSs commit of it (`berth node show`, and
/// every heartbeat to the controller).
public struct NodeCapacity: Sendable, Equatable {
    public var name: String
    public var kernel = ""
    public var cgroupMode = ""
    public var cpus = 0
    public var memoryBytes: UInt64 = 0
    /// The filesystem holding the VPS disks.
    public var diskBytes: UInt64 = 0
    public var diskFreeBytes: UInt64 = 0
    /// The btrfs storage pool, 0 while it is not mounted.
    public var poolBytes: UInt64 = 0
    public var poolFreeBytes: UInt64 = 0
    public var overcommit: Overcommit
    /// The sum of every VPS's `Limits.commitment`.
    public var committed = Commitment()
    /// The disk sizes of pool VPSs.
    public var committedPoolBytes: UInt64 = 0
    public var vpsTotal = 0
    public var vpsRunning = 0

    public init(name: String, overcommit: Overcommit) {
        self.name = name
        self.overcommit = overcommit
    }
}
