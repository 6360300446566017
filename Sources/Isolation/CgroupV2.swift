import BerthCore

#if canImport(Glibc)
    import Glibc
#endif

/// cgroup v2: one tree, `<root>/<parent>/<name>`. Controllers are enabled in the parent's
/// subtree_control (never in the leaf: the no-internal-processes rule).
public struct CgroupV2Driver: CgroupDriver {
    public let root: String
    public let parent: String
    public var modeName: String { "v2" }

    public static let wantedControllers = ["cpu", "cpuset", "memory", "pids", "io"]

    /// Off only for unit tests on a fake tree (a plain directory cannot take a BPF program).
    let attachDeviceFilter: Bool

    public init(root: String, parent: String, attachDeviceFilter: Bool = true) {
        self.root = root
        self.parent = parent
        self.attachDeviceFilter = attachDeviceFilter
    }

    func path(_ name: String) -> String { "\(root)/\(parent)/\(name)" }

    public func create(_ name: String) throws(IsolationError) {
        let parentPath = "\(root)/\(parent)"
        try FileIO.makeDirectories(parentPath)
        try enableControllers(at: root)
        try enableControllers(at: parentPath)
        let dir = path(name)
        if mkdir(dir, 0o755) != 0 && errno != EEXIST { throw IsolationError.sys("mkdir \(dir)") }
        // v2 has no devices controller files: the allowlist is a BPF program on the cgroup.
        if attachDeviceFilter { try DeviceAllowlist.attach(toCgroup: dir) }
    }

