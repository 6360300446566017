import BerthCore
import Foundation
import GRDB
import Testing
import Wire

@testable import Controller

/// Databases written while the controller stored wire messages (protobuf blobs in `node.info`
/// and `vps.status`) open with every row read back as the controller's own records.
@Suite struct RecordMigrationTests {
    /// A fresh directory with a database migrated up to `version`, as that release left it.
    static func oldDatabase(upTo version: String, _ write: (Database) throws -> Void) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("berth-migration-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let old = try DatabasePool(path: dir + "/controller.sqlite")
        try SQLiteStore.migrator.migrate(old, upTo: version)
        try old.write(write)
        try old.close()
        return dir
    }

    @Test func aNodeInfoStoredAsProtobufIsReadBackAsAReport() throws {
        var info = Berth_V1_NodeInfo()
        info.name = "n1"
        info.kernel = "6.1.0-18-amd64"
        info.cgroupMode = "v2"
        info.cpus = 16
        info.memoryBytes = 64 << 30
        info.diskBytes = 1 << 40
        info.diskFreeBytes = 1 << 39
        info.poolBytes = 1 << 38
        info.poolFreeBytes = 1 << 37
        info.cpuOvercommit = 4
        info.memoryOvercommit = 1.5
        info.diskOvercommit = 1
        info.committedCpuPct = 350
        info.committedMemoryBytes = 3 << 30
        info.committedDiskBytes = 20 << 30
        info.committedPoolBytes = 10 << 30
        info.vpsTotal = 7
        info.vpsRunning = 5
        let dir = try Self.oldDatabase(upTo: "v3 VPS specs as records") { db in
            try db.execute(
                sql: "INSERT INTO node (name, address, labels, info, cordoned, certificate_serial) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: ["n1", "198.18.0.1:7000", #"{"zone":"a"}"#, Data(try info.serializedBytes() as [UInt8]), true, "01"])
            try db.execute(
                sql: "INSERT INTO node (name, address, labels, info, cordoned, certificate_serial) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: ["n2", "198.18.0.2:7000", "{}", Data(), false, "02"])  // enrolled, never reported
        }
        defer { try? FileManager.default.removeItem(atPath: dir) }

        let store = try SQLiteStore(directory: dir)
        let node = try #require(try store.node("n1"))
        #expect(node.info == NodeReport(info))
        #expect(Berth_V1_NodeInfo(node.info) == info)  // every field survives, as `node show` prints it
        #expect(node.info.committed == Commitment(cpuPercent: 350, memoryBytes: 3 << 30, diskBytes: 20 << 30))
        #expect(node.info.overcommit == Overcommit(cpu: 4, memory: 1.5, disk: 1))
        #expect(node.labels == ["zone": "a"])
        #expect(node.cordoned)
        #expect(node.certificateSerial == "01")
        #expect(try store.node("n2")?.info == NodeReport())
        // Written back as a record, it reads back the same.
        var changed = node
        changed.info.vpsRunning = 6
        try store.saveNode(changed)
        #expect(try SQLiteStore(directory: dir).node("n1") == changed)
    }

    @Test func aVPSStatusStoredAsProtobufIsReadBackAsARecord() throws {
        var running = Berth_V1_VpsStatus()
        running.name = "web1"
        running.state = "running"
        running.hostname = "web1.example"
        running.ips = ["198.18.101.7"]
        running.template = "busybox"
        running.node = "n1"
        running.pid = 4242
        running.labels = ["tier": "web"]
        running.onboot = true
        running.limits.memoryBytes = 512 << 20
        running.limits.swapBytes = 0
        running.limits.cpuLimitPct = 150
        running.limits.diskBytes = 4 << 30
        running.lastExit = "poweroff"
        running.startedAtUnix = 1_700_000_000
        running.net = "bridged:br0"
        running.hostInterface = "bv-web1"
        running.mac = "02:00:00:00:00:01"
        running.nameservers = ["198.18.0.53"]
        running.searchdomains = ["example"]
        running.idmap = "100000:65536"
        running.capabilities = ["net_admin": "on"]
        running.storage = "layered"
        running.layout = "pool"
        var creating = Berth_V1_VpsStatus()  // placed, the node has not answered: no limits
        creating.name = "web2"
        creating.state = "creating"
        creating.node = "n1"
        creating.template = "busybox"
        let dir = try Self.oldDatabase(upTo: "v4 node reports as records") { db in
            for (status, phase) in [(running, "ready"), (creating, "creating")] {
                try db.execute(
                    sql: "INSERT INTO vps (name, node, tenant, spec, status, phase) VALUES (?, ?, ?, ?, ?, ?)",
                    arguments: [
                        status.name, "n1", "", try SQLiteStore.specData(VPSSpec(name: status.name, template: "busybox")),
                        Data(try status.serializedBytes() as [UInt8]), phase,
                    ])
            }
        }
        defer { try? FileManager.default.removeItem(atPath: dir) }

        let store = try SQLiteStore(directory: dir)
        let web1 = try #require(try store.vps("web1"))
        #expect(web1.status == VPSStatusRecord(running))
        #expect(Berth_V1_VpsStatus(web1.status) == running)  // every field survives, as `status` answers it
        #expect(web1.status.limits?.swapBytes == 0)  // "no swap" keeps its presence
        #expect(web1.status.limits?.memoryBytes == 512 << 20)
        let web2 = try #require(try store.vps("web2"))
        #expect(web2.status.state == "creating")
        #expect(web2.status.limits == nil)
        #expect(!Berth_V1_VpsStatus(web2.status).hasLimits)  // not the default limits
        // Written back as a record, it reads back the same; an unchanged report writes nothing.
        var changed = web1
        changed.status.state = "stopped"
        try store.updateVPS(changed)
        #expect(try SQLiteStore(directory: dir).vps("web1") == changed)
        #expect(try store.recordStatuses(node: "n1", [changed.status]) == 0)
        #expect(try store.recordStatuses(node: "n1", [web1.status]) == 1)
    }
}
