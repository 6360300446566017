import BerthCore
import Placement
import Wire
import WireTLS

// The handlers of the call table (ControllerCall.of): wire in, wire out; the work is done by the
// controller's parts. All are async so the table calls them alike.

extension ServedCall {
    func response(_ fill: (inout Berth_V1_Response) throws -> Void) rethrows -> Berth_V1_Response {
        var response = Berth_V1_Response()
        try fill(&response)
        return response
    }

    // MARK: operations and events

    func operationShow(_ r: Berth_V1_OperationRequest) async throws -> Berth_V1_Response {
        let operation = try await service.journal.show(r.id, waitMs: r.waitMs, to: caller)
        return response { $0.operation = Berth_V1_Operation(operation) }
    }

    func operationList() async throws -> Berth_V1_Response {
        let operations = try service.journal.recent(to: caller)
        return response { $0.operations.operations = operations.map(Berth_V1_Operation.init) }
    }

    /// A long poll of the event log: events after `after_id`, waiting up to `wait_ms` for one.
    func events(_ r: Berth_V1_EventsRequest) async throws -> Berth_V1_Response {
        guard r.waitMs <= 30_000, r.limit <= 1000 else {
            throw WireError(.invalidArgument, "events: wait_ms is at most 30000 and limit at most 1000", field: "wait_ms")
        }
        guard let after = Int64(exactly: r.afterID) else { throw WireError(.invalidArgument, "events: after_id out of range", field: "after_id") }
        let limit = r.limit == 0 ? 100 : Int(r.limit)
        let deadline = ContinuousClock.now + .milliseconds(Int(r.waitMs))
        var page = try service.store.eventPage(after: after, limit: limit)
        while page.events.isEmpty && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(200))
            page = try service.store.eventPage(after: after, limit: limit)
        }
        let (found, oldest) = page
        return response {
            $0.events.events = found.map(Berth_V1_Event.init)
            $0.events.oldestID = UInt64(oldest)
        }
    }

    // MARK: nodes and pools

    func nodeList() async throws -> Berth_V1_Response {
        let nodes = try service.store.nodes().map(service.clusterNode)
        return response { $0.nodes.nodes = nodes }
    }

    func nodeShow(_ name: String) async throws -> Berth_V1_Response {
        guard let node = try service.store.node(name) else { throw WireError(.notFound, "name: no node named \(name)", field: "name") }
        return response { $0.clusterNode = service.clusterNode(node) }
    }

    func cordon(_ name: String, _ cordon: Bool) async throws -> Berth_V1_Response {
        if !cordon { try service.drains.checkUncordon(name) }
        guard try service.store.setCordoned(name, cordon), let node = try service.store.node(name) else {
            throw WireError(.notFound, "name: no node named \(name)", field: "name")
        }
        try? service.store.addEvent(kind: cordon ? "node.cordoned" : "node.uncordoned", subject: name, message: "", actor: caller.actor)
        return response { $0.clusterNode = service.clusterNode(node) }
    }

    func ippoolAdd(_ r: Berth_V1_IpPool) async throws -> Berth_V1_Response {
        let pool = try IPPoolMath.validatePool(name: r.name, cidr: r.cidr, gateway: r.gateway)
        try service.store.addPool(pool)
        return response { $0.ippool = Berth_V1_IpPool(pool, used: 0) }
    }

    func ippoolList() async throws -> Berth_V1_Response {
        let usage = try service.store.poolUsage()
        let pools = try service.store.pools().map { Berth_V1_IpPool($0, used: usage[$0.name] ?? 0) }
        return response { $0.ippools.pools = pools }
    }

    func ippoolRemove(_ name: String) async throws -> Berth_V1_Response {
        try service.store.removePool(name)
        return response { $0.ok = Berth_V1_Empty() }
    }

    // MARK: tenants' quotas

    func tenantSet(_ r: Berth_V1_TenantSetRequest) async throws -> Berth_V1_Response {
        let info = try service.vps.setQuota(of: r.name, TenantQuota(r.quota), clearing: r.clear, by: caller)
        return response { $0.tenant = Berth_V1_TenantInfo(info) }
    }

    /// A tenant sees only itself: another tenant's name answers not-found, as its VPSs do.
    func tenantShow(_ name: String) async throws -> Berth_V1_Response {
        guard caller.tenant.map({ $0 == name }) ?? true else {
            throw WireError(.notFound, "name: no tenant named \(name) has a quota or a VPS", field: "name")
        }
        let info = try service.vps.tenantInfo(name)
        return response { $0.tenant = Berth_V1_TenantInfo(info) }
    }

    func tenantList() async throws -> Berth_V1_Response {
        let infos = try service.vps.tenantInfos().filter { info in caller.tenant.map { $0 == info.name } ?? true }
        return response { $0.tenants.tenants = infos.map(Berth_V1_TenantInfo.init) }
    }

    // MARK: templates

    /// The tarball goes to each node as this call's upload, without the node list.
    func templateUpload(_ r: Berth_V1_TemplateUploadRequest) async throws -> Berth_V1_Response {
        let (links, stream) = (service.links, stream)
        let placed = try await service.templates.distribute(TemplateUpload(r), by: caller, stream: stream) { staging, node in
            var upload = r
            upload.nodes = []
            var request = Berth_V1_Request()
            request.templateUpload = upload
            let call = try await links.client(for: node).start(request)
            try await FileTransfer.send(staging, on: call)
            let response = try await call.result { stream.progress("\(node.name): \($0.step)") }
            guard let template = response.templateUpload.placed.first?.template else {
                throw WireError(.internalError, "node \(node.name) answered without the template")
            }
            return template
        }
        return response { $0.templateUpload.placed = placed.map(Berth_V1_TemplatePlacement.init) }
    }

    /// The tar stream is relayed from the node that holds the template, under each hop's credit.
    func templateExport() async throws -> Berth_V1_Response {
        let r = request.templateExport
        let node = try service.templates.exportingNode(named: r.node, for: r.name)
        return try await service.links.forward(request, to: node, stream: stream)
    }

    // MARK: certificates and nodes' own calls

    func joinToken(_ r: Berth_V1_JoinTokenRequest) async throws -> Berth_V1_Response {
        let token = try service.enrolment.joinToken(ttl: r.ttlSeconds)
        return response { $0.joinToken = Berth_V1_JoinToken(token) }
    }

    func enroll(_ r: Berth_V1_EnrollRequest) async throws -> Berth_V1_Response {
        let issued = try service.enrolment.enroll(
            token: r.token, node: r.nodeName, address: r.address, labels: r.labels,
            publicKeyPEM: r.publicKeyPem)
        return response { $0.enrolled = Berth_V1_EnrollReply(issued) }
    }

    func renew(_ r: Berth_V1_RenewRequest) async throws -> Berth_V1_Response {
        let issued = try service.enrolment.renew(try certificate, publicKeyPEM: r.publicKeyPem)
        return response { $0.enrolled = Berth_V1_EnrollReply(issued) }
    }

    func heartbeat(_ r: Berth_V1_Heartbeat) async throws -> Berth_V1_Response {
        let answer = try service.heartbeats.beat(HeartbeatReport(r), from: try certificate)
        return response { $0.heartbeat = Berth_V1_HeartbeatReply(answer) }
    }

    /// Admin: the controller takes a new certificate now, and/or a node is asked to renew.
    func rotate(_ r: Berth_V1_RotateRequest) async throws -> Berth_V1_Response {
        guard r.controller || !r.node.isEmpty else {
            throw WireError(.invalidArgument, "rotate: name a node (--node NAME) or the controller (--controller-cert)")
        }
        var result = Berth_V1_RotateResult()
        if !r.node.isEmpty {
            try service.enrolment.requestRenewal(of: r.node, by: caller)
            result.node = r.node
        }
        if r.controller {
            result.controllerSerial = try await service.enrolment.rotateControllerCertificate(by: caller)
        }
        return response { $0.rotated = result }
    }

    func revoke(_ r: Berth_V1_RevokeRequest) async throws -> Berth_V1_Response {
        try service.enrolment.revoke(r.serial, by: caller)
        return response { $0.ok = Berth_V1_Empty() }
    }

    // MARK: drain and restore

    /// Starts (or re-attaches to) a drain, or cancels one, and follows it to its end.
    func drain(_ r: Berth_V1_DrainRequest) async throws -> Berth_V1_Response {
        let stream = stream
        if r.cancel {
            _ = try service.drains.cancel(r.node, by: caller)
        } else {
            _ = try service.drains.start(
                r.node, deadlineSeconds: r.deadlineSeconds, force: r.force, mode: r.mode, maxParallel: r.maxParallel, by: caller)
            stream.progress("draining \(r.node)")
        }
        let drain = try await service.drains.follow(r.node) { stream.progress($0) }
        return response { $0.drain = Berth_V1_DrainResult(drain) }
    }

    func restore(_ r: Berth_V1_RestoreRequest) async throws -> Berth_V1_Response {
        let stream = stream
        let restored = try await service.drains.restore(r.node, skip: r.skip, cancelDrain: r.cancelDrain, by: caller) { stream.progress($0) }
        return response {
            $0.drain = Berth_V1_DrainResult(restored)
            $0.drain.state = "restored"
        }
    }
}
