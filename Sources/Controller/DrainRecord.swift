/// A node's drain as the controller keeps it (the `drain` table, items as JSON), so that a
/// controller restart resumes it where it was (Docs/migration.md, "Drain").
public struct DrainRecord: Sendable, Equatable {
    public enum State: String, Sendable, Codable {
        /// Moving VPSs away; `cancelling`: no new moves, the running ones end.
        case running, cancelling
        /// Ended: no VPS runs on the node (`drained`), the deadline passed with VPSs still
        /// running there and no `--force` (`incomplete`), or cancelled.
        case drained, incomplete, cancelled

        public var isActive: Bool { self == .running || self == .cancelling }
    }

    /// One VPS of the drained node and what became of it.
    public struct Item: Sendable, Equatable, Codable {
        public enum State: String, Sendable, Codable {
            case pending, moving, done, failed, blocked, stopped
        }
        public var vps: String
        public var state: State
        /// The node it moved to.
        public var to = ""
        /// Why it is blocked, failed or was stopped.
        public var reason = ""

        public init(vps: String, state: State, to: String = "", reason: String = "") {
            self.vps = vps
            self.state = state
            self.to = to
            self.reason = reason
        }
    }

    public var node: String
    public var state: State
    public var deadlineUnix: Int64
    public var force: Bool
    public var mode: String
    public var maxParallel: Int
    /// The certificate name of the operator who started it.
    public var startedBy: String
    public var items: [Item]

    public init(node: String, state: State, deadlineUnix: Int64, force: Bool, mode: String, maxParallel: Int, startedBy: String, items: [Item] = []) {
        self.node = node
        self.state = state
        self.deadlineUnix = deadlineUnix
        self.force = force
        self.mode = mode
        self.maxParallel = maxParallel
        self.startedBy = startedBy
        self.items = items
    }
}
