import BerthCore
import Crypto
import Foundation
import Isolation
import NIOCore
import Wire

/// The agent's two ends of a backup archive (BerthCore's `BackupArchive` has the layout): the
/// writer that turns a VPS's config and disk into one, and the reader that takes one in,
/// checking every member against its SHA256SUMS before anything of it is kept.
enum BackupStreams {
    static let zstd = ["/usr/bin/zstd", "/bin/zstd"].first { FileManager.default.isExecutableFile(atPath: $0) }

    static func zstdTool() throws -> String {
        guard let zstd else { throw AgentError(.notFound, "backups need the zstd tool (apt-get install zstd)", field: "file") }
        return zstd
    }

    /// Where the disk of a backup comes from: a loop image file, or a read-only snapshot of a
    /// pool VPS (sent by `btrfs send`).
    enum Disk: Sendable {
        case image(String)
        case snapshot(String)
    }

    struct Written: Sendable {
        var archiveBytes: UInt64 = 0
        var diskBytes: UInt64 = 0
        var sha256 = ""
    }

    // MARK: - writing

    /// Writes the archive to `sink` as it is made; `progress(done, total)` counts the disk's raw
    /// bytes read of `manifest.diskBytes` (an estimate for a pool VPS).
    static func write(
        manifest: BackupManifest, config: [UInt8], disk: Disk, sink: @escaping @Sendable ([UInt8]) async throws -> Void,
        progress: @escaping @Sendable (UInt64, UInt64) -> Void
    ) async throws -> Written {
        let archive = ArchiveSink(sink)
        let now = Int64(Date().timeIntervalSince1970)
        try await archive.member(BackupArchive.manifestMember, try JSONEncoder.berth.encode(manifest), mtime: now)
        try await archive.member(BackupArchive.configMember, Data(config), mtime: now)

        // The disk's raw bytes (the image, or btrfs send's stream) go through zstd; what zstd
        // writes is cut into pieces. The source first: nothing runs yet if it cannot be read.
        var sender: (pid: Int32, pidfd: Int32)?
        let raw: BlockingPipe
        var senderErrors: Int32 = -1
        switch disk {
        case .image(let path):
            let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else { throw AgentError(.kernel, "opening \(path): \(errnoName(errno))", stage: "open", errno: errno) }
            raw = BlockingPipe(fd: fd)
        case .snapshot(let path):
            let out = try PipeEnds(), sendErrors = try PipeEnds()
            let devnull = FileDescriptor(open("/dev/null", O_RDONLY | O_CLOEXEC))
            sender = try Subprocess.spawn([try VolumeTransfer.tool(), "send", "-q", path], fds: [devnull.raw, out.write.raw, sendErrors.write.raw])
            out.write.close()
            sendErrors.write.close()
            raw = BlockingPipe(fd: out.read.release())
            senderErrors = sendErrors.read.release()
        }
        let compressor: (pid: Int32, pidfd: Int32)
        let feed: BlockingPipe, pieces: BlockingPipe, zstdErrors: Int32
        do {
            let compressorIn = try PipeEnds(), compressorOut = try PipeEnds(), errors = try PipeEnds()
            compressor = try Subprocess.spawn(
                [try zstdTool(), "-q", "-3", "-T0", "-c"], fds: [compressorIn.read.raw, compressorOut.write.raw, errors.write.raw])
            compressorIn.read.close()
            compressorOut.write.close()
            errors.write.close()
            feed = BlockingPipe(fd: compressorIn.write.release())
            pieces = BlockingPipe(fd: compressorOut.read.release())
            zstdErrors = errors.read.release()
        } catch {
            raw.close()
            if senderErrors >= 0 { close(senderErrors) }
            if let sender {
                kill(sender.pid, SIGKILL)
                _ = await ProcessWatcher.shared.waitForExit(pid: sender.pid, pidfd: sender.pidfd)
            }
            throw error
        }
        async let zstdSaid = Subprocess.readToEnd(zstdErrors)
        let senderErrorsFD = senderErrors
        async let senderSaid = senderErrorsFD >= 0 ? Subprocess.readToEnd(senderErrorsFD) : ""

        let total = manifest.diskBytes
        let feeding = Task { () -> (UInt64, Int32) in
            var read: UInt64 = 0
            while true {
                let chunk = await raw.read(upTo: 1 << 20)
                if chunk.isEmpty { break }
                read += UInt64(chunk.count)
                let failed = await feed.write(chunk)
                if failed != 0 { return (read, failed) }
                progress(read, max(total, read))
            }
            feed.close()
            raw.close()
            return (read, 0)
        }
        var index = 0
        var failure: (any Error)?
        while true {
            let piece = await pieces.read(upTo: BackupArchive.pieceBytes)
            if piece.isEmpty { break }
            do {
                try await archive.member(BackupArchive.pieceMember(index), Data(piece), mtime: now)
            } catch {
                failure = error
                break
            }
            index += 1
        }
        if failure != nil {
            kill(compressor.pid, SIGKILL)
            if let sender { kill(sender.pid, SIGKILL) }
        }
        pieces.close()
        let (diskBytes, feedError) = await feeding.value
        feed.close()
        raw.close()
        let compressed = await ProcessWatcher.shared.waitForExit(pid: compressor.pid, pidfd: compressor.pidfd) ?? 0
        let sent = if let sender { await ProcessWatcher.shared.waitForExit(pid: sender.pid, pidfd: sender.pidfd) ?? 0 } else { Int32(0) }
        let (zstdMessage, senderMessage) = (await zstdSaid, await senderSaid)
        if let failure { throw failure }
        if sender != nil {
            guard case .exited(0) = InitExit(status: sent) else {
                throw AgentError(.kernel, "btrfs send of the snapshot failed (\(InitExit(status: sent).reason)): \(senderMessage.trimmed)", stage: "btrfs send")
            }
        }
        guard feedError == 0, case .exited(0) = InitExit(status: compressed) else {
            throw AgentError(.kernel, "zstd failed (\(InitExit(status: compressed).reason)): \(zstdMessage.trimmed)", stage: "zstd")
        }
        // A read error ends the image early, as its end would: the count tells them apart.
        if case .image(let path) = disk, diskBytes != total {
            throw AgentError(.kernel, "reading \(path) stopped after \(diskBytes) of \(total) bytes", stage: "read")
        }
        try await archive.finish()
        return Written(archiveBytes: archive.written, diskBytes: diskBytes, sha256: archive.digest)
    }

