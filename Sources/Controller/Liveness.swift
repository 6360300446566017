import BerthCore
import Synchronization

/// What the controller knows about a node only while it runs: the last heartbeat, judged on the
/// monotonic clock (wall-clock jumps never make a node look alive or dead), and the node's
/// latest report.
public final class Liveness: Sendable {
    public struct Report: Sendable {
        public var lastSeen: ContinuousClock.Instant
        public var info: NodeReport
        /// nil until the node's first heartbeat after a controller start.
        public var templates: Set<String>?
    }

    let reports = Mutex<[String: Report]>([:])
    /// Nodes already reported down, so the transition is logged once.
    let downNodes = Mutex<Set<String>>([])
    public let downAfter: Duration
    let clock = ContinuousClock()

    public init(downAfter: Duration) { self.downAfter = downAfter }

    /// Records a heartbeat; returns true when the node was down (or unknown) before it.
    @discardableResult
    public func heartbeat(node: String, info: NodeReport, templates: [String]) -> Bool {
        let now = clock.now
        let wasAlive = reports.withLock { reports -> Bool in
            let alive = reports[node].map { now - $0.lastSeen <= downAfter } ?? false
            reports[node] = Report(lastSeen: now, info: info, templates: Set(templates))
            return alive
        }
        downNodes.withLock { _ = $0.remove(node) }
        return !wasAlive
    }

    /// After a controller (re)start, known nodes get one full window to check in before they
    /// are judged down, instead of all flapping to `down` at once.
    public func seed(_ nodes: [NodeRecord]) {
        let now = clock.now
        reports.withLock { reports in
            for node in nodes where reports[node.name] == nil {
                reports[node.name] = Report(lastSeen: now, info: node.info, templates: nil)
            }
        }
    }

    /// A node that has just enrolled gets one full window for its first heartbeat, as a known
    /// node does after a controller start: without it, the liveness watch found it "down" (no
    /// heartbeat yet) in the instant between its enrolment and its first heartbeat.
    public func enrolled(_ node: String) {
        let now = clock.now
        reports.withLock { reports in
            if reports[node] == nil { reports[node] = Report(lastSeen: now, info: NodeReport(), templates: nil) }
        }
    }

    /// Every node in `nodes` gets a full window from now, as after a controller start: the
    /// controller itself did not run for a while, so silence meanwhile proves nothing.
    public func restartWindows(_ nodes: [String]) {
        let now = clock.now
        reports.withLock { reports in
            for node in nodes { reports[node, default: Report(lastSeen: now, info: NodeReport(), templates: nil)].lastSeen = now }
        }
    }

    public func report(_ node: String) -> Report? { reports.withLock { $0[node] } }

    public func isAlive(_ node: String) -> Bool {
        guard let report = report(node) else { return false }
        return clock.now - report.lastSeen <= downAfter
    }

    public func millisecondsSinceHeartbeat(_ node: String) -> UInt64? {
        guard let report = report(node) else { return nil }
        let elapsed = clock.now - report.lastSeen
        return UInt64(max(0, elapsed.components.seconds)) * 1000 + UInt64(max(0, elapsed.components.attoseconds / 1_000_000_000_000_000))
    }

    /// Nodes that crossed into `down` since the last call (for events and logs).
    public func newlyDown(among nodes: [String]) -> [String] {
        let dead = nodes.filter { !isAlive($0) }
        return downNodes.withLock { known in
            let fresh = dead.filter { !known.contains($0) }
            known.formUnion(fresh)
            return fresh
        }
    }
}
