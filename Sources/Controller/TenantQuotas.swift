import BerthCore
import Placement
import Synchronization
import Wire

/// Tenants' quotas enforced with placement (Docs/cluster.md "Tenant quotas"). A change that adds
/// to a tenant's usage is checked and made under one lock, so that concurrent creates cannot
/// together pass a quota each fits alone: a create's record (and with it its share) is written
/// under the lock; a set's growth is held here until the node has answered and the record says
/// it. Admins' and operators' VPSs (no tenant) have no quota.
final class TenantQuotas: Sendable {
    let store: ClusterStore
    private struct State {
        /// Growth checked and allowed but not yet in the records, by hold.
        var pending: [UInt64: (tenant: String, usage: TenantUsage)] = [:]
        var next: UInt64 = 0
    }
    private let state = Mutex(State())

    /// What a growth allowed by `withinQuota` holds until the records show it.
    struct Hold: Sendable { fileprivate let id: UInt64 }

    init(store: ClusterStore) { self.store = store }

    /// What the VPSs of `tenant` commit: the records (those being created included: their rows
    /// are written when they are placed) and the growth held for changes under way.
    private func usage(of tenant: String, _ state: State) throws -> TenantUsage {
        var usage = TenantUsage()
        for record in try store.vpses() where record.tenant == tenant {
            usage.add(TenantUsage(vpsCommitting: record.spec.cost, ips: record.spec.ips.count))
        }
        for held in state.pending.values where held.tenant == tenant { usage.add(held.usage) }
        return usage
    }

    /// The usage `tenant show` reports.
    func usage(of tenant: String) throws -> TenantUsage {
        try state.withLock { state throws -> TenantUsage in try usage(of: tenant, state) }
    }

    /// Runs `change` only if `adding` keeps `tenant` within its quota and the VPS, committing
    /// `cost` from then on, bounds each resource the quota limits (`quota-exceeded` naming the
    /// resource, the quota and the usage otherwise). With `hold`, the growth stays
    /// counted until `release` (the change is not in the records when `change` returns).
    func withinQuota<Result: Sendable>(
        _ tenant: String, adding: TenantUsage, committing cost: PlacementRequest?, hold: Bool = false, _ change: () throws -> Result
    ) throws -> (result: Result, hold: Hold?) {
        guard !tenant.isEmpty else { return (try change(), nil) }
        return try state.withLock { state throws -> (result: Result, hold: Hold?) in
            if let quota = try store.tenantQuotas()[tenant] {
                if let cost, let refusal = quota.unboundedRefusal(tenant: tenant, of: cost) { throw refusal }
                if let refusal = quota.refusal(tenant: tenant, usage: try usage(of: tenant, state), adding: adding) { throw refusal }
            }
            let result = try change()
            guard hold else { return (result, nil) }
            state.next += 1
            state.pending[state.next] = (tenant, adding)
            return (result, Hold(id: state.next))
        }
    }

    /// `tenant set`: the quota changed under the lock, so that two sets never lose one.
    func update(_ tenant: String, _ change: (TenantQuota) throws -> TenantQuota) throws -> TenantQuota {
        try state.withLock { _ throws -> TenantQuota in
            let quota = try change(try store.tenantQuotas()[tenant] ?? TenantQuota())
            try store.saveTenantQuota(tenant, quota)
            return quota
        }
    }

    /// The change a hold was for is in the records now, or failed.
    func release(_ hold: Hold?) {
        guard let hold else { return }
        state.withLock { _ = $0.pending.removeValue(forKey: hold.id) }
    }
}

/// A tenant as `tenant show` reports it: its quota and what its VPSs commit.
struct TenantInfo: Sendable, Equatable {
    var name: String
    var quota: TenantQuota
    var usage: TenantUsage
}

extension TenantQuota {
    /// The flags of `tenant set` a quota's limits are named by (in `clear` and in refusals).
    static let limitNames = ["max-vps", "max-memory", "max-cpus", "max-disk", "max-ips"]

    /// `self` with the limits `given` sets, and those named in `clearing` removed.
    func updated(with given: TenantQuota, clearing: [String]) throws(WireError) -> TenantQuota {
        var quota = self
        for name in clearing {
            switch name {
            case "max-vps": quota.maxVPS = nil
            case "max-memory": quota.maxMemoryBytes = nil
            case "max-cpus": quota.maxCPUMillis = nil
            case "max-disk": quota.maxDiskBytes = nil
            case "max-ips": quota.maxIPs = nil
            default:
                throw WireError(
                    .invalidArgument, "clear: '\(name)' is not a quota limit (\(Self.limitNames.joined(separator: ", ")))", field: "clear")
            }
        }
        if let value = given.maxVPS { quota.maxVPS = value }
        if let value = given.maxMemoryBytes { quota.maxMemoryBytes = value }
        if let value = given.maxCPUMillis { quota.maxCPUMillis = value }
        if let value = given.maxDiskBytes { quota.maxDiskBytes = value }
        if let value = given.maxIPs { quota.maxIPs = value }
        return quota
    }
}

extension VPSCalls {
    /// `tenant set`: the quota as it is now, with what it is given; a quota below what the
    /// tenant uses already is kept (it refuses growth only, as OpenStack's and Proxmox's do).
    func setQuota(of tenant: String, _ given: TenantQuota, clearing: [String], by caller: Caller) throws -> TenantInfo {
        _ = try Name.validate(tenant, field: "name")
        let quota = try quotas.update(tenant) { try $0.updated(with: given, clearing: clearing) }
        try? store.addEvent(kind: "tenant.quota", subject: tenant, message: Self.quotaText(quota), actor: caller.actor)
        return TenantInfo(name: tenant, quota: quota, usage: try quotas.usage(of: tenant))
    }

    func tenantInfo(_ tenant: String) throws -> TenantInfo {
        let quota = try store.tenantQuotas()[tenant]
        let usage = try quotas.usage(of: tenant)
        guard quota != nil || usage.vps > 0 else { throw WireError(.notFound, "name: no tenant named \(tenant) has a quota or a VPS", field: "name") }
        return TenantInfo(name: tenant, quota: quota ?? TenantQuota(), usage: usage)
    }

    /// Every tenant with a quota or a VPS, by name.
    func tenantInfos() throws -> [TenantInfo] {
        let quotas = try store.tenantQuotas()
        let owners = Set(try store.vpses().map(\.tenant).filter { !$0.isEmpty })
        return try owners.union(quotas.keys).sorted().map { name in
            TenantInfo(name: name, quota: quotas[name] ?? TenantQuota(), usage: try self.quotas.usage(of: name))
        }
    }

    static func quotaText(_ quota: TenantQuota) -> String {
        let limits = [
            quota.maxVPS.map { "max-vps \($0)" }, quota.maxMemoryBytes.map { "max-memory \(ByteSize.format($0))" },
            quota.maxCPUMillis.map { "max-cpus \(TenantQuota.cpuText($0))" }, quota.maxDiskBytes.map { "max-disk \(ByteSize.format($0))" },
            quota.maxIPs.map { "max-ips \($0)" },
        ].compactMap { $0 }
        return limits.isEmpty ? "no limits" : limits.joined(separator: ", ")
    }
}
