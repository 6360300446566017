import BerthCore
import Isolation

extension Limits {
    /// The cgroup driver's view of these limits.
    var cgroup: CgroupLimits {
        CgroupLimits(
            memoryBytes: memoryBytes, swapBytes: swapBytes, pids: pids, cpuUnits: cpuUnits,
            cpuLimitPercent: cpuLimitPercent, cpus: cpus)
    }

    var io: IOLimits { IOLimits(weight: ioWeight, bytesPerSecond: ioBytesPerSecond, operationsPerSecond: ioOperationsPerSecond) }
}
