import BerthCore

/// Placement of VPSs on nodes: a pure function of a snapshot, no I/O, so it is tested with an
/// in-memory harness and can be run by the controller on every request.
public enum NodeState: String, Sendable {
    case ready, cordoned, draining, down
}

public struct NodeSnapshot: Sendable, Equatable {
    public var name: String
    public var state: NodeState
    public var labels: [String: String]
    /// Allocatable capacity (already net of host reservations).
    public var cpuMillis: UInt64
    public var memoryBytes: UInt64
    public var diskBytes: UInt64
    /// What placed VPSs have committed.
    public var usedCpuMillis: UInt64 = 0
    public var usedMemoryBytes: UInt64 = 0
    public var usedDiskBytes: UInt64 = 0
    /// Anti-affinity groups that already have a member here.
    public var groups: Set<String> = []
    /// VPSs placed here (the tie-breaker of spread: equal load goes to the node with fewer).
    public var vpsCount = 0
    /// Templates the node holds; nil when unknown (then any template is assumed present).
    public var templates: Set<String>? = nil

    public init(
        name: String, state: NodeState = .ready, labels: [String: String] = [:],
        cpuMillis: UInt64, memoryBytes: UInt64, diskBytes: UInt64
    ) {
        self.name = name
        self.state = state
        self.labels = labels
        self.cpuMillis = cpuMillis
        self.memoryBytes = memoryBytes
        self.diskBytes = diskBytes
    }
}

/// What the VPSs on one node commit: kept up to date by `PlacementLedger` as VPSs are placed,
/// resized and destroyed, so building a snapshot does not read every VPS.
public struct NodeUsage: Sendable, Equatable {
    public var cpuMillis: UInt64 = 0
    public var memoryBytes: UInt64 = 0
    public var diskBytes: UInt64 = 0
    public var count = 0
    /// Anti-affinity groups with their member counts here.
    public var groups: [String: Int] = [:]

    public init() {}

    public mutating func add(group: String, cost: PlacementRequest) {
        cpuMillis &+= cost.cpuMillis
        memoryBytes &+= cost.memoryBytes
        diskBytes &+= cost.diskBytes
        count += 1
        if !group.isEmpty { groups[group, default: 0] += 1 }
    }

    public mutating func remove(group: String, cost: PlacementRequest) {
        cpuMillis = cpuMillis >= cost.cpuMillis ? cpuMillis - cost.cpuMillis : 0
        memoryBytes = memoryBytes >= cost.memoryBytes ? memoryBytes - cost.memoryBytes : 0
        diskBytes = diskBytes >= cost.diskBytes ? diskBytes - cost.diskBytes : 0
        count = max(0, count - 1)
        if !group.isEmpty, let members = groups[group] { groups[group] = members > 1 ? members - 1 : nil }
    }
}

public struct PlacementRequest: Sendable, Equatable {
    public var cpuMillis: UInt64
    public var memoryBytes: UInt64
    public var diskBytes: UInt64
    /// Every constraint must equal the node's label.
    public var constraints: [String: String]
    public var antiAffinityGroup: String?
    /// The template the VPS is created from: only nodes holding it qualify.
    public var template: String?

    /// What a VPS committing `commitment` asks of a node (BerthCore's rule, in the scheduler's
    /// units: CPU in thousandths of a CPU).
    public init(_ commitment: Commitment, constraints: [String: String] = [:], antiAffinityGroup: String? = nil, template: String? = nil) {
        self.init(
            cpuMillis: commitment.cpuPercent &* 10, memoryBytes: commitment.memoryBytes, diskBytes: commitment.diskBytes,
            constraints: constraints, antiAffinityGroup: antiAffinityGroup, template: template)
    }

    public init(
        cpuMillis: UInt64 = 0, memoryBytes: UInt64 = 0, diskBytes: UInt64 = 0,
        constraints: [String: String] = [:], antiAffinityGroup: String? = nil, template: String? = nil
    ) {
        self.template = template
        self.cpuMillis = cpuMillis
        self.memoryBytes = memoryBytes
        self.diskBytes = diskBytes
        self.constraints = constraints
        self.antiAffinityGroup = antiAffinityGroup
    }
}

