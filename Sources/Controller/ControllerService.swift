import BerthCore
import Crypto
import Foundation
import Logging
import Placement
import Synchronization
import Wire
import WireTLS

/// The controller's RPC surface. Every call is authorised from the caller's verified
/// certificate (role + name), never from a payload field: a node reports only about itself and a
/// tenant sees and touches only its own VPSs (others' look like they do not exist).
public final class ControllerService: WireService {
    let store: ClusterStore
    let ca: ClusterCA
    public let liveness: Liveness
    let links: AgentLinks
    let settings: ControllerSettings
    let registry: PeerRegistry
    let logger: Logger
    /// What the VPSs placed on each node commit, kept in memory so a placement does not read
    /// every VPS record; guarded with the rotating start of the scheduler's scan. Placement
    /// reads it and reserves in the store under this one lock, so two creates cannot both take
    /// the last slot of a node.
    struct PlacementState {
        var usage: [String: NodeUsage] = [:]
        var start = 0
    }
    let placement = Mutex(PlacementState())
    /// Creates on their way to a node: their records must not be destroyed under them.
    let creating = Mutex(Set<String>())
    /// What a heartbeat needs without touching SQLite: each node's current certificate serial,
    /// the revoked serials (both change only through this service), and the last status report
    /// per node, so an unchanged report is not compared row by row again.
    struct HeartbeatCache {
        var serials: [String: String] = [:]
        var revoked: [String] = []
        var lastReport: [String: [Berth_V1_VpsStatus]] = [:]
        var lastMeta: [String: Berth_V1_Heartbeat] = [:]
        /// Renewed certificates not yet seen on a heartbeat: the node switches to them (its
        /// listener first), and its first heartbeat with one makes it the node's current serial.
        var pendingSerials: [String: String] = [:]
        /// Nodes an admin asked to renew (`berth node rotate`), told so in heartbeat replies.
        var renewRequested: Set<String> = []
    }
    let heartbeatCache = Mutex(HeartbeatCache())
    /// Set by the server once it listens: takes a new controller certificate for new connections
    /// and agent links, returning the new and the old serial.
    let controllerRotation = Mutex<(@Sendable () async throws -> (new: String, old: String))?>(nil)

    public init(store: ClusterStore, ca: ClusterCA, links: AgentLinks, settings: ControllerSettings,
                registry: PeerRegistry, logger: Logger) throws {
        self.store = store
        self.ca = ca
        self.links = links
        self.settings = settings
        self.registry = registry
        self.logger = logger
        self.liveness = Liveness(downAfter: settings.downAfter)
        let nodes = try store.nodes()
        let revoked = try store.revoked()
        liveness.seed(nodes)
        try store.abandonRunningOperations()
        registry.revoke(revoked)
        heartbeatCache.withLock { cache in
            for node in nodes { cache.serials[node.name] = node.certificateSerial }
            cache.revoked = revoked.sorted()
        }
        var usage: [String: NodeUsage] = [:]
        for vps in try store.vpses() { usage[vps.node, default: NodeUsage()].add(vps.spec, cost: Self.placementCost(vps.spec)) }
        let loaded = usage
        placement.withLock { $0.usage = loaded }
    }

    /// Removes a VPS record and its share of its node's usage.
    func forget(_ record: VPSRecord) throws {
        guard try store.removeVPS(record.name) else { return }  // someone else already did
        let cost = Self.placementCost(record.spec)
        placement.withLock { $0.usage[record.node]?.remove(record.spec, cost: cost) }
    }

    enum Access { case admin, operate, read, writeVPS }

    func authorise(_ peer: PeerIdentity, _ access: Access, call: String) throws(WireError) -> CertificateIdentity {
        guard case .certificate(let identity) = peer else {
            throw WireError(.unauthenticated, "\(call): a client certificate from the cluster CA is required (only enrolment works without one)")
        }
        let allowed: Bool
        switch (access, identity.role) {
        case (_, .admin): allowed = true
        case (.operate, .operator_), (.read, .operator_), (.writeVPS, .operator_): allowed = true
        case (.read, .viewer): allowed = true
        case (.read, .tenant), (.writeVPS, .tenant): allowed = true
        default: allowed = false
        }
        guard allowed else {
            throw WireError(.permissionDenied, "\(call): role \(identity.role) may not do this")
        }
        return identity
    }

    func isTenant(_ identity: CertificateIdentity) -> String? {
        if case .tenant(let name) = identity.role { return name }
        return nil
    }

    /// The VPS, if it exists and the caller may see it (to a tenant, others' VPSs do not exist).
    func visibleVPS(_ name: String, to identity: CertificateIdentity) throws -> VPSRecord {
        guard let record = try store.vps(name), isTenant(identity).map({ $0 == record.tenant }) ?? true else {
            throw WireError(.notFound, "name: no VPS named \(name) in the cluster", field: "name")
        }
        return record
    }

    public func handle(_ request: Berth_V1_Request, stream: ServerStream) async throws -> Berth_V1_Response {
        // A connection without a certificate may enrol and nothing else, whatever the call.
        if stream.peer == .anonymous {
            guard case .enroll = request.call else {
                throw WireError(.unauthenticated, "a client certificate from the cluster CA is required (only enrolment works without one)")
            }
        }
        switch request.call {
        case .create(let r): return try await operation(request, kind: "create", subject: r.name, stream: stream)
        case .start(let r): return try await operation(request, kind: "start", subject: r.name, stream: stream)
        case .restart(let r): return try await operation(request, kind: "restart", subject: r.name, stream: stream)
        case .stop(let r): return try await operation(request, kind: "stop", subject: r.name, stream: stream)
        case .destroy(let r): return try await operation(request, kind: "destroy", subject: r.name, stream: stream)
        default: return try await perform(request, stream: stream)
        }
    }

