import BerthCore
import Logging
import Placement
import Synchronization

/// The VPS calls through the controller: `create` places and reserves, then relays the create to
/// the chosen node; every other call is relayed to the VPS's node, and what changes there (status,
/// addresses, limits) is written back to the VPS's record and the placement ledger.
final class VPSCalls: Sendable {
    let store: ClusterStore
    let liveness: Liveness
    let links: AgentLinks
    let ledger: PlacementLedger
    let quotas: TenantQuotas
    let heartbeats: Heartbeats
    let logger: Logger
    /// VPSs a long call is working on (a create on its way to a node, a migration), with what it
    /// does: destroy, set and the lifecycle calls are refused meanwhile (`busy`).
    let held = Mutex([String: String]())

    init(store: ClusterStore, liveness: Liveness, links: AgentLinks, ledger: PlacementLedger, heartbeats: Heartbeats, logger: Logger) {
        self.store = store
        self.liveness = liveness
        self.links = links
        self.ledger = ledger
        quotas = TenantQuotas(store: store)
        self.heartbeats = heartbeats
        self.logger = logger
    }

    /// Marks `name` busy with `what`; `busy` (conflict) when another long call holds it.
    func hold(_ name: String, _ what: String) throws {
        try held.withLock { (held: inout [String: String]) throws(BerthError) in
            if let other = held[name] { throw BerthError(.conflict, "name: \(name) is busy: \(other)", field: "name") }
            held[name] = what
        }
    }

    func release(_ name: String) { _ = held.withLock { $0.removeValue(forKey: name) } }

    /// `busy` (conflict) while a long call holds `name`.
    func checkNotHeld(_ name: String) throws {
        if let what = held.withLock({ $0[name] }) {
            throw BerthError(.conflict, "name: \(name) is busy: \(what); try again once that has finished", field: "name")
        }
    }

    /// The VPS, if it exists and the caller may see it (to a tenant, others' VPSs do not exist).
    func visibleVPS(_ name: String, to caller: Caller) throws -> VPSRecord {
        guard let record = try store.vps(name), caller.sees(vpsOf: record.tenant) else {
            throw BerthError(.notFound, "name: no VPS named \(name) in the cluster", field: "name")
        }
        return record
    }

    func placedNode(_ record: VPSRecord) throws -> NodeRecord {
        guard let node = try store.node(record.node) else {
            throw BerthError(.corruptState, "VPS \(record.name) is placed on node \(record.node), which is not registered")
        }
        guard liveness.isAlive(node.name) else {
            throw BerthError(
                .unavailable,
                "node \(node.name) of VPS \(record.name) is down (no heartbeat for \(liveness.millisecondsSinceHeartbeat(node.name).map { "\($0) ms" } ?? "ever"))"
            )
        }
        return node
    }

    /// Removes a VPS record, its addresses and its share of its node.
    func forget(_ record: VPSRecord) throws {
        guard try store.removeVPS(record.name) else { return }  // someone else already did
        ledger.remove(record.placed)
    }

    /// The last reported status, with the node filled in and `unknown` while the node is down.
    func currentStatus(_ record: VPSRecord) -> VPSStatusRecord {
        var status = record.status
        status.name = record.name
        status.node = record.node
        if status.template.isEmpty { status.template = record.spec.template }
        if record.spec.ha { status.ha = true }
        if record.phase == .creating { status.state = "creating" } else if !liveness.isAlive(record.node) { status.state = "unknown" }
        return status
    }

    // MARK: - create

