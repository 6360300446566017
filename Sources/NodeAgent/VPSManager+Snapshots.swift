import BerthCore
import CIsolation
import Foundation
import Isolation

/// A snapshot of a VPS's disk as it was at one instant (Docs/backup.md). What each is and when
/// it was taken is `vps/NAME/snapshots/SNAP.json`, written last when it is made and removed
/// first when it is deleted, so a snapshot whose record exists is whole. Its data:
/// * pool: a read-only btrfs snapshot `pool/snapshots/NAME/SNAP` of the VPS's subvolume;
/// * loop: `vps/NAME/snapshots/SNAP.img`, a copy of the image (a reflink where the data
///   filesystem clones, else its data extents), taken with the VPS's processes and filesystem
///   frozen when it runs.
public struct SnapshotRecord: Codable, Sendable, Equatable {
    public var name: String
    /// When it was taken, in milliseconds since 1970 (two taken in one second list in order).
    public var createdUnixMs: Int64
    /// "btrfs", "reflink" or "copy".
    public var method: String
    /// How long the VPS was frozen for it (0: stopped, or a pool snapshot, which needs none).
    public var frozenMs: UInt64
    /// A loop image's size when it was taken (a rollback needs the disk the same size).
    public var imageBytes: UInt64?
    /// Bytes the snapshot holds of its own, filled in when listed.
    public var bytes: UInt64 = 0

    private enum CodingKeys: String, CodingKey { case name, createdUnixMs, method, frozenMs, imageBytes }
}

extension VPSManager {
    /// The longest a freeze for a snapshot may wait for the VPS's processes to stop.
    static let freezeTimeoutMs = 5_000

    func snapshotRecords(_ name: String) -> String { store.directory(name) + "/snapshots" }
    private func snapshotRecord(_ name: String, _ snapshot: String) -> String { snapshotRecords(name) + "/" + snapshot + ".json" }
    private func snapshotImage(_ name: String, _ snapshot: String) -> String { snapshotRecords(name) + "/" + snapshot + ".img" }
    static func poolSnapshots(_ pool: StoragePool, _ name: String) -> String { pool.directory + "/snapshots/" + name }

    /// `berth snapshot create NAME [SNAP]`: `snapshot` "" is named after the time (UTC).
    public func createSnapshot(_ name: String, _ snapshot: String) async throws -> SnapshotRecord {
        let name = try Name.validate(name)
        let snapshot = snapshot.isEmpty ? Self.snapshotName(at: Date()) : try Name.validate(snapshot, field: "snapshot")
        let record = try record(name)
        try checkNotMigrating(name)
        guard FileIO.exists(snapshotRecord(name, snapshot)) == false else {
            throw AgentError(.alreadyExists, "VPS \(name) already has a snapshot \(snapshot)", field: "snapshot")
        }
        try holdDisk(name, "taking snapshot \(snapshot)")
        defer { releaseDisk(name) }
        try FileIO.makeDirectories(snapshotRecords(name), mode: 0o700)
        var made = SnapshotRecord(name: snapshot, createdUnixMs: Int64(Date().timeIntervalSince1970 * 1000), method: "btrfs", frozenMs: 0)
        if record.config.isPooled {
            let pool = try await storagePool(creating: false)
            let directory = Self.poolSnapshots(pool, name)
            try FileIO.makeDirectories(directory, mode: 0o700)
            // btrfs flushes the subvolume's dirty data into the snapshot's transaction itself:
            // the snapshot is consistent with no freeze.
            try await tool([try VolumeTransfer.tool(), "subvolume", "snapshot", "-r", pool.volume(name), directory + "/" + snapshot], stage: "btrfs snapshot")
        } else {
            let copy = try await copyImage(of: record, to: snapshotImage(name, snapshot))
            made.method = copy.method.rawValue
            made.frozenMs = copy.frozenMs
            made.imageBytes = Self.fileSize(store.diskPath(name))
        }
        do {
            try FileIO.writeAtomically(snapshotRecord(name, snapshot), Array(try JSONEncoder.berth.encode(made)))
        } catch {
            removeSnapshotData(name, snapshot, pooled: record.config.isPooled)
            throw error
        }
        logger.info("snapshot taken", metadata: ["vps": "\(name)", "snapshot": "\(snapshot)", "method": "\(made.method)", "frozen-ms": "\(made.frozenMs)"])
        made.bytes = snapshotBytes(name, made, pooled: record.config.isPooled)
        return made
    }

    /// A copy of a loop VPS's image; a running VPS is frozen (its processes, then its
    /// filesystem, which writes its dirty data out) for the instant of a reflink, or for the
    /// whole copy where the data filesystem cannot clone.
    func copyImage(of record: VPSRecord, to destination: String) async throws -> (method: DiskImageCopy.Method, frozenMs: UInt64) {
        let name = record.config.name
        let source = store.diskPath(name)
        guard record.state == .running, let mounted = mountedDisk(record) else {
            guard record.state == .stopped || record.state == .failed else {
                throw AgentError(.conflict, "VPS \(name) is \(record.state.rawValue); take the snapshot once it is running or stopped", field: "name")
            }
            return (try await Offload.run { try DiskImageCopy.copy(source, to: destination) }, 0)
        }
        let cgroups = cgroups
        return try await Offload.run {
            let began = ContinuousClock.now
            try cgroups.freeze(name, timeoutMs: Self.freezeTimeoutMs)
            defer { try? cgroups.thaw(name) }
            let frozen = try FrozenFilesystem(mounted)
            let method = try DiskImageCopy.copy(source, to: destination)
            try frozen.thaw()
            return (method, UInt64((ContinuousClock.now - began) / .milliseconds(1)))
        }
    }