    /// A mutating VPS call as an operation: recorded with its progress and result, so that the
    /// same operation id — a retry after a lost connection, or another client — re-attaches to
    /// it (or gets its result) instead of doing it twice.
    func operation(_ request: Berth_V1_Request, kind: String, subject: String, stream: ServerStream) async throws -> Berth_V1_Response {
        guard case .certificate(let identity) = stream.peer else { return try await perform(request, stream: stream) }
        let id = request.operationID.isEmpty ? randomHex(bytes: 12) : request.operationID
        guard (1...64).contains(id.utf8.count), id.utf8.allSatisfy({ (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0) || $0 == 45 || $0 == 95 }) else {
            throw WireError(.invalidArgument, "operation-id: '\(id)' must be 1-64 of letters, digits, '-' and '_'", field: "operation-id")
        }
        let owner = identity.role.description + "/" + identity.name
        if try !store.beginOperation(id: id, kind: kind, subject: subject, owner: owner) {
            return try await reattach(id: id, kind: kind, subject: subject, owner: owner, stream: stream)
        }
        stream.progress("operation \(id)")
        let store = self.store
        stream.onProgress = { step in try? store.operationProgress(id: id, step) }
        // The work is not a child of this call: a lost connection (or the caller's deadline) must
        // not abort an operation half-way; it runs to its end and a retry re-attaches to it.
        let work = Task {
            do {
                let response = try await self.perform(request, stream: stream)
                try? store.finishOperation(id: id, result: response, error: nil)
                return response
            } catch {
                try? store.finishOperation(id: id, result: nil, error: WireError.from(error).reply)
                throw error
            }
        }
        return try await work.value
    }

