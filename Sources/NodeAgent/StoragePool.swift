import BerthCore
import CIsolation
import Foundation
import Isolation
import Wire

/// The node's btrfs storage pool, where the disk of a `--layout pool` VPS is a subvolume whose
/// size a quota group limits (Incus's btrfs pool; OpenVZ's simfs with its disk quota). The pool
/// stays mounted while the node runs, so a start mounts no filesystem and finds the VPS's files
/// in a page cache that outlives its stops.
///
/// `DATA/pool` is the pool: a btrfs the operator mounted there, or else `DATA/pool.img`, a sparse
/// file the agent formats on first use and mounts through `berth-spawn pool-mount`.
struct StoragePool: Sendable {
    static let btrfsMagic = 0x9123_683E

    /// The pool's top directory; each VPS's subvolume is `volumes/NAME`.
    let directory: String
    /// The block device the pool lives on, which I/O limits name; nil when it has none of its own
    /// (a multi-device btrfs, or one whose mount the agent could not find).
    let device: String?
    /// The filesystem's directory in /sys/fs/btrfs, where the quota groups' figures are read.
    let sysfs: String

    /// A pool without a block device of its own (multi-device) leaves I/O limits nothing to name.
    static let noDeviceForIOLimits = IsolationError(
        .unsupported, "the storage pool has no block device of its own for I/O limits to name",
        stage: "find the pool's device")

    var volumes: String { directory + "/vps" }
    func volume(_ name: String) -> String { volumes + "/" + name }

    /// Bytes the VPS's subvolume holds and its limit (nil: none set), from its quota group.
    func usage(_ name: String) -> (used: UInt64, limit: UInt64?)? {
        let id = berth_btrfs_subvolume_id(volume(name))
        guard id > 0, let used = FileIO.read("\(sysfs)/qgroups/0_\(id)/referenced").flatMap({ UInt64($0.trimmed) }) else { return nil }
        let limit = FileIO.read("\(sysfs)/qgroups/0_\(id)/max_referenced").flatMap { UInt64($0.trimmed) }
        return (used, limit.flatMap { $0 == 0 || $0 == UInt64.max ? nil : $0 })
    }

    /// Sizes a new pool image as Incus sizes a loop pool: a fifth of the free space, between
    /// 5 GiB and 30 GiB. The file is sparse; `berth-agent --pool-size` overrides it.
    static func defaultSize(freeBytes: UInt64) -> UInt64 {
        min(max(freeBytes / 5, 5 << 30), 30 << 30)
    }

    /// The mount source of the filesystem `path` is on, from a /proc/PID/mountinfo text: the
    /// mount point that is the longest prefix of `path`. nil unless it is a /dev node.
    static func mountSource(of path: String, mountinfo: String) -> String? {
        let covering = MountEntry.parse(mountinfo: mountinfo).filter {
            $0.mountPoint == "/" || path == $0.mountPoint || path.hasPrefix($0.mountPoint + "/")
        }
        // The last of the deepest: a later mount on the same point hides the earlier ones.
        let deepest = covering.map(\.mountPoint.count).max()
        guard let source = covering.last(where: { $0.mountPoint.count == deepest })?.source, source.hasPrefix("/dev/") else { return nil }
        return source
    }
}

extension ConfigStore {
    var poolDirectory: String { FileIO.directory(of: vpsRoot) + "/pool" }
    var poolImage: String { FileIO.directory(of: vpsRoot) + "/pool.img" }
}

extension VPSManager {
    /// The node's pool, mounted and with quotas on. `creating`: make it if there is none yet
    /// (the first `create --layout pool`); otherwise a missing pool is an error.
    func storagePool(creating: Bool) async throws -> StoragePool {
        if let mounted = try mountedPool() { return mounted }
        // Two first creates must not both format the image, nor one mount it half-made: the
        // second waits for the first's set-up.
        if let pending = poolSetUp { return try await pending.value }
        let setUp = Task { try await self.setUpPool(creating: creating) }
        poolSetUp = setUp
        defer { poolSetUp = nil }
        return try await setUp.value
    }

