/// Where a VPS is in its lifecycle on its node. The controller adds `unknown` (its node is down)
/// and `creating` (placed, not yet answered) in its own records; they are not lifecycle states.
public enum VPSState: String, Sendable, CaseIterable {
    case stopped, starting, running, stopping, failed

    /// The moves a lifecycle may make; every other is a bug in the caller.
    public func canMove(to next: VPSState) -> Bool {
        switch (self, next) {
        case (.stopped, .starting), (.failed, .starting): return true  // start
        case (.starting, .running): return true  // booted
        case (.starting, .stopped): return true  // the start failed and was undone
        case (.running, .stopping): return true  // stop
        case (.stopping, .stopped): return true  // stopped as asked
        case (.stopping, .running): return true  // it did not stop even after SIGKILL
        case (.running, .stopped): return true  // poweroff from inside
        case (.running, .failed): return true  // halt, crash, monitor lost
        case (.stopped, .running): return true  // re-adopted after an agent restart
        default: return false
        }
    }

    /// A monitor process holds the VPS (its disk is mounted, its cgroup in use).
    public var hasMonitor: Bool { self == .running || self == .stopping }
}
