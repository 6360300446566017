import BerthCore
import CIsolation

#if canImport(Glibc)
    import Glibc
#endif

extension CgroupDriver {
    public func usage(_ name: String) -> CgroupUsage { usage(name, scope: .full) }
}

/// One VPS cgroup across whatever hierarchies the host has. Detect the mode once with
/// `CgroupMode.detect()` and build the matching driver.
public protocol CgroupDriver: Sendable {
    var modeName: String { get }
    /// Creates the VPS's cgroup(s) under the berth parent; existing ones are kept.
    func create(_ name: String) throws(IsolationError)
    func apply(_ name: String, _ limits: Limits) throws(IsolationError)
    /// The cgroup.procs files a process writes "0" into to join the VPS's cgroup(s).
    func procsFiles(_ name: String) -> [String]
    func pids(_ name: String) -> [Int32]
    /// SIGKILLs every process in the cgroup and returns when the kill has been issued to all.
    func killAll(_ name: String) throws(IsolationError)
    /// Freezes every process of the cgroup and returns once all are frozen (a snapshot's
    /// instant); throws, thawed again, when they are not frozen within `timeoutMs`.
    func freeze(_ name: String, timeoutMs: Int) throws(IsolationError)
    func thaw(_ name: String) throws(IsolationError)
    /// Removes the cgroup(s); the caller has made sure no process is left.
    func destroy(_ name: String) throws(IsolationError)
    func exists(_ name: String) -> Bool
    func usage(_ name: String, scope: UsageScope) -> CgroupUsage
    /// Names of VPS cgroups currently present (for leftover detection).
    func list() -> [String]
    /// The writes that set `io` for the VPS's disk `device` ("7:3" or the placeholder). Unset
    /// limits are written as "no limit", so the result also lifts earlier ones. A requested limit
    /// the host cannot enforce throws `.unsupported`.
    func ioSettings(_ name: String, _ io: Limits, device: String) throws(IsolationError) -> [CgroupWrite]
    /// The cgroup filesystems a VPS sees under its own /sys/fs/cgroup (rooted at its cgroup by
    /// the cgroup namespace), so a distro's init (systemd) can track its services.
    func guestMounts() -> [CgroupGuestMount]
    /// Hands the VPS's writable hierarchy to the root of its user namespace (`uid`/`gid` on the
    /// host), as cgroup delegation prescribes: the directory and the files that create and move.
    func delegate(_ name: String, uid: UInt32, gid: UInt32) throws(IsolationError)
}

/// Polls `frozen` every millisecond up to `timeoutMs`; false when it never held.
func awaitFrozen(timeoutMs: Int, _ frozen: () -> Bool) -> Bool {
    for _ in 0...max(timeoutMs, 0) {
        if frozen() { return true }
        usleep(1_000)
    }
    return frozen()
}

/// chown of a delegated cgroup directory and its delegation files (missing ones are skipped).
func chownCgroup(_ dir: String, files: [String], uid: UInt32, gid: UInt32) throws(IsolationError) {
    for path in [dir] + files.map({ dir + "/" + $0 }) where FileIO.exists(path) {
        if lchown(path, uid, gid) != 0 { throw IsolationError.sys("chown \(path)") }
    }
}

/// Removes a cgroup and every cgroup below it (a VPS's systemd makes its own slices and
/// scopes), deepest first, with a few retries: a cgroup stays busy for a moment after its last
/// task exited.
public func removeCgroupDirectory(_ path: String, depth: Int = 0) throws(IsolationError) {
    // A VPS can nest cgroups in its writable hierarchy; the bound keeps this walk finite.
    guard depth < 64 else { throw IsolationError(.unsupported, "cgroup \(path) is nested more than 64 levels deep") }
    for child in FileIO.listDirectory(path) where FileIO.isDirectory(path + "/" + child) {
        try removeCgroupDirectory(path + "/" + child, depth: depth + 1)
    }
    for attempt in 0..<50 {
        if rmdir(path) == 0 || errno == ENOENT { return }
        if errno != EBUSY || attempt == 49 { throw IsolationError.sys("rmdir \(path)") }
        usleep(20_000)
    }
}

/// Empties a VPS's cgroup2 subtree (its processes are gone: the kernel ended them with the old
/// init) and disables the controllers its init had enabled for children.
public func resetCgroupSubtree(_ directory: String) throws(IsolationError) {
    for child in FileIO.listDirectory(directory) where FileIO.isDirectory(directory + "/" + child) {
        try removeCgroupDirectory(directory + "/" + child)
    }
    let enabled = (FileIO.read(directory + "/cgroup.subtree_control") ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" })
    if !enabled.isEmpty {
        try FileIO.write(directory + "/cgroup.subtree_control", enabled.map { "-" + $0 }.joined(separator: " "))
    }
}

/// The pids in a cgroup and all cgroups below it.
func readPidTree(_ path: String, depth: Int = 0) -> [Int32] {
    var pids = readPidList(path + "/cgroup.procs")
    guard depth < 64 else { return pids }
    for child in FileIO.listDirectory(path) where FileIO.isDirectory(path + "/" + child) {
        pids += readPidTree(path + "/" + child, depth: depth + 1)
    }
    return pids
}

/// The cgroup mounts of this (the host's) mount namespace.
func hostCgroupMounts(mountinfo: String) -> [MountEntry] {
    MountEntry.parse(mountinfo: mountinfo).filter { $0.type == "cgroup" || $0.type == "cgroup2" }
}

/// A limit file's value: "max" and v1's "unlimited" (a value near 2^63) read as nil.
func readLimit(_ path: String) -> UInt64? {
    guard let value = readNumber(path) else { return nil }
    return value >= 1 << 62 ? nil : value
}

/// "key value" lines (memory.events, cpu.stat, pids.events).
func readKeyed(_ file: String, _ key: String) -> UInt64? { keyedValue(FileIO.read(file, control: true) ?? "", key) }

/// The value of `key` in "key value" lines (cpu.stat, pids.events, memory.events, ...).
func keyedValue(_ text: String, _ key: String) -> UInt64? {
    for line in text.split(separator: "\n") {
        let parts = line.split(separator: " ")
        if parts.count == 2 && parts[0] == key { return UInt64(parts[1]) }
    }
    return nil
}

func readNumber(_ path: String) -> UInt64? {
    guard let text = FileIO.read(path, control: true) else { return nil }
    return UInt64(text.split(whereSeparator: { $0 == "\n" || $0 == " " }).first ?? "")
}

func readPidList(_ path: String) -> [Int32] {
    (FileIO.read(path) ?? "").split(separator: "\n").compactMap { Int32($0) }
}
