import BerthCore
import CIsolation
import Foundation
import Isolation
import Logging

/// A migration's two ends on the nodes (Docs/migration.md). The source hands out a
/// stopped VPS's config and disk; the target takes them in only under a grant the controller
/// gave it, from the grant's source node, once. The VPS stays the source's until the controller
/// commits the move, so either end's failure leaves the other as it was.
extension VPSManager {
    /// The controller announces a migration to this node (the target). Refused when this node
    /// could not hold the VPS under that name.
    public func expectMigration(_ grant: MigrationGrant) throws {
        let name = try Name.validate(grant.vps)
        guard grant.target == nodeName else {
            throw AgentError.invalid("target", "this node is \(nodeName), the grant names \(grant.target)")
        }
        guard grant.isLive(at: Self.nowUnix) else { throw AgentError.invalid("expires", "the grant has expired") }
        try checkNameFree(name)
        expectedMigrations = expectedMigrations.filter { $0.value.isLive(at: Self.nowUnix) }
        expectedMigrations[grant.id] = grant
    }

    /// The controller gave up on a migration to this node: the grant goes, and a VPS received
    /// under it (never started, never the VPS's home) is deleted.
    public func abortMigration(_ grant: MigrationGrant) async throws {
        expectedMigrations[grant.id] = nil
        abortedMigrations.insert(grant.id)
        guard receivedMigrations[grant.vps] == grant.id, records[grant.vps] != nil else { return }
        try await destroy(grant.vps, force: true)
        receivedMigrations[grant.vps] = nil
        logger.notice("migration aborted: received copy deleted", metadata: ["vps": "\(grant.vps)", "grant": "\(grant.id)"])
    }

    /// What the source sends: a VPS's stored config and its disk image. A cold migration moves
    /// a stopped VPS; a warm one (`running` allowed) copies while it runs and stops it for the
    /// last pass (`stopForLastPass`). The VPS is held (start, set and destroy refused) until
    /// `endMigrationOut`.
    public func beginMigrationOut(_ grant: MigrationGrant, warm: Bool) async throws -> (config: [UInt8], disk: MigrationDisk, templateDigest: String) {
        let name = try Name.validate(grant.vps)
        guard grant.source == nodeName else {
            throw AgentError.invalid("source", "this node is \(nodeName), the grant names \(grant.source)")
        }
        let record = try record(name)
        guard record.state == .stopped || (warm && record.state == .running) else {
            throw AgentError(
                .conflict,
                "VPS \(name) is \(record.state.rawValue); \(warm ? "a warm migration moves a running or stopped VPS" : "a cold migration moves a stopped VPS")",
                field: "name")
        }
        guard !migratingOut.contains(name) else { throw AgentError(.conflict, "VPS \(name) is already being migrated", field: "name") }
        try checkDiskFree(name)
        // Snapshots stay with their node: moving the VPS without them would lose them.
        let snapshots = snapshotList(name)
        guard snapshots.isEmpty else {
            throw AgentError(
                .conflict,
                "VPS \(name) has \(snapshots.count) snapshot(s) (\(snapshots.map(\.name).joined(separator: ", "))), which migration does not move: back them up (berth backup \(name) FILE --snapshot SNAP) and delete them first",
                field: "name")
        }
        guard let config = FileManager.default.contents(atPath: store.configPath(name)) else {
            throw AgentError(.corruptState, "\(store.configPath(name)) cannot be read")
        }
        let disk: MigrationDisk
        if record.config.isPooled {
            _ = try VolumeTransfer.tool()
            disk = .volume(try await storagePool(creating: false).volume(name))
        } else {
            disk = .image(store.diskPath(name))
        }
        // Only the upper layer moves: the target checks it holds the same lower one.
        var templateDigest = ""
        if record.config.isLayered {
            guard let digest = try templates.digest(record.config.template) else {
                throw AgentError(.corruptState, "template \(record.config.template), which VPS \(name) is layered over, is gone from \(nodeName)")
            }
            templateDigest = digest
        }
        // Checked again after the awaits: a second migration may have begun meanwhile.
        guard !migratingOut.contains(name) else { throw AgentError(.conflict, "VPS \(name) is already being migrated", field: "name") }
        migratingOut.insert(name)
        return (Array(config), disk, templateDigest)
    }

    /// A read-only snapshot of a pool VPS's subvolume for one pass of migration `grant`
    /// (`pool/migrate-GRANT/LABEL`); `removeMigrationSnapshots` deletes them all.
    public func migrationSnapshot(_ name: String, grant: MigrationGrant, label: String) async throws -> String {
        let pool = try await storagePool(creating: false)
        let directory = Self.snapshotDirectory(pool, grant)
        guard mkdir(directory, 0o700) == 0 || errno == EEXIST else {
            throw AgentError(.kernel, "making \(directory): \(errnoName(errno))", stage: "mkdir", errno: errno)
        }
        let snapshot = directory + "/" + label
        try await tool([try VolumeTransfer.tool(), "subvolume", "snapshot", "-r", pool.volume(name), snapshot], stage: "btrfs snapshot")
        return snapshot
    }