    /// Follows an operation that another call started (or finished) until it ends.
    func reattach(id: String, kind: String, subject: String, owner: String, stream: ServerStream) async throws -> Berth_V1_Response {
        var lastStep = ""
        while true {
            guard let (operation, startedBy) = try store.operation(id) else {
                throw WireError(.notFound, "operation-id: no operation \(id)", field: "operation-id")
            }
            guard startedBy == owner, operation.kind == kind, operation.subject == subject else {
                throw WireError(.conflict, "operation-id: \(id) names another operation (ids are chosen once per operation)", field: "operation-id")
            }
            if operation.progress != lastStep && !operation.progress.isEmpty {
                lastStep = operation.progress
                stream.progress(lastStep)
            }
            switch operation.state {
            case "succeeded": return operation.result
            case "failed": throw WireError(reply: operation.error)
            default: try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    func perform(_ request: Berth_V1_Request, stream: ServerStream) async throws -> Berth_V1_Response {
        var response = Berth_V1_Response()
        let peer = stream.peer
        switch request.call {
        case .enroll(let r):
            response.enrolled = try enroll(r)
        case .heartbeat(let r):
            response.heartbeat = try heartbeat(r, peer: peer)
        case .renew(let r):
            response.enrolled = try renew(r, peer: peer)
        case .rotate(let r):
            response.rotated = try await rotate(r, peer: peer)
        case .nodeJoinToken(let r):
            _ = try authorise(peer, .admin, call: "node join-token")
            response.joinToken = try joinToken(ttl: r.ttlSeconds)
        case .revoke(let r):
            let identity = try authorise(peer, .admin, call: "ca revoke")
            let serial = try CertificateIdentity.canonicalSerial(r.serial)
            try revokeSerial(serial)
            try? store.addEvent(kind: "certificate.revoked", subject: serial, message: "revoked by \(identity.name)")
            logger.notice("certificate revoked", metadata: ["serial": "\(serial)", "by": "\(identity.name)"])
            response.ok = Berth_V1_Empty()
        case .nodeList:
            let identity = try authorise(peer, .read, call: "node list")
            guard isTenant(identity) == nil else { throw WireError(.permissionDenied, "node list: tenants do not see nodes") }
            var list = Berth_V1_NodeList()
            list.nodes = try store.nodes().map { clusterNode($0) }
            response.nodes = list
        case .nodeShow(let r):
            let identity = try authorise(peer, .read, call: "node show")
            guard isTenant(identity) == nil else { throw WireError(.permissionDenied, "node show: tenants do not see nodes") }
            guard let node = try store.node(r.name) else { throw WireError(.notFound, "name: no node named \(r.name)", field: "name") }
            response.clusterNode = clusterNode(node)
        case .nodeCordon(let r), .nodeUncordon(let r):
            let identity = try authorise(peer, .operate, call: "node cordon")
            let cordon: Bool
            if case .nodeCordon = request.call { cordon = true } else { cordon = false }
            guard try store.setCordoned(r.name, cordon) else { throw WireError(.notFound, "name: no node named \(r.name)", field: "name") }
            try? store.addEvent(kind: cordon ? "node.cordoned" : "node.uncordoned", subject: r.name, message: "by \(identity.name)")
            response.clusterNode = clusterNode(try store.node(r.name)!)
        case .ippoolAdd(let r):
            _ = try authorise(peer, .operate, call: "ippool add")
            let pool = try IPPoolMath.validatePool(name: r.name, cidr: r.cidr, gateway: r.gateway)
            try store.addPool(pool)
            response.ippool = wirePool(pool, used: 0)
        case .ippoolList:
            let identity = try authorise(peer, .read, call: "ippool list")
            guard isTenant(identity) == nil else { throw WireError(.permissionDenied, "ippool list: tenants do not see pools") }
            let usage = try store.poolUsage()
            var list = Berth_V1_IpPoolList()
            list.pools = try store.pools().map { wirePool($0, used: usage[$0.name] ?? 0) }
            response.ippools = list
        case .ippoolRemove(let r):
            _ = try authorise(peer, .operate, call: "ippool remove")
            try store.removePool(r.name)
            response.ok = Berth_V1_Empty()
        case .create(let r):
            let identity = try authorise(peer, .writeVPS, call: "create")
            response.status = try await create(r, by: identity, stream: stream)
        case .list(let r):
            let identity = try authorise(peer, .read, call: "list")
            var list = Berth_V1_VpsList()
            list.vpses = try store.vpses()
                .filter { record in isTenant(identity).map { $0 == record.tenant } ?? true }
                .map(currentStatus)
                .filter { r.all || $0.state != "stopped" }
                .filter { status in r.selector.allSatisfy { status.labels[$0.key] == $0.value } }
            response.list = list
        case .status(let r):
            let identity = try authorise(peer, .read, call: "status")
            let record = try visibleVPS(r.name, to: identity)
            if liveness.isAlive(record.node), record.phase == "ready", let node = try store.node(record.node),
               let fresh = try? await forward(request, to: node, stream: stream) {
                response = fresh
                response.status.node = node.name
            } else {
                response.status = currentStatus(record)
            }
        case .stats(let r):
            let identity = try authorise(peer, .read, call: "stats")
            let record = try visibleVPS(r.name, to: identity)
            response = try await forward(request, to: try placedNode(record), stream: stream)
        case .start(let r), .restart(let r):
            response = try await lifecycle(request, name: r.name, peer: peer, stream: stream)
        case .stop(let r):
            response = try await lifecycle(request, name: r.name, peer: peer, stream: stream)
        case .set(let r):
            response = try await set(r, request: request, peer: peer, stream: stream)
        case .exec(let r):
            response = try await lifecycle(request, name: r.name, peer: peer, stream: stream)
        case .console(let r):
            response = try await lifecycle(request, name: r.name, peer: peer, stream: stream)
        case .destroy(let r):
            let identity = try authorise(peer, .writeVPS, call: "destroy")
            let record = try visibleVPS(r.name, to: identity)
            guard !creating.withLock({ $0.contains(record.name) }) else {
                throw WireError(.conflict, "name: \(record.name) is still being created on \(record.node); destroy it once the create has finished", field: "name")
            }
            do {
                response = try await forward(request, to: try placedNode(record), stream: stream)
            } catch let error as WireError where error.code == .notFound && record.phase == "creating" {
                response.ok = Berth_V1_Empty()   // an earlier create never reached the node
            }
            try forget(record)
            try? store.addEvent(kind: "vps.destroyed", subject: record.name, message: "on \(record.node) by \(identity.name)")
        case .operationShow(let r):
            let identity = try authorise(peer, .read, call: "operation show")
            guard r.waitMs <= 30_000 else { throw WireError(.invalidArgument, "wait: at most 30 s per call", field: "wait") }
            let deadline = ContinuousClock.now + .milliseconds(Int(r.waitMs))
            while true {
                guard let (operation, owner) = try store.operation(r.id), mayReadOperation(owner: owner, identity) else {
                    throw WireError(.notFound, "id: no operation \(r.id)", field: "id")
                }
                if operation.state != "running" || ContinuousClock.now >= deadline {
                    response.operation = operation
                    break
                }
                try await Task.sleep(for: .milliseconds(200))
            }
        case .operationList:
            let identity = try authorise(peer, .read, call: "operation list")
            var list = Berth_V1_OperationList()
            list.operations = try store.recentOperations(limit: 200).filter { mayReadOperation(owner: $0.owner, identity) }.map(\.operation)
            response.operations = list
        case .events(let r):
            let identity = try authorise(peer, .read, call: "events")
            guard isTenant(identity) == nil else { throw WireError(.permissionDenied, "events: tenants do not see the cluster's event log") }
            guard r.waitMs <= 30_000, r.limit <= 1000 else {
                throw WireError(.invalidArgument, "events: wait_ms is at most 30000 and limit at most 1000", field: "wait_ms")
            }
            guard let after = Int64(exactly: r.afterID) else { throw WireError(.invalidArgument, "events: after_id out of range", field: "after_id") }
            let limit = r.limit == 0 ? 100 : Int(r.limit)
            let deadline = ContinuousClock.now + .milliseconds(Int(r.waitMs))
            var found = try store.events(after: after, limit: limit)
            while found.isEmpty && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
                found = try store.events(after: after, limit: limit)
            }
            var list = Berth_V1_EventList()
            list.events = found
            response.events = list
        case .templateUpload(let r):
            let identity = try authorise(peer, .operate, call: "template import")
            response.templateUpload = try await distributeTemplate(r, by: identity, stream: stream)
        case .templateExport(let r):
            _ = try authorise(peer, .operate, call: "template export")
            // The tar stream is relayed from the node under each hop's credit.
            return try await forward(request, to: try exportingNode(r), stream: stream)
        case .templateBuild, .templateImport, .templateRemove, .templateList, .nodeInfo:
            throw WireError(.invalidArgument, "templates and node info are per node: run this against the node's agent (berth --agent), or see `berth node show NODE`; `berth template import NAME FILE` through the controller sends a tarball to every node")
        case nil:
            throw WireError(.invalidArgument, "the request names no call (is the client newer than this controller?)")
        }
        return response
    }

    // MARK: - Templates

    /// `template import` through the controller: the tarball is received once, checked against
    /// its size and SHA-256, then sent to each target node (every node that is up, or the ones
    /// named), at most four at a time, each under its own stream credit. One node's failure does
    /// not stop the others; the result says per node what happened.
    func distributeTemplate(_ r: Berth_V1_TemplateUploadRequest, by identity: CertificateIdentity,
                            stream: ServerStream) async throws -> Berth_V1_TemplateUploadResult {
        try Name.validate(r.name, field: "template")
        guard FileTransfer.tarFormats.contains(r.format) else {
            throw WireError(.invalidArgument, "format: '\(r.format)' is not tar, tar.gz or tar.xz", field: "format")
        }
        let nodes = try store.nodes()
        var targets: [NodeRecord] = []
        if r.nodes.isEmpty {
            targets = nodes.filter { liveness.isAlive($0.name) }
            guard !targets.isEmpty else { throw WireError(.unavailable, "no node is up to take template \(r.name)") }
        } else {
            for name in Set(r.nodes).sorted() {
                guard let node = nodes.first(where: { $0.name == name }) else {
                    throw WireError(.notFound, "node: no node named \(name) (see `berth node list`)", field: "node")
                }
                guard liveness.isAlive(name) else { throw WireError(.unavailable, "node: \(name) is down", field: "node") }
                targets.append(node)
            }
        }
        let staging = settings.uploadDirectory + "/template-\(r.name)-\(UUID().uuidString).\(r.format)"
        defer { unlink(staging) }
        try await FileTransfer.receive(into: staging, size: r.size, sha256: r.sha256, from: stream.input, field: "tarball")
        stream.progress("received \(r.size) bytes, sha256 verified; sending to \(targets.map(\.name).joined(separator: ", "))")
        var placed: [Berth_V1_TemplatePlacement] = []
        try await withThrowingTaskGroup(of: Berth_V1_TemplatePlacement.self) { group in
            var pending = targets[...]
            for _ in 0..<4 {
                guard let node = pending.popFirst() else { break }
                group.addTask { await self.sendTemplate(staging, r, to: node, stream: stream) }
            }
            while let done = try await group.next() {
                placed.append(done)
                if let node = pending.popFirst() {
                    group.addTask { await self.sendTemplate(staging, r, to: node, stream: stream) }
                }
            }
        }
        placed.sort { $0.node < $1.node }
        let good = placed.filter { $0.hasTemplate }.map(\.node)
        try? store.addEvent(kind: "template.distributed", subject: r.name,
                            message: "to \(good.isEmpty ? "no node" : good.joined(separator: ",")) by \(identity.name)")
        logger.info("template distributed", metadata: ["template": "\(r.name)", "nodes": "\(good)", "by": "\(identity.name)"])
        var result = Berth_V1_TemplateUploadResult()
        result.placed = placed
        return result
    }

    /// The node a template export comes from: the one named, or the first node that is up and
    /// reported holding the template.
    func exportingNode(_ r: Berth_V1_TemplateExportRequest) throws -> NodeRecord {
        let nodes = try store.nodes()
        if !r.node.isEmpty {
            guard let node = nodes.first(where: { $0.name == r.node }) else {
                throw WireError(.notFound, "node: no node named \(r.node) (see `berth node list`)", field: "node")
            }
            guard liveness.isAlive(node.name) else { throw WireError(.unavailable, "node: \(node.name) is down", field: "node") }
            return node
        }
        guard let node = nodes.first(where: { liveness.isAlive($0.name) && (liveness.report($0.name)?.templates?.contains(r.name) ?? false) }) else {
            throw WireError(.notFound, "template: no node that is up holds template \(r.name)", field: "template")
        }
        return node
    }

    func sendTemplate(_ path: String, _ r: Berth_V1_TemplateUploadRequest, to node: NodeRecord,
                      stream: ServerStream) async -> Berth_V1_TemplatePlacement {
        var placement = Berth_V1_TemplatePlacement()
        placement.node = node.name
        do {
            var upload = r
            upload.nodes = []
            var request = Berth_V1_Request()
            request.templateUpload = upload
            let call = try await links.client(for: node).start(request)
            try await FileTransfer.send(path, on: call)
            let response = try await call.result { stream.progress("\(node.name): \($0.step)") }
            guard let template = response.templateUpload.placed.first?.template else {
                throw WireError(.internalError, "node \(node.name) answered without the template")
            }
            placement.template = template
            stream.progress("\(node.name): imported")
        } catch {
            placement.error = WireServerHandler.wireError(from: error).reply
            stream.progress("\(node.name): failed: \(placement.error.message)")
        }
        return placement
    }

    // MARK: - VPS calls

    func placedNode(_ record: VPSRecord) throws -> NodeRecord {
        guard let node = try store.node(record.node) else {
            throw WireError(.corruptState, "VPS \(record.name) is placed on node \(record.node), which is not registered")
        }
        guard liveness.isAlive(node.name) else {
            throw WireError(.unavailable, "node \(node.name) of VPS \(record.name) is down (no heartbeat for \(liveness.millisecondsSinceHeartbeat(node.name).map { "\($0) ms" } ?? "ever"))")
        }
        return node
    }

    /// start/stop/restart/set/exec/console: forwarded to the VPS's node; the cached status follows.
    func lifecycle(_ request: Berth_V1_Request, name: String, peer: PeerIdentity, stream: ServerStream) async throws -> Berth_V1_Response {
        let identity = try authorise(peer, .writeVPS, call: Self.callName(request))
        let record = try visibleVPS(name, to: identity)
        var response = try await forward(request, to: try placedNode(record), stream: stream)
        // The node's next report is compared row by row again, whatever it says.
        heartbeatCache.withLock { $0.lastReport[record.node] = nil }
        switch response.result {
        case .status(var status):
            status.node = record.node
            response.status = status
            try? store.updateStatus(record.name, status)
        case .set(var result):
            result.status.node = record.node
            response.set = result
            try? store.updateStatus(record.name, result.status)
        default: break
        }
        return response
    }

    /// `set`: addresses added live are reserved cluster-wide before the node sees them (the
    /// node only knows its own VPSs), and released when the node refuses them or once removed.
    func set(_ r: Berth_V1_SetRequest, request: Berth_V1_Request, peer: PeerIdentity, stream: ServerStream) async throws -> Berth_V1_Response {
        let identity = try authorise(peer, .writeVPS, call: "set")
        _ = try visibleVPS(r.name, to: identity)
        var added: [String] = []
        for ip in r.ipAdd {
            guard let canonical = IPPoolMath.canonical(ip) else {
                throw WireError(.invalidArgument, "ip-add: '\(ip)' is not an IPv4 or IPv6 address (pool addresses are given at create: --ip auto[:POOL])", field: "ip-add")
            }
            added.append(canonical)
        }
        // Raised limits must fit the VPS's node: they are reserved before the node applies them,
        // so two concurrent raises cannot both take the last of it.
        let resize = try reserveResize(r)
        let reserved: [String]
        do {
            reserved = try store.reserveAddresses(added, for: r.name)
        } catch {
            releaseResize(resize)
            throw error
        }
        let response: Berth_V1_Response
        do {
            response = try await lifecycle(request, name: r.name, peer: peer, stream: stream)
        } catch {
            try? store.releaseAddresses(reserved, of: r.name)
            releaseResize(resize)
            throw error
        }
        // What the VPS holds now decides: an address both added and deleted stays released
        // only if the node really dropped it.
        let holds = Set(response.set.status.ips.compactMap(IPPoolMath.canonical))
        try? store.releaseAddresses(r.ipDel.compactMap(IPPoolMath.canonical).filter { !holds.contains($0) }, of: r.name)
        // New limits change what the VPS commits on its node.
        if var record = try store.vps(r.name) {
            let reservedCost = resize?.new ?? Self.placementCost(record.spec)
            record.spec.ips = response.set.status.ips
            record.spec.limits = response.set.status.limits
            let newCost = Self.placementCost(record.spec)
            try? store.updateVPS(record)
            placement.withLock { state in
                state.usage[record.node]?.remove(record.spec, cost: reservedCost)
                state.usage[record.node, default: NodeUsage()].add(record.spec, cost: newCost)
            }
        }
        return response
    }

    /// What a `set` commits on the VPS's node before and after, already swapped in the node's
    /// usage; nil when the request changes no committed resource.
    struct ResizeReservation {
        let node: String
        let spec: Berth_V1_CreateRequest
        let old: PlacementRequest
        let new: PlacementRequest
    }

    func reserveResize(_ r: Berth_V1_SetRequest) throws -> ResizeReservation? {
        guard let record = try store.vps(r.name) else { return nil }
        // Bad limits are refused here, before anything is reserved; the node checks them again
        // against its own CPUs.
        let wanted = try Limits(record.spec.limits).merging(r.limits.update, onlineCPUs: nil)
        let old = Self.placementCost(record.spec), new = PlacementRequest(wanted.commitment)
        if old.cpuMillis == new.cpuMillis && old.memoryBytes == new.memoryBytes && old.diskBytes == new.diskBytes { return nil }
        try placement.withLock { state in
            guard let node = try store.node(record.node) else { return }
            let snapshot = self.snapshot(of: node, usage: state.usage[node.name])
            if let rejection = Scheduler(policy: settings.policy).resizeRejection(of: snapshot, from: old, to: new) {
                throw WireError(.noCapacity, "\(rejection.rawValue) on \(node.name) for the new limits of \(r.name) (\(capacityText(snapshot, rejection)))")
            }
            state.usage[node.name]?.remove(record.spec, cost: old)
            state.usage[node.name, default: NodeUsage()].add(record.spec, cost: new)
        }
        return ResizeReservation(node: record.node, spec: record.spec, old: old, new: new)
    }

    func releaseResize(_ resize: ResizeReservation?) {
        guard let resize else { return }
        placement.withLock { state in
            state.usage[resize.node]?.remove(resize.spec, cost: resize.new)
            state.usage[resize.node, default: NodeUsage()].add(resize.spec, cost: resize.old)
        }
    }

    /// "23.5G allocatable, 20G committed" for the resource a rejection names.
    func capacityText(_ node: NodeSnapshot, _ rejection: Rejection) -> String {
        let policy = settings.policy
        switch rejection {
        case .cpu: return "\(UInt64(Double(node.cpuMillis) * policy.cpuOvercommit) / 10)% CPU allocatable, \(node.usedCpuMillis / 10)% committed"
        case .memory: return "\(ByteSize.format(UInt64(Double(node.memoryBytes) * policy.memoryOvercommit))) allocatable, \(ByteSize.format(node.usedMemoryBytes)) committed"
        case .disk: return "\(ByteSize.format(UInt64(Double(node.diskBytes) * policy.diskOvercommit))) allocatable, \(ByteSize.format(node.usedDiskBytes)) committed"
        default: return rejection.rawValue
        }
    }

    static func callName(_ request: Berth_V1_Request) -> String {
        switch request.call {
        case .start: return "start"
        case .stop: return "stop"
        case .restart: return "restart"
        case .set: return "set"
        case .exec: return "exec"
        case .console: return "console"
        default: return "call"
        }
    }

    /// The last reported status, with the node filled in and `unknown` while the node is down.
    func currentStatus(_ record: VPSRecord) -> Berth_V1_VpsStatus {
        var status = record.status
        status.name = record.name
        status.node = record.node
        if status.template.isEmpty { status.template = record.spec.template }
        if record.phase == "creating" { status.state = "creating" }
        else if !liveness.isAlive(record.node) { status.state = "unknown" }
        return status
    }

    func create(_ request: Berth_V1_CreateRequest, by identity: CertificateIdentity, stream: ServerStream) async throws -> Berth_V1_VpsStatus {
        try Name.validate(request.name)
        guard !request.template.isEmpty else { throw WireError(.invalidArgument, "template: required", field: "template") }
        // Limits out of Berth's bounds are refused before a node is chosen or an address taken.
        _ = try request.limits.requested
        var explicit: [String] = []
        var automatic: [String: Int] = [:]
        let pools = try store.pools()
        for ip in request.ips {
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
        var spec = request
        spec.ips = explicit
        let owner = isTenant(identity) ?? ""

        let (record, allocated) = try placement.withLock { state throws -> (VPSRecord, [String]) in
            let node = try choose(for: spec, state: &state)
            var status = Berth_V1_VpsStatus()
            status.name = spec.name
            status.node = node
            status.state = "creating"
            status.template = spec.template
            let record = VPSRecord(name: spec.name, node: node, tenant: owner, spec: spec, status: status, phase: "creating")
            let allocated = try store.reserveVPS(record, autoAddresses: automatic.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
            state.usage[node, default: NodeUsage()].add(spec, cost: Self.placementCost(spec))
            return (record, allocated)
        }
        logger.info("placing VPS", metadata: ["vps": "\(record.name)", "node": "\(record.node)", "by": "\(identity.name)"])
        stream.progress("placed on \(record.node)" + (allocated.isEmpty ? "" : ", addresses \(allocated.joined(separator: " "))"))

        var agentRequest = Berth_V1_Request()
        var create = spec
        create.ips = explicit + allocated
        create.node = ""
        create.constraints = [:]
        create.antiAffinity = ""
        agentRequest.create = create
        creating.withLock { _ = $0.insert(record.name) }
        defer { creating.withLock { _ = $0.remove(record.name) } }
        do {
            guard let node = try store.node(record.node) else { throw WireError(.corruptState, "node \(record.node) vanished") }
            let response = try await forward(agentRequest, to: node, stream: stream)
            var status = response.status
            status.node = record.node
            var updated = record
            updated.spec.ips = create.ips
            updated.status = status
            updated.phase = "ready"
            try store.updateVPS(updated)
            try? store.addEvent(kind: "vps.created", subject: record.name, message: "on \(record.node) by \(identity.name)")
            return status
        } catch let error as WireError where [.unavailable, .deadlineExceeded, .cancelled].contains(error.code) {
            // The node may have created it before the answer was lost: keep the record (state
            // `creating`); the node's next heartbeat settles it, and destroy removes it if not.
            throw WireError(error.code, "\(error.message) (the create may have reached \(record.node): `berth status \(record.name)` shows it once the node reports; `berth destroy` removes the record otherwise)")
        } catch {
            // The node refused it: give the name, the addresses and the capacity back.
            try? forget(record)
            throw error
        }
    }

    /// What the scheduler knows of `node`: its last report (or enrolment info), state and usage.
    func snapshot(of node: NodeRecord, usage: NodeUsage?) -> NodeSnapshot {
        let report = liveness.report(node.name)
        let info = report?.info ?? node.info
        var snapshot = NodeSnapshot(
            name: node.name,
            state: !liveness.isAlive(node.name) ? .down : node.cordoned ? .cordoned : .ready,
            labels: node.labels,
            cpuMillis: UInt64(info.cpus) * 1000, memoryBytes: info.memoryBytes, diskBytes: info.diskBytes)
        if let usage {
            snapshot.usedCpuMillis = usage.cpuMillis
            snapshot.usedMemoryBytes = usage.memoryBytes
            snapshot.usedDiskBytes = usage.diskBytes
            snapshot.vpsCount = usage.count
            snapshot.groups = Set(usage.groups.keys)
        }
        snapshot.templates = report?.templates
        return snapshot
    }

    /// Runs the scheduler on the current snapshot (or checks an explicit --node).
    func choose(for spec: Berth_V1_CreateRequest, state: inout PlacementState) throws -> String {
        let snapshots = try store.nodes().map { snapshot(of: $0, usage: state.usage[$0.name]) }
        var request = Self.placementCost(spec)
        request.constraints = spec.constraints
        request.antiAffinityGroup = spec.antiAffinity.isEmpty ? nil : spec.antiAffinity
        request.template = spec.template
        let scheduler = Scheduler(policy: settings.policy)
        if !spec.node.isEmpty {
            guard let snapshot = snapshots.first(where: { $0.name == spec.node }) else {
                throw WireError(.notFound, "node: no node named \(spec.node) (see `berth node list`)", field: "node")
            }
            if let reason = scheduler.rejection(of: snapshot, for: request) {
                throw WireError(.noCapacity, "node: \(spec.node) cannot take \(spec.name): \(reason.rawValue)", field: "node")
            }
            return spec.node
        }
        state.start &+= 1
        switch scheduler.place(request, on: snapshots, start: state.start) {
        case .node(let name): return name
        case let failure: throw WireError(.noCapacity, failure.explanation)
        }
    }

    /// What a VPS commits to its node: BerthCore's rule, the same one the agent's `node show` sums.
    static func placementCost(_ spec: Berth_V1_CreateRequest) -> PlacementRequest {
        PlacementRequest(Limits(spec.limits).commitment)
    }

    /// Relays one call to an agent: request stream input goes to the agent, the agent's
    /// progress, stream bytes and final response come back. Cancelling our call cancels theirs.
    func forward(_ request: Berth_V1_Request, to node: NodeRecord, stream: ServerStream) async throws -> Berth_V1_Response {
        let client = try await links.client(for: node)
        let call = try await client.start(request)
        let input = Task {
            for await item in stream.input {
                switch item {
                case .data(let channel, let bytes): _ = try? await call.send(channel, Array(bytes.readableBytesView)).get()
                case .end(let channel): call.sendEnd(channel)
                }
            }
        }
        defer { input.cancel() }
        return try await withTaskCancellationHandler {
            for await event in call.events {
                switch event {
                case .data(let channel, let bytes): try await stream.send(channel, bytes)
                case .end(let channel): try await stream.sendEnd(channel)
                case .progress(let progress): stream.progress(progress.step, done: progress.done, total: progress.total)
                case .response(let response): return response
                case .failure(let error): throw error
                }
            }
            throw WireError(.unavailable, "node \(node.name) closed the connection during the call")
        } onCancel: {
            call.cancel()
        }
    }

    // MARK: - nodes

    /// Tenants see their own operations only.
    func mayReadOperation(owner: String, _ identity: CertificateIdentity) -> Bool {
        guard case .tenant = identity.role else { return true }
        return owner.hasPrefix(identity.role.description + "/")
    }

    func clusterNode(_ node: NodeRecord) -> Berth_V1_ClusterNode {
        var wire = Berth_V1_ClusterNode()
        wire.name = node.name
        wire.address = node.address
        wire.labels = node.labels
        let report = liveness.report(node.name)
        wire.info = report?.info ?? node.info
        wire.state = !liveness.isAlive(node.name) ? "down" : node.cordoned ? "cordoned" : "ready"
        wire.lastHeartbeatMsAgo = liveness.millisecondsSinceHeartbeat(node.name) ?? 0
        wire.vpsCount = UInt32(placement.withLock { $0.usage[node.name]?.count ?? 0 })
        wire.templates = report?.templates.map { $0.sorted() } ?? []
        wire.certificateSerial = node.certificateSerial
        return wire
    }

    func wirePool(_ pool: IPPoolRecord, used: Int) -> Berth_V1_IpPool {
        var wire = Berth_V1_IpPool()
        wire.name = pool.name
        wire.cidr = pool.cidr
        wire.gateway = pool.gateway
        wire.used = UInt32(used)
        wire.size = IPPoolMath.size(cidr: pool.cidr)
        return wire
    }

    func joinToken(ttl: UInt32) throws -> Berth_V1_JoinToken {
        let seconds = ttl == 0 ? 3600 : ttl
        guard seconds <= 7 * 24 * 3600 else {
            throw WireError(.invalidArgument, "ttl: \(seconds) s is longer than the maximum of 7 days", field: "ttl")
        }
        let token = JoinTokenText.generate(caFingerprint: ca.fingerprint)
        let expires = Date().addingTimeInterval(TimeInterval(seconds))
        try store.addJoinToken(id: token.id, secretHash: token.secretHash, expires: expires)
        var wire = Berth_V1_JoinToken()
        wire.token = token.text
        wire.expiresUnix = Int64(expires.timeIntervalSince1970)
        return wire
    }

    func enroll(_ request: Berth_V1_EnrollRequest) throws -> Berth_V1_EnrollReply {
        let token = try JoinTokenText(parsing: request.token)
        try Name.validate(request.nodeName)
        _ = try HostPort(parsing: request.address, field: "listen")
        guard token.caFingerprint == ca.fingerprint else {
            throw WireError(.unauthenticated, "join: the token was made for another cluster CA")
        }
        guard try store.consumeJoinToken(id: token.id, secretHash: token.secretHash, now: Date()) else {
            throw WireError(.unauthenticated, "join: the token is unknown, expired or already used (tokens are single-use: make a new one with `berth node join-token`)")
        }
        let (reply, serial) = try nodeCertificate(name: request.nodeName, address: request.address, publicKeyPEM: request.publicKeyPem)
        let previous = try store.node(request.nodeName)
        if let previous, !previous.certificateSerial.isEmpty, previous.certificateSerial != serial {
            // Re-enrolment replaces the node's certificate: the old one stops working at once.
            try revokeSerial(previous.certificateSerial)
        }
        try store.saveNode(NodeRecord(name: request.nodeName, address: request.address, labels: request.labels,
                                      info: previous?.info ?? Berth_V1_NodeInfo(), cordoned: previous?.cordoned ?? false,
                                      certificateSerial: serial))
        heartbeatCache.withLock { $0.serials[request.nodeName] = serial; $0.lastReport[request.nodeName] = nil }
        try? store.addEvent(kind: "node.enrolled", subject: request.nodeName, message: "at \(request.address)")
        logger.notice("node enrolled", metadata: ["node": "\(request.nodeName)", "address": "\(request.address)"])
        return reply
    }

    /// A node certificate for `publicKeyPEM` (CN the node, SANs the host of its listen address
    /// and its name), as enrolment and renewal hand it out.
    func nodeCertificate(name: String, address: String, publicKeyPEM: String) throws -> (Berth_V1_EnrollReply, serial: String) {
        let host = try HostPort(parsing: address, field: "listen").host
        let publicKey: P256.Signing.PublicKey
        do { publicKey = try P256.Signing.PublicKey(pemRepresentation: publicKeyPEM) } catch {
            throw WireError(.invalidArgument, "public_key_pem: not a P-256 public key in PEM", field: "public_key_pem")
        }
        let certificate = try ca.issue(role: .node, name: name, publicKey: publicKey, hosts: [host, name])
        var reply = Berth_V1_EnrollReply()
        do { reply.certificatePem = try certificate.serializeAsPEM().pemString } catch {
            throw WireError(.internalError, "cannot encode the node certificate: \(error)")
        }
        reply.caPem = ca.certificatePEM
        return (reply, try CertificateIdentity(certificate: certificate).serial)
    }

    /// The denylist, the open connections of the serial, and the list heartbeats hand to agents.
    func revokeSerial(_ serial: String) throws {
        try store.revoke(serial)
        registry.revoke([serial])
        noteRevoked(serial)
    }

    /// A node's new certificate for a new key, asked for over its current session (see
    /// ClusterMember.renew). It becomes the node's serial at the first heartbeat made with it.
    func renew(_ request: Berth_V1_RenewRequest, peer: PeerIdentity) throws -> Berth_V1_EnrollReply {
        guard case .certificate(let identity) = peer, identity.role == .node else {
            throw WireError(.permissionDenied, "renew: only nodes renew their certificates (operators get a new bundle with `berth ca issue`)")
        }
        guard heartbeatCache.withLock({ $0.serials[identity.name] == identity.serial }), let node = try store.node(identity.name) else {
            throw WireError(.unauthenticated, "renew: node \(identity.name) is not enrolled with this certificate")
        }
        let (reply, serial) = try nodeCertificate(name: node.name, address: node.address, publicKeyPEM: request.publicKeyPem)
        heartbeatCache.withLock { $0.pendingSerials[node.name] = serial }
        logger.notice("node certificate renewed", metadata: ["node": "\(node.name)", "serial": "\(serial)"])
        return reply
    }

    /// A heartbeat made with a renewed certificate: it is now the node's, and the old one is
    /// revoked (the node no longer uses it; links re-pin to the new serial).
    func commitRenewal(node name: String, serial: String) throws {
        guard let node = try store.node(name) else { return }
        let old = node.certificateSerial
        try store.saveNode(NodeRecord(name: node.name, address: node.address, labels: node.labels, info: node.info,
                                      cordoned: node.cordoned, certificateSerial: serial))
        heartbeatCache.withLock { cache in
            cache.serials[name] = serial
            cache.pendingSerials[name] = nil
            cache.renewRequested.remove(name)
        }
        if !old.isEmpty && old != serial { try revokeSerial(old) }
        try? store.addEvent(kind: "node.certificate-renewed", subject: name, message: "serial \(serial) replaces \(old)")
    }

    /// Admin: the controller takes a new certificate now, and/or a node is asked to renew.
    func rotate(_ request: Berth_V1_RotateRequest, peer: PeerIdentity) async throws -> Berth_V1_RotateResult {
        let identity = try authorise(peer, .admin, call: "rotate")
        guard request.controller || !request.node.isEmpty else {
            throw WireError(.invalidArgument, "rotate: name a node (--node NAME) or the controller (--controller-cert)")
        }
        var result = Berth_V1_RotateResult()
        if !request.node.isEmpty {
            guard try store.node(request.node) != nil else {
                throw WireError(.notFound, "node: no node named \(request.node) (see `berth node list`)", field: "node")
            }
            heartbeatCache.withLock { _ = $0.renewRequested.insert(request.node) }
            result.node = request.node
            try? store.addEvent(kind: "node.renew-requested", subject: request.node, message: "by \(identity.name)")
        }
        if request.controller {
            guard let rotation = controllerRotation.withLock({ $0 }) else {
                throw WireError(.unavailable, "rotate: the controller is not serving yet")
            }
            let (new, old) = try await rotation()
            result.controllerSerial = new
            try? store.addEvent(kind: "controller.certificate-rotated", subject: new, message: "replaces \(old), by \(identity.name)")
            logger.notice("controller certificate rotated", metadata: ["serial": "\(new)", "old": "\(old)", "by": "\(identity.name)"])
        }
        return result
    }

    func noteRevoked(_ serial: String) {
        heartbeatCache.withLock { cache in
            if !cache.revoked.contains(serial) { cache.revoked = (cache.revoked + [serial]).sorted() }
        }
    }

    /// The hot path of a large fleet (every node, every second): SQLite is touched only when
    /// something the node reports has changed.
    func heartbeat(_ request: Berth_V1_Heartbeat, peer: PeerIdentity) throws -> Berth_V1_HeartbeatReply {
        guard case .certificate(let identity) = peer, identity.role == .node else {
            throw WireError(.permissionDenied, "heartbeat: only node certificates send heartbeats")
        }
        var meta = request
        meta.vpses = []
        let (enrolled, renewed, unchanged, sameMeta, revoked, renew) = heartbeatCache.withLock { cache in
            (cache.serials[identity.name] == identity.serial, cache.pendingSerials[identity.name] == identity.serial,
             cache.lastReport[identity.name] == request.vpses, cache.lastMeta[identity.name] == meta, cache.revoked,
             cache.renewRequested.contains(identity.name))
        }
        guard enrolled || renewed else {
            throw WireError(.unauthenticated, "heartbeat: node \(identity.name) is not enrolled with this certificate")
        }
        if renewed { try commitRenewal(node: identity.name, serial: identity.serial) }
        if liveness.heartbeat(node: identity.name, info: request.info, templates: request.templates) {
            logger.notice("node up", metadata: ["node": "\(identity.name)"])
            try? store.addEvent(kind: "node.up", subject: identity.name, message: "heartbeat received")
        }
        if !sameMeta {
            heartbeatCache.withLock { $0.lastMeta[identity.name] = meta }
            if let node = try store.node(identity.name) {
                let address = request.address.isEmpty ? node.address : request.address
                if address != node.address || node.labels != request.labels || node.info != request.info {
                    try store.updateNodeReport(name: node.name, serial: identity.serial, address: address,
                                               labels: request.labels, info: request.info)
                }
            }
        }
        if !unchanged {
            _ = try store.recordStatuses(node: identity.name, request.vpses)
            heartbeatCache.withLock { $0.lastReport[identity.name] = request.vpses }
        }
        var reply = Berth_V1_HeartbeatReply()
        reply.intervalMs = UInt32(settings.heartbeatInterval.components.seconds * 1000 + settings.heartbeatInterval.components.attoseconds / 1_000_000_000_000_000)
        reply.revokedSerials = revoked
        reply.renewCertificate = renew && !renewed
        return reply
    }

    /// Logs each node's transition to `down` once (the state itself is computed on demand).
    public func watchLiveness() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(250))
            guard let nodes = try? store.nodes().map(\.name) else { continue }
            for node in liveness.newlyDown(among: nodes) {
                logger.warning("node down", metadata: ["node": "\(node)", "after": "\(settings.downAfter)"])
                try? store.addEvent(kind: "node.down", subject: node, message: "no heartbeat for \(settings.downAfter)")
            }
        }
    }
}

extension NodeUsage {
    mutating func add(_ spec: Berth_V1_CreateRequest, cost: PlacementRequest) { add(group: spec.antiAffinity, cost: cost) }
    mutating func remove(_ spec: Berth_V1_CreateRequest, cost: PlacementRequest) { remove(group: spec.antiAffinity, cost: cost) }
}