    /// `--ip` entries: explicit addresses (canonical) and, per pool, how many `auto` ones.
    func addresses(_ ips: [String]) throws -> (explicit: [String], automatic: [(pool: String, count: Int)]) {
        var explicit: [String] = []
        var automatic: [String: Int] = [:]
        let pools = try store.pools()
        for ip in ips {
            if ip == "auto" || ip.hasPrefix("auto:") {
                let pool = ip == "auto" ? "" : String(ip.dropFirst(5))
                if pool.isEmpty {
                    guard pools.count == 1 else {
                        throw BerthError(.invalidArgument, "ip: 'auto' needs a pool name (auto:POOL) when the cluster has \(pools.count) pools", field: "ip")
                    }
                    automatic[pools[0].name, default: 0] += 1
                } else {
                    automatic[pool, default: 0] += 1
                }
            } else {
                guard let canonical = IPPoolMath.canonical(ip) else {
                    throw BerthError(.invalidArgument, "ip: '\(ip)' is not an IPv4 or IPv6 address (or auto[:POOL])", field: "ip")
                }
                explicit.append(canonical)
            }
        }
        return (explicit, automatic.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
    }

    /// Places a new VPS and reserves its name, addresses and share of a node, then has the node
    /// create it (`createOnNode`, given the spec with every address filled in). `ips` are the
    /// `--ip` entries as given: explicit addresses and `auto[:POOL]`; `limits` the limits as asked.
    func create(
        _ requested: VPSSpec, ips: [String], limits: LimitsUpdate, by caller: Caller, progress: (String) -> Void,
        createOnNode: (VPSSpec, NodeRecord) async throws -> VPSStatusRecord
    ) async throws -> VPSStatusRecord {
        try Name.validate(requested.name)
        guard !requested.template.isEmpty else { throw BerthError(.invalidArgument, "template: required", field: "template") }
        // Limits out of Berth's bounds are refused before a node is chosen or an address taken.
        _ = try Limits().merging(limits, onlineCPUs: nil)
        let (explicit, automatic) = try addresses(ips)
        var spec = requested
        spec.ips = explicit
        let owner = caller.tenant ?? ""

        let adding = TenantUsage(vpsCommitting: spec.cost, ips: explicit.count + automatic.reduce(0) { $0 + $1.count })
        let (node, allocated) = try quotas.withinQuota(owner, adding: adding, committing: spec.cost) {
            try ledger.place(spec.name, spec.placementRequest, pinnedTo: spec.pinnedNode.isEmpty ? nil : spec.pinnedNode) { node in
                try store.reserveVPS(
                    VPSRecord(name: spec.name, node: node, tenant: owner, spec: spec, status: Self.creatingStatus(spec, on: node), phase: .creating),
                    autoAddresses: automatic)
            }
        }.result
        spec.ips = explicit + allocated
        let record = VPSRecord(name: spec.name, node: node, tenant: owner, spec: spec, status: Self.creatingStatus(spec, on: node), phase: .creating)
        logger.info("placing VPS", metadata: ["vps": "\(record.name)", "node": "\(record.node)", "by": "\(caller.name)"])
        progress("placed on \(record.node)" + (allocated.isEmpty ? "" : ", addresses \(allocated.joined(separator: " "))"))

        try hold(record.name, "being created on \(record.node)")
        defer { release(record.name) }
        do {
            guard let node = try store.node(record.node) else { throw BerthError(.corruptState, "node \(record.node) vanished") }
            var status = try await createOnNode(spec, node)
            status.node = record.node
            var updated = record
            updated.status = status
            updated.phase = .ready
            try store.updateVPS(updated)
            try? store.addEvent(kind: "vps.created", subject: record.name, message: "on \(record.node)", actor: caller.actor)
            return status
        } catch let error as BerthError where [.unavailable, .deadlineExceeded, .cancelled].contains(error.code) {
            // The node may have created it before the answer was lost: keep the record (state
            // `creating`); the node's next heartbeat settles it, and destroy removes it if not.
            throw BerthError(
                error.code,
                "\(error.message) (the create may have reached \(record.node): `berth status \(record.name)` shows it once the node reports; `berth destroy` removes the record otherwise)"
            )
        } catch {
            // The node refused it: give the name, the addresses and the capacity back.
            try? forget(record)
            throw error
        }
    }

    static func creatingStatus(_ spec: VPSSpec, on node: String) -> VPSStatusRecord {
        var status = VPSStatusRecord(name: spec.name, state: "creating")
        status.node = node
        status.template = spec.template
        return status
    }

    // MARK: - calls relayed to the VPS's node

    /// start/stop/restart/exec/console: `call` runs on the VPS's node; the stored status
    /// follows the status the node answers, if it answers one.
    /// `exclusive` calls (start, stop, restart) are refused while a long call holds the VPS.
    func relay<Answer>(
        _ name: String, by caller: Caller, exclusive: Bool = false, _ call: (NodeRecord) async throws -> (answer: Answer, status: VPSStatusRecord?)
    ) async throws -> Answer {
        let record = try visibleVPS(name, to: caller)
        if exclusive { try checkNotHeld(name) }
        let (answer, status) = try await call(try placedNode(record))
        heartbeats.forgetReport(of: record.node)
        if var status {
            status.node = record.node
            try? store.updateStatus(record.name, status)
        }
        return answer
    }

    /// `stats` reads the node's counters; nothing of the record changes.
    func stats<Answer>(_ name: String, by caller: Caller, _ call: (NodeRecord) async throws -> Answer) async throws -> Answer {
        let record = try visibleVPS(name, to: caller)
        return try await call(try placedNode(record))
    }

    /// The node's fresh answer while it is up and the VPS is created, else the last known status.
    func status(_ name: String, by caller: Caller, fresh: (NodeRecord) async throws -> VPSStatusRecord) async throws -> VPSStatusRecord {
        let record = try visibleVPS(name, to: caller)
        if liveness.isAlive(record.node), record.phase == .ready, let node = try store.node(record.node),
            var status = try? await fresh(node)
        {
            status.node = node.name
            return status
        }
        return currentStatus(record)
    }

    func list(all: Bool, selector: Selector, by caller: Caller) throws -> [VPSStatusRecord] {
        try selected(selector, by: caller).map(\.status).filter { all || $0.state != "stopped" }
    }

    /// The VPSs the caller may see that `selector` selects, with their current status: what
    /// `list` shows and what a fleet job acts on.
    func selected(_ selector: Selector, by caller: Caller) throws -> [(record: VPSRecord, status: VPSStatusRecord)] {
        let nodeLabels = Dictionary(try store.nodes().map { ($0.name, $0.labels) }, uniquingKeysWith: { first, _ in first })
        return try store.vpses().filter { caller.sees(vpsOf: $0.tenant) }.compactMap { record in
            let status = currentStatus(record)
            let facts = SelectorFacts(
                name: record.name, state: status.state, template: record.spec.template, tenant: record.tenant.isEmpty ? nil : record.tenant,
                node: record.node, ha: record.spec.ha, labels: status.labels, nodeLabels: nodeLabels[record.node] ?? [:])
            return selector.matches(facts) ? (record, status) : nil
        }
    }

    /// `set`: addresses added live are reserved cluster-wide before the node sees them (the
    /// node only knows its own VPSs), and released when the node refuses them or once removed;
    /// raised limits must fit the VPS's node and are reserved before the node applies them, so
    /// two concurrent raises cannot both take the last of it. `call` applies the change on the
    /// node and gives back the VPS's status after it.
    func set<Answer>(
        _ name: String, limits update: LimitsUpdate, ipAdd: [String], ipDel: [String], by caller: Caller,
        _ call: (NodeRecord) async throws -> (answer: Answer, status: VPSStatusRecord)
    ) async throws -> Answer {
        let record = try visibleVPS(name, to: caller)
        try checkNotHeld(name)
        var added: [String] = []
        for ip in ipAdd {
            guard let canonical = IPPoolMath.canonical(ip) else {
                throw BerthError(
                    .invalidArgument, "ip-add: '\(ip)' is not an IPv4 or IPv6 address (pool addresses are given at create: --ip auto[:POOL])", field: "ip-add")
            }
            added.append(canonical)
        }
        let (wanted, growth) = try Self.setChange(record, limits: update, adding: added, deleting: ipDel)
        let ((resize, reserved), quotaHold) = try quotas.withinQuota(
            record.tenant, adding: growth, committing: wanted == record.spec.limits ? nil : PlacementRequest(wanted.commitment), hold: true
        ) {
            let resize = try ledger.reserveResize(record.placed, to: PlacementRequest(wanted.commitment))
            do {
                return (resize, try store.reserveAddresses(added, for: name))
            } catch {
                if let resize { ledger.release(resize) }
                throw error
            }
        }
        defer { quotas.release(quotaHold) }
        let answer: Answer
        let status: VPSStatusRecord
        do {
            (answer, status) = try await relay(name, by: caller) { node in
                let (answer, status) = try await call(node)
                return ((answer, status), status)
            }
        } catch {
            try? store.releaseAddresses(reserved, of: name)
            if let resize { ledger.release(resize) }
            throw error
        }
        // What the VPS holds now decides: an address both added and deleted stays released
        // only if the node really dropped it.
        let holds = Set(status.ips.compactMap(IPPoolMath.canonical))
        try? store.releaseAddresses(ipDel.compactMap(IPPoolMath.canonical).filter { !holds.contains($0) }, of: name)
        // The limits the node answered are what the VPS commits from now on.
        if var current = try store.vps(name) {
            var counted = current.placed
            counted.cost = resize?.new ?? counted.cost
            current.spec.ips = status.ips
            current.spec.limits = status.limits ?? current.spec.limits
            try? store.updateVPS(current)
            ledger.recount(counted, as: current.spec.cost)
        }
        return answer
    }

    /// What a `set` makes of the VPS's limits, and what it adds to its tenant's usage: limits
    /// that grow, and addresses it did not hold, less those it deletes (a swap at the limit
    /// passes). Bad limits are refused here, before anything is reserved; the node checks them
    /// again against its own CPUs.
    static func setChange(
        _ record: VPSRecord, limits update: LimitsUpdate, adding added: [String], deleting deleted: [String]
    ) throws -> (wanted: Limits, growth: TenantUsage) {
        let wanted = try record.spec.limits.merging(update, onlineCPUs: nil)
        let own = Set(record.spec.ips.compactMap(IPPoolMath.canonical))
        let after = own.subtracting(deleted.compactMap(IPPoolMath.canonical)).union(added)
        let growth = TenantUsage.growth(
            from: TenantUsage(vpsCommitting: record.spec.cost, ips: own.count),
            to: TenantUsage(vpsCommitting: PlacementRequest(wanted.commitment), ips: after.count))
        return (wanted, growth)
    }

    /// Before a `set` changes anything elsewhere (its HA settings): whether what it adds fits
    /// the tenant's quota now (`set` checks again, holding what it adds).
    func checkQuota(forSetOf name: String, limits update: LimitsUpdate, ipAdd: [String], ipDel: [String], by caller: Caller) throws {
        let record = try visibleVPS(name, to: caller)
        let (wanted, growth) = try Self.setChange(record, limits: update, adding: ipAdd.compactMap(IPPoolMath.canonical), deleting: ipDel)
        _ = try quotas.withinQuota(
            record.tenant, adding: growth, committing: wanted == record.spec.limits ? nil : PlacementRequest(wanted.commitment)
        ) { () }
    }

    /// `destroy`: `call` destroys it on its node; then its record, addresses and share go.
    func destroy<Answer>(_ name: String, by caller: Caller, _ call: (NodeRecord) async throws -> Answer, neverCreated: Answer) async throws -> Answer {
        let record = try visibleVPS(name, to: caller)
        try checkNotHeld(record.name)
        let answer: Answer
        do {
            answer = try await call(try placedNode(record))
        } catch let error as BerthError where error.code == .notFound && record.phase == .creating {
            answer = neverCreated  // an earlier create never reached the node
        }
        try forget(record)
        try? store.addEvent(kind: "vps.destroyed", subject: record.name, message: "on \(record.node)", actor: caller.actor)
        return answer
    }
}