    /// `berth snapshot list NAME`, oldest first.
    public func snapshots(_ name: String) throws -> [SnapshotRecord] {
        let name = try Name.validate(name)
        let record = try record(name)
        return snapshotList(name).map {
            var listed = $0
            listed.bytes = snapshotBytes(name, $0, pooled: record.config.isPooled)
            return listed
        }
    }

    func snapshotList(_ name: String) -> [SnapshotRecord] {
        FileIO.listDirectory(snapshotRecords(name))
            .filter { $0.hasSuffix(".json") }
            .compactMap { FileManager.default.contents(atPath: snapshotRecords(name) + "/" + $0) }
            .compactMap { try? JSONDecoder.berth.decode(SnapshotRecord.self, from: $0) }
            .sorted { ($0.createdUnixMs, $0.name) < ($1.createdUnixMs, $1.name) }
    }

    /// What the VPS's snapshots hold, in all (status, stats).
    func snapshotUsage(_ record: VPSRecord) -> (count: Int, bytes: UInt64) {
        let list = snapshotList(record.config.name)
        return (list.count, list.reduce(0) { $0 + snapshotBytes(record.config.name, $1, pooled: record.config.isPooled) })
    }

    /// pool: the snapshot's quota group's exclusive bytes (what deleting it frees under full
    /// qgroups); loop: the copy's allocated bytes (a reflink's shared blocks counted whole).
    private func snapshotBytes(_ name: String, _ snapshot: SnapshotRecord, pooled: Bool) -> UInt64 {
        if pooled {
            guard let pool = try? mountedPool() else { return 0 }
            let id = berth_btrfs_subvolume_id(Self.poolSnapshots(pool, name) + "/" + snapshot.name)
            guard id > 0 else { return 0 }
            return FileIO.read("\(pool.sysfs)/qgroups/0_\(id)/exclusive").flatMap { UInt64($0.trimmed) } ?? 0
        }
        var info = stat()
        return stat(snapshotImage(name, snapshot.name), &info) == 0 ? UInt64(info.st_blocks) * 512 : 0
    }

    /// `berth snapshot rollback NAME SNAP`: the disk becomes the snapshot again (the snapshot
    /// stays). The VPS must be stopped; `restart` stops a running one first and starts it after.
    public func rollback(_ name: String, to snapshot: String, restart: Bool) async throws -> VPSView {
        let name = try Name.validate(name)
        let snapshot = try Name.validate(snapshot, field: "snapshot")
        var record = try record(name)
        try checkNotMigrating(name)
        guard let taken = snapshotList(name).first(where: { $0.name == snapshot }) else {
            throw AgentError(.notFound, "VPS \(name) has no snapshot \(snapshot) (berth snapshot list \(name))", field: "snapshot")
        }
        if !record.config.isPooled, let size = taken.imageBytes, size != Self.fileSize(store.diskPath(name)) {
            throw AgentError(
                .conflict,
                "the disk of \(name) was resized since snapshot \(snapshot) (\(ByteSize.format(size)) then, \(ByteSize.format(Self.fileSize(store.diskPath(name)) ?? 0)) now): set --disk \(ByteSize.format(size)) first",
                field: "snapshot")
        }
        let wasRunning = record.state != .stopped && record.state != .failed
        guard !wasRunning || restart else {
            throw AgentError(.conflict, "VPS \(name) is \(record.state.rawValue); stop it first or use --restart", field: "name")
        }
        try holdDisk(name, "rolling back to snapshot \(snapshot)")
        do {
            defer { releaseDisk(name) }
            if wasRunning {
                try await stop(name, timeout: 0, kill: false)
                record = try self.record(name)
            }
            if record.config.isPooled {
                let pool = try await storagePool(creating: false)
                let replacement = pool.volumes + "/.rollback-" + name
                _ = berth_btrfs_subvolume_delete(pool.volumes, ".rollback-" + name)
                try await tool(
                    [try VolumeTransfer.tool(), "subvolume", "snapshot", Self.poolSnapshots(pool, name) + "/" + snapshot, replacement], stage: "btrfs snapshot")
                let id = berth_btrfs_subvolume_id(replacement)
                guard id > 0, berth_btrfs_qgroup_limit(pool.directory, UInt64(id), record.config.limits.diskBytes) == 0 else {
                    let err = errno
                    _ = berth_btrfs_subvolume_delete(pool.volumes, ".rollback-" + name)
                    throw AgentError(.kernel, "limiting the rolled-back subvolume: \(errnoName(err))", stage: "qgroup limit", errno: err)
                }
                try exchange(replacement, pool.volume(name))
                _ = berth_btrfs_subvolume_delete(pool.volumes, ".rollback-" + name)
            } else {
                let replacement = store.diskPath(name) + ".rollback"
                unlink(replacement)
                let image = snapshotImage(name, snapshot)
                _ = try await Offload.run { try DiskImageCopy.copy(image, to: replacement) }
                try exchange(replacement, store.diskPath(name))
                unlink(replacement)
            }
        }
        logger.notice("rolled back to a snapshot", metadata: ["vps": "\(name)", "snapshot": "\(snapshot)"])
        if wasRunning { return try await start(name) }
        return view(try self.record(name))
    }

