import BerthCore

public struct Scheduler: Sendable {
    public var policy: SchedulerPolicy

    public init(policy: SchedulerPolicy = SchedulerPolicy()) { self.policy = policy }

    /// The first reason `node` cannot take `request`, or nil when it fits.
    public func rejection(of node: NodeSnapshot, for request: PlacementRequest) -> Rejection? {
        switch node.state {
        case .down: return .down
        case .cordoned: return .cordoned
        case .draining: return .draining
        case .drained: return .drained
        case .ready: break
        }
        for (key, value) in request.constraints where node.labels[key] != value { return .constraint }
        if let template = request.template, let templates = node.templates, !templates.contains(template) { return .template }
        if let group = request.antiAffinityGroup, node.groups.contains(group) { return .antiAffinity }
        if !request.addresses.allSatisfy({ address in node.networkRanges.contains { $0.contains(address) } }) { return .addresses }
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
