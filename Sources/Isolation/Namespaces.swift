/// clone(2)/setns(2) namespace flags (defined here: not every libc module exports them all).
public enum NamespaceFlag {
    public static let mount: UInt = 0x0002_0000
    public static let cgroup: UInt = 0x0200_0000
    public static let uts: UInt = 0x0400_0000
    public static let ipc: UInt = 0x0800_0000
    public static let user: UInt = 0x1000_0000
    public static let pid: UInt = 0x2000_0000
    public static let net: UInt = 0x4000_0000

    /// What every VPS gets today. The cgroup namespace is unshared by the child only after it
    /// joined its cgroup, so it is not in this set; user namespaces come with the hardening work.
    public static let vps: UInt = mount | uts | ipc | pid | net
    /// What a process joining a running VPS enters.
    public static let join: UInt = mount | uts | ipc | pid | net | cgroup
}

/// How a VPS init ended, as the monitor saw it through waitpid.
public enum InitExit: Equatable, Sendable {
    case exited(Int32)
    case signaled(Int32)

    public init(status: Int32) {
        if status & 0x7f == 0 { self = .exited((status >> 8) & 0xff) } else { self = .signaled(status & 0x7f) }
    }

    /// reboot(2) inside a PID namespace kills its init with SIGHUP (restart) or SIGINT
    /// (halt/poweroff) instead of touching the host: pid_namespaces(7).
    public var isRebootRequest: Bool { self == .signaled(1) }

    public var reason: String {
        switch self {
        case .exited(let code): return "init exited with code \(code)"
        case .signaled(1): return "reboot"
        case .signaled(2): return "poweroff"
        case .signaled(9): return "killed"
        case .signaled(let sig): return "init killed by signal \(sig)"
        }
    }

    /// Shell convention for exec results: 128 + signal number.
    public var shellCode: Int32 {
        switch self {
        case .exited(let code): return code
        case .signaled(let sig): return 128 + sig
        }
    }
}

/// O_PATH from <fcntl.h> (behind _GNU_SOURCE, so missing from the Glibc module).
public let O_PATH: Int32 = 0o10000000
