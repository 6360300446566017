import BerthCore

/// Placement of VPSs on nodes: a pure function of a snapshot, no I/O, so it is tested with an
/// in-memory harness and can be run by the controller on every request.
public enum NodeState: String, Sendable {
    /// `draining`: a drain moves its VPSs away; `drained`: it ended, the node stays cordoned.
    case ready, cordoned, draining, drained, down
}
