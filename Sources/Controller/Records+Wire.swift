import BerthCore
import Foundation
import Placement
import Wire

// The one place where the controller's records and the wire's messages meet.

extension Berth_V1_ClusterNode {
    /// A node as `node list`/`node show` print it: its record, its liveness and its last report.
    init(_ node: NodeRecord, state: NodeState, liveness: Liveness, vpsCount: Int) {
        self.init()
        name = node.name
        address = node.address
        labels = node.labels
        let report = liveness.report(node.name)
        info = Berth_V1_NodeInfo(report?.info ?? node.info)
        self.state = state.rawValue
        lastHeartbeatMsAgo = liveness.millisecondsSinceHeartbeat(node.name) ?? 0
        self.vpsCount = UInt32(vpsCount)
        templates = report?.templates.map { $0.sorted() } ?? []
        certificateSerial = node.certificateSerial
    }
}

extension VPSStatusRecord {
    /// A status as the node reports it (limits only where it gave them).
    init(_ wire: Berth_V1_VpsStatus) {
        self.init(name: wire.name, state: wire.state)
        hostname = wire.hostname
        ips = wire.ips
        template = wire.template
        node = wire.node
        pid = wire.pid
        labels = wire.labels
        onboot = wire.onboot
        limits = wire.hasLimits ? Limits(wire.limits) : nil
        lastExit = wire.lastExit
        startedAtUnix = wire.startedAtUnix
        net = wire.net
        hostInterface = wire.hostInterface
        mac = wire.mac
        nameservers = wire.nameservers
        searchDomains = wire.searchdomains
        privileged = wire.privileged
        idmap = wire.idmap
        capabilities = wire.capabilities
        storage = wire.storage
        layout = wire.layout
        snapshots = wire.snapshots > 0 ? Int(wire.snapshots) : nil
        snapshotBytes = wire.snapshots > 0 ? wire.snapshotBytes : nil
        if wire.ha {
            ha = true
            replicationIntervalSeconds = Int(wire.replicationIntervalS)
            replicas = wire.replicas.map {
                ReplicaRecord(
                    node: $0.node, replicatedUnixMs: $0.replicatedUnixMs, bytesSent: $0.bytesSent, totalBytesSent: $0.totalBytesSent, error: $0.error)
            }
            fenceArmed = wire.fenceArmed
        }
    }
}

extension Berth_V1_VpsStatus {
    /// A stored status as `status` and `list` answer it.
    init(_ status: VPSStatusRecord) {
        self.init()
        name = status.name
        state = status.state
        hostname = status.hostname
        ips = status.ips
        template = status.template
        node = status.node
        pid = status.pid
        labels = status.labels
        onboot = status.onboot
        if let limits = status.limits { self.limits = Berth_V1_Limits(limits) }
        lastExit = status.lastExit
        startedAtUnix = status.startedAtUnix
        net = status.net
        hostInterface = status.hostInterface
        mac = status.mac
        nameservers = status.nameservers
        searchdomains = status.searchDomains
        privileged = status.privileged
        idmap = status.idmap
        capabilities = status.capabilities
        storage = status.storage
        layout = status.layout
        snapshots = UInt32(status.snapshots ?? 0)
        snapshotBytes = status.snapshotBytes ?? 0
        ha = status.ha ?? false
        replicationIntervalS = UInt32(status.replicationIntervalSeconds ?? 0)
        replicas = (status.replicas ?? []).map { record in
            var replica = Berth_V1_ReplicaStatus()
            replica.node = record.node
            replica.replicatedUnixMs = record.replicatedUnixMs
            replica.bytesSent = record.bytesSent
            replica.totalBytesSent = record.totalBytesSent
            replica.error = record.error
            return replica
        }
        fenceArmed = status.fenceArmed ?? false
    }
}

extension Berth_V1_Operation {
    /// An operation as `operation show/list` answer it: its result and error read from the
    /// bytes the journal's codec wrote.
    init(_ record: OperationRecord) {
        self.init()
        id = record.id
        kind = record.kind
        subject = record.subject
        state = record.state
        progress = record.progress
        if let bytes = record.error { error = (try? Berth_V1_ErrorReply(serializedBytes: [UInt8](bytes))) ?? Berth_V1_ErrorReply() }
        if let bytes = record.result { result = (try? Berth_V1_Response(serializedBytes: [UInt8](bytes))) ?? Berth_V1_Response() }
        startedUnixMs = Int64(record.started * 1000)
        finishedUnixMs = Int64((record.finished ?? 0) * 1000)
    }
}

extension OperationJournal.Codec where Result == Berth_V1_Response {
    /// Results and errors kept as their protobuf bytes (`Berth_V1_Response`, `Berth_V1_ErrorReply`).
    static var wire: Self {
        Self(
            encode: { Data(try $0.serializedBytes() as [UInt8]) },
            decode: { (try? Berth_V1_Response(serializedBytes: [UInt8]($0))) ?? Berth_V1_Response() },
            encodeError: { (try? Data(WireError.from($0).reply.serializedBytes() as [UInt8])) ?? Data() },
            decodeError: { WireError(reply: (try? Berth_V1_ErrorReply(serializedBytes: [UInt8]($0))) ?? Berth_V1_ErrorReply()) })
    }
}

extension Berth_V1_Event {
    init(_ record: EventRecord) {
        self.init()
        id = UInt64(record.id)
        atUnixMs = Int64(record.at * 1000)
        kind = record.kind
        subject = record.subject
        message = record.message
        actor = record.actor
    }
}