public struct SchedulerPolicy: Sendable, Equatable {
    public enum Strategy: String, Sendable { case binpack, spread }
    public var strategy: Strategy
    /// Overcommit ratios: capacity × ratio is what may be committed (1.0 = none).
    public var cpuOvercommit: Double
    public var memoryOvercommit: Double
    public var diskOvercommit: Double

    public init(strategy: Strategy = .spread, cpuOvercommit: Double = 4.0, memoryOvercommit: Double = 1.0, diskOvercommit: Double = 1.0) {
        self.strategy = strategy
        self.cpuOvercommit = cpuOvercommit
        self.memoryOvercommit = memoryOvercommit
        self.diskOvercommit = diskOvercommit
    }
}

/// Why nodes were filtered out, counted per reason, for "no node fits: …" messages.
public enum Rejection: String, Sendable, CaseIterable, Comparable {
    case down, cordoned, draining, constraint = "constraint mismatch", antiAffinity = "anti-affinity"
    case template = "missing template"
    case cpu = "insufficient cpu", memory = "insufficient memory", disk = "insufficient disk"

    public static func < (a: Rejection, b: Rejection) -> Bool { a.rawValue < b.rawValue }
}

public enum Placement: Sendable, Hashable {
    case node(String)
    case noFit([Rejection: Int])

    /// "no node fits: 8 insufficient memory, 3 cordoned, 1 anti-affinity" (largest count first).
    public var explanation: String {
        switch self {
        case .node(let name): return "placed on \(name)"
        case .noFit(let counts):
            if counts.isEmpty { return "no node fits: the cluster has no nodes" }
            let parts = counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.map { "\($0.value) \($0.key.rawValue)" }
            return "no node fits: " + parts.joined(separator: ", ")
        }
    }
}

public struct Scheduler: Sendable {
    public var policy: SchedulerPolicy

    public init(policy: SchedulerPolicy = SchedulerPolicy()) { self.policy = policy }

    /// The first reason `node` cannot take `request`, or nil when it fits.
    public func rejection(of node: NodeSnapshot, for request: PlacementRequest) -> Rejection? {
        switch node.state {
        case .down: return .down
        case .cordoned: return .cordoned
        case .draining: return .draining
        case .ready: break
        }
        for (key, value) in request.constraints where node.labels[key] != value { return .constraint }
        if let template = request.template, let templates = node.templates, !templates.contains(template) { return .template }
        if let group = request.antiAffinityGroup, node.groups.contains(group) { return .antiAffinity }
        if !fits(node.usedCpuMillis, request.cpuMillis, node.cpuMillis, policy.cpuOvercommit) { return .cpu }
        if !fits(node.usedMemoryBytes, request.memoryBytes, node.memoryBytes, policy.memoryOvercommit) { return .memory }
        if !fits(node.usedDiskBytes, request.diskBytes, node.diskBytes, policy.diskOvercommit) { return .disk }
        return nil
    }

    /// Whether the VPS that commits `old` on `node` (counted in its usage) may commit `new`
    /// instead: only what grows must fit. A node's state and labels do not matter here: a
    /// cordoned node's VPSs may still be resized.
    public func resizeRejection(of node: NodeSnapshot, from old: PlacementRequest, to new: PlacementRequest) -> Rejection? {
        func grows(_ used: UInt64, _ before: UInt64, _ after: UInt64, _ capacity: UInt64, _ ratio: Double) -> Bool {
            after > before && !fits(used - min(used, before), after, capacity, ratio)
        }
        if grows(node.usedCpuMillis, old.cpuMillis, new.cpuMillis, node.cpuMillis, policy.cpuOvercommit) { return .cpu }
        if grows(node.usedMemoryBytes, old.memoryBytes, new.memoryBytes, node.memoryBytes, policy.memoryOvercommit) { return .memory }
        if grows(node.usedDiskBytes, old.diskBytes, new.diskBytes, node.diskBytes, policy.diskOvercommit) { return .disk }
        return nil
    }

