import CIsolation

public enum CgroupMode: Equatable, Sendable {
    case v1(root: String)
    case v2(root: String)

    static let cgroup2Magic: Int = 0x6367_7270

    /// Unified (v2) if /sys/fs/cgroup itself is a cgroup2 mount; otherwise the v1 hierarchies.
    /// A hybrid host's cgroup2 mount under unified/ is ignored: it holds no useful controller.
    public static func detect(root: String = "/sys/fs/cgroup") -> CgroupMode {
        if berth_fs_magic(root) == cgroup2Magic { return .v2(root: root) }
        return .v1(root: root)
    }

    public func driver(parent: String = "berth") -> any CgroupDriver {
        switch self {
        case .v1(let root): return CgroupV1Driver(root: root, parent: parent)
        case .v2(let root): return CgroupV2Driver(root: root, parent: parent)
        }
    }
}
