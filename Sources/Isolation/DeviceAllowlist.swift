import CIsolation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The devices a VPS may use, in cgroup-v1 syntax: the OCI default set plus its own ptys.
/// mknod stays allowed ("m") so package scripts work, but opening anything else fails.
/// v1 writes these rules to devices.allow; v2 compiles them into a BPF device program.
public enum DeviceAllowlist {
    public static let rules = [
        "c *:* m", "b *:* m",
        "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
        "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm",
    ]

    /// "c 1:3 rwm" → berth_device_rule; nil for anything malformed.
    public static func parse(_ rule: String) -> berth_device_rule? {
        let parts = rule.split(separator: " ")
        guard parts.count == 3, let type = parts[0].first, "abc".contains(type), parts[0].count == 1 else { return nil }
        let numbers = parts[1].split(separator: ":", omittingEmptySubsequences: false)
        guard numbers.count == 2 else { return nil }
        func number(_ text: Substring) -> Int32? { text == "*" ? -1 : Int32(text).flatMap { $0 >= 0 ? $0 : nil } }
        guard let major = number(numbers[0]), let minor = number(numbers[1]) else { return nil }
        var access: UInt32 = 0
        for flag in parts[2] {
            switch flag {
            case "m": access |= 1
            case "r": access |= 2
            case "w": access |= 4
            default: return nil
            }
        }
        return berth_device_rule(type: CChar(type.asciiValue!), major: major, minor: minor, access: access)
    }

    /// Attaches the allowlist to a cgroup-v2 directory as a BPF device program. A cgroup that
    /// already has one (a leftover of this VPS's previous run) keeps it.
    public static func attach(toCgroup directory: String, rules: [String] = rules) throws(IsolationError) {
        let programFD = try program(for: rules)
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 { throw IsolationError.sys("open \(directory)") }
        defer { close(fd) }
        if berth_attach_device_program(fd, programFD) != 0 && errno != EEXIST {
            throw IsolationError.sys("attach the device allowlist to \(directory)")
        }
    }

    /// One loaded program per rule list, attached to every VPS's cgroup: the kernel verifies
    /// it once instead of at every start, and holds one copy instead of one per VPS.
    private static let loadedPrograms = Mutex<[[String]: Int32]>([:])

    /// The loaded program of `rules`. A failed load is not kept: the next attach tries again.
    static func program(for rules: [String]) throws(IsolationError) -> Int32 {
        try loadedPrograms.withLock { (loaded: inout [[String]: Int32]) throws(IsolationError) -> Int32 in
            if let fd = loaded[rules] { return fd }
            let parsed = rules.compactMap(parse)
            guard parsed.count == rules.count else { throw IsolationError(.invalidSpec, "malformed device rule in \(rules)") }
            let fd = parsed.withUnsafeBufferPointer { berth_load_device_filter($0.baseAddress, Int32($0.count)) }
            if fd < 0 { throw IsolationError.sys("load the device allowlist program") }
            loaded[rules] = fd
            return fd
        }
    }
}
