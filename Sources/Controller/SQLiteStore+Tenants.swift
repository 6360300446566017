import Foundation
import GRDB
import Placement
import Wire

// Tenants' quotas as the `tenant` table keeps them (TenantQuota as JSON; no row: no limits).
extension SQLiteStore {
    public func tenantQuotas() throws -> [String: TenantQuota] {
        try pool.read { db in
            var quotas: [String: TenantQuota] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT name, quota FROM tenant") {
                let name: String = row["name"]
                // A quota that cannot be read must not become no quota.
                guard let quota = try? JSONDecoder().decode(TenantQuota.self, from: row["quota"] as Data) else {
                    throw WireError(.corruptState, "the stored quota of tenant \(name) cannot be read: set it again (berth tenant set \(name) …)")
                }
                quotas[name] = quota
            }
            return quotas
        }
    }

    public func saveTenantQuota(_ tenant: String, _ quota: TenantQuota) throws {
        let data = try Self.recordData(quota)
        try pool.write { db in
            if quota.isUnlimited {
                try db.execute(sql: "DELETE FROM tenant WHERE name = ?", arguments: [tenant])
            } else {
                try db.execute(
                    sql: "INSERT INTO tenant (name, quota) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET quota = excluded.quota",
                    arguments: [tenant, data])
            }
        }
    }
}
