import BerthCore
import Synchronization
import Testing
import Wire

@testable import Placement

/// The nodes a test sets, as the controller's store and liveness would give them.
final class FakeNodes: PlacementNodeSource {
    let nodes: Mutex<[NodeSnapshot]>

    init(_ nodes: [NodeSnapshot]) { self.nodes = Mutex(nodes) }

    func placementNodes() throws -> [NodeSnapshot] { nodes.withLock { $0 } }
    func placementNode(_ name: String) throws -> NodeSnapshot? { nodes.withLock { $0.first { $0.name == name } } }
}

@Suite struct PlacementLedgerTests {
    static let gib: UInt64 = 1 << 30

    static func node(_ name: String, memory: UInt64 = 4, state: NodeState = .ready) -> NodeSnapshot {
        NodeSnapshot(name: name, state: state, cpuMillis: 4000, memoryBytes: memory * gib, diskBytes: 100 * gib)
    }

    static func vps(_ name: String, on node: String, memory: UInt64, group: String = "") -> PlacedVPS {
        PlacedVPS(name: name, node: node, cost: PlacementRequest(memoryBytes: memory * gib), group: group)
    }

    @Test func placementsCountWhatIsAlreadyPlaced() throws {
        let ledger = PlacementLedger(
            policy: SchedulerPolicy(), source: FakeNodes([Self.node("a"), Self.node("b")]),
            placed: [Self.vps("old", on: "a", memory: 3)])
        let (node, _) = try ledger.place("new", PlacementRequest(memoryBytes: 2 * Self.gib), pinnedTo: nil) { _ in true }
        #expect(node == "b")
        #expect(ledger.vpsCount(on: "a") == 1)
        #expect(ledger.vpsCount(on: "b") == 1)
        // b now holds 2 of its 4 GiB and a 3: a third VPS of 2 GiB fits only on b.
        #expect(try ledger.place("third", PlacementRequest(memoryBytes: 2 * Self.gib), pinnedTo: nil) { _ in true }.node == "b")
        #expect(throws: WireError.self) { try ledger.place("fourth", PlacementRequest(memoryBytes: 2 * Self.gib), pinnedTo: nil) { _ in true } }
    }

    @Test func aFailedReservationLeavesNothingCounted() throws {
        let ledger = PlacementLedger(policy: SchedulerPolicy(), source: FakeNodes([Self.node("a")]), placed: [])
        #expect(throws: WireError.self) {
            try ledger.place("web1", PlacementRequest(memoryBytes: 4 * Self.gib), pinnedTo: nil) { _ -> Bool in
                throw WireError(.alreadyExists, "name: taken", field: "name")
            }
        }
        #expect(ledger.vpsCount(on: "a") == 0)
        #expect(try ledger.place("web1", PlacementRequest(memoryBytes: 4 * Self.gib), pinnedTo: nil) { _ in true }.node == "a")
    }

    @Test func concurrentPlacementsNeverOverfillANode() async throws {
        let ledger = PlacementLedger(policy: SchedulerPolicy(), source: FakeNodes([Self.node("a", memory: 10)]), placed: [])
        let placed = await withTaskGroup(of: Bool.self) { group in
            for i in 0..<40 {
                group.addTask { (try? ledger.place("v\(i)", PlacementRequest(memoryBytes: Self.gib), pinnedTo: nil) { _ in true }) != nil }
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(placed == 10)
        #expect(ledger.snapshot(Self.node("a", memory: 10)).usedMemoryBytes == 10 * Self.gib)
    }

    @Test func aPinnedNodeIsCheckedButNotScored() throws {
        let ledger = PlacementLedger(
            policy: SchedulerPolicy(), source: FakeNodes([Self.node("a"), Self.node("b", state: .cordoned)]),
            placed: [Self.vps("x", on: "a", memory: 3)])
        #expect(try ledger.place("web1", PlacementRequest(memoryBytes: Self.gib), pinnedTo: "a") { _ in true }.node == "a")
        let cordoned = #expect(throws: WireError.self) { try ledger.place("web2", PlacementRequest(), pinnedTo: "b") { _ in true } }
        #expect(cordoned?.code == .noCapacity)
        #expect(cordoned?.message == "node: b cannot take web2: cordoned")
        let unknown = #expect(throws: WireError.self) { try ledger.place("web3", PlacementRequest(), pinnedTo: "n9") { _ in true } }
        #expect(unknown?.code == .notFound)
    }

    @Test func antiAffinityGroupsLeaveWithTheirMembers() throws {
        let member = Self.vps("db1", on: "a", memory: 1, group: "db")
        let ledger = PlacementLedger(policy: SchedulerPolicy(), source: FakeNodes([Self.node("a")]), placed: [member])
        let request = PlacementRequest(memoryBytes: Self.gib, antiAffinityGroup: "db")
        let refused = #expect(throws: WireError.self) { try ledger.place("db2", request, pinnedTo: nil) { _ in true } }
        #expect(refused?.message == "no node fits: 1 anti-affinity")
        ledger.remove(member)
        #expect(try ledger.place("db2", request, pinnedTo: nil) { _ in true }.node == "a")
    }

    @Test func resizesReserveGrowthAndReleaseItOnRefusal() throws {
        let web = Self.vps("web", on: "a", memory: 1)
        let ledger = PlacementLedger(
            policy: SchedulerPolicy(), source: FakeNodes([Self.node("a")]),
            placed: [web, Self.vps("other", on: "a", memory: 2)])
        let full = #expect(throws: WireError.self) { try ledger.reserveResize(web, to: PlacementRequest(memoryBytes: 2 * Self.gib + 1)) }
        #expect(full?.code == .noCapacity)
        #expect(full?.message == "insufficient memory on a for the new limits of web (4G allocatable, 3G committed)")
        // Nothing committed changes: nothing to reserve.
        #expect(try ledger.reserveResize(web, to: PlacementRequest(memoryBytes: Self.gib)) == nil)

        let resize = try #require(try ledger.reserveResize(web, to: PlacementRequest(memoryBytes: 2 * Self.gib)))
        #expect(ledger.snapshot(Self.node("a")).usedMemoryBytes == 4 * Self.gib)
        // A second raise now finds the node full.
        #expect(throws: WireError.self) { try ledger.reserveResize(Self.vps("other", on: "a", memory: 2), to: PlacementRequest(memoryBytes: 3 * Self.gib)) }
        ledger.release(resize)
        #expect(ledger.snapshot(Self.node("a")).usedMemoryBytes == 3 * Self.gib)
    }

    @Test func aNodesAnswerIsWhatTheVPSCommitsAfterAResize() throws {
        let web = Self.vps("web", on: "a", memory: 1)
        let ledger = PlacementLedger(policy: SchedulerPolicy(), source: FakeNodes([Self.node("a")]), placed: [web])
        let resize = try #require(try ledger.reserveResize(web, to: PlacementRequest(memoryBytes: 2 * Self.gib)))
        var counted = web
        counted.cost = resize.new
        ledger.recount(counted, as: PlacementRequest(memoryBytes: 3 * Self.gib / 2))
        let node = ledger.snapshot(Self.node("a"))
        #expect(node.usedMemoryBytes == 3 * Self.gib / 2)
        #expect(node.vpsCount == 1)
    }
}
