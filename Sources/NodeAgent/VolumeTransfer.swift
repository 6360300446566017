import BerthCore
import Dispatch
import Foundation
import Isolation
import NIOCore
import Wire

/// A pool VPS's disk (a btrfs subvolume) on a migration's channel 0 (Docs/wire.md, "Volume
/// transfer"): the streams of `btrfs send`, one per pass, back to back. Pass 1 sends a read-only
/// snapshot whole; pass k sends the next snapshot as a difference from the one before (`-p`),
/// as Incus's btrfs driver does. The target feeds everything to one `btrfs receive`, which
/// checks each command's CRC32C and applies the streams in order; the last snapshot's name is
/// fixed (`final`), so a stream cut between two passes is caught by its absence.
enum VolumeTransfer {
    static let btrfs = ["/usr/bin/btrfs", "/bin/btrfs", "/usr/sbin/btrfs", "/sbin/btrfs"].first { FileManager.default.isExecutableFile(atPath: $0) }
    /// The last pass's snapshot, which the target makes the VPS's subvolume.
    static let finalSnapshot = "final"
    static let chunkSize = 256 << 10

    static func tool() throws -> String {
        guard let btrfs else { throw AgentError(.notFound, "migrating a pool VPS needs the btrfs tool (apt-get install btrfs-progs)", field: "layout") }
        return btrfs
    }

    /// Sends `snapshot` (a difference from `parent`, if given) as `btrfs send` writes it.
    /// Returns the bytes sent.
    static func send(
        _ snapshot: String, parent: String?, on call: ClientCall, target: String, stallLimit: TimeAmount, pace: (Int) async -> Void
    ) async throws -> UInt64 {
        let output = try PipeEnds(), errors = try PipeEnds()
        let devnull = FileDescriptor(open("/dev/null", O_RDONLY | O_CLOEXEC))
        let argv = [try tool(), "send", "-q"] + (parent.map { ["-p", $0] } ?? []) + [snapshot]
        let child = try Subprocess.spawn(argv, fds: [devnull.raw, output.write.raw, errors.write.raw])
        output.write.close()
        errors.write.close()
        let reader = BlockingPipe(fd: output.read.release())
        let errorsFD = errors.read.release()
        async let stderr = Subprocess.readToEnd(errorsFD)
        var sent: UInt64 = 0
        var failure: (any Error)?
        while failure == nil {
            let chunk = await reader.read(upTo: chunkSize)
            guard !chunk.isEmpty else { break }
            do {
                await pace(chunk.count)
                try await call.send(.stdin, ByteBuffer(bytes: chunk), within: stallLimit, peer: target).get()
                sent += UInt64(chunk.count)
            } catch {
                failure = error
                kill(child.pid, SIGKILL)
            }
        }
        reader.close()
        let status = await ProcessWatcher.shared.waitForExit(pid: child.pid, pidfd: child.pidfd) ?? 0
        let said = await stderr
        if let failure { throw failure }
        guard case .exited(0) = InitExit(status: status) else {
            throw AgentError(.kernel, "btrfs send of \(snapshot) failed (\(InitExit(status: status).reason)): \(said.trimmed)", stage: "btrfs send")
        }
        return sent
    }

    /// Feeds every stream that arrives to `btrfs receive` into `directory` (on the pool), until
    /// END. Throws when a stream is damaged or cut (`btrfs receive` refuses it), or when the
    /// call is cancelled (the controller's abort); what was received stays for the caller to
    /// delete.
    static func receive(into directory: String, from input: CreditedStream<StreamInput>, field: String) async throws {
        let feed = try PipeEnds(), errors = try PipeEnds()
        let devnull = FileDescriptor(open("/dev/null", O_WRONLY | O_CLOEXEC))
        let child = try Subprocess.spawn([try tool(), "receive", "-q", directory], fds: [feed.read.raw, devnull.raw, errors.write.raw])
        feed.read.close()
        errors.write.close()
        let writer = BlockingPipe(fd: feed.write.release())
        let errorsFD = errors.read.release()
        async let stderr = Subprocess.readToEnd(errorsFD)
        var ended = false
        var writeError: Int32 = 0
        loop: for await item in input {
            switch item {
            case .data(.stdin, let bytes):
                writeError = await writer.write(Array(bytes.readableBytesView))
                // btrfs receive stopped reading: it refused the stream (its reason on stderr).
                if writeError != 0 { break loop }
            case .end(.stdin):
                ended = true
                break loop
            default:
                continue
            }
        }
        writer.close()
        if !ended { kill(child.pid, SIGKILL) }
        let status = await ProcessWatcher.shared.waitForExit(pid: child.pid, pidfd: child.pidfd) ?? 0
        let said = await stderr
        if !ended && writeError == 0 {
            if Task.isCancelled {
                throw WireError(.cancelled, "\(field): the transfer was aborted (by the controller); nothing was kept", field: field)
            }
            throw WireError(.unavailable, "\(field): the connection closed before the transfer's END; nothing was kept", field: field)
        }
        guard case .exited(0) = InitExit(status: status) else {
            let why = said.trimmed.isEmpty ? InitExit(status: status).reason : said.trimmed
            let full = why.contains("No space left")
            throw AgentError(
                .kernel, "\(field): btrfs receive refused the stream: \(why); nothing was kept", stage: "btrfs receive", errno: full ? ENOSPC : 0)
        }
    }
}

/// One end of a pipe to a helper, read or written with blocking calls on a queue of its own:
/// a pipe that fills or empties slowly must not hold a thread of the cooperative pool.
final class BlockingPipe: @unchecked Sendable {
    private var fd: Int32
    private let queue = DispatchQueue(label: "berth.blocking-pipe")

    init(fd: Int32) { self.fd = fd }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    /// Up to `count` bytes; empty at EOF or on an error.
    func read(upTo count: Int) async -> [UInt8] {
        await withCheckedContinuation { continuation in
            queue.async {
                var buffer = [UInt8](repeating: 0, count: count)
                var got = 0
                // A full chunk where the writer has one: fewer, larger frames on the wire.
                while got < count {
                    let n = buffer.withUnsafeMutableBytes { Glibc.read(self.fd, $0.baseAddress! + got, count - got) }
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 { break }
                    got += n
                }
                buffer.removeSubrange(got...)
                continuation.resume(returning: buffer)
            }
        }
    }

    /// Writes all of `bytes`; the errno of a failed write (EPIPE: the reader is gone), else 0.
    func write(_ bytes: [UInt8]) async -> Int32 {
        await withCheckedContinuation { continuation in
            queue.async {
                var done = 0
                while done < bytes.count {
                    let n = bytes.withUnsafeBytes { Glibc.write(self.fd, $0.baseAddress! + done, bytes.count - done) }
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 {
                        continuation.resume(returning: n < 0 ? errno : EPIPE)
                        return
                    }
                    done += n
                }
                continuation.resume(returning: 0)
            }
        }
    }

    /// Closes the descriptor (after the reads and writes already queued).
    func close() {
        queue.sync {
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
    }
}
