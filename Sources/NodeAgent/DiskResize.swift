import BerthCore
import CIsolation
import Foundation
import Isolation
import Wire

/// `set --disk`: the VPS disk is a sparse ext4 image on a loop device (ploop-like).
extension VPSManager {
    /// A running VPS grows online (image, loop capacity, resize2fs on the mounted filesystem);
    /// a stopped one grows or shrinks offline (e2fsck, resize2fs, image). Shrinking a running
    /// VPS, or below the data in it, is refused, and a failure leaves the disk as it was.
    func resizeDisk(_ name: String, from old: UInt64, to new: UInt64, running: Bool) async throws {
        let image = store.diskPath(name)
        let kilobytes = "\(new / 1024)K"
        if running {
            guard new > old else {
                throw AgentError.invalid("disk", "cannot shrink the disk of a running VPS (\(ByteSize.format(old)) to \(ByteSize.format(new))); stop it first")
            }
            guard Self.agentHasCapability(24 /* CAP_SYS_RESOURCE */) else {
                throw AgentError.invalid(
                    "disk",
                    "growing the disk of a running VPS needs CAP_SYS_RESOURCE (ext4 online resize), which this agent does not have; stop the VPS and set --disk again"
                )
            }
            guard let loop = Self.loopDevice(backing: image) else {
                throw AgentError(.kernel, "the loop device of \(name)'s disk was not found", stage: "find loop device")
            }
            try setImageSize(image, new)
            do {
                let fd = open(loop, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw AgentError(.kernel, "open \(loop): \(errnoName(errno))", stage: "open loop device", errno: errno) }
                let capacity = berth_loop_set_capacity(fd)
                let err = errno
                close(fd)
                guard capacity == 0 else { throw AgentError(.kernel, "LOOP_SET_CAPACITY on \(loop): \(errnoName(err))", stage: "loop capacity", errno: err) }
                // What resize2fs does to a mounted ext4, asked of the filesystem itself: it is
                // mounted in the monitor's namespace, where resize2fs run here would not see it
                // and would take it for an unmounted one.
                guard let record = records[name], let mounted = mountedDisk(record) else {
                    throw AgentError(.kernel, "the disk of \(name) is not mounted by its monitor", stage: "find the mounted disk")
                }
                let root = open(mounted, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                guard root >= 0 else { throw AgentError(.kernel, "open \(mounted): \(errnoName(errno))", stage: "open the mounted disk", errno: errno) }
                defer { close(root) }
                var fs = statvfs()
                guard fstatvfs(root, &fs) == 0 else { throw AgentError(.kernel, "statvfs \(mounted): \(errnoName(errno))", stage: "statvfs", errno: errno) }
                guard berth_ext4_resize(root, new / UInt64(fs.f_frsize)) == 0 else {
                    throw AgentError(.kernel, "EXT4_IOC_RESIZE_FS on \(name)'s disk: \(errnoName(errno))", stage: "ext4 online resize", errno: errno)
                }
            } catch {
                try? setImageSize(image, old)
                throw error
            }
            return
        }
        try await tool(["/sbin/e2fsck", "-f", "-p", image], stage: "e2fsck", okExit: [0, 1])
        if new > old {
            try setImageSize(image, new)
            do { try await tool(["/sbin/resize2fs", image, kilobytes], stage: "resize2fs") } catch {
                try? setImageSize(image, old)
                throw error
            }
        } else {
            let result = try await Subprocess.run(["/sbin/resize2fs", image, kilobytes])
            guard result.status == 0 else {
                let text = (result.stderr + result.stdout).trimmed
                if text.contains("smaller than minimum") || text.contains("No space left") {
                    throw AgentError.invalid(
                        "disk",
                        "\(ByteSize.format(new)) is smaller than the data in the VPS's disk needs (resize2fs: \(text.split(separator: "\n").last ?? ""))")
                }
                throw AgentError(.kernel, "resize2fs failed: \(text)", stage: "resize2fs")
            }
            try setImageSize(image, new)
        }
    }

    /// `set --disk-inodes` (with or without a new `--disk`) on a stopped VPS. ext4 fixes its inode
    /// count when the filesystem is made, so the disk is rebuilt: a new image of `bytes` with
    /// `inodes` is filled from the old one mounted read-only (mke2fs -d keeps owners, modes,
    /// times, xattrs and hard links), checked, and renamed over it. Until that rename the old
    /// image is untouched, so a refusal or failure leaves the disk as it was.
    func rebuildDisk(_ name: String, inodes: UInt64, bytes: UInt64, running: Bool) async throws {
        guard !running else {
            throw AgentError.invalid(
                "disk-inodes", "cannot change the inode count of a running VPS's disk (ext4 fixes it when the filesystem is made); stop it first")
        }
        let image = store.diskPath(name)
        // The superblock's counts, read before e2fsck (which stamps the image) so that a refusal
        // leaves the image byte for byte as it was; mke2fs stops at the real count anyway.
        let header = try await Subprocess.run(["/sbin/dumpe2fs", "-h", image])
        func field(_ key: String) -> String? {
            header.stdout.split(separator: "\n").first { $0.hasPrefix(key + ":") }
                .map { $0.dropFirst(key.count + 1).trimmingCharacters(in: .whitespaces) }
        }
        guard header.status == 0, let total = field("Inode count").flatMap(UInt64.init),
            let free = field("Free inodes").flatMap(UInt64.init), let uuid = field("Filesystem UUID")
        else {
            throw AgentError(.kernel, "dumpe2fs of \(name)'s disk failed: \(header.stderr.trimmed)", stage: "dumpe2fs")
        }
        let used = total - min(free, total)
        guard inodes > used else {
            throw AgentError.invalid("disk-inodes", "\(inodes) is not more than the \(used) inodes in use on \(name)'s disk")
        }
        try await tool(["/sbin/e2fsck", "-f", "-p", image], stage: "e2fsck", okExit: [0, 1])
        let (source, rebuilt) = rebuildPaths(name)
        try? FileManager.default.removeItem(atPath: rebuilt)
        if mkdir(source, 0o700) != 0 && errno != EEXIST {
            throw AgentError(.kernel, "mkdir \(source): \(errnoName(errno))", stage: "rebuild disk", errno: errno)
        }
        defer { rmdir(source) }
        // mount(8) attaches and, at umount, frees the loop device: no mount work in this process.
        try await tool(["/bin/mount", "-t", "ext4", "-o", "ro,nosuid,nodev,noexec,loop", image, source], stage: "mount the disk read-only")
        let mkfs: ProcessResult
        do {
            mkfs = try await Subprocess.run(mkfsArguments(name, from: source, image: rebuilt, bytes: bytes, inodes: inodes, uuid: uuid))
        } catch {
            _ = try? await Subprocess.run(["/bin/umount", source])
            throw error
        }
        try await tool(["/bin/umount", source], stage: "unmount the old disk")
        guard mkfs.status == 0 else {
            unlink(rebuilt)
            let text = (mkfs.stderr + mkfs.stdout).trimmed
            if text.contains("Could not allocate block") || text.contains("No space left") {
                throw AgentError.invalid("disk", "\(ByteSize.format(bytes)) is too small for the data in \(name)'s disk")
            }
            throw AgentError(.kernel, "rebuilding \(name)'s disk failed: \(text)", stage: "mke2fs")
        }
        do {
            try await tool(["/sbin/e2fsck", "-f", "-n", rebuilt], stage: "check the rebuilt disk")
        } catch {
            unlink(rebuilt)
            throw error
        }
        guard rename(rebuilt, image) == 0 else {
            let err = errno
            unlink(rebuilt)
            throw AgentError(.kernel, "replacing \(name)'s disk: \(errnoName(err))", stage: "rename", errno: err)
        }
        FileIO.syncDirectory(store.directory(name))
    }

    /// mke2fs making a VPS disk of `bytes` filled from the tree `from` (create, inode rebuild).
    /// `tree`: what the new file system starts with (nil: empty).
    func mkfsArguments(_ name: String, from tree: String?, image: String, bytes: UInt64, inodes: UInt64?, uuid: String? = nil) -> [String] {
        var argv = [
            "/sbin/mke2fs", "-q", "-F", "-t", "ext4", "-m", "0", "-L", String("berth-\(name)".prefix(16)),
            "-E", "root_owner=0:0",
        ]
        if let tree { argv += ["-d", tree] }
        if let inodes { argv += ["-N", String(inodes)] }
        if let uuid { argv += ["-U", uuid] }
        return argv + [image, "\(bytes / 1024)k"]
    }

    /// Where an inode rebuild mounts the old disk and writes the new image.
    func rebuildPaths(_ name: String) -> (source: String, image: String) {
        (store.directory(name) + "/rebuild-source", store.diskPath(name) + ".rebuild")
    }

    /// What an inode rebuild cut short by an agent crash left: the read-only mount of the old
    /// disk and the half-made image. The old image itself is untouched until the final rename.
    func removeRebuildLeftovers(_ name: String) {
        let (source, rebuilt) = rebuildPaths(name)
        if FileIO.isMountPoint(source) { umount2(source, Int32(MNT_DETACH)) }
        rmdir(source)
        unlink(rebuilt)
    }

    /// Runs a tool; `okExit` lists the exit codes that mean success (e2fsck: 1 = fixed something).
    func tool(_ argv: [String], stage: String, okExit: Set<Int32> = [0]) async throws {
        let result = try await Subprocess.run(argv)
        let exit = InitExit(status: result.status)
        guard case .exited(let code) = exit, okExit.contains(code) else {
            throw AgentError(.kernel, "\(argv[0]) failed (\(exit.reason)): \((result.stderr + result.stdout).trimmed)", stage: stage)
        }
    }

    static func agentHasCapability(_ bit: Int) -> Bool {
        guard let status = FileIO.read("/proc/self/status"),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
            let mask = UInt64(line.dropFirst(7).trimmingCharacters(in: .whitespaces), radix: 16)
        else { return false }
        return mask & (1 << UInt64(bit)) != 0
    }

    func setImageSize(_ image: String, _ bytes: UInt64) throws {
        guard truncate(image, off_t(bytes)) == 0 else {
            throw AgentError(.kernel, "resizing \(image): \(errnoName(errno))", stage: "truncate", errno: errno)
        }
    }

    /// Writes `io` for a running VPS's disk (a stopped one gets it at its next start, where a
    /// limit the host cannot enforce fails the start with the reason).
    func applyIO(_ name: String, _ io: Limits, running: Bool) -> Result<Void, IsolationError> {
        Result { () throws(IsolationError) in
            guard running else { return }
            for write in try cgroups.ioSettings(name, io, device: try diskDeviceNumber(name)) {
                try FileIO.write(write.path, write.value)
            }
        }
    }

    /// "MAJ:MIN" of a running VPS's loop device, or of the storage pool's device for a pool VPS
    /// (what I/O limits name).
    func diskDeviceNumber(_ name: String) throws(IsolationError) -> String {
        if records[name]?.config.isPooled ?? false {
            guard let device = (try? mountedPool())??.device else { throw StoragePool.noDeviceForIOLimits }
            return try FileIO.deviceNumber(device)
        }
        guard let loop = Self.loopDevice(backing: store.diskPath(name)) else {
            throw IsolationError(.notFound, "the loop device of \(name)'s disk was not found", stage: "find loop device")
        }
        return try FileIO.deviceNumber(loop)
    }

    /// The loop device whose backing file is `image` (the monitor attached it; the kernel knows).
    static func loopDevice(backing image: String) -> String? {
        let canonical = URL(fileURLWithPath: image).resolvingSymlinksInPath().path
        for entry in FileIO.listDirectory("/sys/block") where entry.hasPrefix("loop") {
            if let file = FileIO.read("/sys/block/\(entry)/loop/backing_file")?.trimmed, file == canonical || file == image {
                return "/dev/\(entry)"
            }
        }
        return nil
    }
}
