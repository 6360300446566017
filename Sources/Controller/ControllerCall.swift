import Wire

/// One row of the controller's call table: who may make the call, its name (in authorisation
/// errors, as an operation's kind, in logs) and its handler. `ControllerService.handle`
/// authorises and dispatches every call through it; there is no other list of calls.
struct ControllerCall: Sendable {
    typealias Handler = @Sendable (ServedCall) async throws -> Berth_V1_Response

    let name: String
    let access: Authorisation.Access
    /// The VPS a mutating call acts on: such calls run as operations (`OperationJournal`).
    let operationSubject: String?
    /// The event a call that succeeded leaves in the log, with its caller as the actor (calls
    /// whose handlers say more, such as create, destroy and migrate, write their own).
    let event: Event?
    let handler: Handler

    struct Event: Sendable {
        let kind: String
        let subject: String
        var message = ""
    }

    init(_ name: String, _ access: Authorisation.Access, operationOn subject: String? = nil, event: Event? = nil, _ handler: @escaping Handler) {
        self.name = name
        self.access = access
        operationSubject = subject
        self.event = event
        self.handler = handler
    }

    static let perNodeRefusal =
        "templates and node info are per node: run this against the node's agent (berth --agent), or see `berth node show NODE`; `berth template import NAME FILE` through the controller sends a tarball to every node"

