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
                throw AgentError.invalid("disk", "growing the disk of a running VPS needs CAP_SYS_RESOURCE (ext4 online resize), which this agent does not have; stop the VPS and set --disk again")
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
                // resize2fs grows a mounted ext4 online (EXT4_IOC_RESIZE_FS).
                try await tool(["/sbin/resize2fs", loop], stage: "resize2fs")
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
                    throw AgentError.invalid("disk", "\(ByteSize.format(new)) is smaller than the data in the VPS's disk needs (resize2fs: \(text.split(separator: "\n").last ?? ""))")
                }
                throw AgentError(.kernel, "resize2fs failed: \(text)", stage: "resize2fs")
            }
            try setImageSize(image, new)
        }
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
              let mask = UInt64(line.dropFirst(7).trimmingCharacters(in: .whitespaces), radix: 16) else { return false }
        return mask & (1 << UInt64(bit)) != 0
    }

    func setImageSize(_ image: String, _ bytes: UInt64) throws {
        guard truncate(image, off_t(bytes)) == 0 else {
            throw AgentError(.kernel, "resizing \(image): \(errnoName(errno))", stage: "truncate", errno: errno)
        }
    }

    /// Writes `io` for a running VPS's disk (a stopped one gets it at its next start, where a
    /// limit the host cannot enforce fails the start with the reason).
    func applyIO(_ name: String, _ io: IOLimits, running: Bool) -> Result<Void, IsolationError> {
        Result { () throws(IsolationError) in
            guard running else { return }
            for write in try cgroups.ioSettings(name, io, device: try diskDeviceNumber(name)) {
                try FileIO.write(write.path, write.value)
            }
        }
    }

    /// "MAJ:MIN" of a running VPS's loop device (what I/O limits name).
    func diskDeviceNumber(_ name: String) throws(IsolationError) -> String {
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