    /// Deletes the source's snapshots of migration `grant` (whatever became of it).
    public func removeMigrationSnapshots(_ grant: MigrationGrant) {
        guard let pool = try? mountedPool() else { return }
        deleteSubvolumes(in: Self.snapshotDirectory(pool, grant))
    }

    static func snapshotDirectory(_ pool: StoragePool, _ grant: MigrationGrant) -> String {
        pool.directory + "/migrate-" + grant.id.prefix(16)
    }

    /// Where the snapshots of a VPS coming in are received (a migration's grant, a restore).
    static func incomingDirectory(_ pool: StoragePool, _ transfer: String) -> String { pool.directory + "/incoming-" + transfer }

    /// Deletes every subvolume in `directory`, then the directory (a migration's snapshots, or
    /// what a target received).
    func deleteSubvolumes(in directory: String) {
        guard FileIO.exists(directory) else { return }
        for entry in FileIO.listDirectory(directory) where berth_btrfs_subvolume_delete(directory, entry) != 0 && errno != ENOENT {
            logger.error("cannot delete a migration's subvolume", metadata: ["path": "\(directory)/\(entry)", "error": "\(errnoName(errno))"])
        }
        rmdir(directory)
    }

    /// Whether a VPS being migrated out runs (a warm migration copies while it does).
    public func isRunning(_ name: String) -> Bool { records[name]?.state == .running }

    /// A warm migration's stop before its last pass: the usual clean stop of a running VPS
    /// (its init's halt, the stop timeout, then SIGKILL); one that stopped by itself meanwhile
    /// is left as it is.
    public func stopForLastPass(_ name: String) async throws {
        guard migratingOut.contains(name), let record = records[name] else {
            throw AgentError(.conflict, "VPS \(name) is not being migrated from \(nodeName)", field: "name")
        }
        guard record.state != .stopped else { return }
        try await stop(name, timeout: 0, kill: false)
    }

    public func endMigrationOut(_ name: String) { migratingOut.remove(name) }

    /// Refuses, with `busy`, what must not happen to a VPS while its disk is being sent.
    func checkNotMigrating(_ name: String) throws {
        if migratingOut.contains(name) {
            throw AgentError(.conflict, "VPS \(name) is busy: it is being migrated to another node", field: "name")
        }
    }

    /// Checks that `peer` may send the VPS of grant `grantID` and takes the grant (single use).
    public func claimMigration(_ grantID: String, from peer: String) throws -> MigrationGrant {
        guard let grant = expectedMigrations[grantID] else {
            throw AgentError(.permissionDenied, "no migration grant \(grantID.prefix(12)) is open on \(nodeName) (expired, used, or never given)")
        }
        guard grant.source == peer else {
            throw AgentError(.permissionDenied, "the migration grant \(grantID.prefix(12)) is for node \(grant.source), not \(peer)")
        }
        expectedMigrations[grantID] = nil
        guard grant.isLive(at: Self.nowUnix) else { throw AgentError(.permissionDenied, "the migration grant \(grantID.prefix(12)) has expired") }
        return grant
    }

    /// Takes in a VPS sent under `grant`: its config as the source stored it, made this node's,
    /// and its disk, which `receiveDisk` writes where it is told (`takeIn`).
    public func receiveMigration(
        _ grant: MigrationGrant, config data: [UInt8], templateDigest: String = "", receiveDisk: (MigrationDisk) async throws -> Void
    ) async throws -> VPSView {
        let name = grant.vps
        let config = try VPSConfig.decode(Data(data), expectedName: name, path: "the migrated config of \(name)", received: true)
        let view = try await takeIn(
            name, config: config, templateDigest: templateDigest, from: grant.source, transfer: String(grant.id.prefix(16)),
            lastSnapshot: VolumeTransfer.finalSnapshot, stillWanted: { try self.checkNotAborted(grant) }, receiveDisk: receiveDisk)
        receivedMigrations[name] = grant.id
        logger.info("received migrated VPS", metadata: ["vps": "\(name)", "from": "\(grant.source)", "grant": "\(grant.id)"])
        return view
    }

