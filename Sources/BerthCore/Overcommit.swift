/// How far a node may promise more than it has (Virtuozzo/Nomad style): allocatable = capacity x
/// ratio. CPU is commonly overcommitted, memory and disk rarely. The agent's settings
/// (`berth-agent --cpu-overcommit`…) and what it reports in `NodeReport`.
public struct Overcommit: Codable, Sendable, Equatable {
    public var cpu: Double
    public var memory: Double
    public var disk: Double

    public init(cpu: Double = 4, memory: Double = 1, disk: Double = 1) {
        self.cpu = cpu
        self.memory = memory
        self.disk = disk
    }
}
