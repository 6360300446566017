import BerthCore
import Foundation
import GRDB
import Testing
import Wire

@testable import Controller
@testable import Placement

/// Databases written before specs were the controller's own records (the create request's
/// protobuf in `vps.spec`) open with every spec intact.
@Suite struct SpecMigrationTests {
    @Test func aSpecStoredAsTheCreateRequestIsReadBackAsARecord() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-migration-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }

        var request = Berth_V1_CreateRequest()
        request.name = "web1"
        request.template = "busybox"
        request.hostname = "web1.example"
        request.ips = ["198.18.101.7"]
        request.nameservers = ["198.18.0.53"]
        request.searchdomains = ["example"]
        request.limits.memoryBytes = 512 << 20
        request.limits.swapBytes = 0
        request.limits.cpuLimitPct = 150
        request.net = "bridged:br0"
        request.onboot = true
        request.labels = ["tier": "web"]
        request.node = "n2"
        request.constraints = ["zone": "a"]
        request.antiAffinity = "web"
        request.capabilities = ["net_admin": "on"]
        request.storage = "layered"
        request.layout = "pool"
        var status = Berth_V1_VpsStatus()
        status.name = "web1"
        status.state = "running"
        do {
            // The database as the previous release left it.
            let old = try DatabasePool(path: dir + "/controller.sqlite")
            try SQLiteStore.migrator.migrate(old, upTo: "v2 operations")
            try old.write { db in
                try db.execute(
                    sql: "INSERT INTO vps (name, node, tenant, spec, status, phase) VALUES (?, ?, ?, ?, ?, ?)",
                    arguments: [
                        "web1", "n2", "acme", Data(try request.serializedBytes() as [UInt8]),
                        Data(try status.serializedBytes() as [UInt8]), "ready",
                    ])
            }
            try old.close()
        }

        let store = try SQLiteStore(directory: dir)
        let record = try #require(try store.vps("web1"))
        #expect(record.spec == VPSSpec(request))
        #expect(record.spec.limits.memoryBytes == 512 << 20)
        #expect(record.spec.limits.swapBytes == 0)  // "no swap" keeps its presence
        #expect(record.spec.limits.diskBytes == Limits.defaultDiskBytes)
        #expect(record.spec.pinnedNode == "n2")
        #expect(record.spec.antiAffinity == "web")
        #expect(record.spec.cost == PlacementRequest(cpuMillis: 1500, memoryBytes: 512 << 20, diskBytes: Limits.defaultDiskBytes))
        #expect(record.tenant == "acme")
        #expect(record.phase == .ready)
        #expect(record.status.state == "running")
        // Written back as a record, it reads back the same.
        var changed = record
        changed.spec.ips.append("198.18.101.8")
        try store.updateVPS(changed)
        #expect(try SQLiteStore(directory: dir).vps("web1") == changed)
    }
}
