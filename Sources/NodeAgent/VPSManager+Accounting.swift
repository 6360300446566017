import BerthCore
import CIsolation
import Foundation
import Isolation
import Logging

/// Beancounters, node capacity and the metrics sweep.
extension VPSManager {
    /// Beancounter-style counters from the VPS's cgroup and its mounted disk. A stopped VPS
    /// reports its configured limits with nothing held; disk counters appear while it runs.
    public func stats(_ name: String) throws -> VPSAccounting {
        _ = try Name.validate(name)
        let record = try record(name)
        let running = record.state == .running || record.state == .stopping
        var usage = CgroupUsage()
        let limits = record.config.limits
        if running {
            usage = cgroups.usage(name)
        } else {
            usage.memoryLimitBytes = limits.memoryBytes
            usage.swapLimitBytes = limits.memoryBytes == nil ? nil : limits.swapBytes ?? 0
            usage.pidsLimit = limits.pids.map(UInt64.init)
        }
        func counter(_ resource: String, _ held: UInt64, _ peak: UInt64, _ limit: UInt64?, _ failcnt: UInt64) -> VPSAccounting.Counter {
            VPSAccounting.Counter(resource: resource, held: held, peak: peak, limit: limit, failures: failcnt)
        }
        var stats = VPSAccounting(name: name, cpuNanoseconds: usage.cpuNanoseconds, counters: [])
        stats.counters = [
            // Some kernels count no failed charge when the OOM killer resolves it: a kill is a
            // failure too (OpenVZ's privvmpages failcnt rises on either).
            counter("memory", usage.memoryBytes, usage.memoryPeakBytes, usage.memoryLimitBytes, max(usage.memoryFailcount, usage.oomKills)),
            counter("swap", usage.swapBytes, usage.swapPeakBytes, usage.swapLimitBytes, usage.swapFailcount),
            counter("pids", usage.pids, usage.pidsPeak, usage.pidsLimit, usage.pidsFailcount),
            counter("cpu_throttled", usage.cpuThrottledPeriods, 0, limits.cpuLimitPercent.map(UInt64.init), usage.cpuThrottledPeriods),
            counter("cpu_throttled_ms", usage.cpuThrottledNanoseconds / 1_000_000, 0, nil, 0),
            counter("oom_kill", usage.oomKills, 0, nil, usage.oomKills),
            counter("io_bytes", usage.ioBytes, 0, limits.ioBytesPerSecond, 0),
            counter("io_ops", usage.ioOperations, 0, limits.ioOperationsPerSecond.map(UInt64.init), 0),
        ]
        let snapshots = snapshotUsage(record)
        if snapshots.count > 0 { stats.counters.append(counter("snapshot_bytes", snapshots.bytes, 0, nil, 0)) }
        // A pool VPS's disk is its quota group; the limit stands whether it runs or not.
        if record.config.isPooled {
            if let usage = (try? mountedPool())??.usage(name) {
                stats.counters.append(counter("disk_bytes", usage.used, 0, usage.limit ?? limits.diskBytes, 0))
            }
            return stats
        }
        // The disk is the mounted image: its own filesystem's totals are the hard limits.
        var fs = statvfs()
        if running, let disk = mountedDisk(record), statvfs(disk, &fs) == 0 {
            let block = UInt64(fs.f_frsize)
            stats.counters.append(counter("disk_bytes", UInt64(fs.f_blocks - fs.f_bfree) * block, 0, UInt64(fs.f_blocks) * block, 0))
            stats.counters.append(counter("disk_inodes", UInt64(fs.f_files - fs.f_ffree), 0, UInt64(fs.f_files), 0))
        }
        return stats
    }

    /// The mounted filesystem of a running VPS's disk as its monitor sees it (the host's own
    /// namespace never has it mounted); nil when it is not mounted.
    func mountedDisk(_ record: VPSRecord) -> String? {
        let name = record.config.name
        guard let view = record.run?.monitorView(record.config.isLayered ? store.diskMountPath(name) : store.rootPath(name)),
            FileIO.isMountPoint(view)
        else { return nil }
        return view
    }

    /// Capacity of this node and what its VPSs' limits commit of it.
    public func nodeInfo() -> NodeReport {
        var info = NodeReport(name: nodeName)
        info.overcommit = overcommit
        var uts = utsname()
        uname(&uts)
        info.kernel = withUnsafePointer(to: &uts.release) { $0.withMemoryRebound(to: CChar.self, capacity: 65) { String(cString: $0) } }
        info.cgroupMode = cgroups.modeName
        info.cpus = onlineCPUs
        info.networkRanges = settings.network?.ranges.map(\.description) ?? []
        info.replicaBytes = replicaBytes()
        let meminfo = FileIO.read("/proc/meminfo") ?? ""
        if let line = meminfo.split(separator: "\n").first(where: { $0.hasPrefix("MemTotal:") }),
            let kib = UInt64(line.split(separator: " ").dropFirst().first ?? "")
        {
            info.memoryBytes = kib * 1024
        }
        var fs = statvfs()
        if statvfs(store.vpsRoot, &fs) == 0 {
            info.diskBytes = UInt64(fs.f_blocks) * UInt64(fs.f_frsize)
            info.diskFreeBytes = UInt64(fs.f_bavail) * UInt64(fs.f_frsize)
        }
        if let pool = try? mountedPool(), statvfs(pool.directory, &fs) == 0 {
            info.poolBytes = UInt64(fs.f_blocks) * UInt64(fs.f_frsize)
            info.poolFreeBytes = UInt64(fs.f_bavail) * UInt64(fs.f_frsize)
        }
        for record in records.values {
            let limits = record.config.limits
            info.committed += limits.commitment
            if record.config.isPooled { info.committedPoolBytes += limits.diskBytes }
            info.vpsTotal += 1
            if record.state == .running { info.vpsRunning += 1 }
        }
        return info
    }

    /// Every VPS with its kernel counters, for the metrics endpoint.
    /// The kernel reads happen outside the actor: a scrape must not hold up lifecycle calls.
    public nonisolated func accountingSnapshot() async -> [(name: String, running: Bool, usage: CgroupUsage)] {
        let states = await vpsStates()
        // Every VPS costs ~20 small cgroupfs reads; spread them over the CPUs.
        let usages = UsageBuffer(count: states.count)
        let driver = cgroups
        DispatchQueue.concurrentPerform(iterations: states.count) { i in
            if states[i].running { usages.set(i, driver.usage(states[i].name, scope: .scrape)) }
        }
        return states.indices.map { (states[$0].name, states[$0].running, usages.get($0)) }
    }

    func vpsStates() -> [(name: String, running: Bool)] {
        records.keys.sorted().map { ($0, records[$0]!.state == .running) }
    }
}

/// Results of a concurrent sweep, one slot per VPS (each written by exactly one iteration).
final class UsageBuffer: @unchecked Sendable {
    private var slots: [CgroupUsage]
    private let lock = NSLock()
    init(count: Int) { slots = Array(repeating: CgroupUsage(), count: count) }
    func set(_ i: Int, _ usage: CgroupUsage) { lock.lock(); slots[i] = usage; lock.unlock() }
    func get(_ i: Int) -> CgroupUsage { lock.lock(); defer { lock.unlock() }; return slots[i] }
}
