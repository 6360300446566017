/// A `--layout pool` VPS's disk: its subvolume in the node's btrfs pool, and the block device the
/// pool lives on (I/O limits name it; nil when the agent could not tell).
public struct PoolVolume: Equatable, Sendable {
    public var subvolume: String
    public var device: String?

    public init(subvolume: String, device: String?) {
        self.subvolume = subvolume
        self.device = device
    }
}