    /// Members in order, their sums, and the digest of every byte written.
    private final class ArchiveSink: @unchecked Sendable {
        let sink: @Sendable ([UInt8]) async throws -> Void
        var sums: [(String, String)] = []
        var whole = SHA256()
        var written: UInt64 = 0
        var digest = ""

        init(_ sink: @escaping @Sendable ([UInt8]) async throws -> Void) { self.sink = sink }

        func member(_ name: String, _ data: Data, mtime: Int64) async throws {
            sums.append((name, hexString(SHA256.hash(data: data))))
            try await emit(BackupArchive.header(name: name, size: UInt64(data.count), mtime: mtime))
            try await emit(Array(data) + [UInt8](repeating: 0, count: BackupArchive.padding(UInt64(data.count))))
        }

        func finish() async throws {
            let lines = sums.map { "\($0.1)  \($0.0)\n" }.joined()
            let text = Data(lines.utf8)
            try await emit(BackupArchive.header(name: BackupArchive.sumsMember, size: UInt64(text.count), mtime: Int64(Date().timeIntervalSince1970)))
            try await emit(Array(text) + [UInt8](repeating: 0, count: BackupArchive.padding(UInt64(text.count))))
            try await emit(BackupArchive.end)
            digest = hexString(whole.finalize())
        }

        private func emit(_ bytes: [UInt8]) async throws {
            whole.update(data: bytes)
            written += UInt64(bytes.count)
            try await sink(bytes)
        }
    }

    // MARK: - reading

    /// Reads an archive from a call's input (DATA on channel 0 up to its END).
    final class Reader: @unchecked Sendable {
        private var iterator: CreditedStream<StreamInput>.AsyncIterator
        private var buffer: [UInt8] = []
        private var sums: [(String, String)] = []
        /// Archive bytes taken so far.
        private(set) var received: UInt64 = 0
        let progress: @Sendable (UInt64) -> Void

