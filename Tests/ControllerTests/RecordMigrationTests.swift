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
        #expect(node.info.overcommit == NodeReport.Overcommit(cpu: 4, memory: 1.5, disk: 1))
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
}
