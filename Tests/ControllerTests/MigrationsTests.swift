import BerthCore
import Foundation
import Logging
import NIOPosix
import Placement
import Synchronization
import Testing
import Wire
import WireTLS

@testable import Controller

/// The agents as a migration sees them, in memory: what each node holds and runs, every call in
/// order, and the failures a test asks for.
final class FakeMigrationAgents: MigrationTransport, @unchecked Sendable {
    struct State {
        var calls: [String] = []
        /// node -> VPS -> state ("running" / "stopped")
        var held: [String: [String: String]] = [:]
        var failSend = false
        /// A warm send that fails after the source stopped the VPS for its last pass.
        var failSendAfterStop = false
        var failStartOn: Set<String> = []
        /// Nodes whose agent is gone during a start (the call fails `unavailable`).
        var unreachableOn: Set<String> = []
        /// An agent whose copy is not one it received under the grant (abort keeps it).
        var keepOnAbort = false
    }
    let state = Mutex(State())

    var calls: [String] { state.withLock { $0.calls } }
    func held(on node: String) -> [String: String] { state.withLock { $0.held[node] ?? [:] } }

    private func record(_ call: String) { state.withLock { $0.calls.append(call) } }

    func status(_ name: String, on node: NodeRecord) async throws -> VPSStatusRecord {
        record("status \(node.name)")
        guard let state = held(on: node.name)[name] else { throw BerthError(.notFound, "VPS \(name) does not exist") }
        return VPSStatusRecord(name: name, state: state)
    }

    func expect(_ grant: MigrationGrant, on target: NodeRecord) async throws { record("expect \(target.name)") }

    func send(
        _ grant: MigrationGrant, to target: NodeRecord, from source: NodeRecord, warm: Bool, progress: @escaping @Sendable (String) -> Void
    ) async throws -> VPSStatusRecord {
        record("send \(source.name)->\(target.name)\(warm ? " warm" : "")")
        try state.withLock { (state: inout State) throws(BerthError) in
            if state.failSend { throw BerthError(.kernel, "the target's disk is full", stage: "write", errno: ENOSPC) }
            if warm { state.held[source.name]?[grant.vps] = "stopped" }  // for the last pass
            if state.failSendAfterStop { throw BerthError(.kernel, "the target's disk is full", stage: "write", errno: ENOSPC) }
            state.held[target.name, default: [:]][grant.vps] = "stopped"
        }
        return VPSStatusRecord(name: grant.vps, state: "stopped")
    }

    func abort(_ grant: MigrationGrant, on target: NodeRecord) async throws {
        record("abort \(target.name)")
        state.withLock { if !$0.keepOnAbort { _ = $0.held[target.name]?.removeValue(forKey: grant.vps) } }
    }

    func stop(_ name: String, on node: NodeRecord) async throws -> VPSStatusRecord {
        record("stop \(node.name)")
        state.withLock { $0.held[node.name]?[name] = "stopped" }
        return VPSStatusRecord(name: name, state: "stopped")
    }

    func start(_ name: String, on node: NodeRecord) async throws -> VPSStatusRecord {
        record("start \(node.name)")
        try state.withLock { (state: inout State) throws(BerthError) in
            if state.failStartOn.contains(node.name) { throw BerthError(.kernel, "starting \(name) failed: no loop device", stage: "loop") }
            if state.unreachableOn.contains(node.name) { throw BerthError(.unavailable, "the connection to the server was closed") }
            state.held[node.name]?[name] = "running"
        }
        return VPSStatusRecord(name: name, state: "running")
    }

    func destroy(_ name: String, on node: NodeRecord) async throws {
        record("destroy \(node.name)")
        state.withLock { _ = $0.held[node.name]?.removeValue(forKey: name) }
    }
}