    // The table. Per-node calls are refused as invalid whoever asks (`anyone`), before any
    // role check, as Docs/wire.md says.
    static func of(_ call: Berth_V1_Request.OneOf_Call) -> ControllerCall {
        switch call {
        // VPSs
        case .create(let r): return ControllerCall("create", .writeVPS, operationOn: r.name) { try await $0.create(r) }
        case .start(let r):
            return ControllerCall("start", .writeVPS, operationOn: r.name, event: Event(kind: "vps.started", subject: r.name)) {
                try await $0.relay(r.name, exclusive: true)
            }
        case .restart(let r):
            return ControllerCall("restart", .writeVPS, operationOn: r.name, event: Event(kind: "vps.restarted", subject: r.name)) {
                try await $0.relay(r.name, exclusive: true)
            }
        case .stop(let r):
            return ControllerCall("stop", .writeVPS, operationOn: r.name, event: Event(kind: "vps.stopped", subject: r.name)) {
                try await $0.relay(r.name, exclusive: true)
            }
        case .destroy(let r): return ControllerCall("destroy", .writeVPS, operationOn: r.name) { try await $0.destroy(r.name) }
        case .set(let r): return ControllerCall("set", .writeVPS, event: Event(kind: "vps.set", subject: r.name)) { try await $0.set(r) }
        case .migrate(let r): return ControllerCall("migrate", .operate, operationOn: r.name) { try await $0.migrate(r) }
        case .exec(let r): return ControllerCall("exec", .writeVPS, event: Event(kind: "vps.exec", subject: r.name)) { try await $0.relay(r.name) }
        case .console(let r): return ControllerCall("console", .writeVPS, event: Event(kind: "vps.console", subject: r.name)) { try await $0.relay(r.name) }
        case .status(let r): return ControllerCall("status", .read) { try await $0.status(r.name) }
        case .stats(let r): return ControllerCall("stats", .read) { try await $0.stats(r.name) }
        // Snapshots and backups (Docs/backup.md)
        case .snapshotCreate(let r):
            return ControllerCall(
                "snapshot create", .writeVPS, operationOn: r.name, event: Event(kind: "vps.snapshot-created", subject: r.name, message: r.snapshot)
            ) { try await $0.relay(r.name, exclusive: true) }
        case .snapshotRollback(let r):
            return ControllerCall(
                "snapshot rollback", .writeVPS, operationOn: r.name, event: Event(kind: "vps.rolled-back", subject: r.name, message: r.snapshot)
            ) { try await $0.relay(r.name, exclusive: true) }
        case .snapshotDelete(let r):
            return ControllerCall(
                "snapshot delete", .writeVPS, operationOn: r.name, event: Event(kind: "vps.snapshot-deleted", subject: r.name, message: r.snapshot)
            ) { try await $0.relay(r.name, exclusive: true) }
        case .snapshotList(let r): return ControllerCall("snapshot list", .read) { try await $0.stats(r.name) }
        case .backup(let r):
            return ControllerCall("backup", .writeVPS, event: Event(kind: "vps.backed-up", subject: r.name)) { try await $0.relay(r.name, exclusive: true) }
        case .restore(let r): return ControllerCall("restore", .writeVPS, operationOn: r.restoredName) { try await $0.restore(r) }
        case .list(let r): return ControllerCall("list", .read) { try await $0.list(r) }
        // Operations and events
        case .operationShow(let r): return ControllerCall("operation show", .read) { try await $0.operationShow(r) }
        case .operationList: return ControllerCall("operation list", .read) { try await $0.operationList() }
        case .events(let r): return ControllerCall("events", .readCluster(hidden: "the cluster's event log")) { try await $0.events(r) }
        // Nodes and pools
        case .nodeList: return ControllerCall("node list", .readCluster(hidden: "nodes")) { try await $0.nodeList() }
        case .nodeShow(let r): return ControllerCall("node show", .readCluster(hidden: "nodes")) { try await $0.nodeShow(r.name) }
        case .nodeCordon(let r): return ControllerCall("node cordon", .operate) { try await $0.cordon(r.name, true) }
        case .nodeUncordon(let r): return ControllerCall("node uncordon", .operate) { try await $0.cordon(r.name, false) }
        case .nodeDrain(let r): return ControllerCall("node drain", .operate, operationOn: r.node) { try await $0.drain(r) }
        case .nodeRestore(let r): return ControllerCall("node restore", .operate, operationOn: r.node) { try await $0.restore(r) }
        case .ippoolAdd(let r):
            return ControllerCall("ippool add", .operate, event: Event(kind: "ippool.added", subject: r.name, message: r.cidr)) { try await $0.ippoolAdd(r) }
        case .ippoolList: return ControllerCall("ippool list", .readCluster(hidden: "pools")) { try await $0.ippoolList() }
        case .ippoolRemove(let r):
            return ControllerCall("ippool remove", .operate, event: Event(kind: "ippool.removed", subject: r.name)) { try await $0.ippoolRemove(r.name) }
        case .tenantSet(let r): return ControllerCall("tenant set", .admin) { try await $0.tenantSet(r) }
        case .tenantShow(let r): return ControllerCall("tenant show", .read) { try await $0.tenantShow(r.name) }
        case .tenantList: return ControllerCall("tenant list", .read) { try await $0.tenantList() }
        // Templates
        case .templateUpload(let r): return ControllerCall("template import", .operate) { try await $0.templateUpload(r) }
        case .templateExport: return ControllerCall("template export", .operate) { try await $0.templateExport() }
        case .templateBuild, .templateImport, .templateRemove, .templateList, .nodeInfo:
            return ControllerCall("per-node call", .anyone) { _ in throw WireError(.invalidArgument, perNodeRefusal) }
        case .migrationExpect, .migrationSend, .migrationReceive, .migrationAbort:
            return ControllerCall("agent migration call", .anyone) { _ in
                throw WireError(.invalidArgument, "this is the controller: a migration's transfer runs between node agents (berth migrate NAME --to NODE)")
            }
        case .replicateSet, .replicaExpect, .replicaReceive, .replicaPromote:
            return ControllerCall("agent replication call", .anyone) { _ in
                throw WireError(.invalidArgument, "this is the controller: replication runs between node agents (berth create|set NAME --ha)")
            }
        // Certificates and nodes' own calls
        case .nodeJoinToken(let r): return ControllerCall("node join-token", .admin) { try await $0.joinToken(r) }
        case .enroll(let r): return ControllerCall("enroll", .anyone) { try await $0.enroll(r) }
        case .renew(let r):
            return ControllerCall("renew", .node(refusal: "only nodes renew their certificates (operators get a new bundle with `berth ca issue`)")) {
                try await $0.renew(r)
            }
        case .heartbeat(let r): return ControllerCall("heartbeat", .node(refusal: "only node certificates send heartbeats")) { try await $0.heartbeat(r) }
        case .rotate(let r): return ControllerCall("rotate", .admin) { try await $0.rotate(r) }
        case .revoke(let r): return ControllerCall("ca revoke", .admin) { try await $0.revoke(r) }
        }
    }
}
