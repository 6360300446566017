import BerthCore
import Foundation
import Logging
import Placement
import Testing
import Wire

@testable import Controller

/// Drains and restores over the real store, ledger and scheduler with fake agents
/// (MigrationsTests.swift): what ends a drain, what the deadline does, and what restore brings back.
@Suite(.serialized) struct DrainsTests {
    func drains(_ c: MigrationsTests.Cluster) -> Drains {
        Drains(
            store: c.store, migrations: c.migrations, transport: c.agents, states: DrainStates(), logger: Logger(label: "test"),
            retryInterval: .milliseconds(100))
    }

    /// A second VPS on n1, stopped.
    func addStopped(_ c: MigrationsTests.Cluster) throws {
        var spec = VPSSpec(name: "web2", template: "busybox")
        spec.limits.memoryBytes = 1 << 30
        let record = VPSRecord(name: "web2", node: "n1", tenant: "", spec: spec, status: VPSStatusRecord(name: "web2", state: "stopped"), phase: .ready)
        _ = try c.store.reserveVPS(record, autoAddresses: [])
        c.ledger.add(record.placed)
        c.agents.state.withLock { $0.held["n1", default: [:]]["web2"] = "stopped" }
    }

    @Test func aDrainMovesEveryVPSAndRestoreBringsThemBack() async throws {
        try await MigrationsTests().withCluster { (c: MigrationsTests.Cluster) async throws in
            try addStopped(c)
            let drains = drains(c)
            _ = try drains.start("n1", deadlineSeconds: 60, force: false, mode: "", maxParallel: 2, by: c.admin)
            #expect(try c.store.node("n1")?.cordoned == true)
            let done = try await drains.follow("n1") { _ in }
            #expect(done.state == .drained)
            #expect(Set(done.items.map(\.state)) == [.done])
            #expect(try c.node(of: "web1") == "n2")  // n3 has no route for web1's address
            let web2 = try #require(try c.node(of: "web2"))
            #expect(web2 != "n1" && c.agents.held(on: web2)["web2"] == "stopped")
            #expect(c.agents.held(on: "n2")["web1"] == "running" && c.agents.held(on: "n1").isEmpty)
            #expect(try c.store.vps("web1")?.origin == "n1" && c.store.vps("web2")?.origin == "n1")
            #expect(try c.store.drain("n1")?.state == .drained)

            let restored = try await drains.restore("n1", skip: false, cancelDrain: false, by: c.admin) { _ in }
            #expect(restored.items.map(\.state) == [.done, .done])
            #expect(try c.node(of: "web1") == "n1" && c.node(of: "web2") == "n1")
            #expect(try c.store.vps("web1")?.origin == "" && c.store.drain("n1") == nil)
            #expect(try c.store.node("n1")?.cordoned == false)
            #expect(c.agents.held(on: "n1") == ["web1": "running", "web2": "stopped"])
        }
    }

    @Test func theDeadlineEndsADrainIncompleteOrWithForceStopsWhatIsLeft() async throws {
        for force in [false, true] {
            try await MigrationsTests().withCluster { (c: MigrationsTests.Cluster) async throws in
                // Nowhere to go: n2 cordoned, n3 without a route for its address.
                _ = try c.store.setCordoned("n2", true)
                let drains = drains(c)
                _ = try drains.start("n1", deadlineSeconds: 1, force: force, mode: "", maxParallel: 1, by: c.admin)
                let ended = try await drains.follow("n1") { _ in }
                let item = try #require(ended.items.first)
                #expect(try c.node(of: "web1") == "n1")
                if force {
                    #expect(ended.state == .drained)
                    #expect(item.state == .stopped && item.reason.hasPrefix("stopped at the deadline (--force); "))
                    #expect(c.agents.held(on: "n1") == ["web1": "stopped"])
                } else {
                    #expect(ended.state == .incomplete)
                    #expect(item.state == .blocked && item.reason.contains("no node fits"))
                    #expect(c.agents.held(on: "n1") == ["web1": "running"])
                }
            }
        }
    }

    @Test func restoreWaitsForNoRunningDrainAndUncordonRefusesOne() async throws {
        try await MigrationsTests().withCluster { (c: MigrationsTests.Cluster) async throws in
            _ = try c.store.setCordoned("n2", true)
            let drains = drains(c)
            _ = try drains.start("n1", deadlineSeconds: 600, force: false, mode: "", maxParallel: 1, by: c.admin)
            let refused = await #expect(throws: BerthError.self) {
                try await drains.restore("n1", skip: false, cancelDrain: false, by: c.admin) { _ in }
            }
            #expect(refused?.code == .conflict && refused?.message.contains("--cancel-drain") == true)
            #expect(throws: BerthError.self) { try drains.checkUncordon("n1") }
            // A second start follows the running drain instead of starting another.
            #expect(try drains.start("n1", deadlineSeconds: 5, force: true, mode: "", maxParallel: 1, by: c.admin).deadlineUnix > Drains.now + 100)
            let restored = try await drains.restore("n1", skip: true, cancelDrain: true, by: c.admin) { _ in }
            #expect(restored.items.isEmpty)
            #expect(try c.store.drain("n1") == nil && c.store.node("n1")?.cordoned == false)
            #expect(try c.node(of: "web1") == "n1")
        }
    }

    /// A moving VPS's line shows its target, then its passes and its stop.
    @Test func aMovingVPSsLineShowsItsPasses() {
        #expect(Drains.shownStep("migrating web1 from n1 to n2 (warm)")! == ("n2", ""))
        #expect(Drains.shownStep("n1: pass 2 while web1 runs: 11.5 MiB in 46 changed chunks, 75 ms (153.3 MiB/s)")!.step.hasPrefix("pass 2 while web1 runs"))
        #expect(Drains.shownStep("n1: stopping web1 for the last pass")! == (nil, "stopping web1 for the last pass"))
        #expect(Drains.shownStep("stopping web1 on n1")! == (nil, "stopping web1 on n1"))
        #expect(Drains.shownStep("n1: sending the 1.0 GiB disk of web1 to n2") == nil)
        #expect(Drains.shownStep("moved to n2") == nil)
        let item = DrainRecord.Item(vps: "web1", state: .moving, to: "n2", reason: "pass 1: 64.0 MiB of 1.0 GiB looked at")
        #expect(Drains.describe(item) == "web1: moving to n2: pass 1: 64.0 MiB of 1.0 GiB looked at")
    }
}
