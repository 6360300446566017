import BerthCore
import Synchronization
import Wire

/// What the ledger needs of the controller's state: nodes as the scheduler sees them (capacity,
/// labels, state, templates) without what their VPSs commit, which is the ledger's to add.
public protocol PlacementNodeSource: Sendable {
    func placementNodes() throws -> [NodeSnapshot]
    func placementNode(_ name: String) throws -> NodeSnapshot?
}

/// A VPS as the ledger counts it: its node and what it commits there.
public struct PlacedVPS: Sendable, Equatable {
    public var name: String
    public var node: String
    public var cost: PlacementRequest
    /// "" when the VPS belongs to no anti-affinity group.
    public var group: String

    public init(name: String, node: String, cost: PlacementRequest, group: String) {
        self.name = name
        self.node = node
        self.cost = cost
        self.group = group
    }
}

/// What the VPSs placed on each node commit, kept in memory so that a placement reads no VPS
/// records. Placement and the caller's durable reservation (name, addresses) happen under this
/// one lock, so two creates cannot both take the last room on a node, and a resize reserves what
/// grows before the node applies it.
public final class PlacementLedger: Sendable {
    struct State {
        var usage: [String: NodeUsage] = [:]
        /// Where the scheduler's scan of a large cluster starts; rotated per placement.
        var start = 0
    }

    let state = Mutex(State())
    let source: any PlacementNodeSource
    public let scheduler: Scheduler

    public init(policy: SchedulerPolicy, source: any PlacementNodeSource, placed: [PlacedVPS]) {
        self.source = source
        scheduler = Scheduler(policy: policy)
        var usage: [String: NodeUsage] = [:]
        for vps in placed { usage[vps.node, default: NodeUsage()].add(group: vps.group, cost: vps.cost) }
        let loaded = usage
        state.withLock { $0.usage = loaded }
    }

    /// Chooses a node for `request` (or checks `pinned`: it skips scoring, not the filters),
    /// never one of `excluded` (a migrating VPS's own node), and, still under the lock, runs
    /// `reserve` with it. `field` names the caller's input that named `pinned` in a refusal. The VPS's commitment is counted only once
    /// `reserve` succeeded, so a failed reservation leaves nothing behind.
    public func place<Reservation: Sendable>(
        _ name: String, _ request: PlacementRequest, pinnedTo pinned: String?, excluding excluded: Set<String> = [],
        field: String = "node", reserve: (String) throws -> Reservation
    ) throws -> (node: String, reservation: Reservation) {
        try state.withLock { state throws -> (node: String, reservation: Reservation) in
            let snapshots = try source.placementNodes().filter { !excluded.contains($0.name) }.map { Self.adding(state.usage[$0.name], to: $0) }
            let node: String
            if let pinned {
                guard let snapshot = snapshots.first(where: { $0.name == pinned }) else {
                    throw WireError(.notFound, "\(field): no node named \(pinned) (see `berth node list`)", field: field)
                }
                if let reason = scheduler.rejection(of: snapshot, for: request) {
                    throw WireError(.noCapacity, "\(field): \(pinned) cannot take \(name): \(reason.rawValue)", field: field)
                }
                node = pinned
            } else {
                state.start &+= 1
                switch scheduler.place(request, on: snapshots, start: state.start) {
                case .node(let chosen): node = chosen
                case let failure: throw WireError(.noCapacity, failure.explanation)
                }
            }
            let reservation = try reserve(node)
            state.usage[node, default: NodeUsage()].add(group: request.antiAffinityGroup ?? "", cost: request)
            return (node, reservation)
        }
    }

    /// A VPS is counted on its node again (a migration handed back to its source).
    public func add(_ vps: PlacedVPS) {
        state.withLock { $0.usage[vps.node, default: NodeUsage()].add(group: vps.group, cost: vps.cost) }
    }

