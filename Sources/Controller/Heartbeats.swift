import BerthCore
import Logging
import Placement
import Synchronization
import Wire
import WireTLS

/// What a node says in a heartbeat, read off the wire once (Records+Wire.swift).
struct HeartbeatReport: Sendable, Equatable {
    /// Its listen address; "" leaves the enrolled one.
    var address = ""
    var labels: [String: String] = [:]
    var info = NodeReport()
    /// The templates it holds.
    var templates: [String] = []
    /// The replicas it holds (Docs/ha.md): VPS → when the snapshot held was taken (0: none yet).
    var replicas: [String: Int64] = [:]
    /// Its VPSs' statuses.
    var vpses: [VPSStatusRecord] = []
}

/// What the controller tells the node back.
struct HeartbeatAnswer: Sendable, Equatable {
    /// When to send the next one.
    var interval: Duration
    /// The cluster's denylist, hex.
    var revokedSerials: [String]
    /// An admin asked this node to renew its certificate now.
    var renewCertificate: Bool
    /// The node's lease (Docs/ha.md): its epoch, how long it runs from the heartbeat's send,
    /// the VPSs failed over away from it and the replicas it need not keep.
    var leaseEpoch: UInt64 = 1
    var fenceAfter: Duration = .zero
    var superseded: [String] = []
    var droppedReplicas: [String] = []
}

/// Nodes checking in: each heartbeat proves the node's current certificate, refreshes its
/// liveness and report, and brings back the revoked serials and whether to renew. Also the
/// revocation list (denylist, open connections, what agents are told) and the watch that logs
/// nodes going down.
final class Heartbeats: Sendable {
    /// What a heartbeat needs without touching SQLite: each node's current certificate serial,
    /// the revoked serials (both change only through the controller), and the last report per
    /// node, so an unchanged one is not compared row by row again.
    struct Cache {
        var serials: [String: String] = [:]
        var revoked: [String] = []
        var lastReport: [String: [VPSStatusRecord]] = [:]
        var lastMeta: [String: HeartbeatReport] = [:]
        /// Renewed certificates not yet seen on a heartbeat: the node switches to them (its
        /// listener first), and its first heartbeat with one makes it the node's current serial.
        var pendingSerials: [String: String] = [:]
        /// Nodes an admin asked to renew (`berth ca rotate --node`), told so in heartbeat replies.
        var renewRequested: Set<String> = []
    }

    let cache = Mutex(Cache())
    /// Nodes heard from again after a silence longer than `failoverAfter`: they get no lease
    /// until the failover watch has finished the round that may be failing their VPSs over
    /// (`releaseQuarantine`), so a node cannot restart a fenced VPS that is being started
    /// elsewhere.
    let quarantined = Mutex<Set<String>>([])
    let store: ClusterStore
    let liveness: Liveness
    let registry: PeerRegistry
    let settings: ControllerSettings
    let epochs: LeaseEpochs
    let replicas: ReplicaIndex
    let writes: BackgroundWrites
    let logger: Logger

    init(
        store: ClusterStore, liveness: Liveness, registry: PeerRegistry, settings: ControllerSettings, epochs: LeaseEpochs, replicas: ReplicaIndex,
        writes: BackgroundWrites, logger: Logger
    ) throws {
        self.store = store
        self.liveness = liveness
        self.registry = registry
        self.settings = settings
        self.epochs = epochs
        self.replicas = replicas
        self.writes = writes
        self.logger = logger
        epochs.load(try store.leaseEpochs())
        let nodes = try store.nodes()
        let revoked = try store.revoked()
        liveness.seed(nodes)
        registry.revoke(revoked)
        cache.withLock { cache in
            for node in nodes { cache.serials[node.name] = node.certificateSerial }
            cache.revoked = revoked.sorted()
        }
    }

    func isCurrent(serial: String, of node: String) -> Bool {
        cache.withLock { $0.serials[node] == serial }
    }

    /// A node (re-)enrolled with a new certificate; its next report is compared in full.
    func enrolled(_ node: String, serial: String) {
        cache.withLock {
            $0.serials[node] = serial; $0.lastReport[node] = nil
        }
        liveness.enrolled(node)
    }

    /// A renewed certificate the node will switch to; the first heartbeat with it commits it.
    func renewed(_ node: String, serial: String) {
        cache.withLock { $0.pendingSerials[node] = serial }
    }

    func requestRenewal(of node: String) {
        cache.withLock { _ = $0.renewRequested.insert(node) }
    }

    /// The node's next report is compared row by row, whatever it says (a call changed a VPS).
    func forgetReport(of node: String) {
        cache.withLock { $0.lastReport[node] = nil }
    }

