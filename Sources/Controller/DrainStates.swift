import Synchronization

/// Each node's drain state, in memory for the scheduler and `node list` (the `drain` table is
/// its durable copy, loaded at start).
final class DrainStates: Sendable {
    private let states = Mutex([String: DrainRecord.State]())

    init(_ drains: [DrainRecord] = []) {
        let loaded = Dictionary(drains.map { ($0.node, $0.state) }, uniquingKeysWith: { a, _ in a })
        states.withLock { $0 = loaded }
    }

    func state(of node: String) -> DrainRecord.State? { states.withLock { $0[node] } }

    func set(_ node: String, _ state: DrainRecord.State?) { states.withLock { $0[node] = state } }
}