/// `Migrations` over a real SQLite store, the real ledger and scheduler, and fake agents: each
/// path ends with the VPS on exactly one node, and the record, the ledger and the agents agree.
@Suite struct MigrationsTests {
    struct Cluster {
        let dir: String
        let store: SQLiteStore
        let ledger: PlacementLedger
        let vps: VPSCalls
        let agents: FakeMigrationAgents
        let migrations: Migrations
        let admin = Caller(identity: CertificateIdentity(role: .admin, name: "root", serial: "01"))

        func migrate(_ name: String, to node: String = "", mode: String = "") async throws -> VPSStatusRecord {
            try await migrations.migrate(name, to: node, mode: mode, by: admin) { _ in }
        }
        func node(of name: String) throws -> String? { try store.vps(name)?.node }
    }

    /// Three live nodes with the busybox template, n1 and n2 routing 198.18.101.0/24 (n3 no
    /// address range); `web1` (1 GiB memory, 198.18.101.7) on n1 in state `vpsState`.
    func withCluster(vpsState: String = "running", _ body: (Cluster) async throws -> Void) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-migrations-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir + "/ca", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try SQLiteStore(directory: dir)
        let liveness = Liveness(downAfter: .seconds(60))
        for (i, name) in ["n1", "n2", "n3"].enumerated() {
            var report = NodeReport(name: name)
            report.cpus = 4
            report.memoryBytes = 8 << 30
            report.diskBytes = 100 << 30
            report.diskFreeBytes = 100 << 30
            report.overcommit = Overcommit()
            report.networkRanges = name == "n3" ? [] : ["198.18.101.0/24"]
            try store.saveNode(
                NodeRecord(name: name, address: "198.18.100.1\(i + 1):7000", labels: [:], info: report, cordoned: false, certificateSerial: "0\(i + 1)"))
            liveness.heartbeat(node: name, info: report, templates: ["busybox"])
        }
        let logger = Logger(label: "test")
        let ca = try ClusterCA.create(directory: dir + "/ca")
        let links = AgentLinks(bundle: try ca.issueBundle(role: .controller, name: "controller"), group: MultiThreadedEventLoopGroup.singleton)
        let ledger = PlacementLedger(policy: SchedulerPolicy(), source: SchedulerView(store: store, liveness: liveness, drains: DrainStates()), placed: [])
        let heartbeats = try Heartbeats(
            store: store, liveness: liveness, registry: PeerRegistry(), settings: ControllerSettings(), epochs: LeaseEpochs(), replicas: ReplicaIndex(),
            writes: BackgroundWrites(logger: logger), logger: logger)
        let vps = VPSCalls(store: store, liveness: liveness, links: links, ledger: ledger, heartbeats: heartbeats, logger: logger)
        let agents = FakeMigrationAgents()
        var spec = VPSSpec(name: "web1", template: "busybox")
        spec.limits.memoryBytes = 1 << 30
        spec.ips = ["198.18.101.7"]
        let record = VPSRecord(name: "web1", node: "n1", tenant: "", spec: spec, status: VPSStatusRecord(name: "web1", state: vpsState), phase: .ready)
        _ = try store.reserveVPS(record, autoAddresses: [])
        ledger.add(record.placed)
        agents.state.withLock { $0.held["n1"] = ["web1": vpsState] }
        let cluster = Cluster(
            dir: dir, store: store, ledger: ledger, vps: vps, agents: agents,
            migrations: Migrations(store: store, ledger: ledger, vps: vps, transport: agents, logger: logger))
        try await body(cluster)
    }

    @Test func aRunningVPSMovesAndTheSourceCopyGoesLast() async throws {
        try await withCluster { (c: Cluster) async throws in
            let status = try await c.migrate("web1", to: "n2")
            #expect(status.state == "running" && status.node == "n2")
            #expect(try c.node(of: "web1") == "n2")
            // Warm by default: the source stops the VPS itself, for the last pass.
            #expect(c.agents.calls == ["expect n2", "status n1", "send n1->n2 warm", "start n2", "destroy n1"])
            #expect(c.agents.held(on: "n1").isEmpty && c.agents.held(on: "n2") == ["web1": "running"])
            #expect(c.ledger.vpsCount(on: "n1") == 0 && c.ledger.vpsCount(on: "n2") == 1)
            #expect(try c.store.vps("web1")?.spec.ips == ["198.18.101.7"])  // its address goes with it
            #expect(try c.store.vps("web1")?.migration == nil)  // nothing left to settle
        }
    }

    @Test func aColdMigrationStopsTheVPSFirst() async throws {
        try await withCluster { (c: Cluster) async throws in
            let status = try await c.migrate("web1", to: "n2", mode: "cold")
            #expect(status.state == "running" && status.node == "n2")
            #expect(c.agents.calls == ["expect n2", "status n1", "stop n1", "send n1->n2", "start n2", "destroy n1"])
            let unknown = await #expect(throws: BerthError.self) { try await c.migrate("web1", to: "n1", mode: "live") }
            #expect(unknown?.field == "mode" && unknown?.message == "mode: 'live' is not a migration mode (warm, cold)")
        }
    }

    /// A warm copy that fails while the VPS still runs leaves it running; one that fails after
    /// the source stopped it for the last pass starts it again.
    @Test func aFailedWarmCopyLeavesTheVPSRunningOnItsSource() async throws {
        for afterStop in [false, true] {
            try await withCluster { (c: Cluster) async throws in
                c.agents.state.withLock { if afterStop { $0.failSendAfterStop = true } else { $0.failSend = true } }
                let error = await #expect(throws: BerthError.self) { try await c.migrate("web1", to: "n2") }
                let how = afterStop ? "running again" : "still running"
                #expect(error?.message.hasPrefix("migrating web1 to n2 failed; it stays on n1, \(how): the target's disk is full") == true)
                #expect(
                    c.agents.calls
                        == ["expect n2", "status n1", "send n1->n2 warm", "abort n2", "status n1"] + (afterStop ? ["start n1"] : []))
                #expect(c.agents.held(on: "n1") == ["web1": "running"] && c.agents.held(on: "n2").isEmpty)
                #expect(try c.store.vps("web1")?.migration == nil)
            }
        }
    }

    @Test func aFailedCopyLeavesTheVPSRunningOnItsSource() async throws {
        try await withCluster { (c: Cluster) async throws in
            c.agents.state.withLock { $0.failSend = true }
            let error = await #expect(throws: BerthError.self) { try await c.migrate("web1", to: "n2", mode: "cold") }
            #expect(error?.message.hasPrefix("migrating web1 to n2 failed; it stays on n1, running again: the target's disk is full") == true)
            #expect(error?.errno == ENOSPC)
            #expect(try c.node(of: "web1") == "n1")
            #expect(c.agents.calls == ["expect n2", "status n1", "stop n1", "send n1->n2", "abort n2", "status n1", "start n1"])
            #expect(c.agents.held(on: "n1") == ["web1": "running"] && c.agents.held(on: "n2").isEmpty)
            // The target's reservation is released: the ledger counts the VPS once, on n1.
            #expect(c.ledger.vpsCount(on: "n1") == 1 && c.ledger.vpsCount(on: "n2") == 0)
            // Nothing holds the VPS any more: a second attempt runs.
            c.agents.state.withLock { $0.failSend = false }
            _ = try await c.migrate("web1", to: "n2")
            #expect(try c.node(of: "web1") == "n2")
        }
    }

    @Test func aTargetThatCannotStartItHandsItBack() async throws {
        try await withCluster { (c: Cluster) async throws in
            c.agents.state.withLock { $0.failStartOn = ["n2"] }
            let error = await #expect(throws: BerthError.self) { try await c.migrate("web1", to: "n2") }
            #expect(error?.message.hasPrefix("web1 did not start on n2 and was handed back to n1, running again") == true)
            #expect(try c.node(of: "web1") == "n1")
            #expect(c.agents.calls == ["expect n2", "status n1", "send n1->n2 warm", "start n2", "destroy n2", "start n1"])
            #expect(c.agents.held(on: "n1") == ["web1": "running"] && c.agents.held(on: "n2").isEmpty)
            #expect(c.ledger.vpsCount(on: "n1") == 1 && c.ledger.vpsCount(on: "n2") == 0)
        }
    }

    /// The target goes away during its start: the VPS may run there, so the source's copy never
    /// starts; the committed move settles once the target answers.
    @Test func aTargetLostDuringItsStartKeepsTheMoveAndSettlesIt() async throws {
        try await withCluster { (c: Cluster) async throws in
            c.agents.state.withLock { $0.unreachableOn = ["n2"] }
            let error = await #expect(throws: BerthError.self) { try await c.migrate("web1", to: "n2") }
            #expect(error?.code == .unavailable && error?.message.hasPrefix("web1 moved to n2, which did not answer its start") == true)
            #expect(try c.node(of: "web1") == "n2" && c.store.vps("web1")?.migration != nil)
            #expect(c.agents.held(on: "n1") == ["web1": "stopped"])  // never started again
            #expect(!c.agents.calls.contains("start n1"))
            c.agents.state.withLock { $0.unreachableOn = [] }
            await c.migrations.settleInterrupted()
            #expect(c.agents.held(on: "n2") == ["web1": "running"] && c.agents.held(on: "n1").isEmpty)
            #expect(try c.store.vps("web1")?.migration == nil)
        }
    }

    @Test func aStoppedVPSMovesStoppedWhereTheSchedulerSays() async throws {
        try await withCluster(vpsState: "stopped") { (c: Cluster) async throws in
            let status = try await c.migrate("web1")
            #expect(status.state == "stopped")
            // n3 would be the emptier choice, but its ranges do not hold the VPS's address.
            #expect(try c.node(of: "web1") == "n2")
            #expect(c.agents.calls == ["expect n2", "status n1", "send n1->n2", "destroy n1"])
        }
    }

    @Test func refusalsComeBeforeAnyAgentIsAsked() async throws {
        try await withCluster { (c: Cluster) async throws in
            for (to, field, code) in [("n1", "to", BerthError.Code.invalidArgument), ("n9", "to", .notFound)] {
                let error = await #expect(throws: BerthError.self) { try await c.migrate("web1", to: to) }
                #expect(error?.field == field && error?.code == code)
            }
            let unroutable = await #expect(throws: BerthError.self) { try await c.migrate("web1", to: "n3") }
            #expect(unroutable?.message == "to: n3 cannot take web1: addresses outside its network.ranges")
            _ = try c.store.setCordoned("n2", true)
            let cordoned = await #expect(throws: BerthError.self) { try await c.migrate("web1", to: "n2") }
            #expect(cordoned?.code == .noCapacity && cordoned?.message.contains("cordoned") == true && cordoned?.field == "to")
            try c.vps.hold("web1", "being destroyed")
            let busy = await #expect(throws: BerthError.self) { try await c.migrate("web1", to: "n3") }
            #expect(busy?.message == "name: web1 is busy: being destroyed")
            c.vps.release("web1")
            #expect(c.agents.calls.isEmpty)
            #expect(c.ledger.vpsCount(on: "n1") == 1 && c.ledger.vpsCount(on: "n3") == 0)
        }
    }

    /// While a migration holds a VPS, the calls that would change it are refused as busy.
    @Test func aMovingVPSRefusesDestroySetAndLifecycleCalls() async throws {
        try await withCluster { (c: Cluster) async throws in
            try c.vps.hold("web1", "being migrated from n1")
            let destroy = await #expect(throws: BerthError.self) {
                try await c.vps.destroy("web1", by: c.admin, { _ in () }, neverCreated: ())
            }
            #expect(destroy?.code == .conflict && destroy?.message.contains("busy: being migrated") == true)
            let start = await #expect(throws: BerthError.self) {
                try await c.vps.relay("web1", by: c.admin, exclusive: true) { _ in ((), nil) }
            }
            #expect(start?.code == .conflict)
            let set = await #expect(throws: BerthError.self) {
                try await c.vps.set("web1", limits: LimitsUpdate(), ipAdd: [], ipDel: [], by: c.admin) { _ in ((), VPSStatusRecord()) }
            }
            #expect(set?.code == .conflict)
            // exec and console (not exclusive) still reach the VPS.
            try await c.vps.relay("web1", by: c.admin) { _ in ((), nil) }
        }
    }

    /// A controller that stopped during a migration left the VPS's row with its migration and
    /// both nodes with a copy: the row's node keeps it (running again if it ran), the other's goes.
    @Test func anInterruptedMigrationSettlesOnTheRowsNode() async throws {
        for committed in [false, true] {
            try await withCluster(vpsState: "stopped") { (c: Cluster) async throws in
                var record = try #require(try c.store.vps("web1"))
                record.node = committed ? "n2" : "n1"
                record.migration = PendingMigration(grantID: "g", source: "n1", target: "n2", wasRunning: true)
                try c.store.updateVPS(record)
                c.agents.state.withLock { $0.held = ["n1": ["web1": "stopped"], "n2": ["web1": "stopped"]] }
                await c.migrations.settleInterrupted()
                let home = committed ? "n2" : "n1", other = committed ? "n1" : "n2"
                #expect(c.agents.held(on: home) == ["web1": "running"])
                #expect(c.agents.held(on: other).isEmpty)
                #expect(try c.store.vps("web1")?.migration == nil)
                #expect(c.agents.calls.contains("destroy \(other)") == committed)  // before the commit, the grant's abort removes it
                // Settled once: the next round does nothing.
                let calls = c.agents.calls.count
                await c.migrations.settleInterrupted()
                #expect(c.agents.calls.count == calls)
            }
        }
    }

    /// A copy that runs on the other node is never destroyed: the conflict is reported and
    /// the migration stays recorded for an operator.
    @Test func aRunningCopyElsewhereIsNeverDestroyed() async throws {
        try await withCluster(vpsState: "running") { (c: Cluster) async throws in
            var record = try #require(try c.store.vps("web1"))
            record.migration = PendingMigration(grantID: "g", source: "n1", target: "n2", wasRunning: true)
            try c.store.updateVPS(record)
            c.agents.state.withLock { $0.held = ["n1": ["web1": "running"], "n2": ["web1": "running"]] }
            c.agents.state.withLock { $0.keepOnAbort = true }
            await c.migrations.settleInterrupted()
            #expect(c.agents.held(on: "n2") == ["web1": "running"] && c.agents.held(on: "n1") == ["web1": "running"])
            #expect(!c.agents.calls.contains { $0.hasPrefix("destroy") })
            #expect(try c.store.vps("web1")?.migration != nil)
        }
    }

    /// Only the passes' summaries go into the `vps.migrated` event.
    @Test func passSummariesAreTheSourcesLinesAboutWholePasses() {
        #expect(
            Migrations.passSummary("n1: pass 2 while web1 runs: 11.5 MiB in 46 changed chunks, 75 ms")
                == "pass 2 while web1 runs: 11.5 MiB in 46 changed chunks, 75 ms")
        #expect(Migrations.passSummary("n1: pass 1 (the VPS is stopped): 3.0 MiB of btrfs send stream, 40 ms") != nil)
        #expect(Migrations.passSummary("n1: pass 2: 64.0 MiB of 1.0 GiB looked at") == nil)
        #expect(Migrations.passSummary("n1: stopping web1 for the last pass") == nil)
        #expect(Migrations.passSummary("n1: resumed 1 time on a new connection") == "resumed 1 time on a new connection")
        #expect(Migrations.passSummary("migrating web1 from n1 to n2 (warm)") == nil)
    }
}
