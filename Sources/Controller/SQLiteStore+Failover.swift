import Foundation
import GRDB

// Node leases and failovers (Docs/ha.md).
extension SQLiteStore {
    public func leaseEpochs() throws -> [String: UInt64] {
        try pool.read { db in
            Dictionary(
                uniqueKeysWithValues: try Row.fetchAll(db, sql: "SELECT name, lease_epoch FROM node").map {
                    ($0["name"] as String, UInt64(max(1, $0["lease_epoch"] as Int64)))
                })
        }
    }

    public func failOver(_ record: VPSRecord, from: String, event: String) throws -> UInt64 {
        let spec = try Self.specData(record.spec)
        let status = try Self.recordData(record.status)
        return try pool.write { db -> UInt64 in
            // Only from the node it was lost on: a move committed meanwhile wins.
            try db.execute(
                sql: "UPDATE vps SET node = ?, spec = ?, status = ? WHERE name = ? AND node = ?",
                arguments: [record.node, spec, status, record.name, from])
            guard db.changesCount == 1 else { throw DatabaseError(message: "VPS \(record.name) left \(from) during its failover") }
            try db.execute(sql: "UPDATE node SET lease_epoch = lease_epoch + 1 WHERE name = ?", arguments: [from])
            try db.execute(
                sql: "INSERT INTO event (at, kind, subject, message) VALUES (?, ?, ?, ?)",
                arguments: [Date().timeIntervalSince1970, "vps.failed-over", record.name, event])
            let epoch = try Int64.fetchOne(db, sql: "SELECT lease_epoch FROM node WHERE name = ?", arguments: [from]) ?? 1
            return UInt64(max(1, epoch))
        }
    }
}