    private func setUpPool(creating: Bool) async throws -> StoragePool {
        let directory = store.poolDirectory
        let image = store.poolImage
        if !FileIO.exists(image) {
            guard creating else {
                throw AgentError(.notFound, "the node's storage pool is gone: \(directory) is no btrfs and \(image) does not exist", field: "layout")
            }
            try await makePoolImage(image)
        }
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw AgentError(.kernel, "mkdir \(directory): \(errnoName(errno))", stage: "pool directory", errno: errno)
        }
        let result = try await Subprocess.run([paths.spawnBinary, "pool-mount", image, directory])
        guard result.status == 0 else {
            throw AgentError(.kernel, "mounting the storage pool failed: \((result.stderr + result.stdout).trimmed)", stage: "pool mount")
        }
        logger.notice("mounted the storage pool", metadata: ["image": "\(image)", "at": "\(directory)", "device": "\(result.stdout.trimmed)"])
        let found = try openPool(directory)
        pool = found
        return found
    }

    /// The pool if it is mounted (or `DATA/pool` is on a btrfs), without mounting anything.
    func mountedPool() throws -> StoragePool? {
        if let pool { return pool }
        guard berth_fs_magic(store.poolDirectory) == StoragePool.btrfsMagic else { return nil }
        let found = try openPool(store.poolDirectory)
        pool = found
        return found
    }

    /// A fresh sparse image formatted btrfs; removed again if anything fails.
    private func makePoolImage(_ image: String) async throws {
        var fs = statvfs()
        let free = statvfs(FileIO.directory(of: image), &fs) == 0 ? UInt64(fs.f_bavail) * UInt64(fs.f_frsize) : 0
        let size = paths.poolSize ?? StoragePool.defaultSize(freeBytes: free)
        let fd = open(image, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw AgentError(.kernel, "creating \(image): \(errnoName(errno))", stage: "pool image", errno: errno) }
        let truncated = ftruncate(fd, off_t(size))
        let err = errno
        close(fd)
        do {
            guard truncated == 0 else { throw AgentError(.kernel, "sizing \(image): \(errnoName(err))", stage: "pool image", errno: err) }
            let candidates: [String] = ["/usr/sbin/mkfs.btrfs", "/sbin/mkfs.btrfs", "/usr/bin/mkfs.btrfs"]
            guard let mkfs = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
                throw AgentError(.notFound, "making the storage pool needs mkfs.btrfs (apt-get install btrfs-progs)", field: "layout")
            }
            try await tool([mkfs, "-q", "-L", "berth-pool", image], stage: "mkfs.btrfs")
        } catch {
            unlink(image)
            throw error
        }
        logger.notice("made the storage pool", metadata: ["image": "\(image)", "bytes": "\(size)"])
    }

    /// The pool at `directory`, a btrfs: turns its quotas on if they are off and makes its
    /// directory of VPS subvolumes.
    private func openPool(_ directory: String) throws -> StoragePool {
        var uuid = [CChar](repeating: 0, count: 40)
        guard berth_btrfs_fsid(directory, &uuid, uuid.count) == 0 else {
            throw AgentError(.kernel, "\(directory) is no btrfs: \(errnoName(errno))", stage: "pool fsid", errno: errno)
        }
        let sysfs = "/sys/fs/btrfs/" + String(cString: uuid)
        if !FileIO.exists(sysfs + "/qgroups") {
            guard berth_btrfs_quota_enable(directory) == 0 else {
                throw AgentError(.kernel, "turning on quotas of the storage pool \(directory): \(errnoName(errno))", stage: "pool quota", errno: errno)
            }
        }
        let volumes = directory + "/vps"
        if mkdir(volumes, 0o700) != 0 && errno != EEXIST {
            throw AgentError(.kernel, "mkdir \(volumes): \(errnoName(errno))", stage: "pool directory", errno: errno)
        }
        let device = StoragePool.mountSource(of: directory, mountinfo: FileIO.read("/proc/self/mountinfo") ?? "")
        if let device { try growPoolImage(directory, device: device) }
        return StoragePool(directory: directory, device: device, sysfs: sysfs)
    }

    /// A `--pool-size` above the size of the pool image the agent made grows the image, its loop
    /// device and the btrfs on it, online. A smaller one shrinks nothing (btrfs would have to
    /// move the VPSs' data first): it is logged.
    private func growPoolImage(_ directory: String, device: String) throws {
        let image = store.poolImage
        guard let wanted = paths.poolSize, Self.loopDevice(backing: image) == device else { return }
        var info = stat()
        guard stat(image, &info) == 0 else { return }
        let current = UInt64(info.st_size)
        if wanted < current {
            logger.warning(
                "--pool-size is below the storage pool's size: the pool is not shrunk",
                metadata: ["pool-size": "\(wanted)", "pool": "\(current)"])
            return
        }
        guard wanted > current else { return }
        guard truncate(image, off_t(wanted)) == 0 else {
            throw AgentError(.kernel, "growing \(image) to \(ByteSize.format(wanted)): \(errnoName(errno))", stage: "pool grow", errno: errno)
        }
        let loop = open(device, O_RDONLY | O_CLOEXEC)
        let capacity = loop >= 0 ? berth_loop_set_capacity(loop) : -1
        let err = errno
        if loop >= 0 { close(loop) }
        guard capacity == 0, berth_btrfs_grow_to_device(directory) == 0 else {
            let cause = capacity == 0 ? errno : err
            throw AgentError(.kernel, "growing the storage pool to \(ByteSize.format(wanted)): \(errnoName(cause))", stage: "pool grow", errno: cause)
        }
        logger.notice("grew the storage pool", metadata: ["from": "\(current)", "to": "\(wanted)"])
    }

    /// Makes `name`'s subvolume with its limit and, unless layered, a copy of the template.
    /// Leaves nothing behind when it fails.
    func createVolume(_ name: String, in pool: StoragePool, bytes: UInt64, copying tree: String?) async throws {
        guard berth_btrfs_subvolume_create(pool.volumes, name) == 0 else {
            let err = errno
            if err == EEXIST {
                throw AgentError(
                    .alreadyExists,
                    "the storage pool already holds a subvolume \(pool.volume(name)) (left by an interrupted destroy?); delete it with 'btrfs subvolume delete' first",
                    field: "name")
            }
            throw AgentError(.kernel, "creating subvolume \(pool.volume(name)): \(errnoName(err))", stage: "subvolume create", errno: err)
        }
        do {
            try limitVolume(name, in: pool, bytes: bytes)
            if let tree {
                try await tool(["/bin/cp", "-a", tree + "/.", pool.volume(name)], stage: "copy the template")
            }
        } catch {
            _ = berth_btrfs_subvolume_delete(pool.volumes, name)
            throw error
        }
    }

    func limitVolume(_ name: String, in pool: StoragePool, bytes: UInt64) throws {
        let id = berth_btrfs_subvolume_id(pool.volume(name))
        guard id > 0, berth_btrfs_qgroup_limit(pool.directory, UInt64(id), bytes) == 0 else {
            throw AgentError(
                .kernel, "limiting subvolume \(pool.volume(name)) to \(ByteSize.format(bytes)): \(errnoName(errno))", stage: "qgroup limit", errno: errno)
        }
    }

    /// Deletes `name`'s subvolume; one already gone is no error.
    func deleteVolume(_ name: String, in pool: StoragePool) throws {
        guard berth_btrfs_subvolume_delete(pool.volumes, name) == 0 || errno == ENOENT else {
            throw AgentError(.kernel, "deleting subvolume \(pool.volume(name)): \(errnoName(errno))", stage: "subvolume delete", errno: errno)
        }
    }

    /// `set --disk` of a pool VPS: a new limit, running or not. Refused below what it holds.
    func resizeVolume(_ name: String, to bytes: UInt64) async throws {
        let pool = try await storagePool(creating: false)
        if let usage = pool.usage(name), usage.used > bytes {
            throw AgentError.invalid("disk", "\(ByteSize.format(bytes)) is less than the \(ByteSize.format(usage.used)) the VPS's disk holds")
        }
        try limitVolume(name, in: pool, bytes: bytes)
    }
}
