import BerthCore
import Synchronization

/// Where the replicas of HA VPSs are and which nodes hold stale copies of failed-over ones, in
/// memory for the heartbeat's answer (which must not read SQLite). Kept in step with the VPS
/// records by every write that changes them (`HighAvailability`).
final class ReplicaIndex: Sendable {
    private struct Index {
        var replicaNodes: [String: Set<String>] = [:]
        var staleCopyOn: [String: String] = [:]
    }
    private let index = Mutex(Index())

    init(_ records: [VPSRecord] = []) { for record in records { update(record) } }

    func update(_ record: VPSRecord) {
        index.withLock { index in
            index.replicaNodes[record.name] = record.spec.ha ? Set(record.spec.replicaNodes) : nil
            index.staleCopyOn[record.name] = record.spec.staleCopyOn.isEmpty ? nil : record.spec.staleCopyOn
        }
    }

    func remove(_ name: String) {
        index.withLock { index in
            index.replicaNodes[name] = nil
            index.staleCopyOn[name] = nil
        }
    }

    /// Whether `node` is one of the places of `vps`'s replicas.
    func holds(_ node: String, replicaOf vps: String) -> Bool { index.withLock { $0.replicaNodes[vps]?.contains(node) ?? false } }

    var hasStaleCopies: Bool { index.withLock { !$0.staleCopyOn.isEmpty } }

    /// The VPSs failed over away from `node` whose copy there has not been deleted yet.
    func staleCopies(on node: String) -> [String] { index.withLock { $0.staleCopyOn.filter { $0.value == node }.map(\.key) } }
}
