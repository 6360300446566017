import BerthCore
import Synchronization

/// What this node allows migrations (`berth-agent --max-migrations`, `--migration-bandwidth`,
/// `--migration-stall-timeout`): at most `limit` transfers at once, sent or received, the bytes
/// it sends paced to `bytesPerSecond` across all of them, so that moving VPSs does not starve the
/// VPSs that stay, and a target that takes no data for `stallSeconds` ends the transfer.
public final class MigrationSlots: Sendable {
    public let limit: Int
    public let bytesPerSecond: UInt64?
    public let stallSeconds: Int
    private let active = Mutex(0)
    /// When the next byte may leave, for the node-wide pace.
    private let nextSend = Mutex(ContinuousClock.now)

    public static let defaultLimit = 2
    public static let defaultStallSeconds = 30

    public init(limit: Int = MigrationSlots.defaultLimit, bytesPerSecond: UInt64? = nil, stallSeconds: Int = MigrationSlots.defaultStallSeconds) {
        self.limit = limit
        self.bytesPerSecond = bytesPerSecond
        self.stallSeconds = stallSeconds
    }

    /// Takes a slot, or refuses with `no-capacity` (a drain tries that VPS again later).
    public func acquire(node: String) throws {
        try active.withLock { (active: inout Int) throws(BerthError) in
            guard active < limit else {
                throw BerthError(.noCapacity, "\(node) already runs \(active) migrations, its limit (berth-agent --max-migrations); try again once one ends")
            }
            active += 1
        }
    }

    public func release() { active.withLock { $0 -= 1 } }

    public var inUse: Int { active.withLock { $0 } }

    /// Waits until `bytes` more may be sent under the node's rate (at once without one).
    public func pace(_ bytes: Int) async {
        guard let rate = bytesPerSecond, rate > 0 else { return }
        let wait = nextSend.withLock { next -> Duration in
            let now = ContinuousClock.now
            let start = max(next, now)
            next = start + .nanoseconds(Int64(Double(bytes) / Double(rate) * 1e9))
            return start - now
        }
        if wait > .zero { try? await Task.sleep(for: wait) }
    }
}
