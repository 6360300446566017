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

extension Commitment {
    /// A number of CPUs in thousandths written as people write it: "2", "2.5", "0.125".
    public static func cpusText(millis: UInt64) -> String {
        var text = String(millis / 1000)
        if millis % 1000 != 0 {
            var fraction = String(millis % 1000 + 1000).dropFirst()
            while fraction.last == "0" { fraction = fraction.dropLast() }
            text += "." + fraction
        }
        return text
    }
}
