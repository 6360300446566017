import BerthCore
import Wire

/// The agent's call table: for each call of the wire, the name its metrics carry and what serves
/// it. Access is the same for every call an agent serves (AgentService.authorise); cluster calls
/// are refused here, by name, so a misdirected client learns where to go.
struct AgentCall: Sendable {
    /// Who may make a call (AgentService.authorise).
    enum Access: Sendable {
        /// Root on this node, or the cluster's controller: every call but one.
        case manage
        /// Another node of the cluster: the transfer of a migration or a replica, under a grant.
        case peerNode
    }

    let name: String
    let access: Access
    let handle: @Sendable (AgentService, ServerStream) async throws -> Berth_V1_Response

    init(_ name: String, access: Access = .manage, _ handle: @escaping @Sendable (AgentService, ServerStream) async throws -> Berth_V1_Response) {
        self.name = name
        self.access = access
        self.handle = handle
    }

    /// One response built by `fill`.
    static func answer(
        _ name: String, access: Access = .manage, _ fill: @escaping @Sendable (AgentService, ServerStream, inout Berth_V1_Response) async throws -> Void
    ) -> AgentCall {
        AgentCall(name, access: access) { service, stream in
            var response = Berth_V1_Response()
            try await fill(service, stream, &response)
            return response
        }
    }

