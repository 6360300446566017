import BerthCore
import Wire

/// HA's side of the agents (`HighAvailability`), each a request to one node's agent.
extension AgentLinks: ReplicaTransport {
    nonisolated func plan(_ vps: String, ha: Bool, interval: Int, targets: [NodeRecord], on node: NodeRecord) async throws {
        var plan = Berth_V1_ReplicationPlan()
        plan.vps = vps
        plan.ha = ha
        plan.intervalS = UInt32(interval)
        plan.targets = targets.map { target in
            var wire = Berth_V1_ReplicaTarget()
            wire.node = target.name
            wire.address = target.address
            return wire
        }
        _ = try await request(node) { $0.replicateSet = plan }
    }

    nonisolated func expectReplicas(of vps: String, from source: String, on node: NodeRecord) async throws {
        _ = try await request(node) {
            $0.replicaExpect.vps = vps
            $0.replicaExpect.source = source
        }
    }

    nonisolated func promote(_ vps: String, start: Bool, on node: NodeRecord) async throws -> VPSStatusRecord {
        VPSStatusRecord(
            try await request(node) {
                $0.replicaPromote.vps = vps
                $0.replicaPromote.start = start
            }.status)
    }
}
