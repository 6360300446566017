import BerthCore
import Foundation
import GRDB
import Placement
import Wire

/// The controller's durable state. SQLite through GRDB is the default; the protocol is what a
/// replicated engine (PostgreSQL) would implement for a highly available controller.
public protocol ClusterStore: Sendable {
    func nodes() throws -> [NodeRecord]
    func node(_ name: String) throws -> NodeRecord?
    func saveNode(_ node: NodeRecord) throws
    func setCordoned(_ name: String, _ cordoned: Bool) throws -> Bool

    func vpses() throws -> [VPSRecord]
    func vps(_ name: String) throws -> VPSRecord?
    /// Inserts a VPS row and allocates its `auto` addresses in one transaction; fails with
    /// already-exists when the name is taken anywhere in the cluster.
    func reserveVPS(_ record: VPSRecord, autoAddresses: [(pool: String, count: Int)]) throws -> [String]
    func updateVPS(_ record: VPSRecord) throws
    /// Assigns explicit addresses to a VPS and returns those that were not its own already;
    /// fails with already-exists, assigning none, when any of them belongs to another VPS.
    func reserveAddresses(_ addresses: [String], for vps: String) throws -> [String]
    func releaseAddresses(_ addresses: [String], of vps: String) throws
    /// Deletes the row and releases its addresses; false when there was no such row.
    @discardableResult func removeVPS(_ name: String) throws -> Bool
    /// Writes the status the node answered, nothing else of the record.
    func updateStatus(_ name: String, _ status: VPSStatusRecord) throws
    /// A heartbeat's report: address, labels and capacity, for the node holding `serial` only
    /// (cordon state and the certificate are not the heartbeat's to change).
    func updateNodeReport(name: String, serial: String, address: String, labels: [String: String], info: NodeReport) throws
    /// Writes the statuses an agent reported for the VPSs placed on it; returns how many changed.
    func recordStatuses(node: String, _ statuses: [VPSStatusRecord]) throws -> Int
    func importVPSes(_ records: [VPSRecord]) throws

    func pools() throws -> [IPPoolRecord]
    func addPool(_ pool: IPPoolRecord) throws
    func removePool(_ name: String) throws
    func poolUsage() throws -> [String: Int]

    func addJoinToken(id: String, secretHash: String, expires: Date) throws
    /// Marks the token used when it exists, is unused, unexpired and its secret matches.
    func consumeJoinToken(id: String, secretHash: String, now: Date) throws -> Bool

    func revoked() throws -> Set<String>
    func revoke(_ serial: String) throws

    /// Appends to the event log; `actor` is "ROLE/NAME" of the caller ("" for the controller).
    func addEvent(kind: String, subject: String, message: String, actor: String) throws
    /// The smallest sequence number kept (0 when the log is empty).
    func oldestEventID() throws -> Int64
    /// Events after `id` and the oldest kept, read together (a prune between the two reads
    /// would otherwise make kept events look pruned).
    func eventPage(after id: Int64, limit: Int) throws -> (events: [EventRecord], oldest: Int64)
    /// Deletes all but the newest `count` events; returns how many went.
    @discardableResult func pruneEvents(keeping count: Int) throws -> Int

    /// Records (or, with nil, clears) the migration under way of a VPS, nothing else of its row.
    func setMigration(_ name: String, _ migration: PendingMigration?) throws
    /// Every node's lease epoch (Docs/ha.md).
    func leaseEpochs() throws -> [String: UInt64]
    /// A failover in one transaction: the VPS's record as promoted (`record.node` its new
    /// node), only if it is still on `from`; the lease epoch of `from` raised; the event.
    /// Returns `from`'s new epoch.
    func failOver(_ record: VPSRecord, from: String, event: String) throws -> UInt64

    /// Tenants' quotas by tenant (`berth tenant set`); a tenant without one has no limits.
    func tenantQuotas() throws -> [String: TenantQuota]
    /// Sets a tenant's quota; an unlimited one removes it.
    func saveTenantQuota(_ tenant: String, _ quota: TenantQuota) throws

