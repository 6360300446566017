import BerthCore

extension NodeReport {
    /// A node's report as a heartbeat or `node_info` carries it.
    public init(_ wire: Berth_V1_NodeInfo) {
        self.init(name: wire.name)
        kernel = wire.kernel
        cgroupMode = wire.cgroupMode
        cpus = Int(wire.cpus)
        memoryBytes = wire.memoryBytes
        diskBytes = wire.diskBytes
        diskFreeBytes = wire.diskFreeBytes
        poolBytes = wire.poolBytes
        poolFreeBytes = wire.poolFreeBytes
        overcommit = Overcommit(cpu: wire.cpuOvercommit, memory: wire.memoryOvercommit, disk: wire.diskOvercommit)
        committed = Commitment(cpuPercent: wire.committedCpuPct, memoryBytes: wire.committedMemoryBytes, diskBytes: wire.committedDiskBytes)
        committedPoolBytes = wire.committedPoolBytes
        vpsTotal = Int(wire.vpsTotal)
        vpsRunning = Int(wire.vpsRunning)
        networkRanges = wire.networkRanges
        replicaBytes = wire.replicaBytes
    }
}

/// The wire form of a node's report, converted in this one place (`NodeReport(wire)` is its
/// inverse: every field round-trips).
extension Berth_V1_NodeInfo {
    public init(_ report: NodeReport) {
        self.init()
        name = report.name
        kernel = report.kernel
        cgroupMode = report.cgroupMode
        cpus = UInt32(clamping: report.cpus)
        memoryBytes = report.memoryBytes
        diskBytes = report.diskBytes
        diskFreeBytes = report.diskFreeBytes
        poolBytes = report.poolBytes
        poolFreeBytes = report.poolFreeBytes
        cpuOvercommit = report.overcommit.cpu
        memoryOvercommit = report.overcommit.memory
        diskOvercommit = report.overcommit.disk
        committedCpuPct = report.committed.cpuPercent
        committedMemoryBytes = report.committed.memoryBytes
        committedDiskBytes = report.committed.diskBytes
        committedPoolBytes = report.committedPoolBytes
        vpsTotal = UInt32(clamping: report.vpsTotal)
        vpsRunning = UInt32(clamping: report.vpsRunning)
        networkRanges = report.networkRanges
        replicaBytes = report.replicaBytes
    }
}