        init(_ input: CreditedStream<StreamInput>, progress: @escaping @Sendable (UInt64) -> Void) {
            iterator = input.makeAsyncIterator()
            self.progress = progress
        }

        /// Exactly `count` bytes, or a refusal when the input ends first.
        private func take(_ count: Int) async throws -> [UInt8] {
            while buffer.count < count {
                switch await iterator.next() {
                case .data(.stdin, let bytes)?:
                    buffer += bytes.readableBytesView
                    received += UInt64(bytes.readableBytes)
                    progress(received)
                case .end(.stdin)?, nil:
                    if Task.isCancelled { throw WireError(.cancelled, "file: the restore was cancelled; nothing was kept", field: "file") }
                    throw BackupArchive.refusal("it ends too early (truncated?); nothing was kept")
                default:
                    continue
                }
            }
            let taken = Array(buffer[..<count])
            buffer.removeFirst(count)
            return taken
        }

        private func nextMember() async throws -> BackupArchive.Member? {
            try BackupArchive.member(of: try await take(BackupArchive.block))
        }

        /// A small member that must be `name`: its bytes, whose sum is kept.
        func small(_ name: String) async throws -> [UInt8] {
            guard let member = try await nextMember(), member.name == name else {
                throw BackupArchive.refusal("\(name) is missing or out of its place")
            }
            guard member.size <= BackupArchive.maxSmallMember else {
                throw BackupArchive.refusal("\(name) is larger than \(BackupArchive.maxSmallMember) bytes")
            }
            let bytes = try await take(Int(member.size))
            _ = try await take(BackupArchive.padding(member.size))
            sums.append((name, hexString(SHA256.hash(data: bytes))))
            return bytes
        }

        /// The disk pieces, decompressed into `write` (a pipe to zstd's stdin: the caller's
        /// decompressor), then SHA256SUMS, checked against every member, and the archive's end.
        func disk(into write: (([UInt8]) async -> Int32)) async throws {
            var index = 0
            while true {
                guard let member = try await nextMember() else { throw BackupArchive.refusal("it ends without \(BackupArchive.sumsMember)") }
                if member.name == BackupArchive.sumsMember {
                    guard member.size <= BackupArchive.maxSmallMember else { throw BackupArchive.refusal("\(BackupArchive.sumsMember) is too large") }
                    let text = try await take(Int(member.size))
                    _ = try await take(BackupArchive.padding(member.size))
                    try check(String(decoding: text, as: UTF8.self))
                    guard try await nextMember() == nil else { throw BackupArchive.refusal("a member follows \(BackupArchive.sumsMember)") }
                    return
                }
                guard BackupArchive.pieceIndex(member.name) == index, member.size <= UInt64(BackupArchive.pieceBytes) else {
                    throw BackupArchive.refusal("member \(member.name) is not disk piece \(index)")
                }
                var hash = SHA256()
                var left = Int(member.size)
                while left > 0 {
                    let part = try await take(min(left, 1 << 20))
                    hash.update(data: part)
                    left -= part.count
                    let failed = await write(part)
                    // zstd stopped reading: it found the stream damaged (its reason on stderr).
                    if failed != 0 { throw AgentError.invalid("file", "the disk's zstd stream is damaged; nothing was kept") }
                }
                _ = try await take(BackupArchive.padding(member.size))
                sums.append((member.name, hexString(hash.finalize())))
                index += 1
            }
        }

        /// Every member read must be listed with its sum, in order, and nothing more.
        private func check(_ text: String) throws {
            let listed = text.split(separator: "\n").map { line -> (String, String) in
                let parts = line.split(separator: " ", maxSplits: 1)
                return (parts.count == 2 ? String(parts[1].drop { $0 == " " || $0 == "*" }) : "", String(parts.first ?? ""))
            }
            guard listed.count == sums.count else {
                throw BackupArchive.refusal("\(BackupArchive.sumsMember) lists \(listed.count) members, the archive holds \(sums.count); nothing was kept")
            }
            for (found, expected) in zip(sums, listed) where found.0 != expected.0 || found.1 != expected.1 {
                throw AgentError.invalid(
                    "file", "member \(found.0) does not match its SHA-256 in \(BackupArchive.sumsMember): the archive is damaged; nothing was kept")
            }
        }
    }
}
