import BerthCore
import Synchronization

/// Where the replicas of HA VPSs are and which nodes hold stale copies of failed-over ones, in
/// memory for the heartbeat's answer (which must not read SQLite). Kept in step with the VPS
/// records by every write that changes them (`HighAvailability`).
final class ReplicaIndex: Sendable {
    private struct Index {
        var replicaNodes: [String: Set<String>] = [:]
        var staleCopiesOn: [String: Set<String>] = [:]
        /// The node each HA VPS is placed on (a replica there is being promoted, not dropped).
        var primary: [String: String] = [:]
    }
    private let index = Mutex(Index())

    init(_ records: [VPSRecord] = []) { for record in records { update(record) } }

    func update(_ record: VPSRecord) {
        index.withLock { index in
            index.replicaNodes[record.name] = record.spec.ha ? Set(record.spec.replicaNodes) : nil
            index.staleCopiesOn[record.name] = record.spec.staleCopiesOn.isEmpty ? nil : Set(record.spec.staleCopiesOn)
            index.primary[record.name] = record.node
        }
    }

    func remove(_ name: String) {
        index.withLock { index in
            index.replicaNodes[name] = nil
            index.staleCopiesOn[name] = nil
            index.primary[name] = nil
        }
    }

    /// Whether `node` should keep what it holds of `vps`: it is one of the places of its
    /// replicas, or the VPS is now placed there (its replica is being promoted).
    func holds(_ node: String, replicaOf vps: String) -> Bool {
        index.withLock { ($0.replicaNodes[vps]?.contains(node) ?? false) || $0.primary[vps] == node }
    }

    /// The HA VPSs placed on `node`.
    func haVPSs(on node: String) -> [String] {
        index.withLock { index in index.replicaNodes.keys.filter { index.primary[$0] == node }.sorted() }
    }

    var hasStaleCopies: Bool { index.withLock { !$0.staleCopiesOn.isEmpty } }

    /// The VPSs failed over away from `node` whose copy there has not been deleted yet.
    func staleCopies(on node: String) -> [String] { index.withLock { $0.staleCopiesOn.filter { $0.value.contains(node) }.map(\.key) } }
}
