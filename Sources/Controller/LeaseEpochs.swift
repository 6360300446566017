import Synchronization

/// Each node's lease epoch (Docs/ha.md) as the controller knows it: read from the store once,
/// raised by a failover's transaction, sent with every heartbeat reply and every call to the
/// node's agent (which refuses a call carrying an older one).
public final class LeaseEpochs: Sendable {
    let epochs = Mutex<[String: UInt64]>([:])

    public init() {}

    func load(_ stored: [String: UInt64]) { epochs.withLock { $0.merge(stored) { max($0, $1) } } }

    public func epoch(of node: String) -> UInt64 { epochs.withLock { $0[node] ?? 1 } }

    func raised(_ node: String, to epoch: UInt64) { epochs.withLock { $0[node] = max($0[node] ?? 1, epoch) } }
}