    func saveDrain(_ drain: DrainRecord) throws
    func drain(_ node: String) throws -> DrainRecord?
    func drains() throws -> [DrainRecord]
    func removeDrain(_ node: String) throws

    /// Registers a new operation; false when one with that id exists already.
    func beginOperation(id: String, kind: String, subject: String, owner: String) throws -> Bool
    func operationProgress(id: String, _ step: String) throws
    /// Succeeded when `error` is nil, else failed; both are the journal's opaque bytes.
    func finishOperation(id: String, result: Data?, error: Data?) throws
    func operation(_ id: String) throws -> OperationRecord?
    func recentOperations(limit: Int) throws -> [OperationRecord]
    /// Operations a controller crash left running can never finish: mark them failed with `error`.
    func abandonRunningOperations(error: Data) throws
    func events(after id: Int64, limit: Int) throws -> [EventRecord]
}

public final class SQLiteStore: ClusterStore {
    let pool: DatabasePool

    /// Opens (or creates) `DIR/controller.sqlite` in WAL mode and runs pending migrations.
    public init(directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        pool = try DatabasePool(path: directory + "/controller.sqlite", configuration: configuration)
        try Self.migrator.migrate(pool)
    }

    /// A record as its column holds it: JSON with sorted keys, so equal records are equal bytes.
    static func recordData<Record: Encodable>(_ record: Record) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return try encoder.encode(record)
    }

    // MARK: nodes

    static func labelsText(_ labels: [String: String]) -> String {
        (try? String(decoding: JSONEncoder().encode(labels), as: UTF8.self)) ?? "{}"
    }

    static func labels(_ text: String) -> [String: String] {
        (try? JSONDecoder().decode([String: String].self, from: Data(text.utf8))) ?? [:]
    }

    static func node(_ row: Row) -> NodeRecord {
        NodeRecord(
            name: row["name"], address: row["address"], labels: labels(row["labels"]),
            info: (try? JSONDecoder().decode(NodeReport.self, from: row["info"] as Data)) ?? NodeReport(),
            cordoned: row["cordoned"], certificateSerial: row["certificate_serial"])
    }

    public func nodes() throws -> [NodeRecord] {
        try pool.read { db in try Row.fetchAll(db, sql: "SELECT * FROM node ORDER BY name").map(Self.node) }
    }

    public func node(_ name: String) throws -> NodeRecord? {
        try pool.read { db in try Row.fetchOne(db, sql: "SELECT * FROM node WHERE name = ?", arguments: [name]).map(Self.node) }
    }

    public func saveNode(_ node: NodeRecord) throws {
        let info = try Self.recordData(node.info)
        try pool.write { db in
            try db.execute(
                sql: """
                    INSERT INTO node (name, address, labels, info, cordoned, certificate_serial) VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT(name) DO UPDATE SET address = excluded.address, labels = excluded.labels, info = excluded.info,
                      cordoned = excluded.cordoned, certificate_serial = excluded.certificate_serial
                    """, arguments: [node.name, node.address, Self.labelsText(node.labels), info, node.cordoned, node.certificateSerial])
        }
    }

    public func setCordoned(_ name: String, _ cordoned: Bool) throws -> Bool {
        try pool.write { db in
            try db.execute(sql: "UPDATE node SET cordoned = ? WHERE name = ?", arguments: [cordoned, name])
            return db.changesCount > 0
        }
    }

    // MARK: VPSs

    static func specData(_ spec: VPSSpec) throws -> Data { try recordData(spec) }

    /// A VPS row. One whose spec cannot be read (a damaged or hand-edited row) still loads,
    /// rebuilt from its last status and marked `damage`, so that the rest of the cluster works
    /// and its node is still charged for it; the controller names such rows when it starts.
    static func vps(_ row: Row) -> VPSRecord {
        let name: String = row["name"]
        let status = (try? JSONDecoder().decode(VPSStatusRecord.self, from: row["status"] as Data)) ?? VPSStatusRecord()
        var damage: [String] = []
        var spec: VPSSpec
        do { spec = try JSONDecoder().decode(VPSSpec.self, from: row["spec"] as Data) } catch {
            damage.append("its spec cannot be read (\(error)); rebuilt from its last status")
            spec = VPSSpec(name: name, template: status.template)
            spec.ips = status.ips
            spec.limits = status.limits ?? spec.limits
            spec.hostname = status.hostname
            spec.labels = status.labels
        }
        let phase = VPSRecord.Phase(rawValue: row["phase"]) ?? .creating
        if VPSRecord.Phase(rawValue: row["phase"]) == nil {
            damage.append("unknown phase '\(row["phase"] as String)', taken as creating")
        }
        var record = VPSRecord(name: name, node: row["node"], tenant: row["tenant"], spec: spec, status: status, phase: phase)
        record.origin = row["origin"] ?? ""
        if let data = row["migration"] as Data? { record.migration = try? JSONDecoder().decode(PendingMigration.self, from: data) }
        record.damage = damage.isEmpty ? nil : damage.joined(separator: "; ")
        return record
    }

    public func vpses() throws -> [VPSRecord] {
        try pool.read { db in try Row.fetchAll(db, sql: "SELECT * FROM vps ORDER BY name").map(Self.vps) }
    }

    public func vps(_ name: String) throws -> VPSRecord? {
        try pool.read { db in try Row.fetchOne(db, sql: "SELECT * FROM vps WHERE name = ?", arguments: [name]).map(Self.vps) }
    }

    public func reserveVPS(_ record: VPSRecord, autoAddresses: [(pool: String, count: Int)]) throws -> [String] {
        let status = try Self.recordData(record.status)
        return try pool.write { db -> [String] in
            if try Row.fetchOne(db, sql: "SELECT 1 FROM vps WHERE name = ?", arguments: [record.name]) != nil {
                throw WireError(.alreadyExists, "name: a VPS named \(record.name) already exists in the cluster", field: "name")
            }
            var spec = record.spec
            var allocated: [String] = []
            // Explicit addresses must not collide with pool allocations of other VPSs.
            for address in spec.ips {
                if let owner = try String.fetchOne(
                    db, sql: "SELECT vps FROM ip_address WHERE address = ?", arguments: [IPPoolMath.canonical(address) ?? address])
                {
                    _ = owner  // not named: the owner may be another tenant's VPS
                    throw WireError(.alreadyExists, "ip: \(address) is already assigned in the cluster", field: "ip")
                }
            }
            try db.execute(
                sql: "INSERT INTO vps (name, node, tenant, spec, status, phase) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [record.name, record.node, record.tenant, Data(), status, record.phase.rawValue])
            for address in spec.ips {
                try db.execute(
                    sql: "INSERT INTO ip_address (address, pool, vps) VALUES (?, NULL, ?)",
                    arguments: [IPPoolMath.canonical(address) ?? address, record.name])
            }
            for request in autoAddresses {
                guard let row = try Row.fetchOne(db, sql: "SELECT * FROM ip_pool WHERE name = ?", arguments: [request.pool]) else {
                    throw WireError(.notFound, "ip: no IP pool named \(request.pool) (see `berth ippool list`)", field: "ip")
                }
                // Every assigned address counts, also explicit ones that happen to lie in the pool.
                let taken = Set(try String.fetchAll(db, sql: "SELECT address FROM ip_address"))
                let cidr: String = row["cidr"]
                let gateway: String = row["gateway"]
                let addresses = try IPPoolMath.free(cidr: cidr, excluding: taken.union([gateway]), count: request.count)
                guard addresses.count == request.count else {
                    throw WireError(.noCapacity, "ip: pool \(request.pool) (\(cidr)) has no free address left", field: "ip")
                }
                for address in addresses {
                    try db.execute(sql: "INSERT INTO ip_address (address, pool, vps) VALUES (?, ?, ?)", arguments: [address, request.pool, record.name])
                }
                allocated += addresses
            }
            spec.ips += allocated
            try db.execute(sql: "UPDATE vps SET spec = ? WHERE name = ?", arguments: [try Self.specData(spec), record.name])
            return allocated
        }
    }

    public func updateVPS(_ record: VPSRecord) throws {
        let spec = try Self.specData(record.spec)
        let status = try Self.recordData(record.status)
        let migration = try record.migration.map(Self.recordData)
        try pool.write { db in
            try db.execute(
                sql: "UPDATE vps SET node = ?, tenant = ?, spec = ?, status = ?, phase = ?, origin = ?, migration = ? WHERE name = ?",
                arguments: [record.node, record.tenant, spec, status, record.phase.rawValue, record.origin, migration, record.name])
        }
    }

    public func reserveAddresses(_ addresses: [String], for vps: String) throws -> [String] {
        guard !addresses.isEmpty else { return [] }
        return try pool.write { db -> [String] in
            var inserted: [String] = []
            for address in addresses {
                if let owner = try String.fetchOne(db, sql: "SELECT vps FROM ip_address WHERE address = ?", arguments: [address]) {
                    if owner == vps { continue }
                    throw WireError(.alreadyExists, "ip-add: \(address) is already assigned in the cluster", field: "ip-add")
                }
                try db.execute(sql: "INSERT INTO ip_address (address, pool, vps) VALUES (?, NULL, ?)", arguments: [address, vps])
                inserted.append(address)
            }
            return inserted
        }
    }

    public func releaseAddresses(_ addresses: [String], of vps: String) throws {
        guard !addresses.isEmpty else { return }
        try pool.write { db in
            for address in addresses {
                try db.execute(sql: "DELETE FROM ip_address WHERE address = ? AND vps = ?", arguments: [address, vps])
            }
        }
    }

    @discardableResult
    public func removeVPS(_ name: String) throws -> Bool {
        try pool.write { db in
            try db.execute(sql: "DELETE FROM ip_address WHERE vps = ?", arguments: [name])
            try db.execute(sql: "DELETE FROM vps WHERE name = ?", arguments: [name])
            return db.changesCount > 0
        }
    }

    public func updateStatus(_ name: String, _ status: VPSStatusRecord) throws {
        let bytes = try Self.recordData(status)
        try pool.write { db in try db.execute(sql: "UPDATE vps SET status = ? WHERE name = ?", arguments: [bytes, name]) }
    }

    public func updateNodeReport(name: String, serial: String, address: String, labels: [String: String], info: NodeReport) throws {
        let bytes = try Self.recordData(info)
        try pool.write { db in
            try db.execute(
                sql: "UPDATE node SET address = ?, labels = ?, info = ? WHERE name = ? AND certificate_serial = ?",
                arguments: [address, Self.labelsText(labels), bytes, name, serial])
        }
    }

    public func recordStatuses(node: String, _ statuses: [VPSStatusRecord]) throws -> Int {
        let byName = Dictionary(statuses.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        // Read first: a heartbeat that changes nothing (the usual case) costs no write transaction.
        let changes = try pool.read { db -> [(String, Data)] in
            var changes: [(String, Data)] = []
            for row in try Row.fetchAll(db, sql: "SELECT name, status, phase FROM vps WHERE node = ?", arguments: [node]) {
                let name: String = row["name"]
                guard var status = byName[name] else { continue }
                status.node = node
                let bytes = try Self.recordData(status)
                if bytes != (row["status"] as Data) || (row["phase"] as String) != "ready" { changes.append((name, bytes)) }
            }
            return changes
        }
        guard !changes.isEmpty else { return 0 }
        try pool.write { db in
            for (name, bytes) in changes {
                try db.execute(sql: "UPDATE vps SET status = ?, phase = 'ready' WHERE name = ? AND node = ?", arguments: [bytes, name, node])
            }
        }
        return changes.count
    }

    /// Inserts many VPS records in one transaction (imports, benchmarks); no address allocation.
    public func importVPSes(_ records: [VPSRecord]) throws {
        try pool.write { db in
            for record in records {
                try db.execute(
                    sql: "INSERT INTO vps (name, node, tenant, spec, status, phase) VALUES (?, ?, ?, ?, ?, ?)",
                    arguments: [
                        record.name, record.node, record.tenant, try Self.specData(record.spec),
                        try Self.recordData(record.status), record.phase.rawValue,
                    ])
            }
        }
    }

    // MARK: IP pools

    public func pools() throws -> [IPPoolRecord] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM ip_pool ORDER BY name").map { IPPoolRecord(name: $0["name"], cidr: $0["cidr"], gateway: $0["gateway"]) }
        }
    }

    public func addPool(_ record: IPPoolRecord) throws {
        try pool.write { db in
            for row in try Row.fetchAll(db, sql: "SELECT * FROM ip_pool") {
                if row["name"] as String == record.name {
                    throw WireError(.alreadyExists, "name: an IP pool named \(record.name) already exists", field: "name")
                }
                if IPPoolMath.overlap(row["cidr"], record.cidr) {
                    throw WireError(.conflict, "cidr: \(record.cidr) overlaps pool \(row["name"] as String) (\(row["cidr"] as String))", field: "cidr")
                }
            }
            try db.execute(sql: "INSERT INTO ip_pool (name, cidr, gateway) VALUES (?, ?, ?)", arguments: [record.name, record.cidr, record.gateway])
        }
    }

    public func removePool(_ name: String) throws {
        try pool.write { db in
            let used = try Int.fetchOne(db, sql: "SELECT count(*) FROM ip_address WHERE pool = ?", arguments: [name]) ?? 0
            guard used == 0 else {
                throw WireError(.conflict, "name: pool \(name) still has \(used) address(es) in use", field: "name")
            }
            try db.execute(sql: "DELETE FROM ip_pool WHERE name = ?", arguments: [name])
            guard db.changesCount > 0 else { throw WireError(.notFound, "name: no IP pool named \(name)", field: "name") }
        }
    }

    public func poolUsage() throws -> [String: Int] {
        try pool.read { db in
            var usage: [String: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT pool, count(*) AS n FROM ip_address WHERE pool IS NOT NULL GROUP BY pool") {
                usage[row["pool"]] = row["n"]
            }
            return usage
        }
    }

    // MARK: trust

    public func addJoinToken(id: String, secretHash: String, expires: Date) throws {
        try pool.write { db in
            try db.execute(
                sql: "INSERT INTO join_token (id, secret_hash, expires) VALUES (?, ?, ?)",
                arguments: [id, secretHash, expires.timeIntervalSince1970])
        }
    }

    public func consumeJoinToken(id: String, secretHash: String, now: Date) throws -> Bool {
        try pool.write { db in
            try db.execute(
                sql: "UPDATE join_token SET used = ? WHERE id = ? AND secret_hash = ? AND used IS NULL AND expires > ?",
                arguments: [now.timeIntervalSince1970, id, secretHash, now.timeIntervalSince1970])
            return db.changesCount == 1
        }
    }

    public func revoked() throws -> Set<String> {
        try pool.read { db in Set(try String.fetchAll(db, sql: "SELECT serial FROM revoked")) }
    }

    public func revoke(_ serial: String) throws {
        try pool.write { db in
            try db.execute(sql: "INSERT OR IGNORE INTO revoked (serial, at) VALUES (?, ?)", arguments: [serial, Date().timeIntervalSince1970])
        }
    }

    static func operation(_ row: Row) -> OperationRecord {
        OperationRecord(
            id: row["id"], kind: row["kind"], subject: row["subject"], owner: row["owner"], state: row["state"], progress: row["progress"],
            error: row["error"], result: row["result"], started: row["started"], finished: row["finished"])
    }

    public func beginOperation(id: String, kind: String, subject: String, owner: String) throws -> Bool {
        try pool.write { db in
            try db.execute(
                sql: "INSERT OR IGNORE INTO operation (id, kind, subject, owner, state, progress, started) VALUES (?, ?, ?, ?, 'running', '', ?)",
                arguments: [id, kind, subject, owner, Date().timeIntervalSince1970])
            return db.changesCount == 1
        }
    }

    public func operationProgress(id: String, _ step: String) throws {
        try pool.write { db in try db.execute(sql: "UPDATE operation SET progress = ? WHERE id = ?", arguments: [step, id]) }
    }

    public func finishOperation(id: String, result: Data?, error: Data?) throws {
        try pool.write { db in
            try db.execute(
                sql: "UPDATE operation SET state = ?, result = ?, error = ?, finished = ? WHERE id = ?",
                arguments: [error == nil ? "succeeded" : "failed", result, error, Date().timeIntervalSince1970, id])
        }
    }

    public func operation(_ id: String) throws -> OperationRecord? {
        try pool.read { db in try Row.fetchOne(db, sql: "SELECT * FROM operation WHERE id = ?", arguments: [id]).map(Self.operation) }
    }

    public func recentOperations(limit: Int) throws -> [OperationRecord] {
        try pool.read { db in try Row.fetchAll(db, sql: "SELECT * FROM operation ORDER BY started DESC LIMIT ?", arguments: [limit]).map(Self.operation) }
    }

    public func abandonRunningOperations(error bytes: Data) throws {
        try pool.write { db in
            try db.execute(
                sql: "UPDATE operation SET state = 'failed', error = ?, finished = ? WHERE state = 'running'",
                arguments: [bytes, Date().timeIntervalSince1970])
        }
    }

    public func events(after id: Int64, limit: Int) throws -> [EventRecord] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM event WHERE id > ? ORDER BY id LIMIT ?", arguments: [id, limit]).map { row in
                EventRecord(id: row["id"], at: row["at"], kind: row["kind"], subject: row["subject"], message: row["message"], actor: row["actor"])
            }
        }
    }

    public func addEvent(kind: String, subject: String, message: String, actor: String) throws {
        try pool.write { db in
            try db.execute(
                sql: "INSERT INTO event (at, kind, subject, message, actor) VALUES (?, ?, ?, ?, ?)",
                arguments: [Date().timeIntervalSince1970, kind, subject, message, actor])
        }
    }

    public func oldestEventID() throws -> Int64 {
        try pool.read { db in try Int64.fetchOne(db, sql: "SELECT MIN(id) FROM event") ?? 0 }
    }

    public func eventPage(after id: Int64, limit: Int) throws -> (events: [EventRecord], oldest: Int64) {
        try pool.read { db in
            let events = try Row.fetchAll(db, sql: "SELECT * FROM event WHERE id > ? ORDER BY id LIMIT ?", arguments: [id, limit]).map { row in
                EventRecord(id: row["id"], at: row["at"], kind: row["kind"], subject: row["subject"], message: row["message"], actor: row["actor"])
            }
            return (events, try Int64.fetchOne(db, sql: "SELECT MIN(id) FROM event") ?? 0)
        }
    }

    @discardableResult
    public func pruneEvents(keeping count: Int) throws -> Int {
        try pool.write { db in
            try db.execute(sql: "DELETE FROM event WHERE id <= (SELECT MAX(id) FROM event) - ?", arguments: [count])
            return db.changesCount
        }
    }

    public func setMigration(_ name: String, _ migration: PendingMigration?) throws {
        let data = try migration.map(Self.recordData)
        try pool.write { db in try db.execute(sql: "UPDATE vps SET migration = ? WHERE name = ?", arguments: [data, name]) }
    }
}

extension ClusterStore {
    /// An event of the controller's own doing (a node down, a failover): no actor.
    public func addEvent(kind: String, subject: String, message: String) throws {
        try addEvent(kind: kind, subject: subject, message: message, actor: "")
    }
}
