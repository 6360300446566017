import BerthCore
import Foundation
import Logging
import Placement
import Synchronization
import Testing
import Wire
import WireTLS

@testable import Controller

/// The agents as HA sees them: every call in order.
final class FakeReplicaAgents: ReplicaTransport, @unchecked Sendable {
    let calls = Mutex<[String]>([])

    func plan(_ vps: String, ha: Bool, interval: Int, targets: [NodeRecord], on node: NodeRecord) async throws {
        calls.withLock { $0.append("plan \(vps) on \(node.name) -> \(targets.map(\.name).joined(separator: ","))") }
    }

    func expectReplicas(of vps: String, from source: String, on node: NodeRecord) async throws {
        calls.withLock { $0.append("expect \(vps) on \(node.name) from \(source.isEmpty ? "-" : source)") }
    }

    func promote(_ vps: String, start: Bool, on node: NodeRecord) async throws -> VPSStatusRecord {
        calls.withLock { $0.append("promote \(vps) on \(node.name)\(start ? " start" : "")") }
        return VPSStatusRecord(name: vps, state: start ? "running" : "stopped")
    }
}

/// Failover over the real store, liveness and heartbeats, with fake agents: a node is "lost"
/// once it has been silent for the test's 1.5 s failover time while the others keep beating.
@Suite(.serialized) struct HighAvailabilityTests {
    struct Cluster {
        let store: SQLiteStore
        let liveness: Liveness
        let heartbeats: Heartbeats
        let ha: HighAvailability
        let agents: FakeReplicaAgents
        let epochs: LeaseEpochs

        /// Heartbeats from `nodes`; `replicas`: what each says it holds (VPS -> taken ms).
        func beat(_ nodes: [String], replicas: [String: [String: Int64]] = [:], vpses: [String: [String]] = [:]) throws {
            for (i, node) in ["n1", "n2", "n3"].enumerated() where nodes.contains(node) {
                var report = HeartbeatReport()
                report.replicas = replicas[node] ?? [:]
                report.vpses = (vpses[node] ?? []).map { VPSStatusRecord(name: $0, state: "stopped") }
                _ = try heartbeats.beat(report, from: CertificateIdentity(role: .node, name: node, serial: "0\(i + 1)"))
            }
        }

