#if canImport(Glibc)
    import Glibc
#endif

/// Facts about a host process read from /proc, used to recognise a VPS init after an agent
/// restart: a pid alone can be reused, a (pid, start time) pair cannot.
public enum HostProcess {
    /// `pid` lives in a user namespace other than the caller's (a VPS with its own id map).
    public static func inOtherUserNamespace(pid: Int32) -> Bool {
        var own = stat(), theirs = stat()
        guard stat("/proc/self/ns/user", &own) == 0, stat("/proc/\(pid)/ns/user", &theirs) == 0 else { return false }
        return own.st_ino != theirs.st_ino || own.st_dev != theirs.st_dev
    }

    /// Field 22 of /proc/PID/stat (start time in clock ticks since boot), or nil if gone.
    public static func startTime(pid: Int32) -> UInt64? {
        guard let stat = FileIO.read("/proc/\(pid)/stat") else { return nil }
        return parseStartTime(stat: stat)
    }

    /// The comm field may hold spaces and parentheses: parse from the last ')'.
    public static func parseStartTime(stat: String) -> UInt64? {
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state); start time is field 22.
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    public static func isAlive(pid: Int32, startTime: UInt64) -> Bool {
        guard pid > 0, let now = self.startTime(pid: pid) else { return false }
        return now == startTime
    }
}
