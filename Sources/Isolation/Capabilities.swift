import CLibcap

#if canImport(Glibc)
    import Glibc
#endif

/// Capability policy (security.md §2). A VPS in its own user namespace keeps the full set except
/// what every runtime drops (LXC's list): inside the namespace capabilities reach only what the
/// namespace owns. A `--privileged` VPS shares the host's user namespace, where a capability is
/// host privilege: it gets the "Ours" column, which also drops what is host-global or bypasses a
/// limit on a mainline kernel.
public enum Capabilities {
    /// Never granted, whatever the VPS's settings: host-global even inside a user namespace.
    public static let neverGranted = ["cap_sys_module", "cap_sys_rawio", "cap_sys_time", "cap_mac_admin", "cap_mac_override"]

    /// Dropped by default from a VPS with its own user namespace.
    public static let usernsDrop = neverGranted

    /// Dropped by default from a privileged VPS (no user namespace).
    public static let baselineDrop = [
        "cap_sys_module", "cap_sys_rawio", "cap_sys_time", "cap_mac_admin", "cap_mac_override",
        "cap_sys_nice",  // SCHED_FIFO escapes cpu limits
        "cap_sys_resource",  // ignores disk quota hard limits
        "cap_sys_ptrace",  // eases attacks on the exec helper
        "cap_dac_read_search",  // open_by_handle_at ("shocker")
        "cap_sys_admin",  // host root without a user namespace
        "cap_sys_pacct", "cap_syslog", "cap_audit_control", "cap_audit_read", "cap_wake_alarm",
        "cap_block_suspend", "cap_perfmon", "cap_bpf", "cap_checkpoint_restore",
    ]

    /// The libcap name ("cap_net_admin") of `name` given as "NET_ADMIN", "net_admin" or
    /// "cap_net_admin"; nil when the name is no capability.
    public static func canonicalName(_ name: String) -> String? {
        let lower = name.lowercased()
        let full = lower.hasPrefix("cap_") ? lower : "cap_" + lower
        guard full.utf8.allSatisfy({ (97...122).contains($0) || $0 == UInt8(ascii: "_") }) else { return nil }
        var value: cap_value_t = 0
        return cap_from_name(full, &value) == 0 ? full : nil
    }

    /// What to drop for a VPS: the default for its kind with `overrides` (canonical name → keep)
    /// applied. `neverGranted` stays dropped; asking for one of them is an error.
    public static func dropList(userns: Bool, overrides: [String: Bool]) throws(IsolationError) -> [String] {
        var drop = userns ? usernsDrop : baselineDrop
        for (name, keep) in overrides.sorted(by: { $0.key < $1.key }) {
            if keep {
                if neverGranted.contains(name) {
                    throw IsolationError(.invalidSpec, "\(name) is never granted to a VPS: it is host-global on a mainline kernel")
                }
                drop.removeAll { $0 == name }
            } else if !drop.contains(name) {
                drop.append(name)
            }
        }
        return drop
    }

    /// Names of the capabilities the running kernel has that `mask` (a CapBnd value) lacks.
    public static func names(missingFrom mask: UInt64) -> [String] {
        var names: [String] = []
        for value in 0..<min(cap_max_bits(), 64) where mask & (1 << UInt64(value)) == 0 {
            guard let name = cap_to_name(cap_value_t(value)) else { continue }
            names.append(String(cString: name))
            cap_free(UnsafeMutableRawPointer(name))
        }
        return names
    }

    /// The bounding set of a running process (CapBnd of /proc/PID/status).
    public static func boundingMask(pid: Int32) -> UInt64? {
        for line in (FileIO.read("/proc/\(pid)/status") ?? "").split(separator: "\n") where line.hasPrefix("CapBnd:") {
            return UInt64(line.dropFirst("CapBnd:".count).trimmingPrefix(while: { $0 == " " || $0 == "\t" }), radix: 16)
        }
        return nil
    }

    /// Removes `names` from the bounding, effective, permitted and inheritable sets and clears
    /// the ambient set. Unknown names (older kernels/libcap) are an error: a silently kept
    /// capability is worse than a failed start.
    public static func drop(_ names: [String]) throws(IsolationError) {
        var values: [cap_value_t] = []
        for name in names {
            var value: cap_value_t = 0
            if cap_from_name(name, &value) != 0 {
                throw IsolationError(.invalidSpec, "unknown capability \(name)")
            }
            // A capability newer than the running kernel does not exist to drop.
            if value > cap_max_bits() - 1 { continue }
            values.append(value)
        }
        for value in values {
            if cap_drop_bound(value) != 0 { throw IsolationError.sys("drop \(String(cString: cap_to_name(value))) from bounding set") }
        }
        _ = cap_reset_ambient()
        if values.isEmpty { return }
        guard let caps = cap_get_proc() else { throw IsolationError.sys("cap_get_proc") }
        defer { cap_free(UnsafeMutableRawPointer(caps)) }
        try values.withUnsafeBufferPointer { (buffer) throws(IsolationError) in
            for flag in [CAP_EFFECTIVE, CAP_PERMITTED, CAP_INHERITABLE] {
                if cap_set_flag(caps, flag, Int32(buffer.count), buffer.baseAddress, CAP_CLEAR) != 0 {
                    throw IsolationError.sys("cap_set_flag")
                }
            }
        }
        if cap_set_proc(caps) != 0 { throw IsolationError.sys("cap_set_proc") }
    }
}