        /// The others beat while `lost` stays silent past the failover time.
        func lose(_ lost: [String], replicas: [String: [String: Int64]]) async throws {
            // Generous times: the suite runs beside the others on two busy cores.
            for _ in 0..<20 {
                try beat(["n1", "n2", "n3"].filter { !lost.contains($0) }, replicas: replicas)
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    func withCluster(rate: Int = 100, haVPSes: [String] = ["web1"], fenced: Bool = true, _ body: (Cluster) async throws -> Void) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-ha-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try SQLiteStore(directory: dir)
        let liveness = Liveness(downAfter: .seconds(1))
        for (i, name) in ["n1", "n2", "n3"].enumerated() {
            var report = NodeReport(name: name)
            report.cpus = 4
            report.memoryBytes = 8 << 30
            report.diskBytes = 100 << 30
            report.networkRanges = ["198.18.101.0/24"]
            try store.saveNode(
                NodeRecord(name: name, address: "198.18.100.1\(i + 1):7000", labels: [:], info: report, cordoned: false, certificateSerial: "0\(i + 1)"))
            liveness.heartbeat(node: name, info: report, templates: ["busybox"])
        }
        var settings = ControllerSettings()
        settings.fenceAfter = .milliseconds(1000)
        settings.failoverAfter = .milliseconds(1500)
        settings.failoverRatePercent = rate
        let logger = Logger(label: "test")
        let epochs = LeaseEpochs()
        var records: [VPSRecord] = []
        for (i, name) in haVPSes.enumerated() {
            var spec = VPSSpec(name: name, template: "busybox")
            spec.layout = "pool"
            spec.ha = true
            spec.replicaNodes = ["n2", "n3"]
            spec.replicas = 2
            spec.ips = ["198.18.101.\(10 + i)"]
            var status = VPSStatusRecord(name: name, state: "running")
            status.fenceArmed = fenced
            let record = VPSRecord(name: name, node: "n1", tenant: "", spec: spec, status: status, phase: .ready)
            _ = try store.reserveVPS(record, autoAddresses: [])
            records.append(record)
        }
        let index = ReplicaIndex(records)
        let heartbeats = try Heartbeats(
            store: store, liveness: liveness, registry: PeerRegistry(), settings: settings, epochs: epochs, replicas: index,
            writes: BackgroundWrites(logger: logger), logger: logger)
        let view = SchedulerView(store: store, liveness: liveness, drains: DrainStates())
        let ledger = PlacementLedger(policy: SchedulerPolicy(), source: view, placed: records.map(\.placed))
        let agents = FakeReplicaAgents()
        let ha = HighAvailability(
            store: store, liveness: liveness, nodes: view, ledger: ledger, heartbeats: heartbeats, index: index, epochs: epochs, settings: settings,
            transport: agents, logger: logger)
        try await body(Cluster(store: store, liveness: liveness, heartbeats: heartbeats, ha: ha, agents: agents, epochs: epochs))
    }

    @Test func aLostNodesVPSRunsFromTheFreshestReplicaAndTheEpochRises() async throws {
        try await withCluster { c in
            try await c.lose(["n1"], replicas: ["n2": ["web1": 1_000], "n3": ["web1": 2_000]])
            await c.ha.tick()
            let record = try #require(try c.store.vps("web1"))
            #expect(record.node == "n3")
            #expect(record.spec.staleCopiesOn == ["n1"])
            #expect(try c.store.leaseEpochs()["n1"] == 2 && c.epochs.epoch(of: "n1") == 2)
            let calls = c.agents.calls.withLock { $0 }
            #expect(calls.first == "promote web1 on n3 start")
            // Protected again: n2 keeps its replica, now of n3's VPS; n1 is lost, so no other.
            #expect(calls.contains("expect web1 on n2 from n3") && calls.contains("plan web1 on n3 -> n2"))
            let events = try c.store.events(after: 0, limit: 50).map { "\($0.kind) \($0.message)" }
            #expect(events.contains { $0.hasPrefix("vps.failed-over from n1 to n3") && $0.contains("recovery point 1970-01-01T00:00:02Z") })
            // The lapse is on the record before the failover: the node's, and its VPS's fence.
            let lapsed = try #require(events.firstIndex { $0.hasPrefix("node.lease-lapsed ") && $0.contains("fence web1") })
            let fenced = try #require(events.firstIndex { $0.hasPrefix("vps.fenced on n1:") })
            let failedOver = try #require(events.firstIndex { $0.hasPrefix("vps.failed-over") })
            #expect(lapsed < failedOver && fenced < failedOver)
            // n1, back, is told its copy is stale, and the new epoch.
            try c.beat(["n1"], vpses: ["n1": ["web1"]])
            let answer = try c.heartbeats.beat(
                {
                    var r = HeartbeatReport(); r.vpses = [VPSStatusRecord(name: "web1", state: "failed")]; return r
                }(),
                from: CertificateIdentity(role: .node, name: "n1", serial: "01"))
            #expect(answer.superseded == ["web1"] && answer.leaseEpoch == 2)
            // Heard from after a lost silence: no lease until the watch's next round is done.
            #expect(answer.fenceAfter == .zero)
            await c.ha.tick()
            let renewed = try c.heartbeats.beat(HeartbeatReport(), from: CertificateIdentity(role: .node, name: "n1", serial: "01"))
            #expect(renewed.fenceAfter == .milliseconds(1000))
        }
    }

    @Test func aRunningVPSWhoseFenceWasNeverArmedDoesNotFailOver() async throws {
        try await withCluster(fenced: false) { c in
            try await c.lose(["n1"], replicas: ["n2": ["web1": 2_000]])
            await c.ha.tick()
            #expect(try c.store.vps("web1")?.node == "n1")
            #expect(try c.store.events(after: 0, limit: 50).contains { $0.kind == "failover.impossible" && $0.message.contains("fence") })
        }
    }

    @Test func noFailoverWithoutAMajority() async throws {
        try await withCluster { c in
            try await c.lose(["n1", "n2"], replicas: ["n3": ["web1": 2_000]])
            await c.ha.tick()
            #expect(try c.store.vps("web1")?.node == "n1")
            #expect(c.agents.calls.withLock { $0 }.isEmpty)
            #expect(try c.store.events(after: 0, limit: 50).contains { $0.kind == "failover.refused" && $0.message.contains("1 of 3 nodes") })
            #expect(c.epochs.epoch(of: "n1") == 1)
        }
    }

    @Test func aReplicaThatHoldsNothingYetIsNoCandidate() async throws {
        try await withCluster { c in
            try await c.lose(["n1"], replicas: ["n2": ["web1": 0]])
            await c.ha.tick()
            #expect(try c.store.vps("web1")?.node == "n1")
            #expect(try c.store.events(after: 0, limit: 50).contains { $0.kind == "failover.impossible" })
        }
    }

    @Test func theRateLimitDefersTheRest() async throws {
        try await withCluster(rate: 10, haVPSes: ["web1", "web2"]) { c in
            try await c.lose(["n1"], replicas: ["n2": ["web1": 2_000, "web2": 2_000]])
            await c.ha.tick()
            let placed = try ["web1", "web2"].map { try c.store.vps($0)?.node }
            #expect(placed.filter { $0 == "n2" }.count == 1 && placed.filter { $0 == "n1" }.count == 1)
            #expect(try c.store.events(after: 0, limit: 50).contains { $0.kind == "failover.deferred" })
        }
    }

    @Test func replicasArePlacedWithTheFiltersOfACreate() async throws {
        try await withCluster { c in
            var n2 = try #require(try c.store.node("n2"))
            n2.labels = ["zone": "b"]
            try c.store.saveNode(n2)
            var record = try #require(try c.store.vps("web1"))
            record.spec.constraints = ["zone": "b"]
            record.spec.replicaNodes = []
            try c.store.updateVPS(record)
            let lines = await c.ha.protect("web1")
            // n3 lacks the label the VPS is constrained to: it could not run there after a failover.
            #expect(try c.store.vps("web1")?.spec.replicaNodes == ["n2"])
            #expect(lines.contains { $0.hasPrefix("only 1 of 2 replica(s) of web1 placed") })
        }
    }

    @Test func leaseTimesMustFenceBeforeTheFailover() throws {
        #expect(throws: WireError.self) { try ClusterConfigFile.parse(Data(#"{"fenceAfterMs": 10000, "failoverAfterMs": 11000}"#.utf8)) }
        #expect(throws: WireError.self) { try ClusterConfigFile.parse(Data(#"{"fenceAfterMs": 2000}"#.utf8)) }
        #expect(throws: WireError.self) { try ClusterConfigFile.parse(Data(#"{"eventRetention": 5}"#.utf8)) }
        #expect(try ClusterConfigFile.parse(Data(#"{"eventRetention": 500}"#.utf8)).eventRetention == 500)
        let settings = try ClusterConfigFile.parse(Data(#"{"fenceAfterMs": 5000, "failoverAfterMs": 8000, "failoverRatePercent": 50}"#.utf8))
        #expect(settings.fenceAfter == .seconds(5) && settings.failoverAfter == .seconds(8) && settings.failoverRatePercent == 50)
        var spec = VPSSpec(name: "a", template: "t")
        spec.ha = true
        #expect(throws: BerthError.self) { try spec.checkHA() }  // a loop disk
        spec.layout = "pool"
        try spec.checkHA()
        spec.replicationIntervalSeconds = 5
        #expect(throws: BerthError.self) { try spec.checkHA() }
    }
}
