import BerthCore
import Placement

/// The nodes as the scheduler sees them: each one's record, its last heartbeat report (or its
/// enrolment info until one arrives) and its state. The placement ledger adds what the VPSs on
/// it commit.
struct SchedulerView: PlacementNodeSource {
    let store: ClusterStore
    let liveness: Liveness
    /// The drains in progress or ended, by node (kept by `Drains`).
    let drains: DrainStates

    func placementNodes() throws -> [NodeSnapshot] {
        try store.nodes().map(snapshot)
    }

    func placementNode(_ name: String) throws -> NodeSnapshot? {
        try store.node(name).map(snapshot)
    }

    /// The one rule for a node's state, for the scheduler and for `node list`.
    func state(of node: NodeRecord) -> NodeState {
        guard liveness.isAlive(node.name) else { return .down }
        switch drains.state(of: node.name) {
        case .running?, .cancelling?: return .draining
        case .drained?: return .drained
        default: return node.cordoned ? .cordoned : .ready
        }
    }

    func snapshot(_ node: NodeRecord) -> NodeSnapshot {
        let report = liveness.report(node.name)
        let info = report?.info ?? node.info
        var snapshot = NodeSnapshot(
            name: node.name, state: state(of: node), labels: node.labels,
            cpuMillis: UInt64(clamping: info.cpus) * 1000, memoryBytes: info.memoryBytes, diskBytes: info.diskBytes)
        snapshot.templates = report?.templates
        snapshot.networkRanges = info.networkRanges.compactMap { try? CIDR($0) }
        return snapshot
    }
}