extension HeartbeatReport {
    init(_ wire: Berth_V1_Heartbeat) {
        self.init(
            address: wire.address, labels: wire.labels, info: NodeReport(wire.info), templates: wire.templates,
            replicas: Dictionary(wire.replicas.map { ($0.vps, $0.takenUnixMs) }, uniquingKeysWith: { max($0, $1) }),
            vpses: wire.vpses.map(VPSStatusRecord.init))
    }
}

extension Berth_V1_HeartbeatReply {
    init(_ answer: HeartbeatAnswer) {
        self.init()
        let interval = answer.interval.components
        intervalMs = UInt32(interval.seconds * 1000 + interval.attoseconds / 1_000_000_000_000_000)
        revokedSerials = answer.revokedSerials
        renewCertificate = answer.renewCertificate
        leaseEpoch = answer.leaseEpoch
        fenceAfterMs = UInt32(answer.fenceAfter / .milliseconds(1))
        superseded = answer.superseded
        droppedReplicas = answer.droppedReplicas
    }
}

extension TemplateUpload {
    init(_ wire: Berth_V1_TemplateUploadRequest) {
        self.init(name: wire.name, format: wire.format, size: wire.size, sha256: wire.sha256, nodes: wire.nodes)
    }
}

extension Berth_V1_TemplatePlacement {
    init(_ placed: TemplatePlaced<Berth_V1_TemplateInfo>) {
        self.init()
        node = placed.node
        if let template = placed.template { self.template = template }
        if let error = placed.error { self.error = error.reply }
    }
}

extension Berth_V1_IpPool {
    init(_ pool: IPPoolRecord, used: Int) {
        self.init()
        name = pool.name
        cidr = pool.cidr
        gateway = pool.gateway
        self.used = UInt32(used)
        size = IPPoolMath.size(cidr: pool.cidr)
    }
}

extension Berth_V1_JoinToken {
    init(_ token: Enrolment.JoinToken) {
        self.init()
        self.token = token.text
        expiresUnix = Int64(token.expires.timeIntervalSince1970)
    }
}

extension Berth_V1_EnrollReply {
    init(_ certificate: Enrolment.IssuedCertificate) {
        self.init()
        certificatePem = certificate.certificatePEM
        caPem = certificate.caPEM
    }
}

// MARK: rows written before the controller kept its own records (read by the store's migrations)

extension VPSSpec {
    /// A `vps.spec` column before v3: the create request's protobuf (unreadable: an empty one).
    static func storedCreateRequest(_ data: Data) -> VPSSpec {
        VPSSpec((try? Berth_V1_CreateRequest(serializedBytes: [UInt8](data))) ?? Berth_V1_CreateRequest())
    }
}

extension VPSStatusRecord {
    /// A `vps.status` column before v5: the node's protobuf (unreadable: an empty status).
    static func storedVpsStatus(_ data: Data) -> VPSStatusRecord {
        VPSStatusRecord((try? Berth_V1_VpsStatus(serializedBytes: [UInt8](data))) ?? Berth_V1_VpsStatus())
    }
}

extension NodeReport {
    /// A `node.info` column before v4: the heartbeat's protobuf (unreadable: an empty report).
    static func storedNodeInfo(_ data: Data) -> NodeReport {
        NodeReport((try? Berth_V1_NodeInfo(serializedBytes: [UInt8](data))) ?? Berth_V1_NodeInfo())
    }
}

extension Berth_V1_DrainResult {
    init(_ drain: DrainRecord) {
        self.init()
        node = drain.node
        state = drain.state.isActive ? "draining" : drain.state.rawValue
        items = drain.items.map { item in
            var wire = Berth_V1_DrainItem()
            wire.vps = item.vps
            wire.state = item.state.rawValue
            wire.to = item.to
            wire.reason = item.reason
            return wire
        }
    }
}

extension TenantQuota {
    init(_ wire: Berth_V1_TenantQuota) {
        self.init(
            maxVPS: wire.hasMaxVps ? Int(wire.maxVps) : nil, maxMemoryBytes: wire.hasMaxMemoryBytes ? wire.maxMemoryBytes : nil,
            maxCPUMillis: wire.hasMaxCpuMillis ? wire.maxCpuMillis : nil, maxDiskBytes: wire.hasMaxDiskBytes ? wire.maxDiskBytes : nil,
            maxIPs: wire.hasMaxIps ? Int(wire.maxIps) : nil)
    }
}

extension Berth_V1_TenantInfo {
    init(_ info: TenantInfo) {
        self.init()
        name = info.name
        if let value = info.quota.maxVPS { quota.maxVps = UInt32(clamping: value) }
        if let value = info.quota.maxMemoryBytes { quota.maxMemoryBytes = value }
        if let value = info.quota.maxCPUMillis { quota.maxCpuMillis = value }
        if let value = info.quota.maxDiskBytes { quota.maxDiskBytes = value }
        if let value = info.quota.maxIPs { quota.maxIps = UInt32(clamping: value) }
        usage.vps = UInt32(clamping: info.usage.vps)
        usage.memoryBytes = info.usage.memoryBytes
        usage.cpuMillis = info.usage.cpuMillis
        usage.diskBytes = info.usage.diskBytes
        usage.ips = UInt32(clamping: info.usage.ips)
    }
}