    /// A VPS left its node (destroyed, or its create refused): its commitment is free again.
    public func remove(_ vps: PlacedVPS) {
        state.withLock { $0.usage[vps.node]?.remove(group: vps.group, cost: vps.cost) }
    }

    /// What a resize swapped into its node's usage, to be released if the node refuses it.
    public struct Resize: Sendable, Equatable {
        public let vps: PlacedVPS
        public let new: PlacementRequest
    }

    /// Reserves `new` in place of what `vps` commits now, refusing with `no-capacity` (naming the
    /// resource, the node, its allocatable and committed amounts) when what grows does not fit.
    /// nil when no committed resource changes.
    public func reserveResize(_ vps: PlacedVPS, to new: PlacementRequest) throws -> Resize? {
        let old = vps.cost
        if old.cpuMillis == new.cpuMillis && old.memoryBytes == new.memoryBytes && old.diskBytes == new.diskBytes { return nil }
        try state.withLock { state throws in
            if let node = try source.placementNode(vps.node) {
                let snapshot = Self.adding(state.usage[node.name], to: node)
                if let rejection = scheduler.resizeRejection(of: snapshot, from: old, to: new) {
                    throw WireError(
                        .noCapacity, "\(rejection.rawValue) on \(node.name) for the new limits of \(vps.name) (\(capacityText(snapshot, rejection)))")
                }
            }
            state.usage[vps.node]?.remove(group: vps.group, cost: old)
            state.usage[vps.node, default: NodeUsage()].add(group: vps.group, cost: new)
        }
        return Resize(vps: vps, new: new)
    }

    /// The node refused the resize: the VPS commits what it did before.
    public func release(_ resize: Resize) {
        var reserved = resize.vps
        reserved.cost = resize.new
        recount(reserved, as: resize.vps.cost)
    }

    /// `counted` (as the ledger counts it now) commits `cost` from now on: the limits a node
    /// answered after a resize.
    public func recount(_ counted: PlacedVPS, as cost: PlacementRequest) {
        state.withLock { state in
            state.usage[counted.node]?.remove(group: counted.group, cost: counted.cost)
            state.usage[counted.node, default: NodeUsage()].add(group: counted.group, cost: cost)
        }
    }

    public func vpsCount(on node: String) -> Int {
        state.withLock { $0.usage[node]?.count ?? 0 }
    }

    /// What the scheduler sees of `node` once its VPSs' commitments are added.
    public func snapshot(_ node: NodeSnapshot) -> NodeSnapshot {
        Self.adding(state.withLock { $0.usage[node.name] }, to: node)
    }

    static func adding(_ usage: NodeUsage?, to node: NodeSnapshot) -> NodeSnapshot {
        guard let usage else { return node }
        var snapshot = node
        snapshot.usedCpuMillis = usage.cpuMillis
        snapshot.usedMemoryBytes = usage.memoryBytes
        snapshot.usedDiskBytes = usage.diskBytes
        snapshot.vpsCount = usage.count
        snapshot.groups = Set(usage.groups.keys)
        return snapshot
    }

    /// "23.5G allocatable, 20G committed" for the resource a rejection names.
    func capacityText(_ node: NodeSnapshot, _ rejection: Rejection) -> String {
        let policy = scheduler.policy
        switch rejection {
        case .cpu: return "\(UInt64(Double(node.cpuMillis) * policy.cpuOvercommit) / 10)% CPU allocatable, \(node.usedCpuMillis / 10)% committed"
        case .memory:
            return
                "\(ByteSize.format(UInt64(Double(node.memoryBytes) * policy.memoryOvercommit))) allocatable, \(ByteSize.format(node.usedMemoryBytes)) committed"
        case .disk:
            return "\(ByteSize.format(UInt64(Double(node.diskBytes) * policy.diskOvercommit))) allocatable, \(ByteSize.format(node.usedDiskBytes)) committed"
        default: return rejection.rawValue
        }
    }
}