    func fits(_ used: UInt64, _ wanted: UInt64, _ capacity: UInt64, _ ratio: Double) -> Bool {
        let (sum, overflow) = used.addingReportingOverflow(wanted)
        return !overflow && Double(sum) <= Double(capacity) * ratio
    }

    /// Share of the node's memory, cpu and disk committed after placing `request`
    /// (0 = empty, 1 = full), averaged over the three.
    func load(_ node: NodeSnapshot, with request: PlacementRequest) -> Double {
        func share(_ used: UInt64, _ wanted: UInt64, _ capacity: UInt64, _ ratio: Double) -> Double {
            capacity == 0 ? 1 : Double(used &+ wanted) / (Double(capacity) * ratio)
        }
        return
            (share(node.usedMemoryBytes, request.memoryBytes, node.memoryBytes, policy.memoryOvercommit)
            + share(node.usedCpuMillis, request.cpuMillis, node.cpuMillis, policy.cpuOvercommit)
            + share(node.usedDiskBytes, request.diskBytes, node.diskBytes, policy.diskOvercommit)) / 3
    }

    /// Above this many nodes a placement scores a sample of the feasible nodes instead of all of
    /// them (Nomad's limit iterator): scanning 10,000 nodes for every VPS costs far more than the
    /// last bit of packing quality it buys.
    public static let fullScanLimit = 64

    /// How many feasible nodes a large cluster's placement scores: 2 x log2(nodes), at least 8.
    static func candidateCount(nodes: Int) -> Int {
        max(8, 2 * (Int.bitWidth - nodes.leadingZeroBitCount))
    }

    /// Picks a node: binpack prefers the fullest node that fits, spread the emptiest; ties go to
    /// the node with fewer VPSs (spread) or more (binpack), then the smallest name, so placement
    /// is deterministic. Large clusters score the first feasible candidates found from `start`
    /// (callers rotate it); when nothing fits, every node was examined and the explanation
    /// counts them all.
    public func place(_ request: PlacementRequest, on nodes: [NodeSnapshot], start: Int = 0) -> Placement {
        var best: (index: Int, score: Double, count: Int)?
        var rejections: [Rejection: Int] = [:]
        let limit = nodes.count <= Self.fullScanLimit ? nodes.count : Self.candidateCount(nodes: nodes.count)
        var feasible = 0
        let offset = nodes.isEmpty ? 0 : ((start % nodes.count) + nodes.count) % nodes.count
        for step in 0..<nodes.count where feasible < limit {
            let index = (offset + step) % nodes.count
            let node = nodes[index]
            if let reason = rejection(of: node, for: request) {
                rejections[reason, default: 0] += 1
                continue
            }
            feasible += 1
            let load = load(node, with: request)
            let score = policy.strategy == .binpack ? load : -load
            let count = policy.strategy == .binpack ? node.vpsCount : -node.vpsCount
            if let current = best {
                let better =
                    score > current.score
                    || (score == current.score && (count > current.count || (count == current.count && node.name < nodes[current.index].name)))
                if !better { continue }
            }
            best = (index, score, count)
        }
        if let best { return .node(nodes[best.index].name) }
        return .noFit(rejections)
    }

    /// Places a batch in order, committing each placement to the snapshot before the next.
    public func placeAll(_ requests: [PlacementRequest], on nodes: [NodeSnapshot]) -> [Placement] {
        var nodes = nodes
        var index: [String: Int] = [:]
        for (i, node) in nodes.enumerated() { index[node.name] = i }
        return requests.enumerated().map { number, request in
            let placement = place(request, on: nodes, start: number &* 7919)
            if case .node(let name) = placement, let i = index[name] {
                nodes[i].usedCpuMillis += request.cpuMillis
                nodes[i].usedMemoryBytes += request.memoryBytes
                nodes[i].usedDiskBytes += request.diskBytes
                nodes[i].vpsCount += 1
                if let group = request.antiAffinityGroup { nodes[i].groups.insert(group) }
            }
            return placement
        }
    }
}
