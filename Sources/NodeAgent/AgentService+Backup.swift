import BerthCore
import Foundation
import Isolation
import NIOCore
import Wire

/// `backup` and `restore` on the wire (Docs/backup.md): the archive leaves as DATA on channel 1,
/// and comes in as DATA on channel 0.
extension AgentService {
    /// Progress lines every this many bytes (and at the end).
    static let backupProgressStep: UInt64 = 32 << 20

    func backup(_ r: Berth_V1_BackupRequest, stream: ServerStream) async throws -> Berth_V1_BackupResult {
        let source = try await manager.beginBackup(r.name, snapshot: r.snapshot)
        let written: BackupStreams.Written
        do {
            let name = source.manifest.vps
            if source.frozenMs > 0 { stream.progress("\(name) was frozen for \(source.frozenMs) ms for its snapshot") }
            written = try await BackupStreams.write(
                manifest: source.manifest, config: source.config, disk: source.disk,
                sink: { try await stream.send(.stdout, ByteBuffer(bytes: $0)) },
                progress: { done, total in
                    if done % Self.backupProgressStep < (1 << 20) || done == total {
                        stream.progress("backing up \(name): \(ByteSize.format(done)) of \(ByteSize.format(total)) read", done: done, total: total)
                    }
                })
            try await stream.sendEnd(.stdout)
        } catch {
            await manager.endBackup(r.name, source)
            throw error
        }
        await manager.endBackup(r.name, source)
        var result = Berth_V1_BackupResult()
        result.vps = source.manifest.vps
        result.node = manager.nodeName
        result.diskBytes = written.diskBytes
        result.archiveBytes = written.archiveBytes
        result.sha256 = written.sha256
        result.frozenMs = source.frozenMs
        return result
    }

    func restore(_ r: Berth_V1_RestoreBackupRequest, stream: ServerStream) async throws -> Berth_V1_VpsStatus {
        let manifest = try BackupManifest.decoded(r.manifest)
        let name = r.restoredName
        try Name.validate(name)
        let zstd = try BackupStreams.zstdTool()
        let total = r.size
        let reader = BackupStreams.Reader(stream.input) { received in
            if received % Self.backupProgressStep < (64 << 10) || received == total {
                stream.progress("received \(ByteSize.format(received))" + (total > 0 ? " of \(ByteSize.format(total))" : ""), done: received, total: total)
            }
        }
        guard try await reader.small(BackupArchive.manifestMember) == Array(r.manifest) else {
            throw AgentError.invalid("file", "the archive's manifest is not the one the request carries")
        }
        let config = try await reader.small(BackupArchive.configMember)
        let ips: [String]? = r.noIps ? [] : (r.ips.isEmpty ? nil : r.ips)
        let view = try await manager.restoreBackup(manifest, config: config, as: name, ips: ips) { disk in
            switch disk {
            case .image(let path):
                unlink(path)
                try await Self.decompress(with: zstd, from: reader, into: .image(path))
                guard VPSManager.fileSize(path) == manifest.diskBytes else {
                    unlink(path)
                    throw AgentError.invalid(
                        "file", "the disk image is \(VPSManager.fileSize(path) ?? 0) bytes, the manifest says \(manifest.diskBytes); nothing was kept")
                }
            case .volume:
                try await Self.decompress(with: zstd, from: reader, into: disk)
            }
        }
        return Berth_V1_VpsStatus(view)
    }

    /// The archive's disk pieces through `zstd -d` into an image file (holes kept where zeros
    /// were) or into `btrfs receive`. A damaged stream or archive leaves the caller to delete
    /// what was written.
    private static func decompress(with zstd: String, from reader: BackupStreams.Reader, into disk: MigrationDisk) async throws {
        let feed = try PipeEnds(), errors = try PipeEnds(), receiveErrors = try PipeEnds()
        let devnull = FileDescriptor(open("/dev/null", O_RDWR | O_CLOEXEC))
        var receiver: (pid: Int32, pidfd: Int32)?
        let decompressor: (pid: Int32, pidfd: Int32)
        switch disk {
        case .image(let path):
            decompressor = try Subprocess.spawn([zstd, "-d", "-q", "--sparse", "-o", path], fds: [feed.read.raw, devnull.raw, errors.write.raw])
        case .volume(let directory):
            let between = try PipeEnds()
            let btrfs = try VolumeTransfer.tool()
            decompressor = try Subprocess.spawn([zstd, "-d", "-q", "-c"], fds: [feed.read.raw, between.write.raw, errors.write.raw])
            between.write.close()
            do {
                receiver = try Subprocess.spawn([btrfs, "receive", "-q", directory], fds: [between.read.raw, devnull.raw, receiveErrors.write.raw])
            } catch {
                kill(decompressor.pid, SIGKILL)
                _ = await ProcessWatcher.shared.waitForExit(pid: decompressor.pid, pidfd: decompressor.pidfd)
                throw error
            }
        }
        feed.read.close()
        errors.write.close()
        receiveErrors.write.close()
        let writer = BlockingPipe(fd: feed.write.release())
        let (zstdErrors, receiverErrors) = (errors.read.release(), receiveErrors.read.release())
        async let zstdSaid = Subprocess.readToEnd(zstdErrors)
        async let receiveSaid = Subprocess.readToEnd(receiverErrors)
        var failure: (any Error)?
        do {
            try await reader.disk { await writer.write($0) }
        } catch {
            failure = error
            kill(decompressor.pid, SIGKILL)
            if let receiver { kill(receiver.pid, SIGKILL) }
        }
        writer.close()
        let unpacked = await ProcessWatcher.shared.waitForExit(pid: decompressor.pid, pidfd: decompressor.pidfd) ?? 0
        let received = if let receiver { await ProcessWatcher.shared.waitForExit(pid: receiver.pid, pidfd: receiver.pidfd) ?? 0 } else { Int32(0) }
        let (zstdMessage, receiveMessage) = (await zstdSaid, await receiveSaid)
        if let failure {
            // zstd's own word on a damaged stream says more than the closed pipe.
            if !zstdMessage.trimmed.isEmpty, case .exited = InitExit(status: unpacked) {
                throw AgentError.invalid("file", "the disk in the archive is damaged: zstd: \(zstdMessage.trimmed); nothing was kept")
            }
            throw failure
        }
        guard case .exited(0) = InitExit(status: unpacked) else {
            throw AgentError.invalid("file", "the disk in the archive is damaged: zstd: \(zstdMessage.trimmed); nothing was kept")
        }
        if receiver != nil {
            guard case .exited(0) = InitExit(status: received) else {
                let full = receiveMessage.contains("No space left")
                throw AgentError(
                    .kernel, "btrfs receive refused the disk: \(receiveMessage.trimmed); nothing was kept", stage: "btrfs receive", errno: full ? ENOSPC : 0)
            }
        }
    }
}
