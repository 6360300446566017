import BerthCore
import Wire

/// The agents' side of a migration, as `Migrations` asks for it: each call a request to one
/// node's agent over its link.
extension AgentLinks: MigrationTransport {
    nonisolated func expect(_ grant: MigrationGrant, on target: NodeRecord) async throws {
        _ = try await request(target) { $0.migrationExpect = Berth_V1_MigrationGrant(grant) }
    }

    nonisolated func send(
        _ grant: MigrationGrant, to target: NodeRecord, from source: NodeRecord, warm: Bool, progress: @escaping @Sendable (String) -> Void
    ) async throws -> VPSStatusRecord {
        var send = Berth_V1_MigrationSendRequest()
        send.grant = Berth_V1_MigrationGrant(grant)
        send.targetAddress = target.address
        send.warm = warm
        return VPSStatusRecord(try await request(source, { $0.migrationSend = send }, progress: progress).status)
    }

    nonisolated func abort(_ grant: MigrationGrant, on target: NodeRecord) async throws {
        _ = try await request(target) { $0.migrationAbort = Berth_V1_MigrationGrant(grant) }
    }

    nonisolated func status(_ name: String, on node: NodeRecord) async throws -> VPSStatusRecord {
        VPSStatusRecord(try await request(node) { $0.status.name = name }.status)
    }

    nonisolated func stop(_ name: String, on node: NodeRecord) async throws -> VPSStatusRecord {
        VPSStatusRecord(try await request(node) { $0.stop.name = name }.status)
    }

    nonisolated func start(_ name: String, on node: NodeRecord) async throws -> VPSStatusRecord {
        VPSStatusRecord(try await request(node) { $0.start.name = name }.status)
    }

    nonisolated func destroy(_ name: String, on node: NodeRecord) async throws {
        _ = try await request(node) { $0.destroy.name = name }
    }
}
