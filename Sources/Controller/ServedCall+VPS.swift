import BerthCore
import Wire

// The VPS calls of the call table: the request goes to the VPS's node as it came (create's
// with its addresses filled in), and VPSCalls keeps the controller's records in step with what
// the node answers.

extension ServedCall {
    /// The call as it came, run on `node`'s agent.
    private func forwarded(to node: NodeRecord) async throws -> Berth_V1_Response {
        try await service.links.forward(request, to: node, stream: stream)
    }

    func create(_ r: Berth_V1_CreateRequest) async throws -> Berth_V1_Response {
        let (links, stream) = (service.links, stream)
        // The agent gets the request as the client sent it, with the addresses filled in and
        // without what only the controller reads.
        let createOnNode: (VPSSpec, NodeRecord) async throws -> VPSStatusRecord = { spec, node in
            var create = r
            create.ips = spec.ips
            create.node = ""
            create.constraints = [:]
            create.antiAffinity = ""
            var agentRequest = Berth_V1_Request()
            agentRequest.create = create
            return VPSStatusRecord(try await links.forward(agentRequest, to: node, stream: stream).status)
        }
        let spec = VPSSpec(r)
        try spec.checkHA()
        var status = try await service.vps.create(
            spec, ips: r.ips, limits: r.limits.update, by: caller, progress: { stream.progress($0) }, createOnNode: createOnNode)
        if spec.ha {
            for line in await service.ha.protect(spec.name) { stream.progress(line) }
            status = (try? service.store.vps(spec.name)).flatMap { $0 }.map(service.vps.currentStatus) ?? status
        }
        return response { $0.status = Berth_V1_VpsStatus(status) }
    }

    /// `berth restore FILE`: placed as a create of the VPS the archive's manifest describes
    /// (renamed, pinned, its addresses replaced as asked); the node reads the archive itself,
    /// which the client sends on the call's stream.
    func restore(_ r: Berth_V1_RestoreBackupRequest) async throws -> Berth_V1_Response {
        let manifest = try BackupManifest.decoded(r.manifest)
        var spec = manifest.spec
        spec.name = r.restoredName
        spec.pinnedNode = r.node
        spec.ips = []
        spec.constraints = [:]
        spec.antiAffinity = ""
        let ips = r.noIps ? [] : (r.ips.isEmpty ? manifest.spec.ips : r.ips)
        let (links, stream) = (service.links, stream)
        let restoreOnNode: (VPSSpec, NodeRecord) async throws -> VPSStatusRecord = { spec, node in
            var restore = r
            restore.name = spec.name
            restore.node = ""
            restore.ips = spec.ips
            restore.noIps = spec.ips.isEmpty
            var agentRequest = Berth_V1_Request()
            agentRequest.restore = restore
            return VPSStatusRecord(try await links.forward(agentRequest, to: node, stream: stream).status)
        }
        let status = try await service.vps.create(
            spec, ips: ips, limits: LimitsUpdate(), by: caller, progress: { stream.progress($0) }, createOnNode: restoreOnNode)
        return response { $0.status = Berth_V1_VpsStatus(status) }
    }

    /// start/stop/restart/exec/console: the answer as the node gave it, its status with the node.
    func relay(_ name: String, exclusive: Bool = false) async throws -> Berth_V1_Response {
        try await service.vps.relay(name, by: caller, exclusive: exclusive) { node in
            var response = try await forwarded(to: node)
            guard case .status(var status) = response.result else { return (response, nil) }
            status.node = node.name
            response.status = status
            return (response, VPSStatusRecord(status))
        }
    }

    func set(_ r: Berth_V1_SetRequest) async throws -> Berth_V1_Response {
        if !r.ha.isEmpty || r.replicas > 0 || r.replicationIntervalS > 0 {
            // The quota first: a set it refuses changes nothing, HA included.
            try service.vps.checkQuota(forSetOf: r.name, limits: r.limits.update, ipAdd: r.ipAdd, ipDel: r.ipDel, by: caller)
            let lines = try await service.ha.configure(
                r.name, ha: r.ha, replicas: r.replicas > 0 ? Int(r.replicas) : nil,
                interval: r.replicationIntervalS > 0 ? Int(r.replicationIntervalS) : nil, by: caller)
            for line in lines { stream.progress(line) }
        }
        return try await service.vps.set(r.name, limits: r.limits.update, ipAdd: r.ipAdd, ipDel: r.ipDel, by: caller) { node in
            var response = try await forwarded(to: node)
            response.set.status.node = node.name
            return (response, VPSStatusRecord(response.set.status))
        }
    }

    func destroy(_ name: String) async throws -> Berth_V1_Response {
        let record = try? service.store.vps(name)
        let answer = try await service.vps.destroy(name, by: caller, forwarded, neverCreated: response { $0.ok = Berth_V1_Empty() })
        if let record, record.spec.ha { await service.ha.unprotect(record, destroyed: true) }
        return answer
    }

    func status(_ name: String) async throws -> Berth_V1_Response {
        let status = try await service.vps.status(name, by: caller) { VPSStatusRecord(try await forwarded(to: $0).status) }
        return response { $0.status = Berth_V1_VpsStatus(status) }
    }

    func stats(_ name: String) async throws -> Berth_V1_Response {
        try await service.vps.stats(name, by: caller, forwarded)
    }

    func list(_ r: Berth_V1_ListRequest) async throws -> Berth_V1_Response {
        let statuses = try service.vps.list(all: r.all, selector: try Selector.parse(query: r.query, labels: r.selector), by: caller)
        return response { $0.list.vpses = statuses.map(Berth_V1_VpsStatus.init) }
    }

    func migrate(_ r: Berth_V1_MigrateRequest) async throws -> Berth_V1_Response {
        let stream = stream
        let status = try await service.migrations.migrate(r.name, to: r.to, mode: r.mode, by: caller) { stream.progress($0) }
        return response { $0.status = Berth_V1_VpsStatus(status) }
    }
}
