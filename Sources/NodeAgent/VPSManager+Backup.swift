import BerthCore
import CIsolation
import Foundation
import Isolation

/// What a backup reads (Docs/backup.md): a snapshot the operator names, or one taken for the
/// backup alone and deleted after it (a running VPS, and any pool VPS: `btrfs send` reads only
/// read-only subvolumes), or a stopped loop VPS's own image, which the disk hold keeps still.
public struct BackupSource: Sendable {
    public var manifest: BackupManifest
    public var config: [UInt8]
    var disk: BackupStreams.Disk
    /// The snapshot taken for this backup alone (deleted by `endBackup`).
    var temporary: String?
    public var frozenMs: UInt64 = 0
}

extension VPSManager {
    static let backupSnapshot = ".backup"

    public func beginBackup(_ name: String, snapshot: String) async throws -> BackupSource {
        let name = try Name.validate(name)
        let record = try record(name)
        try checkNotMigrating(name)
        _ = try BackupStreams.zstdTool()
        if !snapshot.isEmpty {
            try Name.validate(snapshot, field: "snapshot")
            guard snapshotList(name).contains(where: { $0.name == snapshot }) else {
                throw AgentError(.notFound, "VPS \(name) has no snapshot \(snapshot) (berth snapshot list \(name))", field: "snapshot")
            }
        }
        guard let config = FileManager.default.contents(atPath: store.configPath(name)) else {
            throw AgentError(.corruptState, "\(store.configPath(name)) cannot be read")
        }
        var templateDigest = ""
        if record.config.isLayered {
            guard let digest = try templates.digest(record.config.template) else {
                throw AgentError(.corruptState, "template \(record.config.template), which VPS \(name) is layered over, is gone from \(nodeName)")
            }
            templateDigest = digest
        }
        try holdDisk(name, "being backed up")
        var source = BackupSource(
            manifest: BackupManifest(
                vps: name, node: nodeName, created: Int64(Date().timeIntervalSince1970), layout: (record.config.layout ?? .loop).rawValue,
                storage: (record.config.storage ?? .image).rawValue, template: record.config.template, diskBytes: 0, spec: record.config.spec),
            config: Array(config), disk: .image(store.diskPath(name)))
        source.manifest.templateDigest = templateDigest
        source.manifest.snapshot = snapshot
        do {
            if record.config.isPooled {
                let pool = try await storagePool(creating: false)
                let directory = Self.poolSnapshots(pool, name)
                var path = directory + "/" + snapshot
                if snapshot.isEmpty {
                    try FileIO.makeDirectories(directory, mode: 0o700)
                    path = directory + "/" + Self.backupSnapshot
                    _ = berth_btrfs_subvolume_delete(directory, Self.backupSnapshot)
                    try await tool([try VolumeTransfer.tool(), "subvolume", "snapshot", "-r", pool.volume(name), path], stage: "btrfs snapshot")
                    source.temporary = path
                }
                source.disk = .snapshot(path)
                let id = berth_btrfs_subvolume_id(path)
                source.manifest.diskBytes = FileIO.read("\(pool.sysfs)/qgroups/0_\(id)/referenced").flatMap { UInt64($0.trimmed) } ?? 0
            } else {
                var path = snapshot.isEmpty ? store.diskPath(name) : snapshotRecords(name) + "/" + snapshot + ".img"
                if snapshot.isEmpty && record.state != .stopped && record.state != .failed {
                    try FileIO.makeDirectories(snapshotRecords(name), mode: 0o700)
                    path = snapshotRecords(name) + "/" + Self.backupSnapshot + ".img"
                    unlink(path)
                    (_, source.frozenMs) = try await copyImage(of: record, to: path)
                    source.temporary = path
                }
                source.disk = .image(path)
                source.manifest.diskBytes = Self.fileSize(path) ?? 0
            }
        } catch {
            releaseDisk(name)
            throw error
        }
        return source
    }

    /// The backup is written (or failed): its temporary snapshot goes, the disk is free again.
    public func endBackup(_ name: String, _ source: BackupSource) {
        if let temporary = source.temporary {
            if case .snapshot = source.disk {
                _ = berth_btrfs_subvolume_delete(FileIO.directory(of: temporary), FileIO.baseName(temporary))
            } else {
                unlink(temporary)
            }
        }
        releaseDisk(name)
    }

    /// `berth restore`: a new VPS `name` from a backup's manifest and config, with the disk
    /// `receiveDisk` writes (an image file, or a pool directory `btrfs receive` fills) once
    /// every member has been checked. `ips` nil keeps the archive's addresses.
    public func restoreBackup(
        _ manifest: BackupManifest, config data: [UInt8], as name: String, ips: [String]?, receiveDisk: (MigrationDisk) async throws -> Void
    ) async throws -> VPSView {
        let name = try Name.validate(name)
        var config = try VPSConfig.decode(Data(data), expectedName: manifest.vps, path: "the backup's config.json", received: true)
        // A controller placed this restore, and checked the tenant's quota, by the manifest's VPS:
        // the config applied here must describe the same one, or an edited archive passes both.
        let described = config.spec, declared = manifest.spec
        guard
            described.limits == declared.limits, described.privileged == declared.privileged,
            described.capabilities == declared.capabilities, described.layout == declared.layout,
            described.storage == declared.storage, described.template == declared.template
        else {
            throw AgentError(
                .invalidArgument,
                "file: the backup's config.json describes another VPS than its manifest (limits, privileges, layout or template differ): the archive was altered",
                field: "file")
        }
        config.name = name
        // A restored VPS is a new VPS: not HA until the controller makes it so (its replicas
        // and lease belong to the original).
        config.replication = nil
        if let ips {
            if var network = config.network {
                network.ips = ips
                config.network = network
            } else if !ips.isEmpty {
                config.network = VPSConfig.Network(bridge: nil, ips: ips, mac: "", hostInterface: "")
            }
        }
        let view = try await takeIn(
            name, config: config, templateDigest: manifest.templateDigest, from: "the backup of \(manifest.vps) from \(manifest.node)",
            transfer: "restore-" + UUID().uuidString.prefix(8).lowercased(), lastSnapshot: nil, stillWanted: {}, receiveDisk: receiveDisk)
        logger.info("restored VPS from a backup", metadata: ["vps": "\(name)", "of": "\(manifest.vps)", "taken-on": "\(manifest.node)"])
        return view
    }
}

extension VPSConfig {
    /// The VPS as its create would describe it (a backup's manifest: what a restore is placed by).
    var spec: VPSSpec {
        var spec = VPSSpec(name: name, template: template)
        spec.hostname = hostname
        spec.ips = network?.ips ?? []
        spec.nameservers = nameservers ?? []
        spec.searchDomains = searchDomains ?? []
        spec.limits = limits
        spec.net = network?.mode ?? ""
        spec.onboot = onboot
        spec.labels = labels
        spec.privileged = isPrivileged
        spec.capabilities = capabilities ?? [:]
        spec.storage = (storage ?? .image).rawValue
        spec.layout = (layout ?? .loop).rawValue
        return spec
    }
}
