import BerthCore

// How BerthCore's limits become cgroup values: the unit conversions both drivers share.
extension Limits {
    public static let defaultCpuUnits: UInt32 = 1000
    public static let cfsPeriodMicroseconds: UInt64 = 100_000

    /// cgroup v2 cpu.weight (1..10000, default 100) from cpuunits (default 1000).
    public static func cpuWeight(units: UInt32) -> UInt32 { min(10_000, max(1, units / 10)) }
    /// cgroup v1 cpu.shares (2..262144, default 1024) from cpuunits, keeping ratios exact.
    public static func cpuShares(units: UInt32) -> UInt64 { min(262_144, max(2, UInt64(units) * 1024 / 1000)) }
    /// CFS quota in µs per 100 ms period.
    public static func cfsQuota(percent: UInt32) -> UInt64 { UInt64(percent) * cfsPeriodMicroseconds / 100 }
}
