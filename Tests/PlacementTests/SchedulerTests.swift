import Testing

@testable import Placement

@Suite struct SchedulerTests {
    let gib: UInt64 = 1 << 30

    func node(_ name: String, memory: UInt64 = 8, used: UInt64 = 0, state: NodeState = .ready, labels: [String: String] = [:]) -> NodeSnapshot {
        var n = NodeSnapshot(name: name, state: state, labels: labels, cpuMillis: 4000, memoryBytes: memory * gib, diskBytes: 100 * gib)
        n.usedMemoryBytes = used * gib
        return n
    }

    @Test func spreadPicksTheEmptiestAndBinpackTheFullest() {
        let nodes = [node("a", used: 6), node("b", used: 1), node("c", used: 4)]
        let request = PlacementRequest(memoryBytes: gib)
        #expect(Scheduler(policy: .init(strategy: .spread)).place(request, on: nodes) == .node("b"))
        #expect(Scheduler(policy: .init(strategy: .binpack)).place(request, on: nodes) == .node("a"))
    }

    @Test func filtersByStateCapacityAndConstraints() {
        let nodes = [
            node("down", state: .down), node("cord", state: .cordoned), node("full", used: 8),
            node("zone-b", labels: ["zone": "b"]), node("ok", labels: ["zone": "a"]),
        ]
        let request = PlacementRequest(memoryBytes: gib, constraints: ["zone": "a"])
        #expect(Scheduler().place(request, on: nodes) == .node("ok"))
    }

    /// `set` through the controller: only growth must fit, the VPS's own share counts as free,
    /// and a cordoned node's VPSs may still grow.
    @Test func resizesCountOnlyWhatGrows() {
        let scheduler = Scheduler()
        let full = node("n", memory: 8, used: 6, state: .cordoned)  // this VPS holds 2 of the 6
        let two = PlacementRequest(memoryBytes: 2 * gib)
        #expect(scheduler.resizeRejection(of: full, from: two, to: PlacementRequest(memoryBytes: 4 * gib)) == nil)
        #expect(scheduler.resizeRejection(of: full, from: two, to: PlacementRequest(memoryBytes: 5 * gib)) == .memory)
        #expect(scheduler.resizeRejection(of: node("over", memory: 8, used: 12), from: two, to: PlacementRequest(memoryBytes: gib)) == nil)
        #expect(scheduler.resizeRejection(of: full, from: two, to: PlacementRequest(memoryBytes: 2 * gib, diskBytes: 200 * gib)) == .disk)
    }

    @Test func explainsWhyNothingFits() {
        let nodes = (0..<8).map { node("m\($0)", used: 8) } + (0..<3).map { node("c\($0)", state: .cordoned) }
        let placement = Scheduler().place(PlacementRequest(memoryBytes: gib), on: nodes)
        #expect(placement.explanation == "no node fits: 8 insufficient memory, 3 cordoned")
        #expect(Placement.noFit([:]).explanation == "no node fits: the cluster has no nodes")
    }

    @Test func antiAffinityNeverPutsTwoMembersOnOneNode() {
        let nodes = [node("a"), node("b"), node("c")]
        let requests = Array(repeating: PlacementRequest(memoryBytes: gib, antiAffinityGroup: "db"), count: 4)
        let placements = Scheduler(policy: .init(strategy: .binpack)).placeAll(requests, on: nodes)
        #expect(Set(placements.prefix(3)) == [.node("a"), .node("b"), .node("c")])
        #expect(placements[3] == .noFit([.antiAffinity: 3]))
    }

    @Test func overcommitRatiosAreHonoured() {
        let nodes = [node("a", memory: 4)]
        let request = PlacementRequest(memoryBytes: 6 * gib)
        #expect(Scheduler(policy: .init(memoryOvercommit: 1.0)).place(request, on: nodes) == .noFit([.memory: 1]))
        #expect(Scheduler(policy: .init(memoryOvercommit: 2.0)).place(request, on: nodes) == .node("a"))
    }

    @Test func batchPlacementCommitsAsItGoes() {
        let nodes = [node("a", memory: 2), node("b", memory: 2)]
        let placements = Scheduler().placeAll(Array(repeating: PlacementRequest(memoryBytes: gib), count: 5), on: nodes)
        #expect(placements.filter { $0 == .node("a") }.count == 2)
        #expect(placements.filter { $0 == .node("b") }.count == 2)
        #expect(placements[4] == .noFit([.memory: 2]))
    }

    @Test func hugeRequestsDoNotOverflow() {
        #expect(Scheduler().place(PlacementRequest(memoryBytes: .max), on: [node("a", used: 1)]) == .noFit([.memory: 1]))
    }
}

@Suite struct SchedulerTemplateAndTieTests {
    @Test func onlyNodesHoldingTheTemplateQualify() {
        var a = NodeSnapshot(name: "a", cpuMillis: 1000, memoryBytes: 1 << 30, diskBytes: 1 << 30)
        a.templates = ["debian-12"]
        var b = NodeSnapshot(name: "b", cpuMillis: 1000, memoryBytes: 1 << 30, diskBytes: 1 << 30)
        b.templates = ["busybox"]
        let scheduler = Scheduler()
        #expect(scheduler.place(PlacementRequest(template: "busybox"), on: [a, b]) == .node("b"))
        #expect(scheduler.place(PlacementRequest(template: "alpine"), on: [a, b]).explanation == "no node fits: 2 missing template")
        // Unknown template lists (a node not heard from since a controller restart) do not block.
        a.templates = nil
        #expect(scheduler.place(PlacementRequest(template: "alpine"), on: [a, b]) == .node("a"))
    }

    @Test func spreadBreaksTiesByVPSCount() {
        var a = NodeSnapshot(name: "a", cpuMillis: 1000, memoryBytes: 1 << 30, diskBytes: 1 << 30)
        a.vpsCount = 3
        let b = NodeSnapshot(name: "b", cpuMillis: 1000, memoryBytes: 1 << 30, diskBytes: 1 << 30)
        #expect(Scheduler().place(PlacementRequest(), on: [a, b]) == .node("b"))
        #expect(Scheduler(policy: SchedulerPolicy(strategy: .binpack)).place(PlacementRequest(), on: [a, b]) == .node("a"))
    }
}

@Suite struct LargeClusterSchedulerTests {
    func fleet(_ count: Int) -> [NodeSnapshot] {
        (0..<count).map { NodeSnapshot(name: String(format: "n%05d", $0), cpuMillis: 1000, memoryBytes: 1 << 30, diskBytes: 1 << 30) }
    }

    @Test func largeClustersScoreASampleButStillFindTheOnlyFit() {
        var nodes = fleet(1000)
        for i in nodes.indices where i != 777 { nodes[i].state = .cordoned }
        #expect(Scheduler().place(PlacementRequest(), on: nodes, start: 5) == .node("n00777"))
        // Nothing fits: every node was examined, so the explanation counts all of them.
        nodes[777].state = .down
        #expect(Scheduler().place(PlacementRequest(), on: nodes).explanation == "no node fits: 999 cordoned, 1 down")
    }

    @Test func rotatingStartsSpreadABatchOverTheFleet() {
        let placements = Scheduler().placeAll(Array(repeating: PlacementRequest(memoryBytes: 1 << 20), count: 2000), on: fleet(1000))
        var perNode: [String: Int] = [:]
        for case .node(let name) in placements { perNode[name, default: 0] += 1 }
        #expect(perNode.values.reduce(0, +) == 2000)
        #expect(perNode.count > 900)  // spread reaches nearly every node
        #expect(perNode.values.max()! <= 4)  // and never piles up on a few
    }
}
