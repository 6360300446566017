/// What one VPS holds of its node's capacity, and what a node's VPSs add up to.
public struct Commitment: Equatable, Sendable {
    /// % of one CPU (200 = two CPUs).
    public var cpuPercent: UInt64
    /// Memory and swap together.
    public var memoryBytes: UInt64
    public var diskBytes: UInt64

    public init(cpuPercent: UInt64 = 0, memoryBytes: UInt64 = 0, diskBytes: UInt64 = 0) {
        self.cpuPercent = cpuPercent
        self.memoryBytes = memoryBytes
        self.diskBytes = diskBytes
    }

    public static func + (a: Commitment, b: Commitment) -> Commitment {
        Commitment(cpuPercent: a.cpuPercent &+ b.cpuPercent, memoryBytes: a.memoryBytes &+ b.memoryBytes, diskBytes: a.diskBytes &+ b.diskBytes)
    }

    public static func += (a: inout Commitment, b: Commitment) { a = a + b }
}