    /// The denylist, the open connections of the serial, and the list heartbeats hand to agents.
    func revoke(_ serial: String) throws {
        try store.revoke(serial)
        registry.revoke([serial])
        cache.withLock { cache in
            if !cache.revoked.contains(serial) { cache.revoked = (cache.revoked + [serial]).sorted() }
        }
    }

    /// The hot path of a large fleet (every node, every second), decided in memory: SQLite is
    /// written only when something the node reports has changed, and then in the background
    /// (`BackgroundWrites`), so a busy disk never delays the answer or the lease.
    func beat(_ request: HeartbeatReport, from identity: CertificateIdentity) throws -> HeartbeatAnswer {
        var meta = request
        meta.vpses = []
        let (enrolled, renewed, unchanged, sameMeta, revoked, renew) = cache.withLock { cache in
            (
                cache.serials[identity.name] == identity.serial, cache.pendingSerials[identity.name] == identity.serial,
                cache.lastReport[identity.name] == request.vpses, cache.lastMeta[identity.name] == meta, cache.revoked,
                cache.renewRequested.contains(identity.name)
            )
        }
        guard enrolled || renewed else {
            throw WireError(.unauthenticated, "heartbeat: node \(identity.name) is not enrolled with this certificate")
        }
        if renewed { commitRenewal(node: identity.name, serial: identity.serial) }
        let info = request.info
        let node = identity.name
        if settings.failover, let silent = liveness.millisecondsSinceHeartbeat(node), Duration.milliseconds(Int64(silent)) > settings.failoverAfter {
            quarantined.withLock { _ = $0.insert(node) }
        }
        if liveness.heartbeat(node: node, info: info, templates: request.templates) {
            logger.notice("node up", metadata: ["node": "\(node)"])
            writes.enqueue("node.up") { [store] in try store.addEvent(kind: "node.up", subject: node, message: "heartbeat received") }
        }
        if !sameMeta {
            cache.withLock { $0.lastMeta[node] = meta }
            writes.enqueue("node report") { [store] in
                if let stored = try store.node(node) {
                    let address = request.address.isEmpty ? stored.address : request.address
                    if address != stored.address || stored.labels != request.labels || stored.info != info {
                        try store.updateNodeReport(name: node, serial: identity.serial, address: address, labels: request.labels, info: info)
                    }
                }
            }
        }
        if !unchanged {
            cache.withLock { $0.lastReport[node] = request.vpses }
            writes.enqueue("statuses") { [store] in _ = try store.recordStatuses(node: node, request.vpses) }
        }
        var answer = HeartbeatAnswer(interval: settings.heartbeatInterval, revokedSerials: revoked, renewCertificate: renew && !renewed)
        answer.leaseEpoch = epochs.epoch(of: node)
        answer.fenceAfter = quarantined.withLock { $0.contains(node) } ? .zero : settings.fenceAfter
        let reported = Set(request.vpses.map(\.name))
        answer.superseded = replicas.staleCopies(on: node).filter { reported.contains($0) }.sorted()
        answer.droppedReplicas = request.replicas.keys.filter { !replicas.holds(node, replicaOf: $0) }.sorted()
        return answer
    }

    /// When the replica of `vps` that `node` holds was taken, as its last heartbeat said (0: none
    /// complete; nil: no report, or none held).
    func replicaTaken(of vps: String, on node: String) -> Int64? {
        cache.withLock { $0.lastMeta[node]?.replicas[vps] }
    }

    /// Called by the failover watch between its rounds: nodes no longer lost get leases again.
    func releaseQuarantine(except lost: Set<String>) {
        quarantined.withLock { $0.formIntersection(lost) }
    }

    /// The VPSs `node` reported in its last heartbeat (nil: none since the controller started).
    func lastReported(by node: String) -> Set<String>? {
        cache.withLock { $0.lastReport[node].map { Set($0.map(\.name)) } }
    }

    /// A heartbeat made with a renewed certificate: it is now the node's, and the old one is
    /// revoked (the node no longer uses it; links re-pin to the new serial).
    func commitRenewal(node name: String, serial: String) {
        cache.withLock { $0.serials[name] = serial }
        // The pending serial stays until the store has it: a failed write is retried by the
        // node's next heartbeat with the new certificate.
        writes.enqueue("certificate renewal") { [self] in
            guard var node = try store.node(name) else { return }
            let old = node.certificateSerial
            if old != serial {
                node.certificateSerial = serial
                try store.saveNode(node)
                if !old.isEmpty { try revoke(old) }
                try? store.addEvent(kind: "node.certificate-renewed", subject: name, message: "serial \(serial) replaces \(old)")
            }
            cache.withLock { cache in
                if cache.pendingSerials[name] == serial { cache.pendingSerials[name] = nil }
                cache.renewRequested.remove(name)
            }
        }
    }

    /// Logs each node's transition to `down` once (the state itself is computed on demand).
    func watchLiveness() async {
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