    /// Swaps two paths in one step (renameat2 RENAME_EXCHANGE): the VPS always has a whole disk.
    private func exchange(_ a: String, _ b: String) throws {
        guard berth_rename_exchange(a, b) == 0 else {
            throw AgentError(.kernel, "exchanging \(a) and \(b): \(errnoName(errno))", stage: "rename exchange", errno: errno)
        }
    }

    /// `berth snapshot delete NAME SNAP`.
    public func deleteSnapshot(_ name: String, _ snapshot: String) async throws {
        let name = try Name.validate(name)
        let snapshot = try Name.validate(snapshot, field: "snapshot")
        let record = try record(name)
        guard FileIO.exists(snapshotRecord(name, snapshot)) else {
            throw AgentError(.notFound, "VPS \(name) has no snapshot \(snapshot) (berth snapshot list \(name))", field: "snapshot")
        }
        try holdDisk(name, "deleting snapshot \(snapshot)")
        defer { releaseDisk(name) }
        guard unlink(snapshotRecord(name, snapshot)) == 0 else {
            throw AgentError(.kernel, "removing \(snapshotRecord(name, snapshot)): \(errnoName(errno))", stage: "unlink", errno: errno)
        }
        removeSnapshotData(name, snapshot, pooled: record.config.isPooled)
        logger.info("snapshot deleted", metadata: ["vps": "\(name)", "snapshot": "\(snapshot)"])
    }

    private func removeSnapshotData(_ name: String, _ snapshot: String, pooled: Bool) {
        if pooled, let pool = try? mountedPool() {
            if berth_btrfs_subvolume_delete(Self.poolSnapshots(pool, name), snapshot) != 0 && errno != ENOENT {
                logger.error("cannot delete a snapshot's subvolume", metadata: ["vps": "\(name)", "snapshot": "\(snapshot)", "error": "\(errnoName(errno))"])
            }
        } else {
            unlink(snapshotImage(name, snapshot))
        }
    }

    /// A destroyed pool VPS's snapshots (a loop VPS's go with its directory).
    func removePoolSnapshots(_ name: String) {
        guard let pool = try? mountedPool() else { return }
        deleteSubvolumes(in: Self.poolSnapshots(pool, name))
    }

    /// Snapshot data without a record: what a snapshot, rollback or agent crash cut short left
    /// (agent start).
    func removeUnrecordedSnapshots(_ name: String, pooled: Bool) {
        let recorded = Set(snapshotList(name).map(\.name))
        if pooled {
            guard let pool = try? mountedPool() else { return }
            let directory = Self.poolSnapshots(pool, name)
            for entry in FileIO.listDirectory(directory) where !recorded.contains(entry) {
                _ = berth_btrfs_subvolume_delete(directory, entry)
            }
            _ = berth_btrfs_subvolume_delete(pool.volumes, ".rollback-" + name)
        } else {
            for entry in FileIO.listDirectory(snapshotRecords(name)) where entry.hasSuffix(".img") && !recorded.contains(String(entry.dropLast(4))) {
                unlink(snapshotRecords(name) + "/" + entry)
            }
            unlink(store.diskPath(name) + ".rollback")
        }
    }

    func thawAfterSnapshot(_ record: VPSRecord) {
        try? cgroups.thaw(record.config.name)
        if !record.config.isPooled, let mounted = mountedDisk(record) {
            let fd = open(mounted, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if fd >= 0 {
                _ = berth_fs_thaw(fd)
                close(fd)
            }
        }
    }

    static func fileSize(_ path: String) -> UInt64? {
        var info = stat()
        return stat(path, &info) == 0 ? UInt64(info.st_size) : nil
    }

    static func snapshotName(at date: Date) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd-HHmmss"
        return formatter.string(from: date)
    }

    // MARK: - a disk held by one long step at a time

    /// Refuses, with `conflict`, a second step on a VPS's disk while one runs (snapshot,
    /// rollback, backup), and start, destroy and migration meanwhile.
    func holdDisk(_ name: String, _ what: String) throws {
        if let held = diskHolds[name] { throw AgentError(.conflict, "VPS \(name) is busy: \(held)", field: "name") }
        diskHolds[name] = what
    }

    func releaseDisk(_ name: String) { diskHolds[name] = nil }

    func checkDiskFree(_ name: String) throws {
        if let held = diskHolds[name] { throw AgentError(.conflict, "VPS \(name) is busy: \(held)", field: "name") }
    }
}
