/// A VPS's resource limits: the one model the agent stores (`config.json`'s `limits`, so the
/// Codable names are a file format), the cgroup drivers apply (Isolation/Limits+Cgroup.swift:
/// the unit conversions), the controller charges to nodes and the wire carries.
/// nil = no limit. cgroup-v2 units where they exist, OpenVZ units where operators think in them.
public struct Limits: Codable, Equatable, Sendable {
    public var memoryBytes: UInt64?
    /// Swap on top of `memoryBytes` (VSwap); nil with a memory limit means no swap.
    public var swapBytes: UInt64?
    public var pids: UInt32?
    /// OpenVZ cpuunits: a relative weight, default 1000.
    public var cpuUnits: UInt32?
    /// % of one CPU (200 = two CPUs).
    public var cpuLimitPercent: UInt32?
    /// The CPUs the VPS may run on: a cpuset list ("0-1,3") once the agent has stored it; on the
    /// wire also a count ("2"), see `CPUSelection`.
    public var cpus: String?
    public var files: UInt64?
    public var diskBytes: UInt64
    public var diskInodes: UInt64?
    public var ioWeight: UInt32?
    public var ioBytesPerSecond: UInt64?
    public var ioOperationsPerSecond: UInt32?

    /// The disk of a VPS created without `--disk`.
    public static let defaultDiskBytes: UInt64 = 2 << 30

    public init(diskBytes: UInt64 = Limits.defaultDiskBytes) { self.diskBytes = diskBytes }

    /// The keys of the stored form, for refusing unknown ones in a hand-edited file.
    public static let keys: Set<String> = [
        "memoryBytes", "swapBytes", "pids", "cpuUnits", "cpuLimitPercent", "cpus", "files", "diskBytes",
        "diskInodes", "ioWeight", "ioBytesPerSecond", "ioOperationsPerSecond",
    ]
}

extension Limits {
    /// These limits with `update` applied, every new value checked against Berth's bounds; the
    /// first bad one is `invalid-argument` naming its flag. `onlineCPUs` is the node's CPU count:
    /// with it a `--cpus` count becomes the list the kernel takes and CPU limits are checked
    /// against the node; without it (the controller, before a node is known) they are kept as given.
    public func merging(_ update: LimitsUpdate, onlineCPUs: Int?) throws(BerthError) -> Limits {
        func invalid(_ field: String, _ message: String) -> BerthError {
            BerthError(.invalidArgument, "\(field): \(message)", field: field)
        }
        var limits = self
        if let memory = update.memoryBytes {
            guard memory >= 16 << 20 else { throw invalid("memory", "must be at least 16M") }
            limits.memoryBytes = memory
        }
        if let swap = update.swapBytes {
            guard limits.memoryBytes != nil else { throw invalid("swap", "needs --memory: swap is granted on top of a memory limit") }
            limits.swapBytes = swap
        }
        if let pids = update.pids {
            guard pids >= 8 else { throw invalid("pids", "must be at least 8 (init and a shell need a few)") }
            limits.pids = pids
        }
        if let units = update.cpuUnits {
            guard (8...500_000).contains(units) else { throw invalid("cpu-units", "must be between 8 and 500000") }
            limits.cpuUnits = units
        }
        if let percent = update.cpuLimitPercent {
            if let onlineCPUs, percent > UInt32(onlineCPUs * 100) {
                throw invalid("cpu-limit", "\(percent)% exceeds this node's \(onlineCPUs) CPUs (\(onlineCPUs * 100)%)")
            }
            limits.cpuLimitPercent = percent
        }
        if let cpus = update.cpus {
            limits.cpus = try CPUSelection.checked(cpus, onlineCPUs: onlineCPUs)
        }
        if let files = update.files {
            guard files >= 64, files <= 1 << 20 else { throw invalid("files", "must be between 64 and 1048576") }
            limits.files = files
        }
        if let disk = update.diskBytes {
            guard disk <= 16 << 40 else { throw invalid("disk", "must be at most 16T") }
            guard disk >= 16 << 20 else { throw invalid("disk", "must be at least 16M") }
            limits.diskBytes = disk
        }
        if let inodes = update.diskInodes {
            guard inodes >= 1024, inodes <= 1 << 32 else { throw invalid("disk-inodes", "must be between 1024 and 4294967296") }
            limits.diskInodes = inodes
        }
        if let weight = update.ioWeight {
            guard (1...1000).contains(weight) else { throw invalid("io-weight", "must be between 1 and 1000 (BFQ weight, default 100)") }
            limits.ioWeight = weight
        }
        if let rate = update.ioBytesPerSecond {
            guard rate >= 64 << 10, rate <= 1 << 40 else { throw invalid("io-bps", "must be between 64K and 1T per second") }
            limits.ioBytesPerSecond = rate
        }
        if let iops = update.ioOperationsPerSecond {
            guard (10...10_000_000).contains(iops) else { throw invalid("io-iops", "must be between 10 and 10000000") }
            limits.ioOperationsPerSecond = iops
        }
        return limits
    }

    /// What a VPS with these limits commits to its node: the one rule behind the scheduler's
    /// ledger and the agent's `node show` (Docs/cluster.md, "What a VPS commits").
    public var commitment: Commitment {
        let cpuPercent: UInt64
        if let cap = cpuLimitPercent {
            cpuPercent = UInt64(cap)
        } else if let cpus {
            cpuPercent = UInt64(CPUSelection.count(cpus)) * 100
        } else {
            // Uncapped and unpinned: the VPS competes for CPU time by weight (cpuunits) and is
            // promised no share of its own, so it commits none (as OpenVZ and Incus count it).
            cpuPercent = 0
        }
        return Commitment(cpuPercent: cpuPercent, memoryBytes: (memoryBytes ?? 0) &+ (swapBytes ?? 0), diskBytes: diskBytes)
    }
}

extension Limits {
    /// Whether any disk I/O limit is set (they need the disk's device number to be written).
    public var hasIOLimits: Bool { ioWeight != nil || ioBytesPerSecond != nil || ioOperationsPerSecond != nil }

    /// Whether the disk I/O limits equal `other`'s.
    public func sameIO(as other: Limits) -> Bool {
        ioWeight == other.ioWeight && ioBytesPerSecond == other.ioBytesPerSecond && ioOperationsPerSecond == other.ioOperationsPerSecond
    }
}
