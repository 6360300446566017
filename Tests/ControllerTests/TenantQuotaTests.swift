import BerthCore
import Foundation
import Placement
import Testing
import Wire

@testable import Controller

@Suite struct TenantQuotaTests {
    @Test func theRefusalNamesTheResourceTheQuotaAndTheUsage() {
        let quota = TenantQuota(maxVPS: 2, maxMemoryBytes: 1 << 30, maxCPUMillis: 2500, maxIPs: 3)
        let usage = TenantUsage(vps: 1, memoryBytes: 768 << 20, cpuMillis: 2000, ips: 2)
        #expect(quota.refusal(tenant: "acme", usage: usage, adding: TenantUsage(vps: 1, memoryBytes: 256 << 20, cpuMillis: 500, ips: 1)) == nil)
        let memory = quota.refusal(tenant: "acme", usage: usage, adding: TenantUsage(vps: 1, memoryBytes: 512 << 20))
        #expect(memory?.code == .quotaExceeded && memory?.field == "max-memory")
        #expect(memory?.message == "max-memory: tenant acme would exceed its memory quota of 1G: 512M asked, 768M in use")
        let cpu = quota.refusal(tenant: "acme", usage: usage, adding: TenantUsage(cpuMillis: 1000))
        #expect(cpu?.message == "max-cpus: tenant acme would exceed its CPU quota of 2.5 CPUs: 1 CPU asked, 2 CPUs in use")
        #expect(quota.refusal(tenant: "acme", usage: usage, adding: TenantUsage(vps: 2))?.field == "max-vps")
        #expect(quota.refusal(tenant: "acme", usage: usage, adding: TenantUsage(ips: 2))?.field == "max-ips")
        // Over a quota already (lowered below the usage): what does not grow still passes.
        #expect(quota.refusal(tenant: "acme", usage: TenantUsage(vps: 5), adding: TenantUsage(memoryBytes: 1)) == nil)
        // A resize counts only what grows.
        #expect(
            TenantUsage.growth(from: TenantUsage(vps: 1, memoryBytes: 2 << 30, cpuMillis: 1000), to: TenantUsage(vps: 1, memoryBytes: 1 << 30, cpuMillis: 3000))
                == TenantUsage(cpuMillis: 2000))
    }

    /// A VPS without a memory (CPU, disk) limit commits 0 of it: under such a quota it is refused.
    @Test func aQuotaNeedsItsVPSsToBoundWhatItLimits() {
        let quota = TenantQuota(maxMemoryBytes: 1 << 30, maxCPUMillis: 2000)
        let unbounded = quota.unboundedRefusal(tenant: "acme", of: PlacementRequest(cpuMillis: 1000, memoryBytes: 0, diskBytes: 1 << 30))
        #expect(unbounded?.field == "max-memory" && unbounded?.code == .quotaExceeded)
        #expect(unbounded?.message == "max-memory: tenant acme has a memory quota, so each of its VPSs needs a memory limit (--memory)")
        #expect(quota.unboundedRefusal(tenant: "acme", of: PlacementRequest(cpuMillis: 0, memoryBytes: 1 << 20))?.field == "max-cpus")
        #expect(quota.unboundedRefusal(tenant: "acme", of: PlacementRequest(cpuMillis: 500, memoryBytes: 1 << 20)) == nil)
        #expect(TenantQuota(maxVPS: 3).unboundedRefusal(tenant: "acme", of: PlacementRequest()) == nil)
    }

    @Test func setChangesTheLimitsGivenAndClearsTheNamedOnes() throws {
        let quota = try TenantQuota(maxVPS: 5, maxMemoryBytes: 1 << 30).updated(with: TenantQuota(maxIPs: 4), clearing: ["max-vps"])
        #expect(quota == TenantQuota(maxMemoryBytes: 1 << 30, maxIPs: 4))
        #expect(throws: WireError.self) { try quota.updated(with: TenantQuota(), clearing: ["max-ram"]) }
    }

    /// 20 creates at once against a quota of 5 VPSs: exactly 5 are recorded.
    @Test func concurrentCreatesNeverPassAQuotaTogether() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-quota-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try SQLiteStore(directory: dir)
        try store.saveTenantQuota("acme", TenantQuota(maxVPS: 5))
        let quotas = TenantQuotas(store: store)
        let placed = await withTaskGroup(of: Bool.self) { group in
            for k in 0..<20 {
                group.addTask {
                    let spec = VPSSpec(name: "web\(k)", template: "busybox")
                    let record = VPSRecord(name: spec.name, node: "n1", tenant: "acme", spec: spec, status: VPSStatusRecord(name: spec.name), phase: .creating)
                    do {
                        _ = try quotas.withinQuota("acme", adding: TenantUsage(vpsCommitting: spec.cost, ips: 0), committing: spec.cost) {
                            try store.reserveVPS(record, autoAddresses: [])
                        }
                        return true
                    } catch {
                        return false
                    }
                }
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(placed == 5)
        #expect(try store.vpses().count == 5)
        #expect(try quotas.usage(of: "acme").vps == 5)
        // Another tenant and the admins' VPSs are not counted against it.
        _ = try quotas.withinQuota("", adding: TenantUsage(vps: 1), committing: nil) { () }
        #expect(try quotas.usage(of: "globex") == TenantUsage())
    }
}
