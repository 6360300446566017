import BerthCore

#if canImport(Glibc)
    import Glibc
#endif

/// cgroup v1: one directory per controller hierarchy, `<root>/<controller>/<parent>/<name>`.
public struct CgroupV1Driver: CgroupDriver {
    public let root: String
    public let parent: String
    public var modeName: String { "v1" }

    /// Hierarchies a VPS joins. cpuacct and named "systemd" are joined too so accounting and a
    /// distro's own init see a consistent placement.
    public static let controllers = ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd"]

    /// The hierarchies of `controllers` this host mounts, looked up once: every start, stop and
    /// accounting pass asks, and a host does not mount or unmount its hierarchies under the agent.
    let present: [String]

    public init(root: String, parent: String) {
        self.root = root
        self.parent = parent
        present = Self.controllers.filter { FileIO.isDirectory("\(root)/\($0)") }
    }

    func path(_ controller: String, _ name: String) -> String { "\(root)/\(controller)/\(parent)/\(name)" }

    public func create(_ name: String) throws(IsolationError) {
        for controller in present {
            let parentPath = "\(root)/\(controller)/\(parent)"
            if !FileIO.isDirectory(parentPath) { try FileIO.makeDirectories(parentPath) }
            // Also for an existing parent: one left empty by a crash would refuse every task.
            if controller == "cpuset" { try inheritCpuset(parentPath) }
            let dir = path(controller, name)
            if mkdir(dir, 0o755) != 0 && errno != EEXIST { throw IsolationError.sys("mkdir \(dir)") }
            if controller == "cpuset" { try inheritCpuset(dir) }
        }
        if present.contains("devices") {
            let dir = path("devices", name)
            try FileIO.write("\(dir)/devices.deny", "a")
            for rule in DeviceAllowlist.rules { try FileIO.write("\(dir)/devices.allow", rule) }
        }
        if present.contains("memory"), FileIO.exists(path("memory", name) + "/memory.use_hierarchy") {
            // Best effort: only settable before children exist and on old kernels.
            try? FileIO.write(path("memory", name) + "/memory.use_hierarchy", "1")
        }
    }

