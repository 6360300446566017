import BerthCore
import Foundation
import Testing
import Wire

@testable import Controller
@testable import Placement

@Suite struct StoreTests {
    func store() throws -> (SQLiteStore, String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-store-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        return (try SQLiteStore(directory: dir), dir)
    }

    func record(_ name: String, ips: [String] = []) -> VPSRecord {
        var spec = VPSSpec(name: name, template: "busybox")
        spec.ips = ips
        return VPSRecord(name: name, node: "n1", tenant: "", spec: spec, status: VPSStatusRecord(), phase: .creating)
    }

    @Test func concurrentReservationsNeverShareAnAddress() async throws {
        let (store, dir) = try store()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try store.addPool(IPPoolRecord(name: "p", cidr: "198.18.0.0/26", gateway: "198.18.0.1"))
        let results = await withTaskGroup(of: [String].self) { group in
            for i in 0..<40 {
                group.addTask { (try? store.reserveVPS(self.record("v\(i)"), autoAddresses: [("p", 1)])) ?? [] }
            }
            return await group.reduce(into: [String]()) { $0 += $1 }
        }
        #expect(results.count == 40)
        #expect(Set(results).count == 40)
        #expect(!results.contains("198.18.0.1"))  // the gateway
        #expect(try store.poolUsage()["p"] == 40)
        // 62 usable, minus the gateway, minus 40: 21 left, so 22 more cannot all fit.
        #expect(throws: WireError.self) { try store.reserveVPS(self.record("big"), autoAddresses: [("p", 22)]) }
        #expect(try store.vps("big") == nil)  // nothing of the failed reservation stays
        try store.removeVPS("v0")
        #expect(try store.poolUsage()["p"] == 39)
    }

    @Test func namesAndExplicitAddressesAreUniqueClusterWide() throws {
        let (store, dir) = try store()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try store.reserveVPS(record("a", ips: ["198.18.5.5"]), autoAddresses: [])
        #expect(throws: WireError.self) { try store.reserveVPS(self.record("a"), autoAddresses: []) }
        #expect(throws: WireError.self) { try store.reserveVPS(self.record("b", ips: ["198.18.5.5"]), autoAddresses: []) }
        try store.addPool(IPPoolRecord(name: "p", cidr: "198.18.5.0/29", gateway: ""))
        // The explicitly taken address is skipped by the pool too.
        let got = try store.reserveVPS(record("c"), autoAddresses: [("p", 5)])
        #expect(!got.contains("198.18.5.5"))
        #expect(throws: WireError.self) { try store.addPool(IPPoolRecord(name: "q", cidr: "198.18.5.4/30", gateway: "")) }
        #expect(throws: WireError.self) { try store.removePool("p") }
    }