    /// A VPS that comes from elsewhere (a migration's source, a backup) becomes this node's:
    /// its interface, a MAC and an id range of this node, stopped; its disk as `receiveDisk`
    /// writes it (an image file, or a directory of the pool for the subvolumes of a pool VPS)
    /// and checks it. `stillWanted` is asked once the disk is in (a migration aborted meanwhile).
    /// Nothing stays if any step fails.
    func takeIn(
        _ name: String, config received: VPSConfig, templateDigest: String, from origin: String, transfer: String, lastSnapshot: String?,
        stillWanted: () throws -> Void, receiveDisk: (MigrationDisk) async throws -> Void
    ) async throws -> VPSView {
        var config = received
        try checkNameFree(name)
        guard templates.info(config.template) != nil else {
            throw AgentError(
                .notFound, "template \(config.template) of VPS \(name) is not on \(nodeName) (upload it: berth template upload)", field: "template")
        }
        // A layered disk holds only the VPS's upper layer: the lower one here must be the same.
        if config.isLayered {
            let ours = try templates.digest(config.template) ?? ""
            guard ours == templateDigest else {
                throw AgentError(
                    .conflict,
                    "template \(config.template) on \(nodeName) is not the one VPS \(name) is layered over on \(origin) (digest \(ours.prefix(12)) here, \(templateDigest.prefix(12)) there): upload the same template to both (berth template upload)",
                    field: "template")
            }
        }
        let network = try config.network.map { try newNetwork(name: name, net: $0.mode, ips: $0.ips) } ?? nil
        let idmapBase = config.isPrivileged ? nil : try allocateIdmap()
        holdNew(name, network: network, idmapBase: idmapBase)
        defer { releaseNew(name, idmapBase: idmapBase) }
        config.network = network
        config.idmapBase = idmapBase
        config.desiredState = .stopped
        let dir = store.directory(name)
        var volumeIn: StoragePool?
        do {
            try FileManager.default.createDirectory(atPath: store.rootPath(name), withIntermediateDirectories: true)
            chmod(dir, 0o700)
            if config.isPooled {
                let pool = try await storagePool(creating: true)
                try await receiveVolume(name, transfer: transfer, last: lastSnapshot, into: pool, limit: config.limits.diskBytes, receiveDisk)
                volumeIn = pool
                // The controller's abort may have come during the snapshot (the actor was free).
                try stillWanted()
            } else {
                let incoming = store.diskPath(name) + ".incoming"
                try await receiveDisk(.image(incoming))
                try stillWanted()
                guard rename(incoming, store.diskPath(name)) == 0 else {
                    throw AgentError(.kernel, "renaming the received disk of \(name): \(errnoName(errno))", stage: "rename", errno: errno)
                }
            }
            try store.save(config)
        } catch {
            if let volumeIn { try? deleteVolume(name, in: volumeIn) }
            try? FileManager.default.removeItem(atPath: dir)
            throw error
        }
        let record = VPSRecord(config: config)
        records[name] = record
        if config.isLayered { templates.share(config.template, with: name) }
        return view(record)
    }

    /// A pool VPS's subvolume from the snapshots sent: received into `pool/incoming-TRANSFER`,
    /// the last one (`last`, or the only one when nil) snapshotted writable into the VPS's
    /// place with its quota limit; the received ones are deleted whatever happens.
    private func receiveVolume(
        _ name: String, transfer: String, last: String?, into pool: StoragePool, limit: UInt64, _ receiveDisk: (MigrationDisk) async throws -> Void
    ) async throws {
        let btrfs = try VolumeTransfer.tool()
        let incoming = Self.incomingDirectory(pool, transfer)
        guard mkdir(incoming, 0o700) == 0 else {
            throw AgentError(.kernel, "making \(incoming): \(errnoName(errno))", stage: "mkdir", errno: errno)
        }
        defer { deleteSubvolumes(in: incoming) }
        // The mark `removeCutMigrations` knows a receive cut short by (as a loop image's
        // partial file): the VPS's directory never became this node's VPS.
        let mark = store.diskPath(name) + ".incoming"
        _ = FileManager.default.createFile(atPath: mark, contents: nil)
        defer { unlink(mark) }
        try await receiveDisk(.volume(incoming))
        let received = FileIO.listDirectory(incoming)
        guard let top = last ?? (received.count == 1 ? received.first : nil), received.contains(top) else {
            throw AgentError.invalid("disk", "the transfer ended before its last snapshot arrived; nothing was kept")
        }
        try await tool([btrfs, "subvolume", "snapshot", incoming + "/" + top, pool.volume(name)], stage: "btrfs snapshot")
        do {
            try limitVolume(name, in: pool, bytes: limit)
        } catch {
            try? deleteVolume(name, in: pool)
            throw error
        }
    }

    /// The controller may have given up while the bytes were on their way (it stopped, or
    /// settled the migration without this copy): then nothing of it stays.
    private func checkNotAborted(_ grant: MigrationGrant) throws {
        guard !abortedMigrations.contains(grant.id) else {
            throw AgentError(.conflict, "the migration of \(grant.vps) was aborted by the controller during the transfer", field: "name")
        }
    }

    static var nowUnix: Int64 { Int64(Date().timeIntervalSince1970) }
}
