import BerthCore
import Foundation
import GRDB

// The controller database's schema, one migration per change; a database of any earlier version
// opens by running those it lacks (tests: SpecMigrationTests, RecordMigrationTests).
extension SQLiteStore {
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE node (
                      name TEXT PRIMARY KEY NOT NULL, address TEXT NOT NULL, labels TEXT NOT NULL,
                      info BLOB NOT NULL, cordoned INTEGER NOT NULL DEFAULT 0, certificate_serial TEXT NOT NULL);
                    CREATE TABLE vps (
                      name TEXT PRIMARY KEY NOT NULL, node TEXT NOT NULL, tenant TEXT NOT NULL,
                      spec BLOB NOT NULL, status BLOB NOT NULL, phase TEXT NOT NULL);
                    CREATE INDEX vps_node ON vps(node);
                    CREATE TABLE ip_pool (name TEXT PRIMARY KEY NOT NULL, cidr TEXT NOT NULL, gateway TEXT NOT NULL);
                    CREATE TABLE ip_address (
                      address TEXT PRIMARY KEY NOT NULL,
                      pool TEXT REFERENCES ip_pool(name),  -- NULL: an address given explicitly
                      vps TEXT NOT NULL REFERENCES vps(name) ON DELETE CASCADE);
                    CREATE TABLE join_token (id TEXT PRIMARY KEY NOT NULL, secret_hash TEXT NOT NULL, expires REAL NOT NULL, used REAL);
                    CREATE TABLE revoked (serial TEXT PRIMARY KEY NOT NULL, at REAL NOT NULL);
                    CREATE TABLE event (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, message TEXT NOT NULL);
                    """)
        }
        migrator.registerMigration("v2 operations") { db in
            try db.execute(
                sql: """
                    CREATE TABLE operation (
                      id TEXT PRIMARY KEY NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, owner TEXT NOT NULL,
                      state TEXT NOT NULL, progress TEXT NOT NULL, error BLOB, result BLOB,
                      started REAL NOT NULL, finished REAL);
                    CREATE INDEX operation_started ON operation(started);
                    """)
        }
        // Specs were the create request's protobuf; from here on they are the controller's own
        // record (VPSSpec as JSON), so the wire can change without touching stored rows.
        migrator.registerMigration("v3 VPS specs as records") { db in
            for row in try Row.fetchAll(db, sql: "SELECT name, spec FROM vps") {
                let name: String = row["name"]
                var spec = VPSSpec.storedCreateRequest(row["spec"])
                spec.name = name
                try db.execute(sql: "UPDATE vps SET spec = ? WHERE name = ?", arguments: [try specData(spec), name])
            }
        }
        // Node reports were the heartbeat's protobuf; from here on they are NodeReport as JSON.
        migrator.registerMigration("v4 node reports as records") { db in
            for row in try Row.fetchAll(db, sql: "SELECT name, info FROM node") {
                let report = NodeReport.storedNodeInfo(row["info"])
                try db.execute(sql: "UPDATE node SET info = ? WHERE name = ?", arguments: [try recordData(report), row["name"] as String])
            }
        }
        // VPS statuses were the node's protobuf; from here on they are VPSStatusRecord as JSON.
        migrator.registerMigration("v5 VPS statuses as records") { db in
            for row in try Row.fetchAll(db, sql: "SELECT name, status FROM vps") {
                let status = VPSStatusRecord.storedVpsStatus(row["status"])
                try db.execute(sql: "UPDATE vps SET status = ? WHERE name = ?", arguments: [try recordData(status), row["name"] as String])
            }
        }
        // Drains, and the node a drain took each VPS from (what `node restore` brings back).
        migrator.registerMigration("v6 drains and origins") { db in
            try db.execute(
                sql: """
                    ALTER TABLE vps ADD COLUMN origin TEXT NOT NULL DEFAULT '';
                    ALTER TABLE vps ADD COLUMN migration BLOB;
                    CREATE TABLE drain (
                      node TEXT PRIMARY KEY NOT NULL, state TEXT NOT NULL, deadline INTEGER NOT NULL, force INTEGER NOT NULL,
                      mode TEXT NOT NULL, max_parallel INTEGER NOT NULL, started_by TEXT NOT NULL, items BLOB NOT NULL);
                    """)
        }
        // Node leases (Docs/ha.md): the epoch rises when HA VPSs are failed over away from a node.
        migrator.registerMigration("v7 node lease epochs") { db in
            try db.execute(sql: "ALTER TABLE node ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 1")
        }
        migrator.registerMigration("v8 tenant quotas") { db in
            try db.execute(sql: "CREATE TABLE tenant (name TEXT PRIMARY KEY NOT NULL, quota BLOB NOT NULL)")
        }
        migrator.registerMigration("v9 event actors") { db in
            try db.execute(sql: "ALTER TABLE event ADD COLUMN actor TEXT NOT NULL DEFAULT ''")
        }
        return migrator
    }
}