    /// A new v1 cpuset is empty and refuses tasks until cpus and mems are copied from its parent.
    private func inheritCpuset(_ dir: String) throws(IsolationError) {
        let up = FileIO.directory(of: dir)
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let current = (FileIO.read("\(dir)/\(file)") ?? "").trimmingNewlines
            if current.isEmpty {
                try FileIO.write("\(dir)/\(file)", (FileIO.read("\(up)/\(file)") ?? "").trimmingNewlines)
            }
        }
    }

    public func apply(_ name: String, _ limits: Limits) throws(IsolationError) {
        let memory = path("memory", name)
        if present.contains("memory") {
            let unlimited = "-1"
            let memText = limits.memoryBytes.map(String.init) ?? unlimited
            let memswFile = memory + "/memory.memsw.limit_in_bytes"
            let memsw: String
            if let mem = limits.memoryBytes { memsw = String(mem + (limits.swapBytes ?? 0)) } else { memsw = unlimited }
            // memsw must stay >= limit: raise in the order that keeps that true.
            if FileIO.exists(memswFile) {
                let currentMem = readNumber(memory + "/memory.limit_in_bytes") ?? .max
                let newMem = limits.memoryBytes ?? .max
                if newMem > currentMem {
                    try FileIO.write(memswFile, memsw)
                    try FileIO.write(memory + "/memory.limit_in_bytes", memText)
                } else {
                    try FileIO.write(memory + "/memory.limit_in_bytes", memText)
                    try FileIO.write(memswFile, memsw)
                }
            } else {
                try FileIO.write(memory + "/memory.limit_in_bytes", memText)
            }
        }
        if present.contains("pids") {
            try FileIO.write(path("pids", name) + "/pids.max", limits.pids.map(String.init) ?? "max")
        }
        if present.contains("cpu") {
            let cpu = path("cpu", name)
            try FileIO.write(cpu + "/cpu.shares", String(Limits.cpuShares(units: limits.cpuUnits ?? Limits.defaultCpuUnits)))
            try FileIO.write(cpu + "/cpu.cfs_period_us", String(Limits.cfsPeriodMicroseconds))
            try FileIO.write(cpu + "/cpu.cfs_quota_us", limits.cpuLimitPercent.map { String(Limits.cfsQuota(percent: $0)) } ?? "-1")
        }
        if present.contains("cpuset") {
            let cpus = limits.cpus ?? (FileIO.read("\(root)/cpuset/\(parent)/cpuset.cpus") ?? "").trimmingNewlines
            try FileIO.write(path("cpuset", name) + "/cpuset.cpus", cpus)
        }
    }

    public func ioSettings(_ name: String, _ io: Limits, device: String) throws(IsolationError) -> [CgroupWrite] {
        guard present.contains("blkio") else {
            if io.hasIOLimits { throw IsolationError(.unsupported, "I/O limits need the blkio cgroup controller, which this host does not mount") }
            return []
        }
        let dir = path("blkio", name)
        var writes: [CgroupWrite] = []
        if let weight = io.ioWeight {
            guard FileIO.exists(dir + "/blkio.bfq.weight") else {
                throw IsolationError(.unsupported, "--io-weight needs the BFQ I/O scheduler (blkio.bfq.weight), which this host does not offer")
            }
            writes.append(CgroupWrite(path: dir + "/blkio.bfq.weight", value: String(weight)))
        }
        // A value of 0 removes the device's throttle rule.
        let bps = String(io.ioBytesPerSecond ?? 0), iops = String(io.ioOperationsPerSecond ?? 0)
        for (file, value) in [("read_bps_device", bps), ("write_bps_device", bps), ("read_iops_device", iops), ("write_iops_device", iops)] {
            writes.append(CgroupWrite(path: dir + "/blkio.throttle." + file, value: "\(device) \(value)"))
        }
        return writes
    }

    public func procsFiles(_ name: String) -> [String] { present.map { path($0, name) + "/cgroup.procs" } }

    public func pids(_ name: String) -> [Int32] {
        let source = present.contains("pids") ? "pids" : (present.first ?? "pids")
        return readPidList(path(source, name) + "/cgroup.procs")
    }

    public func freeze(_ name: String, timeoutMs: Int) throws(IsolationError) {
        let state = path("freezer", name) + "/freezer.state"
        guard present.contains("freezer"), FileIO.exists(state) else {
            throw IsolationError(.unsupported, "the host has no freezer cgroup controller", stage: "freeze")
        }
        try FileIO.write(state, "FROZEN")
        // FREEZING until every task has stopped.
        guard awaitFrozen(timeoutMs: timeoutMs, { FileIO.read(state, control: true)?.hasPrefix("FROZEN") == true }) else {
            try? FileIO.write(state, "THAWED")
            throw IsolationError(.cgroup, "the VPS's processes did not freeze within \(timeoutMs) ms", stage: "freeze")
        }
    }

    public func thaw(_ name: String) throws(IsolationError) {
        let state = path("freezer", name) + "/freezer.state"
        if FileIO.exists(state) { try FileIO.write(state, "THAWED") }
    }

    /// v1 has no cgroup.kill: freeze, kill what is frozen (nothing can fork meanwhile), thaw.
    public func killAll(_ name: String) throws(IsolationError) {
        let freezer = path("freezer", name)
        let canFreeze = present.contains("freezer") && FileIO.exists(freezer)
        for _ in 0..<10 {
            if canFreeze { try? FileIO.write(freezer + "/freezer.state", "FROZEN") }
            let victims = pids(name)
            for pid in victims { kill(pid, SIGKILL) }
            if canFreeze { try? FileIO.write(freezer + "/freezer.state", "THAWED") }
            if victims.isEmpty { return }
            usleep(5_000)
            if pids(name).isEmpty { return }
        }
    }

    public func destroy(_ name: String) throws(IsolationError) {
        for controller in present where FileIO.exists(path(controller, name)) {
            try removeCgroupDirectory(path(controller, name))
        }
    }

    public func exists(_ name: String) -> Bool { present.contains { FileIO.isDirectory(path($0, name)) } }

    public func usage(_ name: String, scope: UsageScope) -> CgroupUsage {
        var usage = CgroupUsage()
        let memory = path("memory", name)
        usage.memoryBytes = readNumber(memory + "/memory.usage_in_bytes") ?? 0
        usage.memoryPeakBytes = readNumber(memory + "/memory.max_usage_in_bytes") ?? 0
        usage.memoryLimitBytes = readLimit(memory + "/memory.limit_in_bytes")
        usage.memoryFailcount = readNumber(memory + "/memory.failcnt") ?? 0
        usage.oomKills = readKeyed(memory + "/memory.oom_control", "oom_kill") ?? 0
        // v1 accounts memory+swap together: swap is the difference.
        if scope == .full, let memsw = readNumber(memory + "/memory.memsw.usage_in_bytes") {
            usage.swapBytes = memsw > usage.memoryBytes ? memsw - usage.memoryBytes : 0
            let peak = readNumber(memory + "/memory.memsw.max_usage_in_bytes") ?? 0
            usage.swapPeakBytes = peak > usage.memoryPeakBytes ? peak - usage.memoryPeakBytes : 0
            if let limit = readLimit(memory + "/memory.memsw.limit_in_bytes"), let memoryLimit = usage.memoryLimitBytes {
                usage.swapLimitBytes = limit > memoryLimit ? limit - memoryLimit : 0
            }
            usage.swapFailcount = readNumber(memory + "/memory.memsw.failcnt") ?? 0
        }
        let pids = path("pids", name)
        usage.pids = readNumber(pids + "/pids.current") ?? 0
        usage.pidsFailcount = readKeyed(pids + "/pids.events", "max") ?? 0
        usage.cpuNanoseconds = readNumber(path("cpuacct", name) + "/cpuacct.usage") ?? 0
        usage.ioBytes = readKeyed(path("blkio", name) + "/blkio.throttle.io_service_bytes", "Total") ?? 0
        if scope == .full {
            usage.pidsPeak = readNumber(pids + "/pids.peak") ?? 0
            usage.pidsLimit = readLimit(pids + "/pids.max")
            usage.ioOperations = readKeyed(path("blkio", name) + "/blkio.throttle.io_serviced", "Total") ?? 0
        }
        let cpuStat = FileIO.read(path("cpu", name) + "/cpu.stat", control: true) ?? ""
        usage.cpuThrottledPeriods = keyedValue(cpuStat, "nr_throttled") ?? 0
        usage.cpuThrottledNanoseconds = keyedValue(cpuStat, "throttled_time") ?? 0
        return usage
    }

    /// The v1 hierarchies the VPS joins, with the options that name them. Any other hierarchy
    /// (and the cgroup2 mount of a hybrid layout) is left out: the VPS would sit in its root
    /// there and see every host cgroup.
    public func guestMounts() -> [CgroupGuestMount] {
        guestMounts(mountinfo: FileIO.read("/proc/self/mountinfo") ?? "")
    }

    func guestMounts(mountinfo: String, joined: [String]? = nil) -> [CgroupGuestMount] {
        var mounts: [CgroupGuestMount] = []
        let joined = joined ?? present
        for mount in hostCgroupMounts(mountinfo: mountinfo) where mount.type == "cgroup" && FileIO.directory(of: mount.mountPoint) == root {
            let directory = String(mount.mountPoint.dropFirst(root.count + 1))
            guard joined.contains(directory) else { continue }
            let controllers = mount.superOptions.filter {
                !["rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec", "clone_children", "noprefix", "xattr"].contains($0)
                    && !$0.hasPrefix("release_agent=")
            }
            guard !controllers.isEmpty else { continue }
            let named = controllers.contains { $0.hasPrefix("name=") }
            let subsystems = controllers.filter { !$0.hasPrefix("name=") }
            let options = (subsystems.isEmpty && named ? ["none"] : []) + controllers
            let aliases = subsystems.count > 1 ? subsystems.filter { $0 != directory } : []
            mounts.append(
                CgroupGuestMount(
                    type: "cgroup", directory: directory, options: options.joined(separator: ","),
                    writable: subsystems.isEmpty && controllers.contains("name=systemd"), aliases: aliases))
        }
        return mounts.sorted { $0.directory < $1.directory }
    }

    /// Only the named systemd hierarchy is the VPS's to write; resource controllers stay the host's.
    public func delegate(_ name: String, uid: UInt32, gid: UInt32) throws(IsolationError) {
        guard present.contains("systemd") else { return }
        try chownCgroup(path("systemd", name), files: ["cgroup.procs", "tasks", "cgroup.clone_children", "notify_on_release"], uid: uid, gid: gid)
    }

    public func list() -> [String] {
        var names = Set<String>()
        for controller in present {
            for entry in FileIO.listDirectory("\(root)/\(controller)/\(parent)") where FileIO.isDirectory("\(root)/\(controller)/\(parent)/\(entry)") {
                names.insert(entry)
            }
        }
        return names.sorted()
    }
}

extension String {
    var trimmingNewlines: String {
        var s = Substring(self)
        while let last = s.last, last == "\n" || last == " " { s = s.dropLast() }
        return String(s)
    }
}
