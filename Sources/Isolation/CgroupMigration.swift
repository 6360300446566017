import CIsolation

#if canImport(Glibc)
    import Glibc
#endif

/// Moving a process into a cgroup (every `exec`, every VPS start) write-locks the kernel's global
/// cgroup_threadgroup_rwsem. By default that lock favours its readers (fork and exit), so each
/// writer first waits for an RCU grace period: 7.4 ms median and up to 26 ms per migration on
/// this project's test host, unless another migration happened within the last grace period.
/// The cgroup option `favordynmods` (Linux 6.0+) inverts the trade: migrations stop waiting, and
/// fork and exit take a slightly slower path. The option belongs to the whole host, not a mount.
public enum CgroupMigrationTuning {
    /// What the node does to turn the option on, decided from its cgroup mounts.
    public enum Plan: Equatable, Sendable {
        /// A cgroup mount already has it.
        case alreadyOn(mountPoint: String)
        /// Reconfigure the cgroup2 superblock at `mountPoint` with its current options plus
        /// favordynmods: every cgroup2 option is a flag that a reconfigure sets or clears, so the
        /// current ones (nsdelegate, memory_recursiveprot, ...) must be passed again.
        case reconfigureCgroup2(mountPoint: String, options: [String])
        /// A v1-only host: mount a controller-less named hierarchy with the option and keep it
        /// mounted (older kernels drop the option with the hierarchy).
        case mountNamedHierarchy
    }

    public static let hierarchyName = "berth-favordynmods"

    public static func plan(mountinfo: String) -> Plan {
        let mounts = hostCgroupMounts(mountinfo: mountinfo)
        if let on = mounts.first(where: { $0.superOptions.contains("favordynmods") }) {
            return .alreadyOn(mountPoint: on.mountPoint)
        }
        if let unified = mounts.first(where: { $0.type == "cgroup2" }) {
            let kept = unified.superOptions.filter { $0 != "rw" && $0 != "ro" }
            return .reconfigureCgroup2(mountPoint: unified.mountPoint, options: kept + ["favordynmods"])
        }
        return .mountNamedHierarchy
    }

    /// Carries out `plan`; `namedHierarchyMountPoint` is an empty directory the agent owns.
    public static func apply(_ plan: Plan, namedHierarchyMountPoint: String) throws(IsolationError) {
        switch plan {
        case .alreadyOn:
            return
        case .reconfigureCgroup2(let mountPoint, let options):
            let copies = options.map { strdup($0) }
            defer { copies.forEach { free($0) } }
            let arguments: [UnsafePointer<CChar>?] = copies.map { UnsafePointer($0) }
            if berth_reconfigure_superblock(mountPoint, arguments, Int32(arguments.count)) != 0 {
                throw IsolationError.sys("reconfigure cgroup2 at \(mountPoint) with favordynmods")
            }
        case .mountNamedHierarchy:
            if mkdir(namedHierarchyMountPoint, 0o700) != 0 && errno != EEXIST {
                throw IsolationError.sys("mkdir \(namedHierarchyMountPoint)")
            }
            try check("mount the cgroup v1 hierarchy \(hierarchyName) with favordynmods") {
                mount(
                    hierarchyName, namedHierarchyMountPoint, "cgroup", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC),
                    "none,name=\(hierarchyName),favordynmods")
            }
        }
    }
}
