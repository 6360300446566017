import BerthCore
import Isolation
import Wire

// The agent's wire edge: every conversion between its protobuf messages and the node's own
// types, in one place. Nothing below AgentService sees a `Berth_V1_*` type.

extension VPSChange {
    init(_ wire: Berth_V1_SetRequest) {
        self.init(name: wire.name)
        limits = wire.limits.update
        hostname = wire.hostname
        ipAdd = wire.ipAdd
        ipDel = wire.ipDel
        nameservers = wire.nameservers
        searchDomains = wire.searchdomains
        onboot = wire.setOnboot ? wire.onboot : nil
        labels = wire.labels
        capabilities = wire.capabilities
    }
}

extension Berth_V1_VpsStatus {
    init(_ view: VPSView) {
        self.init()
        let config = view.config
        name = config.name
        state = view.state.rawValue
        hostname = config.hostname
        template = config.template
        node = view.node
        labels = config.labels
        onboot = config.onboot
        lastExit = view.lastExit
        limits = Berth_V1_Limits(config.limits)
        if let network = config.network {
            net = network.mode
            ips = network.ips
            hostInterface = network.hostInterface
            mac = network.mac
        }
        nameservers = config.nameservers ?? []
        searchdomains = config.searchDomains ?? []
        privileged = config.isPrivileged
        idmap = config.idmapBase.map { "\($0):\(IDMap.defaultCount)" } ?? ""
        storage = (config.storage ?? .image).rawValue
        layout = (config.layout ?? .loop).rawValue
        capabilities = config.capabilities ?? [:]
        pid = view.initPid ?? 0
        startedAtUnix = view.bootedAt ?? 0
        snapshots = UInt32(view.snapshots)
        snapshotBytes = view.snapshotBytes
        if let interval = view.replicationIntervalSeconds {
            ha = true
            replicationIntervalS = UInt32(interval)
            replicas = view.replicas.map { state in
                var replica = Berth_V1_ReplicaStatus()
                replica.node = state.node
                replica.replicatedUnixMs = state.takenUnixMs
                replica.bytesSent = state.bytesSent
                replica.totalBytesSent = state.totalBytesSent
                replica.error = state.error
                return replica
            }
        }
        fenceArmed = view.fenceArmed
    }

    /// A VPS whose config is broken: failed, with the reason where the last exit would be.
    init(_ broken: BrokenVPS, node: String) {
        self.init()
        name = broken.name
        state = VPSState.failed.rawValue
        self.node = node
        lastExit = broken.reason
    }
}

extension Berth_V1_VpsList {
    init(_ listed: (vpses: [VPSView], broken: [BrokenVPS]), node: String) {
        self.init()
        vpses = (listed.vpses.map(Berth_V1_VpsStatus.init) + listed.broken.map { Berth_V1_VpsStatus($0, node: node) })
            .sorted { $0.name < $1.name }
    }
}

extension Berth_V1_SetResult {
    init(_ outcome: VPSChangeOutcome) {
        self.init()
        status = Berth_V1_VpsStatus(outcome.vps)
        appliedLive = outcome.appliedLive
        needsRestart = outcome.needsRestart
    }
}

extension Berth_V1_SnapshotInfo {
    init(_ snapshot: SnapshotRecord) {
        self.init()
        name = snapshot.name
        createdUnix = snapshot.createdUnixMs / 1000
        bytes = snapshot.bytes
        method = snapshot.method
        frozenMs = snapshot.frozenMs
    }
}
