import BerthCore
import Foundation
import Isolation
import Wire
import WireTLS

/// The transfer of a cold migration, agent to agent (Docs/migration.md):
/// ```
/// controller              source agent                          target agent
///   | migration_expect(grant) ------------------------------------->| grant kept (single use)
///   | migration_send(grant, target address) ->|                     |
///   |                                         | mTLS, node cert ---->| peer: role node
///   |                                         | migration_receive    | grant: open, for this
///   |                                         |   {grant id, config, |   peer, unexpired -> taken
///   |                                         |    size} ----------->|
///   |                                         | DATA extent records >| written in place (sparse)
///   |                                         | DATA trailer, END -->| SHA-256 checked, config saved
///   |                                         |<- status (stopped)   |
///   |<- status (the target's) ----------------|                     |
///   | commit (one store transaction), start on the target, destroy on the source
/// ```
/// Any failure before the commit: migration_abort(grant) to the target deletes what it received.
extension AgentService {
    /// The source's side: sends the stopped VPS named in the grant to the target's listener.
    func migrationSend(_ r: Berth_V1_MigrationSendRequest, stream: ServerStream) async throws -> Berth_V1_VpsStatus {
        let grant = MigrationGrant(r.grant)
        guard let bundle = credentials.current else {
            throw AgentError(.unavailable, "this node is not enrolled in a cluster: it has no certificate to reach \(grant.target)")
        }
        let target = try HostPort(stored: r.targetAddress, field: "target_address")
        try migrationSlots.acquire(node: manager.nodeName)
        defer { migrationSlots.release() }
        let (config, disk) = try await manager.beginMigrationOut(grant)
        defer { Task { await manager.endMigrationOut(grant.vps) } }
        var info = stat()
        guard stat(disk, &info) == 0 else { throw AgentError(.kernel, "the disk of \(grant.vps): \(errnoName(errno))", stage: "stat", errno: errno) }
        let size = UInt64(info.st_size)
        let client = try await WireClient.connect(host: target.host, port: target.port, bundle: bundle, group: group, timeout: .seconds(5))
        defer { Task { await client.close() } }
        guard let peer = client.peerIdentity, peer.role == .node, peer.name == grant.target else {
            throw AgentError(
                .unauthenticated,
                "\(r.targetAddress) presented \(client.peerIdentity.map { "\($0.role) \($0.name)" } ?? "no identity"), not node \(grant.target)")
        }
        var receive = Berth_V1_MigrationReceiveRequest()
        receive.grantID = grant.id
        receive.config = Data(config)
        receive.diskSize = size
        var request = Berth_V1_Request()
        request.migrationReceive = receive
        let call = try await client.start(request)
        stream.progress("sending \(ByteSize.format(size)) disk of \(grant.vps) to \(grant.target)")
        var reported: UInt64 = 0
        let slots = migrationSlots
        // About every 64 MiB of the image, so a long copy shows it moves.
        let progress: (UInt64, UInt64) -> Void = { done, size in
            if done - reported >= 64 << 20 || done == size {
                reported = done
                stream.progress("copying disk", done: done, total: size)
            }
        }
        let sent = try await ImageTransfer.send(disk, on: call, pace: { await slots.pace($0) }, progress: progress)
        stream.progress("\(ByteSize.format(sent)) of data sent (holes and zeros are not)")
        let response = try await call.result { stream.progress("\(grant.target): \($0.step)") }
        return response.status
    }

    /// The target's side: the source node, under a grant the controller gave this node.
    func migrationReceive(_ r: Berth_V1_MigrationReceiveRequest, stream: ServerStream) async throws -> Berth_V1_VpsStatus {
        guard case .certificate(let peer) = stream.peer, peer.role == .node else {
            throw AgentError(.permissionDenied, "only a cluster node may send a migrated VPS")
        }
        try migrationSlots.acquire(node: manager.nodeName)
        defer { migrationSlots.release() }
        let grant = try await manager.claimMigration(r.grantID, from: peer.name)
        let view = try await manager.receiveMigration(grant, config: Array(r.config)) { path in
            try await ImageTransfer.receive(into: path, size: r.diskSize, from: stream.input, field: "disk")
        }
        return Berth_V1_VpsStatus(view)
    }
}