    /// Enables in `dir`'s subtree_control every wanted controller that `dir` itself offers.
    private func enableControllers(at dir: String) throws(IsolationError) {
        let available = Set((FileIO.read(dir + "/cgroup.controllers") ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
        let enabled = Set((FileIO.read(dir + "/cgroup.subtree_control") ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
        let missing = Self.wantedControllers.filter { available.contains($0) && !enabled.contains($0) }
        if missing.isEmpty { return }
        try FileIO.write(dir + "/cgroup.subtree_control", missing.map { "+" + $0 }.joined(separator: " "))
    }

    public func apply(_ name: String, _ limits: Limits) throws(IsolationError) {
        let dir = path(name)
        try set(dir, "memory.max", limits.memoryBytes.map(String.init), requested: limits.memoryBytes != nil, what: "--memory")
        // VSwap: swap.max is the swap on top of memory.max (v1's memsw is the sum).
        try set(
            dir, "memory.swap.max", limits.memoryBytes == nil ? nil : String(limits.swapBytes ?? 0),
            // No swap (`--swap 0`) is what a host without swap accounting gives anyway.
            requested: (limits.swapBytes ?? 0) > 0, what: "--swap")
        try set(dir, "pids.max", limits.pids.map(String.init), requested: limits.pids != nil, what: "--pids")
        try set(
            dir, "cpu.weight", String(Limits.cpuWeight(units: limits.cpuUnits ?? Limits.defaultCpuUnits)),
            requested: limits.cpuUnits != nil, what: "--cpu-units")
        try set(
            dir, "cpu.max", (limits.cpuLimitPercent.map { String(Limits.cfsQuota(percent: $0)) } ?? "max") + " \(Limits.cfsPeriodMicroseconds)",
            requested: limits.cpuLimitPercent != nil, what: "--cpu-limit")
        try set(dir, "cpuset.cpus", limits.cpus ?? "", requested: limits.cpus != nil, what: "--cpus")
    }

    /// Writes `value` (nil = the kernel's "max") to a control file. A file that is missing means
    /// the host does not offer that controller: fine for a default, an error for a limit the
    /// operator asked for — a limit must never be dropped silently.
    private func set(_ dir: String, _ file: String, _ value: String?, requested: Bool, what: String) throws(IsolationError) {
        let full = dir + "/" + file
        guard FileIO.exists(full) else {
            if requested {
                let controller = String(file.prefix { $0 != "." })
                throw IsolationError(
                    .unsupported, "\(what) needs the cgroup v2 \(controller) controller, which this host does not enable for \(root)/\(parent)")
            }
            return
        }
        try FileIO.write(full, value ?? "max")
    }

    public func ioSettings(_ name: String, _ io: Limits, device: String) throws(IsolationError) -> [CgroupWrite] {
        let dir = path(name)
        var writes: [CgroupWrite] = []
        if let weight = io.ioWeight {
            if FileIO.exists(dir + "/io.bfq.weight") {
                writes.append(CgroupWrite(path: dir + "/io.bfq.weight", value: String(weight)))
            } else if FileIO.exists(dir + "/io.ioWeight") {
                // io.ioWeight is 1-10000 with default 100, BFQ's 1-1000 scaled alike.
                writes.append(CgroupWrite(path: dir + "/io.ioWeight", value: "default \(weight)"))
            } else {
                throw IsolationError(
                    .unsupported, "--io-weight needs BFQ or the io.cost controller (io.bfq.weight / io.ioWeight), which this host does not offer")
            }
        }
        let throttled = io.ioBytesPerSecond != nil || io.ioOperationsPerSecond != nil
        guard FileIO.exists(dir + "/io.max") else {
            if throttled {
                throw IsolationError(.unsupported, "--io-bps/--io-iops need the cgroup v2 io controller, which this host does not enable for \(root)/\(parent)")
            }
            return writes
        }
        let bps = io.ioBytesPerSecond.map(String.init) ?? "max", iops = io.ioOperationsPerSecond.map(String.init) ?? "max"
        writes.append(CgroupWrite(path: dir + "/io.max", value: "\(device) rbps=\(bps) wbps=\(bps) riops=\(iops) wiops=\(iops)"))
        return writes
    }

    public func procsFiles(_ name: String) -> [String] { [path(name) + "/cgroup.procs"] }

    /// Includes the cgroups a VPS's own init made below its cgroup.
    public func pids(_ name: String) -> [Int32] { readPidTree(path(name)) }

    /// The VPS's cgroup as the whole tree, writable so its systemd can make slices and scopes.
    /// Its own limit files are at the root of that view: a host that mounts cgroup2 with
    /// `nsdelegate` (systemd hosts do) refuses writes to them from inside the namespace.
    public func guestMounts() -> [CgroupGuestMount] {
        [CgroupGuestMount(type: "cgroup2", directory: "", options: "", writable: true)]
    }

    public func killAll(_ name: String) throws(IsolationError) {
        let killFile = path(name) + "/cgroup.kill"
        if FileIO.exists(killFile) {
            try FileIO.write(killFile, "1")
            return
        }
        for _ in 0..<10 {
            let victims = pids(name)
            if victims.isEmpty { return }
            for pid in victims { kill(pid, SIGKILL) }
            usleep(5_000)
        }
    }

    public func freeze(_ name: String, timeoutMs: Int) throws(IsolationError) {
        let freezeFile = path(name) + "/cgroup.freeze"
        guard FileIO.exists(freezeFile) else {
            throw IsolationError(.unsupported, "the kernel has no cgroup.freeze (cgroup v2 freezer, linux 5.2)", stage: "freeze")
        }
        try FileIO.write(freezeFile, "1")
        let events = path(name) + "/cgroup.events"
        guard awaitFrozen(timeoutMs: timeoutMs, { keyedValue(FileIO.read(events, control: true) ?? "", "frozen") == 1 }) else {
            try? FileIO.write(freezeFile, "0")
            throw IsolationError(.cgroup, "the VPS's processes did not freeze within \(timeoutMs) ms", stage: "freeze")
        }
    }

    public func thaw(_ name: String) throws(IsolationError) {
        let freezeFile = path(name) + "/cgroup.freeze"
        if FileIO.exists(freezeFile) { try FileIO.write(freezeFile, "0") }
    }

    public func destroy(_ name: String) throws(IsolationError) {
        if FileIO.exists(path(name)) { try removeCgroupDirectory(path(name)) }
    }

    public func exists(_ name: String) -> Bool { FileIO.isDirectory(path(name)) }

    /// cgroup-v2.rst "Delegation": the directory, cgroup.procs, cgroup.threads and
    /// cgroup.subtree_control; the limit files stay the host's.
    public func delegate(_ name: String, uid: UInt32, gid: UInt32) throws(IsolationError) {
        // Bounds on what the VPS may build below (the host walks it on stop and destroy).
        for (file, value) in [("cgroup.max.depth", Self.maxDelegatedDepth), ("cgroup.max.descendants", Self.maxDelegatedDescendants)]
        where FileIO.exists(path(name) + "/" + file) {
            try FileIO.write(path(name) + "/" + file, String(value))
        }
        try chownCgroup(path(name), files: ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"], uid: uid, gid: gid)
    }

    /// systemd nests four or five levels (user.slice/user-0.slice/session-1.scope); the host's
    /// removal walk goes to 64.
    public static let maxDelegatedDepth = 32
    public static let maxDelegatedDescendants = 4096

    public func usage(_ name: String, scope: UsageScope) -> CgroupUsage {
        var usage = CgroupUsage()
        let dir = path(name)
        usage.memoryBytes = readNumber(dir + "/memory.current") ?? 0
        usage.memoryPeakBytes = readNumber(dir + "/memory.peak") ?? 0
        usage.memoryLimitBytes = readLimit(dir + "/memory.max")
        let memoryEvents = FileIO.read(dir + "/memory.events", control: true) ?? ""
        usage.memoryFailcount = keyedValue(memoryEvents, "max") ?? 0
        usage.oomKills = keyedValue(memoryEvents, "oom_kill") ?? 0
        usage.pids = readNumber(dir + "/pids.current") ?? 0
        usage.pidsFailcount = readKeyed(dir + "/pids.events", "max") ?? 0
        if scope == .full {
            usage.swapBytes = readNumber(dir + "/memory.swap.current") ?? 0
            usage.swapPeakBytes = readNumber(dir + "/memory.swap.peak") ?? 0
            usage.swapLimitBytes = readLimit(dir + "/memory.swap.max")
            usage.swapFailcount = readKeyed(dir + "/memory.swap.events", "fail") ?? 0
            usage.pidsPeak = readNumber(dir + "/pids.peak") ?? 0
            usage.pidsLimit = readLimit(dir + "/pids.max")
        }
        let cpuStat = FileIO.read(dir + "/cpu.stat", control: true) ?? ""
        usage.cpuNanoseconds = (keyedValue(cpuStat, "usage_usec") ?? 0) * 1000
        // io.stat: one line per device, "8:0 rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N".
        for line in (FileIO.read(dir + "/io.stat", control: true) ?? "").split(separator: "\n") {
            for field in line.split(separator: " ").dropFirst() {
                let pair = field.split(separator: "=")
                guard pair.count == 2, let value = UInt64(pair[1]) else { continue }
                switch pair[0] {
                case "rbytes", "wbytes": usage.ioBytes += value
                case "rios", "wios": usage.ioOperations += value
                default: break
                }
            }
        }
        usage.cpuThrottledPeriods = keyedValue(cpuStat, "nr_throttled") ?? 0
        usage.cpuThrottledNanoseconds = (keyedValue(cpuStat, "throttled_usec") ?? 0) * 1000
        return usage
    }

    public func list() -> [String] {
        FileIO.listDirectory("\(root)/\(parent)").filter { FileIO.isDirectory("\(root)/\(parent)/\($0)") }
    }

    /// The controllers lxcfs renders its per-VPS views from on a pure cgroup-v2 host whose
    /// cgroup2 mount is `root`. lxcfs (5.x) reads them once, at its start, from cgroup.controllers
    /// of the cgroup the host's PID 1 is in (`/init.scope` counts as its parent): where PID 1
    /// sits deeper, in a cgroup whose parent enables only some controllers, lxcfs shows every
    /// VPS the host's CPUs. `pidOneCgroup` is the text of /proc/1/cgroup; nil when it names no
    /// cgroup2 path. (A hybrid host's lxcfs uses the v1 hierarchies instead.)
    public static func controllersSeenByLxcfs(root: String, pidOneCgroup: String) -> Set<String>? {
        guard let line = pidOneCgroup.split(separator: "\n").first(where: { $0.hasPrefix("0::/") }) else { return nil }
        var path = String(line.dropFirst(3))
        if path.hasSuffix("/init.scope") { path.removeLast("/init.scope".count) }
        if path.hasSuffix("/") { path.removeLast() }
        guard let text = FileIO.read(root + path + "/cgroup.controllers") else { return nil }
        return Set(text.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
    }
}
