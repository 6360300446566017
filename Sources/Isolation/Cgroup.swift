import CIsolation

#if canImport(Glibc)
    import Glibc
#endif

/// A VPS's resource limits in one model (cgroup-v2 units where they exist, OpenVZ units where
/// operators think in them). nil = no limit. Each driver converts for its hierarchy.
public struct CgroupLimits: Equatable, Sendable {
    public var memoryBytes: UInt64?
    public var swapBytes: UInt64?
    public var pids: UInt32?
    /// OpenVZ cpuunits: relative weight, default 1000.
    public var cpuUnits: UInt32?
    /// % of one CPU (200 = two CPUs).
    public var cpuLimitPercent: UInt32?
    /// CPU list in cpuset syntax ("0-1,3").
    public var cpus: String?

    public init(
        memoryBytes: UInt64? = nil, swapBytes: UInt64? = nil, pids: UInt32? = nil,
        cpuUnits: UInt32? = nil, cpuLimitPercent: UInt32? = nil, cpus: String? = nil
    ) {
        self.memoryBytes = memoryBytes
        self.swapBytes = swapBytes
        self.pids = pids
        self.cpuUnits = cpuUnits
        self.cpuLimitPercent = cpuLimitPercent
        self.cpus = cpus
    }

    public static let defaultCpuUnits: UInt32 = 1000
    public static let cfsPeriodMicroseconds: UInt64 = 100_000

    /// cgroup v2 cpu.weight (1..10000, default 100) from cpuunits (default 1000).
    public static func cpuWeight(units: UInt32) -> UInt32 { min(10_000, max(1, units / 10)) }
    /// cgroup v1 cpu.shares (2..262144, default 1024) from cpuunits, keeping ratios exact.
    public static func cpuShares(units: UInt32) -> UInt64 { min(262_144, max(2, UInt64(units) * 1024 / 1000)) }
    /// CFS quota in µs per 100 ms period.
    public static func cfsQuota(percent: UInt32) -> UInt64 { UInt64(percent) * cfsPeriodMicroseconds / 100 }
}

/// How much of a VPS's accounting a reader needs. A Prometheus scrape reads every running VPS
/// at once and exports no swap or pids peak/limit figures: skipping those files cuts a sweep's
/// reads by about a third.
public enum UsageScope: Sendable {
    case full
    /// What `/metrics` exports: memory (usage, peak, limit, failures, OOM kills), pids and their
    /// failures, CPU time and throttling, I/O bytes. The other fields stay zero or nil.
    case scrape
}

extension CgroupDriver {
    public func usage(_ name: String) -> CgroupUsage { usage(name, scope: .full) }
}

/// Usage counters in the beancounter shape (held, peak, limit, failcount). A nil limit means
/// unlimited; a peak of 0 means the kernel does not track it for that resource.
public struct CgroupUsage: Equatable, Sendable {
    public var memoryBytes: UInt64 = 0
    public var memoryPeakBytes: UInt64 = 0
    public var memoryLimitBytes: UInt64?
    public var memoryFailcount: UInt64 = 0
    /// Processes the OOM killer ended inside this cgroup.
    public var oomKills: UInt64 = 0
    public var ioBytes: UInt64 = 0
    public var ioOperations: UInt64 = 0
    public var swapBytes: UInt64 = 0
    public var swapPeakBytes: UInt64 = 0
    public var swapLimitBytes: UInt64?
    public var swapFailcount: UInt64 = 0
    public var pids: UInt64 = 0
    public var pidsPeak: UInt64 = 0
    public var pidsLimit: UInt64?
    public var pidsFailcount: UInt64 = 0
    public var cpuNanoseconds: UInt64 = 0
    public var cpuThrottledPeriods: UInt64 = 0
    public var cpuThrottledNanoseconds: UInt64 = 0
    public init() {}
}

/// Disk I/O limits of a VPS. Throttles apply to its own loop device (the VPS's disk), so they
/// need the device number, known once the disk is attached.
public struct IOLimits: Equatable, Sendable {
    /// Proportional weight (BFQ units, 1-1000, default 100) on a shared scheduler.
    public var weight: UInt32?
    /// Bytes per second, read and write each.
    public var bytesPerSecond: UInt64?
    /// Operations per second, read and write each.
    public var operationsPerSecond: UInt32?

    public init(weight: UInt32? = nil, bytesPerSecond: UInt64? = nil, operationsPerSecond: UInt32? = nil) {
        self.weight = weight
        self.bytesPerSecond = bytesPerSecond
        self.operationsPerSecond = operationsPerSecond
    }

    /// Stands for the "MAJ:MIN" of the VPS's loop device in `ioSettings` values.
    public static let devicePlaceholder = "{device}"
}

/// One control-file write.
public struct CgroupWrite: Equatable, Sendable {
    public var path: String
    public var value: String
    public init(path: String, value: String) {
        self.path = path
        self.value = value
    }
}

/// One VPS cgroup across whatever hierarchies the host has. Detect the mode once with
/// `CgroupMode.detect()` and build the matching driver.
public protocol CgroupDriver: Sendable {
    var modeName: String { get }
    /// Creates the VPS's cgroup(s) under the berth parent; existing ones are kept.
    func create(_ name: String) throws(IsolationError)
    func apply(_ name: String, _ limits: CgroupLimits) throws(IsolationError)
    /// The cgroup.procs files a process writes "0" into to join the VPS's cgroup(s).
    func procsFiles(_ name: String) -> [String]
    func pids(_ name: String) -> [Int32]
    /// SIGKILLs every process in the cgroup and returns when the kill has been issued to all.
    func killAll(_ name: String) throws(IsolationError)
    /// Removes the cgroup(s); the caller has made sure no process is left.
    func destroy(_ name: String) throws(IsolationError)
    func exists(_ name: String) -> Bool
    func usage(_ name: String, scope: UsageScope) -> CgroupUsage
    /// Names of VPS cgroups currently present (for leftover detection).
    func list() -> [String]
    /// The writes that set `io` for the VPS's disk `device` ("7:3" or the placeholder). Unset
    /// limits are written as "no limit", so the result also lifts earlier ones. A requested limit
    /// the host cannot enforce throws `.unsupported`.
    func ioSettings(_ name: String, _ io: IOLimits, device: String) throws(IsolationError) -> [CgroupWrite]
    /// The cgroup filesystems a VPS sees under its own /sys/fs/cgroup (rooted at its cgroup by
    /// the cgroup namespace), so a distro's init (systemd) can track its services.
    func guestMounts() -> [CgroupGuestMount]
    /// Hands the VPS's writable hierarchy to the root of its user namespace (`uid`/`gid` on the
    /// host), as cgroup delegation prescribes: the directory and the files that create and move.
    func delegate(_ name: String, uid: UInt32, gid: UInt32) throws(IsolationError)
}

/// chown of a delegated cgroup directory and its delegation files (missing ones are skipped).
func chownCgroup(_ dir: String, files: [String], uid: UInt32, gid: UInt32) throws(IsolationError) {
    for path in [dir] + files.map({ dir + "/" + $0 }) where FileIO.exists(path) {
        if lchown(path, uid, gid) != 0 { throw IsolationError.sys("chown \(path)") }
    }
}

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
