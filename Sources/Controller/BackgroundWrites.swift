import Dispatch
import Logging

/// Store writes a heartbeat causes (statuses, node reports, events), made in order on a thread
/// of their own: a heartbeat's answer never waits for SQLite, whose commit can stall for
/// seconds when the controller's disk is busy (issue 23: a reply seen 24 s late, and a false
/// "down"). What the heartbeat decides (liveness, the lease) is all in memory.
final class BackgroundWrites: Sendable {
    private let queue = DispatchQueue(label: "berth.controller.background-writes")
    let logger: Logger

    init(logger: Logger) { self.logger = logger }

    func enqueue(_ what: String, _ write: @escaping @Sendable () throws -> Void) {
        queue.async { [logger] in
            do { try write() } catch { logger.error("a background store write failed", metadata: ["write": "\(what)", "error": "\(error)"]) }
        }
    }

    /// Returns once every write enqueued before it is done (tests, and an orderly stop).
    func drain() async {
        await withCheckedContinuation { continuation in queue.async { continuation.resume() } }
    }
}
