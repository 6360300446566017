import BerthCore
import Wire

/// What a tenant's VPSs may commit across the cluster (`berth tenant set`): nil is no limit.
/// CPU in the scheduler's units (thousandths of a CPU), as `PlacementRequest` counts it.
public struct TenantQuota: Sendable, Equatable, Codable {
    public var maxVPS: Int?
    public var maxMemoryBytes: UInt64?
    public var maxCPUMillis: UInt64?
    public var maxDiskBytes: UInt64?
    public var maxIPs: Int?

    public init(maxVPS: Int? = nil, maxMemoryBytes: UInt64? = nil, maxCPUMillis: UInt64? = nil, maxDiskBytes: UInt64? = nil, maxIPs: Int? = nil) {
        self.maxVPS = maxVPS
        self.maxMemoryBytes = maxMemoryBytes
        self.maxCPUMillis = maxCPUMillis
        self.maxDiskBytes = maxDiskBytes
        self.maxIPs = maxIPs
    }

    public var isUnlimited: Bool { self == TenantQuota() }

    /// Whether `usage` plus `adding` stays within every limit; the refusal names the first
    /// resource over it, the quota and the usage: `quota-exceeded`, field the resource's flag.
    public func refusal(tenant: String, usage: TenantUsage, adding: TenantUsage) -> WireError? {
        func over(_ used: UInt64, _ more: UInt64, _ limit: UInt64?) -> Bool {
            guard let limit, more > 0 else { return false }
            let (sum, overflow) = used.addingReportingOverflow(more)
            return overflow || sum > limit
        }
        func refuse(_ field: String, _ resource: String, asked: String, used: String, quota: String) -> WireError {
            WireError(
                .quotaExceeded, "\(field): tenant \(tenant) would exceed its \(resource) quota of \(quota): \(asked) asked, \(used) in use",
                field: field)
        }
        if over(UInt64(usage.vps), UInt64(adding.vps), maxVPS.map(UInt64.init)) {
            return refuse("max-vps", "VPS", asked: "\(adding.vps) more", used: "\(usage.vps)", quota: "\(maxVPS!)")
        }
        if over(usage.memoryBytes, adding.memoryBytes, maxMemoryBytes) {
            return refuse(
                "max-memory", "memory", asked: ByteSize.format(adding.memoryBytes), used: ByteSize.format(usage.memoryBytes),
                quota: ByteSize.format(maxMemoryBytes!))
        }
        if over(usage.cpuMillis, adding.cpuMillis, maxCPUMillis) {
            return refuse("max-cpus", "CPU", asked: Self.cpuText(adding.cpuMillis), used: Self.cpuText(usage.cpuMillis), quota: Self.cpuText(maxCPUMillis!))
        }
        if over(usage.diskBytes, adding.diskBytes, maxDiskBytes) {
            return refuse(
                "max-disk", "disk", asked: ByteSize.format(adding.diskBytes), used: ByteSize.format(usage.diskBytes), quota: ByteSize.format(maxDiskBytes!))
        }
        if over(UInt64(usage.ips), UInt64(adding.ips), maxIPs.map(UInt64.init)) {
            return refuse("max-ips", "address", asked: "\(adding.ips) more", used: "\(usage.ips)", quota: "\(maxIPs!)")
        }
        return nil
    }

    /// A VPS of a tenant with a memory, CPU or disk quota must bound that resource itself: one
    /// without `--memory` (or a CPU limit, or a disk) commits nothing a quota could count.
    public func unboundedRefusal(tenant: String, of cost: PlacementRequest) -> WireError? {
        func refuse(_ field: String, _ resource: String, _ flag: String) -> WireError {
            WireError(
                .quotaExceeded, "\(field): tenant \(tenant) has a \(resource) quota, so each of its VPSs needs a \(resource) limit (\(flag))",
                field: field)
        }
        if maxMemoryBytes != nil && cost.memoryBytes == 0 { return refuse("max-memory", "memory", "--memory") }
        if maxCPUMillis != nil && cost.cpuMillis == 0 { return refuse("max-cpus", "CPU", "--cpus or --cpu-limit") }
        if maxDiskBytes != nil && cost.diskBytes == 0 { return refuse("max-disk", "disk", "--disk") }
        return nil
    }

    /// "2.5 CPUs" from thousandths of a CPU.
    public static func cpuText(_ millis: UInt64) -> String { Commitment.cpusText(millis: millis) + (millis == 1000 ? " CPU" : " CPUs") }
}

/// What a tenant's VPSs commit now (or what one change adds).
public struct TenantUsage: Sendable, Equatable {
    public var vps = 0
    public var memoryBytes: UInt64 = 0
    public var cpuMillis: UInt64 = 0
    public var diskBytes: UInt64 = 0
    public var ips = 0

    public init(vps: Int = 0, memoryBytes: UInt64 = 0, cpuMillis: UInt64 = 0, diskBytes: UInt64 = 0, ips: Int = 0) {
        self.vps = vps
        self.memoryBytes = memoryBytes
        self.cpuMillis = cpuMillis
        self.diskBytes = diskBytes
        self.ips = ips
    }

    /// One VPS that commits `cost` and holds `ips` addresses.
    public init(vpsCommitting cost: PlacementRequest, ips: Int) {
        self.init(vps: 1, memoryBytes: cost.memoryBytes, cpuMillis: cost.cpuMillis, diskBytes: cost.diskBytes, ips: ips)
    }

    public mutating func add(_ other: TenantUsage) {
        vps += other.vps
        memoryBytes &+= other.memoryBytes
        cpuMillis &+= other.cpuMillis
        diskBytes &+= other.diskBytes
        ips += other.ips
    }

    /// What changing from `old` to `new` adds (only what grows counts; what shrinks adds 0).
    public static func growth(from old: TenantUsage, to new: TenantUsage) -> TenantUsage {
        func more(_ a: UInt64, _ b: UInt64) -> UInt64 { b > a ? b - a : 0 }
        return TenantUsage(
            vps: max(0, new.vps - old.vps), memoryBytes: more(old.memoryBytes, new.memoryBytes), cpuMillis: more(old.cpuMillis, new.cpuMillis),
            diskBytes: more(old.diskBytes, new.diskBytes), ips: max(0, new.ips - old.ips))
    }
}
