import BerthCore
import Foundation
import GRDB
import Testing

@testable import Controller

/// A VPS row the controller cannot read as written does not stop it: the row loads rebuilt from
/// its last status (so its node stays charged), marked with why; a spec written before a field
/// existed reads with that field's default.
@Suite struct DamagedRecordTests {
    static func store(_ write: (Database) throws -> Void) throws -> (SQLiteStore, String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-damaged-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        let store = try SQLiteStore(directory: dir)
        try store.pool.write(write)
        return (store, dir)
    }

    static func insert(_ db: Database, name: String, spec: Data, status: VPSStatusRecord, phase: String = "ready") throws {
        try db.execute(
            sql: "INSERT INTO vps (name, node, tenant, spec, status, phase) VALUES (?, ?, ?, ?, ?, ?)",
            arguments: [name, "n1", "", spec, try JSONEncoder().encode(status), phase])
    }

    @Test func anUnreadableSpecLoadsFromItsStatusAndSaysSo() throws {
        var status = VPSStatusRecord(name: "web1", state: "running")
        status.template = "busybox"
        status.ips = ["198.18.101.7"]
        var limits = Limits(diskBytes: 4 << 30)
        limits.cpuLimitPercent = 150
        limits.memoryBytes = 512 << 20
        status.limits = limits
        let good = try SQLiteStore.specData(VPSSpec(name: "web2", template: "busybox"))
        let (store, dir) = try Self.store { db in
            try Self.insert(db, name: "web1", spec: Data("{not json".utf8), status: status)
            try Self.insert(db, name: "web2", spec: good, status: VPSStatusRecord(name: "web2", state: "stopped"), phase: "gone")
        }
        defer { try? FileManager.default.removeItem(atPath: dir) }

        let all = try store.vpses()
        #expect(all.map(\.name) == ["web1", "web2"])
        let web1 = try #require(all.first)
        #expect(web1.damage?.contains("spec cannot be read") == true)
        #expect(web1.spec.template == "busybox" && web1.spec.ips == ["198.18.101.7"])
        #expect(web1.spec.limits == limits)
        #expect(web1.placed.cost.cpuMillis == 1500 && web1.placed.cost.memoryBytes == 512 << 20)  // its node is still charged what it holds
        #expect(all[1].damage?.contains("unknown phase 'gone'") == true)
        // Negative control: a readable row is not marked.
        try store.updateVPS(
            VPSRecord(name: "web2", node: "n1", tenant: "", spec: VPSSpec(name: "web2", template: "busybox"), status: VPSStatusRecord(), phase: .ready))
        #expect(try store.vps("web2")?.damage == nil)
    }

    @Test func aSpecWrittenBeforeAFieldExistedReadsWithItsDefault() throws {
        let old = Data(#"{"name":"web1","template":"busybox","ips":["198.18.101.7"]}"#.utf8)
        let spec = try JSONDecoder().decode(VPSSpec.self, from: old)
        var expected = VPSSpec(name: "web1", template: "busybox")
        expected.ips = ["198.18.101.7"]
        #expect(spec == expected)
        // Round trip of a full spec is unchanged by the hand-written decoder.
        var full = expected
        full.labels = ["tier": "web"]
        full.antiAffinity = "db"
        full.limits.pids = 300
        #expect(try JSONDecoder().decode(VPSSpec.self, from: JSONEncoder().encode(full)) == full)
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(VPSSpec.self, from: Data(#"{"name":"web1"}"#.utf8)) }
    }
}