    /// The log keeps its newest events with their actors; what was pruned is told by the oldest
    /// sequence number kept, and sequence numbers are never reused.
    @Test func eventsArePrunedFromTheOldestAndSayWhereTheLogBegins() throws {
        let (store, dir) = try store()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try store.oldestEventID() == 0)
        for k in 1...25 { try store.addEvent(kind: "vps.started", subject: "web\(k)", message: "", actor: "admin/root") }
        #expect(try store.pruneEvents(keeping: 10) == 15)
        #expect(try store.oldestEventID() == 16)
        let kept = try store.events(after: 0, limit: 100)
        #expect(kept.map(\.id) == Array(16...25))
        #expect(kept.first?.actor == "admin/root" && kept.first?.subject == "web16")
        try store.addEvent(kind: "node.down", subject: "n1", message: "")
        #expect(try store.events(after: 25, limit: 10).map(\.id) == [26])
        #expect(try store.events(after: 25, limit: 10).first?.actor == "")
        #expect(try store.pruneEvents(keeping: 100) == 0)
    }

    @Test func joinTokensAreSingleUseAndExpire() throws {
        let (store, dir) = try store()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let now = Date()
        try store.addJoinToken(id: "t1", secretHash: "h", expires: now.addingTimeInterval(60))
        try store.addJoinToken(id: "t2", secretHash: "h", expires: now.addingTimeInterval(-1))
        #expect(try !store.consumeJoinToken(id: "t1", secretHash: "wrong", now: now))
        #expect(try store.consumeJoinToken(id: "t1", secretHash: "h", now: now))
        #expect(try !store.consumeJoinToken(id: "t1", secretHash: "h", now: now))
        #expect(try !store.consumeJoinToken(id: "t2", secretHash: "h", now: now))
    }

    @Test func operationsRecordProgressAndResultOnce() throws {
        let (store, dir) = try store()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try store.beginOperation(id: "op1", kind: "create", subject: "web1", owner: "admin/a"))
        #expect(try !store.beginOperation(id: "op1", kind: "create", subject: "web1", owner: "admin/a"))
        try store.operationProgress(id: "op1", "placed on n1")
        #expect(try store.operation("op1")?.state == "running")
        #expect(try store.operation("op1")?.progress == "placed on n1")
        var response = Berth_V1_Response()
        response.status.name = "web1"
        try store.finishOperation(id: "op1", result: Data(try response.serializedBytes() as [UInt8]), error: nil)
        #expect(try store.operation("op1")?.state == "succeeded")
        #expect(try store.operation("op1").map(Berth_V1_Operation.init)?.result.status.name == "web1")
        // A controller that stopped mid-operation marks the leftovers failed when it starts.
        #expect(try store.beginOperation(id: "op2", kind: "stop", subject: "web1", owner: "admin/a"))
        // The journal of a restarted controller marks them failed, with an error its codec reads.
        _ = try OperationJournal(store: SQLiteStore(directory: dir), codec: .wire)
        let abandoned = try #require(try store.operation("op2"))
        #expect(abandoned.state == "failed")
        #expect(Berth_V1_Operation(abandoned).error.code == "unavailable")
        #expect(try store.operation("op1")?.state == "succeeded")
        #expect(try store.operation("op1")?.error == nil)
    }

    @Test func stateSurvivesReopening() throws {
        let (store, dir) = try store()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var info = NodeReport(name: "n1")
        info.cpus = 16
        info.overcommit = Overcommit(cpu: 4, memory: 1.5, disk: 1)
        info.committed = Commitment(cpuPercent: 250, memoryBytes: 1 << 30, diskBytes: 2 << 30)
        try store.saveNode(NodeRecord(name: "n1", address: "198.18.0.1:7000", labels: ["zone": "a"], info: info, cordoned: true, certificateSerial: "01"))
        _ = try store.reserveVPS(record("a"), autoAddresses: [])
        try store.revoke("beef")
        let reopened = try SQLiteStore(directory: dir)
        #expect(try reopened.node("n1")?.info == info)
        #expect(try reopened.node("n1")?.cordoned == true)
        #expect(try reopened.vps("a")?.node == "n1")
        #expect(try reopened.revoked() == ["beef"])
    }
}

@Suite struct LivenessTests {
    @Test func aNodeIsDownOnceItsWindowPasses() async throws {
        let liveness = Liveness(downAfter: .milliseconds(200))
        #expect(!liveness.isAlive("n1"))
        #expect(liveness.heartbeat(node: "n1", info: NodeReport(), templates: ["busybox"]))
        #expect(liveness.isAlive("n1"))
        #expect(!liveness.heartbeat(node: "n1", info: NodeReport(), templates: []))
        try await Task.sleep(for: .milliseconds(300))
        #expect(!liveness.isAlive("n1"))
        #expect(liveness.newlyDown(among: ["n1"]) == ["n1"])
        #expect(liveness.newlyDown(among: ["n1"]).isEmpty)  // reported once
    }

    /// A node just enrolled is not "down" before its first heartbeat could come; it is once a
    /// whole window passes without one.
    @Test func aNewlyEnrolledNodeGetsOneWindowForItsFirstHeartbeat() async throws {
        let liveness = Liveness(downAfter: .milliseconds(200))
        liveness.enrolled("n2")
        #expect(liveness.newlyDown(among: ["n2"]).isEmpty)
        #expect(liveness.report("n2")?.templates == nil)  // nothing is placed there before it reports
        try await Task.sleep(for: .milliseconds(300))
        #expect(liveness.newlyDown(among: ["n2"]) == ["n2"])
        // An enrolment again (a re-join) does not reset a node that has reported.
        #expect(liveness.heartbeat(node: "n2", info: NodeReport(), templates: ["busybox"]))
        liveness.enrolled("n2")
        #expect(liveness.report("n2")?.templates == ["busybox"])
    }
}
