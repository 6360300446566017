import ArgumentParser
import BerthCore
import Foundation
import Wire

struct TenantCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tenant", abstract: "Cluster mode: tenants' quotas, enforced with placement (Docs/cluster.md).",
        subcommands: [QuotaSet.self, Show.self, TenantList.self])

    struct QuotaSet: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set", abstract: "Set limits of tenant NAME's quota (admin): each limit given is set, `none` removes it, the others stay.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant (the NAME of its certificates' role tenant:NAME).") var name: String
        @Option(name: .customLong("max-vps"), help: "How many VPSs, or none.") var maxVPS: String?
        @Option(name: .customLong("max-memory"), help: "Memory its VPSs commit in all (512M, 8G), or none.") var maxMemory: String?
        @Option(name: .customLong("max-cpus"), help: "CPUs its VPSs commit in all (4, 2.5), or none.") var maxCPUs: String?
        @Option(name: .customLong("max-disk"), help: "Disk its VPSs commit in all, or none.") var maxDisk: String?
        @Option(name: .customLong("max-ips"), help: "Addresses its VPSs hold in all, or none.") var maxIPs: String?

        func run() async throws {
            requireCluster(connection, "tenant set")
            var quota = Berth_V1_TenantQuota()
            var clear: [String] = []
            /// A limit's value, or nil when not given or `none` (then cleared).
            func given(_ value: String?, _ field: String) -> String? {
                if value == "none" { clear.append(field) }
                return value == "none" ? nil : value
            }
            do {
                if let value = given(maxVPS, "max-vps") { quota.maxVps = try Self.count(value, field: "max-vps") }
                if let value = given(maxMemory, "max-memory") { quota.maxMemoryBytes = try ByteSize.parse(value, field: "max-memory", allowZero: true) }
                if let value = given(maxCPUs, "max-cpus") { quota.maxCpuMillis = try Self.cpuMillis(value) }
                if let value = given(maxDisk, "max-disk") { quota.maxDiskBytes = try ByteSize.parse(value, field: "max-disk", allowZero: true) }
                if let value = given(maxIPs, "max-ips") { quota.maxIps = try Self.count(value, field: "max-ips") }
            } catch {
                fail(error)
            }
            if [maxVPS, maxMemory, maxCPUs, maxDisk, maxIPs].allSatisfy({ $0 == nil }) {
                fail(WireError(.invalidArgument, "tenant set: give at least one of --max-vps, --max-memory, --max-cpus, --max-disk, --max-ips"))
            }
            let info = try await connection.call(
                request {
                    $0.tenantSet.name = name
                    $0.tenantSet.quota = quota
                    $0.tenantSet.clear = clear
                }
            ).tenant
            printTenant(info)
        }

        static func count(_ text: String, field: String) throws(BerthError) -> UInt32 {
            guard let value = UInt32(text), value <= 1_000_000 else {
                throw BerthError(.invalidArgument, "\(field): '\(text)' is not a count from 0 to 1000000 (or none)", field: field)
            }
            return value
        }

        static func cpuMillis(_ text: String) throws(BerthError) -> UInt64 {
            guard let cpus = Double(text), cpus.isFinite, cpus >= 0, cpus <= 1_000_000 else {
                throw BerthError(
                    .invalidArgument, "max-cpus: '\(text)' is not a number of CPUs from 0 to 1000000 (or none)",
                    field: "max-cpus")
            }
            return UInt64((cpus * 1000).rounded())
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "A tenant's quota and what its VPSs commit against it.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant.") var name: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            requireCluster(connection, "tenant show")
            let info = try await connection.call(request { $0.tenantShow.name = name }).tenant
            if json { printJSON(tenantJSON(info)) } else { printTenant(info) }
        }
    }

    struct TenantList: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "Tenants with a quota or a VPS: usage of limit.")
        @OptionGroup var connection: ConnectionOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            requireCluster(connection, "tenant list")
            let tenants = try await connection.call(request { $0.tenantList = Berth_V1_Empty() }).tenants.tenants
            if json {
                printJSON(.array(tenants.map(tenantJSON)))
                return
            }
            printTable(
                [["TENANT", "VPS", "MEMORY", "CPUS", "DISK", "IPS"]]
                    + tenants.map { info in [info.name] + tenantLines(info).map { "\($0.used)/\($0.limit)" } })
        }
    }
}

/// Each resource of a tenant: its name, what is used and the limit ("-" none), in the order of
/// `tenant set`'s flags.
private func tenantLines(_ info: Berth_V1_TenantInfo) -> [(name: String, used: String, limit: String)] {
    let quota = info.quota, usage = info.usage
    let cpus = Commitment.cpusText(millis:)
    return [
        ("vps", String(usage.vps), quota.hasMaxVps ? String(quota.maxVps) : "-"),
        ("memory", ByteSize.format(usage.memoryBytes), quota.hasMaxMemoryBytes ? ByteSize.format(quota.maxMemoryBytes) : "-"),
        ("cpus", cpus(usage.cpuMillis), quota.hasMaxCpuMillis ? cpus(quota.maxCpuMillis) : "-"),
        ("disk", ByteSize.format(usage.diskBytes), quota.hasMaxDiskBytes ? ByteSize.format(quota.maxDiskBytes) : "-"),
        ("ips", String(usage.ips), quota.hasMaxIps ? String(quota.maxIps) : "-"),
    ]
}

private func printTenant(_ info: Berth_V1_TenantInfo) {
    print("tenant \(info.name)")
    printTable(tenantLines(info).map { ["  " + $0.name, $0.used, "of", $0.limit == "-" ? "no limit" : $0.limit] })
}

private func tenantJSON(_ info: Berth_V1_TenantInfo) -> JSON {
    let quota = info.quota, usage = info.usage
    var limits: [String: JSON] = [:]
    if quota.hasMaxVps { limits["max_vps"] = .int(Int64(quota.maxVps)) }
    if quota.hasMaxMemoryBytes { limits["max_memory_bytes"] = .int(Int64(clamping: quota.maxMemoryBytes)) }
    if quota.hasMaxCpuMillis { limits["max_cpu_millis"] = .int(Int64(clamping: quota.maxCpuMillis)) }
    if quota.hasMaxDiskBytes { limits["max_disk_bytes"] = .int(Int64(clamping: quota.maxDiskBytes)) }
    if quota.hasMaxIps { limits["max_ips"] = .int(Int64(quota.maxIps)) }
    return .object([
        "name": .string(info.name), "quota": .object(limits),
        "usage": .object([
            "vps": .int(Int64(usage.vps)), "memory_bytes": .int(Int64(clamping: usage.memoryBytes)),
            "cpu_millis": .int(Int64(clamping: usage.cpuMillis)), "disk_bytes": .int(Int64(clamping: usage.diskBytes)), "ips": .int(Int64(usage.ips)),
        ]),
    ])
}
