/// A VPS's user namespace: uids and gids 0..<count inside are hostBase..<hostBase+count outside.
public struct IDMap: Equatable, Sendable {
    public var hostBase: UInt32
    public var count: UInt32

    public init(hostBase: UInt32, count: UInt32 = IDMap.defaultCount) {
        self.hostBase = hostBase
        self.count = count
    }

    /// A full 16-bit range: every uid a distribution uses, nobody (65534) included.
    public static let defaultCount: UInt32 = 65536

    /// The /proc/PID/uid_map and gid_map line.
    public var mapLine: String { "0 \(hostBase) \(count)\n" }

    public var specText: String { "\(hostBase) \(count)" }

    public static func parse(_ text: String) -> IDMap? {
        let parts = text.split(separator: " ")
        guard parts.count == 2, let base = UInt32(parts[0]), let count = UInt32(parts[1]), base > 0, count > 0,
            UInt64(base) + UInt64(count) <= UInt64(UInt32.max)
        else { return nil }
        return IDMap(hostBase: base, count: count)
    }
}
