import BerthCore
import NIOCore
import Wire
import WireTLS

/// The controller's connections to node agents: one multiplexed mTLS connection per node,
/// opened on first use and replaced when it breaks. The agent must present a certificate for
/// exactly that node, so a stolen certificate of another node cannot pose as it.
public actor AgentLinks {
    var bundle: CredentialBundle
    let group: EventLoopGroup
    var clients: [String: WireClient] = [:]
    /// Every call to a node carries its lease epoch (Docs/ha.md).
    public nonisolated let epochs = LeaseEpochs()

    public init(bundle: CredentialBundle, group: EventLoopGroup) {
        self.bundle = bundle
        self.group = group
    }

    /// One request to `node`'s agent, carrying the node's lease epoch; progress steps prefixed
    /// with the node's name.
    nonisolated func request(_ node: NodeRecord, _ fill: (inout Berth_V1_Request) -> Void, progress: (@Sendable (String) -> Void)? = nil)
        async throws -> Berth_V1_Response
    {
        var request = Berth_V1_Request()
        fill(&request)
        request.leaseEpoch = epochs.epoch(of: node.name)
        let client = try await client(for: node)
        let call = try await client.start(request)
        return try await call.result { step in progress?("\(node.name): \(step.step)") }
    }

    public func client(for node: NodeRecord) async throws -> WireClient {
        if let client = clients[node.name], client.isActive, client.peerIdentity?.serial == node.certificateSerial { return client }
        // A link to a node that renewed its certificate is retired, not closed: calls still on
        // it (an exec stream) finish; the agent closes it once it has been idle.
        if let stale = clients.removeValue(forKey: node.name), !stale.isActive { await stale.close() }
        let agent = try HostPort(stored: node.address, field: "address")
        let client: WireClient
        do {
            client = try await WireClient.connect(host: agent.host, port: agent.port, bundle: bundle, group: group, timeout: .seconds(3))
        } catch let error as WireError {
            throw WireError(.unavailable, "node \(node.name) (\(node.address)) is unreachable: \(error.message)")
        }
        // The node's current certificate only: a replaced or revoked key cannot answer as it.
        guard client.peerIdentity?.role == .node, client.peerIdentity?.name == node.name,
            client.peerIdentity?.serial == node.certificateSerial
        else {
            await client.close()
            throw WireError(
                .unauthenticated,
                "the agent at \(node.address) presented \(client.peerIdentity.map { "\($0.role) \($0.name)" } ?? "no identity"), not node \(node.name)")
        }
        if let raced = clients[node.name], raced.isActive {
            await client.close()
            return raced
        }
        clients[node.name] = client
        return client
    }

    /// The controller's rotated credentials, for the links made from now on.
    public func replaceBundle(_ replacement: CredentialBundle) {
        bundle = replacement
    }

    public func closeAll() async {
        for client in clients.values { await client.close() }
        clients.removeAll()
    }
}
