import BerthCore
import Logging
import Placement
import Synchronization
import Wire

/// The VPS calls through the controller: `create` places and reserves, then relays the create to
/// the chosen node; every other call is relayed to the VPS's node, and what changes there (status,
/// addresses, limits) is written back to the VPS's record and the placement ledger.
final class VPSCalls: Sendable {
    let store: ClusterStore
    let liveness: Liveness
    let links: AgentLinks
    let ledger: PlacementLedger
    let heartbeats: Heartbeats
    let logger: Logger
    /// Creates on their way to a node: their records must not be destroyed under them.
    let creating = Mutex(Set<String>())

    init(store: ClusterStore, liveness: Liveness, links: AgentLinks, ledger: PlacementLedger, heartbeats: Heartbeats, logger: Logger) {
        self.store = store
        self.liveness = liveness
        self.links = links
        self.ledger = ledger
        self.heartbeats = heartbeats
        self.logger = logger
    }

    /// The VPS, if it exists and the caller may see it (to a tenant, others' VPSs do not exist).
    func visibleVPS(_ name: String, to caller: Caller) throws -> VPSRecord {
        guard let record = try store.vps(name), caller.sees(vpsOf: record.tenant) else {
            throw WireError(.notFound, "name: no VPS named \(name) in the cluster", field: "name")
        }
        return record
    }

