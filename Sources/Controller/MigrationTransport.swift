import BerthCore

/// What a migration asks of the agents (its RPC edge: `AgentLinks+Migration.swift`), so that
/// `Migrations` speaks records and can be driven by a fake in a unit test.
protocol MigrationTransport: Sendable {
    /// The target keeps the grant and checks it could hold the VPS.
    func expect(_ grant: MigrationGrant, on target: NodeRecord) async throws
    /// The source sends the VPS to `target`: a stopped one, or (`warm`) a running one that it
    /// copies while it runs and stops for the last pass. The answer is the VPS as the target
    /// holds it (stopped).
    func send(
        _ grant: MigrationGrant, to target: NodeRecord, from source: NodeRecord, warm: Bool, progress: @escaping @Sendable (String) -> Void
    ) async throws -> VPSStatusRecord
    /// The target drops the grant and deletes what it received under it.
    func abort(_ grant: MigrationGrant, on target: NodeRecord) async throws
    func status(_ name: String, on node: NodeRecord) async throws -> VPSStatusRecord
    func stop(_ name: String, on node: NodeRecord) async throws -> VPSStatusRecord
    func start(_ name: String, on node: NodeRecord) async throws -> VPSStatusRecord
    func destroy(_ name: String, on node: NodeRecord) async throws
}
