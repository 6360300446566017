import Foundation
import GRDB

// Drains as the `drain` table keeps them (DrainRecord; its items as JSON).
extension SQLiteStore {
    public func saveDrain(_ drain: DrainRecord) throws {
        let items = try Self.recordData(drain.items)
        try pool.write { db in
            try db.execute(
                sql: """
                    INSERT INTO drain (node, state, deadline, force, mode, max_parallel, started_by, items) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT(node) DO UPDATE SET state = excluded.state, deadline = excluded.deadline, force = excluded.force,
                      mode = excluded.mode, max_parallel = excluded.max_parallel, started_by = excluded.started_by, items = excluded.items
                    """,
                arguments: [drain.node, drain.state.rawValue, drain.deadlineUnix, drain.force, drain.mode, drain.maxParallel, drain.startedBy, items])
        }
    }

    static func drain(_ row: Row) -> DrainRecord {
        DrainRecord(
            node: row["node"], state: DrainRecord.State(rawValue: row["state"]) ?? .incomplete, deadlineUnix: row["deadline"],
            force: row["force"], mode: row["mode"], maxParallel: row["max_parallel"], startedBy: row["started_by"],
            items: (try? JSONDecoder().decode([DrainRecord.Item].self, from: row["items"] as Data)) ?? [])
    }

    public func drain(_ node: String) throws -> DrainRecord? {
        try pool.read { db in try Row.fetchOne(db, sql: "SELECT * FROM drain WHERE node = ?", arguments: [node]).map(Self.drain) }
    }

    public func drains() throws -> [DrainRecord] {
        try pool.read { db in try Row.fetchAll(db, sql: "SELECT * FROM drain ORDER BY node").map(Self.drain) }
    }

    public func removeDrain(_ node: String) throws {
        try pool.write { db in try db.execute(sql: "DELETE FROM drain WHERE node = ?", arguments: [node]) }
    }
}