    func placedNode(_ record: VPSRecord) throws -> NodeRecord {
        guard let node = try store.node(record.node) else {
            throw WireError(.corruptState, "VPS \(record.name) is placed on node \(record.node), which is not registered")
        }
        guard liveness.isAlive(node.name) else {
            throw WireError(
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
                        throw WireError(.invalidArgument, "ip: 'auto' needs a pool name (auto:POOL) when the cluster has \(pools.count) pools", field: "ip")
                    }
                    automatic[pools[0].name, default: 0] += 1
                } else {
                    automatic[pool, default: 0] += 1
                }
            } else {
                guard let canonical = IPPoolMath.canonical(ip) else {
                    throw WireError(.invalidArgument, "ip: '\(ip)' is not an IPv4 or IPv6 address (or auto[:POOL])", field: "ip")
                }
                explicit.append(canonical)
            }
        }
        return (explicit, automatic.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
    }

    func create(_ request: Berth_V1_CreateRequest, by caller: Caller, stream: ServerStream) async throws -> Berth_V1_VpsStatus {
        try Name.validate(request.name)
        guard !request.template.isEmpty else { throw WireError(.invalidArgument, "template: required", field: "template") }
        // Limits out of Berth's bounds are refused before a node is chosen or an address taken.
        _ = try request.limits.requested
        let (explicit, automatic) = try addresses(request.ips)
        var spec = VPSSpec(request)
        spec.ips = explicit
        let owner = caller.tenant ?? ""

        let (node, allocated) = try ledger.place(spec.name, spec.placementRequest, pinnedTo: spec.pinnedNode.isEmpty ? nil : spec.pinnedNode) { node in
            try store.reserveVPS(
                VPSRecord(name: spec.name, node: node, tenant: owner, spec: spec, status: Self.creatingStatus(spec, on: node), phase: .creating),
                autoAddresses: automatic)
        }
        spec.ips = explicit + allocated
        let record = VPSRecord(name: spec.name, node: node, tenant: owner, spec: spec, status: Self.creatingStatus(spec, on: node), phase: .creating)
        logger.info("placing VPS", metadata: ["vps": "\(record.name)", "node": "\(record.node)", "by": "\(caller.name)"])
        stream.progress("placed on \(record.node)" + (allocated.isEmpty ? "" : ", addresses \(allocated.joined(separator: " "))"))

        // The agent gets the request as the client sent it, with the addresses filled in and
        // without what only the controller reads.
        var agentRequest = Berth_V1_Request()
        var create = request
        create.ips = spec.ips
        create.node = ""
        create.constraints = [:]
        create.antiAffinity = ""
        agentRequest.create = create
        creating.withLock { _ = $0.insert(record.name) }
        defer { creating.withLock { _ = $0.remove(record.name) } }
        do {
            guard let node = try store.node(record.node) else { throw WireError(.corruptState, "node \(record.node) vanished") }
            let response = try await links.forward(agentRequest, to: node, stream: stream)
            var status = response.status
            status.node = record.node
            var updated = record
            updated.status = VPSStatusRecord(status)
            updated.phase = .ready
            try store.updateVPS(updated)
            try? store.addEvent(kind: "vps.created", subject: record.name, message: "on \(record.node) by \(caller.name)")
            return status
        } catch let error as WireError where [.unavailable, .deadlineExceeded, .cancelled].contains(error.code) {
            // The node may have created it before the answer was lost: keep the record (state
            // `creating`); the node's next heartbeat settles it, and destroy removes it if not.
            throw WireError(
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

    /// start/stop/restart/set/exec/console/stats: relayed to the VPS's node; the stored status
    /// follows what the node answers.
    func relay(_ request: Berth_V1_Request, name: String, by caller: Caller, stream: ServerStream) async throws -> Berth_V1_Response {
        let record = try visibleVPS(name, to: caller)
        var response = try await links.forward(request, to: try placedNode(record), stream: stream)
        heartbeats.forgetReport(of: record.node)
        switch response.result {
        case .status(var status):
            status.node = record.node
            response.status = status
            try? store.updateStatus(record.name, VPSStatusRecord(status))
        case .set(var result):
            result.status.node = record.node
            response.set = result
            try? store.updateStatus(record.name, VPSStatusRecord(result.status))
        default: break
        }
        return response
    }

    /// `stats` reads the node's counters; nothing of the record changes.
    func stats(_ request: Berth_V1_Request, name: String, by caller: Caller, stream: ServerStream) async throws -> Berth_V1_Response {
        let record = try visibleVPS(name, to: caller)
        return try await links.forward(request, to: try placedNode(record), stream: stream)
    }

    /// The node's fresh answer while it is up and the VPS is created, else the last known status.
    func status(_ request: Berth_V1_Request, name: String, by caller: Caller, stream: ServerStream) async throws -> Berth_V1_Response {
        let record = try visibleVPS(name, to: caller)
        if liveness.isAlive(record.node), record.phase == .ready, let node = try store.node(record.node),
            var fresh = try? await links.forward(request, to: node, stream: stream)
        {
            fresh.status.node = node.name
            return fresh
        }
        var response = Berth_V1_Response()
        response.status = Berth_V1_VpsStatus(currentStatus(record))
        return response
    }

    func list(all: Bool, selector: [String: String], by caller: Caller) throws -> [VPSStatusRecord] {
        try store.vpses()
            .filter { caller.sees(vpsOf: $0.tenant) }
            .map(currentStatus)
            .filter { all || $0.state != "stopped" }
            .filter { status in selector.allSatisfy { status.labels[$0.key] == $0.value } }
    }

    /// `set`: addresses added live are reserved cluster-wide before the node sees them (the
    /// node only knows its own VPSs), and released when the node refuses them or once removed;
    /// raised limits must fit the VPS's node and are reserved before the node applies them, so
    /// two concurrent raises cannot both take the last of it.
    func set(_ r: Berth_V1_SetRequest, request: Berth_V1_Request, by caller: Caller, stream: ServerStream) async throws -> Berth_V1_Response {
        let record = try visibleVPS(r.name, to: caller)
        var added: [String] = []
        for ip in r.ipAdd {
            guard let canonical = IPPoolMath.canonical(ip) else {
                throw WireError(
                    .invalidArgument, "ip-add: '\(ip)' is not an IPv4 or IPv6 address (pool addresses are given at create: --ip auto[:POOL])", field: "ip-add")
            }
            added.append(canonical)
        }
        // Bad limits are refused here, before anything is reserved; the node checks them again
        // against its own CPUs.
        let wanted = try record.spec.limits.merging(r.limits.update, onlineCPUs: nil)
        let resize = try ledger.reserveResize(record.placed, to: PlacementRequest(wanted.commitment))
        let reserved: [String]
        do {
            reserved = try store.reserveAddresses(added, for: r.name)
        } catch {
            if let resize { ledger.release(resize) }
            throw error
        }
        let response: Berth_V1_Response
        do {
            response = try await relay(request, name: r.name, by: caller, stream: stream)
        } catch {
            try? store.releaseAddresses(reserved, of: r.name)
            if let resize { ledger.release(resize) }
            throw error
        }
        // What the VPS holds now decides: an address both added and deleted stays released
        // only if the node really dropped it.
        let holds = Set(response.set.status.ips.compactMap(IPPoolMath.canonical))
        try? store.releaseAddresses(r.ipDel.compactMap(IPPoolMath.canonical).filter { !holds.contains($0) }, of: r.name)
        // The limits the node answered are what the VPS commits from now on.
        if var current = try store.vps(r.name) {
            var counted = current.placed
            counted.cost = resize?.new ?? counted.cost
            current.spec.ips = response.set.status.ips
            current.spec.limits = Limits(response.set.status.limits)
            try? store.updateVPS(current)
            ledger.recount(counted, as: current.spec.cost)
        }
        return response
    }

    func destroy(_ request: Berth_V1_Request, name: String, by caller: Caller, stream: ServerStream) async throws -> Berth_V1_Response {
        let record = try visibleVPS(name, to: caller)
        guard !creating.withLock({ $0.contains(record.name) }) else {
            throw WireError(.conflict, "name: \(record.name) is still being created on \(record.node); destroy it once the create has finished", field: "name")
        }
        var response = Berth_V1_Response()
        do {
            response = try await links.forward(request, to: try placedNode(record), stream: stream)
        } catch let error as WireError where error.code == .notFound && record.phase == .creating {
            response.ok = Berth_V1_Empty()  // an earlier create never reached the node
        }
        try forget(record)
        try? store.addEvent(kind: "vps.destroyed", subject: record.name, message: "on \(record.node) by \(caller.name)")
        return response
    }
}
