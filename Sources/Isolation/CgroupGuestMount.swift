import CIsolation

/// One cgroup filesystem mounted inside a VPS at /sys/fs/cgroup/`directory` (or at
/// /sys/fs/cgroup itself for cgroup2, `directory` empty).
public struct CgroupGuestMount: Equatable, Sendable {
    /// "cgroup" (v1) or "cgroup2".
    public var type: String
    public var directory: String
    /// v1 mount options naming the hierarchy ("cpu,cpuacct", "none,name=systemd").
    public var options: String
    /// Only the hierarchy the guest's init manages is writable; resource controllers stay
    /// read-only so a VPS cannot lift its own limits.
    public var writable: Bool
    /// Extra names for a joined hierarchy ("cpu" and "cpuacct" for "cpu,cpuacct"), as on a host.
    public var aliases: [String]

    public init(type: String, directory: String, options: String, writable: Bool, aliases: [String] = []) {
        self.type = type
        self.directory = directory
        self.options = options
        self.writable = writable
        self.aliases = aliases
    }

    /// "TYPE DIRECTORY OPTIONS rw|ro ALIAS,..." for the spawn spec.
    public var specText: String {
        [
            type, directory.isEmpty ? "." : directory, options.isEmpty ? "-" : options, writable ? "rw" : "ro",
            aliases.isEmpty ? "-" : aliases.joined(separator: ","),
        ].joined(separator: " ")
    }

    public static func parse(_ text: String) -> CgroupGuestMount? {
        let parts = text.split(separator: " ").map(String.init)
        guard parts.count == 5, parts[0] == "cgroup" || parts[0] == "cgroup2", parts[3] == "rw" || parts[3] == "ro" else { return nil }
        let directory = parts[1] == "." ? "" : parts[1]
        let names = [directory] + (parts[4] == "-" ? [] : parts[4].split(separator: ",").map(String.init))
        // Plain names only: these become entries of a fresh tmpfs inside the VPS.
        guard names.allSatisfy({ !$0.contains("/") && $0 != ".." }), parts[0] == "cgroup2" || !directory.isEmpty else { return nil }
        return CgroupGuestMount(
            type: parts[0], directory: directory, options: parts[2] == "-" ? "" : parts[2],
            writable: parts[3] == "rw", aliases: parts[4] == "-" ? [] : Array(names.dropFirst()))
    }
}
