import BerthCore
import Foundation
import Isolation
import NIOCore
import Wire
import WireTLS

/// Replication and promotion on the wire (Docs/ha.md). One round of one HA VPS:
/// ```
/// primary agent                                  replica agent (grant: VPS from this source)
///   | btrfs subvolume snapshot -r  rMILLIS          |
///   | REQUEST replica_receive {vps, snapshot,      |
///   |   parent, config, taken} ------------------->|  grant? parent held? else refused
///   | DATA ch 0: btrfs send [-p parent] rMILLIS -->|  btrfs receive pool/replicas/VPS/
///   | END ch 0 ----------------------------------->|  rMILLIS whole: it is the replica, older go
///   |<-------------------------------- RESPONSE ok |  (a cut stream: the last replica stays)
///   | parent := rMILLIS for this target            |
/// ```
/// A parent the replica lacks (`not-found`, field parent) makes the primary send whole.
extension AgentService {
    func replicateSet(_ r: Berth_V1_ReplicationPlan) async throws -> Berth_V1_VpsStatus {
        let targets = try r.targets.map { target in
            _ = try HostPort(stored: target.address, field: "targets")
            return VPSConfig.Replication.Target(node: try Name.validate(target.node, field: "targets"), address: target.address)
        }
        return Berth_V1_VpsStatus(
            try await manager.setReplication(r.vps, ha: r.ha, intervalSeconds: Int(r.intervalS == 0 ? 60 : r.intervalS), targets: targets))
    }

    func replicaReceive(_ r: Berth_V1_ReplicaReceiveRequest, stream: ServerStream) async throws {
        guard case .certificate(let peer) = stream.peer, peer.role == .node else {
            throw AgentError(.permissionDenied, "only a cluster node may send a replica")
        }
        try Name.validate(r.snapshot, field: "snapshot")
        let (directory, _) = try await manager.beginReplicaReceive(r.vps, from: peer.name, parent: r.parent)
        do {
            try await VolumeTransfer.receive(into: directory, from: stream.input, field: "replica")
            try await manager.replicaReceived(
                r.vps, snapshot: r.snapshot, takenUnixMs: r.takenUnixMs, config: Array(r.config), templateDigest: r.templateDigest, diskBytes: r.diskBytes)
        } catch {
            await manager.replicaReceiveFailed(r.vps, snapshot: r.snapshot)
            throw error
        }
    }

    func replicaPromote(_ r: Berth_V1_ReplicaPromoteRequest) async throws -> Berth_V1_VpsStatus {
        var view = try await manager.promoteReplica(r.vps)
        if r.start { view = try await manager.start(r.vps) }
        return Berth_V1_VpsStatus(view)
    }

    /// Replication rounds for as long as the agent runs in a cluster: each due HA VPS gets one
    /// round of its own, apart from the others.
    public func replicate() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            for (name, plan) in await manager.replicationDue() {
                Task { await self.replicationRound(name, plan) }
            }
        }
    }

    func replicationRound(_ name: String, _ plan: VPSConfig.Replication) async {
        let round: VPSManager.ReplicationRound
        do {
            round = try await manager.beginReplication(name)
        } catch {
            for target in plan.targets { await manager.replicationFailed(name, target: target.node, error: "\(error)") }
            return
        }
        for target in plan.targets {
            let parent = await manager.replicationParent(name, target: target.node)
            do {
                let bytes: UInt64
                do {
                    bytes = try await sendReplica(name, round, parent: parent, to: target)
                } catch let error as WireError where error.code == .notFound && error.field == "parent" {
                    bytes = try await sendReplica(name, round, parent: nil, to: target)
                }
                await manager.replicationSent(name, target: target.node, snapshot: round.snapshot, takenUnixMs: round.takenUnixMs, bytes: bytes)
            } catch {
                await manager.replicationFailed(name, target: target.node, error: (error as? WireError)?.message ?? "\(error)")
            }
        }
        await manager.endReplication(name)
    }

    private func sendReplica(
        _ name: String, _ round: VPSManager.ReplicationRound, parent: String?,
        to target: VPSConfig.Replication.Target
    ) async throws -> UInt64 {
        let client = try await dialNode(target.node, at: target.address)
        defer { Task { await client.close() } }
        var request = Berth_V1_Request()
        request.replicaReceive.vps = name
        request.replicaReceive.snapshot = FileIO.baseName(round.snapshot)
        request.replicaReceive.parent = parent.map(FileIO.baseName) ?? ""
        request.replicaReceive.config = Data(round.config)
        request.replicaReceive.takenUnixMs = round.takenUnixMs
        request.replicaReceive.templateDigest = round.templateDigest
        request.replicaReceive.diskBytes = round.diskBytes
        let call = try await client.start(request)
        let stall = TimeAmount.seconds(Int64(migrationSlots.stallSeconds))
        let slots = migrationSlots
        // A refusal (no grant, no parent) answers before any byte is read: it wins.
        async let answer = call.result(within: stall * 4, from: target.node)
        let sent: UInt64
        do {
            sent = try await VolumeTransfer.send(
                round.snapshot, parent: parent, on: call, target: target.node, stallLimit: stall, pace: { await slots.pace($0) })
            call.sendEnd(.stdin)
        } catch {
            _ = try await answer
            throw error
        }
        _ = try await answer
        return sent
    }

    /// A connection to the agent of node `name`, and nothing else: its certificate names it.
    func dialNode(_ name: String, at address: String) async throws -> WireClient {
        guard let bundle = credentials.current else {
            throw AgentError(.unavailable, "this node is not enrolled in a cluster: it has no certificate to reach \(name)")
        }
        let target = try HostPort(stored: address, field: "address")
        let client = try await WireClient.connect(host: target.host, port: target.port, bundle: bundle, group: group, timeout: .seconds(5))
        guard let peer = client.peerIdentity, peer.role == .node, peer.name == name else {
            Task { await client.close() }
            throw AgentError(
                .unauthenticated, "\(address) presented \(client.peerIdentity.map { "\($0.role) \($0.name)" } ?? "no identity"), not node \(name)")
        }
        return client
    }
}
