import Testing
@testable import Controller

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
        let nodes = [node("down", state: .down), node("cord", state: .cordoned), node("full", used: 8),
                     node("zone-b", labels: ["zone": "b"]), node("ok", labels: ["zone": "a"])]
        let request = PlacementRequest(memoryBytes: gib, constraints: ["zone": "a"])
        #expect(Scheduler().place(request, on: nodes) == .node("ok"))
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