    static func of(_ call: Berth_V1_Request.OneOf_Call?) -> AgentCall {
        switch call {
        case .create(let r):
            return answer("create") { s, stream, out in
                out.status = Berth_V1_VpsStatus(try await s.manager.create(VPSSpec(r)) { stream.progress($0) })
            }
        case .start(let r):
            return answer("start") { s, _, out in out.status = Berth_V1_VpsStatus(try await s.manager.start(r.name)) }
        case .stop(let r):
            return answer("stop") { s, _, out in
                try await s.manager.stop(r.name, timeout: r.timeoutSeconds, kill: r.kill)
                out.status = Berth_V1_VpsStatus(try await s.manager.status(r.name))
            }
        case .restart(let r):
            return answer("restart") { s, _, out in out.status = Berth_V1_VpsStatus(try await s.manager.restart(r.name)) }
        case .destroy(let r):
            return answer("destroy") { s, _, out in
                try await s.manager.destroy(r.name, force: r.force)
                out.ok = Berth_V1_Empty()
            }
        case .status(let r):
            return answer("status") { s, _, out in out.status = Berth_V1_VpsStatus(try await s.manager.status(r.name)) }
        case .list(let r):
            return answer("list") { s, _, out in
                out.list = Berth_V1_VpsList(
                    await s.manager.list(all: r.all, selector: try Selector.parse(query: r.query, labels: r.selector)), node: s.manager.nodeName)
            }
        case .set(let r):
            return answer("set") { s, _, out in out.set = Berth_V1_SetResult(try await s.manager.set(VPSChange(r))) }
        case .stats(let r):
            return answer("stats") { s, _, out in out.stats = Berth_V1_VpsStats(try await s.manager.stats(r.name)) }
        case .nodeInfo:
            return answer("node_info") { s, _, out in out.node = Berth_V1_NodeInfo(await s.manager.nodeInfo()) }
        case .exec(let r):
            return answer("exec") { s, stream, out in out.exec = try await s.exec(r, stream: stream) }
        case .console(let r):
            return answer("console") { s, stream, out in
                try await s.console(r, stream: stream)
                out.ok = Berth_V1_Empty()
            }
        case .templateBuild(let r):
            return answer("template_build") { s, stream, out in out.template = try await s.build(r, stream: stream) }
        case .templateImport(let r):
            return answer("template_import") { s, stream, out in
                out.template = AgentService.wire(try await s.manager.templates.importTarball(name: r.name, path: r.tarballPath) { stream.progress($0) })
            }
        case .templateUpload(let r):
            return answer("template_upload") { s, stream, out in out.templateUpload = try await s.upload(r, stream: stream) }
        case .templateExport(let r):
            return answer("template_export") { s, stream, out in out.template = try await s.export(r, stream: stream) }
        case .templateRemove(let r):
            return answer("template_remove") { s, _, out in
                try s.manager.templates.remove(r.name)
                out.ok = Berth_V1_Empty()
            }
        case .templateList:
            return answer("template_list") { s, _, out in
                var list = Berth_V1_TemplateList()
                list.templates = s.manager.templates.list().map(AgentService.wire)
                out.templates = list
            }
        case .migrationExpect(let r):
            return answer("migration_expect") { s, _, out in
                try await s.manager.expectMigration(MigrationGrant(r))
                out.ok = Berth_V1_Empty()
            }
        case .migrationAbort(let r):
            return answer("migration_abort") { s, _, out in
                s.migrationReceives.cancel(r.id)
                try await s.manager.abortMigration(MigrationGrant(r))
                out.ok = Berth_V1_Empty()
            }
        case .migrationSend(let r):
            return answer("migration_send") { s, stream, out in out.status = try await s.migrationSend(r, stream: stream) }
        case .migrationReceive(let r):
            return answer("migration_receive", access: .peerNode) { s, stream, out in out.status = try await s.migrationReceive(r, stream: stream) }
        case .snapshotCreate(let r):
            return answer("snapshot_create") { s, _, out in out.snapshot = Berth_V1_SnapshotInfo(try await s.manager.createSnapshot(r.name, r.snapshot)) }
        case .snapshotList(let r):
            return answer("snapshot_list") { s, _, out in
                var list = Berth_V1_SnapshotList()
                list.vps = r.name
                list.node = s.manager.nodeName
                list.snapshots = try await s.manager.snapshots(r.name).map(Berth_V1_SnapshotInfo.init)
                out.snapshots = list
            }
        case .snapshotRollback(let r):
            return answer("snapshot_rollback") { s, _, out in
                out.status = Berth_V1_VpsStatus(try await s.manager.rollback(r.name, to: r.snapshot, restart: r.restart))
            }
        case .snapshotDelete(let r):
            return answer("snapshot_delete") { s, _, out in
                try await s.manager.deleteSnapshot(r.name, r.snapshot)
                out.ok = Berth_V1_Empty()
            }
        case .backup(let r):
            return answer("backup") { s, stream, out in out.backup = try await s.backup(r, stream: stream) }
        case .restore(let r):
            return answer("restore") { s, stream, out in out.status = try await s.restore(r, stream: stream) }
        case .replicateSet(let r):
            return answer("replicate_set") { s, _, out in out.status = try await s.replicateSet(r) }
        case .replicaExpect(let r):
            return answer("replica_expect") { s, _, out in
                try await s.manager.expectReplicas(of: r.vps, from: r.source)
                out.ok = Berth_V1_Empty()
            }
        case .replicaReceive(let r):
            return answer("replica_receive", access: .peerNode) { s, stream, out in
                try await s.replicaReceive(r, stream: stream)
                out.ok = Berth_V1_Empty()
            }
        case .replicaPromote(let r):
            return answer("replica_promote") { s, _, out in out.status = try await s.replicaPromote(r) }
        case .nodeJoinToken, .enroll, .heartbeat, .nodeList, .nodeShow, .nodeCordon, .nodeUncordon,
            .ippoolAdd, .ippoolList, .ippoolRemove, .tenantSet, .tenantShow, .tenantList, .revoke, .events, .operationShow, .operationList, .renew, .rotate,
            .migrate, .nodeDrain, .nodeRestore:
            return AgentCall("cluster") { _, _ in
                throw AgentError(.invalidArgument, "this is a node agent: cluster calls go to the controller (berth --controller HOST:PORT)")
            }
        case nil:
            return AgentCall("none") { _, _ in
                throw AgentError(.invalidArgument, "the request names no call (is the client newer than this agent?)", field: "call")
            }
        }
    }
}
